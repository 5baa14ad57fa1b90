//! The project lifecycle on the agent: PRODUCT.md's table, step for step, for the editable,
//! cooking and final modes, with archives, data backup, rollback (on failure and on request),
//! a per-deploy journal so a SIGKILLed agent finishes or undoes the deploy on restart, and one
//! deploy per project at a time (an `flock`ed lock file).
//!
//! Everything here is synchronous: filesystem and processes (state files run through
//! [`crate::state::Executor`]); the only network use is the webhook POST and the HTTP health
//! check. The agent's link calls [`Lifecycle::run`] in `spawn_blocking`.
//!
//! Step names (events and `CORPUS_TEST_PAUSE_AT`) are [`EDITABLE_STEPS`], [`COOKING_STEPS`],
//! [`FINAL_STEPS`] and [`ROLLBACK_STEPS`]; the undo after a failure reports `rollback`, then
//! [`UNDO_STEPS`], and pauses at `rollback_<step>`. Outside steps: `validate`, `lock`,
//! `webhook` (one per URL), `destroy`. The pause writes `<project_dir>/.paused-<step>` and
//! sleeps forever at that boundary, after the journal names the step.
//!
//! On disk (`ProjectLayout`): `run -> deploy/current -> <deploy id>` (cooking, final) or
//! `run -> project` (editable); `archives/<id>/` holds `status.json`, `data/` (the backup taken
//! before deploy `<id>`), `run/` (the tree that was live before `<id>`, with its record as
//! `previous.json`), and after a failure `run.failed/` and `data.failed/`; `.corpus/` holds the
//! lock, `journal.json` and `job.json` of the running job.

mod archive;
mod checks;
mod engine;
mod journal;
mod layout;
mod lock;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use archive::{Limits, MANIFEST_ENTRY};
pub use engine::{COOKING_STEPS, EDITABLE_STEPS, FINAL_STEPS, ROLLBACK_STEPS, UNDO_STEPS};
pub use layout::ProjectLayout;
pub use lock::LockHolder;

use engine::{Engine, StepFailure};
use journal::{DeployJournal, JobSpec, Phase};
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
    fn step(
        &mut self,
        _: &str,
        _: &str,
        _: StepStatus,
        _: serde_json::Value,
        _: &str,
        _: Duration,
    ) {
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
    /// What an unpacked release or source may weigh.
    limits: Limits,
}

impl Lifecycle {
    pub fn new(root: PathBuf) -> Self {
        Lifecycle {
            root,
            limits: Limits::default(),
        }
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
    pub fn run(&self, job: &Job, reporter: &mut dyn Reporter) -> Outcome {
        let refuse = |status: Status, step: &str, message: String| Outcome {
            status,
            failed_step: step.to_string(),
            failed_state: String::new(),
            message,
            deploy_id: job.deploy_id.clone(),
            release: None,
        };
        if let Err(e) = validate_job(job) {
            reporter.step(
                "validate",
                "",
                StepStatus::Failed,
                Value::Null,
                &e,
                Duration::ZERO,
            );
            return refuse(Status::Failed, "validate", e);
        }
        let layout = ProjectLayout::new(self.project_dir(&job.env_uuid, &job.project));
        if let Err(e) = fs::create_dir_all(layout.state_dir()) {
            let msg = format!("cannot create {}: {e}", layout.state_dir().display());
            return refuse(Status::Failed, "lock", msg);
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
                    "lock",
                    "",
                    StepStatus::Failed,
                    Value::Null,
                    &msg,
                    Duration::ZERO,
                );
                return refuse(Status::Refused, "lock", msg);
            }
            Err(LockError::Io(e)) => {
                let msg = format!("cannot lock {}: {e}", layout.lock_file().display());
                return refuse(Status::Failed, "lock", msg);
            }
        };
        reporter.step(
            "lock",
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
            JobKind::Destroy => self.destroy(job, &layout, reporter),
            JobKind::Deploy => {
                let mut journal = DeployJournal::new(job, now_rfc3339());
                journal.previous_live = layout.live_id();
                journal.run_was_dir = fs::symlink_metadata(layout.run()).is_ok_and(|m| m.is_dir());
                journal.backup_data = checks::backup_data(&job.common);
                let mut engine = self.engine(job, layout, journal, reporter);
                if let Err(e) = engine.spec.save(&engine.layout) {
                    let msg = format!("cannot write {}: {e}", engine.layout.job_file().display());
                    return refuse(Status::Failed, "pre_install", msg);
                }
                engine.run_from(0)
            }
            JobKind::Rollback { to } => self.rollback(job, layout, to.as_deref(), reporter),
        }
    }

    fn engine<'a>(
        &self,
        job: &Job,
        layout: ProjectLayout,
        journal: DeployJournal,
        reporter: &'a mut dyn Reporter,
    ) -> Engine<'a> {
        Engine {
            layout,
            spec: JobSpec::of(job),
            journal,
            reporter,
            pause: true,
            limits: self.limits,
            source: job.source.clone(),
            release: job.release.clone(),
            release_out: None,
            started: Instant::now(),
        }
    }

    fn init(&self, job: &Job, layout: &ProjectLayout, reporter: &mut dyn Reporter) -> Outcome {
        let t = Instant::now();
        let res = layout
            .create(job.mode)
            .and_then(|_| layout.write_pillar(&job.pillar))
            .map_err(|e| {
                format!(
                    "cannot create the layout under {}: {e}",
                    layout.dir.display()
                )
            });
        let (status, st, msg) = match res {
            Ok(()) => (
                Status::Success,
                StepStatus::Success,
                format!("layout ready at {}", layout.dir.display()),
            ),
            Err(e) => (Status::Failed, StepStatus::Failed, e),
        };
        reporter.step("pre_install", "", st, Value::Null, &msg, t.elapsed());
        Outcome {
            status,
            failed_step: if status == Status::Success {
                ""
            } else {
                "pre_install"
            }
            .into(),
            failed_state: String::new(),
            message: msg,
            deploy_id: job.deploy_id.clone(),
            release: None,
        }
    }

    fn destroy(&self, job: &Job, layout: &ProjectLayout, reporter: &mut dyn Reporter) -> Outcome {
        let mut journal = DeployJournal::new(job, now_rfc3339());
        journal.kind = "destroy".into();
        let mut engine = self.engine(job, layout.clone(), journal, reporter);
        let stop = engine.run_phase("stop");
        let t = Instant::now();
        let res = layout::remove_tree(&layout.dir);
        let (status, st, msg) = match res {
            Ok(()) => (
                Status::Success,
                StepStatus::Success,
                format!("removed {}", layout.dir.display()),
            ),
            Err(e) => (
                Status::Failed,
                StepStatus::Failed,
                format!("cannot remove {}: {e}", layout.dir.display()),
            ),
        };
        engine
            .reporter
            .step("destroy", "", st, Value::Null, &msg, t.elapsed());
        let msg = match stop {
            Err(f) => format!("{msg} (stop.sls failed: {})", f.message),
            Ok(()) => msg,
        };
        Outcome {
            status,
            failed_step: if status == Status::Success {
                ""
            } else {
                "destroy"
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
        to: Option<&str>,
        reporter: &mut dyn Reporter,
    ) -> Outcome {
        let fail = |message: String| Outcome {
            status: Status::Failed,
            failed_step: "rollback".into(),
            failed_state: String::new(),
            message,
            deploy_id: job.deploy_id.clone(),
            release: None,
        };
        let Some(live) = layout.live_id() else {
            let msg = format!(
                "project {} has no live deployment to roll back",
                job.project
            );
            reporter.step(
                "rollback",
                "",
                StepStatus::Failed,
                Value::Null,
                &msg,
                Duration::ZERO,
            );
            return fail(msg);
        };
        let trees = engine::available_trees(&layout);
        let live_key = engine::time_key(&layout, &live);
        let pick = match to {
            Some(to) => trees.iter().find(|(id, _)| id == to),
            // The newest deployment that went live before the live one.
            None => trees
                .iter()
                .filter(|(id, _)| engine::time_key(&layout, id) < live_key)
                .max_by_key(|(id, _)| engine::time_key(&layout, id)),
        };
        let Some((target, source)) = pick.cloned() else {
            let have: Vec<&str> = trees.iter().map(|(id, _)| id.as_str()).collect();
            let msg = match to {
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
            };
            reporter.step(
                "rollback",
                "",
                StepStatus::Failed,
                Value::Null,
                &msg,
                Duration::ZERO,
            );
            return fail(msg);
        };
        let mut journal = DeployJournal::new(job, now_rfc3339());
        journal.previous_live = Some(live);
        journal.backup_data = checks::backup_data(&job.common);
        journal.target = Some(target);
        journal.source_archive = Some(source);
        let mut engine = self.engine(job, layout, journal, reporter);
        let arch = engine.layout.archive(&job.deploy_id);
        if let Err(e) = fs::create_dir_all(&arch).and_then(|_| engine.spec.save(&engine.layout)) {
            return fail(format!("cannot prepare {}: {e}", arch.display()));
        }
        engine.run_from(0)
    }

    /// On agent start: finishes (or undoes) every deploy interrupted by a crash, from its
    /// journal, and returns each job's outcome.
    pub fn recover(
        &self,
        reporter_for: &mut dyn FnMut(&str) -> Box<dyn Reporter>,
    ) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        let Ok(envs) = fs::read_dir(&self.root) else {
            return out;
        };
        for env in envs.flatten() {
            let Ok(projects) = fs::read_dir(env.path().join("srv").join("projects")) else {
                continue;
            };
            for project in projects.flatten() {
                let layout = ProjectLayout::new(project.path());
                let Ok(Some(journal)) = DeployJournal::load(&layout) else {
                    continue;
                };
                let holder = LockHolder {
                    user: "corpus-agent".into(),
                    job_id: format!("recovery of {}", journal.job_id),
                    started: now_rfc3339(),
                    pid: std::process::id(),
                };
                let Ok(_lock) = ProjectLock::acquire(&layout.lock_file(), &holder) else {
                    continue;
                };
                let mut reporter = reporter_for(&journal.job_id);
                if let Some(outcome) = self.recover_locked(&layout, reporter.as_mut()) {
                    out.push((journal.job_id.clone(), outcome));
                }
            }
        }
        out
    }

    /// Recovers the interrupted job of one project (its lock held by the caller).
    fn recover_locked(
        &self,
        layout: &ProjectLayout,
        reporter: &mut dyn Reporter,
    ) -> Option<Outcome> {
        let journal = DeployJournal::load(layout).ok()??;
        // A crash inside the sync step must not leave the project without its source tree.
        let _ = layout::restore_project(&layout.dir);
        if let Ok(entries) = fs::read_dir(&layout.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".paused-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut engine = Engine {
            layout: layout.clone(),
            spec: JobSpec::load(layout),
            journal,
            reporter,
            pause: false,
            limits: self.limits,
            source: None,
            release: None,
            release_out: None,
            started: Instant::now(),
        };
        let j = &engine.journal;
        let outcome = match (j.kind.as_str(), j.phase, j.mode) {
            ("rollback", _, _) | (_, Phase::Committed, _) => engine.resume(),
            (_, Phase::RollingBack, _) => engine.undo(),
            (_, Phase::Forward, Mode::Editable) => {
                let step = j.step.clone();
                engine.fail(StepFailure {
                    step: step.clone(),
                    state: String::new(),
                    message: format!(
                        "the agent stopped during step {step}; editable mode leaves the tree as is"
                    ),
                })
            }
            (_, Phase::Forward, _) => {
                let step = j.step.clone();
                engine.fail(StepFailure {
                    step: step.clone(),
                    state: String::new(),
                    message: format!("the agent stopped during step {step}"),
                })
            }
        };
        Some(outcome)
    }

    /// The project's deployments, releases and disk use.
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

    pub fn status(&self, env_uuid: &str, project: &str) -> ProjectState {
        let layout = ProjectLayout::new(self.project_dir(env_uuid, project));
        if !layout.dir.is_dir() {
            return ProjectState::default();
        }
        let live = layout.live_id();
        let mut deployments: Vec<DeploymentInfo> = engine::list_archives(&layout)
            .into_iter()
            .filter_map(|id| {
                let s = engine::read_status(&layout, &id)?;
                let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Some(DeploymentInfo {
                    live: live.as_deref() == Some(id.as_str()),
                    time: text("time"),
                    commit: text("commit"),
                    mode: serde_json::from_value(s.get("mode").cloned().unwrap_or(Value::Null))
                        .unwrap_or(Mode::Cooking),
                    result: text("result"),
                    failed_step: text("failed_step"),
                    failed_state: text("failed_state"),
                    kind: text("kind"),
                    id,
                })
            })
            .collect();
        let mut order: Vec<String> = deployments.iter().map(|d| d.id.clone()).collect();
        engine::sort_newest_first(&layout, &mut order);
        deployments.sort_by_key(|d| order.iter().position(|id| *id == d.id));
        let mut releases = engine::list_releases(&layout);
        releases.sort_by(|a, b| b.cmp(a));
        ProjectState {
            exists: true,
            locked_by: ProjectLock::holder(&layout.lock_file())
                .map(|h| (h.user, h.job_id, h.started)),
            live,
            deployments,
            releases,
            disk_used: layout::disk_usage(&layout.dir),
        }
    }
}

/// Checks a job before anything is touched: names, deploy id, and what the mode needs.
fn validate_job(job: &Job) -> Result<(), String> {
    corpus_proto::names::validate_project_name(&job.project).map_err(|e| e.to_string())?;
    let env_ok = !job.env_uuid.is_empty()
        && job.env_uuid.len() <= 64
        && job
            .env_uuid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !job.env_uuid.starts_with('-');
    if !env_ok {
        return Err(format!(
            "environment id {:?} is invalid: use letters, digits and '-'",
            job.env_uuid
        ));
    }
    match &job.kind {
        JobKind::Deploy => {
            validate_deploy_id(&job.deploy_id)?;
            match job.mode {
                Mode::Final => {
                    engine::check_release(job.release.as_deref(), &job.project)?;
                }
                Mode::Editable | Mode::Cooking => {
                    let src = job.source.as_ref().ok_or(
                        "no project source was given: editable and cooking modes deploy the \
                         pushed git tree",
                    )?;
                    if !src.is_file() {
                        return Err(format!("project source {} is missing", src.display()));
                    }
                }
            }
        }
        JobKind::Rollback { to } => {
            validate_deploy_id(&job.deploy_id)?;
            if job.mode == Mode::Editable {
                return Err("editable mode has no archives to roll back to".into());
            }
            if let Some(to) = to {
                validate_deploy_id(to)?;
            }
        }
        JobKind::Init | JobKind::Destroy => {}
    }
    Ok(())
}

/// Now, RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
    if time_ok && uuid_ok {
        Ok(())
    } else {
        Err(bad())
    }
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
