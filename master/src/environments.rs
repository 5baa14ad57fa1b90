//! Environments and projects as the `corpus` commands see them: who may act on an environment,
//! creating one on an agent with a free slot, projects and their quotas.

use serde_json::Value;

use crate::MasterState;
use crate::auth::now_unix;
use crate::error::{MasterError, MasterResult};
use crate::store::{
    AgentRecord, AgentStatus, DEFAULT_QUOTA_BYTES, EnvironmentRecord, Mode, Platform, ProjectRecord,
};

fn is_admin(state: &MasterState, user: &str) -> MasterResult<bool> {
    Ok(state.store.user(user)?.is_some_and(|u| u.admin))
}

/// The environment, if `user` owns it, was granted it, or is an admin.
pub fn authorize(state: &MasterState, user: &str, uuid: &str) -> MasterResult<EnvironmentRecord> {
    uuid::Uuid::parse_str(uuid).map_err(|_| {
        MasterError::invalid(format!(
            "environment id {} is not a UUID",
            corpus_proto::names::quote_input(uuid)
        ))
    })?;
    let env = state
        .store
        .environment(uuid)?
        .ok_or_else(|| MasterError::not_found("environment", uuid, ""))?;
    if env.owner != user && !env.grants.iter().any(|g| g == user) && !is_admin(state, user)? {
        return Err(MasterError::Forbidden(format!(
            "environment {uuid} belongs to another user"
        )));
    }
    Ok(env)
}

pub fn validate_project(name: &str) -> MasterResult<()> {
    Ok(corpus_proto::names::validate_project_name(name)?)
}

/// Creates an environment of `platform` on `host`, or on the connected agent with the most
/// free slots when `host` is empty.
pub fn init_env(
    state: &MasterState,
    user: &str,
    platform: &str,
    host: &str,
    mode: &str,
) -> MasterResult<EnvironmentRecord> {
    let platform = Platform::parse(platform).ok_or_else(|| {
        MasterError::invalid(format!(
            "platform type {} is invalid: use dev, staging or prod",
            corpus_proto::names::quote_input(platform)
        ))
    })?;
    let mode = match mode {
        "" => platform.default_mode(),
        m => Mode::parse(m).ok_or_else(|| {
            MasterError::invalid(format!(
                "mode {} is invalid: use editable, cooking or final",
                corpus_proto::names::quote_input(m)
            ))
        })?,
    };
    // Choosing a slot and recording the environment are one step: two concurrent requests
    // would otherwise both see the last free slot and both take it.
    let _allocating = state
        .slot_allocation
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // A storage error here must refuse, not count as an empty host.
    let mut hosted: std::collections::HashMap<String, u32> = Default::default();
    for env in state.store.environments()? {
        *hosted.entry(env.agent).or_default() += 1;
    }
    let free = |agent: &AgentRecord| {
        let slots = agent.grains.as_ref().map_or(0, |g| g.slots);
        slots.saturating_sub(hosted.get(&agent.id).copied().unwrap_or(0))
    };
    let agent = if host.is_empty() {
        let mut candidates: Vec<_> = state
            .store
            .agents()?
            .into_iter()
            .filter(|a| a.status == AgentStatus::Accepted && state.links.is_connected(&a.id))
            .filter(|a| free(a) > 0)
            .collect();
        candidates.sort_by_key(|a| std::cmp::Reverse(free(a)));
        candidates.into_iter().next().ok_or_else(|| {
            MasterError::Exhausted(
                "no connected agent has a free slot: see corpus listhosts".to_owned(),
            )
        })?
    } else {
        let agent = state
            .store
            .agent(host)?
            .filter(|a| a.status == AgentStatus::Accepted)
            .ok_or_else(|| {
                MasterError::not_found(
                    "accepted host",
                    format!("{host:?}"),
                    ": see corpus listhosts",
                )
            })?;
        if free(&agent) == 0 {
            return Err(MasterError::Exhausted(format!(
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
    state.store.put_environment(&env)?;
    tracing::info!(env = %env.uuid, agent = %env.agent, platform = platform.as_str(), user, "environment created");
    Ok(env)
}

/// The project's record, created with the default quota if it does not exist yet.
pub fn ensure_project(
    state: &MasterState,
    env: &EnvironmentRecord,
    name: &str,
) -> MasterResult<ProjectRecord> {
    if let Some(p) = state.store.project(&env.uuid, name)? {
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
    state.store.put_project(&project)?;
    Ok(project)
}

/// The project, or the not-found error every command gives for it.
pub fn existing_project(
    state: &MasterState,
    env: &EnvironmentRecord,
    project: &str,
) -> MasterResult<ProjectRecord> {
    state.store.project(&env.uuid, project)?.ok_or_else(|| {
        MasterError::not_found(
            "project",
            format!("{project:?}"),
            format!(" in environment {}", env.uuid),
        )
    })
}

/// Refuses a push of `size` bytes that would exceed the project's quota; returns the room
/// left. Checked on the announced size before the upload and on the real one after it.
pub fn check_quota(state: &MasterState, env: &str, project: &str, size: u64) -> MasterResult<u64> {
    let (quota, used) = state
        .store
        .project(env, project)?
        .map_or((DEFAULT_QUOTA_BYTES, 0), |p| (p.quota_bytes, p.used_bytes));
    if used.saturating_add(size) > quota {
        return Err(MasterError::Quota {
            project: project.to_owned(),
            used,
            size,
            quota,
        });
    }
    Ok(quota - used)
}

/// Raises (or lowers) a project's quota by `delta` bytes; never below what it uses.
pub fn set_quota(
    state: &MasterState,
    user: &str,
    env_uuid: &str,
    project: &str,
    delta: i64,
) -> MasterResult<ProjectRecord> {
    validate_project(project)?;
    let env = authorize(state, user, env_uuid)?;
    let mut record = existing_project(state, &env, project)?;
    let quota = i128::from(record.quota_bytes) + i128::from(delta);
    if quota <= 0 || quota < i128::from(record.used_bytes) {
        return Err(MasterError::Refused(format!(
            "cannot set the quota of project {project:?} to {quota} bytes: it uses {} bytes",
            record.used_bytes
        )));
    }
    record.quota_bytes = quota as u64;
    state.store.put_project(&record)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Platform;

    fn state() -> anyhow::Result<(tempfile::TempDir, std::sync::Arc<MasterState>)> {
        let dir = tempfile::tempdir()?;
        crate::init(dir.path(), &[], false)?;
        let state = crate::open(&crate::ServeOptions {
            data_dir: dir.path().to_owned(),
            settings: Default::default(),
        })?;
        Ok((dir, state))
    }

    fn environment(state: &MasterState, owner: &str) -> anyhow::Result<EnvironmentRecord> {
        let env = EnvironmentRecord {
            uuid: uuid::Uuid::new_v4().to_string(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: owner.into(),
            grants: vec![],
            defaults: serde_json::json!({}),
            created_at: 0,
        };
        state.store.put_environment(&env)?;
        Ok(env)
    }

    #[test]
    fn a_push_over_the_quota_is_refused_with_the_numbers() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        let env = environment(&state, "alice")?;
        let mut project = ensure_project(&state, &env, "app")?;
        project.quota_bytes = 100;
        project.used_bytes = 60;
        state.store.put_project(&project)?;
        assert_eq!(check_quota(&state, &env.uuid, "app", 40)?, 40);
        match check_quota(&state, &env.uuid, "app", 41) {
            Err(MasterError::Quota {
                project,
                used,
                size,
                quota,
            }) => assert_eq!((project.as_str(), used, size, quota), ("app", 60, 41, 100)),
            other => panic!("expected a quota refusal, got {other:?}"),
        }
        // Never below what the project uses.
        assert!(matches!(
            set_quota(&state, "alice", &env.uuid, "app", -50),
            Err(MasterError::Refused(m)) if m.contains("uses 60 bytes")
        ));
        Ok(())
    }

    #[test]
    fn another_users_environment_is_forbidden_and_a_missing_one_not_found() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        let env = environment(&state, "alice")?;
        assert!(authorize(&state, "alice", &env.uuid).is_ok());
        assert!(matches!(
            authorize(&state, "bob", &env.uuid),
            Err(MasterError::Forbidden(m)) if m.contains("belongs to another user")
        ));
        let missing = uuid::Uuid::new_v4().to_string();
        assert!(matches!(
            authorize(&state, "alice", &missing),
            Err(MasterError::NotFound {
                what: "environment",
                ..
            })
        ));
        assert!(matches!(
            authorize(&state, "alice", "not-a-uuid"),
            Err(MasterError::Invalid { .. })
        ));
        Ok(())
    }

    #[test]
    fn concurrent_init_env_never_takes_more_slots_than_a_host_has() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        // The race is a matter of scheduling: many rounds on fresh hosts make it show.
        for round in 0..16 {
            let host = format!("node{round}");
            state.store.put_agent(&AgentRecord {
                id: host.clone(),
                status: AgentStatus::Accepted,
                csr_pem: String::new(),
                certificate_pem: None,
                fingerprint: None,
                enrolled_at: 0,
                decided_at: None,
                grains: Some(crate::store::Grains {
                    slots: 2,
                    ..Default::default()
                }),
                last_seen: None,
                address: None,
            })?;
            let requests = 24;
            let start = std::sync::Barrier::new(requests);
            let created = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..requests)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            init_env(&state, "alice", "staging", &host, "").is_ok()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join())
                    .filter(|created| matches!(created, Ok(true)))
                    .count()
            });
            assert_eq!(created, 2, "round {round}");
        }
        assert_eq!(state.store.environments()?.len(), 32);
        Ok(())
    }
}
