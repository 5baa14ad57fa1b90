#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), in turn, over its committed corpus
# (fuzz/corpus/<target>, read only: new inputs go to a temp dir that is removed). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run. Run briefly with 20; the
# hour-long campaign runs each target with 3600 (and `cargo fuzz cmin` after).
# Needs the pinned nightly toolchain and cargo-fuzz (README, "Security: fuzzing"; .ci/run installs
# both). FUZZ_FLAGS are cargo-fuzz's build options, passed to both build and run (a different set
# would rebuild): the default is an optimised build without a sanitizer (ASan would instrument
# only our Rust, whose few `unsafe` blocks none of the targets reach; the C of zstd is built by
# cc and never instrumented). CI uses `--dev -s none`: a debug build compiles in a fraction of
# the time of release's single codegen unit.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
case $seconds in
  '' | *[!0-9]*) echo "fuzz/run.sh: SECONDS must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac
# FUZZ_SEEDS=N: start each target from N inputs of its corpus picked at random instead of all of
# them (libFuzzer runs every seed before it honours -max_total_time; a debug build takes minutes
# over a whole corpus, which `cargo test --test fuzz_corpus` replays anyway).
seeds=${FUZZ_SEEDS:-}
case $seeds in
  *[!0-9]*) echo "fuzz/run.sh: FUZZ_SEEDS must be a whole number of inputs, not '$seeds'" >&2; exit 2 ;;
esac
toolchain=${FUZZ_TOOLCHAIN:-nightly-2026-05-20}
read -r -a flags <<<"${FUZZ_FLAGS:--O -s none}"
targets=(sls_render pillar_compile archive_unpack proto_agent_decode proto_client_decode)
# Its own target dir: nightly, sanitizer flags and another lockfile never touch target/.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo "+$toolchain" fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  seed_dir="fuzz/corpus/$target"
  if [ -n "$seeds" ]; then
    seed_dir="$scratch/$target-seeds"
    mkdir -p "$seed_dir"
    find "fuzz/corpus/$target" -type f | shuf -n "$seeds" | xargs -r cp -t "$seed_dir"
  fi
  echo "fuzz: $target for ${seconds}s"
  log="$scratch/$target.log"
  if ! cargo "+$toolchain" fuzz run "${flags[@]}" "$target" "$scratch/$target" "$seed_dir" -- \
    -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz: $target failed: its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  # libFuzzer's last status line: executions, coverage (cov), features (ft), corpus size.
  grep -E '^#[0-9]+' "$log" | tail -n 1
done
