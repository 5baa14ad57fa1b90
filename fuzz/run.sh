#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), in turn, over its committed corpus
# (fuzz/corpus/<target>, read only: new inputs go to a temp dir that is removed). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run. Run briefly with 20; the
# hour-long campaign runs each target with 3600 (and `cargo fuzz cmin` after).
# Needs the nightly toolchain and cargo-fuzz (README, "Security: fuzzing", says how to install them).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
targets=(sls_render pillar_compile archive_unpack proto_agent_decode proto_client_decode)
# Its own target dir: nightly, sanitizer flags and another lockfile never touch target/.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz: $target failed: its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  # libFuzzer's last status line: executions, coverage (cov), features (ft), corpus size.
  grep -E '^#[0-9]+' "$log" | tail -n 1
done
