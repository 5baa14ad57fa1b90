//! Who hosts what: an index of the environments by agent, built in one pass over them, so
//! placement (`init_env`) and `corpus listhosts` look each agent up instead of scanning every
//! environment per agent (10,000 agents and 1,000 environments: one pass of each, not ten
//! million comparisons). Also what a user may see of the hosts.

use std::collections::{HashMap, HashSet};

use crate::MasterState;
use crate::error::MasterResult;
use crate::store::{AgentRecord, AgentStatus, EnvironmentRecord};

/// The environments of one agent, as placement and listings need them.
#[derive(Debug, Default)]
struct Hosted {
    count: u32,
    owners: HashSet<String>,
    /// Owners and the users they shared an environment with.
    users: HashSet<String>,
}

/// Environments by agent.
#[derive(Debug, Default)]
pub struct HostedIndex {
    by_agent: HashMap<String, Hosted>,
}

impl HostedIndex {
    pub fn new(environments: &[EnvironmentRecord]) -> HostedIndex {
        let mut by_agent: HashMap<String, Hosted> = HashMap::new();
        for env in environments {
            let hosted = by_agent.entry(env.agent.clone()).or_default();
            hosted.count += 1;
            hosted.owners.insert(env.owner.clone());
            hosted.users.insert(env.owner.clone());
            hosted.users.extend(env.grants.iter().cloned());
        }
        HostedIndex { by_agent }
    }

    /// How many environments `agent` hosts.
    pub fn count(&self, agent: &str) -> u32 {
        self.by_agent.get(agent).map_or(0, |h| h.count)
    }

    /// Whether `agent` hosts an environment owned by someone else than `user`.
    pub fn hosts_others_than(&self, agent: &str, user: &str) -> bool {
        self.by_agent
            .get(agent)
            .is_some_and(|h| h.owners.iter().any(|o| o != user))
    }

    /// Whether `agent` hosts an environment `user` owns or was granted.
    pub fn serves(&self, agent: &str, user: &str) -> bool {
        self.by_agent
            .get(agent)
            .is_some_and(|h| h.users.contains(user))
    }

    /// Slots of `agent` not taken by an environment.
    pub fn free_slots(&self, agent: &AgentRecord) -> u32 {
        let slots = agent.grains.as_ref().map_or(0, |g| g.slots);
        slots.saturating_sub(self.count(&agent.id))
    }
}

/// The agent's `isolation` grain; an agent that reports none (older agents) isolates nothing.
pub fn isolation_of(agent: &AgentRecord) -> &str {
    match agent.grains.as_ref().map(|g| g.isolation.as_str()) {
        Some("") | None => "none",
        Some(isolation) => isolation,
    }
}

/// Whether `user` may get an environment on `agent`: always when every environment there is
/// the user's own, otherwise only when the agent confines each environment to its own user.
pub fn shares_safely(agent: &AgentRecord, user: &str, index: &HostedIndex) -> bool {
    !index.hosts_others_than(&agent.id, user) || matches!(isolation_of(agent), "landlock" | "uid")
}

/// An accepted agent as `corpus listhosts` shows it to one user.
#[derive(Debug)]
pub struct HostView {
    pub agent: AgentRecord,
    /// Environments it hosts.
    pub used: u32,
    /// Whether the user may see its addresses and every grain: admins, and users with an
    /// environment (owned or granted) there. Others see only what choosing a host needs
    /// (slots, guest type, isolation, os, cpus, memory).
    pub full: bool,
}

/// The accepted agents `user` may see: every one for an admin; for anyone else, the hosts of
/// their own or granted environments, and the connected hosts where they could place a new one.
pub fn visible_hosts(state: &MasterState, user: &str) -> MasterResult<Vec<HostView>> {
    let admin = state.store.user(user)?.is_some_and(|u| u.admin);
    let index = HostedIndex::new(&state.store.environments()?);
    Ok(state
        .store
        .agents()?
        .into_iter()
        .filter(|a| a.status == AgentStatus::Accepted)
        .filter_map(|agent| {
            let full = admin || index.serves(&agent.id, user);
            let placeable = state.links.is_connected(&agent.id)
                && index.free_slots(&agent) > 0
                && shares_safely(&agent, user, &index);
            (full || placeable).then(|| HostView {
                used: index.count(&agent.id),
                full,
                agent,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(agent: &str, owner: &str, grants: &[&str]) -> EnvironmentRecord {
        EnvironmentRecord {
            uuid: format!("{agent}-{owner}"),
            platform: crate::store::Platform::Dev,
            mode: crate::store::Mode::Editable,
            agent: agent.into(),
            owner: owner.into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            defaults: serde_json::Value::Null,
            created_at: 0,
            smep: None,
        }
    }

    #[test]
    fn the_index_counts_owners_and_grants_per_agent() {
        let index = HostedIndex::new(&[
            env("a", "alice", &[]),
            env("a", "bob", &["carol"]),
            env("b", "alice", &[]),
        ]);
        assert_eq!(index.count("a"), 2);
        assert_eq!(index.count("b"), 1);
        assert_eq!(index.count("c"), 0);
        assert!(index.hosts_others_than("a", "alice"));
        assert!(!index.hosts_others_than("b", "alice"));
        assert!(index.serves("a", "carol"));
        assert!(!index.serves("b", "carol"));
        assert!(!index.serves("c", "alice"));
    }

    fn host(state: &MasterState, id: &str, slots: u32, connected: bool) -> anyhow::Result<()> {
        state.store.put_agent(&AgentRecord {
            id: id.into(),
            status: AgentStatus::Accepted,
            csr_pem: String::new(),
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: 0,
            decided_at: None,
            grains: Some(crate::store::Grains {
                id: id.into(),
                hostname: format!("{id}.internal"),
                ip_addresses: vec!["10.1.2.3".into()],
                root: "/srv/corpus".into(),
                slots,
                guest_type: "dir".into(),
                isolation: "none".into(),
                ..Default::default()
            }),
            last_seen: None,
            address: Some("10.1.2.3".into()),
            conflicting_keys: Vec::new(),
        })?;
        if connected {
            // Registered is connected, whether or not anyone reads the link.
            let (tx, _rx) = tokio::sync::mpsc::channel(1);
            state.links.register(id, tx, "10.1.2.3".into(), 0);
        }
        Ok(())
    }

    fn user(state: &MasterState, id: &str, admin: bool) -> anyhow::Result<()> {
        state.store.put_user(&crate::store::UserRecord {
            id: id.into(),
            password_hash: String::new(),
            admin,
            created_at: 0,
            max_envs: None,
            disabled: false,
            max_storage_bytes: None,
        })?;
        Ok(())
    }

    #[test]
    fn users_see_their_hosts_and_free_ones_without_addresses_admins_see_all() -> anyhow::Result<()>
    {
        let (_dir, state) = crate::test_state()?;
        user(&state, "root", true)?;
        user(&state, "alice", false)?;
        user(&state, "bob", false)?;
        user(&state, "carol", false)?;
        // bob's host, full, hosting a bob environment shared with carol.
        host(&state, "bobs", 1, true)?;
        state
            .store
            .put_environment(&env("bobs", "bob", &["carol"]))?;
        // A free host (isolation none) already hosting one of bob's: not for alice.
        host(&state, "shared", 4, true)?;
        state.store.put_environment(&env("shared", "bob", &[]))?;
        // A free, empty, connected host: anyone may place there.
        host(&state, "free", 2, true)?;
        // Disconnected and empty: nothing to place on.
        host(&state, "away", 2, false)?;

        let ids = |user: &str| -> anyhow::Result<Vec<(String, bool)>> {
            let mut ids: Vec<_> = visible_hosts(&state, user)?
                .into_iter()
                .map(|v| (v.agent.id, v.full))
                .collect();
            ids.sort();
            Ok(ids)
        };
        let both = |id: &str, full: bool| (id.to_owned(), full);
        assert_eq!(
            ids("root")?,
            vec![
                both("away", true),
                both("bobs", true),
                both("free", true),
                both("shared", true)
            ]
        );
        assert_eq!(ids("alice")?, vec![both("free", false)]);
        assert_eq!(
            ids("bob")?,
            vec![
                both("bobs", true),
                both("free", false),
                both("shared", true)
            ]
        );
        assert_eq!(ids("carol")?, vec![both("bobs", true), both("free", false)]);
        Ok(())
    }
}
