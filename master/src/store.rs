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
pub use corpus_proto::grains::Grains;

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

/// dev, staging or prod: the RFC's platform types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Dev,
    Staging,
    Prod,
}

/// How a project is deployed: editable (dev), cooking (staging), final (prod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Editable,
    Cooking,
    Final,
}

impl Platform {
    pub fn parse(text: &str) -> Option<Platform> {
        match text {
            "dev" => Some(Platform::Dev),
            "staging" => Some(Platform::Staging),
            "prod" => Some(Platform::Prod),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Dev => "dev",
            Platform::Staging => "staging",
            Platform::Prod => "prod",
        }
    }

    /// The mode a platform deploys in unless the environment overrides it.
    pub fn default_mode(self) -> Mode {
        match self {
            Platform::Dev => Mode::Editable,
            Platform::Staging => Mode::Cooking,
            Platform::Prod => Mode::Final,
        }
    }
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "editable" => Some(Mode::Editable),
            "cooking" => Some(Mode::Cooking),
            "final" => Some(Mode::Final),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Editable => "editable",
            Mode::Cooking => "cooking",
            Mode::Final => "final",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    pub uuid: String,
    pub platform: Platform,
    pub mode: Mode,
    /// The agent hosting the environment; only it receives the environment's jobs and blobs.
    pub agent: String,
    pub owner: String,
    /// Users the owner shared the environment with.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Project settings every project of this environment starts from (between
    /// `.salt/PILLAR.sample` and the pushed pillar).
    #[serde(default)]
    pub defaults: serde_json::Value,
    pub created_at: i64,
}

/// Default storage quota of a project: 5 GB, as the RFC fixes it.
pub const DEFAULT_QUOTA_BYTES: u64 = 5_000_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub env_uuid: String,
    pub name: String,
    pub created_at: i64,
    pub quota_bytes: u64,
    /// Disk used by the project on its agent, as last reported.
    pub used_bytes: u64,
    /// The deployment `run/` points at, as last reported.
    pub live_deploy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Init,
    Deploy,
    Rollback,
    Destroy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Success,
    Failed,
    RolledBack,
    Refused,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Success => "success",
            JobState::Failed => "failed",
            JobState::RolledBack => "rolled_back",
            JobState::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    pub env_uuid: String,
    pub project: String,
    pub mode: Mode,
    pub deploy_id: String,
    pub requested_by: String,
    pub agent: String,
    pub commit: String,
    pub created_at: i64,
    /// Creation time in milliseconds: orders deployments made within the same second.
    #[serde(default)]
    pub created_ms: i64,
    pub state: JobState,
    pub failed_step: String,
    pub failed_state: String,
    pub message: String,
    pub finished_at: Option<i64>,
    pub source_blob: Option<String>,
    pub release_blob: Option<String>,
    pub target_deploy_id: Option<String>,
    /// The rendered plans, `common` and pillar the job carried: a later rollback of this
    /// deployment runs its stop/restore/start phases.
    #[serde(default)]
    pub plan: serde_json::Value,
    #[serde(default)]
    pub common: serde_json::Value,
    #[serde(default)]
    pub pillar: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The cooking deploy id that produced it.
    pub id: String,
    pub project: String,
    /// The staging environment it was cooked in.
    pub env_uuid: String,
    pub owner: String,
    pub digest: String,
    pub size: u64,
    pub commit: String,
    pub created_at: i64,
    pub manifest: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub sequence: u64,
    pub step: String,
    pub state_id: String,
    pub result: String,
    pub changes: serde_json::Value,
    pub comment: String,
    pub duration_ms: u64,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PillarRevision {
    pub env_uuid: String,
    pub project: String,
    pub job_id: String,
    pub created_at: i64,
    /// The pushed files, name -> text. Never logged.
    pub files: std::collections::BTreeMap<String, String>,
}

pub fn project_key(env: &str, project: &str) -> String {
    format!("{env}/{project}")
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

    pub fn delete_environment(&self, uuid: &str) -> Result<(), StoreError> {
        self.db.delete(Tree::Environments, uuid.as_bytes())?;
        for (key, _) in self
            .db
            .scan(Tree::Projects, format!("{uuid}/").as_bytes())?
        {
            self.db.delete(Tree::Projects, &key)?;
        }
        Ok(())
    }

    pub fn project(&self, env: &str, name: &str) -> Result<Option<ProjectRecord>, StoreError> {
        self.get(Tree::Projects, "project", &project_key(env, name))
    }

    pub fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        self.put(
            Tree::Projects,
            &project_key(&project.env_uuid, &project.name),
            project,
        )
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

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.get(Tree::Jobs, "job", id)
    }

    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.put(Tree::Jobs, &job.id, job)
    }

    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.all(Tree::Jobs, "job")
    }

    pub fn put_event(&self, job: &str, event: &EventRecord) -> Result<(), StoreError> {
        self.put(
            Tree::Events,
            &format!("{job}/{:020}", event.sequence),
            event,
        )
    }

    pub fn events(&self, job: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.db
            .scan(Tree::Events, format!("{job}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("event", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    pub fn put_release(&self, release: &ReleaseRecord) -> Result<(), StoreError> {
        self.put(
            Tree::Releases,
            &format!("{}/{}", release.project, release.id),
            release,
        )
    }

    /// Releases of a project, oldest first (ids start with their UTC time).
    pub fn releases(&self, project: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.db
            .scan(Tree::Releases, format!("{project}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("release", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    pub fn grant_blob(&self, env: &str, digest: &str) -> Result<(), StoreError> {
        self.db
            .put(Tree::BlobGrants, format!("{env}/{digest}").as_bytes(), b"1")?;
        Ok(())
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

    pub fn put_pillar_revision(&self, revision: &PillarRevision) -> Result<(), StoreError> {
        let key = format!(
            "{}/{}/{}",
            revision.env_uuid, revision.project, revision.job_id
        );
        self.put(Tree::PillarRevisions, &key, revision)
    }
}
