#!/usr/bin/env bash
# Fleet scale of one master (issue 12): N simulated agents (bench/fleet/sim: one process, each
# agent its own key, certificate and mutual-TLS link, the real protocol) against a real master on
# loopback, release build. Reports: the connect storm, steady master CPU and RSS, `agents list
# --json` and `corpus listhosts --json` latency (with ENVS environments created through the
# Client API), the `run '*' test.ping` fan-out (when this build has `corpus-master run`), graceful
# stop time, and the reconnect time after a master restart.
#
#   N=10000 ENVS=1000 bench/fleet/run.sh
#   STATE_DIR=/var/tmp/fleet-10k N=10000 bench/fleet/run.sh   # enroll once, reuse after
#   STORM_ONLY=1 ...                                           # stop after the connect storm
#
# STATE_DIR keeps the agents' keys and certificates and a master data dir holding exactly those
# agents, enrolled: a run copies that data dir and skips enrollment (enrolling 10,000 agents
# takes minutes). Agents missing from it (a larger N) are enrolled into it first.
#
# Figures are printed, never asserted. Needs an open-files hard limit above N (`ulimit -Hn`):
# the master and the simulator each raise their soft limit to it.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000}
ENVS=${ENVS:-1000}
STEADY=${STEADY:-10}
if [ "${SKIP_BUILD:-}" != 1 ]; then
  cargo build --release -p corpus-master -p corpus-cli -p corpus-fleet-sim >/dev/null
fi
B=${BIN_DIR:-$PWD/target/release}
W=$(mktemp -d -t corpus-fleet.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
wait_line() { # FILE PATTERN TIMEOUT_S
  local i
  for i in $(seq 1 $(($3 * 10))); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
M=$W/master
start_master() { # [DATA_DIR]
  : >"$W/serve.out"
  "$B/corpus-master" serve --data-dir "${1:-$M}" --listen "127.0.0.1:$PORT" >"$W/serve.out" 2>>"$W/serve.log" &
  MASTER=$!
  PIDS+=("$MASTER")
  wait_line "$W/serve.out" "listening on" 30
}
stop_master() { # prints the seconds a graceful stop took
  local t0; t0=$(now)
  kill -TERM "$MASTER"
  while kill -0 "$MASTER" 2>/dev/null; do sleep 0.02; done
  since "$t0"
}
if [ -n "${STATE_DIR:-}" ]; then
  SIM_STATE=$STATE_DIR/sim
  mkdir -p "$SIM_STATE"
  [ -d "$STATE_DIR/master" ] || "$B/corpus-master" init --data-dir "$STATE_DIR/master" >/dev/null
  HAVE=$(find "$SIM_STATE" -name '*.crt' | wc -l)
  if [ "$HAVE" -lt "$N" ]; then
    echo "enrolling $((N - HAVE)) more agents into $STATE_DIR (it holds $HAVE)"
    start_master "$STATE_DIR/master"
    "$B/corpus-fleet-sim" --master "https://127.0.0.1:$PORT" --ca "$STATE_DIR/master/pki/ca.crt" \
      --master-data-dir "$STATE_DIR/master" --agents "$N" --state-dir "$SIM_STATE" --enroll-only 2>&1 | tail -1
    stop_master >/dev/null
  fi
  cp -a "$STATE_DIR/master" "$M"
  rm -f "$M/admin.sock"
else
  SIM_STATE=$W/sim
  "$B/corpus-master" init --data-dir "$M" >/dev/null
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

start_master
PASSWORD=bench-password-$RANDOM
echo "$PASSWORD" | "$B/corpus-master" users add bench-admin --admin --data-dir "$M" >/dev/null
cat >"$W/corpus.conf" <<CONF
bench: {url: "https://127.0.0.1:$PORT", id: bench-admin, password: "$PASSWORD", ca: "$M/pki/ca.crt"}
CONF
chmod 600 "$W/corpus.conf"

echo "fleet bench: N=$N ENVS=$ENVS, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), open files hard limit $(ulimit -Hn)"
SIM_PASSWORD=$PASSWORD "$B/corpus-fleet-sim" --master "https://127.0.0.1:$PORT" --ca "$M/pki/ca.crt" \
  --master-data-dir "$M" --agents "$N" --state-dir "$SIM_STATE" --envs "$ENVS" ${SIM_ARGS:-} >"$W/sim.out" 2>"$W/sim.log" &
SIM=$!
PIDS+=("$SIM")
wait_line "$W/sim.log" "identities ready" 3600
echo "enrollment:        $(sed -n 's/ identities ready in / agents enrolled in /p' "$W/sim.log")"
wait_line "$W/sim.out" '"connecting"' 60
# CPU of each side during the storm: the master's attach path and TLS server side against the
# simulator's TLS client side, on the same cores. PERF=1 also profiles both (perf record).
M0=$(cpu_ticks "$MASTER"); S0=$(cpu_ticks "$SIM")
if [ "${PERF:-}" = 1 ]; then
  perf record -F 299 ${PERF_G:--g} -p "$MASTER" -o "$W/master.perf" >/dev/null 2>&1 & PERF_M=$!
  perf record -F 299 ${PERF_G:--g} -p "$SIM" -o "$W/sim.perf" >/dev/null 2>&1 & PERF_S=$!
fi
wait_line "$W/sim.out" all_connected 600
M1=$(cpu_ticks "$MASTER"); S1=$(cpu_ticks "$SIM")
STORM=$(grep -m1 all_connected "$W/sim.out" | sed 's/.*"t":\([0-9.]*\).*/\1/')
printf 'connect storm:     %.2f s until all %s agents attached\n' "$STORM" "$N"
awk -v m=$((M1 - M0)) -v s=$((S1 - S0)) -v hz="$(getconf CLK_TCK)" -v t="$STORM" 'BEGIN{printf "  CPU during the storm: master %.2f s, simulator %.2f s (%.0f%% of the 2 cores over %.2f s), load %s\n", m / hz, s / hz, 100 * (m + s) / hz / t / 2, t, "'"$(cut -d' ' -f1-3 /proc/loadavg)"'"}'
if [ "${PERF:-}" = 1 ]; then
  kill -INT "$PERF_M" "$PERF_S"; wait "$PERF_M" "$PERF_S" 2>/dev/null || true
  for side in master sim; do
    perf report -i "$W/$side.perf" --no-children -g none --sort dso,symbol --stdio 2>/dev/null |
      grep '%' | grep -v '^#' | sed 's/  */ /g; s/ - - *$//' >"$W/$side.top" || true
    echo "  perf, $side (self time, top 12; all in $W/$side.top with KEEP=1):"
    head -12 "$W/$side.top" | sed 's/^/    /'
  done
fi
[ "${STORM_ONLY:-}" = 1 ] && exit 0
if [ "$ENVS" -gt 0 ]; then
  wait_line "$W/sim.out" envs_created 3600
  echo "environments:      $(grep envs_created "$W/sim.out")"
fi

sleep 5
t0=$(cpu_ticks "$MASTER"); sleep "$STEADY"; t1=$(cpu_ticks "$MASTER")
HZ=$(getconf CLK_TCK)
awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$STEADY" 'BEGIN{printf "steady master CPU: %.1f%% of one core\n", 100 * d / hz / s}'
echo "master RSS:        $(rss_mb "$MASTER") MB with $N agents attached"

t0=$(now)
COUNT=$("$B/corpus-master" agents list --json --data-dir "$M" | grep -c '"connected": true')
echo "agents list --json: $(since "$t0") s ($COUNT connected)"
t0=$(now)
HOSTS=$(CORPUS_CONFIG=$W/corpus.conf "$B/corpus" listhosts bench --json | grep -c '"id"')
echo "listhosts --json:  $(since "$t0") s ($HOSTS hosts, $ENVS environments)"

if "$B/corpus-master" run --help >/dev/null 2>&1; then
  t0=$(now)
  RC=0
  "$B/corpus-master" run '*' test.ping --json --data-dir "$M" >"$W/run.json" 2>"$W/run.err" || RC=$?
  echo "run '*' test.ping: $(since "$t0") s until every result was recorded (exit $RC, $(grep -c '"return":true' "$W/run.json" || true) agents returned true)"
  [ "$RC" = 0 ] || sed 's/^/  /' "$W/run.err" | head -3
  # The simulated agent answers at once, so its own started/finished times say nothing: the
  # latency is from the command's start to the agent's return.
  python3 - "$W/run.json" "$t0" <<'PY' || echo "  (per-agent latencies: see $W/run.json)"
import json, sys
t0_ms = float(sys.argv[2]) * 1000
items = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
lat = sorted(i["finished_unix_ms"] - t0_ms for i in items if i.get("finished_unix_ms"))
if not lat:
    raise SystemExit(1)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"  per-agent return, from the command's start: p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms, "
      f"last {lat[-1]:.0f} ms over {len(lat)} agents")
PY
else
  echo "run '*' test.ping: not measured (no \`corpus-master run\` in this build: it lands with F1's operator runs)"
fi

DROPS=$(tail -1 "$W/sim.out" | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
echo "dropped links:     ${DROPS:-?} before the stop"
echo "graceful stop:     $(stop_master) s with $N agents attached ($(grep -o 'saved agents.*' "$W/serve.log" | tail -1))"
BEFORE=$(grep -c all_connected "$W/sim.out")
t0=$(now)
start_master
for _ in $(seq 1 6000); do [ "$(grep -c all_connected "$W/sim.out")" -gt "$BEFORE" ] && break; sleep 0.1; done
if [ "$(grep -c all_connected "$W/sim.out")" -gt "$BEFORE" ]; then
  END=$(grep all_connected "$W/sim.out" | tail -1 | sed 's/.*"unix_ms":\([0-9]*\).*/\1/')
  awk -v a="$t0" -v b="$END" 'BEGIN{printf "restart reconnect: %.2f s from the restart until every agent attached again\n", b / 1000 - a}'
else
  echo "restart reconnect: not every agent attached again within 600 s"
fi
echo "graceful stop:     $(stop_master) s (second stop)"
echo "load at the end:   $(cut -d' ' -f1-3 /proc/loadavg)"
