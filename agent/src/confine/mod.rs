//! Tenant isolation on the agent (issue 8): each environment's project phases run as the
//! environment's own system user, in a child process that cannot read other environments,
//! the agent's state dir or anything outside its root but the system's read-only trees.
//!
//! The master assigns the identity (`common.uid`, `gid`, `user`, `group`, `ports`, `smep`);
//! a job without `common.uid` runs unconfined, as before. Parts: `accounts.rs` (the system user
//! and group, created before the first deploy, removed with the environment), `ownership.rs`
//! (owners and modes of the environment's directories), `plan_check.rs` (what a confined plan
//! may do, checked again before the child starts), `sandbox.rs` (the child's privilege drop and
//! Landlock ruleset), `phase.rs` (the child process and its JSON-lines pipe) and `reaper.rs`
//! (no process of an environment outlives its job or the agent).

mod accounts;
mod ownership;
mod phase;
mod plan_check;
mod reaper;
mod sandbox;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use accounts::{ensure_account, remove_account};
pub use ownership::{secure_environment, secure_project};
pub use phase::{
    CHILD_SUBCOMMAND, PhaseRequest, child_main, own_session_dying_with_agent, run_confined,
};
pub use plan_check::{PlanRefusal, check_plan, is_own_account};
pub use reaper::{processes_in_session, processes_of, stop_environment_processes, stop_processes};
pub use sandbox::{Isolation, detect_isolation};

/// Why isolating an environment failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `common` carries an identity the contract does not allow.
    #[error(
        "the job's identity is invalid: {0}; the master must send common.uid, gid, user, group and smep as one environment's"
    )]
    InvalidIdentity(String),
    /// A UID, GID or name of the environment is held by an unrelated account.
    #[error(
        "{what} {value} is already held by {holder}: free it or move the environment to another number"
    )]
    Conflict {
        what: &'static str,
        value: String,
        holder: String,
    },
    /// A directory above the environment root does not let other users pass.
    #[error("the environment's user {user} cannot pass through {} (mode {mode:o}): the agent's --root and every directory above it must be traversable by others (chmod o+x)", dir.display())]
    Unreachable {
        user: String,
        dir: PathBuf,
        mode: u32,
    },
    /// A system command (`useradd`, `groupadd`, ...) failed.
    #[error("cannot run `{command}`: {message}")]
    Command { command: String, message: String },
    /// A filesystem operation on `path` failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Dropping privileges or applying the Landlock ruleset failed (in the child).
    #[error("cannot confine the phase: {0}")]
    Sandbox(String),
    /// The confined child failed to start, broke the protocol or died.
    #[error("the confined phase process {0}")]
    Child(String),
}

/// Attaches an operation and a path to an `io::Result`.
pub(crate) fn io_at<T>(
    r: std::io::Result<T>,
    op: &'static str,
    path: &Path,
) -> Result<T, ConfineError> {
    r.map_err(|source| ConfineError::Io {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// One environment's system identity, as the master assigns it (r3 isolation contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The environment's SMEP base: uid = gid = smep, ports smep..smep+9.
    pub smep: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    #[serde(default)]
    pub ports: Vec<u32>,
}

/// The lowest SMEP the contract produces (S=1, M=01, E=0): anything lower is a system account.
const MIN_SMEP: u32 = 10_100;

impl Identity {
    /// The identity in `common`, or `None` when the master sent none (old master, unit tests):
    /// such a job runs unconfined.
    pub fn from_common(common: &Value) -> Result<Option<Identity>, ConfineError> {
        if common.get("uid").is_none_or(Value::is_null) {
            return Ok(None);
        }
        let number = |key: &str| -> Result<u32, ConfineError> {
            common
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ConfineError::InvalidIdentity(format!("common.{key} is not a number"))
                })
        };
        let text = |key: &str| -> Result<String, ConfineError> {
            common
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ConfineError::InvalidIdentity(format!("common.{key} is not a string"))
                })
        };
        let ports = match common.get("ports") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|p| p.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    ConfineError::InvalidIdentity("common.ports holds a non-number".into())
                })?,
            _ => Vec::new(),
        };
        let identity = Identity {
            smep: number("smep")?,
            uid: number("uid")?,
            gid: number("gid")?,
            user: text("user")?,
            group: text("group")?,
            ports,
        };
        identity.validate()?;
        Ok(Some(identity))
    }

    /// The contract's shape: uid = gid = smep, names `corpus-<smep>`, never a system account.
    pub fn validate(&self) -> Result<(), ConfineError> {
        let bad = |m: String| Err(ConfineError::InvalidIdentity(m));
        if self.smep < MIN_SMEP {
            return bad(format!("smep {} is below {MIN_SMEP}", self.smep));
        }
        if self.uid != self.smep || self.gid != self.smep {
            return bad(format!(
                "uid {} and gid {} must both equal smep {}",
                self.uid, self.gid, self.smep
            ));
        }
        let name = self.account_name();
        if self.user != name || self.group != name {
            return bad(format!(
                "user {:?} and group {:?} must both be {name:?}",
                self.user, self.group
            ));
        }
        Ok(())
    }

    /// `corpus-<smep>`: the user's and the group's name.
    pub fn account_name(&self) -> String {
        format!("corpus-{}", self.smep)
    }

    /// Service units this environment may drive start with this (`corpus-<smep>-`).
    pub fn service_prefix(&self) -> String {
        format!("corpus-{}-", self.smep)
    }
}

/// `ENV_ROOT/.corpus/identity.json`: the identity recorded at the first confined job, root-only,
/// so the agent knows the environment's UID at start (to stop its leftover processes) and at
/// destroy (to remove its account).
pub fn identity_file(env_root: &Path) -> PathBuf {
    env_root.join(".corpus").join("identity.json")
}

/// The identity recorded in an environment root, if any.
pub fn recorded_identity(env_root: &Path) -> Option<Identity> {
    let text = std::fs::read(identity_file(env_root)).ok()?;
    serde_json::from_slice::<Identity>(&text)
        .ok()
        .filter(|id| id.validate().is_ok())
}

/// Every environment under the agent's root that recorded an identity.
pub fn recorded_environments(root: &Path) -> Vec<(PathBuf, Identity)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, Identity)> = entries
        .flatten()
        .filter_map(|e| recorded_identity(&e.path()).map(|id| (e.path(), id)))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Prepares an environment for a confined job: its account (refusing a UID or name held by an
/// unrelated account, changing nothing then), its root's owners and modes, its identity record.
pub fn prepare_environment(env_root: &Path, identity: &Identity) -> Result<(), ConfineError> {
    ensure_account(identity, env_root)?;
    secure_environment(env_root, identity)
}

/// `corpus destroy ENV`: stops what still runs under the environment's UID and removes its
/// account. Called before the environment's directory goes; a root without a recorded identity
/// (an unconfined environment) is left alone.
pub fn forget_environment(env_root: &Path) -> Result<(), ConfineError> {
    let Some(identity) = recorded_identity(env_root) else {
        return Ok(());
    };
    stop_environment_processes(&identity, std::time::Duration::from_secs(2));
    remove_account(&identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(smep: u32) -> Value {
        json!({"uid": smep, "gid": smep, "user": format!("corpus-{smep}"),
               "group": format!("corpus-{smep}"), "smep": smep,
               "ports": (smep..smep + 10).collect::<Vec<_>>()})
    }

    #[test]
    fn a_common_without_uid_runs_unconfined() {
        assert_eq!(Identity::from_common(&json!({"env": "x"})).ok(), Some(None));
        assert_eq!(Identity::from_common(&Value::Null).ok(), Some(None));
    }

    #[test]
    fn the_contracts_identity_is_read_and_a_deviating_one_refused() {
        let id = Identity::from_common(&common(52320)).ok().flatten();
        assert_eq!(id.as_ref().map(|i| i.user.as_str()), Some("corpus-52320"));
        assert_eq!(id.map(|i| i.ports.len()), Some(10));
        let mut root_uid = common(52320);
        root_uid["uid"] = json!(0);
        assert!(Identity::from_common(&root_uid).is_err());
        let mut other_name = common(52320);
        other_name["user"] = json!("root");
        assert!(Identity::from_common(&other_name).is_err());
        assert!(Identity::from_common(&common(500)).is_err());
    }
}
