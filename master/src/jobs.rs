//! Jobs: dispatched to the agent hosting their environment over its link, every event stored
//! and relayed to the waiting client, the outcome recorded. One job per project at a time: a
//! second is refused at once, naming the holder.
//!
//! What flows here (events, outcomes, orders to agents, updates to clients) is domain data;
//! the services convert it from and to the wire in [`crate::wire`].

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_stream::StreamExt;

use tracing::{debug, info, warn};

use crate::MasterState;
use crate::auth::now_unix;
use crate::error::{LockHolder, MasterError, MasterResult};
use crate::link_registry::ToAgent;
pub use crate::relay::Updates;

/// What a client following a job reads (`Jobs::follow`).
pub type FollowUpdates = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = JobUpdate> + Send>>;
use crate::relay::{EVENT_QUEUE, Relay};
use crate::store::{
    AgentStatus, EventRecord, JobKind, JobPayload, JobRecord, JobState, PillarRevision,
    ProjectChange, project_key,
};

/// A step of a running job as its agent reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub job_id: String,
    pub event: EventRecord,
}

/// A release archive a cooking deploy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRef {
    pub digest: String,
    pub size: u64,
}

/// How a job ended, as its agent (or the master, for a job its agent never ran) reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job_id: String,
    pub state: JobState,
    pub failed_step: String,
    pub failed_state: String,
    pub message: String,
    pub deploy_id: String,
    pub release: Option<ReleaseRef>,
    pub duration_ms: u64,
    /// Disk used by the project after the job, for quotas (0: not measured).
    pub used_bytes: u64,
    /// The deployment `run/` points at after the job (empty: unchanged).
    pub live_deploy_id: String,
}

impl JobOutcome {
    /// A failure the master decides on its own (the agent never ran the job, an operator).
    pub fn failed(job_id: &str, failed_step: &str, message: String) -> JobOutcome {
        JobOutcome {
            job_id: job_id.to_owned(),
            state: JobState::Failed,
            failed_step: failed_step.to_owned(),
            failed_state: String::new(),
            message,
            deploy_id: String::new(),
            release: None,
            duration_ms: 0,
            used_bytes: 0,
            live_deploy_id: String::new(),
        }
    }
}

/// A project's disk use as its agent measured it after a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectUsage {
    pub env_uuid: String,
    pub project: String,
    pub used_bytes: u64,
}

/// A project an environment destroy removed, reported before the job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRemoved {
    pub job_id: String,
    pub env_uuid: String,
    pub project: String,
}

/// What the agent receives: the job's summary and what it runs. `common` carries the agent's
/// grains, which the stored payload does not.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOrder {
    pub job: JobRecord,
    pub plan: serde_json::Value,
    pub common: serde_json::Value,
    pub pillar: serde_json::Value,
}

/// What the client that started a job is told, in order: its id, its events, how many events
/// it missed by reading too slowly (if any), its outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum JobUpdate {
    Started(String),
    Event(JobEvent),
    Missed {
        job_id: String,
        count: u64,
    },
    Finished(JobOutcome),
    /// Nothing else to say for a while (`relay::KEEPALIVE_EVERY`): the master is alive.
    Keepalive,
}

/// A job ready to be recorded and sent, with what is recorded along with it.
pub struct NewDispatch {
    pub order: JobOrder,
    /// The payload as stored (without grains).
    pub payload: JobPayload,
    /// Blobs the job's environment may fetch from now on.
    pub blob_grants: Vec<String>,
    /// The pillar a push brought, kept for `corpus-master pillar show`.
    pub pillar_revision: Option<PillarRevision>,
}

/// In-memory view of running jobs: who waits for their events, which project they hold.
#[derive(Default)]
pub struct Jobs {
    /// Job id -> the relays to the clients following it: the one that started it, and any
    /// that attached later (`corpus follow`, a push reattaching).
    subscribers: Mutex<HashMap<String, Vec<Relay>>>,
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

impl Jobs {
    /// For SIGUSR2's state summary: jobs running now, clients following them, and the events
    /// queued to those clients.
    pub fn load_summary(&self) -> (usize, usize, usize) {
        let relays = lock(&self.subscribers);
        let followers = relays.values().map(Vec::len).sum();
        let queued = relays.values().flatten().map(Relay::queued).sum();
        (lock(&self.active).len(), followers, queued)
    }

    /// Rebuilds the index of running jobs after a restart.
    pub fn load(state: &MasterState) -> MasterResult<()> {
        let mut active = lock(&state.jobs.active);
        for job in state.store.jobs()? {
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

    /// The refusal naming the job that holds a project.
    fn locked(state: &MasterState, env: &str, project: &str, holder: String) -> MasterError {
        // The holder's details are a courtesy: a storage error here must not hide the refusal.
        let job = state.store.job(&holder).ok().flatten();
        MasterError::Locked {
            env: env.to_owned(),
            project: project.to_owned(),
            holder: LockHolder {
                user: job.as_ref().map(|j| j.requested_by.clone()),
                started: job.as_ref().map(|j| j.created_at),
                job: holder,
            },
        }
    }

    /// Refuses at once when another job holds the project.
    pub fn check_free(&self, state: &MasterState, env: &str, project: &str) -> MasterResult<()> {
        let holder = lock(&self.active)
            .get(&project_key(env, project))
            .map(|a| a.id.clone());
        match holder {
            Some(holder) => Err(Self::locked(state, env, project, holder)),
            None => Ok(()),
        }
    }

    /// Records the job (with its payload, blob grants and pillar revision, in one batch),
    /// sends it to the agent and returns the client's update stream.
    pub fn dispatch(&self, state: &MasterState, new: NewDispatch) -> MasterResult<Updates> {
        let record = &new.order.job;
        let key = project_key(&record.env_uuid, &record.project);
        {
            // Check and claim under one lock: of two racing pushes, one wins.
            let mut active = lock(&self.active);
            if let Some(holder) = active.get(&key).map(|a| a.id.clone()) {
                drop(active);
                return Err(Self::locked(
                    state,
                    &record.env_uuid,
                    &record.project,
                    holder,
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
        let release = || {
            lock(&self.active).remove(&key);
        };
        let accepted = match state.store.agent(&record.agent) {
            Ok(agent) => agent.is_some_and(|a| a.status == AgentStatus::Accepted),
            Err(e) => {
                release();
                return Err(e.into());
            }
        };
        let link = if accepted {
            state.links.sender(&record.agent)
        } else {
            None
        };
        let Some(link) = link else {
            release();
            return Err(MasterError::AgentOffline(format!(
                "agent {:?} hosting environment {} is not connected: try again when it is (corpus listhosts)",
                record.agent, record.env_uuid
            )));
        };
        if let Err(e) = state.store.record_job(
            record,
            &new.payload,
            &new.blob_grants,
            new.pillar_revision.as_ref(),
        ) {
            release();
            return Err(e.into());
        }
        let (relay, updates) = Relay::open(&record.id, EVENT_QUEUE);
        lock(&self.subscribers).insert(record.id.clone(), vec![relay]);
        let (id, env, project, agent, kind) = (
            record.id.clone(),
            record.env_uuid.clone(),
            record.project.clone(),
            record.agent.clone(),
            record.kind,
        );
        if link.try_send(ToAgent::Job(Box::new(new.order))).is_err() {
            self.finish_locally(
                state,
                &id,
                "the agent's link closed before the job could be sent",
            );
        } else {
            info!(job = %id, %env, %project, %agent, ?kind, "job dispatched");
        }
        Ok(updates)
    }

    /// Fails a job the agent never received.
    fn finish_locally(&self, state: &MasterState, job_id: &str, message: &str) {
        let outcome = JobOutcome::failed(job_id, "", message.to_owned());
        if let Ok(Some(job)) = state.store.job(job_id) {
            let _ = self.on_finished(state, &job.agent, outcome);
        }
    }

    /// The job, if it belongs to `agent`.
    fn job_of(state: &MasterState, agent: &str, job_id: &str) -> MasterResult<JobRecord> {
        match state.store.job(job_id)? {
            Some(job) if job.agent == agent => Ok(job),
            _ => Err(MasterError::Forbidden(format!(
                "job {job_id:?} is not a job of agent {agent:?}"
            ))),
        }
    }

    /// Stores an event once, keyed by its job and sequence, and relays it to the waiting
    /// client. An event the agent resends (it keeps them until an ack covers them) is neither
    /// stored nor relayed again.
    pub fn on_event(&self, state: &MasterState, agent: &str, event: JobEvent) -> MasterResult<()> {
        Self::job_of(state, agent, &event.job_id)?;
        if !state.store.record_event(&event.job_id, &event.event)? {
            debug!(job = %event.job_id, sequence = event.event.sequence, "event already stored");
            return Ok(());
        }
        if let Some(relays) = lock(&self.subscribers).get_mut(&event.job_id) {
            // Never waits: a slow or departed client never blocks the agent's stream.
            for relay in relays.iter_mut() {
                relay.event(event.clone());
            }
        }
        Ok(())
    }

    /// How many of the job's events the master holds, from the first without a gap: what an
    /// ack tells the agent it may forget.
    pub fn events_stored(&self, state: &MasterState, job_id: &str) -> MasterResult<u64> {
        Ok(state.store.events_stored(job_id)?)
    }

    /// Records a finished job (idempotent: a result resent after a reconnect is applied once).
    pub fn on_finished(
        &self,
        state: &MasterState,
        agent: &str,
        outcome: JobOutcome,
    ) -> MasterResult<()> {
        let mut job = Self::job_of(state, agent, &outcome.job_id)?;
        if job.state == JobState::Running {
            job.state = outcome.state;
            job.failed_step = outcome.failed_step.clone();
            job.failed_state = outcome.failed_state.clone();
            job.message = outcome.message.clone();
            job.finished_at = Some(now_unix());
            let change = Self::project_change(state, &job, &outcome)?;
            state.store.finish_job(&job, change)?;
            info!(job = %job.id, state = job.state.as_str(), step = %job.failed_step, "job finished");
        }
        let key = project_key(&job.env_uuid, &job.project);
        {
            let mut active = lock(&self.active);
            if active.get(&key).is_some_and(|a| a.id == job.id) {
                active.remove(&key);
            }
        }
        for relay in lock(&self.subscribers).remove(&job.id).unwrap_or_default() {
            relay.finish(outcome.clone());
        }
        Ok(())
    }

    /// A job's updates for a client attaching to it (again): `Started`, its stored events from
    /// `from_sequence`, then, for a running job, the live ones (each sequence once) and its
    /// result when it comes; for a finished job, its recorded result at once (with the
    /// project's live deployment now).
    pub fn follow(
        &self,
        state: &MasterState,
        job: &JobRecord,
        from_sequence: u64,
    ) -> MasterResult<FollowUpdates> {
        let (relay, live) = Relay::open(&job.id, EVENT_QUEUE);
        // Registered before the stored events are read, under the lock `on_finished` takes
        // after recording the result: no event and no result falls between the two.
        let current = {
            let mut subscribers = lock(&self.subscribers);
            let current = state
                .store
                .job(&job.id)?
                .ok_or_else(|| MasterError::not_found("job", &job.id, ""))?;
            if current.state == JobState::Running {
                subscribers.entry(job.id.clone()).or_default().push(relay);
            }
            current
        };
        let stored: Vec<JobUpdate> = state
            .store
            .events(&job.id)?
            .into_iter()
            .filter(|e| e.sequence >= from_sequence)
            .map(|event| {
                JobUpdate::Event(JobEvent {
                    job_id: job.id.clone(),
                    event,
                })
            })
            .collect();
        let last_stored = stored
            .iter()
            .filter_map(|u| match u {
                JobUpdate::Event(e) => Some(e.event.sequence),
                _ => None,
            })
            .max()
            .unwrap_or(0)
            .max(from_sequence.saturating_sub(1));
        let mut head = vec![JobUpdate::Started(job.id.clone())];
        head.extend(stored);
        if current.state != JobState::Running {
            let live_deploy_id = state
                .store
                .project(&current.env_uuid, &current.project)?
                .and_then(|p| p.live_deploy)
                .unwrap_or_default();
            head.push(JobUpdate::Finished(JobOutcome {
                job_id: current.id.clone(),
                state: current.state,
                failed_step: current.failed_step.clone(),
                failed_state: current.failed_state.clone(),
                message: current.message.clone(),
                deploy_id: current.deploy_id.clone(),
                release: None,
                duration_ms: current
                    .finished_at
                    .map_or(0, |end| (end - current.created_at).max(0) as u64 * 1000),
                used_bytes: 0,
                live_deploy_id,
            }));
            return Ok(Box::pin(tokio_stream::iter(head)));
        }
        let live = live.filter(move |u| match u {
            JobUpdate::Started(_) => false,
            JobUpdate::Event(e) => e.event.sequence > last_stored,
            _ => true,
        });
        Ok(Box::pin(tokio_stream::iter(head).chain(live)))
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
        let lost = self.lost_jobs(agent, known, grace);
        self.fail_lost(state, agent, lost);
    }

    /// The running jobs of `agent` it no longer knows (see [`Jobs::reconcile`]), from memory
    /// only: a heartbeat checks here on the async worker and goes to the store (a blocking
    /// trip) only when something was lost, which is rare.
    pub fn lost_jobs(
        &self,
        agent: &str,
        known: &[String],
        grace: std::time::Duration,
    ) -> Vec<String> {
        lock(&self.active)
            .values()
            .filter(|a| a.agent == agent && a.since.elapsed() > grace)
            .filter(|a| !known.contains(&a.id))
            .map(|a| a.id.clone())
            .collect()
    }

    /// Fails the jobs [`Jobs::lost_jobs`] found. Blocking (store writes).
    pub fn fail_lost(&self, state: &MasterState, agent: &str, lost: Vec<String>) {
        for job_id in lost {
            warn!(job = %job_id, agent, "the agent no longer knows this job: failing it");
            let outcome = JobOutcome::failed(
                &job_id,
                "dispatch",
                format!(
                    "agent {agent:?} never ran job {job_id} (it was lost before it started, e.g. when the link broke); nothing changed: push again"
                ),
            );
            if let Err(e) = self.on_finished(state, agent, outcome) {
                warn!(job = %job_id, error = %e, "cannot fail a lost job");
            }
        }
    }

    /// A project's disk use as its agent measured it after a job.
    pub fn on_usage(
        &self,
        state: &MasterState,
        agent: &str,
        usage: ProjectUsage,
    ) -> MasterResult<()> {
        let env = state.store.environment(&usage.env_uuid)?;
        if env.is_none_or(|e| e.agent != agent) {
            return Err(MasterError::Forbidden(format!(
                "environment {:?} is not hosted by agent {agent:?}",
                usage.env_uuid
            )));
        }
        if let Some(mut project) = state.store.project(&usage.env_uuid, &usage.project)? {
            project.used_bytes = usage.used_bytes;
            state.store.put_project(&project)?;
        }
        Ok(())
    }

    /// A project an environment destroy removed: its record goes now, so a destroy that fails
    /// later leaves the master listing only what remains. Only the running destroy of that
    /// environment, by its agent, may report one.
    pub fn on_project_removed(
        &self,
        state: &MasterState,
        agent: &str,
        removed: ProjectRemoved,
    ) -> MasterResult<()> {
        let job = Self::job_of(state, agent, &removed.job_id)?;
        if job.kind != JobKind::Destroy
            || !job.project.is_empty()
            || job.env_uuid != removed.env_uuid
            || job.state != JobState::Running
        {
            return Err(MasterError::Forbidden(format!(
                "job {} is not a running destroy of environment {}",
                job.id, removed.env_uuid
            )));
        }
        state
            .store
            .delete_project(&removed.env_uuid, &removed.project)?;
        info!(job = %job.id, env = %removed.env_uuid, project = %removed.project, "project removed by an environment destroy");
        Ok(())
    }

    /// What a finished job does to its project's record.
    fn project_change(
        state: &MasterState,
        job: &JobRecord,
        outcome: &JobOutcome,
    ) -> MasterResult<ProjectChange> {
        Ok(match job.kind {
            JobKind::Destroy if job.state == JobState::Success => {
                if job.project.is_empty() {
                    ProjectChange::DeleteEnvironment(job.env_uuid.clone())
                } else {
                    ProjectChange::DeleteProject {
                        env: job.env_uuid.clone(),
                        name: job.project.clone(),
                    }
                }
            }
            _ => {
                let Some(mut project) = state.store.project(&job.env_uuid, &job.project)? else {
                    warn!(job = %job.id, "finished job of a project that no longer exists");
                    return Ok(ProjectChange::None);
                };
                if outcome.used_bytes > 0 {
                    project.used_bytes = outcome.used_bytes;
                }
                if !outcome.live_deploy_id.is_empty() {
                    project.live_deploy = Some(outcome.live_deploy_id.clone());
                }
                ProjectChange::Update(project)
            }
        })
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
        }
    }

    #[test]
    fn a_job_its_agent_no_longer_knows_is_failed_and_frees_the_project() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        state.store.put_job(&running_job("j1", "node1"))?;
        Jobs::load(&state)?;
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

    fn step(sequence: u64, comment: &str) -> JobEvent {
        JobEvent {
            job_id: "j1".into(),
            event: EventRecord {
                sequence,
                step: "build".into(),
                state_id: format!("state-{sequence}"),
                result: "success".into(),
                changes: serde_json::json!({"retcode": 0}),
                comment: comment.into(),
                duration_ms: 1,
                timestamp_ms: 0,
            },
        }
    }

    #[test]
    fn resent_events_are_stored_once_and_the_ack_counts_what_is_held() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        state.store.put_job(&running_job("j1", "node1"))?;
        let (relay, updates) = Relay::open("j1", EVENT_QUEUE);
        lock(&state.jobs.subscribers).insert("j1".into(), vec![relay]);

        // Events 1, 2 and 4 arrive; the master dies before 3; the agent resends 1 to 4.
        for sequence in [1, 2, 4] {
            state
                .jobs
                .on_event(&state, "node1", step(sequence, "first"))?;
        }
        assert_eq!(state.jobs.events_stored(&state, "j1")?, 2);
        for sequence in 1..=4 {
            state
                .jobs
                .on_event(&state, "node1", step(sequence, "resent"))?;
        }
        assert_eq!(state.jobs.events_stored(&state, "j1")?, 4);
        let stored = state.store.events("j1")?;
        assert_eq!(
            stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        // The first copy stays; a resent one changes nothing.
        assert_eq!(stored[0].comment, "first");
        assert_eq!(stored[2].comment, "resent");
        // Another agent's events are refused.
        assert!(state.jobs.on_event(&state, "node2", step(5, "x")).is_err());

        // The client saw each event once.
        state
            .jobs
            .on_finished(&state, "node1", JobOutcome::failed("j1", "", String::new()))?;
        let relayed: Vec<u64> = drain_queued(updates)
            .into_iter()
            .filter_map(|u| match u {
                JobUpdate::Event(e) => Some(e.event.sequence),
                _ => None,
            })
            .collect();
        assert_eq!(relayed, vec![1, 2, 4, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn a_client_reattaching_gets_the_stored_events_then_the_live_ones_once_then_the_result()
    -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let job = running_job("j1", "node1");
        state.store.put_job(&job)?;
        for sequence in 1..=3 {
            state
                .jobs
                .on_event(&state, "node1", step(sequence, "before"))?;
        }
        // The client saw event 1 before its stream broke.
        let updates = state.jobs.follow(&state, &job, 2)?;
        for sequence in 3..=4 {
            state
                .jobs
                .on_event(&state, "node1", step(sequence, "live"))?;
        }
        state.jobs.on_finished(
            &state,
            "node1",
            JobOutcome::failed("j1", "build", "boom".into()),
        )?;
        let got: Vec<JobUpdate> = updates.collect().await;
        assert_eq!(got.first(), Some(&JobUpdate::Started("j1".into())));
        let sequences: Vec<u64> = got
            .iter()
            .filter_map(|u| match u {
                JobUpdate::Event(e) => Some(e.event.sequence),
                _ => None,
            })
            .collect();
        assert_eq!(sequences, [2, 3, 4]);
        assert!(matches!(got.last(), Some(JobUpdate::Finished(o)) if o.message == "boom"));

        // Once finished, a follow gets every stored event and the recorded result at once.
        let finished = state.store.job("j1")?.expect("recorded");
        let again: Vec<JobUpdate> = state.jobs.follow(&state, &finished, 0)?.collect().await;
        assert_eq!(again.len(), 1 + 4 + 1);
        assert!(matches!(again.last(), Some(JobUpdate::Finished(o)) if o.failed_step == "build"));
        Ok(())
    }

    #[test]
    fn a_destroy_that_fails_part_way_leaves_only_the_remaining_projects() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        for name in ["api", "web"] {
            state.store.put_project(&crate::store::ProjectRecord {
                env_uuid: "env".into(),
                name: name.into(),
                created_at: 0,
                quota_bytes: 1,
                used_bytes: 0,
                live_deploy: None,
            })?;
        }
        let destroy = JobRecord {
            kind: JobKind::Destroy,
            project: String::new(),
            ..running_job("d1", "node1")
        };
        state.store.put_job(&destroy)?;
        state.store.put_job(&running_job("j2", "node1"))?;
        let removed = |job: &str, agent: &str| {
            state.jobs.on_project_removed(
                &state,
                agent,
                ProjectRemoved {
                    job_id: job.into(),
                    env_uuid: "env".into(),
                    project: "api".into(),
                },
            )
        };
        // Only the running environment destroy, by its agent, removes a project.
        assert!(removed("d1", "node2").is_err());
        assert!(removed("j2", "node1").is_err());
        assert_eq!(state.store.projects("env")?.len(), 2);

        removed("d1", "node1")?;
        state.jobs.on_finished(
            &state,
            "node1",
            JobOutcome::failed("d1", "destroy", "project \"web\": cannot remove".into()),
        )?;
        let names: Vec<String> = state
            .store
            .projects("env")?
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["web".to_owned()]);
        // A report after the result changes nothing.
        assert!(removed("d1", "node1").is_err());
        Ok(())
    }

    /// Drains a finished relay without an async runtime (every update is already queued).
    fn drain_queued(updates: Updates) -> Vec<JobUpdate> {
        let mut rx = updates.into_inner().into_inner();
        let mut out = Vec::new();
        while let Ok(update) = rx.try_recv() {
            out.push(update);
        }
        out
    }
}
