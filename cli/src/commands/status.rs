//! `corpus status ENDPOINT ENV_UUID [PROJECT]`: the jobs still running (of every kind: deploy,
//! rollback, destroy, init), deployments (the live one marked), releases, storage used / quota.

use corpus_proto::{JobKind, JobStatus, Mode, StatusRequest};
use serde_json::json;

use crate::session::{Session, rpc_error};

pub async fn run(
    mut session: Session,
    env: &str,
    project: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let status = session
        .client
        .status(StatusRequest {
            env_uuid: env.to_owned(),
            project: project.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner();
    let environment = status.environment.unwrap_or_default();
    if json_out {
        let projects: Vec<_> = status
            .projects
            .iter()
            .map(|p| {
                let deployments: Vec<_> = p
                    .deployments
                    .iter()
                    .map(|d| {
                        json!({
                            "project": p.project,
                            "id": d.id,
                            "time": d.started_at_unix,
                            "commit": d.commit,
                            "mode": Mode::label_of(d.mode),
                            "result": JobStatus::label_of(d.result),
                            "failed_step": d.failed_step,
                            "failed_state": d.failed_state,
                            "live": d.live,
                            "job_id": d.job_id,
                        })
                    })
                    .collect();
                let releases: Vec<_> = p
                    .releases
                    .iter()
                    .map(|r| json!({"id": r.id, "digest": r.digest, "size": r.size, "commit": r.commit, "time": r.created_at_unix}))
                    .collect();
                let quota = p.quota.clone().unwrap_or_default();
                json!({
                    "project": p.project,
                    "deployments": deployments,
                    "releases": releases,
                    "quota_bytes": quota.quota_bytes,
                    "used_bytes": quota.used_bytes,
                })
            })
            .collect();
        let all: Vec<_> = projects
            .iter()
            .flat_map(|p| p["deployments"].as_array().cloned().unwrap_or_default())
            .collect();
        let running: Vec<_> = status
            .running_jobs
            .iter()
            .map(|j| {
                json!({
                    "job_id": j.job_id,
                    "kind": JobKind::label_of(j.kind),
                    "project": j.project,
                    "user": j.requested_by,
                    "started": j.started_at_unix,
                    "deploy_id": j.deploy_id,
                })
            })
            .collect();
        let out = json!({
            "running_jobs": running,
            "environment": {
                "uuid": environment.uuid,
                "platform": environment.platform,
                "mode": Mode::label_of(environment.mode),
                "agent": environment.agent_id,
                "owner": environment.owner,
                "smep": environment.smep,
                "uid": environment.uid,
                "ports": environment.ports,
            },
            "deployments": all,
            "releases": projects.first().map(|p| p["releases"].clone()).unwrap_or(json!([])),
            "projects": projects,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "environment {} ({}, {} mode) on {}",
        environment.uuid,
        environment.platform,
        Mode::label_of(environment.mode),
        environment.agent_id
    );
    if let (Some(first), Some(last)) = (environment.ports.first(), environment.ports.last()) {
        println!(
            "runs as uid {} (corpus-{}), ports {first}-{last}",
            environment.uid, environment.smep
        );
    }
    // Whoever started them (the client may be gone): what runs, and how to watch it.
    for j in &status.running_jobs {
        let target = if j.project.is_empty() {
            "the environment".to_owned()
        } else {
            j.project.clone()
        };
        println!(
            "running: job {} ({} of {target} by {}, started {}; follow it: corpus follow {} {} {})",
            j.job_id,
            JobKind::label_of(j.kind),
            j.requested_by,
            corpus_runtime::format_unix_time(j.started_at_unix),
            session.endpoint.name,
            environment.uuid,
            j.job_id
        );
    }
    for p in &status.projects {
        let quota = p.quota.clone().unwrap_or_default();
        println!(
            "\nproject {}: {} used of {}",
            p.project,
            bytesize::ByteSize(quota.used_bytes),
            bytesize::ByteSize(quota.quota_bytes)
        );
        println!(
            "  {:<2} {:<54} {:<21} {:<9} {:<12} FAILED STEP",
            "", "DEPLOYMENT", "TIME", "COMMIT", "RESULT"
        );
        for d in &p.deployments {
            let failed = match (d.failed_step.as_str(), d.failed_state.as_str()) {
                ("", _) => String::new(),
                (step, "") => step.to_owned(),
                (step, state) => format!("{step} ({state})"),
            };
            println!(
                "  {:<2} {:<54} {:<21} {:<9} {:<12} {}",
                if d.live { "*" } else { "" },
                d.id,
                corpus_runtime::format_unix_time(d.started_at_unix),
                d.commit.get(..8).unwrap_or(&d.commit),
                JobStatus::label_of(d.result),
                corpus_proto::names::printable(&failed)
            );
        }
        if p.releases.is_empty() {
            println!("  no releases");
        } else {
            println!("  releases:");
            for r in &p.releases {
                println!(
                    "    {}  {}  {}",
                    r.id,
                    bytesize::ByteSize(r.size),
                    r.commit.get(..8).unwrap_or(&r.commit)
                );
            }
        }
    }
    Ok(())
}
