//! The agent's outbox of job results: `STATE_DIR/results/<job id>.json`, written (fsynced)
//! before the lifecycle removes a job's journal, kept until the master acknowledges it, and
//! resent in every Hello. So a crash or a stop at any instant after a job ends leaves its result
//! on disk, and a master restart or a broken link loses none.
//!
//! Each job's events are kept beside its result (`<job id>.events`, one JSON line each, appended
//! as they are sent and fsynced before the result is kept): the master's ack says how many it
//! holds (`Ack.events_stored`), and the agent forgets the job only when that covers the last
//! one, otherwise it resends the missing events, then the result. So events lost on a broken
//! link, or in a master killed as the job ended, reach the master anyway.
//!
//! A cooking result whose release is not uploaded yet keeps the release's path
//! (`pending_release`): it is not offered to the master until the upload is done (the master
//! would record a deploy without its release), but its job is listed as running, so the master
//! waits for it.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use corpus_proto::{AgentMessage, BlobRef, JobEvent, JobFinished, JobStatus, agent_message};
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
    /// How many times the events the master missed were resent: bounded, so a gap the agent
    /// cannot fill (an event it never managed to keep) does not loop forever.
    #[serde(default)]
    pub event_resends: u32,
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
            event_resends: 0,
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

/// How often the agent resends a job's missing events before it forgets them anyway.
pub const MAX_EVENT_RESENDS: u32 = 3;

/// What to do with an ack.
#[derive(Debug)]
pub enum AckOutcome {
    /// The master holds the result and every event: the job is forgotten.
    Forgotten,
    /// The master misses these events: send them, then the result again.
    Resend(Vec<AgentMessage>),
}

/// Applies the master's ack of `job_id`, which holds `events_stored` events from the first
/// without a gap: the job is forgotten when that covers every event the agent kept, otherwise
/// the missing events and the result are returned for sending again (at most
/// [`MAX_EVENT_RESENDS`] times).
pub fn acknowledge(state_dir: &Path, job_id: &str, events_stored: u64) -> AckOutcome {
    if !valid_id(job_id) {
        return AckOutcome::Forgotten;
    }
    let missing: Vec<JobEvent> = kept_events(state_dir, job_id)
        .into_iter()
        .filter(|e| e.sequence > events_stored)
        .collect();
    let result_path = results_dir(state_dir).join(format!("{job_id}.json"));
    let result = std::fs::read(&result_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<StoredResult>(&bytes).ok());
    match result {
        Some(mut result) if !missing.is_empty() && result.event_resends < MAX_EVENT_RESENDS => {
            result.event_resends += 1;
            keep_or_warn(state_dir, &result);
            let mut messages: Vec<AgentMessage> = missing
                .into_iter()
                .map(|e| AgentMessage {
                    body: Some(agent_message::Body::Event(e)),
                })
                .collect();
            messages.push(AgentMessage {
                body: Some(agent_message::Body::Finished(result.into_message())),
            });
            AckOutcome::Resend(messages)
        }
        _ => {
            if !missing.is_empty() {
                warn!(
                    job = %job_id,
                    missing = missing.len(),
                    "the master still misses events of this job after {MAX_EVENT_RESENDS} \
                     resends: forgetting them"
                );
            }
            let _ = std::fs::remove_file(result_path);
            let _ = std::fs::remove_file(events_file(state_dir, job_id));
            AckOutcome::Forgotten
        }
    }
}

fn events_file(state_dir: &Path, job_id: &str) -> PathBuf {
    results_dir(state_dir).join(format!("{job_id}.events"))
}

/// Removes the event logs of jobs that have no result and never will: at start, once the
/// recovery has kept the results of the jobs it finished, a log without a result belongs to a
/// job that died before its journal (the master fails such a job as lost).
pub fn forget_orphan_events(state_dir: &Path) {
    let dir = results_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(job_id) = name.strip_suffix(".events")
            && !dir.join(format!("{job_id}.json")).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One event as kept on disk (the wire type has no serde).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    sequence: u64,
    step: String,
    state_id: String,
    result: i32,
    /// The changes' JSON text (the agent encodes it, so it is UTF-8).
    changes: String,
    comment: String,
    duration_ms: u64,
    timestamp_unix_ms: i64,
}

/// A job's kept events, appended as they are sent. Appends are not fsynced one by one (a
/// 1,000-state deploy would wait on the disk 1,000 times): [`EventLog::sync`] runs before the
/// job's result is kept, so a kept result has all its events on disk.
pub struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl EventLog {
    pub fn new(state_dir: &Path, job_id: &str) -> Self {
        EventLog {
            path: events_file(state_dir, job_id),
            file: None,
        }
    }

    /// The last sequence kept for this job (a recovered job continues from it), 0 if none.
    pub fn last_sequence(&self) -> u64 {
        read_events(&self.path)
            .iter()
            .map(|e| e.sequence)
            .max()
            .unwrap_or(0)
    }

    /// Appends an event; a failure is logged (the event still goes to the master live).
    pub fn append(&mut self, event: &JobEvent) {
        if let Err(e) = self.try_append(event) {
            warn!(job = %event.job_id, "cannot keep an event in {}: {e}", self.path.display());
            // Reopened at the next event: a full disk may have room again.
            self.file = None;
        }
    }

    fn try_append(&mut self, event: &JobEvent) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                self.file.insert(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                )
            }
        };
        let stored = StoredEvent {
            sequence: event.sequence,
            step: event.step.clone(),
            state_id: event.state_id.clone(),
            result: event.result,
            changes: String::from_utf8_lossy(&event.changes_json).into_owned(),
            comment: event.comment.clone(),
            duration_ms: event.duration_ms,
            timestamp_unix_ms: event.timestamp_unix_ms,
        };
        let mut line = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per line: a crash can tear only the last line, which reading skips.
        file.write_all(&line)
    }

    /// Makes the appended events durable.
    pub fn sync(&mut self) {
        if let Some(file) = &self.file
            && let Err(e) = file.sync_all()
        {
            warn!("cannot sync the events in {}: {e}", self.path.display());
        }
    }
}

fn read_events(path: &Path) -> Vec<StoredEvent> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    io::BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        // A line torn by a crash does not parse and is skipped.
        .filter_map(|line| serde_json::from_slice::<StoredEvent>(&line).ok())
        .collect()
}

/// The events kept for `job_id`, in sequence order, each once.
pub fn kept_events(state_dir: &Path, job_id: &str) -> Vec<JobEvent> {
    let mut events: Vec<JobEvent> = read_events(&events_file(state_dir, job_id))
        .into_iter()
        .map(|e| JobEvent {
            job_id: job_id.to_owned(),
            sequence: e.sequence,
            step: e.step,
            state_id: e.state_id,
            result: e.result,
            changes_json: e.changes.into_bytes(),
            comment: e.comment,
            duration_ms: e.duration_ms,
            timestamp_unix_ms: e.timestamp_unix_ms,
        })
        .collect();
    events.sort_by_key(|e| e.sequence);
    events.dedup_by_key(|e| e.sequence);
    events
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
            event_resends: 0,
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
        assert!(matches!(
            acknowledge(dir.path(), "job-2", 0),
            AckOutcome::Forgotten
        ));
        assert!(unacknowledged(dir.path()).is_empty());
    }

    #[test]
    fn event_logs_without_a_result_are_forgotten_at_start() {
        let dir = tempfile::tempdir().unwrap();
        keep(dir.path(), &result("job-1", false)).unwrap();
        std::fs::write(dir.path().join("results/job-1.events"), "{}\n").unwrap();
        std::fs::write(dir.path().join("results/job-2.events"), "{}\n").unwrap();
        forget_orphan_events(dir.path());
        assert!(dir.path().join("results/job-1.events").exists());
        assert!(!dir.path().join("results/job-2.events").exists());
        assert!(dir.path().join("results/job-1.json").exists());
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
