//! The Admin service behind the operator console, served only on `DATA_DIR/admin.sock`
//! (mode 0600: whoever can open the socket is the operator). The console's client side is
//! `console/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corpus_proto::{
    AddUserRequest, AgentInfo, AgentList, AgentRef, AgentTokenRequest, CreateTokenRequest,
    DefaultsRequest, Empty, EnrollmentToken, Environment, EnvironmentList, GrantRequest, JobDetail,
    JobList, JobRef, JobsRequest, Node, NodeList, PillarFiles, ProjectRequest, RenderRequest,
    RenderResponse, RevokeTokenRequest, User, UserLimitsRequest, UserList,
};
use corpus_proto::{
    DeleteUserRequest, RevokeSessionsRequest, RevokedSessions, SessionInfo, SessionList,
    SessionsRequest, SetPasswordRequest, UserDisabledRequest,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::MasterState;
use crate::auth::{SessionSelector, now_unix};
use crate::error::{MasterError, MasterResult};
use crate::jobs::JobOutcome;
use crate::link_registry::LinkClosed;
use crate::store::{AgentRecord, AgentStatus, JobRecord, JobState, NodeRecord};
use crate::wire::{self, internal};

/// Socket file name inside the data dir.
pub const SOCKET: &str = "admin.sock";
/// Default and longest lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A user as the console sees it; the password hash never leaves the master.
fn user_message(user: crate::store::UserRecord) -> User {
    User {
        max_envs: user.max_envs.unwrap_or(crate::store::DEFAULT_MAX_ENVS),
        max_storage_bytes: user
            .max_storage_bytes
            .unwrap_or(crate::store::DEFAULT_USER_STORAGE_BYTES),
        id: user.id,
        admin: user.admin,
        created_at_unix: user.created_at,
        disabled: user.disabled,
    }
}

pub struct AdminService {
    pub state: Arc<MasterState>,
}

/// An agent as the console lists it: the stored record, with the live link's view when the
/// agent is connected.
pub(crate) fn agent_info(state: &MasterState, record: AgentRecord) -> AgentInfo {
    let peer = state.links.peer(&record.id);
    AgentInfo {
        status: wire::agent_status(record.status) as i32,
        connected: peer.is_some(),
        last_seen_unix: peer.as_ref().map(|p| p.1).or(record.last_seen).unwrap_or(0),
        enrolled_at_unix: record.enrolled_at,
        fingerprint: record.fingerprint.unwrap_or_default(),
        grains: record.grains.map(Into::into),
        address: peer.map(|p| p.0).or(record.address).unwrap_or_default(),
        key_fingerprint: crate::agent_pages::stored_key_fingerprint(&record.csr_pem),
        conflicting_keys: record.conflicting_keys,
        id: record.id,
    }
}

/// A job with its stored events.
fn job_detail(state: &MasterState, job: &JobRecord) -> MasterResult<JobDetail> {
    let events = state
        .store
        .events(&job.id)?
        .into_iter()
        .map(|e| wire::job_event_out(&job.id, e))
        .collect();
    Ok(JobDetail {
        job: Some(wire::job_summary(job)),
        events,
    })
}

#[tonic::async_trait]
impl corpus_proto::admin_server::Admin for AdminService {
    async fn add_user(&self, request: Request<AddUserRequest>) -> Result<Response<User>, Status> {
        let AddUserRequest {
            id,
            password,
            admin,
            max_envs,
        } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let user = self
            .state
            .blocking(move |s| {
                let mut user = s.auth.add_user(&id, &password, admin)?;
                if max_envs > 0 {
                    user.max_envs = Some(max_envs);
                    s.store.put_user(&user)?;
                }
                Ok(user)
            })
            .await?;
        info!(user = %user.id, admin = user.admin, "user added");
        Ok(Response::new(user_message(user)))
    }

    async fn set_user_limits(
        &self,
        request: Request<UserLimitsRequest>,
    ) -> Result<Response<User>, Status> {
        let UserLimitsRequest {
            id,
            max_envs,
            max_storage_bytes,
        } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let user = self
            .state
            .blocking(move |s| {
                let mut user = s.store.user(&id)?.ok_or_else(|| {
                    MasterError::not_found(
                        "user",
                        format!("{id:?}"),
                        ": see corpus-master users list",
                    )
                })?;
                if max_envs > 0 {
                    user.max_envs = Some(max_envs);
                }
                if max_storage_bytes > 0 {
                    user.max_storage_bytes = Some(max_storage_bytes);
                }
                s.store.put_user(&user)?;
                Ok(user)
            })
            .await?;
        info!(user = %user.id, max_envs = ?user.max_envs, max_storage_bytes = ?user.max_storage_bytes, "user limits set");
        Ok(Response::new(user_message(user)))
    }

    async fn list_users(&self, _: Request<Empty>) -> Result<Response<UserList>, Status> {
        let users = self
            .state
            .blocking(|s| Ok(s.store.users()?))
            .await?
            .into_iter()
            .map(user_message)
            .collect();
        Ok(Response::new(UserList { users }))
    }

    async fn set_user_disabled(
        &self,
        request: Request<UserDisabledRequest>,
    ) -> Result<Response<User>, Status> {
        let UserDisabledRequest { id, disabled } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let user = self
            .state
            .blocking(move |s| Ok(s.auth.set_disabled(&id, disabled)?))
            .await?;
        info!(user = %user.id, disabled, "user access changed");
        Ok(Response::new(user_message(user)))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<User>, Status> {
        let DeleteUserRequest { id, force } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let (user, owned) = self
            .state
            .blocking(move |s| {
                s.auth.existing_user(&id)?;
                let owned = crate::environments::forget_user(s, &id, force)?;
                Ok((s.auth.delete_user(&id)?, owned))
            })
            .await?;
        info!(user = %user.id, kept_environments = owned.len(), "user deleted");
        Ok(Response::new(user_message(user)))
    }

    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> Result<Response<User>, Status> {
        let SetPasswordRequest { id, password } = request.into_inner();
        corpus_proto::names::validate_user_id(&id).map_err(MasterError::from)?;
        let user = self
            .state
            .blocking(move |s| Ok(s.auth.set_password(&id, &password)?))
            .await?;
        info!(user = %user.id, "password changed; the user's sessions ended");
        Ok(Response::new(user_message(user)))
    }

    async fn list_sessions(
        &self,
        request: Request<SessionsRequest>,
    ) -> Result<Response<SessionList>, Status> {
        let SessionsRequest { user } = request.into_inner();
        let sessions = self
            .state
            .blocking(move |s| {
                Ok(s.auth
                    .sessions(Some(user.as_str()).filter(|u| !u.is_empty()))?)
            })
            .await?
            .into_iter()
            .map(|view| SessionInfo {
                id: view.id,
                user: view.record.user,
                source: view.record.source,
                created_at_unix: view.record.created_at,
                expires_at_unix: view.record.expires_at,
            })
            .collect();
        Ok(Response::new(SessionList { sessions }))
    }

    async fn revoke_sessions(
        &self,
        request: Request<RevokeSessionsRequest>,
    ) -> Result<Response<RevokedSessions>, Status> {
        let RevokeSessionsRequest {
            user,
            all,
            session_id,
        } = request.into_inner();
        let selector = match (user.is_empty(), all, session_id.is_empty()) {
            (false, false, true) => SessionSelector::User(user),
            (true, true, true) => SessionSelector::All,
            (true, false, false) => SessionSelector::Id(session_id),
            _ => {
                return Err(MasterError::invalid(
                    "name exactly one of: a user, all sessions, a session id",
                )
                .into());
            }
        };
        let what = format!("{selector:?}");
        let revoked = self
            .state
            .blocking(move |s| Ok(s.auth.revoke_sessions(&selector)?))
            .await?;
        info!(sessions = revoked, selector = %what, "sessions revoked");
        Ok(Response::new(RevokedSessions {
            revoked: revoked as u32,
        }))
    }

    async fn revoke_environment(
        &self,
        request: Request<GrantRequest>,
    ) -> Result<Response<Environment>, Status> {
        let GrantRequest { env_uuid, user } = request.into_inner();
        let env = self
            .state
            .blocking(move |s| crate::environments::revoke_grant(s, &env_uuid, &user))
            .await?;
        info!(env = %env.uuid, "environment grant revoked");
        Ok(Response::new(wire::environment(&env)))
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
        let (token, expires_at_unix) = self
            .state
            .blocking(move |s| Ok(s.auth.create_enrollment_token(ttl)?))
            .await?;
        info!(ttl = %humantime::format_duration(ttl), "enrollment token created");
        Ok(Response::new(EnrollmentToken {
            token,
            expires_at_unix,
        }))
    }

    async fn list_agents(&self, _: Request<Empty>) -> Result<Response<AgentList>, Status> {
        let agents = self
            .state
            .blocking(|s| {
                crate::enroll::expire_pending(s, crate::auth::now_unix())?;
                Ok(s.store.agents()?)
            })
            .await?
            .into_iter()
            .map(|a| agent_info(&self.state, a))
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
        let record = state
            .blocking(move |state| {
                let mut record = state.existing_agent(&id)?;
                if record.status != AgentStatus::Accepted {
                    crate::enroll::check_operator_accept(&record, "")?;
                    state.accept(&mut record)?;
                    info!(agent = %id, "agent accepted by an operator");
                }
                Ok(record)
            })
            .await?;
        Ok(Response::new(agent_info(state, record)))
    }

    async fn reject_agent(
        &self,
        request: Request<AgentRef>,
    ) -> Result<Response<AgentInfo>, Status> {
        let id = request.into_inner().id;
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let record = state
            .blocking(move |state| {
                let mut record = state.existing_agent(&id)?;
                record.status = AgentStatus::Rejected;
                record.certificate_pem = None;
                record.fingerprint = None;
                record.decided_at = Some(now_unix());
                state.store.put_agent(&record)?;
                Ok(record)
            })
            .await?;
        state
            .links
            .close(&record.id, LinkClosed::RejectedByOperator);
        info!(agent = %record.id, "agent rejected by an operator");
        Ok(Response::new(agent_info(state, record)))
    }

    async fn delete_agent(
        &self,
        request: Request<AgentRef>,
    ) -> Result<Response<AgentInfo>, Status> {
        let id = request.into_inner().id;
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let record = state
            .blocking(move |state| {
                let record = state.existing_agent(&id)?;
                state.store.delete_agent(&id)?;
                Ok(record)
            })
            .await?;
        state.links.close(&record.id, LinkClosed::DeletedByOperator);
        info!(agent = %record.id, "agent deleted by an operator");
        Ok(Response::new(agent_info(state, record)))
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
        let settings = state.settings();
        let rendered = tokio::task::spawn_blocking(move || {
            if !settings.file_root.is_dir() {
                return Err(format!(
                    "state tree {} does not exist: pass --file-root to corpus-master serve",
                    settings.file_root.display()
                ));
            }
            let trees = corpus_states::AgentTrees {
                file_root: Arc::new(corpus_states::DirTree::new(&settings.file_root)),
                pillar_root: Arc::new(corpus_states::DirTree::new(&settings.pillar_root)),
            };
            let grains = serde_json::to_value(&grains).unwrap_or_default();
            corpus_states::render_for_agent(&trees, &agent_id, grains, &sls)
                .map(|render| render.rendered)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(internal)?
        .map_err(Status::invalid_argument)?;
        Ok(Response::new(RenderResponse {
            plan_json: serde_json::to_vec(&rendered.plan).unwrap_or_default(),
            sls: rendered.sls,
        }))
    }

    async fn list_environments(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<EnvironmentList>, Status> {
        let environments = self
            .state
            .blocking(|s| Ok(s.store.environments()?))
            .await?
            .iter()
            .map(wire::environment)
            .collect();
        Ok(Response::new(EnvironmentList { environments }))
    }

    async fn grant_environment(
        &self,
        request: Request<GrantRequest>,
    ) -> Result<Response<Environment>, Status> {
        let GrantRequest { env_uuid, user } = request.into_inner();
        let env = self
            .state
            .blocking(move |state| {
                let mut env = state.existing_environment(&env_uuid)?;
                if state.store.user(&user)?.is_none() {
                    return Err(MasterError::not_found(
                        "user",
                        format!("{user:?}"),
                        ": add it with `corpus-master users add`",
                    ));
                }
                if env.owner != user && !env.grants.contains(&user) {
                    env.grants.push(user.clone());
                    state.store.put_environment(&env)?;
                }
                info!(env = %env.uuid, user = %user, "environment shared");
                Ok(env)
            })
            .await?;
        Ok(Response::new(wire::environment(&env)))
    }

    async fn set_environment_defaults(
        &self,
        request: Request<DefaultsRequest>,
    ) -> Result<Response<Environment>, Status> {
        let DefaultsRequest { env_uuid, yaml } = request.into_inner();
        let env = self
            .state
            .blocking(move |state| {
                let mut env = state.existing_environment(&env_uuid)?;
                env.defaults = crate::render::yaml_mapping(&yaml)
                    .map_err(|e| MasterError::invalid(format!("environment defaults: {e}")))?;
                state.store.put_environment(&env)?;
                info!(env = %env.uuid, "environment defaults set");
                Ok(env)
            })
            .await?;
        Ok(Response::new(wire::environment(&env)))
    }

    async fn list_jobs(&self, request: Request<JobsRequest>) -> Result<Response<JobList>, Status> {
        let env = request.into_inner().env_uuid;
        let mut jobs = self
            .state
            .blocking(move |s| {
                Ok(if env.is_empty() {
                    s.store.jobs()?
                } else {
                    s.store.environment_jobs(&env)?
                })
            })
            .await?;
        jobs.sort_by_key(|j| (j.created_at, j.created_ms));
        Ok(Response::new(JobList {
            jobs: jobs.iter().map(wire::job_summary).collect(),
        }))
    }

    async fn get_job(&self, request: Request<JobRef>) -> Result<Response<JobDetail>, Status> {
        let id = request.into_inner().job_id;
        let detail = self
            .state
            .blocking(move |state| job_detail(state, &state.existing_job(&id)?))
            .await?;
        Ok(Response::new(detail))
    }

    async fn fail_job(&self, request: Request<JobRef>) -> Result<Response<JobDetail>, Status> {
        let id = request.into_inner().job_id;
        let detail = self
            .state
            .blocking(move |state| {
                let job = state.existing_job(&id)?;
                if job.state != JobState::Running {
                    return Err(MasterError::Refused(format!(
                        "job {} is not running (it is {})",
                        job.id,
                        job.state.as_str()
                    )));
                }
                let outcome = JobOutcome::failed(
                    &job.id,
                    "operator",
                    "failed by an operator (corpus-master jobs fail)".to_owned(),
                );
                state.jobs.on_finished(state, &job.agent, outcome)?;
                info!(job = %job.id, "job failed by an operator");
                job_detail(state, &state.existing_job(&job.id)?)
            })
            .await?;
        Ok(Response::new(detail))
    }

    async fn show_pillar(
        &self,
        request: Request<ProjectRequest>,
    ) -> Result<Response<PillarFiles>, Status> {
        let ProjectRequest { env_uuid, project } = request.into_inner();
        let revision = self
            .state
            .blocking(move |s| {
                s.store
                    .pillar_revisions(&env_uuid, &project)?
                    .pop()
                    .ok_or_else(|| {
                        MasterError::not_found(
                            "pillar was pushed for",
                            format!("{project:?}"),
                            format!(" in environment {env_uuid}"),
                        )
                    })
            })
            .await?;
        Ok(Response::new(PillarFiles {
            job_id: revision.job_id,
            created_at_unix: revision.created_at,
            files: revision.files.into_iter().collect(),
        }))
    }

    async fn revoke_enrollment_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<Empty>, Status> {
        let token = request.into_inner().token;
        self.state
            .blocking(move |s| {
                s.store
                    .take_enrollment_token(&crate::auth::secret_hash(&token))?;
                Ok(())
            })
            .await?;
        info!("enrollment token revoked");
        Ok(Response::new(Empty {}))
    }

    async fn create_agent_enrollment_token(
        &self,
        request: Request<AgentTokenRequest>,
    ) -> Result<Response<EnrollmentToken>, Status> {
        let AgentTokenRequest {
            agent_id,
            ttl_seconds,
        } = request.into_inner();
        corpus_proto::names::validate_agent_id(&agent_id).map_err(MasterError::from)?;
        let ttl = Duration::from_secs(ttl_seconds.max(1)).min(MAX_TOKEN_TTL);
        let id = agent_id.clone();
        let (token, expires_at_unix) = self
            .state
            .blocking(move |s| Ok(s.auth.create_enrollment_token_for(ttl, Some(id))?))
            .await?;
        info!(agent = %agent_id, ttl = %humantime::format_duration(ttl), "enrollment token created for one agent");
        Ok(Response::new(EnrollmentToken {
            token,
            expires_at_unix,
        }))
    }

    async fn put_node(&self, request: Request<Node>) -> Result<Response<Node>, Status> {
        let node = node_record(request.into_inner())?;
        let node = self
            .state
            .blocking(move |s| {
                if let Some(existing) = s.store.node(&node.id)? {
                    return Err(MasterError::AlreadyExists(format!(
                        "node {:?} is already attached ({}@{}:{}): detach it first with \
                         `corpus-master nodes detach {}`",
                        existing.id, existing.user, existing.host, existing.port, existing.id
                    )));
                }
                s.store.put_node(&node)?;
                Ok(node)
            })
            .await?;
        info!(agent = %node.id, host = %node.host, port = node.port, "node attached");
        Ok(Response::new(node_wire(node)))
    }

    async fn list_nodes(&self, _: Request<Empty>) -> Result<Response<NodeList>, Status> {
        let nodes = self
            .state
            .blocking(|s| Ok(s.store.nodes()?))
            .await?
            .into_iter()
            .map(node_wire)
            .collect();
        Ok(Response::new(NodeList { nodes }))
    }

    async fn delete_node(&self, request: Request<AgentRef>) -> Result<Response<Node>, Status> {
        let id = request.into_inner().id;
        let node = self
            .state
            .blocking(move |s| {
                let node = s.store.node(&id)?.ok_or_else(|| {
                    MasterError::not_found(
                        "node",
                        format!("{id:?}"),
                        ": see `corpus-master nodes list` for the attached ones",
                    )
                })?;
                s.store.delete_node(&id)?;
                Ok(node)
            })
            .await?;
        info!(agent = %node.id, "node detached");
        Ok(Response::new(node_wire(node)))
    }

    // ---- operator runs (`fleet/`) ----

    type FollowRunStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<corpus_proto::RunEvent, Status>> + Send>,
    >;

    async fn start_run(
        &self,
        request: Request<corpus_proto::StartRunRequest>,
    ) -> Result<Response<corpus_proto::RunStarted>, Status> {
        let run = crate::fleet::runs::start(&self.state, request.into_inner()).await?;
        Ok(Response::new(corpus_proto::RunStarted {
            run_id: run.id,
            targeted: run.targeted,
        }))
    }

    async fn follow_run(
        &self,
        request: Request<corpus_proto::RunRef>,
    ) -> Result<Response<Self::FollowRunStream>, Status> {
        let run_id = request.into_inner().run_id;
        let check = run_id.clone();
        self.state
            .blocking(move |s| s.runs.stored(s, &check).map(|_| ()))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(crate::fleet::follow(self.state.clone(), run_id, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_run(
        &self,
        request: Request<corpus_proto::RunRef>,
    ) -> Result<Response<corpus_proto::RunDetail>, Status> {
        let run_id = request.into_inner().run_id;
        let (run, returns) = self
            .state
            .blocking(move |s| {
                let run = s.runs.stored(s, &run_id)?;
                let returns = s.store.run_returns(&run_id)?;
                Ok((run, returns))
            })
            .await?;
        Ok(Response::new(corpus_proto::RunDetail {
            returns: returns
                .iter()
                .map(|r| crate::fleet::agent_return(&run.id, r))
                .collect(),
            run: Some(crate::fleet::summary(&run)),
        }))
    }

    async fn list_runs(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<corpus_proto::RunList>, Status> {
        let runs = self.state.blocking(|s| s.runs.list(s)).await?;
        Ok(Response::new(corpus_proto::RunList {
            runs: runs.iter().map(crate::fleet::summary).collect(),
        }))
    }

    async fn accept_agent_key(
        &self,
        request: Request<corpus_proto::AcceptAgentKeyRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        let corpus_proto::AcceptAgentKeyRequest { id, fingerprint } = request.into_inner();
        let state = &self.state;
        let _guard = state.enroll_lock.lock().await;
        let record = state
            .blocking(move |state| {
                let mut record = state.existing_agent(&id)?;
                crate::enroll::check_operator_accept(&record, &fingerprint)?;
                if record.status != AgentStatus::Accepted {
                    record.conflicting_keys.clear();
                    state.accept(&mut record)?;
                    info!(agent = %id, "agent accepted by an operator who checked its key");
                }
                Ok(record)
            })
            .await?;
        Ok(Response::new(agent_info(state, record)))
    }

    type StreamAgentsStream = tokio_stream::wrappers::ReceiverStream<Result<AgentList, Status>>;

    /// `agents list`: pages of agents as they are read (`agent_pages.rs`).
    async fn stream_agents(
        &self,
        request: Request<corpus_proto::StreamAgentsRequest>,
    ) -> Result<Response<Self::StreamAgentsStream>, Status> {
        let page_size = crate::agent_pages::page_size(request.into_inner().page_size)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::agent_pages::send_agent_pages(&state, page_size, now_unix(), &tx)
            {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// A node record from the console, its id and port checked.
fn node_record(node: Node) -> MasterResult<NodeRecord> {
    corpus_proto::names::validate_agent_id(&node.id).map_err(MasterError::from)?;
    let port = u16::try_from(node.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| MasterError::invalid(format!("node port {} is invalid", node.port)))?;
    Ok(NodeRecord {
        id: node.id,
        user: node.user,
        host: node.host,
        port,
        host_key_fingerprint: node.host_key_fingerprint,
        attached_at: now_unix(),
        remote_prefix: node.remote_prefix,
        systemd: node.systemd,
        root: node.root,
        state_dir: node.state_dir,
        key_file: node.key_file,
    })
}

fn node_wire(node: NodeRecord) -> Node {
    Node {
        id: node.id,
        user: node.user,
        host: node.host,
        port: u32::from(node.port),
        host_key_fingerprint: node.host_key_fingerprint,
        attached_at_unix: node.attached_at,
        remote_prefix: node.remote_prefix,
        systemd: node.systemd,
        root: node.root,
        state_dir: node.state_dir,
        key_file: node.key_file,
    }
}

/// The admin socket of the master whose data dir is `data_dir`: `serve` binds it, the console
/// dials it.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobKind, JobState, Mode};

    #[test]
    fn stored_events_keep_a_failed_commands_exit_code_and_stderr() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let job = JobRecord {
            id: "j1".into(),
            kind: JobKind::Deploy,
            env_uuid: "env".into(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: "d1".into(),
            requested_by: "alice".into(),
            agent: "node1".into(),
            commit: String::new(),
            created_at: 0,
            created_ms: 0,
            state: JobState::Running,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: None,
            source_blob: None,
            release_blob: None,
            target_deploy_id: None,
        };
        state.store.put_job(&job)?;
        // What the agent sends for `cmd.run: exit 3`, and a malformed changes field.
        let changes = serde_json::json!({"pid": 42, "retcode": 3, "stdout": "", "stderr": "boom: no such file\n"});
        for (sequence, changes_json) in [
            (1, serde_json::to_vec(&changes)?),
            (2, b"not json".to_vec()),
        ] {
            let event = corpus_proto::JobEvent {
                job_id: "j1".into(),
                sequence,
                step: "build".into(),
                state_id: "fail_here".into(),
                result: corpus_proto::StepResult::Failed as i32,
                changes_json,
                comment: "Command \"exit 3\" run".into(),
                duration_ms: 5,
                timestamp_unix_ms: 0,
            };
            state
                .jobs
                .on_event(&state, "node1", wire::job_event_in(event))?;
        }

        let detail = job_detail(&state, &job)?;
        let shown: serde_json::Value = serde_json::from_slice(&detail.events[0].changes_json)?;
        assert_eq!(shown["retcode"], 3);
        assert_eq!(shown["stderr"], "boom: no such file\n");
        let kept: serde_json::Value = serde_json::from_slice(&detail.events[1].changes_json)?;
        assert_eq!(kept, "not json");
        Ok(())
    }
}
