//! The agent's one long-lived stream to the master: attach with the client certificate, say
//! Hello (grains), heartbeat, receive jobs; reconnect forever with jittered exponential backoff.
//! The agent never listens on a port.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_proto::{AgentMessage, Heartbeat, Hello, agent_message, master_message};
use corpus_runtime::Signal;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{error, info, warn};

use std::sync::Arc;

use crate::config::LiveSettings;
use crate::enroll;
use crate::grains::Grains;
use crate::jobs::{self, JobContext};
use crate::lifecycle::Lifecycle;
use crate::results::{self, RunningJobs};
use crate::status::LinkState;

/// Metadata key the master sets on a refused attach (see the master's `link.rs`).
const REFUSAL_REASON: &str = "corpus-refusal";

/// Everything `corpus-agent run` was told.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub master: String,
    /// The corpus CA, the only issuer the agent trusts for the master's certificate.
    pub ca_pem: String,
    pub id: String,
    pub state_dir: PathBuf,
    pub token: Option<String>,
    /// What SIGHUP may change (`config.rs`): new slots are said in a new Hello, a new
    /// heartbeat applies at once.
    pub live: watch::Receiver<LiveSettings>,
    /// How often a pending agent asks whether it was accepted.
    pub enroll_poll: Duration,
    /// How often a rejected agent asks again (an operator may change their mind).
    pub rejected_poll: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Where environments live: `ROOT/<env-uuid>/srv/projects/<project>`.
    pub root: PathBuf,
    /// How long a graceful stop may wait for running jobs before the process exits anyway.
    pub stop_deadline: Duration,
    /// What SIGUSR2 reports; the link keeps it current.
    pub status: Arc<crate::status::AgentStatus>,
    /// Where health checks and webhooks may go (`outbound_allow`).
    pub outbound: crate::config::OutboundAllow,
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling from `min`
/// up to `max`, so a fleet of agents does not reconnect in lockstep after a master restart.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let low = ceiling / 2;
        low + (ceiling - low).mul_f64(rand::random::<f64>())
    }
}

/// The outbox's receiving end, and the messages taken from it lately, sent again on the next
/// link: those still in the stream's buffers when a link breaks never reached the master, and
/// the agent cannot tell which. Every message is idempotent at the master (events stored once by sequence, results
/// applied once), so a duplicate costs nothing. Bounded; the outbox of results (`results.rs`)
/// is the backstop for events and results beyond it.
struct Outgoing {
    /// The outbox's receiving end, shared by every link of the agent's life.
    queue: mpsc::UnboundedReceiver<AgentMessage>,
    recently_sent: VecDeque<AgentMessage>,
    recent_bytes: usize,
}

impl Outgoing {
    /// More than the link's channel (64) holds, with room for what h2 buffers.
    const MAX_MESSAGES: usize = 256;
    const MAX_BYTES: usize = 32 * 1024 * 1024;

    fn weight(message: &AgentMessage) -> usize {
        match &message.body {
            Some(agent_message::Body::Event(e)) => 128 + e.changes_json.len() + e.comment.len(),
            Some(agent_message::Body::Finished(f)) => 256 + f.message.len(),
            Some(agent_message::Body::OperatorReturn(r)) => {
                256 + r.return_json.len() + r.error.len()
            }
            _ => 256,
        }
    }

    fn new(queue: mpsc::UnboundedReceiver<AgentMessage>) -> Self {
        Outgoing {
            queue,
            recently_sent: VecDeque::new(),
            recent_bytes: 0,
        }
    }

    fn remember(&mut self, message: AgentMessage) {
        self.recent_bytes += Self::weight(&message);
        self.recently_sent.push_back(message);
        while self.recently_sent.len() > Self::MAX_MESSAGES || self.recent_bytes > Self::MAX_BYTES {
            match self.recently_sent.pop_front() {
                Some(old) => self.recent_bytes -= Self::weight(&old),
                None => break,
            }
        }
    }
}

/// Why one attached session ended.
enum Ended {
    Stopped,
    /// The link was up (Welcome received) and then ended.
    Closed(String),
    /// The slots changed (SIGHUP): attach again at once, with new grains in the Hello.
    Reconfigured,
}

enum AttachError {
    /// The master refused this certificate; `reason` says whether enrolling again can help.
    Refused {
        reason: String,
        message: String,
    },
    Other(String),
}

/// Runs the agent's link until `stop` says stop, then waits for the jobs in flight: each ends
/// with its result kept on disk, so a graceful stop never loses one. The wait is bounded by
/// `stop_deadline`, enforced by a plain thread, since a lifecycle on a blocking thread would
/// hold the runtime's own timers back.
pub async fn run(options: LinkOptions, stop: watch::Receiver<Signal>) -> anyhow::Result<()> {
    let mut jobs_in_flight = JoinSet::new();
    // Beside the link, never through its stream: a renewal does not cut the link.
    tokio::spawn(crate::renew::run(options.clone(), stop.clone()));
    let linked = link(&options, stop, &mut jobs_in_flight).await;
    enforce_stop_deadline(options.stop_deadline);
    if !jobs_in_flight.is_empty() {
        info!(
            jobs = jobs_in_flight.len(),
            "stopping: waiting for the running jobs to end (at most {:?})", options.stop_deadline
        );
    }
    while jobs_in_flight.join_next().await.is_some() {}
    linked
}

/// Exits the process `deadline` from now, whatever the runtime is doing.
fn enforce_stop_deadline(deadline: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        warn!("graceful stop took longer than {deadline:?}: exiting");
        std::process::exit(1);
    });
}

async fn link(
    options: &LinkOptions,
    mut stop: watch::Receiver<Signal>,
    jobs_in_flight: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut live = options.live.clone();
    let lifecycle =
        Arc::new(Lifecycle::new(options.root.clone()).with_outbound(options.outbound.clone()));
    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    let mut outgoing = Outgoing::new(outbox_rx);
    let running = RunningJobs::default();
    // Deploys a crash interrupted are finished (or undone) before anything else.
    jobs::recover(lifecycle.clone(), options.state_dir.clone(), outbox.clone()).await;
    let mut uploads_resumed = false;
    let mut backoff = Backoff::new(options.reconnect_min, options.reconnect_max);
    loop {
        options.status.set_link(LinkState::Connecting);
        let Some(identity) = enroll::ensure_identity(options, &mut stop).await? else {
            return Ok(());
        };
        let mut grains = crate::grains::for_hello(&options.id, &live.borrow_and_update());
        grains.root = options.root.display().to_string();
        let ctx = Arc::new(JobContext {
            lifecycle: lifecycle.clone(),
            state_dir: options.state_dir.clone(),
            master: options.master.clone(),
            ca_pem: options.ca_pem.clone(),
            identity: identity.clone(),
            grains: crate::grains::to_json(&grains),
            outbox: outbox.clone(),
            running: running.clone(),
            stop: stop.clone(),
        });
        if !uploads_resumed {
            // Releases a stop or a crash left unuploaded, now that the agent can upload.
            uploads_resumed = true;
            jobs_in_flight.spawn(jobs::resume_uploads(ctx.clone()));
        }
        let attached = attach_once(
            options,
            &ctx,
            &grains,
            &mut outgoing,
            &mut stop,
            jobs_in_flight,
            &mut live,
        )
        .await;
        options.status.set_link(LinkState::Waiting);
        let delay = match attached {
            Ok(Ended::Stopped) => {
                options.status.set_link(LinkState::Stopping);
                return Ok(());
            }
            Ok(Ended::Reconfigured) => {
                info!("slots or grains changed: attaching again to say so");
                continue;
            }
            Ok(Ended::Closed(why)) => {
                backoff.reset();
                let delay = backoff.next_delay();
                warn!("link to the master closed ({why}); reconnecting in {delay:?}");
                delay
            }
            Err(AttachError::Refused { reason, message })
                if reason == "unknown" || reason == "superseded" =>
            {
                warn!("{message}: enrolling again");
                enroll::forget_certificate(&options.state_dir);
                continue;
            }
            Err(AttachError::Refused { message, .. }) => {
                error!("the master refused this agent: {message}");
                options.rejected_poll
            }
            Err(AttachError::Other(why)) => {
                let delay = backoff.next_delay();
                match crate::renew::expired_message(&options.id, &identity) {
                    Some(expired) => error!("cannot attach to the master: {expired}"),
                    None => warn!("cannot attach to the master: {why}; retrying in {delay:?}"),
                }
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s == Signal::Stop) => return Ok(()),
        }
    }
}

async fn attach_once(
    options: &LinkOptions,
    ctx: &Arc<JobContext>,
    grains: &Grains,
    outgoing: &mut Outgoing,
    stop: &mut watch::Receiver<Signal>,
    jobs_in_flight: &mut JoinSet<()>,
    live: &mut watch::Receiver<LiveSettings>,
) -> Result<Ended, AttachError> {
    let identity = &ctx.identity;
    let channel = corpus_runtime::tls::dial(
        &options.master,
        &options.ca_pem,
        Some((&identity.certificate_pem, &identity.key_pem)),
    )
    .await
    .map_err(|e| AttachError::Other(e.to_string()))?;

    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            grains: Some(grains.clone().into()),
            unacknowledged: results::unacknowledged(&options.state_dir),
            running_jobs: results::known_jobs(&ctx.running, &options.state_dir),
        })),
    };
    // The channel is fresh and has room: this cannot fail.
    let _ = tx.try_send(hello);
    let mut inbound = AgentLinkClient::new(channel)
        .max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES)
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|status| {
            let reason = status
                .metadata()
                .get(REFUSAL_REASON)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match (status.code(), reason) {
                (Code::PermissionDenied, Some(reason)) => AttachError::Refused {
                    reason,
                    message: status.message().to_owned(),
                },
                _ => AttachError::Other(format!("{:?}: {}", status.code(), status.message())),
            }
        })?
        .into_inner();

    let asked = match inbound.message().await {
        Ok(Some(corpus_proto::MasterMessage {
            body: Some(master_message::Body::Welcome(w)),
        })) => Duration::from_secs(u64::from(w.heartbeat_seconds.max(1))),
        Ok(_) => return Err(AttachError::Other("the master sent no welcome".into())),
        Err(status) => return Err(AttachError::Other(status.message().to_owned())),
    };
    info!(master = %options.master, "attached to the master");
    options.status.set_link(LinkState::Attached);

    // The master drops a link silent for three of its periods: the agent may beat more
    // often than asked, never less.
    let period = |live: &LiveSettings| live.heartbeat.map_or(asked, |h| h.min(asked));
    let mut ticker = tokio::time::interval(period(&live.borrow()));
    ticker.tick().await;
    // What the last link may have lost in its buffers, before anything new.
    for message in outgoing.recently_sent.iter().cloned() {
        if tx.send(message).await.is_err() {
            return Ok(Ended::Closed("outbound stream closed".into()));
        }
    }
    let mut sequence = 0u64;
    loop {
        options
            .status
            .observe(jobs_in_flight.len(), outgoing.queue.len());
        tokio::select! {
            _ = stop.wait_for(|s| *s == Signal::Stop) => return Ok(Ended::Stopped),
            // Reaps finished jobs so the set holds only those in flight.
            Some(_) = jobs_in_flight.join_next(), if !jobs_in_flight.is_empty() => {}
            Ok(()) = live.changed() => {
                let now = live.borrow_and_update().clone();
                if crate::grains::hello_outdated(grains, &now) {
                    return Ok(Ended::Reconfigured);
                }
                ticker = tokio::time::interval(period(&now));
                ticker.tick().await;
            }
            _ = ticker.tick() => {
                sequence += 1;
                let beat = AgentMessage {
                    body: Some(agent_message::Body::Heartbeat(Heartbeat {
                        sequence,
                        running_jobs: results::known_jobs(&ctx.running, &options.state_dir),
                    })),
                };
                if tx.send(beat).await.is_err() {
                    return Ok(Ended::Closed("outbound stream closed".into()));
                }
            }
            queued = outgoing.queue.recv() => {
                let Some(queued) = queued else { continue };
                outgoing.remember(queued.clone());
                if tx.send(queued).await.is_err() {
                    return Ok(Ended::Closed("outbound stream closed".into()));
                }
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.body {
                    Some(master_message::Body::Job(job)) => {
                        jobs::start(ctx, &job.job_id);
                        jobs_in_flight.spawn(jobs::run(ctx.clone(), job));
                    }
                    Some(master_message::Body::Ack(ack)) => {
                        let acked = results::acknowledge(
                            &options.state_dir,
                            &ack.job_id,
                            ack.events_stored,
                        );
                        if let results::AckOutcome::Resend(messages) = acked {
                            info!(
                                job = %ack.job_id,
                                events = messages.len() - 1,
                                "the master misses events of this job: sending them again"
                            );
                            for message in messages {
                                let _ = ctx.outbox.send(message);
                            }
                        }
                    }
                    Some(master_message::Body::OperatorCall(call)) => {
                        jobs_in_flight.spawn(crate::operator::run(ctx.clone(), call));
                    }
                    Some(other) => tracing::debug!(?other, "message from the master"),
                    None => {}
                },
                Ok(None) => return Ok(Ended::Closed("the master ended the stream".into())),
                Err(status) if status.code() == Code::PermissionDenied => {
                    // Rejected or deleted while attached: the next attach tells which.
                    return Ok(Ended::Closed(status.message().to_owned()));
                }
                Err(status) => return Ok(Ended::Closed(status.message().to_owned())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[3] >= Duration::from_secs(4) && delays[3] <= Duration::from_secs(8));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[9] >= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
