//! The master's domain error: what went wrong in terms a caller can act on, with the data
//! (holder of a lock, quota numbers, file and line of a template) kept as data. The services
//! map it to a gRPC status once, in [`crate::wire`]; nothing here knows about the wire.

use crate::auth::AuthError;
use crate::render::RenderError;
use crate::store::StoreError;

/// Which job holds a project, as a refused caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub job: String,
    /// Who started it and when (unix seconds); unknown if the job record is gone.
    pub user: Option<String>,
    pub started: Option<i64>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, self.started) {
            (Some(user), Some(started)) => write!(
                f,
                "{user} (job {}, started {})",
                self.job,
                corpus_runtime::format_unix_time(started)
            ),
            _ => write!(f, "job {}", self.job),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// `no <what> <id><detail>`: the detail says where it was looked for or what to do.
    #[error("no {what} {id}{detail}")]
    NotFound {
        what: &'static str,
        id: String,
        detail: String,
    },
    /// The caller may not act on this.
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "project {project:?} in environment {env} is locked by a deploy of {holder}: try again when it finishes"
    )]
    Locked {
        env: String,
        project: String,
        holder: LockHolder,
    },
    #[error(
        "deploy would exceed the quota of project {project:?}: {used} bytes used + {size} pushed > {quota} bytes (corpus enlarge ... to raise it)"
    )]
    Quota {
        project: String,
        used: u64,
        size: u64,
        quota: u64,
    },
    /// A bounded resource other than a quota is used up (slots, pending enrollments, logins).
    #[error("{0}")]
    Exhausted(String),
    /// The request is malformed or names something invalid. A template or pillar error keeps
    /// where it is (`file`, `line`, `state_id`) as data.
    #[error("{message}")]
    Invalid {
        message: String,
        file: Option<String>,
        line: Option<usize>,
        state_id: Option<String>,
    },
    /// The request is valid but the state of things refuses it now (nothing to roll back to,
    /// a quota below the usage, ...).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// No valid credentials or session.
    #[error("{0}")]
    Unauthenticated(String),
    /// The agent that must do the work is not connected.
    #[error("{0}")]
    AgentOffline(String),
    /// A failure of the master itself (storage, signing): the source is logged in full, the
    /// caller only learns that the log has it.
    #[error("internal master error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type MasterResult<T> = Result<T, MasterError>;

impl MasterError {
    pub fn invalid(message: impl Into<String>) -> MasterError {
        MasterError::Invalid {
            message: message.into(),
            file: None,
            line: None,
            state_id: None,
        }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>, detail: impl Into<String>) -> Self {
        MasterError::NotFound {
            what,
            id: id.into(),
            detail: detail.into(),
        }
    }

    pub fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> MasterError {
        MasterError::Internal(err.into())
    }
}

impl From<StoreError> for MasterError {
    fn from(e: StoreError) -> Self {
        MasterError::internal(e)
    }
}

impl From<crate::pki::PkiError> for MasterError {
    fn from(e: crate::pki::PkiError) -> Self {
        MasterError::internal(e)
    }
}

impl From<crate::blobs::BlobError> for MasterError {
    fn from(e: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError;
        match e {
            BlobError::Io { .. } => MasterError::internal(e),
            // The master is out of space: the caller learns it, the operator must act.
            BlobError::DiskFull { .. } | BlobError::ShortWrite { .. } => {
                MasterError::Exhausted(e.to_string())
            }
            // What the sender got wrong: a bad digest, too large, corrupt or truncated.
            other => MasterError::invalid(other.to_string()),
        }
    }
}

impl From<AuthError> for MasterError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials | AuthError::BadSession => {
                MasterError::Unauthenticated(e.to_string())
            }
            AuthError::RateLimited { .. } | AuthError::TooManyLogins { .. } => {
                MasterError::Exhausted(e.to_string())
            }
            AuthError::Disabled(_) => MasterError::Forbidden(e.to_string()),
            AuthError::NoSuchUser(id) => MasterError::not_found(
                "user",
                format!("{id:?}"),
                ": see `corpus-master users list`",
            ),
            AuthError::WeakPassword => MasterError::invalid(e.to_string()),
            AuthError::UserExists(_) => MasterError::AlreadyExists(e.to_string()),
            AuthError::Store(_) | AuthError::Hash(_) => MasterError::internal(e),
        }
    }
}

impl From<RenderError> for MasterError {
    fn from(e: RenderError) -> Self {
        let at = e.location();
        MasterError::Invalid {
            message: e.to_string(),
            file: at.file,
            line: at.line,
            state_id: at.state_id,
        }
    }
}

impl From<corpus_proto::names::InvalidName> for MasterError {
    fn from(e: corpus_proto::names::InvalidName) -> Self {
        MasterError::invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::render::{DeployContext, render_project};
    use crate::store::{EnvironmentRecord, Grains, Mode, Platform};

    fn render_error(phase: &str, text: &str) -> MasterError {
        let env = EnvironmentRecord {
            uuid: "e1".into(),
            platform: Platform::Dev,
            mode: Mode::Editable,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec![],
            defaults: serde_json::json!({}),
            created_at: 0,
            smep: None,
        };
        let grains = Grains::default();
        let ctx = DeployContext {
            project: "web",
            env: &env,
            mode: Mode::Editable,
            deploy_id: "d1",
            commit: "abc",
            grains: &grains,
        };
        let salt = BTreeMap::from([(format!("{phase}.sls"), text.to_owned())]);
        match render_project(&salt, &serde_json::json!({}), &ctx) {
            Err(e) => e.into(),
            Ok(_) => MasterError::invalid("rendered without error"),
        }
    }

    #[test]
    fn an_invalid_render_keeps_its_file_line_and_state_id_as_data() {
        let err = render_error(
            "start",
            "ok:\n  cmd.run:\n    - name: true\nbroken:\n  nosuch.module:\n    - name: x\n",
        );
        match &err {
            MasterError::Invalid {
                message,
                file,
                state_id,
                ..
            } => {
                assert_eq!(file.as_deref(), Some(".salt/start.sls"));
                assert_eq!(state_id.as_deref(), Some("broken"));
                assert!(message.contains("nosuch"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }

        let err = render_error("build", "a:\n  cmd.run:\n    - name: {{ nope( }}\n");
        match &err {
            MasterError::Invalid {
                message,
                file,
                line,
                ..
            } => {
                assert_eq!(file.as_deref(), Some(".salt/build.sls"));
                assert_eq!(*line, Some(3), "{message}");
                assert!(message.starts_with(".salt/build.sls"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn internal_errors_keep_their_source_for_the_log() {
        let err = MasterError::internal(std::io::Error::other("disk on fire"));
        assert!(matches!(&err, MasterError::Internal(_)));
        let source = std::error::Error::source(&err).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("disk on fire"));
    }
}
