//! The step runner, as a state machine: the mode's steps in PRODUCT.md's order, the journal
//! written before each, the rollback on failure, the requested rollback, and the resumption of
//! an interrupted job. The built-in steps' filesystem work is in `steps.rs`, the records of
//! finished deployments in `history.rs`.
//!
//! Every filesystem move is idempotent ("if the source is still there, move it"), so the undo
//! and the resumption can run again after a crash at any instant.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corpus_states::{Phase, ProjectSettings};
use serde_json::Value;

use super::archive::Limits;
use super::error::{IoContext, NO_SPACE_TEXT, StepError, StepFailure};
use super::history;
use super::journal::{DeployJournal, DeployProgress, JobSpec, JournalKind};
use super::layout::ProjectLayout;
use super::step::{
    COMMIT_AFTER, COOKING_STEPS, EDITABLE_STEPS, FINAL_STEPS, ROLLBACK_COMMIT_AFTER,
    ROLLBACK_STEPS, Step, UNDO_STEPS,
};
use super::{
    Finished, JobOutcome, Mode, PhaseFileSources, ReleaseArchive, Reporter, Status, StepStatus,
};
use crate::state::{Executor, ServiceControl};

pub(super) type StepResult = Result<(), StepFailure>;

/// One job in progress on one project (the project lock is held by the caller).
pub struct Engine<'a> {
    pub layout: ProjectLayout,
    pub spec: JobSpec,
    /// `spec.common.data` as the lifecycle reads it (checked before the job started).
    pub settings: ProjectSettings,
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
    /// What `service.*` states drive: systemd, or a recording fake in tests.
    pub services: Arc<dyn ServiceControl>,
    /// Where `salt://` sources come from and how templates render, per phase.
    pub file_sources: Arc<dyn PhaseFileSources>,
    /// The `corpus-agent` binary a confined phase's child runs (`confined.rs`).
    pub phase_program: PathBuf,
    /// Where HTTP health checks and webhooks may go.
    pub outbound: crate::config::OutboundAllow,
}

impl Engine<'_> {
    fn steps(&self) -> &'static [Step] {
        if self.journal.kind == JournalKind::Rollback {
            return ROLLBACK_STEPS;
        }
        match self.journal.mode {
            Mode::Editable => EDITABLE_STEPS,
            Mode::Cooking => COOKING_STEPS,
            Mode::Final => FINAL_STEPS,
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.journal.deploy_id
    }

    pub(super) fn archive_dir(&self) -> PathBuf {
        self.layout.archive(&self.journal.deploy_id)
    }

    pub(super) fn report(&mut self, step: Step, status: StepStatus, comment: &str, took: Duration) {
        self.reporter
            .step(step, "", status, Value::Null, comment, took);
    }

    fn save_journal(&self) -> Result<(), StepError> {
        self.journal
            .save(&self.layout)
            .at("write the deploy journal", self.layout.journal_file())
    }

    /// The test-only pause: `CORPUS_TEST_PAUSE_AT=<name>` blocks here forever after writing
    /// `<project>/.paused-<name>`, so a test can SIGKILL the agent at this boundary.
    fn maybe_pause(&self, name: &str) {
        if !self.pause {
            return;
        }
        if std::env::var("CORPUS_TEST_PAUSE_AT").ok().as_deref() == Some(name) {
            let _ = fs::write(self.layout.dir.join(format!(".paused-{name}")), b"");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    /// Runs the job's steps from `from` (an index into the step list) to the end.
    pub fn run_from(&mut self, from: usize) -> JobOutcome {
        let steps = self.steps();
        for &step in &steps[from.min(steps.len())..] {
            self.journal.step = Some(step);
            if let Err(e) = self.save_journal() {
                return self.fail(StepFailure::new(step, e));
            }
            self.maybe_pause(step.as_str());
            if let Err(f) = self.run_step(step) {
                if self.journal.phase == DeployProgress::Committed {
                    // Past the health check the deploy stands: report and carry on.
                    continue;
                }
                return self.fail(f);
            }
            let commits = match self.journal.kind {
                JournalKind::Deploy => COMMIT_AFTER,
                JournalKind::Rollback | JournalKind::Destroy => ROLLBACK_COMMIT_AFTER,
            };
            if step == commits {
                self.journal.phase = DeployProgress::Committed;
            }
        }
        self.succeed()
    }

    /// Resumes at the step recorded in the journal (it may have been interrupted midway).
    pub fn resume(&mut self) -> JobOutcome {
        let at = self
            .steps()
            .iter()
            .position(|s| Some(*s) == self.journal.step)
            .unwrap_or(0);
        self.run_from(at)
    }

    fn run_step(&mut self, step: Step) -> StepResult {
        let started = Instant::now();
        let builtin: Result<Option<String>, StepError> = match step {
            Step::PreInstall => self.pre_install().map(Some),
            Step::BackupData => self.backup_data(),
            Step::Archive => self.archive_live().map(Some),
            Step::Switch => self.switch().map(Some),
            Step::Sync => self.sync_source().map(Some),
            Step::LinkRun => self.link_run().map(Some),
            Step::Unpack => self.unpack_release().map(Some),
            Step::Bundle => self.bundle().map(Some),
            Step::Healthcheck => self.healthcheck(),
            Step::Rotate => Ok(Some(self.rotate())),
            Step::Phase(Phase::Notify) => {
                self.notify(Status::Success);
                return self.run_phase(Phase::Notify);
            }
            Step::Phase(phase) => return self.run_phase(phase),
            Step::Revert
            | Step::Validate
            | Step::Lock
            | Step::Webhook
            | Step::Rollback
            | Step::Destroy => Err(StepError::Invalid(format!(
                "step {step} is not part of a mode's step list"
            ))),
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
            Err(error) => {
                self.report(step, StepStatus::Failed, &error.to_string(), took);
                Err(StepFailure::new(step, error))
            }
        }
    }

    /// Runs `.salt/<phase>.sls` with the executor, one event per state.
    pub fn run_phase(&mut self, phase: Phase) -> StepResult {
        let step = Step::Phase(phase);
        let plan = self.spec.plans.phase(phase);
        if plan.chunks.is_empty() {
            let comment = format!("no .salt/{}", phase.sls_file());
            self.report(step, StepStatus::Skipped, &comment, Duration::ZERO);
            return Ok(());
        }
        let file_root = self.file_root().map_err(|e| StepFailure::new(step, e))?;
        match crate::confine::Identity::from_common(&self.spec.common) {
            Err(e) => return Err(StepFailure::new(step, e.into())),
            Ok(Some(identity)) => {
                return self.run_phase_confined(phase, &plan, file_root, identity);
            }
            Ok(None) => {}
        }
        let sources = self
            .file_sources
            .for_phase(&file_root, self.template_context());
        let executor = Executor {
            test: false,
            sources: sources.as_ref(),
            services: self.services.as_ref(),
        };
        let mut failed: Option<(String, String)> = None;
        let mut disk_full = false;
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
                // A command's comment does not carry its output: ENOSPC shows in stderr.
                disk_full = r
                    .changes
                    .get("stderr")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.contains(NO_SPACE_TEXT));
            }
            reporter.step(
                step,
                &r.id,
                status,
                Value::Object(r.changes.clone()),
                &r.comment,
                Duration::from_secs_f64(r.duration.max(0.0) / 1000.0),
            );
        });
        match failed {
            None => Ok(()),
            Some((state, comment)) => {
                let mut failure = StepFailure::new(
                    step,
                    StepError::State {
                        phase,
                        state,
                        comment,
                    },
                );
                failure.disk_full |= disk_full;
                Err(failure)
            }
        }
    }

    // ---- ends of a job --------------------------------------------------------------------

    /// Records the job's end: its deployment record, then its result handed to the reporter
    /// (which keeps it), and only then the journal goes. A crash before the journal goes runs
    /// recovery again, which ends here again with the same result.
    fn finish(&mut self, status: Status, message: String) -> JobOutcome {
        self.journal.message = message.clone();
        let mut message = message;
        if let Err(e) = history::write_status(self, status) {
            message.push_str(&format!(" (and {e})"));
        }
        let release = if status == Status::Success {
            // A deploy resumed after a crash bundled its release in the run that died.
            self.release_out.take().or_else(|| self.kept_release())
        } else {
            None
        };
        let mut outcome = JobOutcome {
            status,
            failed_step: self
                .journal
                .failed_step
                .map_or_else(String::new, |s| s.as_str().to_string()),
            failed_state: self.journal.failed_state.clone(),
            message,
            deploy_id: self.journal.deploy_id.clone(),
            release,
        };
        let live = self.layout.live_id();
        self.reporter.finished(&Finished {
            env_uuid: &self.journal.env_uuid,
            project: &self.journal.project,
            live: live.as_deref(),
            outcome: &outcome,
        });
        if let Err(e) = DeployJournal::remove(&self.layout) {
            outcome
                .message
                .push_str(&format!(" (and cannot remove the journal: {e})"));
        }
        outcome
    }

    /// The release a cooking deploy bundled, read back from `releases/<id>.json`.
    fn kept_release(&self) -> Option<ReleaseArchive> {
        if self.journal.kind != JournalKind::Deploy || self.journal.mode != Mode::Cooking {
            return None;
        }
        history::kept_release(&self.layout, self.id())
    }

    fn succeed(&mut self) -> JobOutcome {
        let msg = if self.journal.kind == JournalKind::Rollback {
            format!(
                "rolled back to {}",
                self.journal.target.as_deref().unwrap_or("?")
            )
        } else {
            format!("deployed {}", self.journal.deploy_id)
        };
        self.finish(Status::Success, msg)
    }

    /// A step failed: editable deploys stop here; cooking and final deploys and requested
    /// rollbacks are undone.
    pub fn fail(&mut self, f: StepFailure) -> JobOutcome {
        let message = f.error.to_string();
        self.journal.failed_step = Some(f.step);
        self.journal.failed_state = f.state;
        self.journal.message = message.clone();
        self.journal.disk_full = f.disk_full;
        if self.journal.mode == Mode::Editable {
            if self.journal.kind == JournalKind::Deploy {
                self.notify(Status::Failed);
            }
            let msg = format!("step {} failed: {message}", f.step);
            return self.finish(Status::Failed, msg);
        }
        self.undo()
    }

    /// The rollback of a failed (or interrupted) deploy or requested rollback: stop.sls, the
    /// failed tree kept as `archives/<id>/run.failed` (removed when the disk is full), previous
    /// tree and data back (renames), restore.sls, start.sls.
    pub fn undo(&mut self) -> JobOutcome {
        let t = Instant::now();
        self.journal.phase = DeployProgress::RollingBack;
        let first = self.journal.message.clone();
        let failed_step = self.journal.failed_step.map_or("", Step::as_str);
        self.report(
            Step::Rollback,
            StepStatus::Running,
            &format!("step {failed_step} failed: {first}"),
            Duration::ZERO,
        );
        let mut problems = Vec::new();
        for &step in UNDO_STEPS {
            self.journal.step = Some(step);
            if let Err(e) = self.save_journal() {
                problems.push(e.to_string());
            }
            self.maybe_pause(&format!("rollback_{step}"));
            let res = match step {
                Step::Revert => {
                    let started = Instant::now();
                    match self.revert() {
                        Ok(msg) => {
                            self.report(step, StepStatus::Success, &msg, started.elapsed());
                            Ok(())
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            self.report(step, StepStatus::Failed, &msg, started.elapsed());
                            Err(StepFailure::new(step, e))
                        }
                    }
                }
                Step::Phase(phase) => self.run_phase(phase),
                other => Err(StepFailure::new(
                    other,
                    StepError::Invalid(format!("step {other} is not part of the undo")),
                )),
            };
            if let Err(f) = res {
                problems.push(f.error.to_string());
            }
        }
        let (status, mut msg) = self.undo_message(failed_step, &first, &problems);
        let st = if problems.is_empty() {
            StepStatus::Success
        } else {
            StepStatus::Failed
        };
        self.report(Step::Rollback, st, &msg, t.elapsed());
        self.notify(status);
        if let Err(f) = self.run_phase(Phase::Notify) {
            msg.push_str(&format!(" (notify: {})", f.error));
        }
        self.finish(status, msg)
    }

    /// The undo's status and message. A deploy undone completely is `rolled_back`; an undo
    /// that did not complete is `failed` (the service may be down: a state of the undo failed),
    /// and so is a requested rollback that had to be undone.
    fn undo_message(
        &self,
        failed_step: &str,
        first: &str,
        problems: &[String],
    ) -> (Status, String) {
        let back_to = self
            .journal
            .previous_live
            .as_deref()
            .unwrap_or("the empty tree");
        let at_state = if self.journal.failed_state.is_empty() {
            String::new()
        } else {
            format!(" at state {:?}", self.journal.failed_state)
        };
        let what = match (self.journal.kind, &self.journal.target) {
            (JournalKind::Rollback, target) => format!(
                "the rollback to {} failed at step {failed_step}{at_state}: {first}",
                target.as_deref().unwrap_or("?")
            ),
            _ => format!("step {failed_step} failed{at_state}: {first}"),
        };
        if !problems.is_empty() {
            return (
                Status::Failed,
                format!(
                    "{what}; returning to {back_to} did not complete ({}): the service may be \
                     down; fix the project, then push again or roll back",
                    problems.join("; ")
                ),
            );
        }
        let full = if self.journal.disk_full {
            "; the disk is full: the failed tree and data were removed, not kept"
        } else {
            ""
        };
        match self.journal.kind {
            JournalKind::Rollback => (
                Status::Failed,
                format!("{what}; undone: back on {back_to}{full}"),
            ),
            _ => (
                Status::RolledBack,
                format!("{what}; rolled back to {back_to}{full}"),
            ),
        }
    }
}
