//! The Admin service behind the operator console, served only on `DATA_DIR/admin.sock`
//! (mode 0600: whoever can open the socket is the operator), and the console's client side.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corpus_proto::admin_client::AdminClient;
use corpus_proto::{
    AddUserRequest, AgentInfo, AgentList, AgentRef, CreateTokenRequest, Empty, EnrollmentToken,
    RenderRequest, RenderResponse, User, UserList,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::MasterState;
use crate::auth::now_unix;
use crate::status::internal;
use crate::store::{AgentRecord, AgentStatus};

/// Socket file name inside the data dir.
pub const SOCKET: &str = "admin.sock";
/// Default and longest lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct AdminService {
    pub state: Arc<MasterState>,
}

fn wire_status(status: AgentStatus) -> corpus_proto::AgentStatus {
    match status {
        AgentStatus::Pending => corpus_proto::AgentStatus::Pending,
        AgentStatus::Accepted => corpus_proto::AgentStatus::Accepted,
        AgentStatus::Rejected => corpus_proto::AgentStatus::Rejected,
    }
}

impl MasterState {
    fn agent_info(&self, record: AgentRecord) -> AgentInfo {
        let peer = self.links.peer(&record.id);
        AgentInfo {
            status: wire_status(record.status) as i32,
            connected: peer.is_some(),
            last_seen_unix: peer.as_ref().map(|p| p.1).or(record.last_seen).unwrap_or(0),
            enrolled_at_unix: record.enrolled_at,
            fingerprint: record.fingerprint.unwrap_or_default(),
            grains: record.grains.map(Into::into),
            address: peer.map(|p| p.0).or(record.address).unwrap_or_default(),
            id: record.id,
        }
    }

    fn existing_agent(&self, id: &str) -> Result<AgentRecord, Status> {
        self.store.agent(id).map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!(
                "no agent {id:?}: see `corpus-master agents list` for the known ones"
            ))
        })
    }
}

#[tonic::async_trait]
impl corpus_proto::admin_server::Admin for AdminService {
    async fn add_user(&self, request: Request<AddUserRequest>) -> Result<Response<User>, Status> {
        let AddUserRequest {
            id,
            password,
            admin,
        } = request.into_inner();
        corpus_proto::names::validate_user_id(&id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.state.clone();
        let user = tokio::task::spawn_blocking(move || state.auth.add_user(&id, &password, admin))
            .await
            .map_err(internal)??;
        info!(user = %user.id, admin = user.admin, "user added");
        Ok(Response::new(User {
            id: user.id,
            admin: user.admin,
            created_at_unix: user.created_at,
        }))
    }

    async fn list_users(&self, _: Request<Empty>) -> Result<Response<UserList>, Status> {
        let users = self
            .state
            .store
            .users()
            .map_err(internal)?
            .into_iter()
            .map(|u| User {
                id: u.id,
                admin: u.admin,
                created_at_unix: u.created_at,
            })
            .collect();
        Ok(Response::new(UserList { users }))
    }

    async fn create_enrollment_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<EnrollmentToken>, Status> {
        let ttl = match request.into_inner().ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "token ttl {} is too long: at most {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_TOKEN_TTL)
            )));
        }
        let (token, expires_at_unix) = self.state.auth.create_enrollment_token(ttl)?;
        info!(ttl = %humantime::format_duration(ttl), "enrollment token created");
        Ok(Response::new(EnrollmentToken {
            token,
            expires_at_unix,
        }))
    }

    async fn list_agents(&self, _: Request<Empty>) -> Result<Response<AgentList>, Status> {
        let agents = self
            .state
            .store
            .agents()
            .map_err(internal)?
            .into_iter()
            .map(|a| self.state.agent_info(a))
            .collect();
        Ok(Response::new(AgentList { agents }))
    }

    async fn accept_agent(
        &self,
        request: Request<AgentRef>,
    ) -> Result<Response<AgentInfo>, Status> {
        let id = request.into_inner().id;
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let mut record = state.existing_agent(&id)?;
        if record.status != AgentStatus::Accepted {
            state.accept(&mut record).map_err(internal)?;
            info!(agent = %id, "agent accepted by an operator");
        }
        Ok(Response::new(state.agent_info(record)))
    }

    async fn reject_agent(
        &self,
        request: Request<AgentRef>,
    ) -> Result<Response<AgentInfo>, Status> {
        let id = request.into_inner().id;
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let mut record = state.existing_agent(&id)?;
        record.status = AgentStatus::Rejected;
        record.certificate_pem = None;
        record.fingerprint = None;
        record.decided_at = Some(now_unix());
        state.store.put_agent(&record).map_err(internal)?;
        state.links.close(
            &id,
            Status::permission_denied("agent was rejected by an operator"),
        );
        info!(agent = %id, "agent rejected by an operator");
        Ok(Response::new(state.agent_info(record)))
    }

    async fn delete_agent(
        &self,
        request: Request<AgentRef>,
    ) -> Result<Response<AgentInfo>, Status> {
        let id = request.into_inner().id;
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let record = state.existing_agent(&id)?;
        state.store.delete_agent(&id).map_err(internal)?;
        state.links.close(
            &id,
            Status::permission_denied("agent was deleted by an operator"),
        );
        info!(agent = %id, "agent deleted by an operator");
        Ok(Response::new(state.agent_info(record)))
    }

    async fn render(
        &self,
        request: Request<RenderRequest>,
    ) -> Result<Response<RenderResponse>, Status> {
        let RenderRequest { agent_id, sls } = request.into_inner();
        let state = self.state.clone();
        let record = state.existing_agent(&agent_id)?;
        let grains = record
            .grains
            .clone()
            .unwrap_or_else(|| crate::store::Grains {
                id: agent_id.clone(),
                ..Default::default()
            });
        let rendered = tokio::task::spawn_blocking(move || {
            crate::render::render_for_agent(
                &state.file_root,
                &state.pillar_root,
                &agent_id,
                &grains,
                &sls,
            )
        })
        .await
        .map_err(internal)?
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(RenderResponse {
            plan_json: serde_json::to_vec(&rendered.plan).unwrap_or_default(),
            sls: rendered.sls,
        }))
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Connects the console to a running master's admin socket.
pub async fn connect(data_dir: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let path = socket_path(data_dir);
    if !path.exists() {
        anyhow::bail!(
            "no master is running with data dir {} (no {}): start one with `corpus-master serve --data-dir {}`",
            data_dir.display(),
            path.display(),
            data_dir.display()
        );
    }
    let socket = path.clone();
    // The URI is a placeholder: the connector below always dials the unix socket.
    let channel = Endpoint::from_static("http://admin.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the master's admin socket {}: {e} (is `corpus-master serve` running?)",
                path.display()
            )
        })?;
    Ok(AdminClient::new(channel))
}
