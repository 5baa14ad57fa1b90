//! The lifecycle operations behind the `corpus` commands: environments (init_env), projects
//! (init, destroy, quotas), pushes, rollbacks and status. Each checks the user may act on the
//! environment, validates everything it was given, and only then records and dispatches a job.

use std::collections::BTreeMap;

use corpus_proto::{
    Deployment, Environment, Job, JobKind as WireKind, Mode as WireMode, ProjectQuota,
    ProjectStatus, PushHeader, Release,
};
use serde_json::Value;
use tonic::Status;

use crate::MasterState;
use crate::auth::now_unix;
use crate::jobs::{Updates, status_of};
use crate::render::{self, DeployContext};
use crate::status::internal;
use crate::store::{
    AgentStatus, DEFAULT_QUOTA_BYTES, EnvironmentRecord, JobKind, JobRecord, JobState, Mode,
    PillarRevision, Platform, ProjectRecord, ReleaseRecord,
};

/// Largest source archive a push may upload.
pub const MAX_SOURCE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

pub fn wire_mode(mode: Mode) -> WireMode {
    match mode {
        Mode::Editable => WireMode::Editable,
        Mode::Cooking => WireMode::Cooking,
        Mode::Final => WireMode::Final,
    }
}

fn wire_kind(kind: JobKind) -> WireKind {
    match kind {
        JobKind::Init => WireKind::InitProject,
        JobKind::Deploy => WireKind::Deploy,
        JobKind::Rollback => WireKind::Rollback,
        JobKind::Destroy => WireKind::Destroy,
    }
}

pub fn environment_message(env: &EnvironmentRecord) -> Environment {
    Environment {
        uuid: env.uuid.clone(),
        platform: env.platform.as_str().to_owned(),
        mode: wire_mode(env.mode) as i32,
        agent_id: env.agent.clone(),
        owner: env.owner.clone(),
        created_at_unix: env.created_at,
    }
}

/// `<UTC DATETIME>-<UUID>`, the RFC's archive and deployment names.
pub fn new_deploy_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(&time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{}", uuid::Uuid::new_v4())
}

fn is_admin(state: &MasterState, user: &str) -> Result<bool, Status> {
    Ok(state
        .store
        .user(user)
        .map_err(internal)?
        .is_some_and(|u| u.admin))
}

/// The environment, if `user` owns it, was granted it, or is an admin.
pub fn authorize(state: &MasterState, user: &str, uuid: &str) -> Result<EnvironmentRecord, Status> {
    uuid::Uuid::parse_str(uuid)
        .map_err(|_| Status::invalid_argument(format!("environment id {uuid:?} is not a UUID")))?;
    let env = state
        .store
        .environment(uuid)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no environment {uuid}")))?;
    if env.owner != user && !env.grants.iter().any(|g| g == user) && !is_admin(state, user)? {
        return Err(Status::permission_denied(format!(
            "environment {uuid} belongs to another user"
        )));
    }
    Ok(env)
}

fn validate_project(name: &str) -> Result<(), Status> {
    corpus_proto::names::validate_project_name(name)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn init_env(
    state: &MasterState,
    user: &str,
    platform: &str,
    host: &str,
    mode: &str,
) -> Result<EnvironmentRecord, Status> {
    let platform = Platform::parse(platform).ok_or_else(|| {
        Status::invalid_argument(format!(
            "platform type {platform:?} is invalid: use dev, staging or prod"
        ))
    })?;
    let mode = match mode {
        "" => platform.default_mode(),
        m => Mode::parse(m).ok_or_else(|| {
            Status::invalid_argument(format!(
                "mode {m:?} is invalid: use editable, cooking or final"
            ))
        })?,
    };
    let free = |agent: &crate::store::AgentRecord| {
        let slots = agent.grains.as_ref().map_or(0, |g| g.slots);
        slots.saturating_sub(state.environments_on(&agent.id))
    };
    let agent = if host.is_empty() {
        let mut candidates: Vec<_> = state
            .store
            .agents()
            .map_err(internal)?
            .into_iter()
            .filter(|a| a.status == AgentStatus::Accepted && state.links.is_connected(&a.id))
            .filter(|a| free(a) > 0)
            .collect();
        candidates.sort_by_key(|a| std::cmp::Reverse(free(a)));
        candidates.into_iter().next().ok_or_else(|| {
            Status::resource_exhausted("no connected agent has a free slot: see corpus listhosts")
        })?
    } else {
        let agent = state
            .store
            .agent(host)
            .map_err(internal)?
            .filter(|a| a.status == AgentStatus::Accepted)
            .ok_or_else(|| {
                Status::not_found(format!("no accepted host {host:?}: see corpus listhosts"))
            })?;
        if free(&agent) == 0 {
            return Err(Status::resource_exhausted(format!(
                "host {host:?} has no free slot"
            )));
        }
        agent
    };
    let env = EnvironmentRecord {
        uuid: uuid::Uuid::new_v4().to_string(),
        platform,
        mode,
        agent: agent.id,
        owner: user.to_owned(),
        grants: vec![],
        defaults: Value::Object(Default::default()),
        created_at: now_unix(),
    };
    state.store.put_environment(&env).map_err(internal)?;
    tracing::info!(env = %env.uuid, agent = %env.agent, platform = platform.as_str(), user, "environment created");
    Ok(env)
}

fn ensure_project(
    state: &MasterState,
    env: &EnvironmentRecord,
    name: &str,
) -> Result<ProjectRecord, Status> {
    if let Some(p) = state.store.project(&env.uuid, name).map_err(internal)? {
        return Ok(p);
    }
    let project = ProjectRecord {
        env_uuid: env.uuid.clone(),
        name: name.to_owned(),
        created_at: now_unix(),
        quota_bytes: DEFAULT_QUOTA_BYTES,
        used_bytes: 0,
        live_deploy: None,
    };
    state.store.put_project(&project).map_err(internal)?;
    Ok(project)
}

fn grains_of(state: &MasterState, agent: &str) -> Result<crate::store::Grains, Status> {
    Ok(state
        .store
        .agent(agent)
        .map_err(internal)?
        .and_then(|a| a.grains)
        .unwrap_or_default())
}

struct NewJob<'a> {
    kind: JobKind,
    env: &'a EnvironmentRecord,
    project: &'a str,
    user: &'a str,
    deploy_id: String,
    commit: String,
    plan: Value,
    common: Value,
    pillar: Value,
    source_blob: Option<String>,
    release_blob: Option<String>,
    target: Option<String>,
}

/// Records and sends the job; returns its id and the client's update stream.
fn dispatch(state: &MasterState, new: NewJob<'_>) -> Result<(String, Updates), Status> {
    let grains = serde_json::to_value(grains_of(state, &new.env.agent)?).unwrap_or_default();
    let record = JobRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind: new.kind,
        env_uuid: new.env.uuid.clone(),
        project: new.project.to_owned(),
        mode: new.env.mode,
        deploy_id: new.deploy_id.clone(),
        requested_by: new.user.to_owned(),
        agent: new.env.agent.clone(),
        commit: new.commit.clone(),
        created_at: now_unix(),
        created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        state: JobState::Running,
        failed_step: String::new(),
        failed_state: String::new(),
        message: String::new(),
        finished_at: None,
        source_blob: new.source_blob.clone(),
        release_blob: new.release_blob.clone(),
        target_deploy_id: new.target.clone(),
        plan: new.plan.clone(),
        common: new.common.clone(),
        pillar: new.pillar.clone(),
    };
    for blob in [&new.source_blob, &new.release_blob].into_iter().flatten() {
        state
            .store
            .grant_blob(&new.env.uuid, blob)
            .map_err(internal)?;
    }
    let mut common = new.common;
    if let Value::Object(map) = &mut common {
        map.insert("grains".into(), grains);
    }
    let job = Job {
        job_id: record.id.clone(),
        kind: wire_kind(new.kind) as i32,
        env_uuid: new.env.uuid.clone(),
        project: new.project.to_owned(),
        mode: wire_mode(new.env.mode) as i32,
        deploy_id: new.deploy_id,
        plan_json: serde_json::to_vec(&new.plan).unwrap_or_default(),
        common_json: serde_json::to_vec(&common).unwrap_or_default(),
        source_blob: new.source_blob.unwrap_or_default(),
        release_blob: new.release_blob.unwrap_or_default(),
        target_deploy_id: new.target.unwrap_or_default(),
        requested_by: new.user.to_owned(),
        pillar_json: serde_json::to_vec(&new.pillar).unwrap_or_default(),
        commit: new.commit,
    };
    let id = record.id.clone();
    Ok((id, state.jobs.dispatch(state, record, job)?))
}

fn dispatch_updates(state: &MasterState, new: NewJob<'_>) -> Result<Updates, Status> {
    dispatch(state, new).map(|(_, updates)| updates)
}

pub fn init_project(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> Result<Updates, Status> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    state.jobs.check_free(state, &env.uuid, project)?;
    ensure_project(state, &env, project)?;
    dispatch_updates(
        state,
        NewJob {
            kind: JobKind::Init,
            env: &env,
            project,
            user,
            deploy_id: String::new(),
            commit: String::new(),
            plan: Value::Null,
            common: serde_json::json!({}),
            pillar: serde_json::json!({}),
            source_blob: None,
            release_blob: None,
            target: None,
        },
    )
}

/// Checks everything a push can check before its upload is read. Returns the environment and
/// the bytes the upload may take (what is left of the project's quota).
pub fn check_push(
    state: &MasterState,
    user: &str,
    header: &PushHeader,
) -> Result<(EnvironmentRecord, u64), Status> {
    validate_project(&header.project)?;
    let env = authorize(state, user, &header.env_uuid)?;
    state.jobs.check_free(state, &env.uuid, &header.project)?;
    let room = check_quota(state, &env.uuid, &header.project, header.source_size)?;
    if env.mode == Mode::Final {
        find_release(state, user, &header.project, &header.release_id)?;
    }
    Ok((env, room))
}

/// Refuses a push of `size` bytes that would exceed the project's quota; returns the room
/// left. Checked on the announced size before the upload and on the real one after it.
pub fn check_quota(
    state: &MasterState,
    env: &str,
    project: &str,
    size: u64,
) -> Result<u64, Status> {
    let (quota, used) = state
        .store
        .project(env, project)
        .map_err(internal)?
        .map_or((DEFAULT_QUOTA_BYTES, 0), |p| (p.quota_bytes, p.used_bytes));
    if used.saturating_add(size) > quota {
        return Err(Status::resource_exhausted(format!(
            "deploy would exceed the quota of project {project:?}: {used} bytes used + {size} pushed > {quota} bytes (corpus enlarge ... to raise it)"
        )));
    }
    Ok(quota - used)
}

/// The release a final push deploys: the named one, else the latest cooked for this project
/// in an environment the user may act on.
fn find_release(
    state: &MasterState,
    user: &str,
    project: &str,
    id: &str,
) -> Result<ReleaseRecord, Status> {
    let releases: Vec<_> = state
        .store
        .releases(project)
        .map_err(internal)?
        .into_iter()
        .filter(|r| authorize(state, user, &r.env_uuid).is_ok() || r.owner == user)
        .collect();
    let found = if id.is_empty() {
        releases.into_iter().max_by(|a, b| a.id.cmp(&b.id))
    } else {
        releases.into_iter().find(|r| r.id == id)
    };
    found.ok_or_else(|| {
        if id.is_empty() {
            Status::failed_precondition(format!(
                "no release of project {project:?} was cooked yet: push it to a staging (cooking) environment first; nothing was changed"
            ))
        } else {
            Status::not_found(format!(
                "no release {id:?} of project {project:?}: see corpus status for the available ones; nothing was changed"
            ))
        }
    })
}

/// A push whose source is stored as `source_blob`: render and dispatch.
pub fn push(
    state: &MasterState,
    user: &str,
    header: &PushHeader,
    env: &EnvironmentRecord,
    source_blob: &str,
    salt: &BTreeMap<String, String>,
) -> Result<Updates, Status> {
    let grains = grains_of(state, &env.agent)?;
    let grains_json = serde_json::to_value(&grains).unwrap_or_default();
    let env_json = Value::String(env.platform.as_str().to_owned());
    let pillar_files: BTreeMap<String, String> = header.pillar_files.clone().into_iter().collect();
    let pillar = render::compile_pillar(&pillar_files, &env.agent, &grains_json, &env_json)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let release = match env.mode {
        Mode::Final => Some(find_release(
            state,
            user,
            &header.project,
            &header.release_id,
        )?),
        _ => None,
    };
    let deploy_id = new_deploy_id();
    let commit = release
        .as_ref()
        .map_or_else(|| header.commit.clone(), |r| r.commit.clone());
    let rendered = render::render_project(
        salt,
        &pillar,
        &DeployContext {
            project: &header.project,
            env,
            mode: env.mode,
            deploy_id: &deploy_id,
            commit: &commit,
            grains: &grains,
        },
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    ensure_project(state, env, &header.project)?;
    // The project record only appears once the push passed every check.
    let (job_id, updates) = dispatch(
        state,
        NewJob {
            kind: JobKind::Deploy,
            env,
            project: &header.project,
            user,
            deploy_id,
            commit,
            plan: serde_json::to_value(&rendered.plan).unwrap_or_default(),
            common: rendered.common,
            pillar,
            source_blob: Some(source_blob.to_owned()),
            release_blob: release.map(|r| r.digest),
            target: None,
        },
    )?;
    state
        .store
        .put_pillar_revision(&PillarRevision {
            env_uuid: env.uuid.clone(),
            project: header.project.clone(),
            job_id,
            created_at: now_unix(),
            files: pillar_files,
        })
        .map_err(internal)?;
    Ok(updates)
}

/// Deploy and rollback jobs of a project, oldest first.
fn deployments(state: &MasterState, env: &str, project: &str) -> Result<Vec<JobRecord>, Status> {
    let mut jobs: Vec<_> = state
        .store
        .jobs()
        .map_err(internal)?
        .into_iter()
        // A job refused at the project lock never deployed anything.
        .filter(|j| j.env_uuid == env && j.project == project && j.kind == JobKind::Deploy)
        .filter(|j| j.state != JobState::Refused)
        .collect();
    jobs.sort_by_key(|j| (j.created_at, j.created_ms));
    Ok(jobs)
}

pub fn rollback(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
    to: &str,
) -> Result<Updates, Status> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    if env.mode == Mode::Editable {
        return Err(Status::failed_precondition(
            "editable environments keep no archives to roll back to: fix the tree and push again",
        ));
    }
    state.jobs.check_free(state, &env.uuid, project)?;
    let history = deployments(state, &env.uuid, project)?;
    if !to.is_empty()
        && !history
            .iter()
            .any(|j| j.deploy_id == to && j.state == JobState::Success)
    {
        return Err(Status::not_found(format!(
            "no successful deployment {to:?} of project {project:?}: see corpus status"
        )));
    }
    // The phases a rollback runs (stop, restore, start) come from the latest deploy.
    let last = history
        .iter()
        .rev()
        .find(|j| j.state == JobState::Success || j.state == JobState::RolledBack)
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "project {project:?} has no deployment to roll back"
            ))
        })?;
    dispatch_updates(
        state,
        NewJob {
            kind: JobKind::Rollback,
            env: &env,
            project,
            user,
            // A rollback is a deployment of its own: its archive records what it replaced.
            deploy_id: new_deploy_id(),
            commit: last.commit.clone(),
            plan: last.plan.clone(),
            common: last.common.clone(),
            pillar: last.pillar.clone(),
            source_blob: None,
            release_blob: None,
            target: (!to.is_empty()).then(|| to.to_owned()),
        },
    )
}

pub fn destroy(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> Result<Updates, Status> {
    if !project.is_empty() {
        validate_project(project)?;
    }
    let env = authorize(state, user, env_uuid)?;
    if !project.is_empty() {
        state.jobs.check_free(state, &env.uuid, project)?;
        if state
            .store
            .project(&env.uuid, project)
            .map_err(internal)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "no project {project:?} in environment {env_uuid}"
            )));
        }
    }
    // Destroying a whole environment stops each project with its latest plans first.
    let plan = if project.is_empty() {
        let mut projects = serde_json::Map::new();
        for p in state.store.projects(&env.uuid).map_err(internal)? {
            let last = deployments(state, &env.uuid, &p.name)?
                .into_iter()
                .rev()
                .find(|j| j.state == JobState::Success || j.state == JobState::RolledBack);
            let entry = match last {
                Some(j) => {
                    serde_json::json!({"plan": j.plan, "common": j.common, "pillar": j.pillar})
                }
                None => serde_json::json!({}),
            };
            projects.insert(p.name.clone(), entry);
        }
        Value::Object(projects)
    } else {
        Value::Null
    };
    dispatch_updates(
        state,
        NewJob {
            kind: JobKind::Destroy,
            env: &env,
            project,
            user,
            deploy_id: String::new(),
            commit: String::new(),
            plan,
            common: serde_json::json!({}),
            pillar: serde_json::json!({}),
            source_blob: None,
            release_blob: None,
            target: None,
        },
    )
}

pub fn set_quota(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
    delta: i64,
) -> Result<ProjectQuota, Status> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    let mut record = state
        .store
        .project(&env.uuid, project)
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!("no project {project:?} in environment {env_uuid}"))
        })?;
    let quota = i128::from(record.quota_bytes) + i128::from(delta);
    if quota <= 0 || quota < i128::from(record.used_bytes) {
        return Err(Status::failed_precondition(format!(
            "cannot set the quota of project {project:?} to {quota} bytes: it uses {} bytes",
            record.used_bytes
        )));
    }
    record.quota_bytes = quota as u64;
    state.store.put_project(&record).map_err(internal)?;
    Ok(quota_message(&record))
}

fn quota_message(p: &ProjectRecord) -> ProjectQuota {
    ProjectQuota {
        env_uuid: p.env_uuid.clone(),
        project: p.name.clone(),
        quota_bytes: p.quota_bytes,
        used_bytes: p.used_bytes,
    }
}

pub fn status(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> Result<(Environment, Vec<ProjectStatus>), Status> {
    let env = authorize(state, user, env_uuid)?;
    let mut projects = state.store.projects(&env.uuid).map_err(internal)?;
    if !project.is_empty() {
        validate_project(project)?;
        projects.retain(|p| p.name == project);
        if projects.is_empty() {
            return Err(Status::not_found(format!(
                "no project {project:?} in environment {env_uuid}"
            )));
        }
    }
    let mut out = Vec::new();
    for p in projects {
        let deployments = deployments(state, &env.uuid, &p.name)?
            .into_iter()
            .map(|j| Deployment {
                live: p.live_deploy.as_deref() == Some(j.deploy_id.as_str()),
                id: j.deploy_id,
                started_at_unix: j.created_at,
                commit: j.commit,
                mode: wire_mode(j.mode) as i32,
                result: status_of(j.state) as i32,
                failed_step: j.failed_step,
                failed_state: j.failed_state,
                job_id: j.id,
            })
            .collect();
        let releases = state
            .store
            .releases(&p.name)
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.owner == user || authorize(state, user, &r.env_uuid).is_ok())
            .map(|r| Release {
                id: r.id,
                digest: r.digest,
                size: r.size,
                commit: r.commit,
                created_at_unix: r.created_at,
            })
            .collect();
        out.push(ProjectStatus {
            project: p.name.clone(),
            deployments,
            releases,
            quota: Some(quota_message(&p)),
        });
    }
    Ok((environment_message(&env), out))
}
