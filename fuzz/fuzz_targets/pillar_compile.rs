//! `cargo fuzz run pillar_compile`: see `harness/pillar_compile.rs`.
#![no_main]

#[path = "../harness/files.rs"]
mod files;
#[path = "../harness/pillar_compile.rs"]
mod pillar_compile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillar_compile::run(data));
