//! The relay of one job's updates to the client that started it. The agent's stream must never
//! wait on a slow client, so events go through a bounded queue and are dropped (and counted)
//! when it is full; every event is stored anyway. Two slots are taken when the relay opens, so
//! the notice of what was missed and the job's result always fit: the result is never dropped.
//! A stream with nothing to say for [`KEEPALIVE_EVERY`] says `Keepalive`, so a client can tell a
//! quiet job (a long build) from a master that stopped answering.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{self, OwnedPermit, error::TrySendError};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::jobs::{JobEvent, JobOutcome, JobUpdate};

/// How many events may wait for a client before the relay drops them.
pub const EVENT_QUEUE: usize = 1024;

/// How long a job's stream may stay silent before the master sends a `Keepalive` (the CLI's
/// idle deadline, 60 s by default, must be longer).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

/// What the client reads: `Started`, events, at most one `Missed`, then `Finished`, with
/// `Keepalive`s whenever nothing else came for [`KEEPALIVE_EVERY`].
pub type Updates = Keepalive<ReceiverStream<JobUpdate>>;

/// A stream of updates that yields `Keepalive` after each [`KEEPALIVE_EVERY`] of silence, and
/// ends when the inner stream ends.
pub struct Keepalive<S> {
    inner: S,
    /// Armed at the first poll: the relay may be opened outside an async runtime.
    quiet: Option<Pin<Box<Sleep>>>,
}

impl<S> Keepalive<S> {
    pub fn new(inner: S) -> Keepalive<S> {
        Keepalive { inner, quiet: None }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Stream<Item = JobUpdate> + Unpin> Stream for Keepalive<S> {
    type Item = JobUpdate;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobUpdate>> {
        let this = self.get_mut();
        let next_quiet = || tokio::time::Instant::now() + KEEPALIVE_EVERY;
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            if let Some(quiet) = this.quiet.as_mut() {
                quiet.as_mut().reset(next_quiet());
            }
            return Poll::Ready(item);
        }
        let quiet = this
            .quiet
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next_quiet())));
        match quiet.as_mut().poll(cx) {
            Poll::Ready(()) => {
                quiet.as_mut().reset(next_quiet());
                Poll::Ready(Some(JobUpdate::Keepalive))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The sending side, held by the master while the job runs.
pub struct Relay {
    job_id: String,
    events: mpsc::Sender<JobUpdate>,
    /// Reserved at open for the `Missed` notice and the result: neither waits for the client
    /// to make room, and neither can be crowded out by events.
    notice_slot: Option<OwnedPermit<JobUpdate>>,
    result_slot: Option<OwnedPermit<JobUpdate>>,
    /// Events dropped because the queue was full.
    missed: u64,
}

impl Relay {
    /// Updates waiting for the client to read them (SIGUSR2's state summary).
    pub fn queued(&self) -> usize {
        let reserved =
            usize::from(self.notice_slot.is_some()) + usize::from(self.result_slot.is_some());
        (self.events.max_capacity() - self.events.capacity()).saturating_sub(reserved)
    }

    /// Opens a relay whose queue holds `event_queue` events, `Started` already in it.
    pub fn open(job_id: &str, event_queue: usize) -> (Relay, Updates) {
        // Started, the two reserved slots, and the events.
        let (tx, rx) = mpsc::channel(event_queue + 3);
        let _ = tx.try_send(JobUpdate::Started(job_id.to_owned()));
        let notice_slot = tx.clone().try_reserve_owned().ok();
        let result_slot = tx.clone().try_reserve_owned().ok();
        let relay = Relay {
            job_id: job_id.to_owned(),
            events: tx,
            notice_slot,
            result_slot,
            missed: 0,
        };
        (relay, Keepalive::new(ReceiverStream::new(rx)))
    }

    /// Queues an event, or counts it as missed when the client is behind. Never waits.
    pub fn event(&mut self, event: JobEvent) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(JobUpdate::Event(event)) {
            self.missed += 1;
        }
        // Closed: the client left; the job goes on and its events are stored.
    }

    /// Ends the relay: the notice of missed events if any, then the result. Never waits.
    pub fn finish(mut self, outcome: JobOutcome) {
        if self.missed > 0
            && let Some(slot) = self.notice_slot.take()
        {
            slot.send(JobUpdate::Missed {
                job_id: self.job_id.clone(),
                count: self.missed,
            });
        }
        if let Some(slot) = self.result_slot.take() {
            slot.send(JobUpdate::Finished(outcome));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::store::{EventRecord, JobState};

    fn event(sequence: u64) -> JobEvent {
        JobEvent {
            job_id: "j1".into(),
            event: EventRecord {
                sequence,
                step: "build".into(),
                state_id: format!("state-{sequence}"),
                result: "success".into(),
                changes: serde_json::Value::Null,
                comment: String::new(),
                duration_ms: 1,
                timestamp_ms: 0,
            },
        }
    }

    fn outcome() -> JobOutcome {
        JobOutcome {
            state: JobState::Success,
            ..JobOutcome::failed("j1", "", String::new())
        }
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_still_gets_the_result_and_the_count_it_missed() {
        let (mut relay, updates) = Relay::open("j1", 4);
        // A plan of more states than the queue holds, and a client that reads none of them.
        for sequence in 1..=1500 {
            relay.event(event(sequence));
        }
        relay.finish(outcome());
        let got: Vec<JobUpdate> = updates.collect().await;
        assert_eq!(got.first(), Some(&JobUpdate::Started("j1".into())));
        let events: Vec<u64> = got
            .iter()
            .filter_map(|u| match u {
                JobUpdate::Event(e) => Some(e.event.sequence),
                _ => None,
            })
            .collect();
        assert_eq!(events, vec![1, 2, 3, 4]);
        assert_eq!(
            got[got.len() - 2],
            JobUpdate::Missed {
                job_id: "j1".into(),
                count: 1496
            }
        );
        assert_eq!(got.last(), Some(&JobUpdate::Finished(outcome())));
    }

    #[tokio::test]
    async fn a_client_that_keeps_up_gets_every_event_and_no_notice() {
        let (mut relay, mut updates) = Relay::open("j1", 4);
        let mut seen = Vec::new();
        for sequence in 1..=100 {
            relay.event(event(sequence));
            while let Ok(Some(update)) =
                tokio::time::timeout(std::time::Duration::ZERO, updates.next()).await
            {
                seen.push(update);
            }
        }
        relay.finish(outcome());
        seen.extend(updates.collect::<Vec<_>>().await);
        assert_eq!(seen.len(), 102);
        assert!(!seen.iter().any(|u| matches!(u, JobUpdate::Missed { .. })));
        assert_eq!(seen.last(), Some(&JobUpdate::Finished(outcome())));
    }
}
