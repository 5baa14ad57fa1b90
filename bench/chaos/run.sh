#!/usr/bin/env bash
# Chaos bench (see README.md): N cycles of a cooking push then a final deploy, with the agent or
# the master killed at a random instant, restarted, and the invariants checked.
#
#   bench/chaos/run.sh
#   env: CYCLES=200  FILES=2000 (files the build writes, 100 per 0.1 s)  SEED=$RANDOM
#        CHAOS_PHASE=staging|prod CHAOS_TARGET=agent|master CHAOS_GROUP=0|1 (fix a choice)
#        CHAOS_AT=LOW:HIGH (kill within this fraction of the push's warm-up duration; default 0:1.2)
#        CHAOS_MACHINES=FIRST-LAST (the environments' SMEP machine numbers; default 97-99, which
#        the e2e harness never uses; two benches side by side need different ones)
#        CORPUS_BIN=DIR (binaries already built; default: cargo build --bins, debug)
#        KEEP=1 (keep the work dir and its logs; kept anyway when a wait times out)
set -euo pipefail
CYCLES=${CYCLES:-200}
FILES=${FILES:-2000}
SEED=${SEED:-$RANDOM}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
for tool in git python3 flock; do
  command -v $tool >/dev/null || { echo "bench/chaos: $tool is missing" >&2; exit 1; }
done
if [ -n "${CORPUS_BIN:-}" ]; then
  B=$CORPUS_BIN
else
  (cd "$REPO" && cargo build --bins)
  B=$REPO/target/debug
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/corpus-chaos.XXXXXX")
# Environment users must be able to pass through to their roots under the agent's --root.
chmod 0755 "$W"
# The agent creates an account per environment (corpus-<smep>, home under $W): remove them too.
remove_accounts() {
  getent passwd | awk -F: -v w="$W/" 'index($6, w) == 1 { print $1 }' | while read -r user; do
    userdel -f "$user" 2>/dev/null || true
    groupdel "$user" 2>/dev/null || true
  done
}
cleanup() {
  remove_accounts
  # KEEP=1, or a wait that timed out (chaos.py marks it): the logs say why.
  if [ -n "${KEEP:-}" ] || [ -e "$W/keep" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
echo "chaos: $CYCLES cycles, $FILES files per build, seed $SEED, binaries from $B, work in $W"
python3 "$HERE/chaos.py" "$W/work" "$B" "$CYCLES" "$FILES" "$SEED"
