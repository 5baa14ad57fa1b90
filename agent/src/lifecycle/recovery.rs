//! Recovery at agent start (and before a job on a project a crash left unfinished): from each
//! journal, finish a committed deploy or a requested rollback, and undo the rest.

use std::fs;

use super::engine::Engine;
use super::error::{StepError, StepFailure};
use super::journal::{DeployJournal, DeployProgress, JobSpec, JournalKind};
use super::layout::{self, ProjectLayout};
use super::lock::{LockHolder, ProjectLock};
use super::step::Step;
use super::{JobOutcome, Lifecycle, Mode, Reporter, now_rfc3339};

/// How long processes a killed agent left behind get between TERM and KILL at start.
const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Lifecycle {
    /// On agent start: finishes (or undoes) every deploy interrupted by a crash, from its
    /// journal, and returns each job's outcome.
    pub fn recover(
        &self,
        reporter_for: &mut dyn FnMut(&str) -> Box<dyn Reporter>,
    ) -> Vec<(String, JobOutcome)> {
        let mut out = Vec::new();
        // What a killed agent's phases left running would write into the trees recovery
        // restores: it is stopped first.
        for (_, identity) in crate::confine::recorded_environments(&self.root) {
            crate::confine::stop_environment_processes(&identity, LEFTOVER_GRACE);
        }
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
    pub(super) fn recover_locked(
        &self,
        layout: &ProjectLayout,
        reporter: &mut dyn Reporter,
    ) -> Option<JobOutcome> {
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
        let spec = JobSpec::load(layout);
        // The settings were checked when the job started; a job file lost to the crash leaves
        // the defaults, as it leaves no state files.
        let settings =
            corpus_states::ProjectSettings::from_common(&spec.common).unwrap_or_default();
        let mut engine = Engine {
            layout: layout.clone(),
            spec,
            settings,
            journal,
            reporter,
            pause: false,
            limits: self.limits,
            source: None,
            release: None,
            release_out: None,
            started: std::time::Instant::now(),
            services: self.services.clone(),
            file_sources: self.file_sources.clone(),
            phase_program: self.phase_program.clone(),
            outbound: self.outbound.clone(),
        };
        let j = &engine.journal;
        // The journal names the step it was in; before the first, the job stopped at its start.
        let step = j.step.unwrap_or(Step::PreInstall);
        let interrupted = |note| {
            StepFailure::new(
                step,
                StepError::Interrupted {
                    step: step.to_string(),
                    note,
                },
            )
        };
        let outcome = match (j.kind, j.phase, j.mode) {
            (_, DeployProgress::RollingBack, _) => engine.undo(),
            (JournalKind::Rollback, _, _) | (_, DeployProgress::Committed, _) => engine.resume(),
            (_, DeployProgress::Forward, Mode::Editable) => {
                engine.fail(interrupted("; editable mode leaves the tree as is"))
            }
            (_, DeployProgress::Forward, _) => engine.fail(interrupted("")),
        };
        Some(outcome)
    }
}
