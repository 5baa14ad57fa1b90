//! The lifecycle operations behind the `corpus` commands: project init, pushes, rollbacks,
//! destroy and status. Each checks the user may act on the environment, validates everything
//! it was given, and only then records and dispatches a job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::MasterState;
use crate::auth::now_unix;
use crate::confine::Confinement;
use crate::environments::{
    authorize, check_quota, ensure_project, existing_project, validate_project,
};
use crate::error::{MasterError, MasterResult};
use crate::jobs::{JobOrder, NewDispatch, Updates};
use crate::render::{self, DeployContext};
use crate::store::{
    EnvironmentRecord, Grains, JobKind, JobPayload, JobRecord, JobState, Mode, PillarRevision,
    ProjectRecord, ReleaseRecord,
};

/// Largest source archive a push may upload.
pub const MAX_SOURCE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What a push announces before its source archive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushRequest {
    pub env_uuid: String,
    pub project: String,
    pub commit: String,
    /// Pillar YAML documents keyed by relative file name; empty when none was given.
    pub pillar_files: BTreeMap<String, String>,
    /// The release a final push deploys (empty: the latest).
    pub release_id: String,
    /// A final push: the staging environment (uuid) whose release to take (empty: the only
    /// staging environment of the prod environment's owner that cooked one).
    pub from_env: String,
    /// The announced size of the source archive (0: not announced).
    pub source_size: u64,
    /// The announced sha256 of the source archive (empty: not announced).
    pub source_digest: String,
}

/// Set when a push's client goes away: its render stops soon (templates check it at every
/// printed value, output write and guarded operator, see `corpus_pillar::template::limits::
/// cancellable`; between those a render runs at most its fuel) and nothing is recorded. The push
/// handler holds a [`CancelOnDrop`] of it, dropped with the request.
#[derive(Debug, Clone, Default)]
pub struct PushCancel(Arc<AtomicBool>);

impl PushCancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels the push when dropped (with the request future, when the client
    /// disconnects).
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

pub struct CancelOnDrop(PushCancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

fn cancelled(project: &str) -> MasterError {
    MasterError::Refused(format!(
        "the push of project {project:?} was cancelled: its client went away; nothing was changed"
    ))
}

/// A render that failed because its push was cancelled reports the cancellation, not the
/// error the cancelled template raised.
fn cancelled_or(cancel: &PushCancel, project: &str, error: MasterError) -> MasterError {
    if cancel.is_cancelled() {
        cancelled(project)
    } else {
        error
    }
}

/// One deployment of a project, as `corpus status` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub job: JobRecord,
    /// Whether `run/` points at it, as last reported.
    pub live: bool,
}

/// A project as `corpus status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectStatus {
    pub project: ProjectRecord,
    pub deployments: Vec<Deployment>,
    /// Releases of the project the user may see.
    pub releases: Vec<ReleaseRecord>,
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

fn grains_of(state: &MasterState, agent: &str) -> MasterResult<Grains> {
    Ok(state
        .store
        .agent(agent)?
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
    payload: JobPayload,
    source_blob: Option<String>,
    release_blob: Option<String>,
    target: Option<String>,
    /// The pillar files a push brought, recorded with the job.
    pillar_files: Option<BTreeMap<String, String>>,
}

impl<'a> NewJob<'a> {
    /// A job that carries no source, release or pillar.
    fn plain(kind: JobKind, env: &'a EnvironmentRecord, project: &'a str, user: &'a str) -> Self {
        NewJob {
            kind,
            env,
            project,
            user,
            deploy_id: String::new(),
            commit: String::new(),
            payload: JobPayload {
                plan: Value::Null,
                common: serde_json::json!({}),
                pillar: serde_json::json!({}),
            },
            source_blob: None,
            release_blob: None,
            target: None,
            pillar_files: None,
        }
    }
}

/// What a job may carry to its agent (plans, `common`, pillar as JSON), leaving room for the
/// rest of the message under the link's limit.
const MAX_JOB_PAYLOAD_BYTES: usize = corpus_proto::MAX_MESSAGE_BYTES - 64 * 1024;

/// Refuses a job too large for the agent's link: sent anyway, the agent could not decode it,
/// would drop the link and the job would be failed as lost, with a misleading message.
fn check_payload_size(project: &str, payload: &JobPayload) -> MasterResult<()> {
    let size: usize = [&payload.plan, &payload.common, &payload.pillar]
        .iter()
        .map(|v| serde_json::to_vec(v).map_or(0, |b| b.len()))
        .sum();
    if size > MAX_JOB_PAYLOAD_BYTES {
        return Err(MasterError::invalid(format!(
            "the rendered job of project {project:?} is {size} bytes, more than the {MAX_JOB_PAYLOAD_BYTES} bytes a job may carry to its agent: render fewer or smaller states (ship large contents as files in the source); nothing was changed"
        )));
    }
    Ok(())
}

/// Records and sends the job; returns the client's update stream.
fn dispatch(state: &MasterState, new: NewJob<'_>) -> MasterResult<Updates> {
    check_payload_size(new.project, &new.payload)?;
    let grains = serde_json::to_value(grains_of(state, &new.env.agent)?).unwrap_or_default();
    let job = JobRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind: new.kind,
        env_uuid: new.env.uuid.clone(),
        project: new.project.to_owned(),
        mode: new.env.mode,
        deploy_id: new.deploy_id,
        requested_by: new.user.to_owned(),
        agent: new.env.agent.clone(),
        commit: new.commit,
        created_at: now_unix(),
        created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        state: JobState::Running,
        failed_step: String::new(),
        failed_state: String::new(),
        message: String::new(),
        finished_at: None,
        source_blob: new.source_blob.clone(),
        release_blob: new.release_blob.clone(),
        target_deploy_id: new.target,
    };
    let blob_grants = [new.source_blob, new.release_blob]
        .into_iter()
        .flatten()
        .collect();
    let pillar_revision = new.pillar_files.map(|files| PillarRevision {
        env_uuid: job.env_uuid.clone(),
        project: job.project.clone(),
        job_id: job.id.clone(),
        created_at: now_unix(),
        files,
    });
    // The agent's templates see its grains in `common`; the stored payload does not keep them.
    // Every job carries the environment's identity, replayed ones (rollback, destroy) of
    // deployments recorded before the environment had one included.
    let mut common = new.payload.common.clone();
    if let Value::Object(map) = &mut common {
        map.insert("grains".into(), grains);
        if let Some(identity) = crate::environments::identity(new.env) {
            map.extend(identity.common_fields());
        }
    }
    let order = JobOrder {
        job,
        plan: new.payload.plan.clone(),
        common,
        pillar: new.payload.pillar.clone(),
    };
    state.jobs.dispatch(
        state,
        NewDispatch {
            order,
            payload: new.payload,
            blob_grants,
            pillar_revision,
        },
    )
}

pub fn init_project(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> MasterResult<Updates> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    state.jobs.check_free(state, &env.uuid, project)?;
    ensure_project(state, &env, project)?;
    dispatch(state, NewJob::plain(JobKind::Init, &env, project, user))
}

/// Checks everything a push can check before its upload is read. Returns the environment and
/// the bytes the upload may take (what is left of the project's quota).
pub fn check_push(
    state: &MasterState,
    user: &str,
    request: &PushRequest,
) -> MasterResult<(EnvironmentRecord, u64)> {
    validate_project(&request.project)?;
    let env = authorize(state, user, &request.env_uuid)?;
    state.jobs.check_free(state, &env.uuid, &request.project)?;
    let room = check_quota(state, &env.uuid, &request.project, request.source_size)?;
    crate::blob_gc::check_ceilings(state, &env.owner, request.source_size, None)?;
    if env.mode == Mode::Final {
        find_release(state, &env, request)?;
    }
    Ok((env, room))
}

/// The release a final push deploys. Only releases cooked in a staging environment of the
/// prod environment's owner qualify, whoever pushes (an admin or a grantee deploys the owner's
/// release, never one of their own or another user's): the named one, else the newest of the
/// staging environment `--from` names or, without it, of the only such environment there is.
fn find_release(
    state: &MasterState,
    prod: &EnvironmentRecord,
    request: &PushRequest,
) -> MasterResult<ReleaseRecord> {
    let project = &request.project;
    let mut releases = Vec::new();
    for release in state.store.releases(project)? {
        if trusted_release(state, prod, &release)? {
            releases.push(release);
        }
    }
    if !request.from_env.is_empty() {
        releases.retain(|r| r.env_uuid == request.from_env);
    }
    if !request.release_id.is_empty() {
        return releases
            .into_iter()
            .find(|r| r.id == request.release_id)
            .ok_or_else(|| {
                MasterError::not_found(
                    "release",
                    format!("{:?}", request.release_id),
                    format!(
                        " of project {project:?} cooked in a staging environment of {} (the prod environment's owner){}: see corpus status for the available ones; nothing was changed",
                        prod.owner,
                        from_detail(&request.from_env)
                    ),
                )
            });
    }
    let mut sources: Vec<&str> = releases.iter().map(|r| r.env_uuid.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    if sources.len() > 1 {
        return Err(MasterError::Refused(format!(
            "project {project:?} has releases from {} staging environments of {}: {}; name one with --release ID or --from ENV; nothing was changed",
            sources.len(),
            prod.owner,
            sources.join(", ")
        )));
    }
    releases
        .into_iter()
        .max_by(|a, b| a.id.cmp(&b.id))
        .ok_or_else(|| {
            MasterError::Refused(format!(
                "no release of project {project:?} was cooked in a staging environment of {} (the prod environment's owner){}: push it to their staging (cooking) environment first; nothing was changed",
                prod.owner,
                from_detail(&request.from_env)
            ))
        })
}

fn from_detail(from_env: &str) -> String {
    if from_env.is_empty() {
        String::new()
    } else {
        format!(" in environment {from_env}")
    }
}

/// Whether a prod environment may deploy `release`: cooked for its owner, in an environment
/// that is (still) a staging environment of that owner. A release whose environment is gone
/// is trusted on the owner recorded when it was cooked.
fn trusted_release(
    state: &MasterState,
    prod: &EnvironmentRecord,
    release: &ReleaseRecord,
) -> MasterResult<bool> {
    if release.owner != prod.owner {
        return Ok(false);
    }
    Ok(match state.store.environment(&release.env_uuid)? {
        Some(cooked_in) => {
            cooked_in.owner == prod.owner && cooked_in.platform == crate::store::Platform::Staging
        }
        None => true,
    })
}

/// A push whose source is stored as `source_blob`: render and dispatch. Blocking: it runs
/// user templates (bounded by fuel).
pub fn push(
    state: &MasterState,
    user: &str,
    request: &PushRequest,
    env: &EnvironmentRecord,
    source_blob: &str,
    salt: &BTreeMap<String, String>,
    cancel: &PushCancel,
) -> MasterResult<Updates> {
    let started = std::time::Instant::now();
    let pushed = corpus_pillar::template::limits::cancellable(cancel.0.clone(), || {
        render_and_dispatch(state, user, request, env, source_blob, salt, cancel)
    });
    // The end of every push's render, cancelled or not: how long a master thread worked for it.
    tracing::info!(
        env = %env.uuid,
        project = %request.project,
        elapsed_ms = started.elapsed().as_millis() as u64,
        cancelled = cancel.is_cancelled(),
        ok = pushed.is_ok(),
        "push render ended"
    );
    pushed
}

fn render_and_dispatch(
    state: &MasterState,
    user: &str,
    request: &PushRequest,
    env: &EnvironmentRecord,
    source_blob: &str,
    salt: &BTreeMap<String, String>,
    cancel: &PushCancel,
) -> MasterResult<Updates> {
    let grains = grains_of(state, &env.agent)?;
    let grains_json = serde_json::to_value(&grains).unwrap_or_default();
    let env_json = Value::String(env.platform.as_str().to_owned());
    let pillar = render::compile_pillar(&request.pillar_files, &env.agent, &grains_json, &env_json)
        .map_err(|e| cancelled_or(cancel, &request.project, e.into()))?;
    if cancel.is_cancelled() {
        return Err(cancelled(&request.project));
    }
    let release = match env.mode {
        Mode::Final => Some(find_release(state, env, request)?),
        _ => None,
    };
    let deploy_id = new_deploy_id();
    let commit = release
        .as_ref()
        .map_or_else(|| request.commit.clone(), |r| r.commit.clone());
    if cancel.is_cancelled() {
        return Err(cancelled(&request.project));
    }
    let rendered = render::render_project_until(
        salt,
        &pillar,
        &DeployContext {
            project: &request.project,
            env,
            mode: env.mode,
            deploy_id: &deploy_id,
            commit: &commit,
            grains: &grains,
        },
        &|| cancel.is_cancelled(),
    )
    .map_err(|e| cancelled_or(cancel, &request.project, e.into()))?
    .ok_or_else(|| cancelled(&request.project))?;
    // On an agent shared with other users, a state that leaves the environment is refused here,
    // before anything is recorded.
    if let Some(identity) = crate::environments::identity(env) {
        let env_root = render::environment_root(env, &grains);
        Confinement {
            identity,
            env_root: &env_root,
        }
        .check(&rendered.plan, salt)?;
    }
    let payload = JobPayload {
        plan: serde_json::to_value(&rendered.plan).unwrap_or_default(),
        common: rendered.common,
        pillar,
    };
    check_payload_size(&request.project, &payload)?;
    if cancel.is_cancelled() {
        return Err(cancelled(&request.project));
    }
    // The project record only appears once the push passed every check.
    ensure_project(state, env, &request.project)?;
    dispatch(
        state,
        NewJob {
            deploy_id,
            commit,
            payload,
            source_blob: Some(source_blob.to_owned()),
            release_blob: release.map(|r| r.digest),
            pillar_files: Some(request.pillar_files.clone()),
            ..NewJob::plain(JobKind::Deploy, env, &request.project, user)
        },
    )
}

/// Deploy jobs of a project that deployed something, oldest first.
fn deployments(state: &MasterState, env: &str, project: &str) -> MasterResult<Vec<JobRecord>> {
    let mut jobs: Vec<_> = state
        .store
        .project_jobs(env, project)?
        .into_iter()
        // A job refused at the project lock never deployed anything.
        .filter(|j| j.kind == JobKind::Deploy && j.state != JobState::Refused)
        .collect();
    jobs.sort_by_key(|j| (j.created_at, j.created_ms));
    Ok(jobs)
}

/// The latest deployment that left the project running: its phases are the ones a rollback
/// or destroy replays.
fn last_deployed(history: &[JobRecord]) -> Option<&JobRecord> {
    history
        .iter()
        .rev()
        .find(|j| j.state == JobState::Success || j.state == JobState::RolledBack)
}

pub fn rollback(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
    to: &str,
) -> MasterResult<Updates> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    if env.mode == Mode::Editable {
        return Err(MasterError::Refused(
            "editable environments keep no archives to roll back to: fix the tree and push again"
                .to_owned(),
        ));
    }
    state.jobs.check_free(state, &env.uuid, project)?;
    let history = deployments(state, &env.uuid, project)?;
    if !to.is_empty()
        && !history
            .iter()
            .any(|j| j.deploy_id == to && j.state == JobState::Success)
    {
        return Err(MasterError::not_found(
            "successful deployment",
            format!("{to:?}"),
            format!(" of project {project:?}: see corpus status"),
        ));
    }
    let last = last_deployed(&history).ok_or_else(|| {
        MasterError::Refused(format!(
            "project {project:?} has no deployment to roll back"
        ))
    })?;
    let live = state
        .store
        .project(&env.uuid, project)?
        .and_then(|p| p.live_deploy);
    // The phases and `common` (deploy id, commit) the rollback runs are the target's, as the
    // agent will pick it; without a target the master knows, the newest deployment's (the
    // agent then refuses, having nothing to return to).
    let target = rollback_target(&history, live.as_deref(), to).unwrap_or(last);
    dispatch(
        state,
        NewJob {
            // A rollback is a deployment of its own: its archive records what it replaced.
            deploy_id: new_deploy_id(),
            commit: target.commit.clone(),
            payload: state.store.job_payload(&target.id)?,
            target: (!to.is_empty()).then(|| to.to_owned()),
            ..NewJob::plain(JobKind::Rollback, &env, project, user)
        },
    )
}

/// The deployment a rollback returns to, chosen as the agent chooses it: the one named, else
/// the newest successful deployment made before the live one (`live`: as last reported; the
/// newest that left the project running when unknown). `history` is oldest first.
fn rollback_target<'a>(
    history: &'a [JobRecord],
    live: Option<&str>,
    to: &str,
) -> Option<&'a JobRecord> {
    let succeeded = |j: &&JobRecord| j.state == JobState::Success;
    if !to.is_empty() {
        return history.iter().filter(succeeded).find(|j| j.deploy_id == to);
    }
    let live_at = match live {
        Some(live) => history.iter().position(|j| j.deploy_id == live)?,
        None => history
            .iter()
            .rposition(|j| j.state == JobState::Success || j.state == JobState::RolledBack)?,
    };
    history[..live_at].iter().rev().find(succeeded)
}

pub fn destroy(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> MasterResult<Updates> {
    if !project.is_empty() {
        validate_project(project)?;
    }
    let env = authorize(state, user, env_uuid)?;
    if !project.is_empty() {
        state.jobs.check_free(state, &env.uuid, project)?;
        existing_project(state, &env, project)?;
    }
    // Destroying a whole environment stops each project with its latest plans first.
    let plan = if project.is_empty() {
        let mut projects = serde_json::Map::new();
        for p in state.store.projects(&env.uuid)? {
            let history = deployments(state, &env.uuid, &p.name)?;
            let entry = match last_deployed(&history) {
                Some(j) => {
                    let mut payload = state.store.job_payload(&j.id)?;
                    // As for every job: the project is stopped as the environment's user,
                    // even when its deployment was recorded before the environment had one.
                    if let (Some(identity), Value::Object(common)) =
                        (crate::environments::identity(&env), &mut payload.common)
                    {
                        common.extend(identity.common_fields());
                    }
                    serde_json::json!({"plan": payload.plan, "common": payload.common, "pillar": payload.pillar})
                }
                None => serde_json::json!({}),
            };
            projects.insert(p.name.clone(), entry);
        }
        Value::Object(projects)
    } else {
        Value::Null
    };
    let mut new = NewJob::plain(JobKind::Destroy, &env, project, user);
    new.payload.plan = plan;
    dispatch(state, new)
}

/// The environment and its projects (or the one named), with deployments and releases, and
/// the jobs still running there, of every kind (a whole-environment destroy included when one
/// project is asked), oldest first.
pub fn status(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
) -> MasterResult<(EnvironmentRecord, Vec<ProjectStatus>, Vec<JobRecord>)> {
    let env = authorize(state, user, env_uuid)?;
    let projects = if project.is_empty() {
        state.store.projects(&env.uuid)?
    } else {
        validate_project(project)?;
        vec![existing_project(state, &env, project)?]
    };
    let mut out = Vec::new();
    for p in projects {
        let deployments = deployments(state, &env.uuid, &p.name)?
            .into_iter()
            .map(|job| Deployment {
                live: p.live_deploy.as_deref() == Some(job.deploy_id.as_str()),
                job,
            })
            .collect();
        let releases = state
            .store
            .releases(&p.name)?
            .into_iter()
            .filter(|r| r.owner == user || authorize(state, user, &r.env_uuid).is_ok())
            .collect();
        out.push(ProjectStatus {
            project: p,
            deployments,
            releases,
        });
    }
    let mut running: Vec<JobRecord> = state
        .store
        .environment_jobs(&env.uuid)?
        .into_iter()
        .filter(|j| j.state == JobState::Running)
        .filter(|j| project.is_empty() || j.project.is_empty() || j.project == project)
        .collect();
    running.sort_by_key(|j| (j.created_at, j.created_ms));
    Ok((env, out, running))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LockHolder;
    use crate::store::Platform;

    #[test]
    fn a_push_whose_client_went_away_stops_and_records_nothing() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let env = EnvironmentRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec![],
            defaults: serde_json::json!({}),
            created_at: 0,
            smep: None,
        };
        state.store.put_environment(&env)?;
        let mut salt = BTreeMap::new();
        salt.insert(
            "build.sls".to_owned(),
            "compile:\n  cmd.run:\n    - name: make\n".to_owned(),
        );
        let request = PushRequest {
            env_uuid: env.uuid.clone(),
            project: "app".into(),
            ..Default::default()
        };
        let cancel = PushCancel::default();
        drop(cancel.on_drop());
        let err = match push(
            &state,
            "alice",
            &request,
            &env,
            &"a".repeat(64),
            &salt,
            &cancel,
        ) {
            Err(e) => e.to_string(),
            Ok(_) => anyhow::bail!("a push whose client went away was dispatched"),
        };
        assert!(err.contains("cancelled"), "{err}");
        assert!(state.store.project_jobs(&env.uuid, "app")?.is_empty());
        assert!(state.store.project(&env.uuid, "app")?.is_none());
        Ok(())
    }

    #[test]
    fn a_push_to_a_locked_project_is_refused_naming_the_holder() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let env = EnvironmentRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec!["bob".into()],
            defaults: serde_json::json!({}),
            created_at: 0,
            smep: None,
        };
        state.store.put_environment(&env)?;
        let holder = JobRecord {
            id: "j1".into(),
            kind: JobKind::Deploy,
            env_uuid: env.uuid.clone(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: "d1".into(),
            requested_by: "bob".into(),
            agent: "node1".into(),
            commit: String::new(),
            created_at: 1_700_000_000,
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
        state
            .store
            .record_job(&holder, &JobPayload::default(), &[], None)?;
        crate::jobs::Jobs::load(&state)?;

        let request = PushRequest {
            env_uuid: env.uuid.clone(),
            project: "app".into(),
            ..Default::default()
        };
        match check_push(&state, "alice", &request) {
            Err(e @ MasterError::Locked { .. }) => {
                let message = e.to_string();
                let MasterError::Locked { holder, .. } = e else {
                    unreachable!()
                };
                assert_eq!(
                    holder,
                    LockHolder {
                        job: "j1".into(),
                        user: Some("bob".into()),
                        started: Some(1_700_000_000),
                    }
                );
                assert!(
                    message.contains("locked by a deploy of bob (job j1, started"),
                    "{message}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // Another project of the environment is free.
        let other = PushRequest {
            project: "web".into(),
            ..request
        };
        assert!(check_push(&state, "alice", &other).is_ok());
        Ok(())
    }

    fn deploy(id: &str, created_at: i64, state: JobState) -> JobRecord {
        JobRecord {
            id: format!("job-{id}"),
            kind: JobKind::Deploy,
            env_uuid: "env".into(),
            project: "app".into(),
            mode: Mode::Cooking,
            deploy_id: id.into(),
            requested_by: "alice".into(),
            agent: "node1".into(),
            commit: format!("commit-{id}"),
            created_at,
            created_ms: 0,
            state,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: Some(created_at),
            source_blob: None,
            release_blob: None,
            target_deploy_id: None,
        }
    }

    #[test]
    fn a_job_too_large_for_the_agents_link_is_refused_before_it_is_recorded() -> anyhow::Result<()>
    {
        let (_dir, state) = crate::test_state()?;
        let env = EnvironmentRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec![],
            defaults: serde_json::json!({}),
            created_at: 0,
            smep: None,
        };
        let mut new = NewJob::plain(JobKind::Deploy, &env, "app", "alice");
        new.payload.plan = Value::String("x".repeat(corpus_proto::MAX_MESSAGE_BYTES));
        match dispatch(&state, new) {
            Err(MasterError::Invalid { message, .. }) => {
                assert!(
                    message.contains("a job may carry to its agent"),
                    "{message}"
                )
            }
            Err(other) => panic!("expected Invalid, got {other:?}"),
            Ok(_) => panic!("a job too large for the link was dispatched"),
        }
        assert!(state.store.jobs()?.is_empty());
        Ok(())
    }

    #[test]
    fn a_rollback_targets_the_deployment_the_agent_returns_to() {
        let history = vec![
            deploy("v1", 1, JobState::Success),
            deploy("v2", 2, JobState::Success),
            deploy("broken", 3, JobState::Failed),
            deploy("v3", 4, JobState::Success),
        ];
        let target = |live, to| rollback_target(&history, live, to).map(|j| j.deploy_id.clone());
        // The newest successful one before the live one, the live one known or not.
        assert_eq!(target(Some("v3"), ""), Some("v2".to_owned()));
        assert_eq!(target(None, ""), Some("v2".to_owned()));
        // After a rollback to v2, v2 is live: the next one returns to v1.
        assert_eq!(target(Some("v2"), ""), Some("v1".to_owned()));
        assert_eq!(target(Some("v1"), ""), None);
        // The one named, if it succeeded.
        assert_eq!(target(Some("v3"), "v1"), Some("v1".to_owned()));
        assert_eq!(target(Some("v3"), "broken"), None);
    }

    #[test]
    fn a_rollback_sends_the_targets_common_and_records_its_commit() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let env_uuid = uuid::Uuid::new_v4().to_string();
        let env = EnvironmentRecord {
            uuid: env_uuid.clone(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec![],
            defaults: serde_json::json!({}),
            created_at: 0,
            smep: None,
        };
        state.store.put_environment(&env)?;
        state.store.put_agent(&crate::store::AgentRecord {
            id: "node1".into(),
            status: crate::store::AgentStatus::Accepted,
            csr_pem: String::new(),
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: 0,
            decided_at: None,
            grains: None,
            last_seen: None,
            address: None,
            conflicting_keys: Vec::new(),
        })?;
        for (id, at) in [("v1", 1), ("v2", 2), ("v3", 3)] {
            let payload = JobPayload {
                plan: serde_json::json!({"stop": format!("stop {id}")}),
                common: serde_json::json!({"deploy_id": id, "commit": format!("commit-{id}")}),
                pillar: serde_json::json!({}),
            };
            state.store.record_job(
                &JobRecord {
                    env_uuid: env_uuid.clone(),
                    ..deploy(id, at, JobState::Success)
                },
                &payload,
                &[],
                None,
            )?;
        }
        state.store.put_project(&ProjectRecord {
            env_uuid: env_uuid.clone(),
            name: "app".into(),
            created_at: 0,
            quota_bytes: crate::store::DEFAULT_QUOTA_BYTES,
            used_bytes: 0,
            live_deploy: Some("v3".into()),
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let _link = state.links.register("node1", tx, "test".into(), 0);

        let _updates = rollback(&state, "alice", &env_uuid, "app", "")?;
        let Ok(crate::link_registry::ToAgent::Job(order)) = rx.try_recv() else {
            panic!("no job sent to the agent");
        };
        assert_eq!(order.common["deploy_id"], "v2");
        assert_eq!(order.common["commit"], "commit-v2");
        assert_eq!(order.plan["stop"], "stop v2");
        assert_eq!(order.job.commit, "commit-v2");
        assert_eq!(
            state.store.job(&order.job.id)?.map(|j| j.commit),
            Some("commit-v2".to_owned())
        );
        Ok(())
    }

    #[test]
    fn a_prod_push_takes_only_releases_its_owner_cooked_in_staging() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let env = |owner: &str, platform: Platform| -> anyhow::Result<EnvironmentRecord> {
            let env = EnvironmentRecord {
                uuid: uuid::Uuid::new_v4().to_string(),
                platform,
                mode: platform.default_mode(),
                agent: "node1".into(),
                owner: owner.into(),
                grants: vec![],
                defaults: serde_json::json!({}),
                created_at: 0,
                smep: None,
            };
            state.store.put_environment(&env)?;
            Ok(env)
        };
        let release = |id: &str, cooked_in: &EnvironmentRecord| -> anyhow::Result<()> {
            let job = JobRecord {
                env_uuid: cooked_in.uuid.clone(),
                ..deploy(id, 1, JobState::Success)
            };
            state.store.record_release(
                &ReleaseRecord {
                    id: id.into(),
                    project: "app".into(),
                    env_uuid: cooked_in.uuid.clone(),
                    owner: cooked_in.owner.clone(),
                    digest: format!("digest-{id}"),
                    size: 1,
                    commit: String::new(),
                    created_at: 0,
                    manifest: serde_json::json!({}),
                },
                &job,
            )?;
            Ok(())
        };
        let prod = env("alice", Platform::Prod)?;
        let alice_staging = env("alice", Platform::Staging)?;
        let bob_staging = env("bob", Platform::Staging)?;
        let alice_dev = env("alice", Platform::Dev)?;
        release("20260101T000000Z-a", &alice_staging)?;
        // Newer, but bob's, or not cooked in staging: never chosen for alice's prod.
        release("20260102T000000Z-b", &bob_staging)?;
        release("20260103T000000Z-d", &alice_dev)?;
        let request = |release_id: &str, from_env: &str| PushRequest {
            env_uuid: prod.uuid.clone(),
            project: "app".into(),
            release_id: release_id.into(),
            from_env: from_env.into(),
            ..Default::default()
        };
        assert_eq!(
            find_release(&state, &prod, &request("", ""))?.id,
            "20260101T000000Z-a"
        );
        assert!(matches!(
            find_release(&state, &prod, &request("20260102T000000Z-b", "")),
            Err(MasterError::NotFound {
                what: "release",
                ..
            })
        ));
        // Two staging environments of alice cooked it: the push must say which.
        let second = env("alice", Platform::Staging)?;
        release("20260104T000000Z-c", &second)?;
        match find_release(&state, &prod, &request("", "")) {
            Err(MasterError::Refused(m)) => assert!(
                m.contains(&alice_staging.uuid) && m.contains(&second.uuid) && m.contains("--from"),
                "{m}"
            ),
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(
            find_release(&state, &prod, &request("", &alice_staging.uuid))?.id,
            "20260101T000000Z-a"
        );
        assert_eq!(
            find_release(&state, &prod, &request("20260104T000000Z-c", ""))?.id,
            "20260104T000000Z-c"
        );
        assert!(matches!(
            find_release(&state, &prod, &request("", &bob_staging.uuid)),
            Err(MasterError::Refused(_))
        ));
        Ok(())
    }
}
