//! Running the master's jobs on this agent: convert the wire job, fetch its blobs, run the
//! lifecycle on a blocking thread while its events stream to the master, upload a cooked
//! release, and hand the result to the outbox of results (`results.rs`), where it stays until
//! the master acknowledges it. A journaled job's result is kept before its journal goes (the
//! reporter's `finished`), so neither a crash, a stop, a master restart nor a broken link loses
//! a result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corpus_proto::{
    AgentMessage, JobEvent, JobKind as WireKind, Mode as WireMode, ProjectUsage, StepResult,
    agent_message,
};
use corpus_runtime::Signal;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::blobs::{self, UploadError, blob_file, valid_hex};
use crate::enroll::AgentIdentity;
use crate::lifecycle::{self, Finished, JobOutcome, Lifecycle, Reporter, Step, StepStatus};
use crate::results::{self, EventLog, RunningJobs, StoredResult, capped_text, wire_status};

/// Messages for the master, queued across reconnects.
pub type Outbox = UnboundedSender<AgentMessage>;

/// What a job needs from the agent it runs on.
pub struct JobContext {
    pub lifecycle: Arc<Lifecycle>,
    pub state_dir: PathBuf,
    pub master: String,
    pub ca_pem: String,
    pub identity: AgentIdentity,
    pub grains: serde_json::Value,
    pub outbox: Outbox,
    /// Jobs received and not finished yet (their results then live in `results/`).
    pub running: RunningJobs,
    /// Says stop: a release upload waiting for the master gives up and resumes at next start.
    pub stop: watch::Receiver<Signal>,
}

/// Marks a job as running before its task starts, so no heartbeat can miss it.
pub fn start(ctx: &JobContext, job_id: &str) {
    if let Ok(mut set) = ctx.running.lock() {
        set.insert(job_id.to_owned());
    }
}

/// Keeps a result (fsynced) and queues it for the master.
pub fn deliver(state_dir: &Path, outbox: &Outbox, result: StoredResult) {
    results::keep_or_warn(state_dir, &result);
    let _ = outbox.send(AgentMessage {
        body: Some(agent_message::Body::Finished(result.into_message())),
    });
}

/// What one event's changes may weigh once encoded, and its comment: together far under the
/// link's 16 MiB message limit, so no state's output can end the link (README, "Limits").
pub const CHANGES_CAP_BYTES: usize = 4 * 1024 * 1024;
pub const COMMENT_CAP_BYTES: usize = 64 * 1024;

/// The changes as JSON, or a note saying they were dropped for their size.
fn capped_changes(changes: &serde_json::Value) -> Vec<u8> {
    let json = serde_json::to_vec(changes).unwrap_or_default();
    if json.len() <= CHANGES_CAP_BYTES {
        return json;
    }
    let note = serde_json::json!({
        "corpus_truncated": format!(
            "this state's changes ({} bytes) exceed the {CHANGES_CAP_BYTES} bytes an event may \
             carry and were dropped",
            json.len()
        )
    });
    serde_json::to_vec(&note).unwrap_or_default()
}

/// Streams lifecycle steps to the master as JobEvents, and keeps the job's result on disk
/// when the lifecycle says it is final.
pub struct OutboxReporter {
    job_id: String,
    outbox: Outbox,
    sequence: u64,
    /// Where the result is kept (`results.rs`).
    state_dir: PathBuf,
    /// The job's events on disk, until the master's ack covers them.
    events: EventLog,
    started: Instant,
}

impl OutboxReporter {
    /// A reporter for `job_id`; a job resumed after a crash continues the sequence of the
    /// events it kept (the master stores one event per sequence: reused ones would be lost).
    pub fn new(job_id: &str, outbox: Outbox, state_dir: &Path) -> Self {
        let events = EventLog::new(state_dir, job_id);
        OutboxReporter {
            job_id: job_id.to_owned(),
            outbox,
            sequence: events.last_sequence(),
            state_dir: state_dir.to_path_buf(),
            events,
            started: Instant::now(),
        }
    }
}

impl Reporter for OutboxReporter {
    fn step(
        &mut self,
        step: Step,
        state_id: &str,
        status: StepStatus,
        changes: serde_json::Value,
        comment: &str,
        duration: Duration,
    ) {
        self.sequence += 1;
        let result = match status {
            StepStatus::Running => StepResult::Running,
            StepStatus::Success => StepResult::Success,
            StepStatus::Failed => StepResult::Failed,
            StepStatus::Skipped => StepResult::Skipped,
        };
        let event = JobEvent {
            job_id: self.job_id.clone(),
            sequence: self.sequence,
            step: step.as_str().to_owned(),
            state_id: state_id.to_owned(),
            result: result as i32,
            changes_json: capped_changes(&changes),
            comment: capped_text(comment, COMMENT_CAP_BYTES),
            duration_ms: duration.as_millis() as u64,
            timestamp_unix_ms: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
                / 1_000_000,
        };
        self.events.append(&event);
        let _ = self.outbox.send(AgentMessage {
            body: Some(agent_message::Body::Event(event)),
        });
    }

    fn finished(&mut self, result: &Finished<'_>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        // The events first: a kept result has all its events on disk.
        self.events.sync();
        results::keep_or_warn(
            &self.state_dir,
            &StoredResult::of(&self.job_id, result, duration_ms),
        );
    }
}

fn failure(job: &corpus_proto::Job, step: &str, message: String) -> JobOutcome {
    JobOutcome {
        status: lifecycle::Status::Failed,
        failed_step: step.to_owned(),
        failed_state: String::new(),
        message,
        deploy_id: job.deploy_id.clone(),
        release: None,
    }
}

/// Runs one job to its end and delivers its result. Never panics on bad input: every failure
/// becomes a failed result naming its step.
pub async fn run(ctx: Arc<JobContext>, job: corpus_proto::Job) {
    let span = info_span!("job", job = %job.job_id, env = %job.env_uuid, project = %job.project);
    async move {
        let started = Instant::now();
        info!("job received");
        let blob_dir = ctx.state_dir.join("blobs");
        let destroys_environment = job.kind == WireKind::Destroy as i32 && job.project.is_empty();
        let outcome = if destroys_environment {
            let (c, j) = (ctx.clone(), job.clone());
            tokio::task::spawn_blocking(move || destroy_environment(&c, &j))
                .await
                .unwrap_or_else(|e| failure(&job, "agent", format!("destroy crashed: {e}")))
        } else {
            match prepare(&ctx, &job, &blob_dir).await {
                Err((step, message)) => failure(&job, step, message),
                Ok(lifecycle_job) => {
                    let lc = ctx.lifecycle.clone();
                    let mut reporter =
                        OutboxReporter::new(&job.job_id, ctx.outbox.clone(), &ctx.state_dir);
                    let ran =
                        tokio::task::spawn_blocking(move || lc.run(&lifecycle_job, &mut reporter))
                            .await;
                    ran.unwrap_or_else(|e| {
                        failure(&job, "agent", format!("the lifecycle crashed: {e}"))
                    })
                }
            }
        };
        for digest in [&job.source_blob, &job.release_blob] {
            if !digest.is_empty() && valid_hex(digest) {
                let _ = tokio::fs::remove_file(blob_file(&blob_dir, &job.job_id, digest)).await;
            }
        }
        info!(status = ?outcome.status, step = %outcome.failed_step, "lifecycle finished");
        let live = if job.project.is_empty() {
            None
        } else {
            ctx.lifecycle.live(&job.env_uuid, &job.project)
        };
        let result = StoredResult::of(
            &job.job_id,
            &Finished {
                env_uuid: &job.env_uuid,
                project: &job.project,
                live: live.as_deref(),
                outcome: &outcome,
            },
            started.elapsed().as_millis() as u64,
        );
        if complete(&ctx, result).await
            && !job.project.is_empty()
            && outcome.status != lifecycle::Status::Refused
        {
            report_usage(&ctx, &job.env_uuid, &job.project).await;
        }
    }
    .instrument(span)
    .await
}

/// Uploads the result's pending release (waiting for the master as long as it takes), then
/// delivers the result and forgets the job. False when a stop interrupted the upload: the
/// result stays on disk, pending, for the next start.
async fn complete(ctx: &JobContext, mut result: StoredResult) -> bool {
    if let Some(release) = result.pending_release.clone() {
        // Kept before the upload: a stop or a crash during it leaves the upload to resume.
        results::keep_or_warn(&ctx.state_dir, &result);
        let uploaded = blobs::upload_release(
            ctx,
            &result.job_id,
            &result.env_uuid,
            &result.project,
            &release,
        )
        .await;
        match uploaded {
            Ok(blob) => result.release = Some((blob.digest, blob.size)),
            Err(UploadError::Stopped) => {
                info!("stopping: the release upload resumes at the next start");
                return false;
            }
            Err(UploadError::Refused(why)) => {
                warn!("the master refused the release: {why}");
                result.status = wire_status(lifecycle::Status::Failed) as i32;
                result.failed_step = "upload_release".into();
                result.message = format!(
                    "the release was built (and is live on the agent) but the master refused \
                     it: {why}"
                );
            }
        }
        result.pending_release = None;
    }
    info!(status = result.status, step = %result.failed_step, "job finished");
    let job_id = result.job_id.clone();
    // Kept on disk before leaving the running set: the master always sees the job in one.
    deliver(&ctx.state_dir, &ctx.outbox, result);
    if let Ok(mut set) = ctx.running.lock() {
        set.remove(&job_id);
    }
    true
}

/// After a job: deletes what it discarded and tells the master the project's disk use.
async fn report_usage(ctx: &Arc<JobContext>, env: &str, project: &str) {
    let lifecycle = ctx.lifecycle.clone();
    let (e, p) = (env.to_owned(), project.to_owned());
    let Ok(used_bytes) = tokio::task::spawn_blocking(move || lifecycle.sweep(&e, &p)).await else {
        return;
    };
    let _ = ctx.outbox.send(AgentMessage {
        body: Some(agent_message::Body::Usage(ProjectUsage {
            env_uuid: env.to_owned(),
            project: project.to_owned(),
            used_bytes,
        })),
    });
}

/// `corpus destroy ENV`: each project is destroyed through the lifecycle (its stop.sls runs
/// with the plans of its latest deploy), then the environment's directory goes.
fn destroy_environment(ctx: &JobContext, job: &corpus_proto::Job) -> JobOutcome {
    if uuid::Uuid::parse_str(&job.env_uuid).is_err() {
        return failure(
            job,
            Step::Validate.as_str(),
            format!("environment id {:?} is not a UUID", job.env_uuid),
        );
    }
    // Plans that do not parse would skip each project's stop.sls: refuse rather than destroy a
    // running service without stopping it.
    let plans: serde_json::Value = if job.plan_json.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&job.plan_json) {
            Ok(plans) => plans,
            Err(e) => {
                return failure(
                    job,
                    Step::Validate.as_str(),
                    format!(
                        "the destroy's plans are not valid JSON ({e}): nothing was destroyed, \
                         since no project's stop.sls could run; push the projects again or \
                         report this master bug"
                    ),
                );
            }
        }
    };
    // ROOT/<env>/srv/projects/<p>: the projects dir is its parent, the env dir three up.
    let some_project = ctx.lifecycle.project_dir(&job.env_uuid, "_");
    let (Some(projects_dir), Some(env_dir)) =
        (some_project.parent(), some_project.ancestors().nth(3))
    else {
        return failure(
            job,
            Step::Validate.as_str(),
            "the agent's root has no room for environments".into(),
        );
    };
    let (projects_dir, env_dir) = (projects_dir.to_path_buf(), env_dir.to_path_buf());
    let mut names: Vec<String> = std::fs::read_dir(&projects_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mode = match WireMode::try_from(job.mode) {
        Ok(WireMode::Editable) => lifecycle::Mode::Editable,
        Ok(WireMode::Final) => lifecycle::Mode::Final,
        _ => lifecycle::Mode::Cooking,
    };
    let mut reporter = OutboxReporter::new(&job.job_id, ctx.outbox.clone(), &ctx.state_dir);
    for name in names {
        let entry = &plans[&name];
        // A project without an entry has no deploy to stop (never deployed); one whose entry
        // does not parse would be destroyed without its stop.sls.
        let project_plans = match entry.get("plan").filter(|p| !p.is_null()) {
            None => corpus_states::ProjectPlan::default(),
            Some(plan) => match serde_json::from_value(plan.clone()) {
                Ok(plans) => plans,
                Err(e) => {
                    return failure(
                        job,
                        Step::Validate.as_str(),
                        format!(
                            "project {name:?}: its latest plans are invalid ({e}), so its \
                             stop.sls cannot run: nothing more was destroyed; push the project \
                             again, then destroy"
                        ),
                    );
                }
            },
        };
        let project_job = lifecycle::Job {
            job_id: job.job_id.clone(),
            kind: lifecycle::JobKind::Destroy,
            env_uuid: job.env_uuid.clone(),
            project: name.clone(),
            mode,
            deploy_id: String::new(),
            plans: project_plans,
            common: entry["common"].clone(),
            pillar: entry["pillar"].clone(),
            grains: ctx.grains.clone(),
            source: None,
            release: None,
            commit: String::new(),
            requested_by: job.requested_by.clone(),
        };
        let outcome = ctx.lifecycle.run(&project_job, &mut reporter);
        if outcome.status != lifecycle::Status::Success {
            return JobOutcome {
                message: format!("project {name:?}: {}", outcome.message),
                ..outcome
            };
        }
        // At once: a destroy failing at a later project leaves the master listing only the
        // projects that remain.
        let _ = ctx.outbox.send(AgentMessage {
            body: Some(agent_message::Body::Removed(corpus_proto::ProjectRemoved {
                job_id: job.job_id.clone(),
                env_uuid: job.env_uuid.clone(),
                project: name.clone(),
            })),
        });
    }
    // Its system user goes with it (after its processes), as B3's isolation made it.
    if let Err(e) = crate::confine::forget_environment(&env_dir) {
        return failure(job, Step::Destroy.as_str(), e.to_string());
    }
    if let Err(e) = std::fs::remove_dir_all(&env_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return failure(
            job,
            Step::Destroy.as_str(),
            format!("cannot remove {}: {e}", env_dir.display()),
        );
    }
    JobOutcome {
        status: lifecycle::Status::Success,
        failed_step: String::new(),
        failed_state: String::new(),
        message: String::new(),
        deploy_id: String::new(),
        release: None,
    }
}

/// Converts the wire job and fetches its blobs.
async fn prepare(
    ctx: &JobContext,
    job: &corpus_proto::Job,
    blob_dir: &Path,
) -> Result<lifecycle::Job, (&'static str, String)> {
    let bad = |message: String| ("prepare", message);
    let mode = match WireMode::try_from(job.mode) {
        Ok(WireMode::Editable) => lifecycle::Mode::Editable,
        Ok(WireMode::Cooking) => lifecycle::Mode::Cooking,
        Ok(WireMode::Final) => lifecycle::Mode::Final,
        _ => return Err(bad(format!("unknown mode {}", job.mode))),
    };
    let kind = match WireKind::try_from(job.kind) {
        Ok(WireKind::InitProject) => lifecycle::JobKind::Init,
        Ok(WireKind::Deploy) => lifecycle::JobKind::Deploy,
        Ok(WireKind::Rollback) => lifecycle::JobKind::Rollback {
            to: (!job.target_deploy_id.is_empty()).then(|| job.target_deploy_id.clone()),
        },
        Ok(WireKind::Destroy) => lifecycle::JobKind::Destroy,
        _ => return Err(bad(format!("unknown job kind {}", job.kind))),
    };
    let json = |bytes: &[u8], what: &str| -> Result<serde_json::Value, (&'static str, String)> {
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("the job's {what} is not valid JSON: {e}")))
    };
    let plan_value = json(&job.plan_json, "plan")?;
    let plans = if plan_value.is_null() {
        corpus_states::ProjectPlan::default()
    } else {
        serde_json::from_value(plan_value)
            .map_err(|e| bad(format!("the job's plan is invalid: {e}")))?
    };
    let source = blobs::fetch(ctx, job, &job.source_blob, blob_dir)
        .await
        .map_err(|e| ("fetch_source", format!("{e:#}")))?;
    let release = blobs::fetch(ctx, job, &job.release_blob, blob_dir)
        .await
        .map_err(|e| ("fetch_release", format!("{e:#}")))?;
    Ok(lifecycle::Job {
        job_id: job.job_id.clone(),
        kind,
        env_uuid: job.env_uuid.clone(),
        project: job.project.clone(),
        mode,
        deploy_id: job.deploy_id.clone(),
        plans,
        common: json(&job.common_json, "common")?,
        pillar: json(&job.pillar_json, "pillar")?,
        grains: ctx.grains.clone(),
        source,
        release,
        commit: job.commit.clone(),
        requested_by: job.requested_by.clone(),
    })
}

/// Finishes deploys a crash interrupted, before the agent attaches. Their results are kept
/// by their reporters before their journals go, and reach the master with the next Hello (or,
/// with a release to upload, through [`resume_uploads`]).
pub async fn recover(lifecycle: Arc<Lifecycle>, state_dir: PathBuf, outbox: Outbox) {
    let reporters_dir = state_dir.clone();
    let results = tokio::task::spawn_blocking(move || {
        let mut reporter_for = |job_id: &str| -> Box<dyn Reporter> {
            Box::new(OutboxReporter::new(job_id, outbox.clone(), &reporters_dir))
        };
        lifecycle.recover(&mut reporter_for)
    })
    .await
    .unwrap_or_default();
    for (job_id, outcome) in results {
        info!(job = %job_id, status = ?outcome.status, "recovered an interrupted job");
    }
    results::forget_orphan_events(&state_dir);
}

/// Uploads the releases a stop or a crash left pending, then delivers their results. Run once
/// the agent has its certificate.
pub async fn resume_uploads(ctx: Arc<JobContext>) {
    for result in results::pending_uploads(&ctx.state_dir) {
        let span = info_span!("job", job = %result.job_id, env = %result.env_uuid, project = %result.project);
        info!(parent: &span, "resuming the release upload of a finished job");
        complete(&ctx, result).instrument(span).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_state_result_becomes_an_event_that_says_it_was_cut() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let mut reporter = OutboxReporter::new("job-1", tx, dir.path());
        let huge = "é".repeat(CHANGES_CAP_BYTES);
        reporter.step(
            Step::Phase(corpus_states::Phase::Build),
            "noisy",
            StepStatus::Success,
            serde_json::json!({"diff": huge}),
            &huge,
            Duration::ZERO,
        );
        let Some(agent_message::Body::Event(event)) = rx.try_recv().unwrap().body else {
            panic!("not an event");
        };
        assert!(event.changes_json.len() < 1024);
        let changes: serde_json::Value = serde_json::from_slice(&event.changes_json).unwrap();
        let note = changes["corpus_truncated"].as_str().unwrap();
        assert!(note.contains(&CHANGES_CAP_BYTES.to_string()), "{note}");
        assert!(event.comment.len() < COMMENT_CAP_BYTES + 100);
        assert!(event.comment.ends_with(" bytes]"));
        assert!(
            event.changes_json.len() + event.comment.len() < corpus_proto::MAX_MESSAGE_BYTES / 4
        );
    }

    fn emit(reporter: &mut OutboxReporter, count: usize) {
        for n in 0..count {
            reporter.step(
                Step::Phase(corpus_states::Phase::Build),
                &format!("state-{n}"),
                StepStatus::Success,
                serde_json::json!({"n": n}),
                "",
                Duration::ZERO,
            );
        }
    }

    /// The master died as the job ended: it stored 2 of 5 events, and the messages queued
    /// for the link are gone with it. The agent restarts (only its disk is left); the master's
    /// ack of the resent result gets the missing events, then the result, then the job goes.
    #[test]
    fn events_the_master_missed_are_resent_from_disk_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            drop(rx); // the link broke: nothing queued reaches the master
            let mut reporter = OutboxReporter::new("job-1", tx, dir.path());
            emit(&mut reporter, 5);
            let outcome = JobOutcome {
                status: lifecycle::Status::Success,
                failed_step: String::new(),
                failed_state: String::new(),
                message: "deployed".into(),
                deploy_id: "d1".into(),
                release: None,
            };
            reporter.finished(&Finished {
                env_uuid: "env",
                project: "app",
                live: Some("d1"),
                outcome: &outcome,
            });
        }
        // A crash may tear the line being written: it is skipped.
        let events_path = dir.path().join("results/job-1.events");
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&events_path)
            .unwrap();
        std::io::Write::write_all(&mut torn, b"{\"sequence\":6,\"st").unwrap();

        // After the restart, the Hello offers the result.
        let offered = results::unacknowledged(dir.path());
        assert_eq!(offered.len(), 1);
        let results::AckOutcome::Resend(messages) = results::acknowledge(dir.path(), "job-1", 2)
        else {
            panic!("the missing events must be resent");
        };
        let sequences: Vec<u64> = messages
            .iter()
            .filter_map(|m| match &m.body {
                Some(agent_message::Body::Event(e)) => Some(e.sequence),
                _ => None,
            })
            .collect();
        assert_eq!(sequences, [3, 4, 5]);
        let Some(agent_message::Body::Event(third)) = &messages[0].body else {
            panic!("events come first");
        };
        assert_eq!(third.state_id, "state-2");
        assert_eq!(third.job_id, "job-1");
        assert!(matches!(
            messages.last().and_then(|m| m.body.as_ref()),
            Some(agent_message::Body::Finished(f)) if f.job_id == "job-1"
        ));
        // The master now holds all five: the job is forgotten, events and result.
        assert!(matches!(
            results::acknowledge(dir.path(), "job-1", 5),
            results::AckOutcome::Forgotten
        ));
        assert!(!events_path.exists());
        assert!(results::unacknowledged(dir.path()).is_empty());
    }

    #[test]
    fn a_resumed_job_continues_its_event_sequence_and_a_gap_is_not_resent_forever() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        emit(&mut OutboxReporter::new("job-2", tx.clone(), dir.path()), 3);
        let mut resumed = OutboxReporter::new("job-2", tx, dir.path());
        emit(&mut resumed, 1);
        let sequences: Vec<u64> = results::kept_events(dir.path(), "job-2")
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, [1, 2, 3, 4]);
        let result = StoredResult {
            job_id: "job-2".into(),
            env_uuid: "env".into(),
            project: "app".into(),
            status: corpus_proto::JobStatus::Success as i32,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            deploy_id: "d2".into(),
            release: None,
            duration_ms: 1,
            used_bytes: 0,
            live_deploy_id: "d2".into(),
            pending_release: None,
            event_resends: 0,
        };
        results::keep(dir.path(), &result).unwrap();
        // A master that never fills its gap (stuck at 1) gets a bounded number of resends.
        for _ in 0..results::MAX_EVENT_RESENDS {
            assert!(matches!(
                results::acknowledge(dir.path(), "job-2", 1),
                results::AckOutcome::Resend(_)
            ));
        }
        assert!(matches!(
            results::acknowledge(dir.path(), "job-2", 1),
            results::AckOutcome::Forgotten
        ));
        assert!(results::unacknowledged(dir.path()).is_empty());
    }

    fn destroy_context(
        root: &Path,
        state_dir: &Path,
    ) -> (
        JobContext,
        tokio::sync::mpsc::UnboundedReceiver<AgentMessage>,
    ) {
        let (outbox, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_, stop) = watch::channel(Signal::Running);
        let ctx = JobContext {
            lifecycle: Arc::new(Lifecycle::new(root.to_path_buf())),
            state_dir: state_dir.to_path_buf(),
            master: "https://127.0.0.1:1".into(),
            ca_pem: String::new(),
            identity: AgentIdentity {
                certificate_pem: String::new(),
                key_pem: String::new(),
            },
            grains: serde_json::json!({}),
            outbox,
            running: RunningJobs::default(),
            stop,
        };
        (ctx, rx)
    }

    fn destroy_job(env: &str, plans: &[u8]) -> corpus_proto::Job {
        corpus_proto::Job {
            job_id: "job-d".into(),
            kind: WireKind::Destroy as i32,
            env_uuid: env.into(),
            plan_json: plans.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn an_environment_destroy_reports_each_project_it_removed() {
        let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ctx, mut rx) = destroy_context(root.path(), state.path());
        let env = "3f2b8c1e-8a4b-4c7e-9d0a-1b2c3d4e5f60";
        for project in ["alpha", "beta"] {
            std::fs::create_dir_all(ctx.lifecycle.project_dir(env, project)).unwrap();
        }
        let plan = serde_json::to_value(corpus_states::ProjectPlan::default()).unwrap();
        let plans = serde_json::json!({"alpha": {"plan": plan}});
        let outcome = destroy_environment(
            &ctx,
            &destroy_job(env, &serde_json::to_vec(&plans).unwrap()),
        );
        assert_eq!(
            outcome.status,
            lifecycle::Status::Success,
            "{}",
            outcome.message
        );
        let mut removed = Vec::new();
        while let Ok(message) = rx.try_recv() {
            if let Some(agent_message::Body::Removed(r)) = message.body {
                assert_eq!((r.job_id.as_str(), r.env_uuid.as_str()), ("job-d", env));
                removed.push(r.project);
            }
        }
        assert_eq!(removed, ["alpha", "beta"]);
    }

    #[test]
    fn a_destroy_with_malformed_plans_fails_saying_why_and_removes_nothing() {
        let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ctx, mut rx) = destroy_context(root.path(), state.path());
        let env = "3f2b8c1e-8a4b-4c7e-9d0a-1b2c3d4e5f61";
        let dir = ctx.lifecycle.project_dir(env, "alpha");
        std::fs::create_dir_all(&dir).unwrap();
        let bad = serde_json::json!({"alpha": {"plan": "not a plan"}});
        let outcome =
            destroy_environment(&ctx, &destroy_job(env, &serde_json::to_vec(&bad).unwrap()));
        assert_eq!(outcome.status, lifecycle::Status::Failed);
        assert!(outcome.message.contains("\"alpha\""), "{}", outcome.message);
        assert!(outcome.message.contains("stop.sls"), "{}", outcome.message);
        assert!(dir.is_dir());
        let outcome = destroy_environment(&ctx, &destroy_job(env, b"{not json"));
        assert_eq!(outcome.status, lifecycle::Status::Failed);
        assert!(
            outcome.message.contains("not valid JSON"),
            "{}",
            outcome.message
        );
        assert!(dir.is_dir());
        while let Ok(message) = rx.try_recv() {
            assert!(!matches!(
                message.body,
                Some(agent_message::Body::Removed(_))
            ));
        }
    }
}
