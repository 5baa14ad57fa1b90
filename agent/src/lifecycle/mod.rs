//! The project lifecycle on the agent: PRODUCT.md's table, step for step, for the editable,
//! cooking and final modes, with archives, data backup, rollback (on failure and on request),
//! a per-deploy journal so a SIGKILLed agent finishes or undoes the deploy on restart, and one
//! deploy per project at a time (an `flock`ed lock file).
//!
//! Everything here is synchronous: filesystem and processes (state files run through
//! [`crate::state::Executor`]); the only network use is the webhook POST and the HTTP health
//! check. The agent's link calls [`Lifecycle::run`] in `spawn_blocking`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the project is deployed; platform types map to it (dev, staging, prod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// dev: `run/` resolves to `project/`; failures are left for the developer.
    Editable,
    /// staging: builds in a fresh `run/` and bundles a release archive.
    Cooking,
    /// prod: deploys a release archive cooked in staging; never builds.
    Final,
}

/// What the master asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Create the project layout only (pre_install).
    Init,
    /// A push.
    Deploy,
    /// Return to the previous deployment, or to the named one (a deploy id).
    Rollback { to: Option<String> },
    /// Remove the project directory (after stop.sls).
    Destroy,
}

/// One lifecycle job, as the link hands it over (blobs already fetched to local files).
#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: String,
    pub kind: JobKind,
    pub env_uuid: String,
    pub project: String,
    pub mode: Mode,
    /// `<UTC DATETIME>-<UUID>` chosen by the master ([`validate_deploy_id`]); names the
    /// deployment, its tree under `deploy/` and its archive under `archives/`.
    pub deploy_id: String,
    /// One plan per phase of [`corpus_states::PHASES`]; a missing phase is a no-op.
    pub plans: corpus_states::ProjectPlan,
    /// PRODUCT.md's `common`; `common.data` holds keep_archives, healthcheck, notify,
    /// backup_data.
    pub common: serde_json::Value,
    /// The rendered pillar, written to `pillar/` for the application.
    pub pillar: serde_json::Value,
    pub grains: serde_json::Value,
    /// A plain tar of the project's git tree (with `.salt/`), for editable and cooking modes.
    pub source: Option<PathBuf>,
    /// Final mode: the release archive made by cooking.
    pub release: Option<PathBuf>,
    pub commit: String,
    /// Shown to a concurrent job refused by the project lock.
    pub requested_by: String,
}

/// A step's state, as reported to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Success,
    Failed,
    Skipped,
}

/// Receives one call per state of each SLS phase and one per built-in step.
pub trait Reporter {
    fn step(
        &mut self,
        step: &str,
        state_id: &str,
        status: StepStatus,
        changes: serde_json::Value,
        comment: &str,
        duration: Duration,
    );
}

/// A reporter that drops everything (tests, recovery without a listener).
pub struct NullReporter;

impl Reporter for NullReporter {
    fn step(&mut self, _: &str, _: &str, _: StepStatus, _: serde_json::Value, _: &str, _: Duration) {
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    /// Failed and left as is (editable mode, or a failure before anything was touched).
    Failed,
    /// Failed, and the project is back on the previous tree and data.
    RolledBack,
    /// Not run: another job holds the project lock (or the job is invalid and nothing changed).
    Refused,
}

/// The result of [`Lifecycle::run`] / [`Lifecycle::recover`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The step that failed (a step name), empty on success.
    pub failed_step: String,
    /// The state id that failed within `failed_step`, empty for built-in steps.
    pub failed_state: String,
    pub message: String,
    pub deploy_id: String,
    /// Cooking mode: the release archive to upload to the master.
    pub release: Option<ReleaseArchive>,
}

/// A release archive produced by a cooking deploy, under `releases/`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseArchive {
    pub path: PathBuf,
    /// Hex sha256 of the archive file.
    pub sha256: String,
    pub size: u64,
    /// project, commit, build_id (= deploy id), sha256, size, time, files.
    pub manifest: serde_json::Value,
}

/// One deployment as its archive records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentInfo {
    pub id: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub commit: String,
    pub mode: Mode,
    /// `success`, `failed`, `rolled_back` or `running`.
    pub result: String,
    pub failed_step: String,
    pub failed_state: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    /// Whether `run/` serves this deployment's tree now.
    pub live: bool,
}

/// A project as seen on disk.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProjectState {
    pub exists: bool,
    /// The deployment whose tree `run/` serves (none before the first deploy, or editable).
    pub live: Option<String>,
    /// Newest first.
    pub deployments: Vec<DeploymentInfo>,
    /// Release ids under `releases/`, newest first.
    pub releases: Vec<String>,
    /// Bytes used under the project directory.
    pub disk_used: u64,
    /// The job holding the project lock, if any: (user, job id, start time).
    pub locked_by: Option<(String, String, String)>,
}

/// The lifecycle engine of one agent.
pub struct Lifecycle {
    /// `corpus-agent run --root DIR`: environments live at `DIR/<env-uuid>/`.
    root: PathBuf,
}

impl Lifecycle {
    pub fn new(root: PathBuf) -> Self {
        Lifecycle { root }
    }

    /// `ROOT/<env>/srv/projects/<project>`.
    pub fn project_dir(&self, env_uuid: &str, project: &str) -> PathBuf {
        self.root
            .join(env_uuid)
            .join("srv")
            .join("projects")
            .join(project)
    }

    /// Runs one job to its end (blocking).
    pub fn run(&self, job: &Job, _reporter: &mut dyn Reporter) -> Outcome {
        Outcome {
            status: Status::Failed,
            failed_step: "lock".into(),
            failed_state: String::new(),
            message: "lifecycle not implemented yet".into(),
            deploy_id: job.deploy_id.clone(),
            release: None,
        }
    }

    /// On agent start: finishes (or undoes) every deploy interrupted by a crash, from its
    /// journal, and returns each job's outcome.
    pub fn recover(
        &self,
        _reporter_for: &mut dyn FnMut(&str) -> Box<dyn Reporter>,
    ) -> Vec<(String, Outcome)> {
        Vec::new()
    }

    /// The project's deployments, releases and disk use.
    pub fn status(&self, _env_uuid: &str, _project: &str) -> ProjectState {
        ProjectState::default()
    }
}

/// Checks the `<UTC DATETIME>-<UUID>` shape of a deploy id: `YYYYMMDDTHHMMSSZ-` then a
/// lowercase hyphenated UUID, e.g. `20250102T030405Z-0f8fad5b-d9cb-469f-a165-70867728950e`.
pub fn validate_deploy_id(id: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "deploy id {id:?} is invalid: expected <UTC DATETIME>-<UUID> such as \
             20250102T030405Z-0f8fad5b-d9cb-469f-a165-70867728950e"
        )
    };
    let (time, uuid) = id.split_at_checked(16).ok_or_else(bad)?;
    let tb = time.as_bytes();
    let time_ok = tb.len() == 16
        && tb[..8].iter().all(u8::is_ascii_digit)
        && tb[8] == b'T'
        && tb[9..15].iter().all(u8::is_ascii_digit)
        && tb[15] == b'Z';
    let uuid = uuid.strip_prefix('-').ok_or_else(bad)?;
    let ub = uuid.as_bytes();
    let uuid_ok = ub.len() == 36
        && ub.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        });
    if time_ok && uuid_ok { Ok(()) } else { Err(bad()) }
}

/// A fresh deploy id for now, in the shape [`validate_deploy_id`] accepts.
pub fn new_deploy_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        uuid::Uuid::new_v4()
    )
}
