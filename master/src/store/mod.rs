//! Typed records over the [`Db`] trait. The rest of the master talks to this, never to the
//! backend; a logical operation that writes several records is one [`Db::batch`].
//!
//! Calls block on the disk: async code runs them through [`crate::MasterState::blocking`].

mod agents;
mod jobs;
mod nodes;
mod retention;
mod runs;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{Db, DbError, Tree, Write};
pub use crate::records::*;
pub use agents::{Admission, AgentUpdate, PlacementHost};
pub use jobs::ProjectChange;
pub use nodes::NodeRecord;
pub use runs::{AgentReturn, ReturnStatus, RunRecord, RunStatus};

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

/// The master's persistent state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Db>,
    /// What placement needs of the accepted agents (`agents.rs`).
    placement: Arc<agents::PlacementIndex>,
}

impl Store {
    /// A store over `db` as it is, without migrating: for tests and tools.
    pub fn new(db: Arc<dyn Db>) -> Self {
        Store {
            db,
            placement: Default::default(),
        }
    }

    /// The store over `db`, with records of older formats migrated once.
    pub fn open(db: Arc<dyn Db>) -> Result<Self, StoreError> {
        let store = Store::new(db);
        store.migrate_jobs()?;
        Ok(store)
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
        self.put(Tree::Agents, &agent.id, agent)?;
        self.refresh_placement(&agent.id);
        Ok(())
    }

    pub fn delete_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let deleted = self.db.delete(Tree::Agents, id.as_bytes());
        self.refresh_placement(id);
        match deleted? {
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

    /// Replaces an existing user's record (limits changed by an operator).
    pub fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.put(Tree::Users, &user.id, user)
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

    /// How many sessions are stored (expired ones too, until the purge).
    pub fn session_count(&self) -> Result<usize, StoreError> {
        Ok(self.db.scan(Tree::Sessions, b"")?.len())
    }

    pub fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.db.delete(Tree::Sessions, token_hash.as_bytes())?;
        Ok(())
    }

    /// Every session with the hash of its token (the key), for `sessions list|revoke`.
    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>, StoreError> {
        self.db
            .scan(Tree::Sessions, b"")?
            .into_iter()
            .map(|(key, value)| {
                // The key is a token's hash: never quoted in an error.
                let session: SessionRecord = decode("session", "(hash)", &value)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), session))
            })
            .collect()
    }

    /// Removes the sessions with these token hashes in one batch; returns how many.
    pub fn delete_sessions(&self, token_hashes: &[String]) -> Result<usize, StoreError> {
        if token_hashes.is_empty() {
            return Ok(0);
        }
        let writes = token_hashes
            .iter()
            .map(|hash| Write::delete(Tree::Sessions, hash.as_bytes().to_vec()))
            .collect();
        self.db.batch(writes)?;
        Ok(token_hashes.len())
    }

    /// Removes a user's record; the removed record, None when there was none.
    pub fn delete_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.db.delete(Tree::Users, id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode("user", id, &bytes).map(Some),
        }
    }

    pub fn put_enrollment_token(
        &self,
        token_hash: &str,
        token: &EnrollmentTokenRecord,
    ) -> Result<(), StoreError> {
        self.put(Tree::EnrollmentTokens, token_hash, token)
    }

    pub fn enrollment_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError> {
        self.get(Tree::EnrollmentTokens, "enrollment token", token_hash)
    }

    /// Spends the enrollment token and stores the agent it admits, in one batch; false (and
    /// nothing written) when the token is gone. Callers serialise enrollments, so the token
    /// cannot be spent by another between the check and the batch.
    pub fn put_agent_spending_token(
        &self,
        token_hash: &str,
        agent: &AgentRecord,
    ) -> Result<bool, StoreError> {
        if self
            .db
            .get(Tree::EnrollmentTokens, token_hash.as_bytes())?
            .is_none()
        {
            return Ok(false);
        }
        self.db.batch(vec![
            Write::delete(Tree::EnrollmentTokens, token_hash),
            Write::put(Tree::Agents, agent.id.as_str(), encode(agent)),
        ])?;
        self.refresh_placement(&agent.id);
        Ok(true)
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

impl Store {
    pub fn environment(&self, uuid: &str) -> Result<Option<EnvironmentRecord>, StoreError> {
        self.get(Tree::Environments, "environment", uuid)
    }

    pub fn put_environment(&self, env: &EnvironmentRecord) -> Result<(), StoreError> {
        self.put(Tree::Environments, &env.uuid, env)
    }

    pub fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.all(Tree::Environments, "environment")
    }

    /// The writes that remove an environment and all its projects.
    fn environment_deletion_writes(&self, uuid: &str) -> Result<Vec<Write>, StoreError> {
        let mut writes = vec![Write::delete(Tree::Environments, uuid)];
        for (key, _) in self
            .db
            .scan(Tree::Projects, format!("{uuid}/").as_bytes())?
        {
            writes.push(Write::delete(Tree::Projects, key));
        }
        Ok(writes)
    }

    /// Removes the environment and its projects in one batch.
    pub fn delete_environment(&self, uuid: &str) -> Result<(), StoreError> {
        let writes = self.environment_deletion_writes(uuid)?;
        Ok(self.db.batch(writes)?)
    }

    pub fn project(&self, env: &str, name: &str) -> Result<Option<ProjectRecord>, StoreError> {
        self.get(Tree::Projects, "project", &project_key(env, name))
    }

    pub fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        Ok(self.db.batch(vec![project_write(project)])?)
    }

    pub fn delete_project(&self, env: &str, name: &str) -> Result<(), StoreError> {
        self.db
            .delete(Tree::Projects, project_key(env, name).as_bytes())?;
        Ok(())
    }

    pub fn projects(&self, env: &str) -> Result<Vec<ProjectRecord>, StoreError> {
        self.db
            .scan(Tree::Projects, format!("{env}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("project", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    /// Stores an event unless one with its sequence is already stored (the agent resends
    /// events until they are acknowledged). True when it was new.
    pub fn record_event(&self, job: &str, event: &EventRecord) -> Result<bool, StoreError> {
        let key = format!("{job}/{:020}", event.sequence);
        Ok(self
            .db
            .compare_and_swap(Tree::Events, key.as_bytes(), None, Some(&encode(event)))?)
    }

    /// How many of a job's events are stored from sequence 1 on without a gap.
    pub fn events_stored(&self, job: &str) -> Result<u64, StoreError> {
        let prefix = format!("{job}/");
        let mut stored = 0u64;
        for (key, _) in self.db.scan(Tree::Events, prefix.as_bytes())? {
            let sequence = String::from_utf8_lossy(&key[prefix.len()..])
                .parse::<u64>()
                .unwrap_or(0);
            // In key order (zero-padded): the first gap ends the run.
            if sequence == stored + 1 {
                stored = sequence;
            } else if sequence > stored + 1 {
                break;
            }
        }
        Ok(stored)
    }

    pub fn events(&self, job: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.db
            .scan(Tree::Events, format!("{job}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("event", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    /// Records a cooked release: the release, the cooking environment's right to fetch it
    /// again, and the job that produced it, in one batch.
    pub fn record_release(
        &self,
        release: &ReleaseRecord,
        job: &JobRecord,
    ) -> Result<(), StoreError> {
        let key = format!("{}/{}", release.project, release.id);
        let mut writes = vec![
            Write::put(Tree::Releases, key, encode(release)),
            grant_write(&release.env_uuid, &release.digest),
        ];
        writes.extend(jobs::summary_writes(job));
        Ok(self.db.batch(writes)?)
    }

    /// Releases of a project, oldest first (ids start with their UTC time).
    pub fn releases(&self, project: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.db
            .scan(Tree::Releases, format!("{project}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("release", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    pub fn blob_granted(&self, env: &str, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get(Tree::BlobGrants, format!("{env}/{digest}").as_bytes())?
            .is_some())
    }

    /// The pillar revisions pushed for a project, newest last.
    pub fn pillar_revisions(
        &self,
        env: &str,
        project: &str,
    ) -> Result<Vec<PillarRevision>, StoreError> {
        let mut revisions: Vec<PillarRevision> = self
            .db
            .scan(
                Tree::PillarRevisions,
                format!("{env}/{project}/").as_bytes(),
            )?
            .into_iter()
            .map(|(k, v)| decode("pillar revision", &String::from_utf8_lossy(&k), &v))
            .collect::<Result<_, _>>()?;
        revisions.sort_by_key(|r| r.created_at);
        Ok(revisions)
    }
}

fn project_write(project: &ProjectRecord) -> Write {
    Write::put(
        Tree::Projects,
        project_key(&project.env_uuid, &project.name),
        encode(project),
    )
}

/// Lets environment `env` fetch blob `digest`.
fn grant_write(env: &str, digest: &str) -> Write {
    Write::put(Tree::BlobGrants, format!("{env}/{digest}"), b"1".to_vec())
}

fn pillar_revision_write(revision: &PillarRevision) -> Write {
    let key = format!(
        "{}/{}/{}",
        revision.env_uuid, revision.project, revision.job_id
    );
    Write::put(Tree::PillarRevisions, key, encode(revision))
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
            agent_id: None,
        };
        store.put_enrollment_token("h", &token)?;
        assert_eq!(store.take_enrollment_token("h")?, Some(token));
        assert_eq!(store.take_enrollment_token("h")?, None);

        let alice = UserRecord {
            id: "alice".into(),
            password_hash: "x".into(),
            admin: false,
            created_at: 0,
            max_envs: None,
            disabled: false,
            max_storage_bytes: None,
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
