//! `cargo fuzz run proto_client_decode`: see `harness/proto_decode.rs`.
#![no_main]

#[path = "../harness/proto_decode.rs"]
#[allow(dead_code)] // each side uses one of its two bodies
mod proto_decode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_decode::client(data));
