//! `cargo fuzz run sls_render`: see `harness/sls_render.rs`.
#![no_main]

#[path = "../harness/files.rs"]
mod files;
#[path = "../harness/sls_render.rs"]
mod sls_render;

libfuzzer_sys::fuzz_target!(|data: &[u8]| sls_render::run(data));
