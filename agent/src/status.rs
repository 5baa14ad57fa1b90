//! What a running agent is doing, for SIGUSR2's state summary in the log: the link's state,
//! the jobs in flight, the messages queued for the master, the results kept on disk until the
//! master acknowledges them, and the memory in use. The link updates it as it goes; the
//! signal handler only reads it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the agent's link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Starting = 0,
    /// Dialling the master (or enrolling: no certificate yet).
    Connecting = 1,
    Attached = 2,
    /// The link ended or was refused; waiting before the next attempt.
    Waiting = 3,
    Stopping = 4,
}

impl LinkState {
    fn label(self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::Connecting => "connecting",
            LinkState::Attached => "attached",
            LinkState::Waiting => "waiting to reconnect",
            LinkState::Stopping => "stopping",
        }
    }

    fn from_u8(value: u8) -> LinkState {
        match value {
            1 => LinkState::Connecting,
            2 => LinkState::Attached,
            3 => LinkState::Waiting,
            4 => LinkState::Stopping,
            _ => LinkState::Starting,
        }
    }
}

/// Shared between the link (writer) and the SIGUSR2 handler (reader).
#[derive(Debug)]
pub struct AgentStatus {
    state_dir: PathBuf,
    link: AtomicU8,
    /// Unix seconds of the last change of `link`.
    since: AtomicI64,
    jobs_in_flight: AtomicUsize,
    queued_to_master: AtomicUsize,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl AgentStatus {
    pub fn new(state_dir: PathBuf) -> AgentStatus {
        AgentStatus {
            state_dir,
            link: AtomicU8::new(LinkState::Starting as u8),
            since: AtomicI64::new(now_unix()),
            jobs_in_flight: AtomicUsize::new(0),
            queued_to_master: AtomicUsize::new(0),
        }
    }

    pub fn set_link(&self, state: LinkState) {
        if self.link.swap(state as u8, Ordering::Relaxed) != state as u8 {
            self.since.store(now_unix(), Ordering::Relaxed);
        }
    }

    /// Called by the link on every turn of its loop (at least once a heartbeat).
    pub fn observe(&self, jobs_in_flight: usize, queued_to_master: usize) {
        self.jobs_in_flight.store(jobs_in_flight, Ordering::Relaxed);
        self.queued_to_master
            .store(queued_to_master, Ordering::Relaxed);
    }

    /// The summary line SIGUSR2 logs. Reads the results outbox on disk: call off the async
    /// workers.
    pub fn summary(&self) -> String {
        let link = LinkState::from_u8(self.link.load(Ordering::Relaxed));
        format!(
            "link={} (since {}), jobs in flight={}, messages queued to the master={}, results awaiting the master's ack={}, memory RSS={}",
            link.label(),
            corpus_runtime::format_unix_time(self.since.load(Ordering::Relaxed)),
            self.jobs_in_flight.load(Ordering::Relaxed),
            self.queued_to_master.load(Ordering::Relaxed),
            crate::results::unacknowledged(&self.state_dir).len(),
            corpus_runtime::resident_memory(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_the_link_state_and_the_counts() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let status = AgentStatus::new(dir.path().to_owned());
        status.set_link(LinkState::Attached);
        status.observe(2, 5);
        let text = status.summary();
        assert!(text.starts_with("link=attached"), "{text}");
        assert!(text.contains("jobs in flight=2"), "{text}");
        assert!(text.contains("messages queued to the master=5"), "{text}");
        assert!(
            text.contains("results awaiting the master's ack=0"),
            "{text}"
        );
        Ok(())
    }
}
