//! The master's records: what it knows about agents, users, environments, projects, jobs and
//! releases. Plain serde data, stored as JSON by [`crate::store::Store`]; no storage, no wire.

use serde::{Deserialize, Serialize};

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
    /// Where the agent last connected from; for a pending agent, where it enrolled from.
    pub address: Option<String>,
    /// Key fingerprints of other enrollments that claimed this id while it was pending (see
    /// `enroll.rs`): the operator must then name the key to accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicting_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    /// argon2id PHC string; the password itself is never stored.
    pub password_hash: String,
    pub admin: bool,
    pub created_at: i64,
    /// How many environments the user may own; None is [`DEFAULT_MAX_ENVS`]. Admins are not
    /// limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_envs: Option<u32>,
    /// `users disable`: the user cannot log in and holds no sessions until enabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Most bytes of archives the master stores for the environments the user owns; None is
    /// [`DEFAULT_USER_STORAGE_BYTES`]. Only operators set it (`users set --max-storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_storage_bytes: Option<u64>,
}

/// The storage ceiling of a user unless an operator says otherwise: 20 GB, four projects at
/// the default quota.
pub const DEFAULT_USER_STORAGE_BYTES: u64 = 20_000_000_000;

/// Environments a user may own unless an operator says otherwise (`users set --max-envs`).
pub const DEFAULT_MAX_ENVS: u32 = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub expires_at: i64,
    /// When the login happened (0 for sessions older than this field).
    #[serde(default)]
    pub created_at: i64,
    /// The address the login came from ("" when unknown).
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenRecord {
    pub created_at: i64,
    pub expires_at: i64,
    /// A token made for one agent (`nodes attach`) admits only that id; None admits any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
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
    /// The SMEP base of the environment's identity on its agent (uid, gid, ports; see
    /// `smep.rs`). Given at creation, or at the first open of a master that predates it, and
    /// never changed while the environment exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smep: Option<u32>,
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
}

/// The rendered plans, `common` and pillar a job carried, stored apart from its summary: a
/// later rollback of the deployment runs its stop/restore/start phases, and a destroy stops
/// each project with them. Status and listings never read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPayload {
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
