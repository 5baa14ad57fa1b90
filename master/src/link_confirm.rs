//! Confirming an agent's attach once its link is registered: the agent is checked again (an
//! operator's reject or delete stored while its Hello was awaited is seen here; one stored
//! later closes the registered link) and its grains are stored when they changed.
//!
//! The hot path of a connect storm, so it avoids the store when it can:
//! - the check reads the store's agent index (`store/agents.rs`), which every write of an agent
//!   record refreshes before the writer acts on it (a reject is in the index before the links
//!   are closed), so an attach with unchanged grains, a restart's reconnect, costs no store
//!   read and no blocking-thread trip;
//! - new grains (an agent's first attach, or a changed machine) are written by one blocking
//!   writer in batches: every attach that arrives while a batch is being written joins the
//!   next one, so a storm of 10,000 first attaches is written in batches instead of 10,000
//!   writes, each on its own blocking thread. An attach still waits until its grains
//!   are stored (placement and targeting read them), but not for the disk: the grains are sent
//!   again at every attach, so the batch is not flushed (`Db::batch_unflushed`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::Status;

use crate::MasterState;
use crate::error::MasterError;
use crate::link::admit;
use crate::store::{Admission, AgentRecord, Grains};

/// An attach waiting for its grains to be stored.
struct GrainsWrite {
    agent: String,
    fingerprint: String,
    grains: Grains,
    done: oneshot::Sender<Result<(), Status>>,
}

#[derive(Default)]
struct Pending {
    queue: Vec<GrainsWrite>,
    /// A writer is running and will take the queue: no other is started.
    writing: bool,
}

/// The attaches whose grains wait for the writer (see the module docs).
#[derive(Default)]
pub struct GrainsWrites(Mutex<Pending>);

impl GrainsWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Confirms the registered link of `agent` (certificate `fp`) and records `grains` when they
/// changed; the refusal to send the agent otherwise.
pub async fn confirm(
    state: &Arc<MasterState>,
    agent: &str,
    fp: &str,
    grains: Grains,
) -> Result<(), Status> {
    if let (Some(admission), Some(true)) = (
        state.store.cached_admission(agent),
        state.store.cached_grains_equal(agent, &grains),
    ) {
        admit(state, admission.as_ref(), agent, fp)?;
        attached_with(state, agent, fp, admission.as_ref());
        return Ok(());
    }
    let (done, stored) = oneshot::channel();
    let start_writer = {
        let mut pending = state.grains_writes.lock();
        pending.queue.push(GrainsWrite {
            agent: agent.to_owned(),
            fingerprint: fp.to_owned(),
            grains,
            done,
        });
        !std::mem::replace(&mut pending.writing, true)
    };
    if start_writer {
        let state = state.clone();
        tokio::task::spawn_blocking(move || write_pending(&state));
    }
    stored.await.map_err(|_| {
        Status::unavailable("the master stopped before the agent's grains were stored: reconnect")
    })?
}

/// Confirms one attach and stores its grains at once (what the writer does for a batch).
/// Blocking.
pub fn confirm_link(
    state: &MasterState,
    agent: &str,
    fp: &str,
    grains: &Grains,
) -> Result<(), Status> {
    let (done, mut stored) = oneshot::channel();
    write_batch(
        state,
        vec![GrainsWrite {
            agent: agent.to_owned(),
            fingerprint: fp.to_owned(),
            grains: grains.clone(),
            done,
        }],
    );
    stored
        .try_recv()
        .unwrap_or_else(|_| Err(Status::internal("the grains write gave no answer")))
}

/// Attached with its newest certificate: a renewal's old one is done.
fn attached_with(state: &MasterState, agent: &str, fp: &str, admission: Option<&Admission>) {
    if admission.is_some_and(|a| a.fingerprint.as_deref() == Some(fp)) {
        state.replaced_certificates.forget(agent);
    }
}

/// The writer: takes the queue and writes it as one batch until nothing waits. Blocking.
fn write_pending(state: &MasterState) {
    loop {
        let batch = {
            let mut pending = state.grains_writes.lock();
            if pending.queue.is_empty() {
                pending.writing = false;
                return;
            }
            std::mem::take(&mut pending.queue)
        };
        write_batch(state, batch);
    }
}

/// Checks each attach against its stored record and stores the changed grains of all of them
/// in one batch, under the locks every other writer of agent records takes (enrollment
/// decisions, the last-seen saver), so no decision is written over. Blocking.
fn write_batch(state: &MasterState, batch: Vec<GrainsWrite>) {
    let _decisions = state.enroll_lock.blocking_lock();
    let _records = state.links.lock_record_writes();
    // The batch's own records, changed: a second attach of one agent in the batch sees the
    // first one's grains.
    let mut changed: HashMap<String, AgentRecord> = HashMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        let outcome = match changed.get(&write.agent) {
            Some(record) => Ok(Some(record.clone())),
            None => state.store.agent(&write.agent).map_err(MasterError::from),
        };
        let verdict = match outcome {
            Err(e) => Err(Status::from(e)),
            Ok(record) => {
                let admission = record.as_ref().map(Admission::of);
                admit(state, admission.as_ref(), &write.agent, &write.fingerprint).map(|()| {
                    attached_with(state, &write.agent, &write.fingerprint, admission.as_ref());
                    if let Some(mut record) = record
                        && record.grains.as_ref() != Some(&write.grains)
                    {
                        record.grains = Some(write.grains);
                        changed.insert(write.agent.clone(), record);
                    }
                })
            }
        };
        answers.push((write.done, verdict));
    }
    let records: Vec<AgentRecord> = changed.into_values().collect();
    let stored = state.store.put_agents_grains(&records);
    if let Err(e) = &stored {
        tracing::warn!(error = %e, agents = records.len(), "cannot store the grains of attaching agents: they reconnect and try again");
    }
    for (done, verdict) in answers {
        let answer = match (&stored, verdict) {
            (Err(e), Ok(())) => Err(Status::unavailable(format!(
                "the master cannot store the agent's grains ({e}): reconnect"
            ))),
            (_, verdict) => verdict,
        };
        // The attach may have given up (its connection closed): nothing to tell.
        let _ = done.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AgentStatus;
    use crate::test_support::accepted_agent;

    fn grains(id: &str, slots: u32) -> Grains {
        Grains {
            id: id.into(),
            slots,
            ..Grains::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_attaches_store_their_grains_and_a_refused_one_fails_alone()
    -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let mut fingerprints = Vec::new();
        for n in 0..8 {
            let record = accepted_agent(&state, &format!("node{n}"))?;
            fingerprints.push(record.fingerprint.unwrap_or_default());
        }
        // node7 is rejected by an operator while its Hello was awaited.
        let mut rejected = state
            .store
            .agent("node7")?
            .unwrap_or_else(|| panic!("node7 is gone"));
        rejected.status = AgentStatus::Rejected;
        state.store.put_agent(&rejected)?;

        let mut attaches = tokio::task::JoinSet::new();
        for (n, fp) in fingerprints.iter().enumerate() {
            let (state, id, fp) = (state.clone(), format!("node{n}"), fp.clone());
            attaches.spawn(async move {
                let confirmed = confirm(&state, &id, &fp, grains(&id, n as u32 + 1)).await;
                (n, confirmed)
            });
        }
        while let Some(done) = attaches.join_next().await {
            let (n, confirmed) = done?;
            match (n, confirmed) {
                (7, Err(status)) => assert!(status.message().contains("rejected"), "{status:?}"),
                (7, Ok(())) => panic!("a rejected agent's attach was confirmed"),
                (_, confirmed) => confirmed?,
            }
        }
        for n in 0..7u32 {
            let stored = state
                .store
                .agent(&format!("node{n}"))?
                .and_then(|a| a.grains)
                .map(|g| g.slots);
            assert_eq!(stored, Some(n + 1), "node{n}");
        }
        assert_eq!(state.store.agent("node7")?.and_then(|a| a.grains), None);

        // Unchanged grains are confirmed from the index; a delete stored since is seen there.
        confirm(&state, "node0", &fingerprints[0], grains("node0", 1)).await?;
        state.store.delete_agent("node0")?;
        match confirm(&state, "node0", &fingerprints[0], grains("node0", 1)).await {
            Err(status) => assert!(status.message().contains("not known"), "{status:?}"),
            Ok(()) => panic!("a deleted agent's attach was confirmed"),
        }
        assert_eq!(
            state.store.agent("node0")?,
            None,
            "a deleted agent came back"
        );
        Ok(())
    }

    #[test]
    fn the_agent_index_follows_every_write_of_an_agent_record() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        assert_eq!(state.store.cached_admission("node1"), Some(None));
        let record = accepted_agent(&state, "node1")?;
        let admitted = state.store.cached_admission("node1").flatten();
        assert_eq!(
            admitted.as_ref().map(|a| a.status),
            Some(AgentStatus::Accepted)
        );
        assert_eq!(admitted.and_then(|a| a.fingerprint), record.fingerprint);
        assert_eq!(
            state
                .store
                .cached_grains_equal("node1", &grains("node1", 2)),
            Some(false)
        );
        let fp = record.fingerprint.clone().unwrap_or_default();
        confirm_link(&state, "node1", &fp, &grains("node1", 2))?;
        assert_eq!(
            state
                .store
                .cached_grains_equal("node1", &grains("node1", 2)),
            Some(true)
        );
        let hosts = state.store.with_placement_hosts(|hosts| {
            hosts.map(|h| (h.id.clone(), h.slots)).collect::<Vec<_>>()
        })?;
        assert_eq!(hosts, vec![("node1".to_owned(), 2)]);
        let mut rejected = record;
        rejected.status = AgentStatus::Rejected;
        state.store.put_agent(&rejected)?;
        assert_eq!(
            state
                .store
                .cached_admission("node1")
                .flatten()
                .map(|a| a.status),
            Some(AgentStatus::Rejected)
        );
        assert!(state.store.with_placement_hosts(|hosts| hosts.count())? == 0);
        state.store.delete_agent("node1")?;
        assert_eq!(state.store.cached_admission("node1"), Some(None));
        Ok(())
    }
}
