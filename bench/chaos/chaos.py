#!/usr/bin/env python3
"""The chaos bench's driver (see README.md): N cycles of a cooking push to staging then a final
deploy of its release to prod, with the agent or the master killed (kill -9, alone or with its
process group) at a random instant of one of them, restarted, and the invariants checked once
the outcome is known. Prints one line per cycle and `k/N cycles consistent`.

usage: chaos.py WORK BIN_DIR CYCLES FILES SEED
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

WORK, BIN, CYCLES, FILES, SEED = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
MASTER, AGENT, CORPUS = (os.path.join(BIN, b) for b in ("corpus-master", "corpus-agent", "corpus"))
MDIR, ADIR, ROOT = (os.path.join(WORK, d) for d in ("master", "agent", "envs"))
PROJECT = os.path.join(WORK, "app")
rng = random.Random(SEED)
HERE = os.path.dirname(os.path.abspath(__file__))
# The environment numbers (SMEP's M) of the bench's environments: their accounts are real
# (`corpus-<smep>`), and an agent stops every process of its environments' users when it
# starts. The e2e harness hands out 1-96 to its test masters (and removes those accounts when a
# test ends), so a bench on the default range would share users with tests running beside
# it, and two benches side by side must take different ranges too.
MACHINES = os.environ.get("CHAOS_MACHINES", "97-99")


def log(*args):
    print(*args, flush=True)


def wait_for(what, check, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    diagnose()
    # The logs say why; the work dir is kept (run.sh sees the mark).
    open(os.path.join(WORK, "..", "keep"), "w").close()
    for name in ("agent.log", "master.log"):
        try:
            with open(os.path.join(WORK, name)) as f:
                tail = f.readlines()[-40:]
        except OSError:
            continue
        sys.stderr.write("---- last lines of %s ----\n%s" % (name, "".join(tail)))
    raise SystemExit("chaos: timed out waiting for %s" % what)


def diagnose():
    """What the processes were doing when a wait timed out: whether each is alive, the agent's
    own summary (SIGUSR2: its link state and since when), the master's TCP connections."""
    procs = PROCS[0] if PROCS else None
    if procs is None:
        return
    for name in ("master", "agent"):
        p = getattr(procs, name)
        state = "not started" if p is None else ("alive" if p.poll() is None else "exited %s" % p.returncode)
        sys.stderr.write("chaos: %s (pid %s) %s\n" % (name, p.pid if p else "-", state))
    if procs.agent is not None and procs.agent.poll() is None:
        os.kill(procs.agent.pid, signal.SIGUSR2)
        time.sleep(1)
    if procs.port:
        ss = subprocess.run(["ss", "-tnp", "state", "all", "( sport = :%d or dport = :%d )" % (procs.port, procs.port)],
                            capture_output=True, text=True)
        sys.stderr.write("---- sockets of port %d ----\n%s" % (procs.port, ss.stdout))


PROCS = []


class Procs:
    """The master and the agent, each in its own process group (so a group kill takes its
    children, e.g. a build's cmd.run, along)."""

    def __init__(self):
        self.master = None
        self.agent = None
        self.port = None

    def start_master(self):
        out = open(os.path.join(WORK, "master.out"), "a")
        listen = "127.0.0.1:%d" % self.port if self.port else "127.0.0.1:0"
        mark = os.path.getsize(out.name)
        self.master = subprocess.Popen(
            [MASTER, "serve", "--data-dir", MDIR, "--listen", listen, "--machine-numbers", MACHINES],
            stdout=out, stderr=open(os.path.join(WORK, "master.log"), "a"), start_new_session=True)

        def listening():
            with open(out.name) as f:
                f.seek(mark)
                for line in f:
                    if line.startswith("corpus-master listening on "):
                        self.port = int(line.rsplit(":", 1)[1])
                        return True
            return False
        wait_for("the master to listen", listening)

    def start_agent(self, token=None):
        args = [AGENT, "run", "--master", "https://127.0.0.1:%d" % self.port, "--ca",
                os.path.join(MDIR, "pki/ca.crt"), "--id", "node1", "--state-dir", ADIR, "--root", ROOT]
        if token:
            args += ["--token", token]
        self.agent = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(WORK, "agent.log"), "a"),
                                      start_new_session=True)

    def agent_connected(self):
        out = subprocess.run([MASTER, "agents", "list", "--json", "--data-dir", MDIR],
                             capture_output=True, text=True).stdout
        return '"connected": true' in out

    def kill(self, which, group):
        p = getattr(self, which)
        if group:
            os.killpg(p.pid, signal.SIGKILL)
        else:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def stop(self):
        for p in (self.agent, self.master):
            if p and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def corpus(*args, check=True):
    r = subprocess.run([CORPUS, *args], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise SystemExit("chaos: corpus %s failed: %s" % (" ".join(args), r.stderr.strip()))
    return r


def commit_version(v):
    with open(os.path.join(PROJECT, "VERSION"), "w") as f:
        f.write("%d\n" % v)
    subprocess.run(["git", "-C", PROJECT, "add", "-A"], check=True)
    subprocess.run(["git", "-C", PROJECT, "-c", "user.name=chaos", "-c", "user.email=chaos@example.com",
                    "commit", "-qm", "version %d" % v], check=True)


def make_project():
    os.makedirs(os.path.join(PROJECT, ".salt"))
    shutil.copy(os.path.join(HERE, "gen.py"), os.path.join(PROJECT, "gen.py"))
    # The build runs confined as the environment's user, which may only execute what the
    # system trees hold: the system's python3, not one under a home directory.
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    with open(os.path.join(PROJECT, ".salt/PILLAR.sample"), "w") as f:
        f.write("keep_archives: 2\n")
    with open(os.path.join(PROJECT, ".salt/build.sls"), "w") as f:
        f.write("generate:\n  cmd.run:\n    - name: %s {{ common.project_dir }}/gen.py build "
                "{{ common.project_dir }}/VERSION {{ common.run_dir }} %d\n" % (py, FILES))
    with open(os.path.join(PROJECT, ".salt/upgrade.sls"), "w") as f:
        f.write("data:\n  cmd.run:\n    - name: %s {{ common.run_dir }}/gen.py data "
                "{{ common.run_dir }}/VERSION {{ common.data_dir }}\n" % py)
    subprocess.run(["git", "init", "-q", PROJECT], check=True)
    commit_version(0)


def status(env):
    return json.loads(corpus("status", "local", env, "app", "--json").stdout)


def running(env):
    r = corpus("status", "local", env, "app", "--json", check=False)
    if r.returncode != 0:
        return True
    return any(d["result"] == "running" for d in json.loads(r.stdout).get("deployments", []))


def project_dir(env):
    return os.path.join(ROOT, env, "srv/projects/app")


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check(env, versions):
    """The invariants of one environment's project: what is wrong (empty: consistent), and
    the version now live."""
    wrong = []
    pdir = project_dir(env)
    if not os.path.isdir(pdir):
        return wrong, None  # never deployed (its first push was killed before the layout)
    lock = os.path.join(pdir, ".corpus/lock")
    if os.path.exists(lock) and subprocess.run(["flock", "-n", lock, "true"]).returncode != 0:
        wrong.append("the project lock is held")
    if os.path.exists(os.path.join(pdir, ".corpus/journal.json")):
        wrong.append("a deploy journal is left")
    live = None
    try:
        live = os.path.basename(os.readlink(os.path.join(pdir, "deploy/current")))
    except OSError:
        pass
    run_version = None
    gen = os.path.join(pdir, "run/gen")
    if live is not None:
        names = []
        for dirpath, _, files in os.walk(gen):
            names += [os.path.join(dirpath, n) for n in files]
        contents = {read(n) for n in names}
        if len(names) != FILES or len(contents) != 1:
            wrong.append("run/ is a mixed tree: %d files, versions %s" % (len(names), sorted(map(str, contents))[:4]))
        else:
            run_version = contents.pop()
            if run_version not in versions:
                wrong.append("run/ holds version %s, neither of %s" % (run_version, versions))
    data = read(os.path.join(pdir, "data/marker"))
    if data is not None and data not in versions:
        wrong.append("data/ holds version %s, neither of %s" % (data, versions))
    if run_version is not None and data != run_version:
        wrong.append("data/ (%s) does not match run/ (%s)" % (data, run_version))
    st = status(env)
    deps = st.get("deployments", [])
    if any(d["result"] == "running" for d in deps):
        wrong.append("the master still shows a running job")
    master_live = [d["id"] for d in deps if d["live"]]
    if master_live != ([live] if live else []):
        wrong.append("the master's live deployment %s is not the disk's %s" % (master_live, live))
    if live and env == ENVS["staging"]:
        live_dep = next((d for d in deps if d["id"] == live), None)
        commits = {r["commit"] for r in st.get("releases", [])}
        if live_dep and live_dep["commit"] not in commits:
            wrong.append("the live cooked deployment %s has no release on the master" % live)
    return wrong, run_version


ENVS = {}
AT = tuple(float(x) for x in os.environ["CHAOS_AT"].split(":")) if os.environ.get("CHAOS_AT") else None


def main():
    os.makedirs(WORK, exist_ok=True)
    subprocess.run([MASTER, "init", "--data-dir", MDIR], check=True, stdout=subprocess.DEVNULL)
    procs = Procs()
    PROCS.append(procs)
    try:
        run_cycles(procs)
    finally:
        # Also when the setup fails: no master or agent outlives the bench.
        procs.stop()


def run_cycles(procs):
    procs.start_master()
    subprocess.run([MASTER, "users", "add", "chaos@example.com", "--data-dir", MDIR],
                   input="chaos-password-123\n", text=True, check=True, stdout=subprocess.DEVNULL)
    token = subprocess.run([MASTER, "tokens", "create", "--ttl", "10m", "--data-dir", MDIR],
                           capture_output=True, text=True, check=True).stdout.strip()
    procs.start_agent(token)
    wait_for("the agent to attach", procs.agent_connected)
    conf = os.path.join(WORK, "makinastates.conf")
    with open(conf, "w") as f:
        f.write("local:\n  url: https://127.0.0.1:%d\n  id: chaos@example.com\n  password: chaos-password-123\n"
                "  ca: %s\n" % (procs.port, os.path.join(MDIR, "pki/ca.crt")))
    os.chmod(conf, 0o600)
    os.environ["CORPUS_CONFIG"] = conf
    make_project()
    ENVS["staging"] = corpus("init_env", "local", "staging").stdout.strip()
    ENVS["prod"] = corpus("init_env", "local", "prod").stdout.strip()
    # A first, uninterrupted cycle: the durations the kills are drawn from.
    t0 = time.time()
    corpus("push", "local", ENVS["staging"], "app", "--path", PROJECT)
    t1 = time.time()
    corpus("push", "local", ENVS["prod"], "app", "--path", PROJECT)
    t2 = time.time()
    durations = {"staging": t1 - t0, "prod": t2 - t1}
    log("warm-up: cooking %.1f s, final deploy %.1f s" % (durations["staging"], durations["prod"]))
    consistent = 0
    previous = {"staging": "0", "prod": "0"}
    for cycle in range(1, CYCLES + 1):
        commit_version(cycle)
        phase = rng.choice(["staging", "prod"])
        target = rng.choice(["agent", "master"])
        group = rng.choice([True, False])
        # Fixed choices to chase one kind of fault (the random draws still happen, so a seed
        # keeps its delays).
        phase = os.environ.get("CHAOS_PHASE", phase)
        target = os.environ.get("CHAOS_TARGET", target)
        group = {"1": True, "0": False}.get(os.environ.get("CHAOS_GROUP", ""), group)
        delay = rng.uniform(0, durations[phase] * 1.2)
        if AT is not None:
            # Fixed window of the push's warm-up duration (CHAOS_AT=LOW:HIGH), e.g. its end.
            delay = durations[phase] * (AT[0] + (AT[1] - AT[0]) * delay / (durations[phase] * 1.2))
        outcome = {}
        for env_name in ("staging", "prod"):
            client = subprocess.Popen([CORPUS, "push", "local", ENVS[env_name], "app", "--path", PROJECT],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if env_name == phase:
                time.sleep(delay)
                procs.kill(target, group)
                time.sleep(rng.uniform(0, 2))
                if target == "master":
                    procs.start_master()
                else:
                    procs.start_agent()
            try:
                _, err = client.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                client.kill()
                _, err = client.communicate()
            outcome[env_name] = client.returncode
            wait_for("the agent to attach", procs.agent_connected, 120)
            wait_for("the %s job to end" % env_name, lambda: not running(ENVS[env_name]), 300)
        wrong = []
        for env_name in ("staging", "prod"):
            versions = [previous[env_name], str(cycle)]
            if env_name == "prod":
                # A final push deploys the latest cooked release: the previous one's
                # version when this cycle's cooking failed.
                versions.append(previous["staging"])
            problems, run_v = check(ENVS[env_name], versions)
            wrong += ["%s: %s" % (env_name, w) for w in problems]
            if run_v is not None:
                previous[env_name] = run_v
        ok = not wrong
        consistent += ok
        log("cycle %d: kill -9 %s%s at %.2f s of the %s push; exits staging %s prod %s: %s" % (
            cycle, target, " (group)" if group else "", delay, phase, outcome["staging"], outcome["prod"],
            "consistent" if ok else "INCONSISTENT: " + "; ".join(wrong)))
    log("%d/%d cycles consistent" % (consistent, CYCLES))


main()
