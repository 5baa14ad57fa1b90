//! Harness for the end-to-end tests: starts the real `corpus-master`, `corpus-agent` and
//! `corpus` binaries on loopback with ephemeral ports and temporary directories, and waits on
//! observable conditions with deadlines (never on fixed sleeps).
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which the README's test
//! command does); the harness finds them next to the test executable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of a workspace binary, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CORPUS_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    // target/debug/deps/e2e-<hash> -> target/debug/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Polls `check` every 50 ms until it returns true; fails naming `what` after [`DEADLINE`].
pub fn wait_until(
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_err = None;
    while start.elapsed() < DEADLINE {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_err {
        Some(e) => bail!("timed out after {DEADLINE:?} waiting for {what}; last error: {e:#}"),
        None => bail!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    /// Where its stderr goes, for post-mortems.
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn stderr_file(path: &Path) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    ))
}

/// A master with its data dir.
pub struct Master {
    pub data_dir: PathBuf,
    pub addr: String,
    pub proc: Proc,
    /// The SMEP numbers this master's environments get; shared by a restart on the same data
    /// dir, released (its accounts removed) when the last master using it is dropped.
    pub identities: Arc<IdentityRange>,
}

/// Sheet names whose SMEP sheet number is 1, 2, 3, 4 and 5 (md5 of the name and a newline).
const TEST_SHEETS: [&str; 5] = [
    "corpus-test-9",
    "corpus-test-0",
    "corpus-test-5",
    "corpus-test-1",
    "corpus-test-7",
];

/// Environment numbers each test master takes: tests run side by side on one machine, and
/// agents create real `corpus-<smep>` accounts, so no two masters may hand out the same one.
const NUMBERS_PER_MASTER: u32 = 4;

/// A test master's share of the SMEP space: its sheet (S) and environment numbers (M).
pub struct IdentityRange {
    pub sheet_number: u32,
    pub first: u32,
    pub last: u32,
}

impl IdentityRange {
    /// The `serve` flags that confine the master to this range (the sheet only when the test
    /// does not bring its own config).
    fn flags(&self, with_sheet: bool) -> Vec<String> {
        let mut flags = vec![
            "--machine-numbers".to_owned(),
            format!("{}-{}", self.first, self.last),
        ];
        if with_sheet {
            flags.push("--sheet".to_owned());
            flags.push(TEST_SHEETS[self.sheet_number as usize - 1].to_owned());
        }
        flags
    }
}

impl Drop for IdentityRange {
    /// Removes the accounts agents may have created for this range, under any sheet (a test
    /// may bring its own): nothing a test made outlives it.
    fn drop(&mut self) {
        for sheet in 1..=5u32 {
            for machine in self.first..=self.last {
                for platform in [0u32, 2, 3] {
                    let name = format!("corpus-{}", sheet * 10_000 + machine * 100 + platform * 10);
                    for (database, remove) in
                        [("passwd", ["userdel", "-f"]), ("group", ["groupdel", "-f"])]
                    {
                        let exists = Command::new("getent")
                            .args([database, &name])
                            .output()
                            .is_ok_and(|o| o.status.success());
                        if exists {
                            let _ = Command::new(remove[0])
                                .args(&remove[1..])
                                .arg(&name)
                                .status();
                        }
                    }
                }
            }
        }
    }
}

/// The range of the master on `data_dir`: the one a running master there already has, or the
/// next free one.
fn identity_range(data_dir: &Path) -> Arc<IdentityRange> {
    static RANGES: Mutex<Vec<(PathBuf, Weak<IdentityRange>)>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut ranges = RANGES.lock().unwrap_or_else(|p| p.into_inner());
    ranges.retain(|(_, range)| range.strong_count() > 0);
    if let Some(range) = ranges
        .iter()
        .find(|(dir, _)| dir == data_dir)
        .and_then(|(_, range)| range.upgrade())
    {
        return range;
    }
    let slots_per_sheet = 99 / NUMBERS_PER_MASTER;
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    // Live masters never share environment numbers, whatever their sheets: a range's drop
    // removes its numbers' accounts under every sheet, which must not reach a running test's.
    let taken: Vec<u32> = ranges
        .iter()
        .filter_map(|(_, range)| range.upgrade().map(|r| r.first))
        .collect();
    let slot = (0..slots_per_sheet)
        .map(|s| (k + s) % slots_per_sheet)
        .find(|s| !taken.contains(&(1 + s * NUMBERS_PER_MASTER)))
        .unwrap_or(k % slots_per_sheet);
    let first = 1 + slot * NUMBERS_PER_MASTER;
    let range = Arc::new(IdentityRange {
        sheet_number: k % 5 + 1,
        first,
        last: first + NUMBERS_PER_MASTER - 1,
    });
    ranges.push((data_dir.to_owned(), Arc::downgrade(&range)));
    range
}

impl Master {
    /// `corpus-master init` then `serve` on an ephemeral loopback port.
    pub fn start(root: &Path) -> anyhow::Result<Master> {
        Self::start_with(root, &[])
    }

    /// `init`, then `serve` with extra flags.
    pub fn start_with(root: &Path, extra: &[&str]) -> anyhow::Result<Master> {
        let data_dir = root.join("master");
        let out = Command::new(bin("corpus-master"))
            .args(["init", "--data-dir"])
            .arg(&data_dir)
            .output()?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self::serve_with(&data_dir, "127.0.0.1:0", extra)
    }

    /// `serve` on an existing data dir; `listen` may name a port to restart on.
    pub fn serve(data_dir: &Path, listen: &str) -> anyhow::Result<Master> {
        Self::serve_with(data_dir, listen, &[])
    }

    /// `serve` with extra flags (e.g. `--file-root`).
    pub fn serve_with(data_dir: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Master> {
        let log = data_dir.join(format!("serve-{}.log", unique()));
        let identities = identity_range(data_dir);
        let own_sheet = extra.iter().any(|a| *a == "--config" || *a == "--sheet");
        let mut child = Command::new(bin("corpus-master"))
            .args([
                "serve",
                "--heartbeat",
                "1s",
                "--listen",
                listen,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(identities.flags(!own_sheet))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr_file(&log)?)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let proc = Proc { child, log };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(DEADLINE)
            .with_context(|| format!("master did not start: {}", proc.log_text()))?;
        let addr = line
            .strip_prefix("corpus-master listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        Ok(Master {
            data_dir: data_dir.to_owned(),
            addr,
            proc,
            identities,
        })
    }

    /// A master the test started itself (e.g. with passed sockets, as another user), serving
    /// `data_dir` on `addr`, for the console and agent helpers.
    pub fn adopt(data_dir: &Path, addr: String, proc: Proc) -> Master {
        Master {
            data_dir: data_dir.to_owned(),
            addr,
            proc,
            identities: identity_range(data_dir),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.crt")
    }

    pub fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.ca())?)
    }

    /// Runs a console command against this master.
    pub fn console(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut child = Command::new(bin("corpus-master"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            use std::io::Write;
            input.write_all(stdin.unwrap_or("").as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs a console command that must succeed and prints JSON.
    pub fn console_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.console(&all, None)?;
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn add_user(&self, id: &str, password: &str) -> anyhow::Result<()> {
        let out = self.console(&["users", "add", id], Some(&format!("{password}\n")))?;
        if !out.status.success() {
            bail!("users add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn token(&self, ttl: &str) -> anyhow::Result<String> {
        let out = self.console(&["tokens", "create", "--ttl", ttl], None)?;
        if !out.status.success() {
            bail!(
                "tokens create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// The `agents list --json` entry of `id`, if any.
    pub fn agent(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let list = self.console_json(&["agents", "list"])?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == id)
            .cloned())
    }

    pub fn wait_agent(&self, id: &str, status: &str, connected: bool) -> anyhow::Result<()> {
        wait_until(
            &format!("agent {id} {status}, connected={connected}"),
            || {
                Ok(self
                    .agent(id)?
                    .is_some_and(|a| a["status"] == status && a["connected"] == connected))
            },
        )
    }
}

/// A running `corpus-agent run`.
pub struct Agent {
    pub id: String,
    pub state_dir: PathBuf,
    pub proc: Proc,
}

impl Agent {
    pub fn start(
        master: &Master,
        root: &Path,
        id: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Agent> {
        Self::start_with(&master.url(), &master.ca(), root, id, token)
    }

    pub fn start_with(
        url: &str,
        ca: &Path,
        root: &Path,
        id: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Agent> {
        Self::spawn(url, ca, root, id, token, &[])
    }

    /// Starts (or restarts, with the same state and environments) an agent; `env` adds
    /// environment variables such as `CORPUS_TEST_PAUSE_AT`.
    pub fn spawn(
        url: &str,
        ca: &Path,
        root: &Path,
        id: &str,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let state_dir = root.join(format!("agent-{id}"));
        std::fs::create_dir_all(&state_dir)?;
        // Environment users (isolation) must pass through the test's temporary directory to
        // reach their roots under the agent's --root, as they pass through /srv in production.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        }
        let log = state_dir.join(format!("agent-{}.log", unique()));
        let mut cmd = Command::new(bin("corpus-agent"));
        cmd.args(["run", "--master", url, "--id", id])
            .arg("--ca")
            .arg(ca)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--root")
            .arg(state_dir.join("root"))
            .args([
                "--enroll-poll",
                "100ms",
                "--reconnect-min",
                "100ms",
                "--reconnect-max",
                "1s",
            ])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr_file(&log)?);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        let child = cmd.spawn()?;
        Ok(Agent {
            id: id.to_owned(),
            state_dir,
            proc: Proc { child, log },
        })
    }

    /// Where this agent keeps environments (`--root`).
    pub fn root(&self) -> PathBuf {
        self.state_dir.join("root")
    }

    /// `ROOT/<env>/srv/projects/<project>` on this agent.
    pub fn project_dir(&self, env: &str, project: &str) -> PathBuf {
        self.root().join(env).join("srv/projects").join(project)
    }

    /// The client certificate and key the agent was issued.
    pub fn identity(&self) -> anyhow::Result<(String, String)> {
        Ok((
            std::fs::read_to_string(self.state_dir.join("agent.crt"))?,
            std::fs::read_to_string(self.state_dir.join("agent.key"))?,
        ))
    }
}

/// Writes a `~/.makinastates.conf` for one endpoint and returns its path.
pub fn client_config(
    root: &Path,
    name: &str,
    url: &str,
    id: &str,
    password: &str,
    ca: &Path,
) -> anyhow::Result<PathBuf> {
    let path = root.join(format!("makinastates-{}.conf", unique()));
    let text = format!(
        "{name}:\n  url: {url}\n  id: {id}\n  password: {password}\n  ca: {}\n",
        ca.display()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `corpus ARGS` with `CORPUS_CONFIG=config`.
pub fn corpus(config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin("corpus"))
        .args(args)
        .env("CORPUS_CONFIG", config)
        .env("CORPUS_CACHE_DIR", session_cache_dir(config))
        .stdin(Stdio::null())
        .output()?)
}

/// Where `corpus` caches its sessions for the client config `config`: next to it, inside the
/// test's temp dir (never the user's `~/.cache`).
pub fn session_cache_dir(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("."))
        .join("corpus-sessions")
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A master, one accepted agent, a user and a client config: what lifecycle tests start from.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub master: Master,
    pub agent: Agent,
    pub config: PathBuf,
}

impl Cluster {
    pub fn start() -> anyhow::Result<Cluster> {
        Self::start_with_agent_env(&[])
    }

    pub fn start_with_agent_env(env: &[(&str, &str)]) -> anyhow::Result<Cluster> {
        let root = tempfile::tempdir()?;
        let master = Master::start(root.path())?;
        master.add_user("dev@example.com", "a-long-password")?;
        let token = master.token("10m")?;
        let agent = Agent::spawn(
            &master.url(),
            &master.ca(),
            root.path(),
            "node1",
            Some(&token),
            env,
        )?;
        master.wait_agent("node1", "accepted", true)?;
        let config = client_config(
            root.path(),
            "local",
            &master.url(),
            "dev@example.com",
            "a-long-password",
            &master.ca(),
        )?;
        Ok(Cluster {
            root,
            master,
            agent,
            config,
        })
    }

    /// Restarts the agent (same id, state and root), e.g. after killing it.
    pub fn restart_agent(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.agent.proc.kill();
        self.agent = Agent::spawn(
            &self.master.url(),
            &self.master.ca(),
            self.root.path(),
            "node1",
            None,
            env,
        )?;
        Ok(())
    }

    pub fn corpus(&self, args: &[&str]) -> anyhow::Result<Output> {
        corpus(&self.config, args)
    }

    /// `corpus ARGS` as a background process (for pushes a test interrupts).
    pub fn corpus_spawn(&self, args: &[&str]) -> anyhow::Result<Proc> {
        let log = self.root.path().join(format!("corpus-{}.log", unique()));
        let child = Command::new(bin("corpus"))
            .args(args)
            .env("CORPUS_CONFIG", &self.config)
            .env("CORPUS_CACHE_DIR", session_cache_dir(&self.config))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&log)?)
            .spawn()?;
        Ok(Proc { child, log })
    }

    /// `corpus init_env local PLATFORM`: the new environment's UUID.
    pub fn init_env(&self, platform: &str) -> anyhow::Result<String> {
        let out = self.corpus(&["init_env", "local", platform])?;
        if !out.status.success() {
            bail!("init_env failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `corpus push local ENV PROJECT --path PATH [extra]`.
    pub fn push(
        &self,
        env: &str,
        project: &str,
        path: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Output> {
        let path = path.display().to_string();
        let mut args = vec!["push", "local", env, project, "--path", &path];
        args.extend_from_slice(extra);
        self.corpus(&args)
    }

    /// `corpus status local ENV PROJECT --json`.
    pub fn status(&self, env: &str, project: &str) -> anyhow::Result<Value> {
        let out = self.corpus(&["status", "local", env, project, "--json"])?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn project_dir(&self, env: &str, project: &str) -> PathBuf {
        self.agent.project_dir(env, project)
    }
}

/// Runs git in `dir` with a fixed identity.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=corpus tests",
            "-c",
            "user.email=tests@corpus.invalid",
        ])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A sample project as a git repository: an app file, and `.salt/` with a build that copies
/// the app into `run/`, start/stop/restore steps that leave traces, and the given overrides
/// (file name under `.salt/` -> contents). Committed.
pub fn sample_project(dir: &Path, version: &str, overrides: &[(&str, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(".salt"))?;
    std::fs::create_dir_all(dir.join("app"))?;
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q"])?;
    }
    std::fs::write(dir.join("app/index.html"), format!("hello {version}\n"))?;
    let files: Vec<(&str, String)> = vec![
        ("PILLAR.sample", "keep_archives: 3\n".to_owned()),
        (
            "build.sls",
            "copy_app:\n  cmd.run:\n    - name: cp -a {{ common.project_dir }}/app/. {{ common.run_dir }}/ && echo {{ common.mode }} >> {{ common.project_root }}/builds.log\n".to_owned(),
        ),
        (
            "stop.sls",
            "stop_app:\n  cmd.run:\n    - name: echo stop >> {{ common.project_root }}/events.log\n".to_owned(),
        ),
        (
            "start.sls",
            "start_app:\n  cmd.run:\n    - name: echo start >> {{ common.project_root }}/events.log\n".to_owned(),
        ),
        (
            "restore.sls",
            "reload_dumps:\n  cmd.run:\n    - name: echo restore >> {{ common.project_root }}/events.log\n".to_owned(),
        ),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(".salt").join(name), text)?;
    }
    for (name, text) in overrides {
        std::fs::write(dir.join(".salt").join(name), text)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "--allow-empty", "-m", version])?;
    Ok(())
}

/// Every regular file below `dir` (following a top-level symlink) with its contents: two
/// snapshots are equal when the trees are byte-identical.
pub fn snapshot(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let base = std::fs::canonicalize(dir)?;
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            let rel = path.strip_prefix(&base)?.display().to_string();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&path)?
                        .display()
                        .to_string()
                        .into_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

impl Agent {
    /// Starts `corpus-agent run --config CONFIG` (with the quick test timings as flags); its
    /// state dir is `root/agent-ID`, which the config should name too.
    pub fn spawn_with_config(root: &Path, id: &str, config: &Path) -> anyhow::Result<Agent> {
        let state_dir = root.join(format!("agent-{id}"));
        std::fs::create_dir_all(&state_dir)?;
        let log = state_dir.join(format!("agent-{}.log", unique()));
        let child = Command::new(bin("corpus-agent"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args([
                "--enroll-poll",
                "100ms",
                "--reconnect-min",
                "100ms",
                "--reconnect-max",
                "1s",
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr_file(&log)?)
            .spawn()?;
        Ok(Agent {
            id: id.to_owned(),
            state_dir,
            proc: Proc { child, log },
        })
    }
}

/// A real OpenSSH server (`/usr/sbin/sshd -D -e`) on a loopback port, with its own host key
/// and one authorized client key, everything in a temporary directory: the "node" that
/// `corpus-master nodes` tests attach. Killed when dropped.
pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    /// The private key whose public half is authorized (for root, the tests' user).
    pub client_key: PathBuf,
    proc: Option<Proc>,
}

impl Sshd {
    pub const BINARY: &str = "/usr/sbin/sshd";

    /// Starts sshd in `dir` (created) with a new ed25519 host key.
    pub fn start(dir: &Path) -> anyhow::Result<Sshd> {
        std::fs::create_dir_all(dir)?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let client_key = dir.join("client_key");
        ssh_keygen(&client_key)?;
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut sshd = Sshd {
            dir: dir.to_owned(),
            port,
            client_key,
            proc: None,
        };
        sshd.new_host_key()?;
        sshd.spawn()?;
        Ok(sshd)
    }

    fn new_host_key(&self) -> anyhow::Result<()> {
        let key = self.dir.join("host_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(self.dir.join("host_key.pub"));
        ssh_keygen(&key)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.display();
        let config = self.dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                port = self.port
            ),
        )?;
        let log = self.dir.join(format!("sshd-{}.log", unique()));
        let child = Command::new(Self::BINARY)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install openssh-server)",
                    Self::BINARY
                )
            })?;
        let proc = Proc { child, log };
        let port = self.port;
        wait_until(&format!("sshd listening on port {port}"), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })
        .with_context(|| proc.log_text())?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Restarts the server on the same port with a new host key (a reinstalled node).
    pub fn restart_with_new_host_key(&mut self) -> anyhow::Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
        self.new_host_key()?;
        self.spawn()
    }

    /// `ssh-keygen -l`'s `SHA256:...` fingerprint of the current host key.
    pub fn host_key_fingerprint(&self) -> anyhow::Result<String> {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.join("host_key.pub"))
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        text.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("unexpected ssh-keygen -l output {text:?}"))
    }

    pub fn target(&self) -> String {
        format!("root@127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

/// A new passphrase-less ed25519 key pair at `path` and `path.pub`.
pub fn ssh_keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "corpus-test", "-f"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
