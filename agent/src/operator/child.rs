//! An operator call that starts processes (`state.apply`, `cmd.run`) runs in `corpus-agent
//! operator-call` (hidden), a child in its own session with `PR_SET_PDEATHSIG`: the agent
//! writes the call as one JSON line on its stdin and reads the return as the last JSON line of
//! its stdout. When the call's timeout passes, every process of that session (the child, the
//! commands it started in their own process groups and their children) is stopped, TERM then
//! KILL, and the call fails naming the timeout.

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{Call, execute, timed_out};
use crate::confine::{processes_in_session, stop_processes};

/// The hidden subcommand the child runs.
pub const CHILD_SUBCOMMAND: &str = "operator-call";
/// How long the processes of a timed-out call get between TERM and KILL.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// How much of the child's stderr an error quotes.
const STDERR_TAIL: usize = 4096;
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the child reads.
#[derive(Debug, Serialize, Deserialize)]
struct ChildRequest {
    call: Call,
    grains: Json,
}

/// What the child writes back.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReply {
    success: bool,
    value: Json,
    error: String,
}

/// Whether `function` starts processes, and so runs in a child the timeout can stop.
pub fn starts_processes(function: &str) -> bool {
    matches!(function, "state.apply" | "cmd.run")
}

/// Runs `call` in a child of this executable until `deadline`; past it, stops every process
/// of the child's session and fails naming `timeout`.
pub async fn run(
    call: &Call,
    grains: &Json,
    deadline: Instant,
    timeout: Duration,
) -> Result<(bool, Json), String> {
    let program =
        std::env::current_exe().map_err(|e| format!("cannot find the agent's program: {e}"))?;
    let request = ChildRequest {
        call: call.clone(),
        grains: grains.clone(),
    };
    let mut line =
        serde_json::to_vec(&request).map_err(|e| format!("cannot encode the call: {e}"))?;
    line.push(b'\n');
    let mut command = tokio::process::Command::new(&program);
    command
        .arg(CHILD_SUBCOMMAND)
        // Operator calls run as root like a Salt minion's, but nothing of the agent's
        // environment (an enrollment token) reaches them.
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own session: the commands it starts in their own process groups stay in it, so a
    // timeout finds them all.
    // SAFETY: the hook runs only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(crate::confine::own_session_dying_with_agent());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let session = child.id().map(|pid| pid as i32);
    let stdin = child.stdin.take();
    let talk = async move {
        if let Some(mut stdin) = stdin {
            stdin.write_all(&line).await?;
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout_at(deadline, talk).await {
        Ok(Ok(output)) => reply_of(&output),
        Ok(Err(e)) => Err(format!("the call's process failed: {e}")),
        Err(_) => {
            // The child itself was killed when its wait was dropped; what it started is in
            // its session still.
            if let Some(session) = session {
                let stopped = tokio::task::spawn_blocking(move || {
                    stop_processes(|| processes_in_session(session), STOP_GRACE)
                })
                .await
                .unwrap_or(0);
                tracing::info!(session, stopped, "stopped a timed-out operator call");
            }
            Err(timed_out(
                timeout,
                "it was stopped with every process it started",
            ))
        }
    }
}

/// The return in the child's output: its last JSON line, else why there is none.
fn reply_of(output: &std::process::Output) -> Result<(bool, Json), String> {
    let reply = output
        .stdout
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|line| serde_json::from_slice::<ChildReply>(line).ok());
    match reply {
        Some(reply) if reply.error.is_empty() => Ok((reply.success, reply.value)),
        Some(reply) => Err(reply.error),
        None => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let skip = stderr.chars().count().saturating_sub(STDERR_TAIL);
            let tail: String = stderr.chars().skip(skip).collect();
            Err(format!(
                "the call's process ended without a return ({}): {}",
                output.status,
                tail.trim()
            ))
        }
    }
}

/// `corpus-agent operator-call`: reads the call, runs it, writes the return.
pub fn child_main() -> Result<(), String> {
    let mut first = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut first)
        .map_err(|e| format!("cannot read the call: {e}"))?;
    let request: ChildRequest =
        serde_json::from_str(&first).map_err(|e| format!("got an invalid call: {e}"))?;
    let reply = match execute(&request.call, &request.grains) {
        Ok((success, value)) => ChildReply {
            success,
            value,
            error: String::new(),
        },
        Err(error) => ChildReply {
            success: false,
            value: Json::Null,
            error,
        },
    };
    let mut line =
        serde_json::to_vec(&reply).map_err(|e| format!("cannot encode the return: {e}"))?;
    line.insert(0, b'\n');
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the return: {e}"))
}
