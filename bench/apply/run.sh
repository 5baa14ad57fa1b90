#!/usr/bin/env bash
# Benchmark: `corpus-agent apply --local` against `salt-call --local state.apply` (Salt 3008.3
# from PyPI, installed into a throwaway venv), first run and no-op re-run, in two cases:
#   flat:  1,000 file.managed states from a Jinja loop in one SLS, templated from pillar;
#   heavy: a formula-shaped tree: map.jinja (import_yaml defaults, grains.filter_by on os_family
#          merged with pillar app:lookup) imported by 20 SLS files and by each of the 180 rendered
#          file templates, 200 states (file.directory + file.managed with require).
# Prints the four timings and the two ratios per case. Usage: bench/apply/run.sh
# (env: CASE=all|flat|heavy, N=1000 flat states, RUNS=3 best-of, SALT_VENV=DIR to reuse a venv
# that already has salt==3008.3, CORPUS_AGENT=BIN to skip the release build, KEEP=1 to keep the
# work dir, BENCH_FS=loop|tmpdir).
#
# Where the runs write (BENCH_FS): as root, by default, a fresh ext4 made with mkfs's defaults
# (journal included, as on a real host) in a sparse image file, loop-mounted for the run and
# removed after; both tools' files, caches and temp files (TMPDIR) go there. This machine's
# root file system is ext4 *without* a journal, where a new file's inode is not taken from
# those freed in the last seconds to minutes, and creating a file scans past each of them
# (find_inode_bit -> recently_deleted, 40% of a slow run in a perf profile): right after a run
# (or salt-call, which removes a temp file per managed file) freed thousands, corpus's first
# run took 0.11-0.30 s instead of 0.04-0.06 s, a cost of that file system which salt-call's 6 s
# hides. BENCH_FS=tmpdir writes under $TMPDIR (or /tmp) as before.
set -euo pipefail

CASE=${CASE:-all}
N=${N:-1000}
RUNS=${RUNS:-3}
SALT_VERSION=3008.3
# The heavy case: SLS files, and states in each (one file.directory, the rest file.managed).
HEAVY_SLS=20
HEAVY_PER_SLS=10
REPO=$(cd "$(dirname "$0")/../.." && pwd)
log() { echo "$*" >&2; }

case "$CASE" in
  all) CASES=(flat heavy) ;;
  flat | heavy) CASES=("$CASE") ;;
  *) log "unknown CASE=$CASE: use all, flat or heavy"; exit 2 ;;
esac

IMAGE="" MOUNT="" WORK=""
# Installed before anything is made, so a failed mkfs or mount leaves nothing behind either.
cleanup() {
  if [ "${KEEP:-0}" = 1 ] && [ -n "$WORK" ]; then
    echo "work dir kept: $WORK${IMAGE:+ (file system image $IMAGE mounted on $MOUNT)}" >&2
    return
  fi
  if [ -n "$MOUNT" ]; then
    if mountpoint -q "$MOUNT"; then umount "$MOUNT"; fi
    rmdir "$MOUNT"
  elif [ -n "$WORK" ]; then
    rm -rf "$WORK"
  fi
  if [ -n "$IMAGE" ]; then rm -f "$IMAGE"; fi
}
trap cleanup EXIT
case "${BENCH_FS:-loop}" in
  loop)
    if [ "$(id -u)" != 0 ] || ! command -v mkfs.ext4 >/dev/null; then
      log "BENCH_FS=loop needs root and mkfs.ext4 (BENCH_FS=tmpdir writes under \$TMPDIR)"; exit 2
    fi
    IMAGE=$(mktemp /var/tmp/corpus-bench-apply.XXXXXX.img)
    MOUNT=$(mktemp -d "${TMPDIR:-/tmp}/corpus-bench-apply-fs.XXXXXX")
    truncate -s 4G "$IMAGE"
    # Inode tables and journal written now, not by a kernel thread during the runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMAGE"
    mount -o loop "$IMAGE" "$MOUNT"
    WORK=$(mktemp -d "$MOUNT/work.XXXXXX")
    ;;
  tmpdir) WORK=$(mktemp -d "${TMPDIR:-/tmp}/corpus-bench-apply.XXXXXX") ;;
  *) log "unknown BENCH_FS=$BENCH_FS: use loop or tmpdir"; exit 2 ;;
esac
# Both tools' temp files (salt-call writes each rendered template to one first) go there too.
mkdir -p "$WORK/tmp"
export TMPDIR="$WORK/tmp"

# --- the flat case: Salt syntax, shared by both tools --------------------------------------
flat_tree() { # $1 = file root
  mkdir -p "$1/bench"
  cat > "$1/top.sls" <<'SLS'
base:
  '*':
    - bench
SLS
  cat > "$1/bench/init.sls" <<'SLS'
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
  cat > "$1/bench/file.conf.j2" <<'J2'
# {{ pillar['bench']['app'] }} instance {{ index }}, managed by the state engine
listen = {{ pillar['bench']['host'] }}:{{ pillar['bench']['base_port'] + index }}
{% for key, value in pillar['bench']['settings'] | dictsort %}
{{ key }} = {{ value }}
{% endfor %}
J2
}

# One pillar tree per tool and run, so each writes its own output tree.
flat_pillar() { # $1 = pillar dir, $2 = output root
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

# --- the heavy case: a formula ------------------------------------------------------------
heavy_tree() { # $1 = file root
  mkdir -p "$1/app/files"
  printf "base:\n  '*':\n    - app\n" > "$1/top.sls"
  cat > "$1/app/defaults.yaml" <<'YAML'
default:
  service: shop
  package: shop-server
  user: root
  host: 127.0.0.1
  port_base: 20000
  conf_mode: '0644'
  dir_mode: '0755'
  settings:
    workers: 4
    timeout: 30
    keepalive: 75
    max_body: 1m
    log_level: info
    cache_size: 64m
    retries: 3
    backlog: 511
  features:
    - gzip
    - metrics
    - tls
Debian:
  package: shop-server-deb
  user: www-data
  settings:
    log_level: notice
RedHat:
  package: shop-server-rpm
  user: apache
Arch:
  package: shop
Suse:
  package: shop-server-suse
YAML
  cat > "$1/app/map.jinja" <<'J2'
{% import_yaml "app/defaults.yaml" as defaults %}
{% set app = salt['grains.filter_by'](defaults, grain='os_family', merge=salt['pillar.get']('app:lookup', {}), base='default') %}
J2
  cat > "$1/app/files/service.conf.j2" <<'J2'
{% from "app/map.jinja" import app with context %}
# {{ app.service }} {{ svc }} instance {{ index }} ({{ app.package }}), managed by the state engine
listen = {{ app.host }}:{{ app.port_base + index }}
user = {{ app.user }}
{% for key, value in app.settings | dictsort %}
{{ key }} = {{ value }}
{% endfor %}
features = {{ app.features | join(',') }}
J2
  {
    echo "include:"
    for s in $(seq 0 $((HEAVY_SLS - 1))); do echo "  - app.svc$s"; done
  } > "$1/app/init.sls"
  for s in $(seq 0 $((HEAVY_SLS - 1))); do
    cat > "$1/app/svc$s.sls" <<SLS
{% from "app/map.jinja" import app with context %}
{% set svc = 'svc$s' %}
app_svc${s}_dir:
  file.directory:
    - name: {{ app.root }}/{{ svc }}
    - mode: '{{ app.dir_mode }}'
    - makedirs: True
{% for i in range($((HEAVY_PER_SLS - 1))) %}
app_svc${s}_conf_{{ i }}:
  file.managed:
    - name: {{ app.root }}/{{ svc }}/{{ i }}.conf
    - source: salt://app/files/service.conf.j2
    - template: jinja
    - mode: '{{ app.conf_mode }}'
    - require:
      - file: app_svc${s}_dir
    - context:
        svc: {{ svc }}
        index: {{ $((s * HEAVY_PER_SLS)) + i }}
{% endfor %}
SLS
  done
}

heavy_pillar() { # $1 = pillar dir, $2 = output root
  mkdir -p "$1"
  printf "base:\n  '*':\n    - app\n" > "$1/top.sls"
  cat > "$1/app.sls" <<YAML
app:
  lookup:
    root: $2
    port_base: 30000
    settings:
      workers: 8
      retries: 5
YAML
}

case_states() { # $1 = case
  if [ "$1" = flat ]; then echo "$N"; else echo $((HEAVY_SLS * HEAVY_PER_SLS)); fi
}

now() { echo "${EPOCHREALTIME/,/.}"; }

# Runs "$@" once; prints the time it took.
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


# --- the tools -----------------------------------------------------------------------------
if [ -n "${CORPUS_AGENT:-}" ]; then
  AGENT=$CORPUS_AGENT
else
  log "building corpus-agent (release)..."
  (cd "$REPO" && cargo build --release -p corpus-agent --quiet)
  AGENT="$REPO/target/release/corpus-agent"
fi

VENV=${SALT_VENV:-$WORK/venv}
if [ ! -x "$VENV/bin/salt-call" ]; then
  log "installing salt==$SALT_VERSION from PyPI into $VENV..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "salt==$SALT_VERSION"
fi
"$VENV/bin/salt-call" --version | grep -q "$SALT_VERSION" || { log "salt-call is not $SALT_VERSION"; exit 1; }

corpus_apply() { # $1 = file root, $2 = run dir
  "$AGENT" apply --local --file-root "$1" --pillar-root "$2/pillar" --id bench
}
salt_apply() { # $1 = run dir
  "$VENV/bin/salt-call" --local -c "$1/conf" state.apply
}

# Applies one case with both tools, checks they wrote the same tree, prints the table.
run_case() { # $1 = case
  local case=$1 states root cdir
  states=$(case_states "$case")
  cdir="$WORK/$case"
  root="$cdir/salt"
  "${case}_tree" "$root"

  local corpus_first=() corpus_noop=() r d
  for r in $(seq "$RUNS"); do
    d="$cdir/corpus-$r"; "${case}_pillar" "$d/pillar" "$d/out"
    corpus_first+=("$(time_cmd "corpus first apply ($case)" corpus_apply "$root" "$d")")
    grep -q "Succeeded: $states (changed=$states)" "$WORK/last.out" \
      || { log "corpus first run ($case) did not change $states states:"; tail -5 "$WORK/last.out" >&2; exit 1; }
    corpus_noop+=("$(time_cmd "corpus no-op apply ($case)" corpus_apply "$root" "$d")")
    grep -q "Succeeded: $states (changed=0)" "$WORK/last.out" \
      || { log "corpus no-op run ($case) reported changes"; tail -5 "$WORK/last.out" >&2; exit 1; }
  done
  local cf cn
  cf=$(printf '%s\n' "${corpus_first[@]}" | best)
  cn=$(printf '%s\n' "${corpus_noop[@]}" | best)
  log "$case corpus: first ${corpus_first[*]} s, no-op ${corpus_noop[*]} s"

  local salt_first=() salt_noop=()
  for r in $(seq "$RUNS"); do
    d="$cdir/salt-$r"; "${case}_pillar" "$d/pillar" "$d/out"
    mkdir -p "$d/conf"
    cat > "$d/conf/minion" <<CONF
id: bench
file_client: local
root_dir: $d/root
file_roots:
  base:
    - $root
pillar_roots:
  base:
    - $d/pillar
CONF
    salt_first+=("$(time_cmd "salt first apply ($case)" salt_apply "$d")")
    grep -q "Succeeded: $states (changed=$states)" "$WORK/last.out" \
      || { log "salt first run ($case) did not change $states states:"; tail -5 "$WORK/last.out" >&2; exit 1; }
    salt_noop+=("$(time_cmd "salt no-op apply ($case)" salt_apply "$d")")
  done
  local sf sn
  sf=$(printf '%s\n' "${salt_first[@]}" | best)
  sn=$(printf '%s\n' "${salt_noop[@]}" | best)
  log "$case salt: first ${salt_first[*]} s, no-op ${salt_noop[*]} s"

  # Both tools must have produced the same files (content and mode).
  if ! diff -r "$cdir/corpus-1/out" "$cdir/salt-1/out" > "$WORK/diff.txt"; then
    log "corpus and Salt produced different files ($case):"; head -20 "$WORK/diff.txt" >&2; exit 1
  fi
  modes() { (cd "$1" && find . -printf '%m %p\n' | sort); }
  if ! diff <(modes "$cdir/corpus-1/out") <(modes "$cdir/salt-1/out") > "$WORK/modes.txt"; then
    log "corpus and Salt set different modes ($case):"; head -20 "$WORK/modes.txt" >&2; exit 1
  fi

  local what
  if [ "$case" = flat ]; then
    what="apply $states templated file.managed states"
  else
    what="apply a $states-state formula (map.jinja: import_yaml, filter_by)"
  fi
  awk -v what="$what" -v runs="$RUNS" -v cf="$cf" -v cn="$cn" -v sf="$sf" -v sn="$sn" 'BEGIN {
    printf "%s (best of %d)\n", what, runs
    printf "%-28s %10s %10s\n", "", "first", "no-op"
    printf "%-28s %9.3fs %9.3fs\n", "corpus-agent apply --local", cf, cn
    printf "%-28s %9.3fs %9.3fs\n", "salt-call --local (3008.3)", sf, sn
    printf "%-28s %9.1fx %9.1fx\n", "speed-up", sf / cf, sn / cn
  }'
}

log "load: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'), writing to ${MOUNT:+a fresh journaled ext4 on }$WORK"
for c in "${CASES[@]}"; do run_case "$c"; done
