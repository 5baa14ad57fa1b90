//! Agent records written on the link's path: an attach's new grains (compare-and-swap, so an
//! operator's decision stored meanwhile is never written over) and the last-seen times the link
//! registry saves in one batch.
//!
//! Also the placement index: what choosing a host needs of each accepted agent (its slots and
//! isolation), kept in memory and refreshed by every write of an agent record, so `init_env`
//! does not decode 10,000 records (certificates and all) per environment created.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::db::{Tree, Write};

use super::{AgentRecord, AgentStatus, Store, StoreError, decode, encode};

/// An accepted agent as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementHost {
    pub id: String,
    /// The `slots` grain: environments it may host (0 before its first Hello).
    pub slots: u32,
    /// The `isolation` grain ("" for an agent that reports none).
    pub isolation: String,
}

/// Accepted agents by id; `None` until first used (built then from one pass over the records)
/// and after a refresh failed (rebuilt on the next use).
#[derive(Debug, Default)]
pub(super) struct PlacementIndex(Mutex<Option<BTreeMap<String, PlacementHost>>>);

fn placement_host(record: &AgentRecord) -> Option<PlacementHost> {
    (record.status == AgentStatus::Accepted).then(|| PlacementHost {
        id: record.id.clone(),
        slots: record.grains.as_ref().map_or(0, |g| g.slots),
        isolation: record
            .grains
            .as_ref()
            .map(|g| g.isolation.clone())
            .unwrap_or_default(),
    })
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
    /// Calls `look` with every accepted agent, by id, from the placement index (built first if
    /// need be), under the index's lock: nothing is copied. `look` must not write agents.
    pub fn with_placement_hosts<R>(
        &self,
        look: impl FnOnce(&mut dyn Iterator<Item = &PlacementHost>) -> R,
    ) -> Result<R, StoreError> {
        let mut index = self.placement.0.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = match index.as_mut() {
            Some(hosts) => hosts,
            None => index.insert(
                self.agents()?
                    .iter()
                    .filter_map(placement_host)
                    .map(|h| (h.id.clone(), h))
                    .collect(),
            ),
        };
        Ok(look(&mut hosts.values()))
    }

    /// Brings the placement index in line with the stored record of `id`; call after every write
    /// of an agent record. The record is read again under the index's lock: of two writers, the
    /// one refreshing last reads what is stored last, so the index ends as the store does.
    pub(super) fn refresh_placement(&self, id: &str) {
        let mut index = self.placement.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(hosts) = index.as_mut() else {
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
            Ok(record) => match record.as_ref().and_then(placement_host) {
                Some(host) => {
                    hosts.insert(id.to_owned(), host);
                }
                None => {
                    hosts.remove(id);
                }
            },
            // Unknown state: rebuilt from the records on the next use.
            Err(_) => *index = None,
        }
    }

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
