//! The Client service: what the `corpus` command talks to. Login is the only call without a
//! session token; every other call carries `authorization: Bearer <token>`.
//!
//! Each call converts its request from the wire, runs the domain operation on a blocking
//! thread ([`MasterState::blocking`]) and converts the answer back; errors become statuses in
//! [`crate::wire`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use corpus_proto::{
    DestroyRequest, Environment, FollowRequest, Host, InitEnvRequest, JobUpdate, ListHostsRequest,
    ListHostsResponse, LoginRequest, LoginResponse, ProjectQuota, ProjectRequest, PushRequest,
    RollbackRequest, SetQuotaRequest, StatusRequest, StatusResponse, push_request,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::error::MasterError;
use crate::{MasterState, deploys, environments, hosts, jobs, render, wire};

/// A host as `corpus listhosts` shows it; without [`hosts::HostView::full`], only what
/// choosing a host needs: no addresses, hostname, kernel, version or root path.
fn host(state: &MasterState, view: hosts::HostView) -> Host {
    let hosts::HostView { agent, used, full } = view;
    let peer = state.links.peer(&agent.id);
    let mut grains = agent.grains.unwrap_or_default();
    let ip = if full {
        grains
            .ip_addresses
            .first()
            .cloned()
            .or_else(|| peer.as_ref().map(|p| p.0.clone()))
            .or(agent.address)
            .unwrap_or_default()
    } else {
        grains = corpus_proto::grains::Grains {
            id: grains.id,
            os: grains.os,
            cpus: grains.cpus,
            memory_bytes: grains.memory_bytes,
            slots: grains.slots,
            guest_type: grains.guest_type,
            isolation: grains.isolation,
            ..Default::default()
        };
        String::new()
    };
    let slots_total = grains.slots;
    Host {
        id: agent.id,
        ip,
        slots_total,
        slots_free: slots_total.saturating_sub(used),
        guest_type: grains.guest_type.clone(),
        connected: peer.is_some(),
        last_seen_unix: peer.map(|p| p.1).or(agent.last_seen).unwrap_or(0),
        grains: Some(grains.into()),
    }
}

pub struct ClientService {
    pub state: Arc<MasterState>,
}

/// A job's updates as the client receives them.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<JobUpdate, Status>> + Send>>;

/// How often an open job stream checks its session besides at every revocation: a session
/// that expires while its stream is open ends the stream within this.
pub const STREAM_SESSION_CHECK: Duration = Duration::from_secs(60);

/// Job updates to forward to a client at most ahead of what it read.
const STREAM_BUFFER: usize = 16;

/// A logged-in request's user and the bearer token it came with.
#[derive(Clone)]
struct Session {
    user: String,
    token: String,
}

/// `updates` of a job in environment `env` for the client of `session`, cut with
/// `unauthenticated` (or `permission_denied`) and a message saying why as soon as the session
/// ends (revoked, logged out, its user disabled or deleted), or the user's access to `env` is
/// revoked (`envs revoke`); checked at every revocation, and every [`STREAM_SESSION_CHECK`] for
/// an expiry.
fn update_stream<S>(
    state: &Arc<MasterState>,
    session: Session,
    env: String,
    updates: S,
) -> Response<UpdateStream>
where
    S: Stream<Item = jobs::JobUpdate> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let state = state.clone();
    let mut revocations = state.auth.revocations();
    let mut updates = Box::pin(updates.map(wire::job_update));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(STREAM_SESSION_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            let check = tokio::select! {
                item = updates.next() => match item {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            return;
                        }
                        false
                    }
                    None => return,
                },
                changed = revocations.changed() => changed.is_ok(),
                _ = every.tick() => true,
                _ = tx.closed() => return,
            };
            if !check {
                continue;
            }
            let Session { user, token } = session.clone();
            let env = env.clone();
            let ended = state
                .blocking(move |s| stream_ended(s, &token, &user, &env))
                .await;
            match ended {
                Ok(Some(status)) => {
                    info!(user = %session.user, "job stream closed: {}", status.message());
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Ok(None) => {}
                // The store failed: the stream goes on; the next check may tell.
                Err(e) => {
                    tracing::warn!(user = %session.user, "cannot check a stream's session: {e}")
                }
            }
        }
    });
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Why a job stream in `env` opened with `token` by `user` must end, as the status it ends
/// with; `None` while the session holds and the user may still see `env`. An environment that
/// is gone (a destroy's own stream) does not end it: the job's updates say how it ended.
fn stream_ended(
    state: &MasterState,
    token: &str,
    user: &str,
    env: &str,
) -> Result<Option<Status>, MasterError> {
    if let Some(reason) = state.auth.session_ended(token, user)? {
        return Ok(Some(Status::unauthenticated(reason)));
    }
    match environments::authorize(state, user, env) {
        Err(MasterError::Forbidden(_)) => Ok(Some(Status::permission_denied(format!(
            "your access to environment {env} was revoked: this stream is closed"
        )))),
        Ok(_) | Err(MasterError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bearer token on a request.
fn bearer_token<T>(request: &Request<T>) -> Result<String, Status> {
    let header = request
        .metadata()
        .get(corpus_proto::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("not logged in: no session token on the request"))?;
    Ok(header.strip_prefix("Bearer ").unwrap_or(header).to_owned())
}

async fn session<T>(state: &Arc<MasterState>, request: &Request<T>) -> Result<Session, Status> {
    let token = bearer_token(request)?;
    let user = session_user(state, request).await?;
    Ok(Session { user, token })
}

pub async fn session_user<T>(
    state: &Arc<MasterState>,
    request: &Request<T>,
) -> Result<String, Status> {
    let token = bearer_token(request)?;
    Ok(state
        .blocking(move |s| Ok(s.auth.session_user(&token)?))
        .await?)
}

#[tonic::async_trait]
impl corpus_proto::client_server::Client for ClientService {
    type InitProjectStream = UpdateStream;
    type PushStream = UpdateStream;
    type RollbackStream = UpdateStream;
    type DestroyStream = UpdateStream;
    type FollowStream = UpdateStream;

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let source = crate::auth::login_source(request.remote_addr().map(|a| a.ip()));
        let LoginRequest { id, password } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let user = id.clone();
        // Refused at once past the source's share, before queueing for a hash slot.
        let _ticket = self
            .state
            .auth
            .admit_login(source)
            .map_err(MasterError::from)?;
        let _slot = self
            .state
            .login_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the master is stopping"))?;
        let (token, expires_at_unix) = self
            .state
            .blocking(move |s| Ok(s.auth.login(&user, &password, source)?))
            .await?;
        info!(user = %id, "user logged in");
        Ok(Response::new(LoginResponse {
            token,
            expires_at_unix,
        }))
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let user = session_user(&self.state, &request).await?;
        let hosts = self
            .state
            .blocking(move |state| {
                Ok(hosts::visible_hosts(state, &user)?
                    .into_iter()
                    .map(|view| host(state, view))
                    .collect())
            })
            .await?;
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn init_env(
        &self,
        request: Request<InitEnvRequest>,
    ) -> Result<Response<Environment>, Status> {
        let user = session_user(&self.state, &request).await?;
        let req = request.into_inner();
        let env = self
            .state
            .blocking(move |s| {
                environments::init_env(s, &user, &req.platform, &req.host, &req.mode)
            })
            .await?;
        Ok(Response::new(wire::environment(&env)))
    }

    async fn init_project(
        &self,
        request: Request<ProjectRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let session = session(&self.state, &request).await?;
        let user = session.user.clone();
        let req = request.into_inner();
        let env_uuid = req.env_uuid.clone();
        let updates = self
            .state
            .blocking(move |s| deploys::init_project(s, &user, &req.env_uuid, &req.project))
            .await?;
        Ok(update_stream(&self.state, session, env_uuid, updates))
    }

    async fn push(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let session = session(&self.state, &request).await?;
        let user = session.user.clone();
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PushRequest {
                body: Some(push_request::Body::Header(header)),
            }) => wire::push_request(header),
            _ => return Err(Status::invalid_argument("a push starts with its header")),
        };
        let (env, room) = {
            let (user, header) = (user.clone(), header.clone());
            self.state
                .blocking(move |s| deploys::check_push(s, &user, &header))
                .await?
        };
        let limit = deploys::MAX_SOURCE_BYTES.min(room);
        let mut writer = self
            .state
            .blobs
            .writer(limit)
            .await
            .map_err(MasterError::from)?;
        while let Some(message) = stream.message().await? {
            match message.body {
                Some(push_request::Body::SourceChunk(chunk)) => {
                    writer.write(&chunk).await.map_err(MasterError::from)?
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only source chunks may follow a push header",
                    ));
                }
            }
        }
        let expected_size = (header.source_size > 0).then_some(header.source_size);
        let (digest, size, pin) = writer
            .finish_pinned(&header.source_digest, expected_size)
            .await
            .map_err(MasterError::from)?;
        let archive = self.state.blobs.path(&digest).map_err(MasterError::from)?;
        info!(user = %user, env = %env.uuid, project = %header.project, source = %digest, "push received");
        // Dropped with this future when the client goes away: the render stops.
        let cancel = deploys::PushCancel::default();
        let _cancel_on_disconnect = cancel.on_drop();
        let env_uuid = header.env_uuid.clone();
        // Rendering runs user templates: off the async workers, so a slow one never stalls
        // heartbeats or logins (fuel bounds how long it can take).
        let updates = self
            .state
            .blocking(move |s| {
                let pushed = (|| {
                    // The announced size may have been a lie: the quota and the storage
                    // ceilings hold for what arrived.
                    environments::check_quota(s, &env.uuid, &header.project, size)?;
                    crate::blob_gc::check_ceilings(s, &env.owner, size, Some(&digest))?;
                    let salt = render::read_salt_tree(&archive)?;
                    deploys::push(s, &user, &header, &env, &digest, &salt, &cancel)
                })();
                match pushed {
                    Ok(updates) => {
                        // The job names the blob now: the collector keeps it.
                        drop(pin);
                        Ok(updates)
                    }
                    Err(e) => {
                        // A refused (or abandoned) push leaves no upload behind.
                        if cancel.is_cancelled() {
                            info!(source = %digest, "push cancelled: its client went away");
                        }
                        crate::blob_gc::discard(s, pin);
                        Err(e)
                    }
                }
            })
            .await?;
        Ok(update_stream(&self.state, session, env_uuid, updates))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let session = session(&self.state, &request).await?;
        let user = session.user.clone();
        let req = request.into_inner();
        let env_uuid = req.env_uuid.clone();
        let updates = self
            .state
            .blocking(move |s| {
                deploys::rollback(s, &user, &req.env_uuid, &req.project, &req.to_deploy_id)
            })
            .await?;
        Ok(update_stream(&self.state, session, env_uuid, updates))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let user = session_user(&self.state, &request).await?;
        let req = request.into_inner();
        let (environment, projects, running) = self
            .state
            .blocking(move |s| deploys::status(s, &user, &req.env_uuid, &req.project))
            .await?;
        Ok(Response::new(StatusResponse {
            environment: Some(wire::environment(&environment)),
            projects: projects.into_iter().map(wire::project_status).collect(),
            running_jobs: running.into_iter().map(wire::running_job).collect(),
        }))
    }

    async fn destroy(
        &self,
        request: Request<DestroyRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let session = session(&self.state, &request).await?;
        let user = session.user.clone();
        let req = request.into_inner();
        let env_uuid = req.env_uuid.clone();
        let updates = self
            .state
            .blocking(move |s| deploys::destroy(s, &user, &req.env_uuid, &req.project))
            .await?;
        Ok(update_stream(&self.state, session, env_uuid, updates))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<ProjectQuota>, Status> {
        let user = session_user(&self.state, &request).await?;
        let req = request.into_inner();
        let project = self
            .state
            .blocking(move |s| {
                environments::set_quota(s, &user, &req.env_uuid, &req.project, req.delta_bytes)
            })
            .await?;
        Ok(Response::new(wire::quota(&project)))
    }

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let session = session(&self.state, &request).await?;
        let user = session.user.clone();
        let req = request.into_inner();
        let env_uuid = req.env_uuid.clone();
        let updates = self
            .state
            .blocking(move |s| {
                let env = environments::authorize(s, &user, &req.env_uuid)?;
                let job = if req.job_id.is_empty() {
                    s.store
                        .project_jobs(&env.uuid, &req.project)?
                        .into_iter()
                        .max_by_key(|j| (j.created_at, j.created_ms))
                        .ok_or_else(|| {
                            MasterError::not_found(
                                "job",
                                &req.project,
                                format!(
                                    "project {:?} of environment {} has no job",
                                    req.project, env.uuid
                                ),
                            )
                        })?
                } else {
                    s.store
                        .job(&req.job_id)?
                        .filter(|j| j.env_uuid == env.uuid)
                        .ok_or_else(|| {
                            MasterError::not_found(
                                "job",
                                &req.job_id,
                                format!("no such job in environment {}", env.uuid),
                            )
                        })?
                };
                s.jobs.follow(s, &job, req.from_sequence)
            })
            .await?;
        Ok(update_stream(&self.state, session, env_uuid, updates))
    }

    async fn logout(
        &self,
        request: Request<corpus_proto::Empty>,
    ) -> Result<Response<corpus_proto::Empty>, Status> {
        let user = session_user(&self.state, &request).await?;
        let token = bearer_token(&request)?;
        self.state
            .blocking(move |s| Ok(s.auth.logout(&token)?))
            .await?;
        info!(user = %user, "user logged out");
        Ok(Response::new(corpus_proto::Empty {}))
    }
}
