//! End-to-end tests: the real binaries on loopback. One test binary, one module per area.

mod access;
mod apply_local;
mod cli;
mod client_and_events;
mod console;
mod daemons;
mod fleet;
mod foundation;
mod hostile;
mod lifecycle;
mod nodes;
mod reliability;
mod render;
mod resources;
mod running_jobs;
mod sessions_and_renders;
mod tenancy;
