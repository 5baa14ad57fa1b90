//! The retention policy: finished jobs (with their events, payloads and pillar revisions) and
//! expired sessions are purged in the background so the database does not grow forever.
//! A job is removed only when it is older than the policy's age, beyond the newest jobs kept
//! per project, and needed by nothing: never a running job, the job of a live deployment, the
//! newest deployment a destroy or rollback replays, nor the job that cooked a release.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracing::{info, warn};

use crate::MasterState;
use crate::error::MasterResult;
use crate::settings::Retention;
use crate::store::{JobKind, JobRecord, JobState, project_key};

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub jobs: usize,
    pub sessions: usize,
}

/// Removes what the policy no longer keeps, as of `now` (unix seconds). Blocking.
pub fn purge(state: &MasterState, policy: &Retention, now: i64) -> MasterResult<Purged> {
    let sessions = state.store.purge_expired_sessions(now)?;
    let cooked: HashSet<String> = state
        .store
        .all_releases()?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let mut by_project: HashMap<String, Vec<JobRecord>> = HashMap::new();
    for job in state.store.jobs()? {
        by_project
            .entry(project_key(&job.env_uuid, &job.project))
            .or_default()
            .push(job);
    }
    let oldest_kept =
        now.saturating_sub(i64::try_from(policy.job_age.as_secs()).unwrap_or(i64::MAX));
    let mut jobs = 0;
    for (_, mut history) in by_project {
        // Newest first.
        history.sort_by_key(|j| std::cmp::Reverse((j.created_at, j.created_ms)));
        let live = match history.first() {
            Some(j) if !j.project.is_empty() => state
                .store
                .project(&j.env_uuid, &j.project)?
                .and_then(|p| p.live_deploy),
            _ => None,
        };
        let newest_deployed = history
            .iter()
            .find(|j| {
                j.kind == JobKind::Deploy
                    && matches!(j.state, JobState::Success | JobState::RolledBack)
            })
            .map(|j| j.id.clone());
        for (rank, job) in history.iter().enumerate() {
            let needed = job.state == JobState::Running
                || live.as_deref() == Some(job.deploy_id.as_str())
                || newest_deployed.as_deref() == Some(job.id.as_str())
                || (!job.deploy_id.is_empty() && cooked.contains(&job.deploy_id));
            if needed || rank < policy.jobs_per_project || job.created_at >= oldest_kept {
                continue;
            }
            state.store.purge_job(job)?;
            jobs += 1;
        }
    }
    Ok(Purged { jobs, sessions })
}

/// Runs [`purge`] at start and then every `purge_every` (read again each time, so SIGHUP
/// applies), until `stop` says so.
pub async fn run(state: Arc<MasterState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let policy = state.settings().retention;
        let now = crate::auth::now_unix();
        let done = {
            let policy = policy.clone();
            state.blocking(move |s| purge(s, &policy, now)).await
        };
        match done {
            Ok(p) if p.jobs > 0 || p.sessions > 0 => {
                info!(jobs = p.jobs, sessions = p.sessions, "retention purge")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention purge failed; retrying at the next period"),
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.purge_every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{
        EventRecord, JobPayload, Mode, PillarRevision, ProjectRecord, ReleaseRecord, SessionRecord,
    };

    const DAY: i64 = 24 * 3600;

    fn job(id: &str, day: i64, kind: JobKind, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind,
            env_uuid: "env".into(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: format!("deploy-{id}"),
            requested_by: "alice".into(),
            agent: "node1".into(),
            commit: String::new(),
            created_at: day * DAY,
            created_ms: 0,
            state,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: None,
            source_blob: None,
            release_blob: None,
            target_deploy_id: None,
        }
    }

    #[test]
    fn the_purge_keeps_what_is_recent_or_needed_and_removes_the_rest_whole() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        use JobKind::{Deploy, Init};
        use JobState::{Failed, Running, Success};
        let jobs = [
            job("init", 1, Init, Success),        // old: purged
            job("cooked", 2, Deploy, Success),    // cooked a release: kept
            job("live", 3, Deploy, Success),      // the live deployment: kept
            job("old-fail", 4, Deploy, Failed),   // old: purged
            job("stuck", 5, Deploy, Running),     // running: kept
            job("newest-ok", 6, Deploy, Success), // newest deployment (destroy replays it)
            job("fail-a", 7, Deploy, Failed),     // old and not among the 2 newest: purged
            job("recent", 150, Deploy, Failed),   // younger than 90 days: kept
            job("latest", 151, Deploy, Failed),   // younger than 90 days: kept
        ];
        for j in &jobs {
            let revision = PillarRevision {
                env_uuid: "env".into(),
                project: "app".into(),
                job_id: j.id.clone(),
                created_at: j.created_at,
                files: Default::default(),
            };
            state
                .store
                .record_job(j, &JobPayload::default(), &[], Some(&revision))?;
            let event = EventRecord {
                sequence: 1,
                step: "build".into(),
                state_id: String::new(),
                result: "success".into(),
                changes: serde_json::Value::Null,
                comment: String::new(),
                duration_ms: 0,
                timestamp_ms: 0,
            };
            state.store.record_event(&j.id, &event)?;
        }
        state.store.put_project(&ProjectRecord {
            env_uuid: "env".into(),
            name: "app".into(),
            created_at: 0,
            quota_bytes: 1,
            used_bytes: 0,
            live_deploy: Some("deploy-live".into()),
        })?;
        state.store.record_release(
            &ReleaseRecord {
                id: "deploy-cooked".into(),
                project: "app".into(),
                env_uuid: "env".into(),
                owner: "alice".into(),
                digest: "d".repeat(64),
                size: 1,
                commit: String::new(),
                created_at: 0,
                manifest: serde_json::Value::Null,
            },
            &jobs[1],
        )?;
        let now = 200 * DAY;
        state.store.put_session(
            "expired",
            &SessionRecord {
                user: "alice".into(),
                expires_at: now - 1,
                created_at: 0,
                source: String::new(),
            },
        )?;
        state.store.put_session(
            "valid",
            &SessionRecord {
                user: "alice".into(),
                expires_at: now + 3600,
                created_at: 0,
                source: String::new(),
            },
        )?;

        let policy = Retention {
            job_age: Duration::from_secs(90 * DAY as u64),
            jobs_per_project: 2,
            purge_every: Duration::from_secs(3600),
        };
        let purged = purge(&state, &policy, now)?;
        assert_eq!(
            purged,
            Purged {
                jobs: 3,
                sessions: 1
            }
        );
        let mut left: Vec<String> = state.store.jobs()?.into_iter().map(|j| j.id).collect();
        left.sort();
        assert_eq!(
            left,
            ["cooked", "latest", "live", "newest-ok", "recent", "stuck"]
        );
        let indexed: Vec<String> = state
            .store
            .project_jobs("env", "app")?
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(indexed.len(), 6);
        for gone in ["init", "old-fail", "fail-a"] {
            assert!(state.store.events(gone)?.is_empty(), "{gone}");
            assert_eq!(state.store.job_payload(gone)?, JobPayload::default());
        }
        assert_eq!(state.store.pillar_revisions("env", "app")?.len(), 6);
        assert!(state.store.session("expired")?.is_none());
        assert!(state.store.session("valid")?.is_some());

        // Nothing more to do: a second run removes nothing.
        assert_eq!(purge(&state, &policy, now)?, Purged::default());
        Ok(())
    }
}
