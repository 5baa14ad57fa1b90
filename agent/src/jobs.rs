//! Running the master's jobs on this agent: convert the wire job, fetch its blobs (verified by
//! sha256), run the lifecycle on a blocking thread while its events stream to the master,
//! upload a cooked release, and keep the result on disk until the master acknowledges it, so
//! that neither a master restart nor a broken link loses a result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_proto::{
    AgentMessage, BlobRef, FetchBlobRequest, JobEvent, JobFinished, JobKind as WireKind, JobStatus,
    Mode as WireMode, ProjectUsage, StepResult, UploadBlobRequest, UploadHeader, agent_message,
    upload_blob_request,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{Instrument, info, info_span, warn};

use crate::enroll::AgentIdentity;
use crate::lifecycle::{self, JobOutcome, Lifecycle, Reporter, Step, StepStatus};

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
}

/// Ids of the jobs this agent is running; shared by every link it has over its life.
pub type RunningJobs = Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// What the agent tells the master it knows of: jobs it runs, and jobs whose result the master
/// has not acknowledged yet.
pub fn known_jobs(running: &RunningJobs, state_dir: &Path) -> Vec<String> {
    let mut known: std::collections::BTreeSet<String> =
        running.lock().map(|set| set.clone()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(results_dir(state_dir)) {
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_string_lossy().strip_suffix(".json") {
                known.insert(id.to_owned());
            }
        }
    }
    known.into_iter().collect()
}

/// Marks a job as running before its task starts, so no heartbeat can miss it.
pub fn start(ctx: &JobContext, job_id: &str) {
    if let Ok(mut set) = ctx.running.lock() {
        set.insert(job_id.to_owned());
    }
}

fn results_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("results")
}

/// Results not yet acknowledged by the master, for the next Hello.
pub fn unacknowledged(state_dir: &Path) -> Vec<JobFinished> {
    let Ok(entries) = std::fs::read_dir(results_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<StoredResult>(&bytes).ok())
        .map(StoredResult::into_message)
        .collect()
}

/// Forgets an acknowledged result.
pub fn acknowledge(state_dir: &Path, job_id: &str) {
    if valid_id(job_id) {
        let _ = std::fs::remove_file(results_dir(state_dir).join(format!("{job_id}.json")));
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A JobFinished as kept on disk until acknowledged.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredResult {
    job_id: String,
    status: i32,
    failed_step: String,
    failed_state: String,
    message: String,
    deploy_id: String,
    release: Option<(String, u64)>,
    duration_ms: u64,
    used_bytes: u64,
    live_deploy_id: String,
}

impl StoredResult {
    fn into_message(self) -> JobFinished {
        JobFinished {
            job_id: self.job_id,
            status: self.status,
            failed_step: self.failed_step,
            failed_state: self.failed_state,
            message: self.message,
            deploy_id: self.deploy_id,
            release: self.release.map(|(digest, size)| BlobRef { digest, size }),
            duration_ms: self.duration_ms,
            used_bytes: self.used_bytes,
            live_deploy_id: self.live_deploy_id,
        }
    }

    fn from_message(m: &JobFinished) -> StoredResult {
        StoredResult {
            job_id: m.job_id.clone(),
            status: m.status,
            failed_step: m.failed_step.clone(),
            failed_state: m.failed_state.clone(),
            message: m.message.clone(),
            deploy_id: m.deploy_id.clone(),
            release: m.release.as_ref().map(|r| (r.digest.clone(), r.size)),
            duration_ms: m.duration_ms,
            used_bytes: m.used_bytes,
            live_deploy_id: m.live_deploy_id.clone(),
        }
    }
}

/// Persists a result (fsynced) and queues it for the master.
pub fn deliver(state_dir: &Path, outbox: &Outbox, finished: JobFinished) {
    let dir = results_dir(state_dir);
    if valid_id(&finished.job_id) {
        let stored = serde_json::to_vec(&StoredResult::from_message(&finished)).unwrap_or_default();
        let path = dir.join(format!("{}.json", finished.job_id));
        let tmp = path.with_extension("tmp");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&tmp, &stored))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            warn!(
                job = %finished.job_id,
                "cannot keep the job result on disk as {}: {e}",
                path.display()
            );
        }
    }
    let _ = outbox.send(AgentMessage {
        body: Some(agent_message::Body::Finished(finished)),
    });
}

/// Streams lifecycle steps to the master as JobEvents.
pub struct OutboxReporter {
    job_id: String,
    outbox: Outbox,
    sequence: u64,
}

impl OutboxReporter {
    pub fn new(job_id: &str, outbox: Outbox) -> Self {
        OutboxReporter {
            job_id: job_id.to_owned(),
            outbox,
            sequence: 0,
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
            changes_json: serde_json::to_vec(&changes).unwrap_or_default(),
            comment: comment.to_owned(),
            duration_ms: duration.as_millis() as u64,
            timestamp_unix_ms: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
                / 1_000_000,
        };
        let _ = self.outbox.send(AgentMessage {
            body: Some(agent_message::Body::Event(event)),
        });
    }
}

fn wire_status(status: lifecycle::Status) -> JobStatus {
    match status {
        lifecycle::Status::Running => JobStatus::Running,
        lifecycle::Status::Success => JobStatus::Success,
        lifecycle::Status::Failed => JobStatus::Failed,
        lifecycle::Status::RolledBack => JobStatus::RolledBack,
        lifecycle::Status::Refused => JobStatus::Refused,
    }
}

fn finished_message(
    ctx: &JobContext,
    job: &corpus_proto::Job,
    outcome: &JobOutcome,
    release: Option<BlobRef>,
    started: Instant,
) -> JobFinished {
    let live = if job.project.is_empty() {
        None
    } else {
        ctx.lifecycle.live(&job.env_uuid, &job.project)
    };
    JobFinished {
        job_id: job.job_id.clone(),
        status: wire_status(outcome.status) as i32,
        failed_step: outcome.failed_step.clone(),
        failed_state: outcome.failed_state.clone(),
        message: outcome.message.clone(),
        deploy_id: outcome.deploy_id.clone(),
        release,
        duration_ms: started.elapsed().as_millis() as u64,
        used_bytes: 0,
        live_deploy_id: live.unwrap_or_default(),
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
                    let mut reporter = OutboxReporter::new(&job.job_id, ctx.outbox.clone());
                    let ran =
                        tokio::task::spawn_blocking(move || lc.run(&lifecycle_job, &mut reporter))
                            .await;
                    ran.unwrap_or_else(|e| {
                        failure(&job, "agent", format!("the lifecycle crashed: {e}"))
                    })
                }
            }
        };
        let mut outcome = outcome;
        let mut release_ref = None;
        if let Some(release) = outcome.release.clone() {
            match upload_release(&ctx, &job, &release).await {
                Ok(blob) => release_ref = Some(blob),
                Err(e) => {
                    outcome.status = lifecycle::Status::Failed;
                    outcome.failed_step = "upload_release".into();
                    outcome.message =
                        format!("the release was built but could not be uploaded: {e:#}");
                }
            }
        }
        for digest in [&job.source_blob, &job.release_blob] {
            if !digest.is_empty() && valid_hex(digest) {
                let _ = tokio::fs::remove_file(blob_file(&blob_dir, &job.job_id, digest)).await;
            }
        }
        info!(status = ?outcome.status, step = %outcome.failed_step, "job finished");
        let finished = finished_message(&ctx, &job, &outcome, release_ref, started);
        // Kept on disk before leaving the running set: the master always sees the job in one.
        deliver(&ctx.state_dir, &ctx.outbox, finished);
        if let Ok(mut set) = ctx.running.lock() {
            set.remove(&job.job_id);
        }
        if !job.project.is_empty() && outcome.status != lifecycle::Status::Refused {
            report_usage(&ctx, &job.env_uuid, &job.project).await;
        }
    }
    .instrument(span)
    .await
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
    let plans: serde_json::Value = serde_json::from_slice(&job.plan_json).unwrap_or_default();
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
    let mut reporter = OutboxReporter::new(&job.job_id, ctx.outbox.clone());
    for name in names {
        let entry = &plans[&name];
        let project_job = lifecycle::Job {
            job_id: job.job_id.clone(),
            kind: lifecycle::JobKind::Destroy,
            env_uuid: job.env_uuid.clone(),
            project: name.clone(),
            mode,
            deploy_id: String::new(),
            plans: serde_json::from_value(entry["plan"].clone()).unwrap_or_default(),
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
    let source = fetch(ctx, job, &job.source_blob, blob_dir)
        .await
        .map_err(|e| ("fetch_source", format!("{e:#}")))?;
    let release = fetch(ctx, job, &job.release_blob, blob_dir)
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

/// Where a job keeps a fetched blob: `STATE_DIR/blobs/<job id>-<digest>`.
fn blob_file(blob_dir: &Path, job_id: &str, digest: &str) -> PathBuf {
    blob_dir.join(format!("{job_id}-{digest}"))
}

fn valid_hex(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn client(ctx: &JobContext) -> anyhow::Result<AgentLinkClient<tonic::transport::Channel>> {
    let channel = corpus_runtime::tls::dial(
        &ctx.master,
        &ctx.ca_pem,
        Some((&ctx.identity.certificate_pem, &ctx.identity.key_pem)),
    )
    .await?;
    Ok(AgentLinkClient::new(channel).max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES))
}

/// Downloads a blob to `blob_dir/<digest>`, verifying its sha256 as it streams.
async fn fetch(
    ctx: &JobContext,
    job: &corpus_proto::Job,
    digest: &str,
    blob_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if digest.is_empty() {
        return Ok(None);
    }
    if !valid_hex(digest) {
        anyhow::bail!("blob digest {digest:?} is invalid");
    }
    if !valid_id(&job.job_id) {
        anyhow::bail!("job id {:?} is invalid", job.job_id);
    }
    tokio::fs::create_dir_all(blob_dir)
        .await
        .with_context(|| format!("cannot create {}", blob_dir.display()))?;
    // Per job: two jobs fetching the same blob never share (or delete) each other's file.
    let path = blob_file(blob_dir, &job.job_id, digest);
    let part = path.with_extension("part");
    let mut stream = client(ctx)
        .await?
        .fetch_blob(FetchBlobRequest {
            digest: digest.to_owned(),
            env_uuid: job.env_uuid.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the master refused blob {digest}: {}", s.message()))?
        .into_inner();
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot create {}", part.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("blob {digest} transfer failed: {}", s.message()))?
    {
        hasher.update(&chunk.data);
        file.write_all(&chunk.data)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        let _ = tokio::fs::remove_file(&part).await;
        anyhow::bail!("blob {digest} arrived corrupt (sha256 {actual})");
    }
    tokio::fs::rename(&part, &path)
        .await
        .with_context(|| format!("cannot move {} to {}", part.display(), path.display()))?;
    Ok(Some(path))
}

async fn upload_release(
    ctx: &JobContext,
    job: &corpus_proto::Job,
    release: &lifecycle::ReleaseArchive,
) -> anyhow::Result<BlobRef> {
    let header = UploadBlobRequest {
        body: Some(upload_blob_request::Body::Header(UploadHeader {
            env_uuid: job.env_uuid.clone(),
            project: job.project.clone(),
            job_id: job.job_id.clone(),
            digest: release.sha256.clone(),
            size: release.size,
            manifest_json: serde_json::to_vec(&release.manifest).unwrap_or_default(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = release.path.clone();
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
        while let Ok(n) = file.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let chunk = UploadBlobRequest {
                body: Some(upload_blob_request::Body::Data(buf[..n].to_vec())),
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let blob = client(ctx)
        .await?
        .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok(blob)
}

/// Finishes deploys a crash interrupted, before the agent attaches: their results go out with
/// the next Hello.
pub async fn recover(lifecycle: Arc<Lifecycle>, state_dir: PathBuf, outbox: Outbox) {
    let results = tokio::task::spawn_blocking({
        let outbox = outbox.clone();
        move || {
            let mut reporter_for = |job_id: &str| -> Box<dyn Reporter> {
                Box::new(OutboxReporter::new(job_id, outbox.clone()))
            };
            lifecycle.recover(&mut reporter_for)
        }
    })
    .await
    .unwrap_or_default();
    for (job_id, outcome) in results {
        info!(job = %job_id, status = ?outcome.status, "recovered an interrupted job");
        let finished = JobFinished {
            job_id,
            status: wire_status(outcome.status) as i32,
            failed_step: outcome.failed_step,
            failed_state: outcome.failed_state,
            message: outcome.message,
            deploy_id: outcome.deploy_id,
            ..Default::default()
        };
        deliver(&state_dir, &outbox, finished);
    }
}
