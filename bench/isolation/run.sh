#!/bin/sh
# Cost of tenant isolation on a no-op project deploy (see README.md). Not a timed test: it
# prints figures. Needs root (it creates and removes the user corpus-59800). Run from anywhere
# inside the repository.
set -eu
cd "$(git rev-parse --show-toplevel)"
cargo test -p corpus-agent --release --test isolation bench_isolation_noop_deploy -- --ignored --nocapture --test-threads=1
