#!/usr/bin/env bash
# Idle memory of an agent attached to a master (PRODUCT.md target: agent idle RSS < 15 MB).
# Starts a throwaway master and agent on loopback (release build), lets the agent attach and
# idle for IDLE seconds (default 15), then prints both processes' VmRSS and VmHWM.
set -euo pipefail
cd "$(dirname "$0")/../.."
IDLE=${IDLE:-15}
cargo build --release --bins >/dev/null
B=$PWD/target/release
W=$(mktemp -d -t corpus-rss.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
"$B/corpus-master" init --data-dir "$W/m" >/dev/null
"$B/corpus-master" serve --data-dir "$W/m" --listen 127.0.0.1:0 >"$W/serve.out" 2>"$W/serve.log" &
PIDS+=($!)
MASTER=$!
for _ in $(seq 1 100); do grep -q "listening on" "$W/serve.out" && break; sleep 0.1; done
ADDR=$(sed -n 's/^corpus-master listening on //p' "$W/serve.out")
TOKEN=$("$B/corpus-master" tokens create --data-dir "$W/m")
"$B/corpus-agent" run --master "https://$ADDR" --ca "$W/m/pki/ca.crt" --id node1 \
  --state-dir "$W/a" --root "$W/root" --token "$TOKEN" 2>"$W/agent.log" &
PIDS+=($!)
AGENT=$!
for _ in $(seq 1 100); do
  "$B/corpus-master" agents list --json --data-dir "$W/m" | grep -q '"connected": true' && break
  sleep 0.1
done
sleep "$IDLE"
for who in agent master; do
  pid=$AGENT; [ "$who" = master ] && pid=$MASTER
  printf '%-7s %s\n' "$who" "$(grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
done
