//! The step runner: the mode's steps in PRODUCT.md's order, the journal written before each,
//! the rollback on failure, the requested rollback, and the resumption of an interrupted job.
//!
//! Every filesystem move is idempotent ("if the source is still there, move it"), so the undo
//! and the resumption can run again after a crash at any instant.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::archive::{self, Limits};
use super::checks;
use super::journal::{DeployJournal, JobSpec, Phase};
use super::layout::{
    ProjectLayout, RUN_TARGET, copy_tree, remove_tree, rename_durable, set_link, sync_dir,
    sync_filesystem, write_atomic,
};
use super::{
    Mode, Outcome, ReleaseArchive, Reporter, Status, StepStatus, now_rfc3339, validate_deploy_id,
};
use crate::state::{Executor, JinjaRenderer, LocalFileSources, Systemctl};

/// Steps of a deploy in editable mode.
pub const EDITABLE_STEPS: &[&str] = &[
    "pre_install",
    "stop",
    "sync",
    "link_run",
    "configure",
    "build",
    "post_build",
    "start",
    "upgrade",
    "post_deploy",
    "post_install",
    "healthcheck",
    "notify",
];
/// Steps of a deploy in cooking mode.
pub const COOKING_STEPS: &[&str] = &[
    "pre_install",
    "stop",
    "backup_data",
    "backup",
    "archive",
    "switch",
    "sync",
    "configure",
    "build",
    "post_build",
    "bundle",
    "start",
    "upgrade",
    "post_deploy",
    "post_install",
    "healthcheck",
    "rotate",
    "notify",
];
/// Steps of a deploy in final mode.
pub const FINAL_STEPS: &[&str] = &[
    "pre_install",
    "stop",
    "backup_data",
    "backup",
    "archive",
    "unpack",
    "switch",
    "start",
    "upgrade",
    "post_deploy",
    "post_install",
    "healthcheck",
    "rotate",
    "notify",
];
/// Steps of a requested rollback (`corpus rollback`).
pub const ROLLBACK_STEPS: &[&str] = &[
    "stop", "archive", "switch", "restore", "start", "rotate", "notify",
];
/// Steps of the undo after a failure (reported under these names, between a `rollback` event
/// marking its start and one with its result).
pub const UNDO_STEPS: &[&str] = &["stop", "revert", "restore", "start"];

/// The step after which a deploy is kept rather than undone on a crash.
const COMMIT_AFTER: &str = "healthcheck";

/// Why a step failed.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub step: String,
    pub state: String,
    pub message: String,
}

type StepResult = Result<(), StepFailure>;

fn builtin_fail(step: &str, message: impl Into<String>) -> StepFailure {
    StepFailure {
        step: step.to_string(),
        state: String::new(),
        message: message.into(),
    }
}

/// One job in progress on one project (the project lock is held by the caller).
pub struct Engine<'a> {
    pub layout: ProjectLayout,
    pub spec: JobSpec,
    pub journal: DeployJournal,
    pub reporter: &'a mut dyn Reporter,
    /// Honour `CORPUS_TEST_PAUSE_AT` (never during recovery).
    pub pause: bool,
    pub limits: Limits,
    pub source: Option<PathBuf>,
    pub release: Option<PathBuf>,
    /// The release bundled by this run (cooking), returned on success.
    pub release_out: Option<ReleaseArchive>,
    pub started: Instant,
}

impl Engine<'_> {
    fn steps(&self) -> &'static [&'static str] {
        if self.journal.kind == "rollback" {
            return ROLLBACK_STEPS;
        }
        match self.journal.mode {
            Mode::Editable => EDITABLE_STEPS,
            Mode::Cooking => COOKING_STEPS,
            Mode::Final => FINAL_STEPS,
        }
    }

    fn id(&self) -> &str {
        &self.journal.deploy_id
    }

    fn archive_dir(&self) -> PathBuf {
        self.layout.archive(&self.journal.deploy_id)
    }

    fn report(&mut self, step: &str, status: StepStatus, comment: &str, took: Duration) {
        self.reporter
            .step(step, "", status, Value::Null, comment, took);
    }

    fn save_journal(&self) -> Result<(), String> {
        self.journal.save(&self.layout).map_err(|e| {
            format!(
                "cannot write the deploy journal {}: {e}",
                self.layout.journal_file().display()
            )
        })
    }

    /// The test-only pause: `CORPUS_TEST_PAUSE_AT=<step>` blocks here forever after writing
    /// `<project>/.paused-<step>`, so a test can SIGKILL the agent at this boundary.
    fn maybe_pause(&self, step: &str) {
        if !self.pause {
            return;
        }
        if std::env::var("CORPUS_TEST_PAUSE_AT").ok().as_deref() == Some(step) {
            let _ = fs::write(self.layout.dir.join(format!(".paused-{step}")), b"");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    /// Runs the job's steps from `from` (an index into the step list) to the end.
    pub fn run_from(&mut self, from: usize) -> Outcome {
        let steps = self.steps();
        for step in &steps[from.min(steps.len())..] {
            self.journal.step = step.to_string();
            if let Err(e) = self.save_journal() {
                return self.fail(builtin_fail(step, e));
            }
            self.maybe_pause(step);
            let result = self.run_step(step);
            if let Err(f) = result {
                if self.journal.phase == Phase::Committed {
                    // Past the health check the deploy stands: report and carry on.
                    continue;
                }
                return self.fail(f);
            }
            if *step == COMMIT_AFTER && self.journal.kind == "deploy" {
                self.journal.phase = Phase::Committed;
            }
        }
        self.succeed()
    }

    /// Resumes at the step recorded in the journal (it may have been interrupted midway).
    pub fn resume(&mut self) -> Outcome {
        let at = self
            .steps()
            .iter()
            .position(|s| *s == self.journal.step)
            .unwrap_or(0);
        self.run_from(at)
    }

    fn run_step(&mut self, step: &str) -> StepResult {
        let started = Instant::now();
        let builtin: Result<Option<String>, String> = match step {
            "pre_install" => self.pre_install().map(Some),
            "backup_data" => self.backup_data(),
            "archive" => self.archive_live().map(Some),
            "switch" => self.switch().map(Some),
            "sync" => self.sync_source().map(Some),
            "link_run" => set_link(&self.layout.run(), Path::new("project"))
                .map(|_| Some("run -> project".into()))
                .map_err(|e| format!("cannot link run/ to project/: {e}")),
            "unpack" => self.unpack_release().map(Some),
            "bundle" => self.bundle().map(Some),
            "healthcheck" => self.healthcheck(),
            "rotate" => Ok(Some(self.rotate())),
            "notify" => {
                self.notify("success");
                return self.run_phase("notify");
            }
            phase => return self.run_phase(phase),
        };
        let took = started.elapsed();
        match builtin {
            Ok(Some(comment)) => {
                self.report(step, StepStatus::Success, &comment, took);
                Ok(())
            }
            Ok(None) => {
                self.report(step, StepStatus::Skipped, "not configured", took);
                Ok(())
            }
            Err(message) => {
                self.report(step, StepStatus::Failed, &message, took);
                Err(builtin_fail(step, message))
            }
        }
    }

    /// Runs `.salt/<phase>.sls` with the executor, one event per state.
    pub fn run_phase(&mut self, phase: &str) -> StepResult {
        let plan = self.spec.plans.phase(phase);
        if plan.chunks.is_empty() {
            self.report(
                phase,
                StepStatus::Skipped,
                &format!("no .salt/{phase}.sls"),
                Duration::ZERO,
            );
            return Ok(());
        }
        let file_root = match self.file_root() {
            Ok(root) => root,
            Err(message) => {
                return Err(StepFailure {
                    step: phase.to_string(),
                    state: String::new(),
                    message,
                });
            }
        };
        let sources = LocalFileSources::new(
            Some(file_root.clone()),
            Some(self.file_renderer(&file_root)),
        );
        let services = Systemctl::default();
        let executor = Executor {
            test: false,
            sources: &sources,
            services: &services,
        };
        let mut failed: Option<(String, String)> = None;
        let reporter = &mut *self.reporter;
        executor.run_with(&plan, |k| {
            let r = &k.result;
            let status = match r.result {
                Some(true) => StepStatus::Success,
                Some(false) => StepStatus::Failed,
                None => StepStatus::Skipped,
            };
            if status == StepStatus::Failed && failed.is_none() {
                failed = Some((r.id.clone(), r.comment.clone()));
            }
            reporter.step(
                phase,
                &r.id,
                status,
                Value::Object(r.changes.clone()),
                &r.comment,
                Duration::from_secs_f64(r.duration.max(0.0) / 1000.0),
            );
        });
        match failed {
            None => Ok(()),
            Some((state, comment)) => Err(StepFailure {
                step: phase.to_string(),
                message: format!("state {state:?} of {phase}.sls failed: {comment}"),
                state,
            }),
        }
    }

    /// Where `salt://` sources and template imports resolve: the project's source tree.
    /// Editable and cooking modes have it synced in `project/`. Final mode never syncs, so the
    /// pushed source is unpacked once per deploy into scratch space under `build/`, with the
    /// same safety checks as a sync.
    fn file_root(&self) -> Result<PathBuf, String> {
        let Some(src) = self
            .source
            .clone()
            .filter(|_| self.journal.mode == Mode::Final)
        else {
            return Ok(self.layout.project());
        };
        let build = self.layout.sub("build");
        let dir = build.join(format!(".source-{}", self.id()));
        if dir.is_dir() {
            return Ok(dir);
        }
        // Sources of earlier deploys are stale scratch: keep only this one.
        if let Ok(entries) = fs::read_dir(&build) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".source-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let partial = build.join(format!(".source-{}.partial", self.id()));
        let _ = fs::remove_dir_all(&partial);
        let reader =
            archive::open_tar(&src).map_err(|e| format!("cannot open {}: {e}", src.display()))?;
        archive::unpack(reader, &partial, None, self.limits)
            .map_err(|e| format!("source {}: {e}", src.display()))?;
        fs::rename(&partial, &dir)
            .map_err(|e| format!("cannot move the source into {}: {e}", dir.display()))?;
        Ok(dir)
    }

    fn file_renderer(&self, file_root: &Path) -> JinjaRenderer {
        let tree: Arc<dyn corpus_pillar::SourceTree> =
            Arc::new(corpus_pillar::DirTree::new(file_root));
        let engine = corpus_pillar::TemplateEngine::new(tree);
        let env = self.spec.common.get("env").cloned().unwrap_or(Value::Null);
        let ctx = corpus_pillar::TemplateContext::new(
            self.spec.pillar.clone(),
            self.spec.grains.clone(),
            self.spec.common.clone(),
            env,
        );
        Box::new(
            move |name: &str, text: &str, extra: &serde_json::Map<String, Value>| {
                let path = name.strip_prefix("salt://").unwrap_or(name);
                let mut ctx = ctx.clone();
                for (key, value) in extra {
                    ctx = ctx.with_var(key, value.clone());
                }
                engine.render(path, text, &ctx).map_err(|e| e.to_string())
            },
        )
    }

    // ---- built-in steps -------------------------------------------------------------------

    fn pre_install(&mut self) -> Result<String, String> {
        let l = &self.layout;
        l.create(self.journal.mode)
            .map_err(|e| format!("cannot create the layout under {}: {e}", l.dir.display()))?;
        super::layout::sweep_trash(&l.deploy());
        super::layout::sweep_trash(&l.archives());
        l.write_pillar(&self.spec.pillar)
            .map_err(|e| format!("cannot write {}: {e}", l.pillar().display()))?;
        if self.journal.mode != Mode::Editable {
            fs::create_dir_all(self.archive_dir())
                .map_err(|e| format!("cannot create {}: {e}", self.archive_dir().display()))?;
            self.write_status("running")?;
        }
        Ok(format!("layout ready at {}", l.dir.display()))
    }

    fn backup_data(&mut self) -> Result<Option<String>, String> {
        if !self.journal.backup_data {
            return Ok(None);
        }
        let arch = self.archive_dir();
        let done = arch.join("data");
        if done.is_dir() {
            return Ok(Some("data/ already backed up".into()));
        }
        let partial = arch.join("data.partial");
        let _ = fs::remove_dir_all(&partial);
        copy_tree(&self.layout.data(), &partial).map_err(|e| e.to_string())?;
        rename_durable(&partial, &done).map_err(|e| e.to_string())?;
        Ok(Some(format!("data/ copied to {}", done.display())))
    }

    /// Moves the live tree into this job's archive (a rename).
    fn archive_live(&mut self) -> Result<String, String> {
        let arch = self.archive_dir();
        fs::create_dir_all(&arch).map_err(|e| format!("cannot create {}: {e}", arch.display()))?;
        let dest = arch.join("run");
        let l = self.layout.clone();
        let mut moved = String::from("no previous tree");
        if let Some(prev) = self.journal.previous_live.clone()
            && self.journal.target.as_deref() != Some(prev.as_str())
        {
            let tree = l.tree(&prev);
            if tree.is_dir() && !dest.exists() {
                // The tree's record travels with it, so a rollback to it can restore the
                // record even after rotation removed `archives/<prev>`.
                if let Ok(rec) = fs::read(l.archive(&prev).join("status.json")) {
                    write_atomic(&arch.join("previous.json"), &rec, 0o644)
                        .map_err(|e| e.to_string())?;
                }
                rename_durable(&tree, &dest).map_err(|e| e.to_string())?;
            }
            moved = format!("deploy/{prev} archived as {}", dest.display());
        } else if self.journal.run_was_dir {
            let run = l.run();
            if fs::symlink_metadata(&run).is_ok_and(|m| m.is_dir()) && !dest.exists() {
                rename_durable(&run, &dest).map_err(|e| e.to_string())?;
            }
            set_link(&run, Path::new(RUN_TARGET)).map_err(|e| e.to_string())?;
            moved = format!("run/ archived as {}", dest.display());
        }
        // A requested rollback keeps the live data with the tree it leaves.
        if self.journal.kind == "rollback"
            && let Some(src) = &self.journal.source_archive
            && self.journal.backup_data
            && l.archive(src).join("data").is_dir()
            && l.data().exists()
            && !arch.join("data").exists()
        {
            rename_durable(&l.data(), &arch.join("data")).map_err(|e| e.to_string())?;
        }
        Ok(moved)
    }

    fn switch(&mut self) -> Result<String, String> {
        let l = self.layout.clone();
        let live = if self.journal.kind == "rollback" {
            let target = self.journal.target.clone().unwrap_or_default();
            let src = l.archive(self.journal.source_archive.as_deref().unwrap_or_default());
            if src.join("run").is_dir() && !l.tree(&target).exists() {
                rename_durable(&src.join("run"), &l.tree(&target)).map_err(|e| e.to_string())?;
            }
            let record = l.archive(&target).join("status.json");
            if !record.exists()
                && let Ok(rec) = fs::read(src.join("previous.json"))
            {
                fs::create_dir_all(l.archive(&target)).map_err(|e| e.to_string())?;
                write_atomic(&record, &rec, 0o644).map_err(|e| e.to_string())?;
            }
            if src.join("data").is_dir() && !l.data().exists() {
                rename_durable(&src.join("data"), &l.data()).map_err(|e| e.to_string())?;
            }
            target
        } else {
            let id = self.id().to_string();
            let tree = l.tree(&id);
            if self.journal.mode == Mode::Cooking && !tree.exists() {
                fs::create_dir_all(&tree)
                    .map_err(|e| format!("cannot create {}: {e}", tree.display()))?;
                sync_dir(&l.deploy()).map_err(|e| e.to_string())?;
            }
            if !tree.is_dir() {
                return Err(format!(
                    "{} is missing: nothing to switch to",
                    tree.display()
                ));
            }
            id
        };
        l.set_current(Some(&live))
            .and_then(|_| set_link(&l.run(), Path::new(RUN_TARGET)))
            .map_err(|e| format!("cannot switch run/ to deploy/{live}: {e}"))?;
        Ok(format!("run/ -> deploy/{live}"))
    }

    fn sync_source(&mut self) -> Result<String, String> {
        let src = self
            .source
            .clone()
            .ok_or("no project source was given: editable and cooking modes need one")?;
        let l = &self.layout;
        super::layout::restore_project(&l.dir)
            .map_err(|e| format!("cannot restore project/: {e}"))?;
        let fresh = l.dir.join(".project.new");
        let _ = fs::remove_dir_all(&fresh);
        let reader =
            archive::open_tar(&src).map_err(|e| format!("cannot open {}: {e}", src.display()))?;
        let stats = archive::unpack(reader, &fresh, None, self.limits)
            .map_err(|e| format!("source {}: {e}", src.display()))?;
        let old = l.dir.join(format!(".project.old-{}", uuid::Uuid::new_v4()));
        if l.project().exists() {
            fs::rename(l.project(), &old).map_err(|e| e.to_string())?;
        }
        rename_durable(&fresh, &l.project()).map_err(|e| e.to_string())?;
        let _ = fs::remove_dir_all(&old);
        Ok(format!("{} entries into project/", stats.entries))
    }

    fn unpack_release(&mut self) -> Result<String, String> {
        let release = self
            .release
            .clone()
            .ok_or("no release archive was given: final mode deploys a cooked release")?;
        let id = self.id().to_string();
        let l = &self.layout;
        let tree = l.tree(&id);
        if tree.is_dir() {
            return Ok(format!("deploy/{id} already unpacked"));
        }
        let manifest = archive::read_manifest(&release).map_err(|e| e.to_string())?;
        check_manifest(&manifest, &self.journal.project, &release)?;
        let partial = l.deploy().join(format!(".{id}.partial"));
        let _ = fs::remove_dir_all(&partial);
        let reader = archive::open_tar(&release)
            .map_err(|e| format!("cannot open {}: {e}", release.display()))?;
        let stats = archive::unpack(reader, &partial, Some(archive::TREE_PREFIX), self.limits)
            .map_err(|e| format!("release {}: {e}", release.display()))?;
        // The tree is complete on disk before it can become live.
        sync_filesystem(&partial).map_err(|e| e.to_string())?;
        rename_durable(&partial, &tree).map_err(|e| e.to_string())?;
        Ok(format!(
            "{} entries, {} bytes into deploy/{id}",
            stats.entries, stats.bytes
        ))
    }

    fn bundle(&mut self) -> Result<String, String> {
        let id = self.id().to_string();
        let l = &self.layout;
        let out = l.releases().join(format!("{id}.tar.zst"));
        let manifest = json!({
            "project": self.journal.project,
            "commit": self.journal.commit,
            "build_id": id,
            "env": self.journal.env_uuid,
            "time": now_rfc3339(),
        });
        let release = archive::bundle(&l.tree(&id), &out, manifest)
            .map_err(|e| format!("cannot bundle deploy/{id} into {}: {e}", out.display()))?;
        let side = serde_json::to_vec_pretty(&release.manifest).map_err(|e| e.to_string())?;
        write_atomic(&l.releases().join(format!("{id}.json")), &side, 0o644)
            .map_err(|e| e.to_string())?;
        let msg = format!(
            "{} ({} bytes, sha256 {})",
            out.display(),
            release.size,
            release.sha256
        );
        self.release_out = Some(release);
        Ok(msg)
    }

    fn healthcheck(&mut self) -> Result<Option<String>, String> {
        let Some((check, retries, interval)) = checks::healthcheck(&self.spec.common)? else {
            return Ok(None);
        };
        let cwd = if self.layout.run().is_dir() {
            self.layout.run()
        } else {
            self.layout.dir.clone()
        };
        checks::run_healthcheck(&check, retries, interval, &cwd)
            .map(Some)
            .map_err(|e| format!("health check failed: {e}"))
    }

    /// Keeps the newest `keep_archives` archives, the live one and the last one holding a tree
    /// to roll back to; older releases beyond the same count go too.
    fn rotate(&mut self) -> String {
        let keep = checks::keep_archives(&self.spec.common);
        let l = &self.layout;
        let live = l.live_id();
        let mut ids = list_archives(l);
        sort_newest_first(l, &mut ids);
        let last_good_tree = ids
            .iter()
            .find(|id| l.archive(id).join("run").is_dir())
            .cloned();
        let mut removed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let protected = i < keep
                || Some(id) == live.as_ref()
                || Some(id) == last_good_tree.as_ref()
                || id == self.id()
                || Some(id) == self.journal.target.as_ref();
            // Renamed away now, deleted after the job's result is out (`Lifecycle::sweep`).
            if !protected && super::layout::discard_tree(&l.archive(id)).is_ok() {
                removed.push(id.clone());
            }
        }
        let mut releases = list_releases(l);
        releases.sort_unstable_by(|a, b| b.cmp(a));
        for id in releases.iter().skip(keep) {
            if id != self.id() {
                let _ = fs::remove_file(l.releases().join(format!("{id}.tar.zst")));
                let _ = fs::remove_file(l.releases().join(format!("{id}.json")));
            }
        }
        if removed.is_empty() {
            format!("kept {} archives (keep_archives={keep})", ids.len())
        } else {
            format!("removed archives {}", removed.join(", "))
        }
    }

    /// POSTs the finished deploy to every webhook; failures are reported, never fatal.
    fn notify(&mut self, status: &str) {
        let urls = checks::webhooks(&self.spec.common);
        let event = json!({
            "status": status,
            "env": self.journal.env_uuid,
            "project": self.journal.project,
            "commit": self.journal.commit,
            "deploy_id": self.journal.deploy_id,
            "job_id": self.journal.job_id,
            "mode": self.journal.mode,
            "kind": self.journal.kind,
            "failed_step": self.journal.failed_step,
            "failed_state": self.journal.failed_state,
            "duration": self.started.elapsed().as_secs_f64(),
        });
        for url in urls {
            let t = Instant::now();
            let (st, msg) = match checks::post_webhook(&url, &event) {
                Ok(()) => (StepStatus::Success, format!("POST {url}")),
                Err(e) => (StepStatus::Failed, e),
            };
            self.reporter
                .step("webhook", &url, st, Value::Null, &msg, t.elapsed());
        }
    }

    // ---- ends of a job --------------------------------------------------------------------

    fn write_status(&self, result: &str) -> Result<(), String> {
        if self.journal.mode == Mode::Editable && self.journal.kind == "deploy" {
            return Ok(());
        }
        let arch = self.archive_dir();
        if !arch.is_dir() {
            return Ok(());
        }
        let commit = match (&self.journal.kind[..], &self.journal.target) {
            ("rollback", Some(t)) => read_status(&self.layout, t)
                .and_then(|s| s.get("commit").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default(),
            _ => self.journal.commit.clone(),
        };
        let status = json!({
            "id": self.journal.deploy_id,
            "time": self.journal.started,
            "commit": commit,
            "mode": self.journal.mode,
            "kind": self.journal.kind,
            "result": result,
            "failed_step": self.journal.failed_step,
            "failed_state": self.journal.failed_state,
            "message": self.journal.message,
            "previous": self.journal.previous_live,
            "target": self.journal.target,
            "job_id": self.journal.job_id,
            "requested_by": self.journal.requested_by,
            "duration": self.started.elapsed().as_secs_f64(),
        });
        let text = serde_json::to_vec_pretty(&status).map_err(|e| e.to_string())?;
        write_atomic(&arch.join("status.json"), &text, 0o644)
            .map_err(|e| format!("cannot write {}: {e}", arch.join("status.json").display()))
    }

    fn finish(&mut self, status: Status, message: String) -> Outcome {
        let result = match status {
            Status::Success => "success",
            Status::RolledBack => "rolled_back",
            _ => "failed",
        };
        self.journal.message = message.clone();
        let mut message = message;
        if let Err(e) = self.write_status(result) {
            message.push_str(&format!(" (and {e})"));
        }
        if let Err(e) = DeployJournal::remove(&self.layout) {
            message.push_str(&format!(" (and cannot remove the journal: {e})"));
        }
        Outcome {
            status,
            failed_step: self.journal.failed_step.clone(),
            failed_state: self.journal.failed_state.clone(),
            message,
            deploy_id: self.journal.deploy_id.clone(),
            release: if status == Status::Success {
                self.release_out.take()
            } else {
                None
            },
        }
    }

    fn succeed(&mut self) -> Outcome {
        let msg = if self.journal.kind == "rollback" {
            format!(
                "rolled back to {}",
                self.journal.target.as_deref().unwrap_or("?")
            )
        } else {
            format!("deployed {}", self.journal.deploy_id)
        };
        self.finish(Status::Success, msg)
    }

    /// A step failed: editable and requested rollbacks stop here; cooking and final undo.
    pub fn fail(&mut self, f: StepFailure) -> Outcome {
        self.journal.failed_step = f.step.clone();
        self.journal.failed_state = f.state.clone();
        self.journal.message = f.message.clone();
        if self.journal.mode == Mode::Editable || self.journal.kind == "rollback" {
            if self.journal.kind == "deploy" {
                self.notify("failed");
            }
            let msg = format!("step {} failed: {}", f.step, f.message);
            return self.finish(Status::Failed, msg);
        }
        self.undo()
    }

    /// The rollback of a failed (or interrupted) deploy: stop.sls, failed tree kept as
    /// `archives/<id>/run.failed`, previous tree and data back (renames), restore.sls,
    /// start.sls.
    pub fn undo(&mut self) -> Outcome {
        let t = Instant::now();
        self.journal.phase = Phase::RollingBack;
        let first = self.journal.message.clone();
        self.report(
            "rollback",
            StepStatus::Running,
            &format!("step {} failed: {first}", self.journal.failed_step),
            Duration::ZERO,
        );
        let mut problems = Vec::new();
        for step in UNDO_STEPS {
            self.journal.step = step.to_string();
            if let Err(e) = self.save_journal() {
                problems.push(e);
            }
            self.maybe_pause(&format!("rollback_{step}"));
            let res = if *step == "revert" {
                let started = Instant::now();
                match self.revert() {
                    Ok(msg) => {
                        self.report("revert", StepStatus::Success, &msg, started.elapsed());
                        Ok(())
                    }
                    Err(e) => {
                        self.report("revert", StepStatus::Failed, &e, started.elapsed());
                        Err(builtin_fail("revert", e))
                    }
                }
            } else {
                self.run_phase(step)
            };
            if let Err(f) = res {
                problems.push(f.message);
            }
        }
        let back_to = self.journal.previous_live.clone();
        let mut msg = format!(
            "step {} failed{}: {first}; rolled back to {}",
            self.journal.failed_step,
            if self.journal.failed_state.is_empty() {
                String::new()
            } else {
                format!(" at state {:?}", self.journal.failed_state)
            },
            back_to.as_deref().unwrap_or("the empty tree")
        );
        if !problems.is_empty() {
            msg.push_str(&format!(" (rollback problems: {})", problems.join("; ")));
        }
        let st = if problems.is_empty() {
            StepStatus::Success
        } else {
            StepStatus::Failed
        };
        self.report("rollback", st, &msg, t.elapsed());
        self.notify("rolled_back");
        if let Err(f) = self.run_phase("notify") {
            msg.push_str(&format!(" (notify: {})", f.message));
        }
        self.finish(Status::RolledBack, msg)
    }

    /// The filesystem part of the undo; each move happens only if still needed.
    fn revert(&mut self) -> Result<String, String> {
        let l = self.layout.clone();
        let id = self.id().to_string();
        let arch = self.archive_dir();
        fs::create_dir_all(&arch).map_err(|e| format!("cannot create {}: {e}", arch.display()))?;
        let io = |e: std::io::Error| e.to_string();
        // The failed tree is kept for inspection.
        let new_tree = l.tree(&id);
        if new_tree.exists() {
            let failed = arch.join("run.failed");
            remove_tree(&failed).map_err(io)?;
            rename_durable(&new_tree, &failed).map_err(io)?;
        }
        let _ = fs::remove_dir_all(l.deploy().join(format!(".{id}.partial")));
        let _ = fs::remove_dir_all(l.dir.join(".project.new"));
        // A failed deploy's release must not be promoted.
        let _ = fs::remove_file(l.releases().join(format!("{id}.tar.zst")));
        let _ = fs::remove_file(l.releases().join(format!("{id}.json")));
        let _ = fs::remove_file(l.releases().join(format!("{id}.partial")));
        self.release_out = None;
        // The previous tree goes back.
        let saved = arch.join("run");
        let run_is_dir = fs::symlink_metadata(l.run()).is_ok_and(|m| m.is_dir());
        let back = match (&self.journal.previous_live, self.journal.run_was_dir) {
            (Some(prev), _) => {
                if saved.is_dir() && !l.tree(prev).exists() {
                    rename_durable(&saved, &l.tree(prev)).map_err(io)?;
                }
                l.set_current(Some(prev)).map_err(io)?;
                format!("deploy/{prev}")
            }
            (None, true) if run_is_dir => "run/ (never moved)".to_string(),
            (None, true) => {
                let name = format!("pre-{id}");
                if saved.is_dir() && !l.tree(&name).exists() {
                    rename_durable(&saved, &l.tree(&name)).map_err(io)?;
                }
                l.set_current(Some(&name)).map_err(io)?;
                format!("deploy/{name}")
            }
            (None, false) => {
                l.set_current(None).map_err(io)?;
                "no tree (first deploy)".to_string()
            }
        };
        if !run_is_dir {
            set_link(&l.run(), Path::new(RUN_TARGET)).map_err(io)?;
        }
        // data/ comes back from the backup, by rename; the data the failed deploy saw is kept.
        let mut data_msg = "data/ untouched";
        if self.journal.backup_data {
            let backup = arch.join("data");
            if backup.is_dir() {
                if l.data().exists() {
                    let mut kept = arch.join("data.failed");
                    let mut n = 1;
                    while kept.exists() {
                        kept = arch.join(format!("data.failed.{n}"));
                        n += 1;
                    }
                    rename_durable(&l.data(), &kept).map_err(io)?;
                }
                rename_durable(&backup, &l.data()).map_err(io)?;
                data_msg = "data/ restored from the backup";
            }
            let _ = fs::remove_dir_all(arch.join("data.partial"));
        }
        Ok(format!("run/ back on {back}; {data_msg}"))
    }
}

fn check_manifest(manifest: &Value, project: &str, path: &Path) -> Result<(), String> {
    let of = manifest
        .get("project")
        .and_then(Value::as_str)
        .unwrap_or("");
    if of != project {
        return Err(format!(
            "release {} was cooked for project {of:?}, not {project:?}",
            path.display()
        ));
    }
    Ok(())
}

/// Validates a final-mode release before anything is touched.
pub fn check_release(release: Option<&Path>, project: &str) -> Result<Value, String> {
    let path = release.ok_or(
        "final mode deploys only a release cooked in staging, and none was given: push to a \
         staging (cooking) environment first",
    )?;
    let manifest = archive::read_manifest(path)
        .map_err(|e| format!("cannot read release {}: {e}", path.display()))?;
    check_manifest(&manifest, project, path)?;
    Ok(manifest)
}

/// The archive ids under `archives/` (hidden entries skipped).
pub fn list_archives(l: &ProjectLayout) -> Vec<String> {
    fs::read_dir(l.archives())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The release ids under `releases/`.
pub fn list_releases(l: &ProjectLayout) -> Vec<String> {
    fs::read_dir(l.releases())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".tar.zst"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sorts deployment ids newest first by their recorded start time (ids made in the same second
/// do not sort by time), falling back on the id's own date.
pub fn sort_newest_first(l: &ProjectLayout, ids: &mut [String]) {
    let mut keyed: Vec<(String, String)> =
        ids.iter().map(|id| (time_key(l, id), id.clone())).collect();
    keyed.sort_unstable_by(|a, b| b.cmp(a));
    for (slot, (_, id)) in ids.iter_mut().zip(keyed) {
        *slot = id;
    }
}

/// A sortable `YYYYMMDDhhmmss` + nanoseconds key for a deployment.
pub fn time_key(l: &ProjectLayout, id: &str) -> String {
    let from_status = read_status(l, id)
        .and_then(|s| s.get("time").and_then(Value::as_str).map(str::to_string))
        .and_then(|t| {
            let t = time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .ok()?;
            Some(t.unix_timestamp_nanos())
        });
    let nanos = from_status.or_else(|| {
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let t = time::PrimitiveDateTime::parse(id.get(..16)?, &fmt).ok()?;
        Some(t.assume_utc().unix_timestamp_nanos())
    });
    format!("{:030}", nanos.unwrap_or(0).max(0))
}

/// `archives/<id>/status.json`.
pub fn read_status(l: &ProjectLayout, id: &str) -> Option<Value> {
    let bytes = fs::read(l.archive(id).join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Deployments whose tree is still kept, mapped to the archive holding it:
/// `archives/<A>/run` holds the tree of `A`'s `previous`.
pub fn available_trees(l: &ProjectLayout) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in list_archives(l) {
        if !l.archive(&a).join("run").is_dir() {
            continue;
        }
        if let Some(prev) = read_status(l, &a).and_then(|s| {
            s.get("previous")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) && validate_deploy_id(&prev).is_ok()
        {
            out.push((prev, a));
        }
    }
    out.sort();
    out
}
