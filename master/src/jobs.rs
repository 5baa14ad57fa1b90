//! Jobs: dispatched to the agent hosting their environment over its link, every event stored
//! and relayed to the waiting client, the outcome recorded. One job per project at a time: a
//! second is refused at once, naming the holder.

use std::collections::HashMap;
use std::sync::Mutex;

use corpus_proto::{
    Job, JobEvent, JobFinished, JobStatus, JobUpdate, MasterMessage, ProjectUsage, StepResult,
    job_update, master_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, warn};

use crate::MasterState;
use crate::auth::now_unix;
use crate::status::internal;
use crate::store::{EventRecord, JobKind, JobRecord, JobState, project_key};

pub type Updates = ReceiverStream<Result<JobUpdate, Status>>;
type UpdateSender = mpsc::Sender<Result<JobUpdate, Status>>;

/// In-memory view of running jobs: who waits for their events, which project they hold.
#[derive(Default)]
pub struct Jobs {
    subscribers: Mutex<HashMap<String, UpdateSender>>,
    /// `<env>/<project>` -> the job holding it.
    active: Mutex<HashMap<String, ActiveJob>>,
}

/// A running job, as the lock and the reconciliation with its agent see it.
#[derive(Debug, Clone)]
struct ActiveJob {
    id: String,
    agent: String,
    /// When it was dispatched (or found running at start-up): a job is only declared lost
    /// once its agent had time to report it.
    since: std::time::Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn state_of(status: JobStatus) -> JobState {
    match status {
        JobStatus::Success => JobState::Success,
        JobStatus::RolledBack => JobState::RolledBack,
        JobStatus::Refused => JobState::Refused,
        JobStatus::Running => JobState::Running,
        _ => JobState::Failed,
    }
}

pub fn status_of(state: JobState) -> JobStatus {
    match state {
        JobState::Running => JobStatus::Running,
        JobState::Success => JobStatus::Success,
        JobState::Failed => JobStatus::Failed,
        JobState::RolledBack => JobStatus::RolledBack,
        JobState::Refused => JobStatus::Refused,
    }
}

impl Jobs {
    /// Rebuilds the index of running jobs after a restart.
    pub fn load(state: &MasterState) -> Result<(), Status> {
        let mut active = lock(&state.jobs.active);
        for job in state.store.jobs().map_err(internal)? {
            if job.state == JobState::Running {
                let key = project_key(&job.env_uuid, &job.project);
                active.insert(
                    key,
                    ActiveJob {
                        id: job.id,
                        agent: job.agent,
                        since: std::time::Instant::now(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Refuses at once when another job holds the project.
    pub fn check_free(&self, state: &MasterState, env: &str, project: &str) -> Result<(), Status> {
        let holder = lock(&self.active)
            .get(&project_key(env, project))
            .map(|a| a.id.clone());
        if let Some(holder) = holder {
            let detail = match state.store.job(&holder).map_err(internal)? {
                Some(job) => format!(
                    "{} (job {}, started {})",
                    job.requested_by,
                    job.id,
                    corpus_runtime::format_unix_time(job.created_at)
                ),
                None => format!("job {holder}"),
            };
            return Err(Status::failed_precondition(format!(
                "project {project:?} in environment {env} is locked by a deploy of {detail}: try again when it finishes"
            )));
        }
        Ok(())
    }

    /// Records the job, sends it to the agent and returns the client's update stream.
    pub fn dispatch(
        &self,
        state: &MasterState,
        record: JobRecord,
        job: Job,
    ) -> Result<Updates, Status> {
        let key = project_key(&record.env_uuid, &record.project);
        {
            // Check and claim under one lock: of two racing pushes, one wins.
            let mut active = lock(&self.active);
            if active.contains_key(&key) {
                drop(active);
                self.check_free(state, &record.env_uuid, &record.project)?;
                return Err(Status::failed_precondition(
                    "project is locked by another deploy",
                ));
            }
            active.insert(
                key.clone(),
                ActiveJob {
                    id: record.id.clone(),
                    agent: record.agent.clone(),
                    since: std::time::Instant::now(),
                },
            );
        }
        let accepted = state
            .store
            .agent(&record.agent)
            .map_err(internal)?
            .is_some_and(|a| a.status == crate::store::AgentStatus::Accepted);
        let link = if accepted {
            state.links.sender(&record.agent)
        } else {
            None
        };
        let Some(link) = link else {
            lock(&self.active).remove(&key);
            return Err(Status::unavailable(format!(
                "agent {:?} hosting environment {} is not connected: try again when it is (corpus listhosts)",
                record.agent, record.env_uuid
            )));
        };
        if let Err(e) = state.store.put_job(&record) {
            lock(&self.active).remove(&key);
            return Err(internal(e));
        }
        let (tx, rx) = mpsc::channel(1024);
        let _ = tx.try_send(Ok(JobUpdate {
            body: Some(job_update::Body::JobId(record.id.clone())),
        }));
        lock(&self.subscribers).insert(record.id.clone(), tx);
        let message = MasterMessage {
            body: Some(master_message::Body::Job(job)),
        };
        if link.try_send(Ok(message)).is_err() {
            self.finish_locally(
                state,
                &record.id,
                "the agent's link closed before the job could be sent",
            );
        } else {
            info!(job = %record.id, env = %record.env_uuid, project = %record.project, agent = %record.agent, kind = ?record.kind, "job dispatched");
        }
        Ok(ReceiverStream::new(rx))
    }

    /// Fails a job the agent never received.
    fn finish_locally(&self, state: &MasterState, job_id: &str, message: &str) {
        let finished = JobFinished {
            job_id: job_id.to_owned(),
            status: JobStatus::Failed as i32,
            message: message.to_owned(),
            ..Default::default()
        };
        if let Ok(Some(job)) = state.store.job(job_id) {
            let agent = job.agent.clone();
            let _ = self.on_finished(state, &agent, finished);
        }
    }

    /// The job, if it belongs to `agent`.
    fn job_of(state: &MasterState, agent: &str, job_id: &str) -> Result<JobRecord, Status> {
        match state.store.job(job_id).map_err(internal)? {
            Some(job) if job.agent == agent => Ok(job),
            _ => Err(Status::permission_denied(format!(
                "job {job_id:?} is not a job of agent {agent:?}"
            ))),
        }
    }

    pub fn on_event(
        &self,
        state: &MasterState,
        agent: &str,
        event: JobEvent,
    ) -> Result<(), Status> {
        Self::job_of(state, agent, &event.job_id)?;
        let result = match StepResult::try_from(event.result) {
            Ok(StepResult::Running) => "running",
            Ok(StepResult::Success) => "success",
            Ok(StepResult::Failed) => "failed",
            Ok(StepResult::Skipped) => "skipped",
            _ => "unknown",
        };
        let record = EventRecord {
            sequence: event.sequence,
            step: event.step.clone(),
            state_id: event.state_id.clone(),
            result: result.to_owned(),
            changes: serde_json::from_slice(&event.changes_json).unwrap_or_default(),
            comment: event.comment.clone(),
            duration_ms: event.duration_ms,
            timestamp_ms: event.timestamp_unix_ms,
        };
        state
            .store
            .put_event(&event.job_id, &record)
            .map_err(internal)?;
        let sender = lock(&self.subscribers).get(&event.job_id).cloned();
        if let Some(sender) = sender {
            // A slow or departed client never blocks the agent's stream.
            let _ = sender.try_send(Ok(JobUpdate {
                body: Some(job_update::Body::Event(event)),
            }));
        }
        Ok(())
    }

    /// Records a finished job (idempotent: a result resent after a reconnect is applied once).
    pub fn on_finished(
        &self,
        state: &MasterState,
        agent: &str,
        finished: JobFinished,
    ) -> Result<(), Status> {
        let mut job = Self::job_of(state, agent, &finished.job_id)?;
        let status = JobStatus::try_from(finished.status).unwrap_or(JobStatus::Failed);
        if job.state == JobState::Running {
            job.state = state_of(status);
            job.failed_step = finished.failed_step.clone();
            job.failed_state = finished.failed_state.clone();
            job.message = finished.message.clone();
            job.finished_at = Some(now_unix());
            state.store.put_job(&job).map_err(internal)?;
            self.update_project(state, &job, &finished)?;
            info!(job = %job.id, state = job.state.as_str(), step = %job.failed_step, "job finished");
        }
        let key = project_key(&job.env_uuid, &job.project);
        {
            let mut active = lock(&self.active);
            if active.get(&key).is_some_and(|a| a.id == job.id) {
                active.remove(&key);
            }
        }
        if let Some(sender) = lock(&self.subscribers).remove(&job.id) {
            let _ = sender.try_send(Ok(JobUpdate {
                body: Some(job_update::Body::Finished(finished)),
            }));
        }
        Ok(())
    }

    /// Fails the running jobs of `agent` that it no longer knows (neither running nor holding
    /// a result of): they were lost before they started, e.g. the link broke right after the
    /// dispatch. Without this the project would stay locked forever. `grace` spares jobs
    /// dispatched too recently for the agent's report to include them.
    pub fn reconcile(
        &self,
        state: &MasterState,
        agent: &str,
        known: &[String],
        grace: std::time::Duration,
    ) {
        let lost: Vec<String> = lock(&self.active)
            .values()
            .filter(|a| a.agent == agent && a.since.elapsed() > grace)
            .filter(|a| !known.contains(&a.id))
            .map(|a| a.id.clone())
            .collect();
        for job_id in lost {
            warn!(job = %job_id, agent, "the agent no longer knows this job: failing it");
            let finished = JobFinished {
                job_id: job_id.clone(),
                status: JobStatus::Failed as i32,
                failed_step: "dispatch".into(),
                message: format!(
                    "agent {agent:?} never ran job {job_id} (it was lost before it started, e.g. when the link broke); nothing changed: push again"
                ),
                ..Default::default()
            };
            if let Err(status) = self.on_finished(state, agent, finished) {
                warn!(job = %job_id, error = %status.message(), "cannot fail a lost job");
            }
        }
    }

    /// A project's disk use as its agent measured it after a job.
    pub fn on_usage(
        &self,
        state: &MasterState,
        agent: &str,
        usage: ProjectUsage,
    ) -> Result<(), Status> {
        let env = state.store.environment(&usage.env_uuid).map_err(internal)?;
        if env.is_none_or(|e| e.agent != agent) {
            return Err(Status::permission_denied(format!(
                "environment {:?} is not hosted by agent {agent:?}",
                usage.env_uuid
            )));
        }
        if let Some(mut project) = state
            .store
            .project(&usage.env_uuid, &usage.project)
            .map_err(internal)?
        {
            project.used_bytes = usage.used_bytes;
            state.store.put_project(&project).map_err(internal)?;
        }
        Ok(())
    }

    fn update_project(
        &self,
        state: &MasterState,
        job: &JobRecord,
        finished: &JobFinished,
    ) -> Result<(), Status> {
        match job.kind {
            JobKind::Destroy if job.state == JobState::Success => {
                if job.project.is_empty() {
                    state
                        .store
                        .delete_environment(&job.env_uuid)
                        .map_err(internal)?;
                } else {
                    state
                        .store
                        .delete_project(&job.env_uuid, &job.project)
                        .map_err(internal)?;
                }
            }
            _ => {
                let Some(mut project) = state
                    .store
                    .project(&job.env_uuid, &job.project)
                    .map_err(internal)?
                else {
                    warn!(job = %job.id, "finished job of a project that no longer exists");
                    return Ok(());
                };
                if finished.used_bytes > 0 {
                    project.used_bytes = finished.used_bytes;
                }
                if !finished.live_deploy_id.is_empty() {
                    project.live_deploy = Some(finished.live_deploy_id.clone());
                }
                state.store.put_project(&project).map_err(internal)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{JobKind, Mode};

    fn running_job(id: &str, agent: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind: JobKind::Deploy,
            env_uuid: "env".into(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: String::new(),
            requested_by: "alice".into(),
            agent: agent.into(),
            commit: String::new(),
            created_at: 0,
            created_ms: 0,
            state: JobState::Running,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: None,
            source_blob: None,
            release_blob: None,
            target_deploy_id: None,
            plan: serde_json::Value::Null,
            common: serde_json::Value::Null,
            pillar: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_job_its_agent_no_longer_knows_is_failed_and_frees_the_project() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        crate::init(dir.path(), &[], false)?;
        let state = crate::open(&crate::ServeOptions {
            data_dir: dir.path().to_owned(),
            settings: Default::default(),
        })?;
        state.store.put_job(&running_job("j1", "node1"))?;
        Jobs::load(&state).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let state_of_j1 = || -> anyhow::Result<JobState> {
            Ok(state.store.job("j1")?.map_or(JobState::Failed, |j| j.state))
        };

        // Too recent, known to its agent, or asked about another agent: left alone.
        state
            .jobs
            .reconcile(&state, "node1", &[], Duration::from_secs(3600));
        state
            .jobs
            .reconcile(&state, "node1", &["j1".into()], Duration::ZERO);
        state.jobs.reconcile(&state, "node2", &[], Duration::ZERO);
        assert_eq!(state_of_j1()?, JobState::Running);
        assert!(state.jobs.check_free(&state, "env", "app").is_err());

        // Its agent does not know it any more: failed, and the project is free again.
        state.jobs.reconcile(&state, "node1", &[], Duration::ZERO);
        assert_eq!(state_of_j1()?, JobState::Failed);
        assert_eq!(
            state.store.job("j1")?.map(|j| j.failed_step),
            Some("dispatch".to_owned())
        );
        assert!(state.jobs.check_free(&state, "env", "app").is_ok());
        Ok(())
    }
}
