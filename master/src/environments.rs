//! Environments and projects as the `corpus` commands see them: who may act on an environment,
//! creating one on an agent with a free slot and its SMEP identity there (placement, the
//! per-user limit, the migration of older records), projects and their quotas.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::MasterState;
use crate::auth::now_unix;
use crate::error::{MasterError, MasterResult};
use crate::hosts::{HostedIndex, isolation_of, shares_safely};
use crate::smep::{self, EnvIdentity};
use crate::store::{
    AgentStatus, DEFAULT_MAX_ENVS, DEFAULT_QUOTA_BYTES, EnvironmentRecord, Mode, PlacementHost,
    Platform, ProjectRecord,
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
    // Choosing a slot and an identity and recording the environment are one step: two
    // concurrent requests would otherwise both see the last free slot (or number) and both
    // take it.
    let _allocating = state
        .slot_allocation
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // A storage error here must refuse, not count as an empty host.
    let environments = state.store.environments()?;
    check_env_limit(state, user, &environments)?;
    let index = HostedIndex::new(&environments);
    let agent = if host.is_empty() {
        // From the placement index (slots and isolation of every accepted agent, in memory):
        // no agent record is read.
        let free = |h: &PlacementHost| h.slots.saturating_sub(index.count(&h.id));
        let safe = |h: &PlacementHost| {
            !index.hosts_others_than(&h.id, user)
                || matches!(h.isolation.as_str(), "landlock" | "uid")
        };
        state
            .store
            .with_placement_hosts(|hosts| {
                hosts
                    .filter(|h| free(h) > 0 && safe(h) && state.links.is_connected(&h.id))
                    // The most free slots; of equals, the first by id (hosts come by id).
                    .fold(None::<(u32, &PlacementHost)>, |best, h| match best {
                        Some((most, _)) if most >= free(h) => best,
                        _ => Some((free(h), h)),
                    })
                    .map(|(_, h)| h.id.clone())
            })?
            .ok_or_else(|| {
                MasterError::Exhausted(
                    "no connected agent has a free slot for your environment (an agent that hosts other users' environments must report isolation landlock or uid): see corpus listhosts".to_owned(),
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
        if index.free_slots(&agent) == 0 {
            return Err(MasterError::Exhausted(format!(
                "host {host:?} has no free slot"
            )));
        }
        if !shares_safely(&agent, user, &index) {
            return Err(MasterError::Refused(format!(
                "host {host:?} hosts environments of other users and reports isolation {:?}: an environment may share an agent with other users' only where the agent isolates them (landlock or uid); choose another host or run the agent as root on a kernel that supports it",
                isolation_of(&agent)
            )));
        }
        agent.id
    };
    let sheet = smep::sheet_number(&state.settings().sheet);
    let numbers = state.settings().machine_numbers;
    let identity = allocate_identity(&environments, &agent, sheet, numbers, platform)?;
    let env = EnvironmentRecord {
        uuid: uuid::Uuid::new_v4().to_string(),
        platform,
        mode,
        agent,
        owner: user.to_owned(),
        grants: vec![],
        defaults: Value::Object(Default::default()),
        created_at: now_unix(),
        // Recorded with the environment, in the same write: the number is taken exactly when
        // the environment exists.
        smep: Some(identity.smep),
    };
    state.store.put_environment(&env)?;
    tracing::info!(env = %env.uuid, agent = %env.agent, platform = platform.as_str(), smep = identity.smep, user, "environment created");
    Ok(env)
}

/// Refuses a new environment beyond the user's limit (admins have none).
fn check_env_limit(
    state: &MasterState,
    user: &str,
    environments: &[EnvironmentRecord],
) -> MasterResult<()> {
    let Some(record) = state.store.user(user)? else {
        return Ok(());
    };
    if record.admin {
        return Ok(());
    }
    let limit = record.max_envs.unwrap_or(DEFAULT_MAX_ENVS);
    let owned = environments.iter().filter(|e| e.owner == user).count();
    if owned >= limit as usize {
        return Err(MasterError::Exhausted(format!(
            "user {user:?} owns {owned} environments, the most allowed ({limit}): destroy one, or ask an operator to raise the limit (corpus-master users set {user} --max-envs N)"
        )));
    }
    Ok(())
}

/// A new identity on `agent`: the lowest environment number none of its environments holds.
fn allocate_identity(
    environments: &[EnvironmentRecord],
    agent: &str,
    sheet: u32,
    numbers: std::ops::RangeInclusive<u32>,
    platform: Platform,
) -> MasterResult<EnvIdentity> {
    let used: BTreeSet<u32> = environments
        .iter()
        .filter(|e| e.agent == agent)
        .filter_map(|e| e.smep.map(smep::machine_number))
        .collect();
    let (first, last) = (*numbers.start(), *numbers.end());
    let machine = smep::free_machine_number(&used, numbers).ok_or_else(|| {
        MasterError::Exhausted(format!(
            "agent {agent:?} has no free environment number: all of {first}-{last} (the master's machine_numbers) are taken; destroy an environment there or use another agent"
        ))
    })?;
    Ok(EnvIdentity::new(sheet, machine, platform))
}

/// Gives every environment recorded before SMEP identities existed one, once, at open: oldest
/// first, each written as soon as it is chosen so a crash midway loses nothing.
pub fn assign_missing_identities(state: &MasterState) -> MasterResult<()> {
    let _allocating = state
        .slot_allocation
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut environments = state.store.environments()?;
    environments.sort_by_key(|e| e.created_at);
    let sheet = smep::sheet_number(&state.settings().sheet);
    for index in 0..environments.len() {
        if environments[index].smep.is_some() {
            continue;
        }
        let env = &environments[index];
        // An agent with more environments than numbers cannot give this one an identity: the
        // master still starts (its jobs run as before, unconfined) and says so.
        let numbers = state.settings().machine_numbers;
        let identity = match allocate_identity(
            &environments,
            &env.agent,
            sheet,
            numbers,
            env.platform,
        ) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::error!(env = %env.uuid, agent = %env.agent, "environment left without a SMEP identity: {e}");
                continue;
            }
        };
        let mut migrated = env.clone();
        migrated.smep = Some(identity.smep);
        state.store.put_environment(&migrated)?;
        tracing::info!(env = %migrated.uuid, agent = %migrated.agent, smep = identity.smep, "environment given its SMEP identity");
        environments[index] = migrated;
    }
    Ok(())
}

/// The environment's identity, if it has one (every environment does once the master opened).
pub fn identity(env: &EnvironmentRecord) -> Option<EnvIdentity> {
    env.smep.map(|smep| EnvIdentity { smep })
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
/// left. What the project uses is the larger of what its agent reports and what the master
/// stores for it (its source and release archives), so neither side can be filled past it.
/// left. Checked on the announced size before the upload and on the real one after it.
pub fn check_quota(state: &MasterState, env: &str, project: &str, size: u64) -> MasterResult<u64> {
    let (quota, reported) = state
        .store
        .project(env, project)?
        .map_or((DEFAULT_QUOTA_BYTES, 0), |p| (p.quota_bytes, p.used_bytes));
    let used = reported.max(crate::blob_gc::project_stored_bytes(state, env, project)?);
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

/// Raises (or lowers) a project's quota by `delta` bytes; never below what it uses, never
/// above the storage ceiling an operator set for the environment's owner.
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
    let ceiling = crate::blob_gc::user_ceiling(state, &env.owner)?;
    if delta > 0 && quota > i128::from(ceiling) {
        return Err(MasterError::Refused(format!(
            "cannot raise the quota of project {project:?} to {quota} bytes: the storage ceiling of {} is {ceiling} bytes, which only an operator raises (corpus-master users set {} --max-storage BYTES); nothing was changed",
            env.owner, env.owner
        )));
    }
    record.quota_bytes = quota as u64;
    state.store.put_project(&record)?;
    Ok(record)
}

/// `envs revoke ENV USER`: removes `user`'s grant on the environment; refused when the user
/// owns it or holds no grant. Sessions are untouched (every call checks grants afresh); the
/// user's open job streams in the environment are cut.
pub fn revoke_grant(
    state: &MasterState,
    uuid: &str,
    user: &str,
) -> MasterResult<EnvironmentRecord> {
    let mut env = state.existing_environment(uuid)?;
    if env.owner == user {
        return Err(MasterError::invalid(format!(
            "user {user:?} owns environment {uuid}: an owner's access cannot be revoked"
        )));
    }
    let before = env.grants.len();
    env.grants.retain(|g| g != user);
    if env.grants.len() == before {
        return Err(MasterError::not_found(
            "grant",
            format!("of environment {uuid} to user {user:?}"),
            ": see `corpus-master envs list`",
        ));
    }
    state.store.put_environment(&env)?;
    state.auth.sessions_ended();
    Ok(env)
}

/// Before `users delete`: refuses while the user owns environments unless `force`, and
/// removes the user's grants on every environment (a later user with the same id starts with
/// none). Returns the uuids of the environments the user owns.
pub fn forget_user(state: &MasterState, user: &str, force: bool) -> MasterResult<Vec<String>> {
    let environments = state.store.environments()?;
    let owned: Vec<String> = environments
        .iter()
        .filter(|e| e.owner == user)
        .map(|e| e.uuid.clone())
        .collect();
    if !owned.is_empty() && !force {
        return Err(MasterError::invalid(format!(
            "user {user:?} owns {} environment(s) ({}): delete them first (`corpus destroy`, \
             `corpus-master envs list`) or pass --force to keep them, owned by the deleted id",
            owned.len(),
            owned.join(", ")
        )));
    }
    for mut env in environments {
        if env.grants.iter().any(|g| g == user) {
            env.grants.retain(|g| g != user);
            state.store.put_environment(&env)?;
        }
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentRecord, Platform};

    fn state() -> anyhow::Result<(tempfile::TempDir, std::sync::Arc<MasterState>)> {
        crate::test_state()
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
            smep: None,
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
    fn a_quota_is_lowered_freely_and_raised_only_up_to_the_owners_ceiling() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        let mut alice = state.auth.add_user("alice", "a long password 123", false)?;
        alice.max_storage_bytes = Some(1000);
        state.store.put_user(&alice)?;
        let env = environment(&state, "alice")?;
        let mut project = ensure_project(&state, &env, "app")?;
        project.quota_bytes = 500;
        state.store.put_project(&project)?;
        assert_eq!(
            set_quota(&state, "alice", &env.uuid, "app", -100)?.quota_bytes,
            400
        );
        assert_eq!(
            set_quota(&state, "alice", &env.uuid, "app", 600)?.quota_bytes,
            1000
        );
        match set_quota(&state, "alice", &env.uuid, "app", 1) {
            Err(MasterError::Refused(m)) => assert!(
                m.contains("1001 bytes") && m.contains("ceiling of alice is 1000 bytes"),
                "{m}"
            ),
            other => panic!("expected a refusal naming the ceiling, got {other:?}"),
        }
        // 14.9 EiB, as the attacker asked.
        assert!(set_quota(&state, "alice", &env.uuid, "app", i64::MAX).is_err());
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
                conflicting_keys: Vec::new(),
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

    fn host(state: &MasterState, id: &str, slots: u32, isolation: &str) -> anyhow::Result<()> {
        state.store.put_agent(&AgentRecord {
            id: id.into(),
            status: AgentStatus::Accepted,
            csr_pem: String::new(),
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: 0,
            decided_at: None,
            grains: Some(crate::store::Grains {
                slots,
                isolation: isolation.into(),
                ..Default::default()
            }),
            last_seen: None,
            address: None,
            conflicting_keys: Vec::new(),
        })?;
        Ok(())
    }

    fn user(
        state: &MasterState,
        id: &str,
        admin: bool,
        max_envs: Option<u32>,
    ) -> anyhow::Result<()> {
        state.store.put_user(&crate::store::UserRecord {
            id: id.into(),
            password_hash: String::new(),
            admin,
            created_at: 0,
            max_envs,
            disabled: false,
            max_storage_bytes: None,
        })?;
        Ok(())
    }

    fn open(dir: &std::path::Path) -> anyhow::Result<std::sync::Arc<MasterState>> {
        crate::open(&crate::ServeOptions {
            data_dir: dir.to_owned(),
            settings: Default::default(),
        })
    }

    #[test]
    fn identities_are_unique_per_agent_stable_across_restarts_and_older_records_get_one()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        crate::init(dir.path(), &[], false)?;
        let (staging, prod, other_host, old_uuid);
        {
            let state = open(dir.path())?;
            host(&state, "node1", 10, "uid")?;
            host(&state, "node2", 10, "uid")?;
            // The default sheet, "corpus", is sheet 2.
            staging = init_env(&state, "alice", "staging", "node1", "")?;
            prod = init_env(&state, "alice", "prod", "node1", "")?;
            other_host = init_env(&state, "alice", "dev", "node2", "")?;
            assert_eq!(staging.smep, Some(20130));
            assert_eq!(prod.smep, Some(20200));
            // Numbers are per agent.
            assert_eq!(other_host.smep, Some(20120));
            // A record written before identities existed.
            let mut old = environment(&state, "alice")?;
            old.smep = None;
            state.store.put_environment(&old)?;
            old_uuid = old.uuid;
        }
        let state = open(dir.path())?;
        let identities = |state: &MasterState| -> anyhow::Result<Vec<(String, Option<u32>)>> {
            let mut all: Vec<_> = state
                .store
                .environments()?
                .into_iter()
                .map(|e| (e.uuid, e.smep))
                .collect();
            all.sort();
            Ok(all)
        };
        let after_migration = identities(&state)?;
        let get = |uuid: &str| {
            after_migration
                .iter()
                .find(|(u, _)| u == uuid)
                .and_then(|(_, s)| *s)
        };
        assert_eq!(get(&staging.uuid), Some(20130));
        assert_eq!(get(&prod.uuid), Some(20200));
        // The migrated staging environment on node1 takes the next free number there.
        assert_eq!(get(&old_uuid), Some(20330));
        drop(state);
        // Opening again changes nothing.
        let state = open(dir.path())?;
        assert_eq!(identities(&state)?, after_migration);
        // A freed number is given again only once its environment is gone.
        state.store.delete_environment(&staging.uuid)?;
        assert_eq!(
            init_env(&state, "alice", "dev", "node1", "")?.smep,
            Some(20120)
        );
        Ok(())
    }

    #[test]
    fn an_agent_out_of_environment_numbers_refuses_clearly() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        host(&state, "node1", 200, "uid")?;
        for machine in crate::smep::MACHINE_NUMBERS {
            let mut env = environment(&state, "alice")?;
            env.smep = Some(EnvIdentity::new(2, machine, Platform::Staging).smep);
            state.store.put_environment(&env)?;
        }
        match init_env(&state, "root-user", "dev", "node1", "") {
            Err(MasterError::Exhausted(m)) => {
                assert!(m.contains("no free environment number"), "{m}")
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn users_own_at_most_their_limit_of_environments() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        host(&state, "node1", 20, "uid")?;
        user(&state, "alice", false, None)?;
        user(&state, "bob", false, Some(1))?;
        user(&state, "root", true, Some(1))?;
        for _ in 0..DEFAULT_MAX_ENVS {
            init_env(&state, "alice", "dev", "node1", "")?;
        }
        let refused = |result: MasterResult<EnvironmentRecord>| match result {
            Err(MasterError::Exhausted(m)) => m,
            other => panic!("expected Exhausted, got {other:?}"),
        };
        let message = refused(init_env(&state, "alice", "dev", "node1", ""));
        assert!(
            message.contains("owns 4 environments") && message.contains("--max-envs"),
            "{message}"
        );
        init_env(&state, "bob", "dev", "node1", "")?;
        refused(init_env(&state, "bob", "dev", "node1", ""));
        // Admins are not limited.
        init_env(&state, "root", "dev", "node1", "")?;
        init_env(&state, "root", "dev", "node1", "")?;
        Ok(())
    }

    #[test]
    fn users_share_an_agent_only_where_it_isolates_environments() -> anyhow::Result<()> {
        let (_dir, state) = state()?;
        host(&state, "plain", 4, "")?;
        host(&state, "confined", 4, "landlock")?;
        init_env(&state, "alice", "staging", "plain", "")?;
        init_env(&state, "alice", "staging", "confined", "")?;
        // The same owner again is fine anywhere.
        init_env(&state, "alice", "prod", "plain", "")?;
        match init_env(&state, "bob", "staging", "plain", "") {
            Err(MasterError::Refused(m)) => {
                assert!(m.contains("other users") && m.contains("\"none\""), "{m}")
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        init_env(&state, "bob", "staging", "confined", "")?;
        Ok(())
    }

    #[test]
    fn automatic_placement_follows_agent_writes_through_the_placement_index() -> anyhow::Result<()>
    {
        let (_dir, state) = state()?;
        let connect = |id: &str| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            state.links.register(id, tx, "10.0.0.1".into(), 0);
            rx
        };
        let placed = |user: &str| init_env(&state, user, "dev", "", "").map(|e| e.agent);
        host(&state, "small", 1, "uid")?;
        host(&state, "big", 3, "uid")?;
        host(&state, "offline", 9, "uid")?;
        let _links = [connect("small"), connect("big")];
        // The most free slots among connected agents; the disconnected one is never chosen.
        assert_eq!(placed("alice")?, "big");
        assert_eq!(placed("alice")?, "big");
        // 1 free each: the first by id.
        assert_eq!(placed("alice")?, "big");
        assert_eq!(placed("alice")?, "small");
        assert!(matches!(placed("alice"), Err(MasterError::Exhausted(_))));

        // New grains through the link's compare-and-swap: seen by the next placement.
        state.store.update_agent("small", |record| {
            if let Some(grains) = record.grains.as_mut() {
                grains.slots = 2;
            }
            Ok::<_, ()>(true)
        })?;
        assert_eq!(placed("alice")?, "small");
        // An agent rejected, then deleted: never placed on, whatever its slots.
        host(&state, "big", 9, "uid")?;
        let mut rejected = state.existing_agent("big")?;
        rejected.status = AgentStatus::Rejected;
        state.store.put_agent(&rejected)?;
        assert!(matches!(placed("alice"), Err(MasterError::Exhausted(_))));
        host(&state, "big", 9, "uid")?;
        assert_eq!(placed("alice")?, "big");
        state.store.delete_agent("big")?;
        assert!(matches!(placed("alice"), Err(MasterError::Exhausted(_))));
        // Another user shares only where the agent isolates environments.
        host(&state, "plain", 2, "")?;
        let _plain = connect("plain");
        host(&state, "plain", 2, "none")?;
        assert_eq!(placed("alice")?, "plain");
        assert!(matches!(placed("bob"), Err(MasterError::Exhausted(_))));
        Ok(())
    }
}
