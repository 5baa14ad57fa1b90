#!/usr/bin/env bash
# corpus quick start: builds corpus, starts a throwaway master and agent on loopback, walks a
# sample project through staging (cooking) and prod (final), then shows a failed deploy rolled
# back. Exits 0 when all of that worked. Everything lives in a temporary directory.
#
#   ./quickstart.sh              # release build
#   PROFILE=debug ./quickstart.sh
#   KEEP=1 ./quickstart.sh       # keep the temporary directory and print its path
set -euo pipefail
cd "$(dirname "$0")"

PROFILE=${PROFILE:-release}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { echo "quickstart: $*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is missing: install Rust from rustup.rs"
command -v git >/dev/null || fail "git is missing: apt-get install git"

step "building corpus ($PROFILE)"
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
B=$PWD/target/$PROFILE

W=$(mktemp -d -t corpus-quickstart.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# Waits up to 30 s for a command to succeed.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out waiting for $what"
}

step "starting a master on loopback"
M="$B/corpus-master"
"$M" init --data-dir "$W/master"
"$M" serve --data-dir "$W/master" --listen 127.0.0.1:0 >"$W/master.out" 2>"$W/master.log" &
PIDS+=($!)
wait_for "the master" grep -q "listening on" "$W/master.out"
ADDR=$(sed -n 's/^corpus-master listening on //p' "$W/master.out")
echo "master at https://$ADDR"
echo 'quickstart-password' | "$M" users add dev@example.com --data-dir "$W/master"

step "starting an agent, enrolled with a single-use token"
TOKEN=$("$M" tokens create --ttl 10m --data-dir "$W/master")
"$B/corpus-agent" run --master "https://$ADDR" --ca "$W/master/pki/ca.crt" --id node1 \
  --state-dir "$W/agent" --root "$W/envs" --token "$TOKEN" 2>"$W/agent.log" &
PIDS+=($!)
agent_connected() { "$M" agents list --json --data-dir "$W/master" | grep -q '"connected": true'; }
wait_for "the agent to attach" agent_connected
"$M" agents list --data-dir "$W/master"

export CORPUS_CONFIG=$W/makinastates.conf
cat >"$CORPUS_CONFIG" <<CONF
local:
  url: https://$ADDR
  id: dev@example.com
  password: quickstart-password
  ca: $W/master/pki/ca.crt
CONF
chmod 600 "$CORPUS_CONFIG"
C="$B/corpus"
$C listhosts

step "a sample project: a git repository with .salt/"
P=$W/myproject
mkdir -p "$P/.salt" "$P/app"
echo "hello from corpus" >"$P/app/index.html"
cat >"$P/.salt/PILLAR.sample" <<'EOF'
keep_archives: 3
EOF
cat >"$P/.salt/build.sls" <<'EOF'
copy_app:
  cmd.run:
    - name: cp -a {{ common.project_dir }}/app/. {{ common.run_dir }}/
EOF
cat >"$P/.salt/start.sls" <<'EOF'
announce:
  cmd.run:
    - name: echo "{{ common.name }} {{ common.mode }} deploy {{ common.deploy_id }} started" >> {{ common.data_dir }}/starts.log
EOF
git -C "$P" init -q
git -C "$P" add -A
git -C "$P" -c user.name=quickstart -c user.email=quickstart@example.com commit -qm "first version"

step "staging: cook a release (corpus push in cooking mode)"
STAGING=$($C init_env local staging)
echo "staging environment $STAGING"
$C push local "$STAGING" myproject --path "$P"
$C status local "$STAGING" myproject

step "prod: deploy that release (final mode, no build)"
PROD=$($C init_env local prod)
echo "prod environment $PROD"
$C push local "$PROD" myproject --path "$P"
RUN="$W/envs/$PROD/srv/projects/myproject/run"
echo "prod serves: $(cat "$RUN/index.html")"
[ "$(cat "$RUN/index.html")" = "hello from corpus" ] || fail "prod run/ does not hold the release"

step "a failing build in staging is rolled back"
cat >"$P/.salt/build.sls" <<'EOF'
copy_app:
  cmd.run:
    - name: cp -a {{ common.project_dir }}/app/. {{ common.run_dir }}/
run_tests:
  cmd.run:
    - name: echo "tests failed" >&2; exit 1
    - require:
      - cmd: copy_app
EOF
echo "broken" >"$P/app/index.html"
git -C "$P" -c user.name=quickstart -c user.email=quickstart@example.com commit -qam "a broken version"
if $C push local "$STAGING" myproject --path "$P"; then
  fail "the broken push succeeded"
fi
STAGING_RUN="$W/envs/$STAGING/srv/projects/myproject/run"
[ "$(cat "$STAGING_RUN/index.html")" = "hello from corpus" ] || fail "staging run/ was not rolled back"
$C status local "$STAGING" myproject
$C status local "$STAGING" myproject --json | grep -q '"result": "rolled_back"' || fail "status does not show the rollback"

step "done: staging cooked, prod deployed from the release, a failed deploy rolled back"
