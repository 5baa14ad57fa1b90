//! Typed records over the [`Db`] trait: agents, users, sessions, enrollment tokens. The rest of
//! the master talks to this, never to the backend.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("corrupt {what} record {key:?}: {source}")]
    Corrupt {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where an agent stands with the master, as Salt's key states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Pending,
    Accepted,
    Rejected,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Pending => "pending",
            AgentStatus::Accepted => "accepted",
            AgentStatus::Rejected => "rejected",
        }
    }
}

/// What the agent reports about its machine in its Hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grains {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub ip_addresses: Vec<String>,
    pub slots: u32,
    pub guest_type: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub status: AgentStatus,
    /// The request the agent enrolled with; its public key pins the agent's identity, so a
    /// second agent claiming the same id with another key is refused.
    pub csr_pem: String,
    /// The certificate issued on acceptance, handed out on the agent's next poll.
    pub certificate_pem: Option<String>,
    /// sha256 of the issued certificate (DER): only this exact certificate may attach, so a
    /// deleted and re-enrolled agent's old certificate is worthless.
    pub fingerprint: Option<String>,
    pub enrolled_at: i64,
    pub decided_at: Option<i64>,
    /// Last grains received; kept so `listhosts` can show disconnected hosts.
    pub grains: Option<Grains>,
    pub last_seen: Option<i64>,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    /// argon2id PHC string; the password itself is never stored.
    pub password_hash: String,
    pub admin: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenRecord {
    pub created_at: i64,
    pub expires_at: i64,
}

/// The master's persistent state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Db>,
}

impl Store {
    pub fn new(db: Arc<dyn Db>) -> Self {
        Store { db }
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: Tree,
        what: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.db.get(tree, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(what, key, &bytes).map(Some),
        }
    }

    fn put<T: Serialize>(&self, tree: Tree, key: &str, value: &T) -> Result<(), StoreError> {
        self.db.put(tree, key.as_bytes(), &encode(value))?;
        Ok(())
    }

    fn all<T: DeserializeOwned>(
        &self,
        tree: Tree,
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        self.db
            .scan(tree, b"")?
            .into_iter()
            .map(|(k, v)| decode(what, &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.get(Tree::Agents, "agent", id)
    }

    pub fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.put(Tree::Agents, &agent.id, agent)
    }

    pub fn delete_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match self.db.delete(Tree::Agents, id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode("agent", id, &bytes).map(Some),
        }
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.all(Tree::Agents, "agent")
    }

    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get(Tree::Users, "user", id)
    }

    /// Creates the user; false when the id is taken (nothing is overwritten).
    pub fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        Ok(self
            .db
            .compare_and_swap(Tree::Users, user.id.as_bytes(), None, Some(&encode(user)))?)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.all(Tree::Users, "user")
    }

    /// Sessions and enrollment tokens are keyed by the sha256 of the secret, never the secret.
    pub fn put_session(&self, token_hash: &str, session: &SessionRecord) -> Result<(), StoreError> {
        self.put(Tree::Sessions, token_hash, session)
    }

    pub fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.get(Tree::Sessions, "session", token_hash)
    }

    pub fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.db.delete(Tree::Sessions, token_hash.as_bytes())?;
        Ok(())
    }

    pub fn put_enrollment_token(
        &self,
        token_hash: &str,
        token: &EnrollmentTokenRecord,
    ) -> Result<(), StoreError> {
        self.put(Tree::EnrollmentTokens, token_hash, token)
    }

    /// Removes the token atomically and returns it: of two agents racing with one token, only
    /// one gets it back.
    pub fn take_enrollment_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError> {
        let key = token_hash.as_bytes();
        let Some(current) = self.db.get(Tree::EnrollmentTokens, key)? else {
            return Ok(None);
        };
        if !self
            .db
            .compare_and_swap(Tree::EnrollmentTokens, key, Some(&current), None)?
        {
            return Ok(None);
        }
        decode("enrollment token", token_hash, &current).map(Some)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        what,
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SledDb;

    #[test]
    fn a_token_is_taken_once_and_users_are_never_overwritten() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::new(SledDb::open(dir.path())?);
        let token = EnrollmentTokenRecord {
            created_at: 1,
            expires_at: 2,
        };
        store.put_enrollment_token("h", &token)?;
        assert_eq!(store.take_enrollment_token("h")?, Some(token));
        assert_eq!(store.take_enrollment_token("h")?, None);

        let alice = UserRecord {
            id: "alice".into(),
            password_hash: "x".into(),
            admin: false,
            created_at: 0,
        };
        assert!(store.create_user(&alice)?);
        let other = UserRecord {
            password_hash: "y".into(),
            ..alice.clone()
        };
        assert!(!store.create_user(&other)?);
        assert_eq!(store.user("alice")?, Some(alice));
        Ok(())
    }
}
