//! The project lifecycle on the agent: PRODUCT.md's table, step for step, for the editable,
//! cooking and final modes, with archives, data backup, rollback (on failure and on request),
//! a per-deploy journal so a SIGKILLed agent finishes or undoes the deploy on restart, and one
//! deploy per project at a time (an `flock`ed lock file).
//!
//! Everything here is synchronous: filesystem and processes (state files run through
//! [`crate::state::Executor`]); the only network use is the webhook POST and the HTTP health
//! check. The agent's link calls [`Lifecycle::run`] in `spawn_blocking`.
//!
//! Steps are [`Step`]s; their names (events, journals and `CORPUS_TEST_PAUSE_AT`) and the
//! lists [`EDITABLE_STEPS`], [`COOKING_STEPS`], [`FINAL_STEPS`] and [`ROLLBACK_STEPS`] are in
//! `step.rs`; the undo after a failure reports `rollback`, then [`UNDO_STEPS`], and pauses at
//! `rollback_<step>`. Outside steps: `validate`, `lock`, `webhook` (one per URL), `destroy`.
//! The pause writes `<project_dir>/.paused-<step>` and sleeps forever at that boundary, after
//! the journal names the step.
//!
//! Parts: `engine.rs` (the state machine), `steps.rs` (the built-in steps' I/O), `history.rs`
//! (deployment records), `recovery.rs`, `validate.rs`, `journal.rs`, `layout.rs`, `lock.rs`,
//! `archive.rs`, `checks.rs` (health check, webhooks), `error.rs` ([`StepError`]) and
//! `confined.rs` (a phase of a confined environment, through [`crate::confine`]).
//! The service controller and the file sources are injected ([`Lifecycle::with_services`],
//! [`Lifecycle::with_file_sources`]) so tests can run `service.*` states against a fake.
//!
//! On disk (`ProjectLayout`): `run -> deploy/current -> <deploy id>` (cooking, final) or
//! `run -> project` (editable); `archives/<id>/` holds `status.json`, `data/` (the backup taken
//! before deploy `<id>`), `run/` (the tree that was live before `<id>`, with its record as
//! `previous.json`), and after a failure `run.failed/` and `data.failed/` (for the newest
//! `keep_archives` failures, none when the disk was full); `.corpus/` holds the
//! lock, `journal.json` and `job.json` of the running job.

mod archive;
mod checks;
mod confined;
mod engine;
mod error;
mod history;
mod journal;
mod layout;
mod lock;
mod recovery;
mod step;
mod steps;
#[cfg(test)]
mod tests;
mod validate;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corpus_pillar::{DirTree, TemplateContext};
use corpus_states::{Phase, ProjectSettings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use archive::{Limits, MANIFEST_ENTRY, UnpackStats, open_source, open_tar, unpack};
pub use checks::CheckError;
pub use error::{InvalidJob, StepError};
pub use journal::JournalKind;
pub use layout::{MAX_ROOT_MODE, ProjectLayout, secure_state_dir, write_atomic};
pub use lock::LockHolder;
pub use step::{COOKING_STEPS, EDITABLE_STEPS, FINAL_STEPS, ROLLBACK_STEPS, Step, UNDO_STEPS};
pub use validate::{new_deploy_id, validate_deploy_id};

use crate::state::{FileSources, LocalFileSources, ServiceControl, Systemctl};
use engine::Engine;
use error::IoContext;
use journal::{DeployJournal, JobSpec};
use lock::{LockError, ProjectLock};

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
    /// One plan per [`corpus_states::Phase`]; a missing phase is a no-op.
    pub plans: corpus_states::ProjectPlan,
    /// PRODUCT.md's `common`; `common.data` holds the [`ProjectSettings`] (checked before the
    /// job touches anything).
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
        step: Step,
        state_id: &str,
        status: StepStatus,
        changes: serde_json::Value,
        comment: &str,
        duration: Duration,
    );

    /// The job's result is final: called once, before the deploy journal is removed, so a
    /// result kept from here survives a crash at any later instant (the journal is what makes
    /// recovery run again otherwise).
    fn finished(&mut self, _result: &Finished<'_>) {}
}

/// A journaled job's final result, as [`Reporter::finished`] receives it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub env_uuid: &'a str,
    pub project: &'a str,
    /// The deployment `run/` serves now (after a rollback, the one returned to).
    pub live: Option<&'a str>,
    pub outcome: &'a JobOutcome,
}

/// A reporter that drops everything (tests, recovery without a listener).
pub struct NullReporter;

impl Reporter for NullReporter {
    fn step(
        &mut self,
        _: Step,
        _: &str,
        _: StepStatus,
        _: serde_json::Value,
        _: &str,
        _: Duration,
    ) {
    }
}

/// Where a job or deployment stands: the agent's one status vocabulary for jobs (the wire's
/// `JobStatus`), deployment records (`status.json`'s `result`) and webhooks. Steps have theirs,
/// [`StepStatus`] (the wire's `StepResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Only in a deployment's record while its job runs; a job's outcome never says running.
    Running,
    Success,
    /// Failed and left as is (editable mode, or a failure before anything was touched).
    Failed,
    /// Failed, and the project is back on the previous tree and data.
    RolledBack,
    /// Not run: another job holds the project lock (or the job is invalid and nothing changed).
    Refused,
}

/// The result of [`Lifecycle::run`] / [`Lifecycle::recover`]. (A state's own result is
/// [`crate::state::Outcome`].)
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub status: Status,
    /// The step that failed (a [`Step`] name, or the agent's own `prepare`, `fetch_*`,
    /// `upload_release`), empty on success.
    pub failed_step: String,
    /// The state id that failed within `failed_step`, empty for built-in steps.
    pub failed_state: String,
    pub message: String,
    pub deploy_id: String,
    /// Cooking mode: the release archive to upload to the master.
    pub release: Option<ReleaseArchive>,
}

/// A release archive produced by a cooking deploy, under `releases/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub result: Status,
    pub failed_step: String,
    pub failed_state: String,
    pub kind: JournalKind,
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

/// Makes the file sources a phase's states use: `salt://` resolves under the project's source
/// tree, and `template: jinja` renders with the job's context.
pub trait PhaseFileSources: Send + Sync {
    fn for_phase(&self, file_root: &Path, context: TemplateContext) -> Box<dyn FileSources>;
}

/// The production [`PhaseFileSources`]: files on disk under the file root, rendered with the
/// agent's one template renderer ([`crate::state::file_renderer`]).
pub struct ProjectTreeSources;

impl PhaseFileSources for ProjectTreeSources {
    fn for_phase(&self, file_root: &Path, context: TemplateContext) -> Box<dyn FileSources> {
        let renderer = crate::state::file_renderer(Arc::new(DirTree::new(file_root)), context);
        Box::new(LocalFileSources::new(
            Some(file_root.to_path_buf()),
            Some(renderer),
        ))
    }
}

/// The lifecycle engine of one agent.
pub struct Lifecycle {
    /// `corpus-agent run --root DIR`: environments live at `DIR/<env-uuid>/`.
    root: PathBuf,
    /// What an unpacked release or source may weigh.
    limits: Limits,
    /// What `service.*` states drive; injected so tests can record the calls.
    services: Arc<dyn ServiceControl>,
    /// Where phases' `salt://` sources come from; injected for the same reason.
    file_sources: Arc<dyn PhaseFileSources>,
    /// The binary whose hidden `confined-phase` subcommand runs a confined phase: this
    /// process's own executable, or the built `corpus-agent` in tests.
    phase_program: PathBuf,
    /// Where HTTP health checks and webhooks may go (the agent config's `outbound_allow`).
    outbound: crate::config::OutboundAllow,
}

impl Lifecycle {
    pub fn new(root: PathBuf) -> Self {
        Lifecycle {
            root,
            limits: Limits::default(),
            services: Arc::new(Systemctl::default()),
            file_sources: Arc::new(ProjectTreeSources),
            phase_program: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            outbound: crate::config::OutboundAllow::default(),
        }
    }

    /// Replaces the outbound allow-list (loopback only by default).
    pub fn with_outbound(mut self, outbound: crate::config::OutboundAllow) -> Self {
        self.outbound = outbound;
        self
    }

    /// Replaces the binary confined phases run in (this executable by default).
    pub fn with_phase_program(mut self, program: PathBuf) -> Self {
        self.phase_program = program;
        self
    }

    /// `ROOT/<env>`: the environment root, its system user's home.
    pub fn env_root(&self, env_uuid: &str) -> PathBuf {
        self.root.join(env_uuid)
    }

    /// Replaces the service controller (systemd by default).
    pub fn with_services(mut self, services: Arc<dyn ServiceControl>) -> Self {
        self.services = services;
        self
    }

    /// Replaces the file sources of phases (the project tree on disk by default).
    pub fn with_file_sources(mut self, file_sources: Arc<dyn PhaseFileSources>) -> Self {
        self.file_sources = file_sources;
        self
    }

    /// Overrides the unpack limits (bytes and entries of a release or source).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// `ROOT/<env>/srv/projects/<project>`.
    pub fn project_dir(&self, env_uuid: &str, project: &str) -> PathBuf {
        self.root
            .join(env_uuid)
            .join("srv")
            .join("projects")
            .join(project)
    }

    /// Runs one job to its end (blocking). Invalid jobs and a busy project change nothing.
    pub fn run(&self, job: &Job, reporter: &mut dyn Reporter) -> JobOutcome {
        let refuse = |status: Status, step: Step, message: String| JobOutcome {
            status,
            failed_step: step.as_str().to_string(),
            failed_state: String::new(),
            message,
            deploy_id: job.deploy_id.clone(),
            release: None,
        };
        let settings = match validate::validate_job(job) {
            Ok(settings) => settings,
            Err(e) => {
                let msg = e.to_string();
                reporter.step(
                    Step::Validate,
                    "",
                    StepStatus::Failed,
                    Value::Null,
                    &msg,
                    Duration::ZERO,
                );
                return refuse(Status::Failed, Step::Validate, msg);
            }
        };
        // The environment's own user exists (or the job is refused, changing nothing) before
        // anything of the project is made.
        if let Err(msg) = self.prepare_confinement(job) {
            reporter.step(
                Step::Validate,
                "",
                StepStatus::Failed,
                Value::Null,
                &msg,
                Duration::ZERO,
            );
            return refuse(Status::Failed, Step::Validate, msg);
        }
        let layout = ProjectLayout::new(self.project_dir(&job.env_uuid, &job.project));
        if let Err(e) = fs::create_dir_all(layout.state_dir()).at("create", layout.state_dir()) {
            return refuse(Status::Failed, Step::Lock, e.to_string());
        }
        let holder = LockHolder {
            user: job.requested_by.clone(),
            job_id: job.job_id.clone(),
            started: now_rfc3339(),
            pid: std::process::id(),
        };
        let _lock = match ProjectLock::acquire(&layout.lock_file(), &holder) {
            Ok(lock) => lock,
            Err(LockError::Busy(h)) => {
                let msg = match h {
                    Some(h) => format!(
                        "project {} is busy: job {} of user {} has been deploying it since {} \
                         (agent pid {}); try again when it is done",
                        job.project, h.job_id, h.user, h.started, h.pid
                    ),
                    None => format!("project {} is busy with another job", job.project),
                };
                reporter.step(
                    Step::Lock,
                    "",
                    StepStatus::Failed,
                    Value::Null,
                    &msg,
                    Duration::ZERO,
                );
                return refuse(Status::Refused, Step::Lock, msg);
            }
            Err(LockError::Io(e)) => {
                let msg = format!("cannot lock {}: {e}", layout.lock_file().display());
                return refuse(Status::Failed, Step::Lock, msg);
            }
        };
        reporter.step(
            Step::Lock,
            "",
            StepStatus::Success,
            Value::Null,
            &format!("locked by job {} of {}", job.job_id, job.requested_by),
            Duration::ZERO,
        );
        // A crash the agent has not recovered yet is finished first.
        if let Ok(Some(_)) = DeployJournal::load(&layout) {
            let _ = self.recover_locked(&layout, &mut NullReporter);
        }
        match &job.kind {
            JobKind::Init => self.init(job, &layout, reporter),
            JobKind::Destroy => self.destroy(job, &layout, settings, reporter),
            JobKind::Deploy => {
                let mut journal = DeployJournal::new(job, now_rfc3339());
                journal.previous_live = layout.live_id();
                journal.run_was_dir = fs::symlink_metadata(layout.run()).is_ok_and(|m| m.is_dir());
                journal.backup_data = settings.backup_data;
                let mut engine = self.engine(job, layout, settings, journal, reporter);
                let job_file = engine.layout.job_file();
                if let Err(e) = engine.spec.save(&engine.layout).at("write", &job_file) {
                    return refuse(Status::Failed, Step::PreInstall, e.to_string());
                }
                engine.run_from(0)
            }
            JobKind::Rollback { to } => {
                self.rollback(job, layout, settings, to.as_deref(), reporter)
            }
        }
    }

    fn engine<'a>(
        &self,
        job: &Job,
        layout: ProjectLayout,
        settings: ProjectSettings,
        journal: DeployJournal,
        reporter: &'a mut dyn Reporter,
    ) -> Engine<'a> {
        Engine {
            layout,
            spec: JobSpec::of(job),
            settings,
            journal,
            reporter,
            pause: true,
            limits: self.limits,
            source: job.source.clone(),
            release: job.release.clone(),
            release_out: None,
            started: Instant::now(),
            services: self.services.clone(),
            file_sources: self.file_sources.clone(),
            phase_program: self.phase_program.clone(),
            outbound: self.outbound.clone(),
        }
    }

    fn init(&self, job: &Job, layout: &ProjectLayout, reporter: &mut dyn Reporter) -> JobOutcome {
        let t = Instant::now();
        let res = layout
            .create(job.mode)
            .and_then(|_| layout.write_pillar(&job.pillar))
            .and_then(
                |_| match crate::confine::Identity::from_common(&job.common) {
                    // A confined project's owners and modes hold from its first job on.
                    Ok(Some(identity)) => crate::confine::secure_project(&layout.dir, &identity)
                        .map_err(StepError::from),
                    _ => Ok(()),
                },
            );
        let (status, st, msg) = match res {
            Ok(()) => (
                Status::Success,
                StepStatus::Success,
                format!("layout ready at {}", layout.dir.display()),
            ),
            Err(e) => (Status::Failed, StepStatus::Failed, e.to_string()),
        };
        reporter.step(Step::PreInstall, "", st, Value::Null, &msg, t.elapsed());
        JobOutcome {
            status,
            failed_step: if status == Status::Success {
                ""
            } else {
                Step::PreInstall.as_str()
            }
            .into(),
            failed_state: String::new(),
            message: msg,
            deploy_id: job.deploy_id.clone(),
            release: None,
        }
    }

    fn destroy(
        &self,
        job: &Job,
        layout: &ProjectLayout,
        settings: ProjectSettings,
        reporter: &mut dyn Reporter,
    ) -> JobOutcome {
        let journal = DeployJournal::new(job, now_rfc3339());
        let mut engine = self.engine(job, layout.clone(), settings, journal, reporter);
        let stop = engine.run_phase(Phase::Stop);
        let t = Instant::now();
        let res = layout::remove_tree(&layout.dir).at("remove", &layout.dir);
        let (status, st, msg) = match res {
            Ok(()) => (
                Status::Success,
                StepStatus::Success,
                format!("removed {}", layout.dir.display()),
            ),
            Err(e) => (Status::Failed, StepStatus::Failed, e.to_string()),
        };
        engine
            .reporter
            .step(Step::Destroy, "", st, Value::Null, &msg, t.elapsed());
        let msg = match stop {
            Err(f) => format!("{msg} (stop.sls failed: {})", f.error),
            Ok(()) => msg,
        };
        JobOutcome {
            status,
            failed_step: if status == Status::Success {
                ""
            } else {
                Step::Destroy.as_str()
            }
            .into(),
            failed_state: String::new(),
            message: msg,
            deploy_id: job.deploy_id.clone(),
            release: None,
        }
    }

    fn rollback(
        &self,
        job: &Job,
        layout: ProjectLayout,
        settings: ProjectSettings,
        to: Option<&str>,
        reporter: &mut dyn Reporter,
    ) -> JobOutcome {
        let mut fail = |message: String| {
            reporter.step(
                Step::Rollback,
                "",
                StepStatus::Failed,
                Value::Null,
                &message,
                Duration::ZERO,
            );
            JobOutcome {
                status: Status::Failed,
                failed_step: Step::Rollback.as_str().into(),
                failed_state: String::new(),
                message,
                deploy_id: job.deploy_id.clone(),
                release: None,
            }
        };
        let Some(live) = layout.live_id() else {
            return fail(format!(
                "project {} has no live deployment to roll back",
                job.project
            ));
        };
        let trees = history::available_trees(&layout);
        let live_key = history::time_key(&layout, &live);
        let pick = match to {
            Some(to) => trees.iter().find(|(id, _)| id == to),
            // The newest deployment that went live before the live one.
            None => trees
                .iter()
                .filter(|(id, _)| history::time_key(&layout, id) < live_key)
                .max_by_key(|(id, _)| history::time_key(&layout, id)),
        };
        let Some((target, source)) = pick.cloned() else {
            let have: Vec<&str> = trees.iter().map(|(id, _)| id.as_str()).collect();
            return fail(match to {
                Some(to) if to == live => format!("deployment {to} is already live"),
                Some(to) => format!(
                    "deployment {to} has no tree left to return to (available: {})",
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ),
                None => format!(
                    "project {} has no previous deployment to return to",
                    job.project
                ),
            });
        };
        let mut journal = DeployJournal::new(job, now_rfc3339());
        journal.previous_live = Some(live);
        journal.backup_data = settings.backup_data;
        journal.target = Some(target);
        journal.source_archive = Some(source);
        let arch = layout.archive(&job.deploy_id);
        let prepared = fs::create_dir_all(&arch).at("create", &arch).and_then(|_| {
            JobSpec::of(job)
                .save(&layout)
                .at("write", layout.job_file())
        });
        if let Err(e) = prepared {
            return JobOutcome {
                status: Status::Failed,
                failed_step: Step::Rollback.as_str().into(),
                failed_state: String::new(),
                message: e.to_string(),
                deploy_id: job.deploy_id.clone(),
                release: None,
            };
        }
        self.engine(job, layout, settings, journal, reporter)
            .run_from(0)
    }

    /// The deployment `run/` serves, read from one symlink: cheap enough for every result.
    pub fn live(&self, env_uuid: &str, project: &str) -> Option<String> {
        ProjectLayout::new(self.project_dir(env_uuid, project)).live_id()
    }

    /// Deletes trees that rotation and failed deploys renamed away, then returns the project's
    /// disk use. Slow on large trees: run it after the job's result is delivered.
    pub fn sweep(&self, env_uuid: &str, project: &str) -> u64 {
        let layout = ProjectLayout::new(self.project_dir(env_uuid, project));
        if !layout.dir.is_dir() {
            return 0;
        }
        layout::sweep_trash(&layout.deploy());
        layout::sweep_trash(&layout.archives());
        layout::disk_usage(&layout.dir)
    }

    /// The project's deployments, releases and disk use.
    pub fn status(&self, env_uuid: &str, project: &str) -> ProjectState {
        history::project_state(&ProjectLayout::new(self.project_dir(env_uuid, project)))
    }
}

/// Now, RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
