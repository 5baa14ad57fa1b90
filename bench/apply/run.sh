#!/usr/bin/env bash
# Benchmark: apply 1,000 file.managed states templated from pillar with
# `corpus-agent apply --local` and with `salt-call --local state.apply` (Salt 3008.3 from PyPI,
# installed into a throwaway venv), first run and no-op re-run. Prints the four timings and the
# two ratios. Usage: bench/apply/run.sh   (env: N=1000 states, RUNS=3 best-of,
# SALT_VENV=DIR to reuse a venv that already has salt==3008.3, CORPUS_AGENT=BIN to skip the
# release build, KEEP=1 to keep the work dir).
set -euo pipefail

N=${N:-1000}
RUNS=${RUNS:-3}
SALT_VERSION=3008.3
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/corpus-bench-apply.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

log() { echo "$*" >&2; }

# --- the tree: Salt syntax, shared by both tools -------------------------------------------
mkdir -p "$WORK/salt/bench"
cat > "$WORK/salt/top.sls" <<'SLS'
base:
  '*':
    - bench
SLS
cat > "$WORK/salt/bench/init.sls" <<'SLS'
{% set bench = pillar['bench'] %}
{% for i in range(bench['count']) %}
bench_file_{{ i }}:
  file.managed:
    - name: {{ bench['root'] }}/files/{{ i % 10 }}/f{{ i }}.conf
    - source: salt://bench/file.conf.j2
    - template: jinja
    - makedirs: True
    - mode: '0644'
    - context:
        index: {{ i }}
{% endfor %}
SLS
cat > "$WORK/salt/bench/file.conf.j2" <<'J2'
# {{ pillar['bench']['app'] }} instance {{ index }}, managed by the state engine
listen = {{ pillar['bench']['host'] }}:{{ pillar['bench']['base_port'] + index }}
{% for key, value in pillar['bench']['settings'] | dictsort %}
{{ key }} = {{ value }}
{% endfor %}
J2

# One pillar tree per tool, so each writes its own output tree.
make_pillar() { # $1 = pillar dir, $2 = output root
  mkdir -p "$1"
  printf "base:\n  '*':\n    - bench\n" > "$1/top.sls"
  {
    echo "bench:"
    echo "  root: $2"
    echo "  count: $N"
    echo "  app: shop"
    echo "  host: 127.0.0.1"
    echo "  base_port: 10000"
    echo "  settings:"
    for k in workers timeout keepalive max_body log_level cache_size retries backlog; do
      echo "    $k: value-of-$k"
    done
  } > "$1/bench.sls"
}

now() { echo "${EPOCHREALTIME/,/.}"; }

# Runs "$@" RUNS times on a fresh output dir (first) or the same one (no-op); prints best time.
time_cmd() { # $1 = label, rest = command
  local label=$1; shift
  local start end
  start=$(now)
  if ! "$@" > "$WORK/last.out" 2> "$WORK/last.err"; then
    log "$label failed:"; tail -20 "$WORK/last.err" >&2; tail -20 "$WORK/last.out" >&2; exit 1
  fi
  end=$(now)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", e - s }'
}

best() { sort -g | head -1; }

# --- corpus --------------------------------------------------------------------------------
if [ -n "${CORPUS_AGENT:-}" ]; then
  AGENT=$CORPUS_AGENT
else
  log "building corpus-agent (release)..."
  (cd "$REPO" && cargo build --release -p corpus-agent --quiet)
  AGENT="$REPO/target/release/corpus-agent"
fi

corpus_apply() { # $1 = run dir
  "$AGENT" apply --local --file-root "$WORK/salt" --pillar-root "$1/pillar" --id bench
}
corpus_first=(); corpus_noop=()
for r in $(seq "$RUNS"); do
  d="$WORK/corpus-$r"; make_pillar "$d/pillar" "$d/out"
  corpus_first+=("$(time_cmd "corpus first apply" corpus_apply "$d")")
  corpus_noop+=("$(time_cmd "corpus no-op apply" corpus_apply "$d")")
  grep -q "Succeeded: $N (changed=0)" "$WORK/last.out" || { log "corpus no-op run reported changes"; exit 1; }
done
CF=$(printf '%s\n' "${corpus_first[@]}" | best)
CN=$(printf '%s\n' "${corpus_noop[@]}" | best)
log "corpus: first ${corpus_first[*]} s, no-op ${corpus_noop[*]} s"

# --- Salt ----------------------------------------------------------------------------------
VENV=${SALT_VENV:-$WORK/venv}
if [ ! -x "$VENV/bin/salt-call" ]; then
  log "installing salt==$SALT_VERSION from PyPI into $VENV..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "salt==$SALT_VERSION"
fi
"$VENV/bin/salt-call" --version | grep -q "$SALT_VERSION" || { log "salt-call is not $SALT_VERSION"; exit 1; }

salt_apply() { # $1 = run dir
  "$VENV/bin/salt-call" --local -c "$1/conf" state.apply
}
salt_first=(); salt_noop=()
for r in $(seq "$RUNS"); do
  d="$WORK/salt-$r"; make_pillar "$d/pillar" "$d/out"
  mkdir -p "$d/conf"
  cat > "$d/conf/minion" <<CONF
id: bench
file_client: local
root_dir: $d/root
file_roots:
  base:
    - $WORK/salt
pillar_roots:
  base:
    - $d/pillar
CONF
  salt_first+=("$(time_cmd "salt first apply" salt_apply "$d")")
  salt_noop+=("$(time_cmd "salt no-op apply" salt_apply "$d")")
done
SF=$(printf '%s\n' "${salt_first[@]}" | best)
SN=$(printf '%s\n' "${salt_noop[@]}" | best)
log "salt: first ${salt_first[*]} s, no-op ${salt_noop[*]} s"

# Both tools must have produced the same files (content and mode).
if ! diff -r "$WORK/corpus-1/out" "$WORK/salt-1/out" > "$WORK/diff.txt"; then
  log "corpus and Salt produced different files:"; head -20 "$WORK/diff.txt" >&2; exit 1
fi
modes() { (cd "$1" && find . -printf '%m %p\n' | sort); }
if ! diff <(modes "$WORK/corpus-1/out") <(modes "$WORK/salt-1/out") > "$WORK/modes.txt"; then
  log "corpus and Salt set different modes:"; head -20 "$WORK/modes.txt" >&2; exit 1
fi

awk -v n="$N" -v runs="$RUNS" -v cf="$CF" -v cn="$CN" -v sf="$SF" -v sn="$SN" 'BEGIN {
  printf "apply %d templated file.managed states (best of %d)\n", n, runs
  printf "%-28s %10s %10s\n", "", "first", "no-op"
  printf "%-28s %9.3fs %9.3fs\n", "corpus-agent apply --local", cf, cn
  printf "%-28s %9.3fs %9.3fs\n", "salt-call --local (3008.3)", sf, sn
  printf "%-28s %9.1fx %9.1fx\n", "speed-up", sf / cf, sn / cn
}'
