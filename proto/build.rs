//! Generates the tonic/prost code from `proto/corpus.proto` with a protoc that comes from
//! crates.io, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/corpus.proto");
    tonic_prost_build::configure().compile_protos(&["proto/corpus.proto"], &["proto"])?;
    Ok(())
}
