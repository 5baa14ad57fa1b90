//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`, kept minimised by
//! `cargo fuzz cmin`) through the same body the target runs (`fuzz/harness/`), on stable, so
//! `cargo test` covers what the fuzzing campaigns found and a regression shows as a panic
//! naming the input file. The campaigns themselves: README, "Security: fuzzing".

use std::path::PathBuf;

#[path = "../../fuzz/harness/archive_unpack.rs"]
mod archive_unpack;
#[path = "../../fuzz/harness/files.rs"]
mod files;
#[path = "../../fuzz/harness/pillar_compile.rs"]
mod pillar_compile;
#[path = "../../fuzz/harness/proto_decode.rs"]
mod proto_decode;
#[path = "../../fuzz/harness/sls_render.rs"]
mod sls_render;

/// Runs `body` on every input of `target`'s corpus; panics naming the input that failed.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 5,
        "the corpus {} has {} inputs: run fuzz/seeds.py and the campaign (README)",
        dir.display(),
        inputs.len()
    );
    for input in &inputs {
        let data = std::fs::read(input).expect("read a corpus input");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target} failed on {}", input.display());
    }
}

#[test]
fn sls_render_corpus_replays() {
    replay("sls_render", sls_render::run);
}

#[test]
fn pillar_compile_corpus_replays() {
    replay("pillar_compile", pillar_compile::run);
}

#[test]
fn archive_unpack_corpus_replays() {
    replay("archive_unpack", archive_unpack::run);
}

#[test]
fn proto_agent_decode_corpus_replays() {
    replay("proto_agent_decode", proto_decode::agent);
}

#[test]
fn proto_client_decode_corpus_replays() {
    replay("proto_client_decode", proto_decode::client);
}
