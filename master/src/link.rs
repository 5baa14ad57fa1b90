//! The AgentLink service: mutual-TLS streams from accepted agents. Only the certificate the
//! master issued last to an accepted agent may attach; the agent's first message is its Hello
//! (grains), then heartbeats. Messages are converted here, at the edge: the jobs logic and the
//! link registry only see domain values.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corpus_proto::{
    AgentMessage, BlobChunk, BlobRef, FetchBlobRequest, JobFinished, MasterMessage,
    UploadBlobRequest, Welcome, agent_message, master_message, upload_blob_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::MasterState;
use crate::auth::now_unix;
use crate::error::{MasterError, MasterResult};
use crate::link_confirm;
use crate::link_registry::{LinkSender, Registered, ToAgent};
use crate::pki::{common_name, fingerprint};
use crate::store::{Admission, AgentStatus, Grains, JobKind, JobState, Mode, ReleaseRecord};
use crate::wire::{self, internal};

/// Metadata key on a refused attach telling the agent why, so it knows whether enrolling again
/// can help (`unknown`, `superseded`) or not (`rejected`, `pending`).
pub const REFUSAL_REASON: &str = "corpus-refusal";

/// How long an agent has to send its Hello after attaching: generous, since under a connect
/// storm a healthy agent's Hello can wait behind thousands of TLS handshakes.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AgentLinkService {
    pub state: Arc<MasterState>,
}

fn refused(reason: &'static str, message: String) -> Status {
    let mut status = Status::permission_denied(message);
    status
        .metadata_mut()
        .insert(REFUSAL_REASON, MetadataValue::from_static(reason));
    status
}

/// The agent id and certificate fingerprint of the client certificate on this request.
fn certificate_identity<T>(request: &Request<T>) -> Result<(String, String), Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate is required: enroll the agent first")
    })?;
    let der = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let id = common_name(der)
        .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
    Ok((id, fingerprint(der)))
}

/// Refuses unless `id` is an accepted agent whose current certificate has `fp`: from the
/// store's agent index (no store read, no blocking trip), or from the record when the index is
/// not built.
async fn check_agent(state: &Arc<MasterState>, id: &str, fp: &str) -> Result<(), Status> {
    if let Some(admission) = state.store.cached_admission(id) {
        return admit(state, admission.as_ref(), id, fp);
    }
    let (agent, fp) = (id.to_owned(), fp.to_owned());
    state
        .blocking(move |state| {
            let record = state.store.agent(&agent)?;
            Ok(admit(
                state,
                record.as_ref().map(Admission::of).as_ref(),
                &agent,
                &fp,
            ))
        })
        .await?
}

/// Whether the stored agent (None: not known) lets the certificate with `fp` attach as `id`.
pub(crate) fn admit(
    state: &MasterState,
    stored: Option<&Admission>,
    id: &str,
    fp: &str,
) -> Result<(), Status> {
    match stored {
        None => Err(refused(
            "unknown",
            format!("agent {id:?} is not known to the master (deleted?): enroll again"),
        )),
        Some(r) if r.status == AgentStatus::Rejected => Err(refused(
            "rejected",
            format!("agent {id:?} was rejected by an operator"),
        )),
        Some(r) if r.status == AgentStatus::Pending => Err(refused(
            "pending",
            format!("agent {id:?} is pending acceptance"),
        )),
        // A renewal's replaced certificate stays valid for links until the agent attaches
        // with its new one (`renew.rs`).
        Some(r)
            if r.fingerprint.as_deref() != Some(fp)
                && !state
                    .replaced_certificates
                    .honours(id, fp, r.fingerprint.as_deref()) =>
        {
            Err(refused(
                "superseded",
                format!("the certificate of agent {id:?} is no longer valid: enroll again"),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The agent id of the client certificate on this request, if that exact certificate is the
/// one issued to an accepted agent.
pub async fn authenticate_agent<T>(
    state: &Arc<MasterState>,
    request: &Request<T>,
) -> Result<String, Status> {
    let (id, fp) = certificate_identity(request)?;
    check_agent(state, &id, &fp).await?;
    Ok(id)
}

/// Registers the link of `agent`, unless a second connection presents the certificate of an
/// agent whose link is alive (it heartbeated within two periods): the real agent keeps its
/// link, and a copy of its certificate cannot take its jobs over. An agent that lost its
/// connection without the master noticing is let in once the old link has been silent for
/// three periods and dropped; the refusal carries no `corpus-refusal` reason, so the agent
/// simply retries with back-off. Checked and registered in one step of the registry, without
/// a global lock or a disk write.
fn register_link(
    state: &MasterState,
    agent: &str,
    address: &str,
    heartbeat: Duration,
    sender: LinkSender,
) -> Result<Registered, Status> {
    let alive_within = i64::try_from(heartbeat.as_secs().saturating_mul(2)).unwrap_or(i64::MAX);
    state
        .links
        .register_unless_live(agent, sender, address.to_owned(), now_unix(), alive_within)
        .map_err(|live_address| {
            warn!(
                agent,
                %address,
                live_address,
                "refused a second connection with the certificate of agent {agent:?} while its link is alive: possibly a cloned agent certificate"
            );
            Status::already_exists(format!(
                "agent {agent:?} is already connected and heartbeating: a second connection with its certificate is refused (if this is the real agent after a network failure, it is let in once the old link times out)"
            ))
        })
}

/// Writes the last-seen times and addresses of the agents that attached or detached since
/// the last save, in one batch. Blocking; returns how many records were written.
pub fn save_last_seen(state: &MasterState) -> MasterResult<usize> {
    let unsaved = state.links.take_unsaved();
    if unsaved.is_empty() {
        return Ok(0);
    }
    // Never write back over a decision (enroll, accept, reject, delete) or new grains.
    let _decisions = state.enroll_lock.blocking_lock();
    let _records = state.links.lock_record_writes();
    let seen = unsaved
        .iter()
        .map(|(agent, seen)| (agent.as_str(), seen.last_seen, seen.address.as_str()));
    match state.store.record_seen(seen) {
        Ok(written) => Ok(written),
        Err(e) => {
            state.links.restore_unsaved(unsaved);
            Err(e.into())
        }
    }
}

/// How often the last-seen times of agents that came and went are written.
pub const SEEN_SAVE_INTERVAL: Duration = Duration::from_secs(3);

/// Saves last-seen times every [`SEEN_SAVE_INTERVAL`] until `stop`; the final save at stop is
/// the caller's (after the links are closed).
pub async fn save_seen_periodically(
    state: Arc<MasterState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SEEN_SAVE_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match state.blocking(save_last_seen).await {
            Ok(0) => {}
            Ok(written) => debug!(written, "saved agents' last-seen times"),
            Err(e) => {
                warn!(error = %e, "cannot save agents' last-seen times: retrying in {SEEN_SAVE_INTERVAL:?}")
            }
        }
    }
}

type MasterStream = Pin<Box<dyn Stream<Item = Result<MasterMessage, Status>> + Send>>;
type BlobStream = ReceiverStream<Result<BlobChunk, Status>>;

#[tonic::async_trait]
impl corpus_proto::agent_link_server::AgentLink for AgentLinkService {
    type AttachStream = MasterStream;
    type FetchBlobStream = BlobStream;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<MasterStream>, Status> {
        let state = self.state.clone();
        let (id, fp) = certificate_identity(&request)?;
        check_agent(&state, &id, &fp).await?;
        info!(agent = %id, "agent certificate accepted; awaiting its hello");
        let address = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {HELLO_TIMEOUT:?} of attaching: the agent's first message must be its Hello"
                )));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "an agent's first message must be its Hello",
                ));
            }
        };
        let unacknowledged = hello.unacknowledged;
        let known_jobs = hello.running_jobs;
        let grains: Grains = hello.grains.unwrap_or_default().into();
        if grains.id != id {
            return Err(Status::invalid_argument(format!(
                "grains id {:?} does not match the certificate's agent id {id:?}",
                grains.id
            )));
        }

        // Fixed for this link's life; a reload applies to links attached after it.
        let heartbeat = state.heartbeat();
        let (tx, rx) = mpsc::channel(64);
        let welcome = MasterMessage {
            body: Some(master_message::Body::Welcome(Welcome {
                heartbeat_seconds: heartbeat.as_secs().max(1) as u32,
                master_version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        // The welcome goes first, then whatever the registry sends (jobs, acks, a close).
        let outbound: MasterStream = Box::pin(
            tokio_stream::once(Ok(welcome)).chain(ReceiverStream::new(rx).map(wire::to_agent)),
        );
        // Registered before anything of this connection is recorded: a copy's grains (its
        // root, its isolation) must not replace the live agent's.
        let (generation, closed, last_seen) = register_link(&state, &id, &address, heartbeat, tx)?;
        let grace = heartbeat * 3;
        // From memory when nothing changed (a restart's reconnect), else with the grains
        // batched with other attaches' (`link_confirm.rs`).
        let mut confirmed = link_confirm::confirm(&state, &id, &fp, grains).await;
        // The results the agent finished while the master was away, and the jobs it no longer
        // knows: one trip off the async workers, only when there is something to record.
        let lost = state.jobs.lost_jobs(&id, &known_jobs, grace);
        if confirmed.is_ok() && (!unacknowledged.is_empty() || !lost.is_empty()) {
            let agent = id.clone();
            confirmed = state
                .blocking(move |state| {
                    for finished in unacknowledged {
                        record_finished(state, &agent, finished);
                    }
                    state.jobs.fail_lost(state, &agent, lost);
                    Ok(())
                })
                .await
                .map_err(Status::from);
        }
        if let Err(status) = confirmed {
            state.links.forget(&id, generation);
            return Err(status);
        }
        info!(agent = %id, %address, "agent attached");

        // The agent's first heartbeat is due one period after the Welcome; then it has three
        // periods for each message, as for every later one.
        let heartbeat_deadline = heartbeat * 3;
        let mut deadline = heartbeat + heartbeat_deadline;
        let span = info_span!("link", agent = %id);
        tokio::spawn(
            async move {
                loop {
                    let next = tokio::select! {
                        _ = closed.notified() => break,
                        next = tokio::time::timeout(deadline, inbound.message()) => next,
                    };
                    deadline = heartbeat_deadline;
                    match next {
                        Ok(Ok(Some(message))) => {
                            last_seen.store(now_unix(), Ordering::Relaxed);
                            if let Some(body) = message.body {
                                // In order, one at a time: a job's events precede its result.
                                handle_message(&state, &id, body, grace).await;
                            }
                        }
                        Ok(Ok(None)) => {
                            info!("agent closed its link");
                            break;
                        }
                        Ok(Err(status)) => {
                            info!(error = %status.message(), "agent link broken");
                            break;
                        }
                        Err(_) => {
                            warn!("no heartbeat within {deadline:?}: dropping the link");
                            break;
                        }
                    }
                }
                // In memory only: the saver writes when the agent was last seen.
                state.links.unregister(&id, generation);
            }
            .instrument(span),
        );
        Ok(Response::new(outbound))
    }

    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<BlobStream>, Status> {
        let agent = authenticate_agent(&self.state, &request).await?;
        let FetchBlobRequest { digest, env_uuid } = request.into_inner();
        let granted = {
            let (agent, env_uuid, digest) = (agent.clone(), env_uuid.clone(), digest.clone());
            self.state
                .blocking(move |state| {
                    let env = state.store.environment(&env_uuid)?;
                    Ok(env.is_some_and(|e| e.agent == agent)
                        && state.store.blob_granted(&env_uuid, &digest)?)
                })
                .await?
        };
        if !granted {
            warn!(agent = %agent, env = %env_uuid, "blob fetch refused");
            return Err(Status::permission_denied(format!(
                "blob {digest:?} is not available to agent {agent:?} for environment {env_uuid:?}"
            )));
        }
        let (mut file, _size) = self
            .state
            .blobs
            .open_blob(&digest)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(BlobChunk {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<UploadBlobRequest>>,
    ) -> Result<Response<BlobRef>, Status> {
        let state = &self.state;
        let agent = authenticate_agent(state, &request).await?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(UploadBlobRequest {
                body: Some(upload_blob_request::Body::Header(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("an upload starts with its header")),
        };
        let (job, limit) = {
            let (agent, header) = (agent.clone(), header.clone());
            state
                .blocking(move |state| uploading_job(state, &agent, &header))
                .await?
        };
        let mut writer = state.blobs.writer(limit).await.map_err(MasterError::from)?;
        while let Some(message) = stream.message().await? {
            match message.body {
                Some(upload_blob_request::Body::Data(chunk)) => {
                    writer.write(&chunk).await.map_err(MasterError::from)?
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only data may follow an upload header",
                    ));
                }
            }
        }
        let (digest, size) = writer
            .finish(&header.digest, Some(header.size))
            .await
            .map_err(MasterError::from)?;
        let manifest = serde_json::from_slice(&header.manifest_json).unwrap_or_default();
        let release = {
            let digest = digest.clone();
            state
                .blocking(move |state| record_release(state, job, digest, size, manifest))
                .await?
        };
        info!(agent = %agent, project = %release.project, release = %release.id, size, "release uploaded");
        Ok(Response::new(BlobRef { digest, size }))
    }

    /// A new certificate for the agent's new key (`renew.rs`); the agent's link stays up.
    async fn renew(
        &self,
        request: Request<corpus_proto::RenewRequest>,
    ) -> Result<Response<corpus_proto::RenewResponse>, Status> {
        let (agent, presented) = certificate_identity(&request)?;
        let csr_pem = request.into_inner().csr_pem;
        let _guard = self.state.enroll_lock.lock().await;
        let renewed = {
            let agent = agent.clone();
            self.state
                .blocking(move |state| crate::renew::renew(state, &agent, &presented, &csr_pem))
                .await
        };
        match renewed {
            Ok(renewed) => {
                info!(agent = %agent, fingerprint = %renewed.fingerprint, expires = %corpus_runtime::format_unix_time(renewed.not_after), "agent certificate renewed");
                Ok(Response::new(corpus_proto::RenewResponse {
                    certificate_pem: renewed.certificate_pem,
                    not_after_unix: renewed.not_after,
                }))
            }
            Err(e) => {
                warn!(agent = %agent, "{e}");
                Err(e.into())
            }
        }
    }
}

/// The running cooking deploy of `agent` an upload belongs to, and the most it may upload.
/// Only such a job may upload, and only its release.
fn uploading_job(
    state: &MasterState,
    agent: &str,
    header: &corpus_proto::UploadHeader,
) -> MasterResult<(crate::store::JobRecord, u64)> {
    let job = state
        .store
        .job(&header.job_id)?
        .filter(|j| {
            j.agent == agent
                && j.env_uuid == header.env_uuid
                && j.project == header.project
                && j.kind == JobKind::Deploy
                && j.mode == Mode::Cooking
                && j.state == JobState::Running
        })
        .ok_or_else(|| {
            MasterError::Refused(
                "no running cooking job of this agent expects this upload".to_owned(),
            )
        })?;
    let project = state.store.project(&job.env_uuid, &job.project)?;
    let limit = project.map_or(crate::store::DEFAULT_QUOTA_BYTES, |p| p.quota_bytes);
    Ok((job, limit))
}

/// Records a release a cooking job uploaded, with the cooking environment's right to fetch it
/// again (a redeploy of its own release) and the job's reference to it.
fn record_release(
    state: &MasterState,
    job: crate::store::JobRecord,
    digest: String,
    size: u64,
    manifest: serde_json::Value,
) -> MasterResult<ReleaseRecord> {
    let env = state.store.environment(&job.env_uuid)?.ok_or_else(|| {
        MasterError::not_found(
            "environment",
            job.env_uuid.clone(),
            " (the job's environment is gone)",
        )
    })?;
    let release = ReleaseRecord {
        id: job.deploy_id.clone(),
        project: job.project.clone(),
        env_uuid: job.env_uuid.clone(),
        owner: env.owner,
        digest: digest.clone(),
        size,
        commit: job.commit.clone(),
        created_at: now_unix(),
        manifest,
    };
    // The job may have finished while the archive was uploaded: update what is stored now.
    let mut job = state.store.job(&job.id)?.unwrap_or(job);
    job.release_blob = Some(digest);
    state.store.record_release(&release, &job)?;
    Ok(release)
}

/// One message of an agent's link, after its Hello. What memory alone answers (a heartbeat
/// that lost no job, an operator return) is handled on the async worker: at 10,000 agents a
/// blocking-thread trip per heartbeat costs more than the heartbeat. The rest (store writes)
/// takes one blocking trip.
async fn handle_message(
    state: &Arc<MasterState>,
    agent: &str,
    body: agent_message::Body,
    grace: Duration,
) {
    let stored = match body {
        agent_message::Body::Heartbeat(hb) => {
            debug!(sequence = hb.sequence, "heartbeat");
            let lost = state.jobs.lost_jobs(agent, &hb.running_jobs, grace);
            if lost.is_empty() {
                return;
            }
            let agent = agent.to_owned();
            state
                .blocking(move |state| {
                    state.jobs.fail_lost(state, &agent, lost);
                    Ok(())
                })
                .await
        }
        agent_message::Body::OperatorReturn(ret) => {
            let run = ret.run_id.clone();
            if !state.runs.on_return(agent, ret) {
                warn!(%run, "an operator return no call of this master awaits (unknown run, or timed out): ignored")
            }
            return;
        }
        agent_message::Body::Hello(_) => {
            warn!("a second Hello on the same link: ignored");
            return;
        }
        body => {
            let agent = agent.to_owned();
            state
                .blocking(move |state| {
                    store_message(state, &agent, body);
                    Ok(())
                })
                .await
        }
    };
    if let Err(e) = stored {
        warn!(error = %e, "agent message not handled");
    }
}

/// A message of an agent's link that writes to the store: events, results, usage, removed
/// projects. Blocking.
fn store_message(state: &MasterState, agent: &str, body: agent_message::Body) {
    match body {
        agent_message::Body::Event(event) => {
            if let Err(e) = state.jobs.on_event(state, agent, wire::job_event_in(event)) {
                warn!(error = %e, "event refused");
            }
        }
        agent_message::Body::Finished(finished) => record_finished(state, agent, finished),
        agent_message::Body::Usage(usage) => {
            if let Err(e) = state.jobs.on_usage(state, agent, wire::usage_in(usage)) {
                warn!(error = %e, "usage report refused");
            }
        }
        agent_message::Body::Removed(removed) => {
            if let Err(e) =
                state
                    .jobs
                    .on_project_removed(state, agent, wire::project_removed_in(removed))
            {
                warn!(error = %e, "project removal refused");
            }
        }
        // Answered from memory by `handle_message`.
        agent_message::Body::Heartbeat(_)
        | agent_message::Body::OperatorReturn(_)
        | agent_message::Body::Hello(_) => {}
    }
}

/// Applies a job result and acknowledges it, so the agent forgets it.
fn record_finished(state: &MasterState, agent: &str, finished: JobFinished) {
    let job_id = finished.job_id.clone();
    match state
        .jobs
        .on_finished(state, agent, wire::job_outcome_in(finished))
    {
        Ok(()) => {
            // What the ack covers: the agent resends any event beyond it, then the result.
            let events_stored = match state.jobs.events_stored(state, &job_id) {
                Ok(stored) => stored,
                Err(e) => {
                    warn!(job = %job_id, error = %e, "cannot count the job's stored events");
                    0
                }
            };
            if let Some(link) = state.links.sender(agent) {
                let _ = link.try_send(ToAgent::Ack {
                    job_id,
                    events_stored,
                });
            }
        }
        Err(e) => warn!(job = %job_id, error = %e, "job result refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link_confirm::confirm_link;
    use crate::test_support::accepted_agent;

    #[test]
    fn a_second_connection_is_refused_only_while_the_first_heartbeats() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let heartbeat = Duration::from_secs(10);
        let (tx, _rx) = mpsc::channel(1);
        let (_, _, last_seen) = register_link(&state, "node1", "10.0.0.1", heartbeat, tx)?;
        let (tx, _rx2) = mpsc::channel(1);
        match register_link(&state, "node1", "10.0.0.2", heartbeat, tx) {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::AlreadyExists);
                assert!(status.metadata().get(REFUSAL_REASON).is_none());
                assert!(status.message().contains("already connected"));
            }
            Ok(_) => panic!("a second connection of a live agent was let in"),
        }
        assert_eq!(
            state.links.peer("node1").map(|p| p.0),
            Some("10.0.0.1".into())
        );
        // Silent for more than two heartbeats: the link is presumed dead; the agent gets in.
        last_seen.store(now_unix() - 21, Ordering::Relaxed);
        let (tx, _rx3) = mpsc::channel(1);
        assert!(register_link(&state, "node1", "10.0.0.2", heartbeat, tx).is_ok());
        assert_eq!(
            state.links.peer("node1").map(|p| p.0),
            Some("10.0.0.2".into())
        );
        Ok(())
    }

    #[test]
    fn attach_and_detach_write_nothing_until_the_save_which_writes_one_batch() -> anyhow::Result<()>
    {
        let (_dir, state) = crate::test_state()?;
        let heartbeat = Duration::from_secs(10);
        let mut generations = Vec::new();
        for id in ["node1", "node2"] {
            let record = accepted_agent(&state, id)?;
            let fp = record.fingerprint.clone().unwrap_or_default();
            let (tx, _rx) = mpsc::channel(1);
            let (generation, _, last_seen) = register_link(&state, id, "10.0.0.9", heartbeat, tx)?;
            let grains = Grains {
                id: id.into(),
                slots: 3,
                ..Grains::default()
            };
            confirm_link(&state, id, &fp, &grains)?;
            last_seen.store(1_000, Ordering::Relaxed);
            generations.push((id, generation));
        }
        // The grains are stored at once (placement needs them); the last-seen time is not.
        let stored = state
            .store
            .agent("node1")?
            .unwrap_or_else(|| panic!("node1 is gone"));
        assert_eq!(stored.grains.map(|g| g.slots), Some(3));
        assert_eq!(stored.last_seen, None);
        for (id, generation) in generations {
            state.links.unregister(id, generation);
        }
        assert_eq!(state.store.agent("node2")?.and_then(|a| a.last_seen), None);
        assert_eq!(save_last_seen(&state)?, 2);
        for id in ["node1", "node2"] {
            let stored = state
                .store
                .agent(id)?
                .unwrap_or_else(|| panic!("{id} is gone"));
            assert_eq!(stored.last_seen, Some(1_000));
            assert_eq!(stored.address.as_deref(), Some("10.0.0.9"));
        }
        // Nothing new: nothing written.
        assert_eq!(save_last_seen(&state)?, 0);
        Ok(())
    }

    #[test]
    fn a_link_registered_after_a_reject_is_refused_and_a_deleted_agent_not_recreated()
    -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let heartbeat = Duration::from_secs(10);
        let record = accepted_agent(&state, "node1")?;
        let fp = record.fingerprint.clone().unwrap_or_default();
        let grains = Grains {
            id: "node1".into(),
            ..Grains::default()
        };
        // The operator rejects while the Hello is awaited: the link registers, then is refused.
        let mut rejected = record.clone();
        rejected.status = AgentStatus::Rejected;
        state.store.put_agent(&rejected)?;
        let (tx, _rx) = mpsc::channel(1);
        register_link(&state, "node1", "10.0.0.9", heartbeat, tx)?;
        match confirm_link(&state, "node1", &fp, &grains) {
            Err(status) => assert!(status.message().contains("rejected"), "{status:?}"),
            Ok(()) => panic!("a rejected agent's link was confirmed"),
        }
        assert_eq!(
            state.store.agent("node1")?.map(|a| a.status),
            Some(AgentStatus::Rejected)
        );
        // A deleted agent's last-seen time is not saved into a new record.
        state.store.delete_agent("node1")?;
        state.links.close_all();
        save_last_seen(&state)?;
        assert_eq!(state.store.agent("node1")?, None);
        Ok(())
    }
}
