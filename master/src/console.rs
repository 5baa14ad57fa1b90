//! The operator console's environment, job and pillar commands: each talks to the running
//! master over its admin socket and prints text or, with `--json`, JSON.

use std::io::{IsTerminal, Read};
use std::path::Path;

use corpus_proto::{
    DefaultsRequest, Empty, GrantRequest, JobDetail, JobRef, JobStatus, JobSummary, JobsRequest,
    ProjectRequest, StepResult,
};
use serde_json::{Value, json};

use crate::admin;

fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn job_status(status: i32) -> &'static str {
    match JobStatus::try_from(status) {
        Ok(JobStatus::Running) => "running",
        Ok(JobStatus::Success) => "success",
        Ok(JobStatus::Failed) => "failed",
        Ok(JobStatus::RolledBack) => "rolled_back",
        Ok(JobStatus::Refused) => "refused",
        _ => "unknown",
    }
}

fn env_json(e: &corpus_proto::Environment) -> Value {
    json!({
        "uuid": e.uuid,
        "platform": e.platform,
        "agent": e.agent_id,
        "owner": e.owner,
        "created_at": e.created_at_unix,
    })
}

pub async fn envs_list(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let mut admin = admin::connect(data_dir).await?;
    let envs = admin
        .list_environments(Empty {})
        .await
        .map_err(rpc)?
        .into_inner()
        .environments;
    if json_out {
        print_json(&Value::Array(envs.iter().map(env_json).collect()));
        return Ok(());
    }
    println!("{:<36}  {:<8} {:<20} OWNER", "UUID", "PLATFORM", "AGENT");
    for e in envs {
        println!(
            "{:<36}  {:<8} {:<20} {}",
            e.uuid, e.platform, e.agent_id, e.owner
        );
    }
    Ok(())
}

pub async fn envs_grant(
    data_dir: &Path,
    env: String,
    user: String,
    json_out: bool,
) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&user)?;
    let mut admin = admin::connect(data_dir).await?;
    let e = admin
        .grant_environment(GrantRequest {
            env_uuid: env,
            user: user.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        print_json(&env_json(&e));
    } else {
        println!("environment {} shared with {user}", e.uuid);
    }
    Ok(())
}

/// Reads the defaults YAML from standard input.
pub async fn envs_defaults(data_dir: &Path, env: String, json_out: bool) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        eprintln!(
            "reading the environment's default project settings (YAML) from standard input; end with Ctrl-D"
        );
    }
    let mut yaml = String::new();
    std::io::stdin().read_to_string(&mut yaml)?;
    let mut admin = admin::connect(data_dir).await?;
    let e = admin
        .set_environment_defaults(DefaultsRequest {
            env_uuid: env,
            yaml,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        print_json(&env_json(&e));
    } else {
        println!("defaults of environment {} set", e.uuid);
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
        "status": job_status(j.status),
        "failed_step": j.failed_step,
        "failed_state": j.failed_state,
        "message": j.message,
        "created_at": j.created_at_unix,
    })
}

pub async fn jobs_list(data_dir: &Path, env: Option<String>, json_out: bool) -> anyhow::Result<()> {
    let mut admin = admin::connect(data_dir).await?;
    let jobs = admin
        .list_jobs(JobsRequest {
            env_uuid: env.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .jobs;
    if json_out {
        print_json(&Value::Array(jobs.iter().map(job_json).collect()));
        return Ok(());
    }
    println!(
        "{:<36}  {:<8} {:<16} {:<12} {:<21} USER",
        "JOB", "KIND", "PROJECT", "STATUS", "CREATED"
    );
    for j in jobs {
        println!(
            "{:<36}  {:<8} {:<16} {:<12} {:<21} {}",
            j.job_id,
            j.kind,
            j.project,
            job_status(j.status),
            corpus_runtime::format_unix_time(j.created_at_unix),
            j.requested_by
        );
    }
    Ok(())
}

fn print_detail(detail: JobDetail, json_out: bool) {
    let job = detail.job.unwrap_or_default();
    if json_out {
        let events: Vec<_> = detail
            .events
            .iter()
            .map(|e| {
                json!({
                    "sequence": e.sequence,
                    "step": e.step,
                    "state_id": e.state_id,
                    "result": match StepResult::try_from(e.result) {
                        Ok(StepResult::Running) => "running",
                        Ok(StepResult::Success) => "success",
                        Ok(StepResult::Failed) => "failed",
                        Ok(StepResult::Skipped) => "skipped",
                        _ => "unknown",
                    },
                    "comment": e.comment,
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
        "job {} ({} of {} in {}, by {}): {}",
        job.job_id,
        job.kind,
        job.project,
        job.env_uuid,
        job.requested_by,
        job_status(job.status)
    );
    if !job.failed_step.is_empty() {
        println!(
            "  failed at {} {}: {}",
            job.failed_step, job.failed_state, job.message
        );
    }
    for e in detail.events {
        println!(
            "  {:>4} {:<14} {:<28} {:>7} ms  {}",
            e.sequence,
            e.step,
            e.state_id,
            e.duration_ms,
            e.comment.lines().next().unwrap_or("")
        );
    }
}

pub async fn jobs_show(data_dir: &Path, id: String, json_out: bool) -> anyhow::Result<()> {
    let mut admin = admin::connect(data_dir).await?;
    let detail = admin
        .get_job(JobRef { job_id: id })
        .await
        .map_err(rpc)?
        .into_inner();
    print_detail(detail, json_out);
    Ok(())
}

pub async fn jobs_fail(data_dir: &Path, id: String, json_out: bool) -> anyhow::Result<()> {
    let mut admin = admin::connect(data_dir).await?;
    let detail = admin
        .fail_job(JobRef { job_id: id })
        .await
        .map_err(rpc)?
        .into_inner();
    print_detail(detail, json_out);
    Ok(())
}

/// Pillar values are secrets: this prints them only to the operator who asked, on stdout.
pub async fn pillar_show(
    data_dir: &Path,
    env: String,
    project: String,
    json_out: bool,
) -> anyhow::Result<()> {
    corpus_proto::names::validate_project_name(&project)?;
    let mut admin = admin::connect(data_dir).await?;
    let pillar = admin
        .show_pillar(ProjectRequest {
            env_uuid: env,
            project,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut files: Vec<_> = pillar.files.into_iter().collect();
    files.sort();
    if json_out {
        print_json(&json!({
            "job_id": pillar.job_id,
            "created_at": pillar.created_at_unix,
            "files": files
                .into_iter()
                .map(|(name, text)| (name, Value::String(text)))
                .collect::<serde_json::Map<_, _>>(),
        }));
        return Ok(());
    }
    println!(
        "# pushed with job {} at {}",
        pillar.job_id,
        corpus_runtime::format_unix_time(pillar.created_at_unix)
    );
    for (name, text) in files {
        println!("# --- {name}\n{text}");
    }
    Ok(())
}
