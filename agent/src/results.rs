//! The agent's outbox of job results: `STATE_DIR/results/<job id>.json`, written (fsynced)
//! before the lifecycle removes a job's journal, kept until the master acknowledges it, and
//! resent in every Hello. So a crash or a stop at any instant after a job ends leaves its result
//! on disk, and a master restart or a broken link loses none.
//!
//! A cooking result whose release is not uploaded yet keeps the release's path
//! (`pending_release`): it is not offered to the master until the upload is done (the master
//! would record a deploy without its release), but its job is listed as running, so the master
//! waits for it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use corpus_proto::{BlobRef, JobFinished, JobStatus};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::lifecycle::{self, Finished, JobOutcome, ReleaseArchive};

/// Ids of the jobs this agent is running; shared by every link it has over its life.
pub type RunningJobs = Arc<Mutex<BTreeSet<String>>>;

fn results_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("results")
}

/// Whether `id` is safe as a file name (the master chooses job ids).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A job's result as kept on disk until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub job_id: String,
    /// With `project`, where a pending release upload goes (absent in results of older agents).
    #[serde(default)]
    pub env_uuid: String,
    #[serde(default)]
    pub project: String,
    pub status: i32,
    pub failed_step: String,
    pub failed_state: String,
    pub message: String,
    pub deploy_id: String,
    pub release: Option<(String, u64)>,
    pub duration_ms: u64,
    pub used_bytes: u64,
    pub live_deploy_id: String,
    /// The cooked release still to upload; the result goes to the master once it is done.
    #[serde(default)]
    pub pending_release: Option<ReleaseArchive>,
}

/// `text` cut to at most `cap` bytes (on a character boundary), saying so.
pub fn capped_text(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [corpus: cut at {cap} of {} bytes]",
        &text[..end],
        text.len()
    )
}

/// What a result's message may weigh (README, "Limits").
pub const MESSAGE_CAP_BYTES: usize = 64 * 1024;

/// The wire status of a lifecycle status.
pub fn wire_status(status: lifecycle::Status) -> JobStatus {
    match status {
        lifecycle::Status::Running => JobStatus::Running,
        lifecycle::Status::Success => JobStatus::Success,
        lifecycle::Status::Failed => JobStatus::Failed,
        lifecycle::Status::RolledBack => JobStatus::RolledBack,
        lifecycle::Status::Refused => JobStatus::Refused,
    }
}

impl StoredResult {
    /// The result of `job_id`; a release in the outcome is pending upload.
    pub fn of(job_id: &str, result: &Finished<'_>, duration_ms: u64) -> StoredResult {
        let outcome: &JobOutcome = result.outcome;
        StoredResult {
            job_id: job_id.to_owned(),
            env_uuid: result.env_uuid.to_owned(),
            project: result.project.to_owned(),
            status: wire_status(outcome.status) as i32,
            failed_step: outcome.failed_step.clone(),
            failed_state: outcome.failed_state.clone(),
            message: capped_text(&outcome.message, MESSAGE_CAP_BYTES),
            deploy_id: outcome.deploy_id.clone(),
            release: None,
            duration_ms,
            used_bytes: 0,
            live_deploy_id: result.live.unwrap_or_default().to_owned(),
            pending_release: outcome.release.clone(),
        }
    }

    pub fn into_message(self) -> JobFinished {
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
}

/// Writes a result durably (temporary file, fsync, rename, fsync of the directory).
pub fn keep(state_dir: &Path, result: &StoredResult) -> io::Result<()> {
    if !valid_id(&result.job_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("job id {:?} is not a valid file name", result.job_id),
        ));
    }
    let dir = results_dir(state_dir);
    let text = serde_json::to_vec(result).map_err(io::Error::other)?;
    std::fs::create_dir_all(&dir)?;
    crate::lifecycle::write_atomic(&dir.join(format!("{}.json", result.job_id)), &text, 0o600)
}

/// [`keep`], logging a failure: the result still goes to the master from memory.
pub fn keep_or_warn(state_dir: &Path, result: &StoredResult) {
    if let Err(e) = keep(state_dir, result) {
        warn!(
            job = %result.job_id,
            "cannot keep the job result in {}: {e}",
            results_dir(state_dir).display()
        );
    }
}

fn stored(state_dir: &Path) -> Vec<StoredResult> {
    let Ok(entries) = std::fs::read_dir(results_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<StoredResult>(&bytes).ok())
        .collect()
}

/// Results ready for the master and not acknowledged yet, for the next Hello.
pub fn unacknowledged(state_dir: &Path) -> Vec<JobFinished> {
    stored(state_dir)
        .into_iter()
        .filter(|r| r.pending_release.is_none())
        .map(StoredResult::into_message)
        .collect()
}

/// Results whose release is still to upload (a stop or a crash cut the upload short).
pub fn pending_uploads(state_dir: &Path) -> Vec<StoredResult> {
    stored(state_dir)
        .into_iter()
        .filter(|r| r.pending_release.is_some())
        .collect()
}

/// Forgets an acknowledged result.
pub fn acknowledge(state_dir: &Path, job_id: &str) {
    if valid_id(job_id) {
        let _ = std::fs::remove_file(results_dir(state_dir).join(format!("{job_id}.json")));
    }
}

/// What the agent tells the master it knows of: jobs it runs, and jobs whose result the master
/// has not acknowledged yet (or whose release is still uploading).
pub fn known_jobs(running: &RunningJobs, state_dir: &Path) -> Vec<String> {
    let mut known: BTreeSet<String> = running.lock().map(|set| set.clone()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(results_dir(state_dir)) {
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_string_lossy().strip_suffix(".json") {
                known.insert(id.to_owned());
            }
        }
    }
    known.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(job_id: &str, pending: bool) -> StoredResult {
        StoredResult {
            job_id: job_id.into(),
            env_uuid: "env".into(),
            project: "app".into(),
            status: JobStatus::Success as i32,
            failed_step: String::new(),
            failed_state: String::new(),
            message: "deployed".into(),
            deploy_id: "d1".into(),
            release: None,
            duration_ms: 1,
            used_bytes: 0,
            live_deploy_id: "d1".into(),
            pending_release: pending.then(|| ReleaseArchive {
                path: "/srv/app/releases/d1.tar.zst".into(),
                sha256: "ab".repeat(32),
                size: 10,
                manifest: serde_json::json!({"project": "app"}),
            }),
        }
    }

    #[test]
    fn a_result_waiting_for_its_release_upload_is_known_but_not_offered() {
        let dir = tempfile::tempdir().unwrap();
        keep(dir.path(), &result("job-1", true)).unwrap();
        keep(dir.path(), &result("job-2", false)).unwrap();
        let offered: Vec<String> = unacknowledged(dir.path())
            .into_iter()
            .map(|f| f.job_id)
            .collect();
        assert_eq!(offered, ["job-2"]);
        assert_eq!(pending_uploads(dir.path()), [result("job-1", true)]);
        let running = RunningJobs::default();
        assert_eq!(known_jobs(&running, dir.path()), ["job-1", "job-2"]);
        acknowledge(dir.path(), "job-2");
        assert!(unacknowledged(dir.path()).is_empty());
    }

    #[test]
    fn results_written_by_earlier_agents_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"job_id":"job-9","status":2,"failed_step":"","failed_state":"",
            "message":"deployed","deploy_id":"d9","release":["cd",5],"duration_ms":3,
            "used_bytes":0,"live_deploy_id":"d9"}"#;
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(dir.path().join("results/job-9.json"), old).unwrap();
        let sent = unacknowledged(dir.path());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].live_deploy_id, "d9");
        assert_eq!(sent[0].release.as_ref().map(|r| r.size), Some(5));
    }
}
