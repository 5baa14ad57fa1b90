//! End-to-end tests: the real binaries on loopback. One test binary, one module per area.

mod foundation;
mod apply_local;
