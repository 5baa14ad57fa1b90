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
use crate::link_registry::ToAgent;
use crate::pki::{common_name, fingerprint};
use crate::store::{AgentRecord, AgentStatus, Grains, JobKind, JobState, Mode, ReleaseRecord};
use crate::wire::{self, internal};

/// Metadata key on a refused attach telling the agent why, so it knows whether enrolling again
/// can help (`unknown`, `superseded`) or not (`rejected`, `pending`).
pub const REFUSAL_REASON: &str = "corpus-refusal";

/// How long an agent has to send its Hello after attaching.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Refuses unless `id` is an accepted agent whose current certificate has `fp`.
fn check_agent(state: &MasterState, id: &str, fp: &str) -> Result<AgentRecord, Status> {
    match state.store.agent(id).map_err(MasterError::from)? {
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
        Some(r) => Ok(r),
    }
}

/// The agent id of the client certificate on this request, if that exact certificate is the
/// one issued to an accepted agent.
pub async fn authenticate_agent<T>(
    state: &Arc<MasterState>,
    request: &Request<T>,
) -> Result<String, Status> {
    let (id, fp) = certificate_identity(request)?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || check_agent(&state, &id, &fp).map(|_| id))
        .await
        .map_err(internal)?
}

/// Refuses a second connection presenting the certificate of an agent whose link is alive (it
/// heartbeated within two periods): the real agent keeps its link, and a copy of its
/// certificate cannot take its jobs over. An agent that lost its connection without the
/// master noticing is let in once the old link has been silent for three periods and dropped;
/// the refusal carries no `corpus-refusal` reason, so the agent simply retries with back-off.
fn refuse_if_live_elsewhere(
    state: &MasterState,
    agent: &str,
    address: &str,
    heartbeat: Duration,
) -> Result<(), Status> {
    let Some((live_address, last_seen)) = state.links.peer(agent) else {
        return Ok(());
    };
    let silent_for = now_unix().saturating_sub(last_seen);
    let alive_within = i64::try_from(heartbeat.as_secs().saturating_mul(2)).unwrap_or(i64::MAX);
    if silent_for > alive_within {
        return Ok(());
    }
    warn!(
        agent,
        %address,
        live_address,
        "refused a second connection with the certificate of agent {agent:?} while its link is alive: possibly a cloned agent certificate"
    );
    Err(Status::already_exists(format!(
        "agent {agent:?} is already connected and heartbeating: a second connection with its certificate is refused (if this is the real agent after a network failure, it is let in once the old link times out)"
    )))
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
        authenticate_agent(&state, &request).await?;
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

        let now = now_unix();
        // Fixed for this link's life; a reload applies to links attached after it.
        let heartbeat = state.settings().heartbeat;
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
        // Checked again and registered under the lock reject and delete take: an operator's
        // decision made while the Hello was awaited can never be undone by this link.
        let (generation, closed, last_seen) = {
            let _guard = state.enroll_lock.lock().await;
            let (agent, fp, peer_address) = (id.clone(), fp.clone(), address.clone());
            let record = tokio::task::spawn_blocking({
                let state = state.clone();
                move || -> Result<AgentRecord, Status> {
                    let mut record = check_agent(&state, &agent, &fp)?;
                    // Before anything of this connection is recorded: a copy's grains (its
                    // root, its isolation) must not replace the live agent's.
                    refuse_if_live_elsewhere(&state, &agent, &peer_address, heartbeat)?;
                    if record.fingerprint.as_deref() == Some(fp.as_str()) {
                        // Attached with its newest certificate: a renewal's old one is done.
                        state.replaced_certificates.forget(&agent);
                    }
                    record.grains = Some(grains);
                    record.last_seen = Some(now);
                    record.address = Some(peer_address);
                    state.store.put_agent(&record).map_err(MasterError::from)?;
                    Ok(record)
                }
            })
            .await
            .map_err(internal)??;
            state.links.register(&record.id, tx, address.clone(), now)
        };
        info!(agent = %id, %address, "agent attached");
        let grace = heartbeat * 3;
        {
            let agent = id.clone();
            state
                .blocking(move |state| {
                    // Results the agent finished while the master was away.
                    for finished in unacknowledged {
                        record_finished(state, &agent, finished);
                    }
                    state.jobs.reconcile(state, &agent, &known_jobs, grace);
                    Ok(())
                })
                .await?;
        }

        let heartbeat_deadline = heartbeat * 3;
        let span = info_span!("link", agent = %id);
        tokio::spawn(
            async move {
                loop {
                    let next = tokio::select! {
                        _ = closed.notified() => break,
                        next = tokio::time::timeout(heartbeat_deadline, inbound.message()) => next,
                    };
                    match next {
                        Ok(Ok(Some(message))) => {
                            last_seen.store(now_unix(), Ordering::Relaxed);
                            if let Some(body) = message.body {
                                let agent = id.clone();
                                // In order, one at a time: a job's events precede its result.
                                let handled = state
                                    .blocking(move |state| {
                                        handle_message(state, &agent, body, grace);
                                        Ok(())
                                    })
                                    .await;
                                if let Err(e) = handled {
                                    warn!(error = %e, "agent message not handled");
                                }
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
                            warn!("no heartbeat within {heartbeat_deadline:?}: dropping the link");
                            break;
                        }
                    }
                }
                state.links.unregister(&id, generation);
                // Under the enrollment lock: never write back over a reject or delete.
                let _guard = state.enroll_lock.lock().await;
                let seen = last_seen.load(Ordering::Relaxed);
                let _ = state
                    .blocking(move |state| {
                        if let Some(mut record) = state.store.agent(&id)? {
                            record.last_seen = Some(seen);
                            state.store.put_agent(&record)?;
                        }
                        Ok(())
                    })
                    .await;
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

/// One message of an agent's link, after its Hello. Blocking (store writes).
fn handle_message(state: &MasterState, agent: &str, body: agent_message::Body, grace: Duration) {
    match body {
        agent_message::Body::Heartbeat(hb) => {
            debug!(sequence = hb.sequence, "heartbeat");
            state.jobs.reconcile(state, agent, &hb.running_jobs, grace);
        }
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
        agent_message::Body::Hello(_) => warn!("a second Hello on the same link: ignored"),
        agent_message::Body::OperatorReturn(ret) => {
            warn!(run = %ret.run_id, "an operator return for no run this master knows: ignored")
        }
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

    #[test]
    fn a_second_connection_is_refused_only_while_the_first_heartbeats() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let heartbeat = Duration::from_secs(10);
        assert!(refuse_if_live_elsewhere(&state, "node1", "10.0.0.2", heartbeat).is_ok());
        let (tx, _rx) = mpsc::channel(1);
        let (_, _, last_seen) = state
            .links
            .register("node1", tx, "10.0.0.1".into(), now_unix());
        match refuse_if_live_elsewhere(&state, "node1", "10.0.0.2", heartbeat) {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::AlreadyExists);
                assert!(status.metadata().get(REFUSAL_REASON).is_none());
                assert!(status.message().contains("already connected"));
            }
            Ok(()) => panic!("a second connection of a live agent was let in"),
        }
        // Silent for more than two heartbeats: the link is presumed dead; the agent gets in.
        last_seen.store(now_unix() - 21, Ordering::Relaxed);
        assert!(refuse_if_live_elsewhere(&state, "node1", "10.0.0.2", heartbeat).is_ok());
        Ok(())
    }
}
