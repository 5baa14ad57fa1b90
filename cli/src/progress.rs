//! Showing a job's progress: one line per step as it happens (or one JSON object per line
//! with `--json`), then a summary. A job that did not succeed ends in [`JobFailed`], which
//! `main` turns into exit code 1. Ctrl-C (or SIGTERM) stops following, not the job: the
//! client says so and how to follow it again ([`Interrupted`], exit code 130).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use corpus_proto::names::{printable, printable_lines};
use corpus_proto::{FollowRequest, JobFinished, JobStatus, JobUpdate, StepResult, job_update};
use serde_json::json;
use tonic::Streaming;

use crate::session::{self, Session, rpc_error};

/// The deadlines of a client following a job (`--idle-seconds`, `--reattach-seconds`).
#[derive(Debug, Clone, Copy)]
pub struct StreamDeadlines {
    /// How long the stream may bring nothing at all, not even the master's keepalive (every
    /// 10 s), before the client gives up: the master is frozen or the path to it is dead.
    pub idle: Duration,
    /// How long a client whose stream broke (the master restarted, the network blinked)
    /// tries to reattach to its job before giving up.
    pub reattach: Duration,
}

impl Default for StreamDeadlines {
    fn default() -> Self {
        StreamDeadlines {
            idle: Duration::from_secs(60),
            reattach: Duration::from_secs(120),
        }
    }
}

static STREAM_DEADLINES: std::sync::OnceLock<StreamDeadlines> = std::sync::OnceLock::new();

/// Sets the deadlines for the rest of the process (once, from the command line).
pub fn set_stream_deadlines(deadlines: StreamDeadlines) {
    let _ = STREAM_DEADLINES.set(deadlines);
}

fn stream_deadlines() -> StreamDeadlines {
    STREAM_DEADLINES.get().copied().unwrap_or_default()
}

/// The error of a master that said nothing for the idle deadline while `what` ran.
fn silent_stream(session: &Session, env: &str, what: &str, job_id: &str) -> anyhow::Error {
    let idle = stream_deadlines().idle.as_secs();
    let resume = if job_id.is_empty() {
        format!("see `corpus status {} {env}`", session.endpoint.name)
    } else {
        format!(
            "follow it with `corpus follow {} {env} {job_id}`",
            session.endpoint.name
        )
    };
    anyhow::anyhow!(
        "the master at {} sent nothing for {idle} s (the idle deadline, --idle-seconds; it          sends a keepalive every 10 s): it may be frozen or unreachable; {what} may still          run: {resume}",
        session.endpoint.url
    )
}

/// Waits for the answer opening a job's stream (rollback, destroy, follow), within the idle
/// deadline: a frozen master must not leave the client waiting in silence.
pub async fn opened<T>(
    endpoint: &crate::config::Endpoint,
    doing: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let limit = stream_deadlines().idle;
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => Ok(answer.map_err(|s| rpc_error(endpoint, s))?.into_inner()),
        Err(_) => Err(session::silent_master(endpoint, doing, limit)),
    }
}

/// The job ran and did not succeed (failed, rolled back or refused); the message says which
/// and at what step.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobFailed(String);

/// The user stopped the client (Ctrl-C, SIGTERM); the message says what goes on without it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Resolves at the first Ctrl-C or SIGTERM (never, if neither can be watched).
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// How many of a failed command's last output lines are shown.
const OUTPUT_TAIL_LINES: usize = 20;

/// What a failed state's changes say beyond its comment: a command's exit code and the end of
/// its stderr (or of its stdout when stderr is empty), one indented line each.
pub fn failure_details(changes: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(code) = changes.get("retcode").filter(|c| !c.is_null()) {
        lines.push(format!("exit code {code}"));
    }
    let text = |key: &str| {
        changes
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::trim_end)
            .filter(|t| !t.is_empty())
    };
    let (name, output) = match (text("stderr"), text("stdout")) {
        (Some(err), _) => ("stderr", err),
        (None, Some(out)) => ("stdout", out),
        (None, None) => return lines,
    };
    let all: Vec<&str> = output.lines().collect();
    let shown = &all[all.len().saturating_sub(OUTPUT_TAIL_LINES)..];
    if shown.len() < all.len() {
        lines.push(format!(
            "{name} (last {} of {} lines):",
            shown.len(),
            all.len()
        ));
    } else {
        lines.push(format!("{name}:"));
    }
    lines.extend(shown.iter().map(|l| format!("  {l}")));
    lines
}

fn millis(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// Attaches again to `job_id` from event `from_sequence` on, logging in anew each time (the
/// master may have restarted), until the reattach deadline after `since`.
async fn reattach(
    session: &mut Session,
    env: &str,
    job_id: &str,
    from_sequence: u64,
    since: Instant,
) -> anyhow::Result<Streaming<JobUpdate>> {
    let mut last_error = String::new();
    let window = stream_deadlines().reattach;
    while since.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fresh = match session::login(&session.endpoint).await {
            Ok(fresh) => fresh,
            Err(e) => {
                last_error = format!("{e:#}");
                continue;
            }
        };
        *session = fresh;
        let request = FollowRequest {
            env_uuid: env.to_owned(),
            job_id: job_id.to_owned(),
            project: String::new(),
            from_sequence,
        };
        let call = session.client.follow(request);
        match opened(&session.endpoint, "reattaching", call).await {
            Ok(updates) => return Ok(updates),
            Err(e) => last_error = e.to_string(),
        }
    }
    anyhow::bail!(
        "lost the master while following job {job_id} and could not reattach within {} s \
         (the reattach deadline, --reattach-seconds; {last_error}): the job may still run; \
         follow it with `corpus follow {} {env} {job_id}`",
        window.as_secs(),
        session.endpoint.name
    )
}

/// Follows a job's updates to the end, reattaching (from the last event seen) when the
/// stream breaks; Ok only when the job succeeded.
pub async fn follow(
    mut session: Session,
    env: &str,
    what: &str,
    mut updates: Streaming<JobUpdate>,
    json: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut finished: Option<JobFinished> = None;
    let spinner = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    // Everything said comes from the master and the agent (state ids, comments, hints): with
    // its control characters escaped, so it cannot drive the terminal.
    let say = |line: String| match &spinner {
        Some(bar) => bar.println(printable_lines(&line)),
        None => println!("{}", printable_lines(&line)),
    };
    let mut job_id = String::new();
    let mut last_sequence = 0u64;
    let mut broken_since: Option<Instant> = None;
    let interruption = |endpoint: &str, job_id: &str| -> anyhow::Error {
        if let Some(bar) = &spinner {
            bar.finish_and_clear();
        }
        Interrupted(if job_id.is_empty() {
            format!("interrupted: {what} may still run: see `corpus status {endpoint} {env}`")
        } else {
            format!(
                "interrupted: {what} goes on without this client (job {job_id}): follow it \
                 with `corpus follow {endpoint} {env} {job_id}`"
            )
        })
        .into()
    };
    // Listening from the start to the end: a signal between two updates is not lost.
    let mut stop = std::pin::pin!(interrupted());
    loop {
        let idle = stream_deadlines().idle;
        let next = tokio::select! {
            next = tokio::time::timeout(idle, updates.message()) => match next {
                Ok(next) => next,
                Err(_) => {
                    if let Some(bar) = &spinner {
                        bar.finish_and_clear();
                    }
                    return Err(silent_stream(&session, env, what, &job_id));
                }
            },
            () = &mut stop => return Err(interruption(&session.endpoint.name, &job_id)),
        };
        let update = match next {
            Ok(Some(update)) => update,
            Ok(None) => break,
            // A broken stream of a known job: attach again, from the next event.
            Err(status) if !job_id.is_empty() => {
                let since = *broken_since.get_or_insert_with(Instant::now);
                say(format!(
                    "  note: the stream from the master broke ({}): reattaching to job {job_id}",
                    status.message()
                ));
                let name = session.endpoint.name.clone();
                updates = tokio::select! {
                    attached = reattach(&mut session, env, &job_id, last_sequence + 1, since) => attached?,
                    () = &mut stop => return Err(interruption(&name, &job_id)),
                };
                continue;
            }
            Err(status) => return Err(rpc_error(&session.endpoint, status)),
        };
        if !matches!(update.body, Some(job_update::Body::JobId(_))) {
            broken_since = None;
        }
        match update.body {
            // Said once: a reattached stream starts with it again.
            Some(job_update::Body::JobId(id)) if id == job_id => {}
            Some(job_update::Body::JobId(id)) => {
                job_id = id.clone();
                if json {
                    println!("{}", json!({"event": "job", "job_id": id}));
                } else {
                    say(format!("{what}: job {id}"));
                }
            }
            // Seen before the stream broke.
            Some(job_update::Body::Event(e)) if e.sequence <= last_sequence => {}
            Some(job_update::Body::Event(e)) => {
                last_sequence = e.sequence;
                let result = StepResult::try_from(e.result).unwrap_or(StepResult::Unspecified);
                if json {
                    println!(
                        "{}",
                        json!({
                            "event": "step",
                            "sequence": e.sequence,
                            "step": e.step,
                            "state_id": e.state_id,
                            "result": result.label(),
                            "changes": serde_json::from_slice::<serde_json::Value>(&e.changes_json).unwrap_or_default(),
                            "comment": e.comment,
                            "duration_ms": e.duration_ms,
                        })
                    );
                } else if result != StepResult::Running {
                    let mark = match result {
                        StepResult::Success => "ok  ",
                        StepResult::Failed => "FAIL",
                        _ => "skip",
                    };
                    let mut line = format!(
                        "  {mark} {:<14} {:<28} {:>9}",
                        e.step,
                        e.state_id,
                        millis(e.duration_ms)
                    );
                    if result == StepResult::Failed && !e.comment.is_empty() {
                        line.push_str(&format!(
                            "  {}",
                            e.comment.lines().next().unwrap_or_default()
                        ));
                    }
                    say(line);
                    if result == StepResult::Failed {
                        let changes = serde_json::from_slice(&e.changes_json).unwrap_or_default();
                        for detail in failure_details(&changes) {
                            say(format!("         {detail}"));
                        }
                    }
                } else if let Some(bar) = &spinner {
                    bar.set_message(printable(&format!("{} {}", e.step, e.state_id)));
                }
            }
            Some(job_update::Body::Missed(m)) => {
                if json {
                    println!(
                        "{}",
                        json!({"event": "missed", "job_id": m.job_id, "count": m.count, "hint": m.hint})
                    );
                } else {
                    say(format!("  note: {}", m.hint));
                }
            }
            Some(job_update::Body::Finished(f)) => finished = Some(f),
            // The master is alive; the idle deadline starts again.
            Some(job_update::Body::Keepalive(_)) | None => {}
        }
    }
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let Some(f) = finished else {
        anyhow::bail!("the master closed the stream before the job finished: see corpus status");
    };
    let status = JobStatus::try_from(f.status).unwrap_or(JobStatus::Unspecified);
    if json {
        println!(
            "{}",
            json!({
                "event": "finished",
                "job_id": f.job_id,
                "status": status.label(),
                "deploy_id": f.deploy_id,
                "live_deploy_id": f.live_deploy_id,
                "failed_step": f.failed_step,
                "failed_state": f.failed_state,
                "message": f.message,
                "duration_ms": f.duration_ms,
                "release": f.release.as_ref().map(|r| json!({"digest": r.digest, "size": r.size})),
            })
        );
    } else {
        let took = millis(started.elapsed().as_millis() as u64);
        match status {
            JobStatus::Success => {
                let mut line = format!("{what} succeeded in {took}");
                // The deployment now live: for a rollback, the one it returned to (the id
                // `corpus status` shows), not the rollback job's own.
                let live = if f.live_deploy_id.is_empty() {
                    &f.deploy_id
                } else {
                    &f.live_deploy_id
                };
                if !live.is_empty() {
                    line.push_str(&format!(" (deployment {live} is live)"));
                }
                if let Some(r) = &f.release {
                    line.push_str(&format!(", release {} bytes recorded", r.size));
                }
                println!("{}", printable(&line));
            }
            other => {
                let at = match (f.failed_step.is_empty(), f.failed_state.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!(" at step {}", f.failed_step),
                    (false, false) => {
                        format!(" at step {}, state {}", f.failed_step, f.failed_state)
                    }
                };
                println!(
                    "{what} {}{} after {took}",
                    other.label().replace('_', " "),
                    printable(&at)
                );
                if !f.message.is_empty() {
                    println!("  {}", printable_lines(&f.message));
                }
                if !f.live_deploy_id.is_empty() {
                    println!("  deployment {} is live", printable(&f.live_deploy_id));
                }
            }
        }
    }
    if status == JobStatus::Success {
        Ok(())
    } else {
        Err(JobFailed(format!(
            "{what} {}{}",
            status.label().replace('_', " "),
            if f.failed_step.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.failed_step)
            }
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_shows_its_exit_code_and_the_end_of_its_stderr() {
        let stderr: String = (1..=30).map(|n| format!("error line {n}\n")).collect();
        let changes = json!({"pid": 7, "retcode": 3, "stdout": "ignored", "stderr": stderr});
        let lines = failure_details(&changes);
        assert_eq!(lines[0], "exit code 3");
        assert_eq!(lines[1], "stderr (last 20 of 30 lines):");
        assert_eq!(lines[2], "  error line 11");
        assert_eq!(lines.last().map(String::as_str), Some("  error line 30"));
    }

    #[test]
    fn a_failed_command_without_stderr_shows_its_stdout_and_other_states_nothing() {
        let lines = failure_details(&json!({"retcode": 1, "stdout": "oops\n", "stderr": ""}));
        assert_eq!(lines, ["exit code 1", "stdout:", "  oops"]);
        assert!(failure_details(&json!({"diff": "..."})).is_empty());
        assert!(failure_details(&serde_json::Value::Null).is_empty());
    }
}
