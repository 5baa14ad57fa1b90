//! The registry of live agent links: one long-lived stream per connected agent. Jobs are sent
//! through it; an operator's reject or delete closes it. What goes down a link is domain data
//! ([`ToAgent`]); the AgentLink service (`link.rs`) puts it on the wire.
//!
//! The registry is also where connection state lives between writes: an attach or a detach
//! touches only this in-memory map (no async lock, no disk write); the last-seen time and
//! address of each agent that attached or detached since the last save wait in
//! [`LinkRegistry::take_unsaved`] for the background saver (`link.rs`), which writes them in
//! one batch every few seconds and once more at stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::jobs::JobOrder;

/// What the master sends an agent over its link.
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    Job(Box<JobOrder>),
    /// The job's result is recorded: the agent may forget it, and its events up to
    /// `events_stored` (it resends the others, then the result again).
    Ack {
        job_id: String,
        events_stored: u64,
    },
    /// An operator run's call for this agent (`fleet/runs.rs`), already in its wire form.
    Operator(Box<corpus_proto::OperatorCall>),
    /// The link is over; the agent is told why.
    Close(LinkClosed),
}

/// Why the master closes a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkClosed {
    /// A newer connection of the same agent took over.
    Replaced,
    RejectedByOperator,
    DeletedByOperator,
    /// The master is stopping; agents reconnect to its successor.
    MasterStopping,
}

pub type LinkSender = mpsc::Sender<ToAgent>;

/// One connected agent.
pub struct Link {
    /// Distinguishes this connection from an earlier or later one of the same agent, so a
    /// stale reader cannot unregister its replacement.
    pub generation: u64,
    pub sender: LinkSender,
    /// Woken to make the link's reader stop (agent deleted, rejected or replaced).
    pub closed: Arc<Notify>,
    pub address: String,
    pub last_seen: Arc<AtomicI64>,
}

/// When an agent was last heard from, and from where: what the store keeps of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub last_seen: i64,
    pub address: String,
}

/// What a registration hands the link's reader.
pub type Registered = (u64, Arc<Notify>, Arc<AtomicI64>);

#[derive(Default)]
pub struct LinkRegistry {
    links: Mutex<HashMap<String, Link>>,
    generations: AtomicU64,
    /// Last-seen times and addresses not yet written to the store, by agent.
    unsaved: Mutex<HashMap<String, Seen>>,
    /// Held by whoever rewrites agent records outside the enrollment lock's operations (the
    /// saver of [`Seen`] and an attach recording new grains), so neither writes back a record
    /// the other just changed.
    record_writes: Mutex<()>,
}

impl LinkRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsaved(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`LinkRegistry::record_writes`].
    pub fn lock_record_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.record_writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new link for `agent`, closing the one it replaces.
    pub fn register(
        &self,
        agent: &str,
        sender: LinkSender,
        address: String,
        now: i64,
    ) -> Registered {
        let links = self.lock();
        self.insert(links, agent, sender, address, now)
    }

    /// Registers a new link for `agent` unless its current link heard from the agent within
    /// `alive_within` seconds (checked and registered under one lock, so of two connections
    /// racing with one certificate only one gets in); the refusal carries the live link's
    /// address. Otherwise closes the link it replaces.
    pub fn register_unless_live(
        &self,
        agent: &str,
        sender: LinkSender,
        address: String,
        now: i64,
        alive_within: i64,
    ) -> Result<Registered, String> {
        let links = self.lock();
        if let Some(live) = links.get(agent) {
            let silent_for = now.saturating_sub(live.last_seen.load(Ordering::Relaxed));
            if silent_for <= alive_within {
                return Err(live.address.clone());
            }
        }
        Ok(self.insert(links, agent, sender, address, now))
    }

    /// Inserts the link under the registry's lock (held by the caller since its checks).
    fn insert(
        &self,
        mut links: std::sync::MutexGuard<'_, HashMap<String, Link>>,
        agent: &str,
        sender: LinkSender,
        address: String,
        now: i64,
    ) -> Registered {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let closed = Arc::new(Notify::new());
        let last_seen = Arc::new(AtomicI64::new(now));
        let link = Link {
            generation,
            sender,
            closed: closed.clone(),
            address: address.clone(),
            last_seen: last_seen.clone(),
        };
        if let Some(old) = links.insert(agent.to_owned(), link) {
            close(old, LinkClosed::Replaced);
        }
        drop(links);
        self.unsaved().insert(
            agent.to_owned(),
            Seen {
                last_seen: now,
                address,
            },
        );
        (generation, closed, last_seen)
    }

    /// Forgets the link if it is still the given generation, keeping when the agent was last
    /// seen for the next save.
    pub fn unregister(&self, agent: &str, generation: u64) {
        let mut links = self.lock();
        if links.get(agent).is_some_and(|l| l.generation == generation)
            && let Some(link) = links.remove(agent)
        {
            drop(links);
            self.unsaved().insert(agent.to_owned(), seen(&link));
        }
    }

    /// Forgets the link if it is still the given generation, recording nothing: a connection
    /// refused right after it registered.
    pub fn forget(&self, agent: &str, generation: u64) {
        let mut links = self.lock();
        if links.get(agent).is_some_and(|l| l.generation == generation) {
            links.remove(agent);
        }
    }

    /// The last-seen times and addresses recorded since the last call, for the store.
    pub fn take_unsaved(&self) -> HashMap<String, Seen> {
        std::mem::take(&mut *self.unsaved())
    }

    /// Puts back what a failed save took, unless newer values arrived meanwhile.
    pub fn restore_unsaved(&self, seen: HashMap<String, Seen>) {
        let mut unsaved = self.unsaved();
        for (agent, seen) in seen {
            unsaved.entry(agent).or_insert(seen);
        }
    }

    /// Closes an agent's link, telling it why; false when it was not connected.
    pub fn close(&self, agent: &str, why: LinkClosed) -> bool {
        match self.lock().remove(agent) {
            Some(link) => {
                close(link, why);
                true
            }
            None => false,
        }
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        self.lock().contains_key(agent)
    }

    /// (address, last seen) of a connected agent.
    pub fn peer(&self, agent: &str) -> Option<(String, i64)> {
        self.lock()
            .get(agent)
            .map(|l| (l.address.clone(), l.last_seen.load(Ordering::Relaxed)))
    }

    pub fn sender(&self, agent: &str) -> Option<LinkSender> {
        self.lock().get(agent).map(|l| l.sender.clone())
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

fn seen(link: &Link) -> Seen {
    Seen {
        last_seen: link.last_seen.load(Ordering::Relaxed),
        address: link.address.clone(),
    }
}

fn close(link: Link, why: LinkClosed) {
    // The receiver may be gone already; either way the link is over.
    let _ = link.sender.try_send(ToAgent::Close(why));
    link.closed.notify_one();
}

impl LinkRegistry {
    /// Messages waiting to go down the links, all agents together (SIGUSR2's state summary).
    pub fn queued_messages(&self) -> usize {
        self.lock()
            .values()
            .map(|l| l.sender.max_capacity() - l.sender.capacity())
            .sum()
    }

    /// Closes every link, keeping when each agent was last seen for the final save: the
    /// master is stopping; agents reconnect to its successor.
    pub fn close_all(&self) {
        let links: Vec<(String, Link)> = self.lock().drain().collect();
        let mut unsaved = self.unsaved();
        for (agent, link) in links {
            unsaved.insert(agent, seen(&link));
            close(link, LinkClosed::MasterStopping);
        }
    }
}
