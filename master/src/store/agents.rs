//! Agent records written on the link's path: an attach's new grains (compare-and-swap, so an
//! operator's decision stored meanwhile is never written over) and the last-seen times the link
//! registry saves in one batch.

use crate::db::{Tree, Write};

use super::{AgentRecord, Store, StoreError, decode, encode};

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
