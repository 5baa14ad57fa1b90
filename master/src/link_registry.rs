//! The registry of live agent links: one long-lived stream per connected agent. Jobs are sent
//! through it; an operator's reject or delete closes it. What goes down a link is domain data
//! ([`ToAgent`]); the AgentLink service (`link.rs`) puts it on the wire.

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

#[derive(Default)]
pub struct LinkRegistry {
    links: Mutex<HashMap<String, Link>>,
    generations: AtomicU64,
}

impl LinkRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new link for `agent`, closing the one it replaces.
    pub fn register(
        &self,
        agent: &str,
        sender: LinkSender,
        address: String,
        now: i64,
    ) -> (u64, Arc<Notify>, Arc<AtomicI64>) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let closed = Arc::new(Notify::new());
        let last_seen = Arc::new(AtomicI64::new(now));
        let link = Link {
            generation,
            sender,
            closed: closed.clone(),
            address,
            last_seen: last_seen.clone(),
        };
        if let Some(old) = self.lock().insert(agent.to_owned(), link) {
            close(old, LinkClosed::Replaced);
        }
        (generation, closed, last_seen)
    }

    /// Forgets the link if it is still the given generation.
    pub fn unregister(&self, agent: &str, generation: u64) {
        let mut links = self.lock();
        if links.get(agent).is_some_and(|l| l.generation == generation) {
            links.remove(agent);
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

    /// Closes every link: the master is stopping; agents reconnect to its successor.
    pub fn close_all(&self) {
        for (_, link) in self.lock().drain() {
            close(link, LinkClosed::MasterStopping);
        }
    }
}
