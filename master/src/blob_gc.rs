//! Blob lifecycle: what the master's blob store holds and for whom, and the collection of
//! blobs nothing needs. A blob is *referenced* while a job record (its source or release
//! archive: the payload of a running job, a live deployment, any deployment a rollback may
//! return to) or a release record names it. Unreferenced blobs older than a grace period are
//! removed in the background, at start and then at the retention purge's cadence (after it, so
//! the archives of purged jobs go in the same round); the grace period keeps an upload whose
//! push is still rendering from being collected (such a blob is pinned as well). A refused push
//! removes its own upload at once ([`discard`]).
//!
//! Storage ceilings, set only by operators: per user (the sum of the distinct blobs of the
//! environments the user owns, `corpus-master users set ID --max-storage BYTES`) and for the
//! whole master (`max_blob_storage_bytes` in the settings file). A push that would pass either is
//! refused with the figures, before its upload is read and again once its size is known.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::MasterState;
use crate::blobs::BlobPin;
use crate::error::{MasterError, MasterResult};
use crate::store::{DEFAULT_USER_STORAGE_BYTES, JobRecord};

/// How old an unreferenced blob must be before it is collected: longer than any upload and
/// render of a push takes.
pub const GC_GRACE: Duration = Duration::from_secs(3600);

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
}

fn job_blobs(job: &JobRecord) -> impl Iterator<Item = &String> {
    job.source_blob.iter().chain(job.release_blob.iter())
}

/// Every digest a job or release record names. Blocking.
pub fn referenced(state: &MasterState) -> MasterResult<HashSet<String>> {
    let mut digests: HashSet<String> = state
        .store
        .all_releases()?
        .into_iter()
        .map(|r| r.digest)
        .collect();
    for job in state.store.jobs()? {
        digests.extend(job_blobs(&job).cloned());
    }
    Ok(digests)
}

/// Removes the unreferenced, unpinned blobs last written before `now - grace`. Blocking.
pub fn collect(state: &MasterState, now: i64, grace: Duration) -> MasterResult<Collected> {
    // Listed before the references are read: a blob uploaded and recorded in between is then
    // either referenced or too young.
    let stored = state.blobs.list()?;
    let keep = referenced(state)?;
    let newest_collected = now.saturating_sub(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
    let mut collected = Collected::default();
    for blob in stored {
        if keep.contains(&blob.digest) || blob.modified > newest_collected {
            continue;
        }
        if state.blobs.remove_unpinned(&blob.digest)? {
            collected.blobs += 1;
            collected.bytes += blob.size;
        }
    }
    Ok(collected)
}

/// Removes the upload of a refused push at once, unless something recorded still refers to the
/// same content (an earlier push of the same source) or another push holds it. Blocking.
pub fn discard(state: &MasterState, pin: BlobPin) {
    let digest = pin.digest().to_owned();
    drop(pin);
    let outcome = referenced(state).and_then(|keep| {
        if keep.contains(&digest) {
            Ok(false)
        } else {
            Ok(state.blobs.remove_unpinned(&digest)?)
        }
    });
    match outcome {
        Ok(true) => info!(blob = %digest, "upload of a refused push removed"),
        Ok(false) => {}
        // The collector retries it later.
        Err(e) => warn!(blob = %digest, error = %e, "cannot remove the upload of a refused push"),
    }
}

/// Runs [`collect`] at start and then at the retention purge's cadence, until `stop`.
pub async fn run(state: Arc<MasterState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let every = state.settings().retention.purge_every;
        let now = crate::auth::now_unix();
        match state.blocking(move |s| collect(s, now, GC_GRACE)).await {
            Ok(c) if c.blobs > 0 => info!(
                blobs = c.blobs,
                bytes = c.bytes,
                "unreferenced blobs collected"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "blob collection failed; retrying at the next period"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Bytes the master stores for each user: the distinct blobs named by the jobs of the
/// environments they own and by their releases. Blocking.
fn stored_per_user(state: &MasterState) -> MasterResult<HashMap<String, u64>> {
    let owners: HashMap<String, String> = state
        .store
        .environments()?
        .into_iter()
        .map(|e| (e.uuid, e.owner))
        .collect();
    let mut digests: HashMap<String, HashSet<String>> = HashMap::new();
    for job in state.store.jobs()? {
        if let Some(owner) = owners.get(&job.env_uuid) {
            digests
                .entry(owner.clone())
                .or_default()
                .extend(job_blobs(&job).cloned());
        }
    }
    for release in state.store.all_releases()? {
        digests
            .entry(release.owner)
            .or_default()
            .insert(release.digest);
    }
    Ok(digests
        .into_iter()
        .map(|(user, set)| {
            let bytes = set.iter().filter_map(|d| state.blobs.size(d)).sum();
            (user, bytes)
        })
        .collect())
}

/// Bytes the master stores for `user`.
pub fn user_stored_bytes(state: &MasterState, user: &str) -> MasterResult<u64> {
    Ok(stored_per_user(state)?.get(user).copied().unwrap_or(0))
}

/// Bytes the master stores for one project of one environment: the distinct source and
/// release archives its jobs name. Blocking.
pub fn project_stored_bytes(state: &MasterState, env: &str, project: &str) -> MasterResult<u64> {
    let digests: HashSet<String> = state
        .store
        .project_jobs(env, project)?
        .iter()
        .flat_map(|j| job_blobs(j).cloned().collect::<Vec<_>>())
        .collect();
    Ok(digests.iter().filter_map(|d| state.blobs.size(d)).sum())
}

/// The storage ceiling of `user`: what an operator set, else the default.
pub fn user_ceiling(state: &MasterState, user: &str) -> MasterResult<u64> {
    Ok(state
        .store
        .user(user)?
        .and_then(|u| u.max_storage_bytes)
        .unwrap_or(DEFAULT_USER_STORAGE_BYTES))
}

/// Refuses `size` more bytes for an environment owned by `owner` when it would pass the
/// owner's ceiling or the master's. `uploaded` names the blob of those bytes once it is on
/// disk (not counted twice). Blocking.
pub fn check_ceilings(
    state: &MasterState,
    owner: &str,
    size: u64,
    uploaded: Option<&str>,
) -> MasterResult<()> {
    let ceiling = user_ceiling(state, owner)?;
    let stored = user_stored_bytes(state, owner)?;
    if stored.saturating_add(size) > ceiling {
        return Err(MasterError::Exhausted(format!(
            "user {owner:?} stores {stored} bytes on the master; {size} more would pass their storage ceiling of {ceiling} bytes: remove deployments (corpus destroy) or ask an operator to raise it (corpus-master users set {owner} --max-storage BYTES); nothing was changed"
        )));
    }
    let global = state.settings().max_blob_storage_bytes;
    let total: u64 = state
        .blobs
        .list()?
        .iter()
        .filter(|b| Some(b.digest.as_str()) != uploaded)
        .map(|b| b.size)
        .sum();
    if total.saturating_add(size) > global {
        return Err(MasterError::Exhausted(format!(
            "the master stores {total} bytes of archives; {size} more would pass its storage ceiling of {global} bytes (max_blob_storage_bytes): an operator must free space or raise it; nothing was changed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobKind, JobPayload, JobState, Mode};

    fn job(id: &str, source: Option<String>) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind: JobKind::Deploy,
            env_uuid: "env".into(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: format!("deploy-{id}"),
            requested_by: "alice".into(),
            agent: "node1".into(),
            commit: String::new(),
            created_at: 0,
            created_ms: 0,
            state: JobState::Success,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: None,
            source_blob: source,
            release_blob: None,
            target_deploy_id: None,
        }
    }

    async fn upload(state: &MasterState, body: &[u8]) -> anyhow::Result<(String, BlobPin)> {
        let mut writer = state.blobs.writer(u64::MAX).await?;
        writer.write(body).await?;
        let (digest, _, pin) = writer.finish_pinned("", None).await?;
        Ok((digest, pin))
    }

    #[tokio::test]
    async fn collection_removes_unreferenced_old_blobs_and_keeps_the_rest() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let (kept, pin) = upload(&state, b"a deployed source").await?;
        drop(pin);
        let (orphan, pin) = upload(&state, b"a source nothing refers to").await?;
        drop(pin);
        let (in_flight, in_flight_pin) = upload(&state, b"a push still rendering").await?;
        state.store.record_job(
            &job("j1", Some(kept.clone())),
            &JobPayload::default(),
            &[],
            None,
        )?;

        // Within the grace period nothing goes.
        let now = crate::auth::now_unix();
        assert_eq!(collect(&state, now, GC_GRACE)?, Collected::default());
        // Past it, only the unreferenced, unpinned blob goes.
        let later = now + GC_GRACE.as_secs() as i64 + 1;
        let collected = collect(&state, later, GC_GRACE)?;
        assert_eq!(collected.blobs, 1);
        assert!(!state.blobs.exists(&orphan));
        assert!(state.blobs.exists(&kept));
        assert!(state.blobs.exists(&in_flight));
        drop(in_flight_pin);
        collect(&state, later, GC_GRACE)?;
        assert!(!state.blobs.exists(&in_flight));
        Ok(())
    }

    #[tokio::test]
    async fn a_discarded_upload_goes_unless_recorded_or_held() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let (refused, pin) = upload(&state, b"refused source").await?;
        discard(&state, pin);
        assert!(!state.blobs.exists(&refused));

        // The same content pushed before and recorded stays.
        let (recorded, pin) = upload(&state, b"recorded source").await?;
        drop(pin);
        state.store.record_job(
            &job("j1", Some(recorded.clone())),
            &JobPayload::default(),
            &[],
            None,
        )?;
        let (_, pin) = upload(&state, b"recorded source").await?;
        discard(&state, pin);
        assert!(state.blobs.exists(&recorded));

        // Two pushes of one source: the refused one leaves the other's upload alone.
        let (shared, first) = upload(&state, b"two pushes").await?;
        let (_, second) = upload(&state, b"two pushes").await?;
        discard(&state, first);
        assert!(state.blobs.exists(&shared));
        discard(&state, second);
        assert!(!state.blobs.exists(&shared));
        Ok(())
    }

    #[tokio::test]
    async fn a_user_over_the_storage_ceiling_is_refused_with_the_figures() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let mut alice = state.auth.add_user("alice", "a long password 123", false)?;
        alice.max_storage_bytes = Some(100);
        state.store.put_user(&alice)?;
        state
            .store
            .put_environment(&crate::store::EnvironmentRecord {
                uuid: "env".into(),
                platform: crate::store::Platform::Staging,
                mode: Mode::Cooking,
                agent: "node1".into(),
                owner: "alice".into(),
                grants: vec![],
                defaults: serde_json::json!({}),
                created_at: 0,
                smep: None,
            })?;
        let (digest, pin) = upload(&state, &[1u8; 60]).await?;
        drop(pin);
        state
            .store
            .record_job(&job("j1", Some(digest)), &JobPayload::default(), &[], None)?;
        assert_eq!(user_stored_bytes(&state, "alice")?, 60);
        assert_eq!(project_stored_bytes(&state, "env", "app")?, 60);
        check_ceilings(&state, "alice", 40, None)?;
        let err = match check_ceilings(&state, "alice", 41, None) {
            Err(e) => e.to_string(),
            Ok(()) => anyhow::bail!("a push past the ceiling was accepted"),
        };
        for figure in ["60 bytes", "41 more", "100 bytes", "--max-storage"] {
            assert!(err.contains(figure), "{figure} missing from: {err}");
        }
        Ok(())
    }
}
