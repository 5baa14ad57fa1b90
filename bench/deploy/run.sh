#!/usr/bin/env bash
# Benchmark: a final-mode deploy of a 10,000-file, 100 MB release, `corpus push` to done (client
# wall time), against a raw `tar --zstd -xf` of the same release archive into a fresh directory
# plus `mv` into place (target: corpus within 1.5x); then `corpus rollback` for trees of 1,000,
# 10,000 and 100,000 files (target: under 100 ms, flat). See README.md for the figures.
#
# A throwaway master and agent run on loopback in a temporary directory, as in quickstart.sh.
# A sample project's staging build (.salt/build.sls, cmd.run) writes FILES files of SIZE bytes
# of os.urandom data (incompressible) into run/; the cooked release is then pushed RUNS times to
# a prod environment (final mode). The baselines run between the pushes with the same warm cache.
#
#   bench/deploy/run.sh
#   env: RUNS=5  FILES=10000  SIZE=10000  ROLLBACK_SIZES="1000 10000 100000"  ROLLBACK_RUNS=3
#        ROLLBACK=0 (skip the rollback part)  DEPLOY=0 (skip the deploy part)
#        CORPUS_BIN=DIR (binaries already built; default: cargo build --release --bins)
#        KEEP=1 (keep the temporary directory)  TIMEOUT=1200 (seconds per measured part)
set -euo pipefail

RUNS=${RUNS:-5}
FILES=${FILES:-10000}
SIZE=${SIZE:-10000}
ROLLBACK_SIZES=${ROLLBACK_SIZES:-1000 10000 100000}
ROLLBACK_RUNS=${ROLLBACK_RUNS:-3}
TIMEOUT=${TIMEOUT:-1200}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { echo "bench/deploy: $*" >&2; exit 1; }
for tool in git tar zstd python3 sync du; do
  command -v $tool >/dev/null || fail "$tool is missing"
done
PY=$(python3 -c 'import sys; print(sys.executable)')

if [ -n "${CORPUS_BIN:-}" ]; then
  B=$CORPUS_BIN
else
  log "building corpus (release)"
  (cd "$REPO" && cargo build --release --bins)
  B=$REPO/target/release
fi
for bin in corpus corpus-master corpus-agent; do [ -x "$B/$bin" ] || fail "$B/$bin is missing"; done
export CORPUS=$B/corpus

W=$(mktemp -d "${TMPDIR:-/tmp}/corpus-bench-deploy.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out waiting for $what"
}

log "machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB RAM, $(uname -sr)," \
  "$(df -T "$W" | awk 'NR==2{print $2}') under $W; tree at $(git -C "$REPO" rev-parse --short HEAD), binaries from $B"

log "throwaway master and agent on loopback"
M="$B/corpus-master"
"$M" init --data-dir "$W/master" >/dev/null
"$M" serve --data-dir "$W/master" --listen 127.0.0.1:0 >"$W/master.out" 2>"$W/master.log" &
PIDS+=($!)
wait_for "the master" grep -q "listening on" "$W/master.out"
ADDR=$(sed -n 's/^corpus-master listening on //p' "$W/master.out")
echo 'bench-password-123' | "$M" users add bench@example.com --data-dir "$W/master" >/dev/null
TOKEN=$("$M" tokens create --ttl 10m --data-dir "$W/master")
"$B/corpus-agent" run --master "https://$ADDR" --ca "$W/master/pki/ca.crt" --id node1 \
  --state-dir "$W/agent" --root "$W/envs" --token "$TOKEN" 2>"$W/agent.log" &
PIDS+=($!)
agent_connected() { "$M" agents list --json --data-dir "$W/master" | grep -q '"connected": true'; }
wait_for "the agent to attach" agent_connected
export CORPUS_CONFIG=$W/makinastates.conf
cat >"$CORPUS_CONFIG" <<CONF
local:
  url: https://$ADDR
  id: bench@example.com
  password: bench-password-123
  ca: $W/master/pki/ca.crt
CONF
chmod 600 "$CORPUS_CONFIG"
C=$CORPUS
t0=$(date +%s%N); $C listhosts >/dev/null; t1=$(date +%s%N)
echo "master at https://$ADDR; agent node1 attached; \`corpus listhosts\` (login + one RPC) takes $(( (t1 - t0) / 1000000 )) ms"

# A project whose staging build writes $2 files of $3 bytes into run/.
make_project() { # DIR COUNT SIZE
  mkdir -p "$1/.salt"
  cp "$HERE/gen.py" "$1/gen.py"
  printf 'keep_archives: 3\n' >"$1/.salt/PILLAR.sample"
  cat >"$1/.salt/build.sls" <<EOF
generate:
  cmd.run:
    - name: $PY {{ common.project_dir }}/gen.py {{ common.run_dir }} $2 $3
EOF
  git -C "$1" init -q
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@example.com commit -qm "bench $2 x $3"
}

bench() { timeout "$TIMEOUT" "$PY" "$HERE/bench.py" "$@"; }

if [ "${DEPLOY:-1}" != 0 ]; then
  log "staging: cook a $FILES-file release of $SIZE-byte files (os.urandom)"
  P=$W/app
  make_project "$P" "$FILES" "$SIZE"
  STAGING=$($C init_env local staging)
  bench push "$STAGING" app "$P" --label "staging cook" | grep -v '^DEPLOY_ID='
  REL_DIR=$W/envs/$STAGING/srv/projects/app/releases
  RELEASE=$(ls -t "$REL_DIR"/*.tar.zst | head -1)
  [ -f "$RELEASE" ] || fail "no release archive under $REL_DIR"
  echo "release: $RELEASE"
  echo "  tree: $(find "$W/envs/$STAGING/srv/projects/app/run/" -type f | wc -l) files," \
    "$(du -sb --apparent-size "$W/envs/$STAGING/srv/projects/app/run/" | cut -f1) bytes"

  log "prod (final mode): 1 + $RUNS deploys of that release, each followed by the baselines"
  PROD=$($C init_env local prod)
  bench deploy "$PROD" app "$P" "$RELEASE" "$W" "$RUNS"
fi

if [ "${ROLLBACK:-1}" != 0 ]; then
  log "rollback: trees of $ROLLBACK_SIZES files (100-byte files), $ROLLBACK_RUNS rollbacks each"
  RB=$($C init_env local staging)
  SUMMARY=()
  for n in $ROLLBACK_SIZES; do
    P=$W/rb$n
    make_project "$P" "$n" 100
    echo "rb$n: a first cooked deploy of $n files, then $ROLLBACK_RUNS x (push, timed rollback)"
    bench push "$RB" "rb$n" "$P" --label "push 1 (not counted)" | grep -v '^DEPLOY_ID='
    OUT=$(bench rollback "$RB" "rb$n" "$P" "$W/envs/$RB/srv/projects/rb$n" "$ROLLBACK_RUNS")
    echo "$OUT" | grep -v '^ROLLBACK_JSON '
    SUMMARY+=("$n $(echo "$OUT" | sed -n 's/^ROLLBACK_JSON //p')")
  done
  echo
  "$PY" - "${SUMMARY[@]}" <<'EOF'
import json, sys
print("%-8s %9s %9s %9s %22s %9s %12s" % ("files", "wall med", "wall min", "agent", "steps archive/switch/rotate",
      "step->fin", "entries/du"))
for arg in sys.argv[1:]:
    n, js = arg.split(" ", 1)
    d = json.loads(js)
    s = d["steps"]
    print("%-8s %8.3fs %8.3fs %7dms %8d/%d/%d ms %8.3fs %7d/%.2fs" % (
        n, d["wall_med"], d["wall_min"], d["agent_med"], s.get("archive", 0), s.get("switch", 0),
        s.get("rotate", 0), d["last_step_to_finished"], d["entries"], d["du_s"]))
EOF
fi
