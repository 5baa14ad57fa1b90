//! The master's edge to the wire: domain values to prost messages and back, and the one
//! mapping of [`MasterError`] to a gRPC status. Only the services (`client.rs`, `link.rs`,
//! `enroll.rs`, `admin.rs`) call this; the domain modules never name a prost type.

use corpus_proto as pb;
use tonic::Status;

use crate::deploys::{ProjectStatus, PushRequest};
use crate::error::MasterError;
use crate::jobs::{
    JobEvent, JobOrder, JobOutcome, JobUpdate, ProjectRemoved, ProjectUsage, ReleaseRef,
};
use crate::link_registry::{LinkClosed, ToAgent};
use crate::store::{
    AgentStatus, EnvironmentRecord, EventRecord, JobKind, JobRecord, JobState, Mode, ProjectRecord,
    ReleaseRecord,
};

/// An unexpected failure (storage, signing, a task that panicked): logged in full, reported
/// briefly, so the caller learns nothing of the master's internals.
pub fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal master error: the master's log has the details")
}

/// Metadata key naming what is unavailable when it is not the master itself (the client
/// reads it: `cli/src/session.rs`).
pub const UNAVAILABLE_PART: &str = "corpus-unavailable";

impl From<MasterError> for Status {
    fn from(e: MasterError) -> Self {
        let message = e.to_string();
        match e {
            MasterError::NotFound { .. } => Status::not_found(message),
            MasterError::Forbidden(_) => Status::permission_denied(message),
            MasterError::Locked { .. } | MasterError::Refused(_) => {
                Status::failed_precondition(message)
            }
            MasterError::Quota { .. } | MasterError::Exhausted(_) => {
                Status::resource_exhausted(message)
            }
            MasterError::Invalid { .. } => Status::invalid_argument(message),
            MasterError::AlreadyExists(_) => Status::already_exists(message),
            MasterError::Unauthenticated(_) => Status::unauthenticated(message),
            MasterError::AgentOffline(_) => {
                // Unavailable (try again later), marked so the client does not blame the
                // master, which answered.
                let mut status = Status::unavailable(message);
                status.metadata_mut().insert(
                    UNAVAILABLE_PART,
                    tonic::metadata::MetadataValue::from_static("agent"),
                );
                status
            }
            MasterError::Internal(source) => internal(source),
        }
    }
}

pub fn mode(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Editable => pb::Mode::Editable,
        Mode::Cooking => pb::Mode::Cooking,
        Mode::Final => pb::Mode::Final,
    }
}

fn kind(kind: JobKind) -> pb::JobKind {
    match kind {
        JobKind::Init => pb::JobKind::InitProject,
        JobKind::Deploy => pb::JobKind::Deploy,
        JobKind::Rollback => pb::JobKind::Rollback,
        JobKind::Destroy => pb::JobKind::Destroy,
    }
}

pub fn job_state(status: pb::JobStatus) -> JobState {
    match status {
        pb::JobStatus::Success => JobState::Success,
        pb::JobStatus::RolledBack => JobState::RolledBack,
        pb::JobStatus::Refused => JobState::Refused,
        pb::JobStatus::Running => JobState::Running,
        _ => JobState::Failed,
    }
}

pub fn job_status(state: JobState) -> pb::JobStatus {
    match state {
        JobState::Running => pb::JobStatus::Running,
        JobState::Success => pb::JobStatus::Success,
        JobState::Failed => pb::JobStatus::Failed,
        JobState::RolledBack => pb::JobStatus::RolledBack,
        JobState::Refused => pb::JobStatus::Refused,
    }
}

pub fn agent_status(status: AgentStatus) -> pb::AgentStatus {
    match status {
        AgentStatus::Pending => pb::AgentStatus::Pending,
        AgentStatus::Accepted => pb::AgentStatus::Accepted,
        AgentStatus::Rejected => pb::AgentStatus::Rejected,
    }
}

pub fn environment(env: &EnvironmentRecord) -> pb::Environment {
    pb::Environment {
        uuid: env.uuid.clone(),
        platform: env.platform.as_str().to_owned(),
        mode: mode(env.mode) as i32,
        agent_id: env.agent.clone(),
        owner: env.owner.clone(),
        created_at_unix: env.created_at,
        smep: env.smep.unwrap_or_default(),
        uid: crate::environments::identity(env).map_or(0, |i| i.uid()),
        ports: crate::environments::identity(env)
            .map(|i| i.ports())
            .unwrap_or_default(),
    }
}

pub fn quota(p: &ProjectRecord) -> pb::ProjectQuota {
    pb::ProjectQuota {
        env_uuid: p.env_uuid.clone(),
        project: p.name.clone(),
        quota_bytes: p.quota_bytes,
        used_bytes: p.used_bytes,
    }
}

fn release(r: ReleaseRecord) -> pb::Release {
    pb::Release {
        id: r.id,
        digest: r.digest,
        size: r.size,
        commit: r.commit,
        created_at_unix: r.created_at,
    }
}

/// A running job as `corpus status` lists it.
pub fn running_job(job: JobRecord) -> pb::RunningJob {
    pb::RunningJob {
        kind: kind(job.kind) as i32,
        job_id: job.id,
        project: job.project,
        requested_by: job.requested_by,
        started_at_unix: job.created_at,
        deploy_id: job.deploy_id,
    }
}

pub fn project_status(status: ProjectStatus) -> pb::ProjectStatus {
    pb::ProjectStatus {
        project: status.project.name.clone(),
        quota: Some(quota(&status.project)),
        deployments: status
            .deployments
            .into_iter()
            .map(|d| pb::Deployment {
                live: d.live,
                id: d.job.deploy_id,
                started_at_unix: d.job.created_at,
                commit: d.job.commit,
                mode: mode(d.job.mode) as i32,
                result: job_status(d.job.state) as i32,
                failed_step: d.job.failed_step,
                failed_state: d.job.failed_state,
                job_id: d.job.id,
            })
            .collect(),
        releases: status.releases.into_iter().map(release).collect(),
    }
}

pub fn push_request(header: pb::PushHeader) -> PushRequest {
    PushRequest {
        env_uuid: header.env_uuid,
        project: header.project,
        commit: header.commit,
        pillar_files: header.pillar_files.into_iter().collect(),
        release_id: header.release_id,
        source_size: header.source_size,
        source_digest: header.source_digest,
        from_env: header.from_env,
    }
}

fn step_result(result: &str) -> pb::StepResult {
    match result {
        "running" => pb::StepResult::Running,
        "success" => pb::StepResult::Success,
        "failed" => pb::StepResult::Failed,
        "skipped" => pb::StepResult::Skipped,
        _ => pb::StepResult::Unspecified,
    }
}

/// A state's changes (retcode, stdout, stderr of a `cmd.run`...) as the agent sent them: kept
/// whole for `jobs show`, as text if they are not JSON rather than dropped.
fn changes_in(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

pub fn job_event_in(event: pb::JobEvent) -> JobEvent {
    let result = match pb::StepResult::try_from(event.result) {
        Ok(pb::StepResult::Running) => "running",
        Ok(pb::StepResult::Success) => "success",
        Ok(pb::StepResult::Failed) => "failed",
        Ok(pb::StepResult::Skipped) => "skipped",
        _ => "unknown",
    };
    JobEvent {
        job_id: event.job_id,
        event: EventRecord {
            sequence: event.sequence,
            step: event.step,
            state_id: event.state_id,
            result: result.to_owned(),
            changes: changes_in(&event.changes_json),
            comment: event.comment,
            duration_ms: event.duration_ms,
            timestamp_ms: event.timestamp_unix_ms,
        },
    }
}

pub fn job_event_out(job_id: &str, e: EventRecord) -> pb::JobEvent {
    pb::JobEvent {
        job_id: job_id.to_owned(),
        sequence: e.sequence,
        step: e.step,
        state_id: e.state_id,
        result: step_result(&e.result) as i32,
        changes_json: serde_json::to_vec(&e.changes).unwrap_or_default(),
        comment: e.comment,
        duration_ms: e.duration_ms,
        timestamp_unix_ms: e.timestamp_ms,
    }
}

pub fn job_outcome_in(f: pb::JobFinished) -> JobOutcome {
    JobOutcome {
        state: job_state(pb::JobStatus::try_from(f.status).unwrap_or(pb::JobStatus::Failed)),
        job_id: f.job_id,
        failed_step: f.failed_step,
        failed_state: f.failed_state,
        message: f.message,
        deploy_id: f.deploy_id,
        release: f.release.map(|r| ReleaseRef {
            digest: r.digest,
            size: r.size,
        }),
        duration_ms: f.duration_ms,
        used_bytes: f.used_bytes,
        live_deploy_id: f.live_deploy_id,
    }
}

fn job_outcome_out(o: JobOutcome) -> pb::JobFinished {
    pb::JobFinished {
        job_id: o.job_id,
        status: job_status(o.state) as i32,
        failed_step: o.failed_step,
        failed_state: o.failed_state,
        message: o.message,
        deploy_id: o.deploy_id,
        release: o.release.map(|r| pb::BlobRef {
            digest: r.digest,
            size: r.size,
        }),
        duration_ms: o.duration_ms,
        used_bytes: o.used_bytes,
        live_deploy_id: o.live_deploy_id,
    }
}

pub fn project_removed_in(r: pb::ProjectRemoved) -> ProjectRemoved {
    ProjectRemoved {
        job_id: r.job_id,
        env_uuid: r.env_uuid,
        project: r.project,
    }
}

pub fn usage_in(u: pb::ProjectUsage) -> ProjectUsage {
    ProjectUsage {
        env_uuid: u.env_uuid,
        project: u.project,
        used_bytes: u.used_bytes,
    }
}

/// An update for the client that started a job.
pub fn job_update(update: JobUpdate) -> Result<pb::JobUpdate, Status> {
    use pb::job_update::Body;
    let body = match update {
        JobUpdate::Started(id) => Body::JobId(id),
        JobUpdate::Event(e) => Body::Event(job_event_out(&e.job_id, e.event)),
        JobUpdate::Missed { job_id, count } => Body::Missed(pb::MissedUpdates {
            hint: format!(
                "{count} step events of job {job_id} were not shown because this client read too slowly; the master stored all of them: `corpus status` shows the outcome, and an operator lists every step with `corpus-master jobs show {job_id}`"
            ),
            job_id,
            count,
        }),
        JobUpdate::Finished(o) => Body::Finished(job_outcome_out(o)),
        JobUpdate::Keepalive => Body::Keepalive(pb::StreamKeepalive {
            interval_seconds: crate::relay::KEEPALIVE_EVERY.as_secs() as u32,
        }),
    };
    Ok(pb::JobUpdate { body: Some(body) })
}

fn job_order(order: JobOrder) -> pb::Job {
    let JobOrder {
        job,
        plan,
        common,
        pillar,
    } = order;
    pb::Job {
        job_id: job.id,
        kind: kind(job.kind) as i32,
        env_uuid: job.env_uuid,
        project: job.project,
        mode: mode(job.mode) as i32,
        deploy_id: job.deploy_id,
        plan_json: serde_json::to_vec(&plan).unwrap_or_default(),
        common_json: serde_json::to_vec(&common).unwrap_or_default(),
        source_blob: job.source_blob.unwrap_or_default(),
        release_blob: job.release_blob.unwrap_or_default(),
        target_deploy_id: job.target_deploy_id.unwrap_or_default(),
        requested_by: job.requested_by,
        pillar_json: serde_json::to_vec(&pillar).unwrap_or_default(),
        commit: job.commit,
    }
}

/// A message down an agent's link; a close ends the stream with the status the agent reads.
pub fn to_agent(message: ToAgent) -> Result<pb::MasterMessage, Status> {
    use pb::master_message::Body;
    let body = match message {
        ToAgent::Job(order) => Body::Job(job_order(*order)),
        ToAgent::Ack {
            job_id,
            events_stored,
        } => Body::Ack(pb::Ack {
            job_id,
            events_stored,
        }),
        ToAgent::Operator(call) => Body::OperatorCall(*call),
        ToAgent::Close(why) => {
            return Err(match why {
                LinkClosed::Replaced => {
                    Status::aborted("replaced by a newer connection of the same agent")
                }
                LinkClosed::RejectedByOperator => {
                    Status::permission_denied("agent was rejected by an operator")
                }
                LinkClosed::DeletedByOperator => {
                    Status::permission_denied("agent was deleted by an operator")
                }
                LinkClosed::MasterStopping => Status::unavailable("master is stopping"),
            });
        }
    };
    Ok(pb::MasterMessage { body: Some(body) })
}

pub fn job_summary(j: &JobRecord) -> pb::JobSummary {
    pb::JobSummary {
        job_id: j.id.clone(),
        kind: format!("{:?}", j.kind).to_lowercase(),
        env_uuid: j.env_uuid.clone(),
        project: j.project.clone(),
        deploy_id: j.deploy_id.clone(),
        agent: j.agent.clone(),
        requested_by: j.requested_by.clone(),
        status: job_status(j.state) as i32,
        failed_step: j.failed_step.clone(),
        failed_state: j.failed_state.clone(),
        message: j.message.clone(),
        created_at_unix: j.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_agent_is_unavailable_and_marked_as_not_the_master() {
        let status = Status::from(MasterError::AgentOffline(
            "agent \"a\" is not connected".into(),
        ));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get(UNAVAILABLE_PART)
                .and_then(|v| v.to_str().ok()),
            Some("agent")
        );
    }
}
