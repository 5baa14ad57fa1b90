//! Why a step failed, with its cause and the path it was working on: a step that cannot write
//! says which file, not only "Permission denied (os error 13)". [`IoContext::at`] attaches the
//! operation and path to any `io::Result`.

use std::io;
use std::path::{Path, PathBuf};

use corpus_states::{Phase, SettingsError};

use super::checks::CheckError;
use super::step::Step;

/// A step's failure.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A filesystem operation on `path` failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A durable move failed (the rename or the fsync of a parent).
    #[error("cannot move {} to {}: {source}", from.display(), to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A source or release archive could not be unpacked (or was refused).
    #[error("{what} {}: {source}", path.display())]
    Archive {
        /// `source` or `release`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state of a phase's SLS failed.
    #[error("state {state:?} of {phase}.sls failed: {comment}")]
    State {
        phase: Phase,
        state: String,
        comment: String,
    },
    #[error("health check failed: {0}")]
    HealthCheck(#[source] CheckError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The environment's isolation could not be set up, or its confined phase process failed.
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
    /// The job lacks what the step needs, or what it was given is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Recovery found the job cut short during `step`.
    #[error("the agent stopped during step {step}{note}")]
    Interrupted { step: String, note: &'static str },
}

/// Attaches an operation and a path to an I/O error.
pub trait IoContext<T> {
    /// `op` reads after "cannot": `create`, `write`, `remove`, `link run/ to`...
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T, StepError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T, StepError> {
        self.map_err(|source| StepError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        })
    }
}

/// A failed step of a job, and the state within it for SLS phases.
#[derive(Debug)]
pub struct StepFailure {
    pub step: Step,
    /// The failed state's id, empty for built-in steps.
    pub state: String,
    pub error: StepError,
    /// The step ran out of disk space: the undo then keeps no copy of the failed tree.
    pub disk_full: bool,
}

impl StepFailure {
    pub fn new(step: Step, error: StepError) -> StepFailure {
        let state = match &error {
            StepError::State { state, .. } => state.clone(),
            _ => String::new(),
        };
        let disk_full = error.is_disk_full();
        StepFailure {
            step,
            state,
            error,
            disk_full,
        }
    }
}

/// What a command prints when a write fails for lack of space (strerror of ENOSPC).
pub const NO_SPACE_TEXT: &str = "No space left on device";

/// Whether an I/O error says the filesystem is full.
pub fn io_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC)
}

impl StepError {
    /// Whether the step failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StepError::Io { source, .. }
            | StepError::Move { source, .. }
            | StepError::Archive { source, .. } => io_disk_full(source),
            StepError::State { comment, .. } => comment.contains(NO_SPACE_TEXT),
            _ => false,
        }
    }
}

/// A job refused before anything was touched.
#[derive(Debug, thiserror::Error)]
pub enum InvalidJob {
    #[error(transparent)]
    Name(#[from] corpus_proto::names::InvalidName),
    #[error("environment id {0:?} is invalid: use letters, digits and '-'")]
    Environment(String),
    #[error(
        "deploy id {0:?} is invalid: expected <UTC DATETIME>-<UUID> such as \
         20250102T030405Z-0f8fad5b-d9cb-469f-a165-70867728950e"
    )]
    DeployId(String),
    #[error("no project source was given: editable and cooking modes deploy the pushed git tree")]
    NoSource,
    #[error("project source {} is missing", .0.display())]
    SourceMissing(PathBuf),
    #[error("editable mode has no archives to roll back to")]
    EditableRollback,
    #[error(transparent)]
    Release(StepError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_failure_names_the_path() {
        let denied: io::Result<()> = Err(io::Error::from(io::ErrorKind::PermissionDenied));
        let e = denied
            .at("write", "/srv/app/archives/x/status.json")
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/srv/app/archives/x/status.json"), "{text}");
        assert!(text.starts_with("cannot write "), "{text}");
        assert!(text.contains("ermission denied"), "{text}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
