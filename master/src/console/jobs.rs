//! `corpus-master jobs list|show|fail`: jobs and their step events, and failing a job whose
//! agent is gone for good. Operator runs (`apply`, `run`) are jobs too: listed after the deploy
//! jobs, and `jobs show RUN_ID` prints every agent's return.

use corpus_proto::{
    Empty, JobDetail, JobRef, JobStatus, JobSummary, JobsRequest, RunDetail, RunRef, RunSummary,
    StepResult,
};
use serde_json::{Value, json};

use super::{Console, Table, print_json, printable, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// List jobs, oldest first, then operator runs.
    List {
        /// Only the jobs of this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// One job with every step event, or one operator run with every agent's return.
    Show { id: String },
    /// Mark a running job failed (its agent is gone for good), freeing its project.
    Fail { id: String },
}

pub async fn run(command: JobsCommand, console: &Console) -> anyhow::Result<()> {
    let mut client = console.admin().await?;
    match command {
        JobsCommand::List { env } => {
            let only_env = env.is_some();
            let jobs = client
                .list_jobs(JobsRequest {
                    env_uuid: env.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .jobs;
            // Operator runs belong to no environment.
            let runs = if only_env {
                Vec::new()
            } else {
                client
                    .list_runs(Empty {})
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .runs
            };
            print_list(console, &jobs, &runs);
        }
        JobsCommand::Show { id } => {
            match client.get_run(RunRef { run_id: id.clone() }).await {
                Ok(run) => return print_run(console, run.into_inner()),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(rpc(status)),
            }
            let detail = client.get_job(JobRef { job_id: id }).await.map_err(rpc)?;
            print_detail(console, detail.into_inner());
        }
        JobsCommand::Fail { id } => {
            let detail = client.fail_job(JobRef { job_id: id }).await.map_err(rpc)?;
            print_detail(console, detail.into_inner());
        }
    }
    Ok(())
}

fn job_json(j: &JobSummary) -> Value {
    json!({
        "id": j.job_id,
        "kind": j.kind,
        "env": j.env_uuid,
        "project": j.project,
        "deploy_id": j.deploy_id,
        "agent": j.agent,
        "user": j.requested_by,
        "status": JobStatus::label_of(j.status),
        "failed_step": j.failed_step,
        "failed_state": j.failed_state,
        "message": j.message,
        "created_at": j.created_at_unix,
    })
}

fn run_json(r: &RunSummary) -> Value {
    json!({
        "id": r.run_id,
        "kind": "run",
        "target": r.target,
        "target_type": r.target_type,
        "function": r.function,
        "args": r.args,
        "test": r.test,
        "user": r.user,
        "status": r.status,
        "started_unix_ms": r.started_unix_ms,
        "finished_unix_ms": r.finished_unix_ms,
        "targeted": r.targeted,
        "returned": r.returned,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "not_connected": r.not_connected,
    })
}

fn print_list(console: &Console, jobs: &[JobSummary], runs: &[RunSummary]) {
    if console.json {
        let all = jobs.iter().map(job_json).chain(runs.iter().map(run_json));
        print_json(&Value::Array(all.collect()));
        return;
    }
    print_jobs(jobs);
    if !runs.is_empty() {
        if !jobs.is_empty() {
            println!();
        }
        let mut table = Table::new(&[
            "RUN",
            "FUNCTION",
            "TARGET",
            "USER",
            "STARTED",
            "STATUS",
            "TARGETED",
            "SUCCEEDED",
            "FAILED",
            "NOT CONNECTED",
        ])
        .right_align(&[6, 7, 8, 9]);
        for r in runs {
            table.row([
                r.run_id.clone(),
                r.function.clone(),
                format!("{} ({})", r.target, r.target_type),
                r.user.clone(),
                corpus_runtime::format_unix_time(r.started_unix_ms / 1000),
                r.status.clone(),
                r.targeted.to_string(),
                r.succeeded.to_string(),
                r.failed.to_string(),
                r.not_connected.to_string(),
            ]);
        }
        table.print();
    }
}

fn print_run(console: &Console, detail: RunDetail) -> anyhow::Result<()> {
    let run = detail.run.unwrap_or_default();
    if console.json {
        let mut out = run_json(&run);
        out["returns"] = detail
            .returns
            .iter()
            .map(super::fleet::return_json)
            .collect();
        print_json(&out);
        return Ok(());
    }
    println!(
        "{}",
        printable(&format!(
            "run {} ({} {} on {} {:?}, by {}, started {}): {}",
            run.run_id,
            run.function,
            run.args.join(" "),
            run.target_type,
            run.target,
            run.user,
            corpus_runtime::format_unix_time(run.started_unix_ms / 1000),
            run.status
        ))
    );
    for ret in &detail.returns {
        print!("{}", super::fleet::format_return(&run.function, ret));
    }
    println!("{}", super::fleet::total_line(&run));
    Ok(())
}

fn print_jobs(jobs: &[JobSummary]) {
    let mut table = Table::new(&["JOB", "KIND", "PROJECT", "STATUS", "CREATED", "USER"]);
    for j in jobs {
        table.row([
            j.job_id.as_str(),
            j.kind.as_str(),
            j.project.as_str(),
            JobStatus::label_of(j.status),
            corpus_runtime::format_unix_time(j.created_at_unix).as_str(),
            j.requested_by.as_str(),
        ]);
    }
    table.print();
}

fn print_detail(console: &Console, detail: JobDetail) {
    let job = detail.job.unwrap_or_default();
    if console.json {
        let events: Vec<_> = detail
            .events
            .iter()
            .map(|e| {
                json!({
                    "sequence": e.sequence,
                    "step": e.step,
                    "state_id": e.state_id,
                    "result": StepResult::label_of(e.result),
                    "comment": e.comment,
                    "changes": changes_of(&e.changes_json),
                    "duration_ms": e.duration_ms,
                })
            })
            .collect();
        let mut out = job_json(&job);
        out["events"] = Value::Array(events);
        print_json(&out);
        return;
    }
    println!(
        "{}",
        printable(&format!(
            "job {} ({} of {} in {}, by {}): {}",
            job.job_id,
            job.kind,
            job.project,
            job.env_uuid,
            job.requested_by,
            JobStatus::label_of(job.status)
        ))
    );
    if !job.failed_step.is_empty() {
        println!(
            "  failed at {}",
            printable(&format!(
                "{} {}: {}",
                job.failed_step, job.failed_state, job.message
            ))
        );
    }
    let mut events = Table::new(&[]).right_align(&[0, 3]);
    for e in &detail.events {
        events.row([
            e.sequence.to_string(),
            e.step.clone(),
            e.state_id.clone(),
            format!("{} ms", e.duration_ms),
            e.comment.lines().next().unwrap_or("").to_owned(),
        ]);
    }
    print!("{}", events.render("  "));
    for e in detail
        .events
        .iter()
        .filter(|e| e.result == StepResult::Failed as i32)
    {
        let details = failure_details(&changes_of(&e.changes_json));
        if !details.is_empty() {
            println!(
                "  {} failed:",
                printable(&format!("{} {}", e.step, e.state_id))
            );
            for line in details {
                println!("    {}", printable(&line));
            }
        }
    }
}

/// A stored event's changes (JSON, or text the master kept as is).
fn changes_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// How many of a failed command's last output lines `jobs show` prints.
const OUTPUT_TAIL_LINES: usize = 20;

/// What a failed state's changes say beyond its comment: a command's exit code and the end of
/// its stderr (or stdout when stderr is empty).
fn failure_details(changes: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(code) = changes.get("retcode").filter(|c| !c.is_null()) {
        lines.push(format!("exit code {code}"));
    }
    let text = |key: &str| {
        changes
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim_end)
            .filter(|t| !t.is_empty())
    };
    let Some((name, output)) = text("stderr")
        .map(|t| ("stderr", t))
        .or_else(|| text("stdout").map(|t| ("stdout", t)))
    else {
        return lines;
    };
    let all: Vec<&str> = output.lines().collect();
    let shown = &all[all.len().saturating_sub(OUTPUT_TAIL_LINES)..];
    lines.push(format!(
        "{name} (last {} of {} lines):",
        shown.len(),
        all.len()
    ));
    lines.extend(shown.iter().map(|l| format!("  {l}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_shows_its_exit_code_and_stderr() {
        let changes =
            changes_of(br#"{"pid": 1, "retcode": 2, "stdout": "", "stderr": "no such file\n"}"#);
        assert_eq!(
            failure_details(&changes),
            [
                "exit code 2",
                "stderr (last 1 of 1 lines):",
                "  no such file"
            ]
        );
        assert!(failure_details(&changes_of(b"not json")).is_empty());
    }
}
