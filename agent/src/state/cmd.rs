//! Salt's `cmd.run`: a shell command with `cwd`, `env`, `runas`, the `creates`/`unless`/`onlyif`
//! guards and a `timeout` that kills the command's whole process group.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::accounts::{self, User};
use super::args::{Args, scalar_to_string};
use super::result::Outcome;

/// How long output pipes may stay open after the command exited (a daemon it started may have
/// inherited them); after that the output read so far is returned.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Everything needed to start one command, resolved from a state's arguments.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub command: String,
    /// Salt's `shell` argument; corpus runs `shell -c command`.
    pub shell: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Identity to switch to before exec (`runas`).
    pub runas: Option<User>,
    pub timeout: Option<Duration>,
    /// What stdout and stderr each keep (their tails): [`OUTPUT_CAP_BYTES`].
    pub output_cap: usize,
}

/// What a finished command returned.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutput {
    pub pid: u32,
    /// Exit code, or minus the signal number when a signal killed it (like Python's).
    pub retcode: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

fn retcode(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| -status.signal().unwrap_or(0))
}

/// What a command's stdout and stderr may each keep: the last this many bytes. A state's
/// result travels to the master as one event, and an event must stay well under the link's
/// 16 MiB message limit (README, "Limits").
pub const OUTPUT_CAP_BYTES: usize = 1024 * 1024;

/// The tail of a stream, and how much of its head was dropped.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

/// Reads a pipe to its end into a shared buffer keeping the last `cap` bytes, then says so on
/// `done`.
fn drain(
    mut pipe: impl Read + Send + 'static,
    done: mpsc::Sender<()>,
    cap: usize,
) -> Arc<Mutex<Captured>> {
    let buf = Arc::new(Mutex::new(Captured::default()));
    let sink = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut b) = sink.lock() {
                        b.bytes.extend_from_slice(&chunk[..n]);
                        // Trimmed in batches, so the copy costs O(1) per byte read.
                        if b.bytes.len() >= 2 * cap.max(1) {
                            let excess = b.bytes.len() - cap;
                            b.bytes.drain(..excess);
                            b.dropped += excess as u64;
                        }
                    }
                }
            }
        }
        let _ = done.send(());
    });
    buf
}

fn take_text(buf: &Arc<Mutex<Captured>>, cap: usize) -> String {
    let (mut bytes, mut dropped) = buf
        .lock()
        .map(|b| (b.bytes.clone(), b.dropped))
        .unwrap_or_default();
    if bytes.len() > cap {
        let excess = bytes.len() - cap;
        bytes.drain(..excess);
        dropped += excess as u64;
    }
    // Salt strips the trailing newline of captured output.
    let text = String::from_utf8_lossy(&bytes)
        .trim_end_matches(['\n', '\r'])
        .to_string();
    if dropped == 0 {
        return text;
    }
    format!(
        "[corpus: the first {dropped} bytes of this output were cut: a state keeps the last \
         {cap} bytes of each stream]\n{text}"
    )
}

/// Runs `spec` to completion (or to its timeout), capturing stdout and stderr.
pub fn execute(spec: &CommandSpec) -> Result<CommandOutput, String> {
    let mut cmd = Command::new(&spec.shell);
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the command and everything it started.
        .process_group(0);
    if let Some(user) = &spec.runas {
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
        let (uid, gid, groups) = (user.uid, user.gid, accounts::groups_of(user));
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));

    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start `{} -c {}` in {}: {e}",
            spec.shell,
            spec.command,
            spec.cwd.display()
        )
    })?;
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    let cap = spec.output_cap;
    let stdout = child.stdout.take().map(|p| drain(p, done_tx.clone(), cap));
    let stderr = child.stderr.take().map(|p| drain(p, done_tx.clone(), cap));
    drop(done_tx);

    let (status_tx, status_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let mut timed_out = false;
    let status = match spec.timeout {
        None => status_rx
            .recv()
            .map_err(|_| "lost track of the command".to_string())?,
        Some(limit) => match status_rx.recv_timeout(limit) {
            Ok(status) => status,
            Err(_) => {
                timed_out = true;
                // SAFETY: kill(2) on our child's process group; pid fits in pid_t.
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                status_rx
                    .recv()
                    .map_err(|_| "lost track of the command".to_string())?
            }
        },
    }
    .map_err(|e| format!("cannot wait for `{}`: {e}", spec.command))?;

    let grace_end = Instant::now() + PIPE_GRACE;
    for _ in 0..2 {
        let left = grace_end.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(CommandOutput {
        pid,
        retcode: retcode(status),
        stdout: stdout
            .as_ref()
            .map(|b| take_text(b, cap))
            .unwrap_or_default(),
        stderr: stderr
            .as_ref()
            .map(|b| take_text(b, cap))
            .unwrap_or_default(),
        timed_out,
    })
}

/// Salt's `env`: a map, or a list of one-entry maps.
fn env_pairs(value: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut add = |m: &Map<String, Value>| -> Result<(), String> {
        for (k, v) in m {
            let v = scalar_to_string(v)
                .ok_or_else(|| format!("`env` value of {k} must be text, got {v}"))?;
            pairs.push((k.clone(), v));
        }
        Ok(())
    };
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => add(m)?,
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::Object(m) => add(m)?,
                    other => return Err(format!("`env` list items must be maps, got {other}")),
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "`env` must be a map or a list of maps, got {other}"
            ));
        }
    }
    Ok(pairs)
}

/// The command spec of a `cmd.run` chunk, for `command` (the state's name or a guard).
fn spec_for(args: &Args, command: &str) -> Result<CommandSpec, String> {
    let runas = match args.string("runas")? {
        Some(name) => Some(accounts::user_by_name(&name)?),
        None => None,
    };
    let cwd = match args.string("cwd")? {
        Some(dir) => PathBuf::from(dir),
        // Salt's default: the home of the user the command runs as.
        None => match &runas {
            Some(u) if Path::new(&u.home).is_dir() => PathBuf::from(&u.home),
            // Another user could not enter our home: start from the root instead.
            Some(_) => PathBuf::from("/"),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
        },
    };
    Ok(CommandSpec {
        command: command.to_string(),
        shell: args
            .string("shell")?
            .unwrap_or_else(|| "/bin/sh".to_string()),
        cwd,
        env: env_pairs(args.raw("env"))?,
        runas,
        timeout: args.seconds("timeout")?.map(Duration::from_secs_f64),
        output_cap: OUTPUT_CAP_BYTES,
    })
}

/// A guard (`unless`/`onlyif`): booleans as given, commands by their exit status (run like
/// the state's own command), `fun:` calls by their result ([`super::guards`]).
fn guard_holds(args: &Args, key: &str) -> Result<Option<bool>, String> {
    super::guards::guard_holds(args.0, key, &|command| {
        execute(&spec_for(args, command)?).map(|out| out.retcode)
    })
}

/// Why the command should not run (Salt's `mod_run_check`), or `None` to run it.
fn skip_reason(args: &Args) -> Result<Option<String>, String> {
    let creates = args.string_list("creates")?;
    if !creates.is_empty() && creates.iter().all(|p| Path::new(p).exists()) {
        return Ok(Some("All files in creates exist".to_string()));
    }
    if guard_holds(args, "onlyif")? == Some(false) {
        return Ok(Some("onlyif condition is false".to_string()));
    }
    if guard_holds(args, "unless")? == Some(true) {
        return Ok(Some("unless condition is true".to_string()));
    }
    Ok(None)
}

/// `cmd.run`: runs `name` with `/bin/sh -c` unless a guard says otherwise.
pub fn run(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    if let Some(reason) = skip_reason(&args)? {
        return Ok(Outcome::ok(reason));
    }
    if ctx.test {
        // Salt 3004+ reports the command as the would-be change.
        return Ok(Outcome::would_change(
            format!("Command \"{name}\" would have been executed"),
            Map::from_iter([("cmd".to_string(), json!(name))]),
        ));
    }
    let spec = spec_for(&args, name)?;
    let out = execute(&spec)?;
    let success_codes: Vec<i32> = match args.raw("success_retcodes") {
        None => vec![0],
        Some(_) => {
            let mut codes = vec![0];
            for c in args.string_list("success_retcodes")? {
                codes.push(
                    c.parse()
                        .map_err(|_| format!("success_retcodes: {c:?} is not a number"))?,
                );
            }
            codes
        }
    };
    let changes = Map::from_iter([
        ("pid".to_string(), json!(out.pid)),
        ("retcode".to_string(), json!(out.retcode)),
        ("stdout".to_string(), json!(out.stdout)),
        ("stderr".to_string(), json!(out.stderr)),
    ]);
    let (result, comment) = if out.timed_out {
        let secs = spec.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
        (
            false,
            format!(
                "Command \"{name}\" timed out after {secs} seconds: its process group was killed"
            ),
        )
    } else {
        (
            success_codes.contains(&out.retcode),
            format!("Command \"{name}\" run"),
        )
    };
    Ok(Outcome {
        result: Some(result),
        changes,
        comment,
    })
}

/// Salt's `cmd.mod_watch` for `cmd.run`: run the command again (guards still apply).
pub fn mod_watch(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    run(chunk, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};
    use std::fs;

    fn run_state(c: &Chunk, test: bool) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        run(c, &ctx(test, &src, &svc)).unwrap_or_else(Outcome::fail)
    }

    #[test]
    fn run_reports_pid_retcode_and_output_like_salt() {
        let c = chunk(
            "cmd.run",
            "hello",
            json!({"name": "echo out; echo err >&2"}),
        );
        let out = run_state(&c, false);
        assert_eq!(out.result, Some(true));
        assert_eq!(out.comment, "Command \"echo out; echo err >&2\" run");
        assert_eq!(out.changes["retcode"], json!(0));
        assert_eq!(out.changes["stdout"], json!("out"));
        assert_eq!(out.changes["stderr"], json!("err"));
        assert!(out.changes["pid"].as_u64().is_some_and(|p| p > 0));
    }

    #[test]
    fn output_is_capped_to_its_tail_and_says_so() {
        // 3 MiB on stdout, a little on stderr.
        let c = chunk(
            "cmd.run",
            "noisy",
            json!({"name": "head -c 3145728 /dev/zero | tr '\\0' x; echo; echo the-end; echo err >&2"}),
        );
        let out = run_state(&c, false);
        assert_eq!(out.result, Some(true), "{}", out.comment);
        let stdout = out.changes["stdout"].as_str().unwrap();
        assert!(stdout.len() < OUTPUT_CAP_BYTES + 200, "{}", stdout.len());
        assert!(stdout.ends_with("the-end"));
        assert!(
            stdout.starts_with("[corpus: the first ") && stdout.contains("1048576 bytes"),
            "{}",
            &stdout[..200]
        );
        assert_eq!(
            out.changes["stderr"],
            json!("err"),
            "a short stream is whole"
        );
    }

    #[test]
    fn a_non_zero_exit_fails_unless_listed_in_success_retcodes() {
        let out = run_state(&chunk("cmd.run", "x", json!({"name": "exit 3"})), false);
        assert_eq!(out.result, Some(false));
        assert_eq!(out.changes["retcode"], json!(3));
        let ok = run_state(
            &chunk(
                "cmd.run",
                "x",
                json!({"name": "exit 3", "success_retcodes": [3]}),
            ),
            false,
        );
        assert_eq!(ok.result, Some(true));
    }

    #[test]
    fn guards_skip_the_command_like_salt() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        let exists = dir.path().display().to_string();
        let cases = [
            (
                json!({"name": touch, "creates": [exists.clone()]}),
                Some("All files in creates exist"),
            ),
            (
                json!({"name": touch, "unless": "true"}),
                Some("unless condition is true"),
            ),
            (
                json!({"name": touch, "unless": ["true", "true"]}),
                Some("unless condition is true"),
            ),
            (
                json!({"name": touch, "onlyif": "false"}),
                Some("onlyif condition is false"),
            ),
            (
                json!({"name": touch, "onlyif": false}),
                Some("onlyif condition is false"),
            ),
            (json!({"name": touch, "unless": ["true", "false"]}), None),
            (
                json!({"name": touch, "onlyif": "true", "creates": "/nonexistent/corpus"}),
                None,
            ),
        ];
        for (args, skipped) in cases {
            let _ = fs::remove_file(&marker);
            let out = run_state(&chunk("cmd.run", "t", args.clone()), false);
            assert_eq!(out.result, Some(true), "{args}: {}", out.comment);
            match skipped {
                Some(reason) => {
                    assert_eq!(out.comment, reason, "{args}");
                    assert!(out.changes.is_empty());
                    assert!(!marker.exists(), "{args}");
                }
                None => assert!(marker.exists(), "{args}"),
            }
        }
    }

    #[test]
    fn cwd_and_env_as_a_list_or_a_map_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = fs::canonicalize(dir.path()).unwrap().display().to_string();
        for env in [json!([{"A": "1"}, {"B": 2}]), json!({"A": "1", "B": 2})] {
            let c = chunk(
                "cmd.run",
                "e",
                json!({"name": "pwd; echo $A$B", "cwd": cwd, "env": env}),
            );
            let out = run_state(&c, false);
            assert_eq!(out.changes["stdout"], json!(format!("{cwd}\n12")));
        }
        let bad = chunk(
            "cmd.run",
            "e",
            json!({"name": "true", "cwd": "/nonexistent/corpus"}),
        );
        let out = run_state(&bad, false);
        assert_eq!(out.result, Some(false));
        assert!(
            out.comment.contains("/nonexistent/corpus"),
            "{}",
            out.comment
        );
    }

    #[test]
    fn runas_switches_user_and_groups() {
        let nobody = accounts::user_by_name("nobody")
            .expect("the test needs the system user nobody (every Debian system has it)");
        // Switching users needs root, as the tests run in CI (`.ci/run`).
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "this test switches users: run it as root"
        );
        let c = chunk(
            "cmd.run",
            "r",
            json!({"name": "id -u; id -G; echo $USER", "runas": "nobody"}),
        );
        let out = run_state(&c, false);
        assert_eq!(out.result, Some(true), "{}", out.comment);
        let stdout = out.changes["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], nobody.uid.to_string());
        assert!(
            !lines[1].split(' ').any(|g| g == "0"),
            "root group kept: {stdout}"
        );
        assert_eq!(lines[2], "nobody");
        let missing = chunk(
            "cmd.run",
            "r",
            json!({"name": "true", "runas": "no-such-user-corpus"}),
        );
        assert!(
            run_state(&missing, false)
                .comment
                .contains("does not exist")
        );
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let c = chunk("cmd.run", "slow", json!({"name": command, "timeout": 0.3}));
        let started = Instant::now();
        let out = run_state(&c, false);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(out.result, Some(false));
        assert!(
            out.comment.contains("timed out after 0.3 seconds"),
            "{}",
            out.comment
        );
        let bg: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the group: it is gone or a zombie awaiting its reaper.
        let stat = fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert!(
            stat.is_empty() || state == "Z",
            "background process survived: {stat}"
        );
    }

    #[test]
    fn test_mode_runs_guards_but_not_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let c = chunk(
            "cmd.run",
            "t",
            json!({"name": format!("touch {}", marker.display())}),
        );
        let out = run_state(&c, true);
        assert_eq!(out.result, None);
        assert!(out.comment.ends_with("would have been executed"));
        assert_eq!(
            Value::Object(out.changes),
            json!({"cmd": format!("touch {}", marker.display())})
        );
        assert!(!marker.exists());
        let guarded = chunk("cmd.run", "t", json!({"name": "true", "unless": "true"}));
        assert_eq!(run_state(&guarded, true).result, Some(true));
    }
}
