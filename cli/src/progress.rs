//! Showing a job's progress: one line per step as it happens (or one JSON object per line
//! with `--json`), then a summary. A job that did not succeed ends in [`JobFailed`], which
//! `main` turns into exit code 1.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use corpus_proto::{JobFinished, JobStatus, JobUpdate, StepResult, job_update};
use serde_json::json;
use tonic::Streaming;

use crate::session::{Session, rpc_error};

/// The job ran and did not succeed (failed, rolled back or refused); the message says which
/// and at what step.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobFailed(String);

fn millis(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// Follows a job's updates to the end; Ok only when the job succeeded.
pub async fn follow(
    session: &Session,
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
    let say = |line: String| match &spinner {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    };
    while let Some(update) = updates
        .message()
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
    {
        match update.body {
            Some(job_update::Body::JobId(id)) => {
                if json {
                    println!("{}", json!({"event": "job", "job_id": id}));
                } else {
                    say(format!("{what}: job {id}"));
                }
            }
            Some(job_update::Body::Event(e)) => {
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
                } else if let Some(bar) = &spinner {
                    bar.set_message(format!("{} {}", e.step, e.state_id));
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
            None => {}
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
                if !f.deploy_id.is_empty() {
                    line.push_str(&format!(" (deployment {})", f.deploy_id));
                }
                if let Some(r) = &f.release {
                    line.push_str(&format!(", release {} bytes recorded", r.size));
                }
                println!("{line}");
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
                    "{what} {}{at} after {took}",
                    other.label().replace('_', " ")
                );
                if !f.message.is_empty() {
                    println!("  {}", f.message);
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
