#!/bin/sh
# Rollback and final-deploy timings of the agent's lifecycle (see README.md). Not timed tests:
# they print figures. Run from anywhere inside the repository.
set -eu
cd "$(git rev-parse --show-toplevel)"
cargo test -p corpus-agent --release --lib lifecycle::tests::bench_ -- --ignored --nocapture --test-threads=1
