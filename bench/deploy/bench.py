#!/usr/bin/env python3
"""Timing helper for bench/deploy/run.sh (see README.md). Runs `corpus ... --json`, stamps
every JSON line as it arrives, and times the tar baselines. Subcommands:

  push   ENV PROJECT SRC [--label L]            one timed push, prints a summary, JSON to --out
  deploy ENV PROJECT SRC RELEASE WORK RUNS      RUNS prod pushes interleaved with the baselines
  rollback ENV PROJECT SRC PROJDIR RUNS         RUNS x (push, timed rollback)
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

CORPUS = os.environ["CORPUS"]


def sync():
    os.sync()


def timed_corpus(args):
    """Runs `corpus ARGS --json`; returns wall time and every JSON event with its arrival."""
    t0 = time.perf_counter()
    p = subprocess.Popen([CORPUS, *args, "--json"], stdout=subprocess.PIPE, text=True)
    events = []
    for line in p.stdout:
        t = time.perf_counter() - t0
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        ev["_t"] = t
        events.append(ev)
    rc = p.wait()
    wall = time.perf_counter() - t0
    fin = next((e for e in events if e.get("event") == "finished"), {})
    if rc != 0 or fin.get("status") != "success":
        sys.stderr.write("corpus %s failed (rc %d): %s\n" % (" ".join(args), rc, fin.get("message")))
        for e in events:
            sys.stderr.write("  %s\n" % json.dumps(e))
        sys.exit(1)
    steps = [e for e in events if e.get("event") == "step" and e.get("result") != "running"]
    job = next((e["_t"] for e in events if e.get("event") == "job"), 0.0)
    first = steps[0]["_t"] if steps else job
    last = steps[-1]["_t"] if steps else first
    return {
        "wall": wall,
        "deploy_id": fin.get("deploy_id"),
        "agent_ms": fin.get("duration_ms"),
        # client start -> job id: login, git archive, source upload, master render + record
        "t_job": job,
        # job id -> first lifecycle event: dispatch, blob fetch(es) (sha256 + fsync), lock
        "t_first_step": first,
        "t_last_step": last,
        "t_finished": fin.get("_t", wall),
        "steps": [
            {"step": s["step"], "state": s.get("state_id", ""), "result": s["result"],
             "ms": s["duration_ms"], "t": s["_t"]}
            for s in steps
        ],
    }


def phases(r):
    """Where the client's wall time went, in seconds."""
    return {
        "client->job": r["t_job"],
        "job->lock(fetch)": r["t_first_step"] - r["t_job"],
        "lifecycle": r["t_last_step"] - r["t_first_step"],
        "last step->finished": r["t_finished"] - r["t_last_step"],
        "finished->exit": r["wall"] - r["t_finished"],
    }


def print_run(label, r):
    print("  %s: wall %.3f s, agent %s ms" % (label, r["wall"], r["agent_ms"]))
    print("    " + ", ".join("%s %.3f" % kv for kv in phases(r).items()))
    print("    steps: " + ", ".join(
        "%s%s %d ms" % (s["step"], ("[" + s["state"] + "]") if s["state"] else "", s["ms"])
        for s in r["steps"] if s["result"] != "skipped" or s["ms"]))


def med_min(xs):
    return statistics.median(xs), min(xs)


def timed(cmds):
    t0 = time.perf_counter()
    for c in cmds:
        subprocess.run(c, check=True)
    return time.perf_counter() - t0


def step_table(runs):
    names = []
    for r in runs:
        for s in r["steps"]:
            key = s["step"] + (("[" + s["state"] + "]") if s["state"] else "")
            if key not in names:
                names.append(key)
    rows = []
    for n in names:
        vals = []
        for r in runs:
            v = sum(s["ms"] for s in r["steps"]
                    if s["step"] + (("[" + s["state"] + "]") if s["state"] else "") == n)
            vals.append(v)
        rows.append((n, statistics.median(vals), min(vals), max(vals)))
    return rows


def cmd_push(argv):
    env, project, src = argv[:3]
    label = argv[4] if len(argv) > 4 and argv[3] == "--label" else "push"
    r = timed_corpus(["push", "local", env, project, "--path", src])
    print_run(label, r)
    print("DEPLOY_ID=%s" % r["deploy_id"])
    return r


def cmd_deploy(argv):
    env, project, src, release, work, runs = argv[0], argv[1], argv[2], argv[3], argv[4], int(argv[5])
    base = os.path.join(work, "baseline")
    os.makedirs(base, exist_ok=True)
    plain = os.path.join(work, "release.tar")
    subprocess.run("zstd -q -dc '%s' > '%s'" % (release, plain), shell=True, check=True)
    print("release archive: %s (%d bytes, zstd); uncompressed tar %d bytes" % (
        release, os.path.getsize(release), os.path.getsize(plain)))
    # The first prod deploy has no previous tree to archive: measured, not counted.
    sync()
    first = timed_corpus(["push", "local", env, project, "--path", src])
    print_run("first prod deploy (not counted)", first)
    corpus_runs, zst, tarx, zst_sync = [], [], [], []

    def baseline(name, extract, durable=False):
        part = os.path.join(base, ".%s.partial" % name)
        dest = os.path.join(base, name)
        for d in (part, dest):
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(part)
        sync()
        cmds = [extract + ["-C", part, "--strip-components=1", "tree"]]
        if durable:
            cmds.append(["sync", "-f", part])
        cmds.append(["mv", "-T", part, dest])
        t = timed(cmds)
        shutil.rmtree(dest)
        sync()
        return t

    for i in range(runs):
        sync()
        r = timed_corpus(["push", "local", env, project, "--path", src])
        corpus_runs.append(r)
        print_run("prod deploy %d" % (i + 1), r)
        zst.append(baseline("zst", ["tar", "--zstd", "-xf", release]))
        tarx.append(baseline("tar", ["tar", "-xf", plain]))
        zst_sync.append(baseline("zstsync", ["tar", "--zstd", "-xf", release], durable=True))
        print("  baselines %d: tar --zstd -x + mv %.3f s, tar -x (uncompressed) + mv %.3f s, "
              "tar --zstd -x + sync -f + mv %.3f s" % (i + 1, zst[-1], tarx[-1], zst_sync[-1]))
    os.remove(plain)

    walls = [r["wall"] for r in corpus_runs]
    cm, cn = med_min(walls)
    zm, zn = med_min(zst)
    tm, tn = med_min(tarx)
    sm, sn = med_min(zst_sync)
    print()
    print("%-46s %10s %10s %8s" % ("final-mode deploy, %d runs" % runs, "median s", "min s", "ratio"))
    print("%-46s %10.3f %10.3f %8s" % ("corpus push (client wall, push -> done)", cm, cn, ""))
    print("%-46s %10.3f %10.3f %7.2fx" % ("tar --zstd -xf + mv (same archive)", zm, zn, cm / zm))
    print("%-46s %10.3f %10.3f %7.2fx" % ("tar -xf uncompressed + mv (context)", tm, tn, cm / tm))
    print("%-46s %10.3f %10.3f %7.2fx" % ("tar --zstd -xf + sync -f + mv (context)", sm, sn, cm / sm))
    print("target: corpus within 1.5x of tar --zstd -xf + mv: %s (median ratio %.2fx, min ratio %.2fx)"
          % ("MET" if cm / zm <= 1.5 else "NOT MET", cm / zm, cn / zn))
    print()
    print("where corpus's time goes (medians over the counted runs, seconds):")
    for k in phases(corpus_runs[0]):
        print("  %-24s %8.3f" % (k, statistics.median(phases(r)[k] for r in corpus_runs)))
    print("agent steps (ms: median / min / max):")
    for n, m, lo, hi in step_table(corpus_runs):
        if hi:
            print("  %-34s %7.0f %7.0f %7.0f" % (n, m, lo, hi))
    json.dump({"corpus": corpus_runs, "first": first, "tar_zstd_mv": zst, "tar_mv": tarx,
               "tar_zstd_sync_mv": zst_sync}, open(os.path.join(work, "deploy.json"), "w"), indent=1)


def cmd_rollback(argv):
    env, project, src, projdir, runs = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    res = []
    # Each rollback follows a fresh push, so it always has a previous deployment to return
    # to. (Rolling back and forth with --to does not work: see README, "rollback --to".)
    for i in range(runs):
        p = timed_corpus(["push", "local", env, project, "--path", src])
        print("  push %d: wall %.3f s (not counted)" % (i + 2, p["wall"]))
        sync()
        r = timed_corpus(["rollback", "local", env, project])
        res.append(r)
        print_run("rollback %d" % (i + 1), r)
    t0 = time.perf_counter()
    subprocess.run(["du", "-s", projdir], check=True, stdout=subprocess.DEVNULL)
    du = time.perf_counter() - t0
    files = sum(len(f) + len(d) for _, d, f in os.walk(projdir))
    walls = [r["wall"] for r in res]
    wm, wn = med_min(walls)
    print("  => wall median %.3f s, min %.3f s; agent median %d ms; project dir holds %d entries, "
          "`du -s` of it takes %.3f s" % (wm, wn, statistics.median(r["agent_ms"] for r in res), files, du))
    print("  steps (ms median/min/max): " + ", ".join(
        "%s %.0f/%.0f/%.0f" % row for row in step_table(res)))
    print("  phases (s, median): " + ", ".join(
        "%s %.3f" % (k, statistics.median(phases(r)[k] for r in res)) for k in phases(res[0])))
    out = {"runs": res, "du_s": du, "entries": files}
    print("ROLLBACK_JSON " + json.dumps({"wall_med": wm, "wall_min": wn,
          "agent_med": statistics.median(r["agent_ms"] for r in res),
          "steps": {n: m for n, m, _, _ in step_table(res)},
          "last_step_to_finished": statistics.median(phases(r)["last step->finished"] for r in res),
          "lifecycle": statistics.median(phases(r)["lifecycle"] for r in res),
          "entries": files, "du_s": du}))
    return out


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {"push": cmd_push, "deploy": cmd_deploy, "rollback": cmd_rollback}[cmd](rest)
