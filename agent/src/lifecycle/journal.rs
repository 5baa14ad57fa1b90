//! The deploy journal: `.corpus/journal.json`, rewritten (atomically, fsynced) before every
//! step, plus `.corpus/job.json`, written once, with what recovery needs to run state files.
//! Recovery reads both after a crash and either finishes the deploy or undoes it.

use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

use super::layout::{ProjectLayout, write_atomic};
use super::step::{Step, optional_step};
use super::{Job, JobKind, Mode};

/// What a journal's job does. Serialised as `deploy`, `rollback` or `destroy`, the strings
/// journals (and `status.json` records and webhooks) have always carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    /// A push: the mode's steps, undone on failure (cooking, final).
    Deploy,
    /// A requested rollback: [`super::step::ROLLBACK_STEPS`], never undone.
    Rollback,
    /// `corpus destroy`: stop.sls then removal; never journaled on disk.
    Destroy,
}

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployProgress {
    /// Running the mode's steps; a crash here is undone (or, editable, left as is).
    Forward,
    /// The deploy passed its health check; a crash here finishes it.
    Committed,
    /// Undoing a failure; a crash here undoes again (every move is idempotent).
    RollingBack,
}

/// The journal of one running job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployJournal {
    pub job_id: String,
    /// A deploy, a requested rollback or (in memory only) a destroy.
    pub kind: JournalKind,
    pub env_uuid: String,
    pub project: String,
    pub mode: Mode,
    pub deploy_id: String,
    pub commit: String,
    pub requested_by: String,
    /// RFC 3339 UTC.
    pub started: String,
    /// The step about to run, or running; none before the first.
    #[serde(with = "optional_step")]
    pub step: Option<Step>,
    pub phase: DeployProgress,
    /// The live tree before the job (`deploy/current`'s target).
    pub previous_live: Option<String>,
    /// `run/` was a real directory before the job (moved into the archive, restored as
    /// `deploy/pre-<id>`).
    pub run_was_dir: bool,
    /// Whether `data/` is backed up into the archive (`backup_data`).
    pub backup_data: bool,
    /// Requested rollback: the deployment to return to and the archive holding its tree.
    pub target: Option<String>,
    pub source_archive: Option<String>,
    /// Set when a step failed (or on recovery: the step that was interrupted).
    #[serde(with = "optional_step")]
    pub failed_step: Option<Step>,
    pub failed_state: String,
    pub message: String,
    /// The failure was the disk filling up: the undo removes the failed tree and data instead
    /// of keeping them. (Absent, so false, in journals of earlier agents.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_full: bool,
}

/// What recovery needs from the job to run state files and notify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub plans: corpus_states::ProjectPlan,
    pub common: serde_json::Value,
    pub pillar: serde_json::Value,
    pub grains: serde_json::Value,
}

impl DeployJournal {
    pub fn new(job: &Job, started: String) -> Self {
        DeployJournal {
            job_id: job.job_id.clone(),
            kind: match job.kind {
                JobKind::Rollback { .. } => JournalKind::Rollback,
                JobKind::Destroy => JournalKind::Destroy,
                JobKind::Init | JobKind::Deploy => JournalKind::Deploy,
            },
            env_uuid: job.env_uuid.clone(),
            project: job.project.clone(),
            mode: job.mode,
            deploy_id: job.deploy_id.clone(),
            commit: job.commit.clone(),
            requested_by: job.requested_by.clone(),
            started,
            step: None,
            phase: DeployProgress::Forward,
            previous_live: None,
            run_was_dir: false,
            backup_data: true,
            target: None,
            source_archive: None,
            failed_step: None,
            failed_state: String::new(),
            message: String::new(),
            disk_full: false,
        }
    }

    pub fn save(&self, layout: &ProjectLayout) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(&layout.journal_file(), &text, 0o600)
    }

    pub fn load(layout: &ProjectLayout) -> io::Result<Option<DeployJournal>> {
        match fs::read(layout.journal_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", layout.journal_file().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The job is over: the journal goes (the job file with it).
    pub fn remove(layout: &ProjectLayout) -> io::Result<()> {
        let _ = fs::remove_file(layout.job_file());
        match fs::remove_file(layout.journal_file()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => super::layout::sync_dir(&layout.state_dir()),
        }
    }
}

impl JobSpec {
    pub fn of(job: &Job) -> Self {
        JobSpec {
            plans: job.plans.clone(),
            common: job.common.clone(),
            pillar: job.pillar.clone(),
            grains: job.grains.clone(),
        }
    }

    pub fn save(&self, layout: &ProjectLayout) -> io::Result<()> {
        let text = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(&layout.job_file(), &text, 0o600)
    }

    /// The saved job, or an empty one (no state files) when it is missing or unreadable.
    pub fn load(layout: &ProjectLayout) -> JobSpec {
        fs::read(layout.job_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(JobSpec {
                plans: Default::default(),
                common: serde_json::Value::Null,
                pillar: serde_json::Value::Null,
                grains: serde_json::Value::Null,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal as the agent wrote it before steps and kinds were typed, mid-undo.
    const TODAYS_JOURNAL: &str = r#"{
  "job_id": "j-1",
  "kind": "deploy",
  "env_uuid": "e1",
  "project": "app",
  "mode": "cooking",
  "deploy_id": "20250102T030405Z-0f8fad5b-d9cb-469f-a165-70867728950e",
  "commit": "abc123",
  "requested_by": "alice",
  "started": "2025-01-02T03:04:05Z",
  "step": "post_build",
  "phase": "rolling_back",
  "previous_live": null,
  "run_was_dir": false,
  "backup_data": true,
  "target": null,
  "source_archive": null,
  "failed_step": "build",
  "failed_state": "compile",
  "message": "state \"compile\" of build.sls failed: exit 1"
}"#;

    #[test]
    fn journals_in_todays_format_still_load_and_save_the_same() {
        let j: DeployJournal = serde_json::from_str(TODAYS_JOURNAL).unwrap();
        assert_eq!(j.kind, JournalKind::Deploy);
        assert_eq!(j.step, Some(Step::Phase(corpus_states::Phase::PostBuild)));
        assert_eq!(
            j.failed_step,
            Some(Step::Phase(corpus_states::Phase::Build))
        );
        assert_eq!(j.phase, DeployProgress::RollingBack);
        let again = serde_json::to_value(&j).unwrap();
        let before: serde_json::Value = serde_json::from_str(TODAYS_JOURNAL).unwrap();
        assert_eq!(again, before, "the format on disk does not change");

        let fresh = TODAYS_JOURNAL
            .replace(r#""kind": "deploy""#, r#""kind": "rollback""#)
            .replace(r#""step": "post_build""#, r#""step": """#)
            .replace(r#""failed_step": "build""#, r#""failed_step": """#);
        let j: DeployJournal = serde_json::from_str(&fresh).unwrap();
        assert_eq!(j.kind, JournalKind::Rollback);
        assert_eq!((j.step, j.failed_step), (None, None));
        assert_eq!(serde_json::to_value(&j).unwrap()["step"], "");
    }

    #[test]
    fn a_journal_naming_an_unknown_step_is_refused() {
        let bad = TODAYS_JOURNAL.replace(r#""step": "post_build""#, r#""step": "postbuild""#);
        let err = serde_json::from_str::<DeployJournal>(&bad).unwrap_err();
        assert!(err.to_string().contains("postbuild"), "{err}");
    }
}
