//! `cargo fuzz run archive_unpack`: see `harness/archive_unpack.rs`.
#![no_main]

#[path = "../harness/archive_unpack.rs"]
mod archive_unpack;

libfuzzer_sys::fuzz_target!(|data: &[u8]| archive_unpack::run(data));
