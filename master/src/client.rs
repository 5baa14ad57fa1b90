//! The Client service: what the `corpus` command talks to. Login is the only call without a
//! session token; every other call carries `authorization: Bearer <token>`.

use std::sync::Arc;

use corpus_proto::{
    DestroyRequest, Environment, Host, InitEnvRequest, ListHostsRequest, ListHostsResponse,
    LoginRequest, LoginResponse, ProjectQuota, ProjectRequest, PushRequest, RollbackRequest,
    SetQuotaRequest, StatusRequest, StatusResponse, push_request,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::MasterState;
use crate::auth::AuthError;
use crate::status::internal;
use crate::store::AgentStatus;
use crate::{deploys, render};

pub struct ClientService {
    pub state: Arc<MasterState>,
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials | AuthError::BadSession => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::RateLimited { .. } => Status::resource_exhausted(e.to_string()),
            AuthError::WeakPassword => Status::invalid_argument(e.to_string()),
            AuthError::UserExists(_) => Status::already_exists(e.to_string()),
            AuthError::Store(_) | AuthError::Hash(_) => internal(e),
        }
    }
}

/// The user behind the request's bearer token.
pub fn session_user<T>(state: &MasterState, request: &Request<T>) -> Result<String, Status> {
    let header = request
        .metadata()
        .get(corpus_proto::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("not logged in: no session token on the request"))?;
    let token = header.strip_prefix("Bearer ").unwrap_or(header);
    Ok(state.auth.session_user(token)?)
}

use crate::jobs::Updates;

#[tonic::async_trait]
impl corpus_proto::client_server::Client for ClientService {
    type InitProjectStream = Updates;
    type PushStream = Updates;
    type RollbackStream = Updates;
    type DestroyStream = Updates;

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let LoginRequest { id, password } = request.into_inner();
        corpus_proto::names::validate_user_id(&id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.state.clone();
        let user = id.clone();
        let _slot = self
            .state
            .login_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the master is stopping"))?;
        let (token, expires_at_unix) =
            tokio::task::spawn_blocking(move || state.auth.login(&user, &password))
                .await
                .map_err(internal)??;
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
        session_user(&self.state, &request)?;
        let state = &self.state;
        let hosts = state
            .store
            .agents()
            .map_err(internal)?
            .into_iter()
            .filter(|a| a.status == AgentStatus::Accepted)
            .map(|a| {
                let peer = state.links.peer(&a.id);
                let grains = a.grains.clone().unwrap_or_default();
                let ip = grains
                    .ip_addresses
                    .first()
                    .cloned()
                    .or_else(|| peer.as_ref().map(|p| p.0.clone()))
                    .or(a.address.clone())
                    .unwrap_or_default();
                let slots_total = grains.slots;
                let used = state.environments_on(&a.id);
                Host {
                    id: a.id.clone(),
                    ip,
                    slots_total,
                    slots_free: slots_total.saturating_sub(used),
                    guest_type: grains.guest_type.clone(),
                    connected: peer.is_some(),
                    last_seen_unix: peer.map(|p| p.1).or(a.last_seen).unwrap_or(0),
                    grains: Some(grains.into()),
                }
            })
            .collect();
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    async fn init_env(
        &self,
        request: Request<InitEnvRequest>,
    ) -> Result<Response<Environment>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        let env = deploys::init_env(&self.state, &user, &req.platform, &req.host, &req.mode)?;
        Ok(Response::new(deploys::environment_message(&env)))
    }

    async fn init_project(
        &self,
        request: Request<ProjectRequest>,
    ) -> Result<Response<Updates>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        Ok(Response::new(deploys::init_project(
            &self.state,
            &user,
            &req.env_uuid,
            &req.project,
        )?))
    }

    async fn push(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<Updates>, Status> {
        let user = session_user(&self.state, &request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PushRequest {
                body: Some(push_request::Body::Header(header)),
            }) => header,
            _ => return Err(Status::invalid_argument("a push starts with its header")),
        };
        let (env, room) = deploys::check_push(&self.state, &user, &header)?;
        let limit = deploys::MAX_SOURCE_BYTES.min(room);
        let mut writer = self.state.blobs.writer(limit).await.map_err(internal)?;
        while let Some(message) = stream.message().await? {
            match message.body {
                Some(push_request::Body::SourceChunk(chunk)) => writer
                    .write(&chunk)
                    .await
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                _ => {
                    return Err(Status::invalid_argument(
                        "only source chunks may follow a push header",
                    ));
                }
            }
        }
        let expected_size = (header.source_size > 0).then_some(header.source_size);
        let (digest, size) = writer
            .finish(&header.source_digest, expected_size)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The announced size may have been a lie: the quota holds for what arrived.
        deploys::check_quota(&self.state, &env.uuid, &header.project, size)?;
        let archive = self.state.blobs.path(&digest).map_err(internal)?;
        let salt = tokio::task::spawn_blocking(move || render::read_salt_tree(&archive))
            .await
            .map_err(internal)?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(user = %user, env = %env.uuid, project = %header.project, source = %digest, "push received");
        // Rendering runs user templates: off the async workers, so a slow one never stalls
        // heartbeats or logins (fuel bounds how long it can take).
        let state = self.state.clone();
        let updates = tokio::task::spawn_blocking(move || {
            deploys::push(&state, &user, &header, &env, &digest, &salt)
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(updates))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<Updates>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        Ok(Response::new(deploys::rollback(
            &self.state,
            &user,
            &req.env_uuid,
            &req.project,
            &req.to_deploy_id,
        )?))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        let (environment, projects) =
            deploys::status(&self.state, &user, &req.env_uuid, &req.project)?;
        Ok(Response::new(StatusResponse {
            environment: Some(environment),
            projects,
        }))
    }

    async fn destroy(&self, request: Request<DestroyRequest>) -> Result<Response<Updates>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        Ok(Response::new(deploys::destroy(
            &self.state,
            &user,
            &req.env_uuid,
            &req.project,
        )?))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<ProjectQuota>, Status> {
        let user = session_user(&self.state, &request)?;
        let req = request.into_inner();
        Ok(Response::new(deploys::set_quota(
            &self.state,
            &user,
            &req.env_uuid,
            &req.project,
            req.delta_bytes,
        )?))
    }
}
