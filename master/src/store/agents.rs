//! Agent records written on the link's path: an attach's new grains (compare-and-swap, so an
//! operator's decision stored meanwhile is never written over) and the last-seen times the link
//! registry saves in one batch.
//!
//! Also the agent index: what an attach's admission check needs of every agent (its status
//! and current certificate's fingerprint) and what choosing a host needs of each accepted one
//! (its slots and isolation), kept in memory and refreshed by every write of an agent record,
//! so an attach reads no record (a decode of certificates and all, and a blocking-thread trip)
//! and `init_env` does not decode 10,000 records per environment created.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::db::{Tree, Write};

use super::{AgentRecord, AgentStatus, Grains, Store, StoreError, decode, encode};

/// An accepted agent as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementHost {
    pub id: String,
    /// The `slots` grain: environments it may host (0 before its first Hello).
    pub slots: u32,
    /// The `isolation` grain ("" for an agent that reports none).
    pub isolation: String,
}

/// What an attach's admission check needs of a stored agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub status: AgentStatus,
    /// Of the certificate issued last (None before acceptance).
    pub fingerprint: Option<String>,
}

impl Admission {
    pub fn of(record: &AgentRecord) -> Admission {
        Admission {
            status: record.status,
            fingerprint: record.fingerprint.clone(),
        }
    }
}

/// One agent in the index.
#[derive(Debug, Clone, PartialEq)]
struct IndexEntry {
    admission: Admission,
    /// As stored: an attach bringing the same grains writes nothing.
    grains: Option<Grains>,
    host: PlacementHost,
}

fn index_entry(record: &AgentRecord) -> IndexEntry {
    IndexEntry {
        admission: Admission::of(record),
        grains: record.grains.clone(),
        host: PlacementHost {
            id: record.id.clone(),
            slots: record.grains.as_ref().map_or(0, |g| g.slots),
            isolation: record
                .grains
                .as_ref()
                .map(|g| g.isolation.clone())
                .unwrap_or_default(),
        },
    }
}

/// Every stored agent by id; `None` until built (at open, by [`Store::load_agent_index`], or
/// on first use) and after a refresh failed (rebuilt on the next use).
#[derive(Debug, Default)]
pub(super) struct PlacementIndex(Mutex<Option<BTreeMap<String, IndexEntry>>>);

type IndexGuard<'a> = std::sync::MutexGuard<'a, Option<BTreeMap<String, IndexEntry>>>;

impl Store {
    fn agent_index(&self) -> IndexGuard<'_> {
        self.placement.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index, built from one pass over the records first if need be. Blocking then.
    fn built_index<'a>(
        &self,
        index: &'a mut IndexGuard<'_>,
    ) -> Result<&'a mut BTreeMap<String, IndexEntry>, StoreError> {
        if index.is_none() {
            **index = Some(
                self.agents()?
                    .iter()
                    .map(|r| (r.id.clone(), index_entry(r)))
                    .collect(),
            );
        }
        Ok(index.get_or_insert_with(BTreeMap::new))
    }

    /// Builds the agent index now (one pass over the records), so the first attaches find it.
    pub fn load_agent_index(&self) -> Result<(), StoreError> {
        let mut index = self.agent_index();
        self.built_index(&mut index).map(|_| ())
    }

    /// The admission data of agent `id` from the index, without touching the store: `None`
    /// when the index is not built (the caller reads the record instead), `Some(None)` when no
    /// such agent is stored.
    pub fn cached_admission(&self, id: &str) -> Option<Option<Admission>> {
        self.agent_index()
            .as_ref()
            .map(|entries| entries.get(id).map(|e| e.admission.clone()))
    }

    /// Whether the index holds `grains` as agent `id`'s stored grains: `None` when the index
    /// is not built.
    pub fn cached_grains_equal(&self, id: &str, grains: &Grains) -> Option<bool> {
        self.agent_index().as_ref().map(|entries| {
            entries
                .get(id)
                .is_some_and(|e| e.grains.as_ref() == Some(grains))
        })
    }

    /// Calls `look` with every accepted agent, by id, from the index (built first if need be),
    /// under the index's lock: nothing is copied. `look` must not write agents.
    pub fn with_placement_hosts<R>(
        &self,
        look: impl FnOnce(&mut dyn Iterator<Item = &PlacementHost>) -> R,
    ) -> Result<R, StoreError> {
        let mut index = self.agent_index();
        let entries = self.built_index(&mut index)?;
        let mut hosts = entries
            .values()
            .filter(|e| e.admission.status == AgentStatus::Accepted)
            .map(|e| &e.host);
        Ok(look(&mut hosts))
    }

    /// Brings the index in line with the stored record of `id`; call after every write of an
    /// agent record (before acting on it: an operator's reject is in the index before the
    /// links are closed). The record is read again under the index's lock: of two writers,
    /// the one refreshing last reads what is stored last, so the index ends as the store does.
    pub(super) fn refresh_placement(&self, id: &str) {
        let mut index = self.agent_index();
        let Some(entries) = index.as_mut() else {
            return;
        };
        let stored = self
            .db
            .get(Tree::Agents, id.as_bytes())
            .map_err(StoreError::from)
            .and_then(|bytes| {
                bytes
                    .map(|b| decode::<AgentRecord>("agent", id, &b))
                    .transpose()
            });
        match stored {
            Ok(Some(record)) => {
                entries.insert(id.to_owned(), index_entry(&record));
            }
            Ok(None) => {
                entries.remove(id);
            }
            // Unknown state: rebuilt from the records on the next use.
            Err(_) => *index = None,
        }
    }
}

/// What an [`Store::update_agent`] change did.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentUpdate<E> {
    /// No such agent.
    Missing,
    /// The change refused the record as it is stored now.
    Refused(E),
    /// Stored (or nothing to store); the record as it is now.
    Done(Box<AgentRecord>),
}

impl Store {
    /// Applies `change` to the stored record of `id` and stores the result, atomically: when the
    /// record changed between the read and the write, `change` runs again on the new one.
    /// `change` returns whether it modified the record (nothing is written otherwise) or a
    /// refusal. One flushed write when something changed, none otherwise.
    pub fn update_agent<E>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut AgentRecord) -> Result<bool, E>,
    ) -> Result<AgentUpdate<E>, StoreError> {
        loop {
            let Some(current) = self.db.get(Tree::Agents, id.as_bytes())? else {
                return Ok(AgentUpdate::Missing);
            };
            let mut record: AgentRecord = decode("agent", id, &current)?;
            match change(&mut record) {
                Err(refusal) => return Ok(AgentUpdate::Refused(refusal)),
                Ok(false) => return Ok(AgentUpdate::Done(Box::new(record))),
                Ok(true) => {}
            }
            if self.db.compare_and_swap(
                Tree::Agents,
                id.as_bytes(),
                Some(&current),
                Some(&encode(&record)),
            )? {
                self.refresh_placement(id);
                return Ok(AgentUpdate::Done(Box::new(record)));
            }
        }
    }

    /// Stores agent records whose grains changed in one batch, unconditionally, without
    /// waiting for the disk: a crash may lose the batch, never half of it, and every attach
    /// sends the grains again (the hot path of a connect storm). Call where no other write of
    /// agent records runs (as for [`Store::record_seen`]).
    pub fn put_agents_grains(&self, records: &[AgentRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let writes = records
            .iter()
            .map(|r| Write::put(Tree::Agents, r.id.as_str(), encode(r)))
            .collect();
        self.db.batch_unflushed(writes)?;
        for record in records {
            self.refresh_placement(&record.id);
        }
        Ok(())
    }

    /// Records when each agent was last seen and from which address, in one batch; agents no
    /// longer stored (deleted) are skipped. Call where no other write of agent records runs
    /// (under the enrollment lock and [`crate::link_registry::LinkRegistry::lock_record_writes`]).
    pub fn record_seen<'a>(
        &self,
        seen: impl IntoIterator<Item = (&'a str, i64, &'a str)>,
    ) -> Result<usize, StoreError> {
        let mut writes = Vec::new();
        for (id, last_seen, address) in seen {
            let Some(mut record) = self.agent(id)? else {
                continue;
            };
            if record.last_seen >= Some(last_seen) && record.address.as_deref() == Some(address) {
                continue;
            }
            record.last_seen = Some(record.last_seen.unwrap_or(0).max(last_seen));
            record.address = Some(address.to_owned());
            writes.push(Write::put(Tree::Agents, id, encode(&record)));
        }
        let written = writes.len();
        if written > 0 {
            self.db.batch(writes)?;
        }
        Ok(written)
    }
}
