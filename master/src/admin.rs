//! The Admin service behind the operator console, served only on `DATA_DIR/admin.sock`
//! (mode 0600: whoever can open the socket is the operator). The console's client side is
//! `console/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corpus_proto::{
    AddUserRequest, AgentInfo, AgentList, AgentRef, CreateTokenRequest, DefaultsRequest, Empty,
    EnrollmentToken, Environment, EnvironmentList, GrantRequest, JobDetail, JobList, JobRef,
    JobSummary, JobsRequest, PillarFiles, ProjectRequest, RenderRequest, RenderResponse, User,
    UserList,
};
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
            .store
            .environments()
            .map_err(internal)?
            .iter()
            .map(crate::deploys::environment_message)
            .collect();
        Ok(Response::new(EnvironmentList { environments }))
    }

    async fn grant_environment(
        &self,
        request: Request<GrantRequest>,
    ) -> Result<Response<Environment>, Status> {
        let GrantRequest { env_uuid, user } = request.into_inner();
        let state = &self.state;
        let mut env = state.existing_environment(&env_uuid)?;
        if state.store.user(&user).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!(
                "no user {user:?}: add it with `corpus-master users add`"
            )));
        }
        if env.owner != user && !env.grants.contains(&user) {
            env.grants.push(user.clone());
            state.store.put_environment(&env).map_err(internal)?;
        }
        info!(env = %env.uuid, user = %user, "environment shared");
        Ok(Response::new(crate::deploys::environment_message(&env)))
    }

    async fn set_environment_defaults(
        &self,
        request: Request<DefaultsRequest>,
    ) -> Result<Response<Environment>, Status> {
        let DefaultsRequest { env_uuid, yaml } = request.into_inner();
        let state = &self.state;
        let mut env = state.existing_environment(&env_uuid)?;
        let defaults = crate::render::yaml_mapping(&yaml)
            .map_err(|e| Status::invalid_argument(format!("environment defaults: {e}")))?;
        env.defaults = defaults;
        state.store.put_environment(&env).map_err(internal)?;
        info!(env = %env.uuid, "environment defaults set");
        Ok(Response::new(crate::deploys::environment_message(&env)))
    }

    async fn list_jobs(&self, request: Request<JobsRequest>) -> Result<Response<JobList>, Status> {
        let env = request.into_inner().env_uuid;
        let mut jobs: Vec<_> = self
            .state
            .store
            .jobs()
            .map_err(internal)?
            .into_iter()
            .filter(|j| env.is_empty() || j.env_uuid == env)
            .collect();
        jobs.sort_by_key(|j| (j.created_at, j.created_ms));
        Ok(Response::new(JobList {
            jobs: jobs.iter().map(job_summary).collect(),
        }))
    }

    async fn get_job(&self, request: Request<JobRef>) -> Result<Response<JobDetail>, Status> {
        let job = self.state.existing_job(&request.into_inner().job_id)?;
        Ok(Response::new(self.state.job_detail(&job)?))
    }

    async fn fail_job(&self, request: Request<JobRef>) -> Result<Response<JobDetail>, Status> {
        let state = &self.state;
        let job = state.existing_job(&request.into_inner().job_id)?;
        if job.state != crate::store::JobState::Running {
            return Err(Status::failed_precondition(format!(
                "job {} is not running (it is {})",
                job.id,
                job.state.as_str()
            )));
        }
        let finished = corpus_proto::JobFinished {
            job_id: job.id.clone(),
            status: corpus_proto::JobStatus::Failed as i32,
            failed_step: "operator".into(),
            message: "failed by an operator (corpus-master jobs fail)".into(),
            ..Default::default()
        };
        state.jobs.on_finished(state, &job.agent, finished)?;
        info!(job = %job.id, "job failed by an operator");
        let job = state.existing_job(&job.id)?;
        Ok(Response::new(state.job_detail(&job)?))
    }

    async fn show_pillar(
        &self,
        request: Request<ProjectRequest>,
    ) -> Result<Response<PillarFiles>, Status> {
        let ProjectRequest { env_uuid, project } = request.into_inner();
        let revision = self
            .state
            .store
            .pillar_revisions(&env_uuid, &project)
            .map_err(internal)?
            .pop()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no pillar was pushed for {project:?} in environment {env_uuid}"
                ))
            })?;
        Ok(Response::new(PillarFiles {
            job_id: revision.job_id,
            created_at_unix: revision.created_at,
            files: revision.files.into_iter().collect(),
        }))
    }
}

fn job_summary(j: &crate::store::JobRecord) -> JobSummary {
    JobSummary {
        job_id: j.id.clone(),
        kind: format!("{:?}", j.kind).to_lowercase(),
        env_uuid: j.env_uuid.clone(),
        project: j.project.clone(),
        deploy_id: j.deploy_id.clone(),
        agent: j.agent.clone(),
        requested_by: j.requested_by.clone(),
        status: crate::jobs::status_of(j.state) as i32,
        failed_step: j.failed_step.clone(),
        failed_state: j.failed_state.clone(),
        message: j.message.clone(),
        created_at_unix: j.created_at,
    }
}

impl MasterState {
    fn existing_environment(&self, uuid: &str) -> Result<crate::store::EnvironmentRecord, Status> {
        self.store
            .environment(uuid)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no environment {uuid:?}: see `corpus-master envs list`"
                ))
            })
    }

    fn existing_job(&self, id: &str) -> Result<crate::store::JobRecord, Status> {
        self.store.job(id).map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!("no job {id:?}: see `corpus-master jobs list`"))
        })
    }

    fn job_detail(&self, job: &crate::store::JobRecord) -> Result<JobDetail, Status> {
        let events = self
            .store
            .events(&job.id)
            .map_err(internal)?
            .into_iter()
            .map(|e| corpus_proto::JobEvent {
                job_id: job.id.clone(),
                sequence: e.sequence,
                step: e.step,
                state_id: e.state_id,
                result: match e.result.as_str() {
                    "running" => corpus_proto::StepResult::Running,
                    "success" => corpus_proto::StepResult::Success,
                    "failed" => corpus_proto::StepResult::Failed,
                    "skipped" => corpus_proto::StepResult::Skipped,
                    _ => corpus_proto::StepResult::Unspecified,
                } as i32,
                changes_json: serde_json::to_vec(&e.changes).unwrap_or_default(),
                comment: e.comment,
                duration_ms: e.duration_ms,
                timestamp_unix_ms: e.timestamp_ms,
            })
            .collect();
        Ok(JobDetail {
            job: Some(job_summary(job)),
            events,
        })
    }
}

/// The admin socket of the master whose data dir is `data_dir`: `serve` binds it, the console
/// dials it.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}
