//! Errors of the state compiler. Each says where (file, line, state id) and what to do.

use std::fmt;

use corpus_pillar::{TopError, TreeError};

/// A place in the state tree. Lines count in the file as written for Jinja errors, and in the
/// rendered text for YAML and structure errors (the same unless Jinja added lines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: String,
    pub line: Option<usize>,
    /// The state id the problem is in, when known.
    pub state: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(state) = &self.state {
            write!(f, ", state '{state}'")?;
        }
        Ok(())
    }
}

/// Rendering or planning a state tree failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("file root: {0}")]
    Tree(#[from] TreeError),
    #[error("{0}")]
    Top(#[from] TopError),
    #[error("{at}: jinja error: {message}")]
    Render { at: Location, message: String },
    #[error("{at}: yaml error: {message}")]
    Yaml { at: Location, message: String },
    /// The YAML does not have the shape of Salt high data.
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error(
        "{at}: unknown state module '{module}': corpus supports {}",
        known.join(", ")
    )]
    UnknownModule {
        at: Location,
        module: String,
        known: Vec<&'static str>,
    },
    #[error(
        "{at}: unknown state function '{module}.{function}': module '{module}' has {}",
        known.join(", ")
    )]
    UnknownFunction {
        at: Location,
        module: String,
        function: String,
        known: Vec<&'static str>,
    },
    #[error(
        "sls '{name}' not found (named in {by}): create {path}.sls or {path}/init.sls in the file root"
    )]
    SlsNotFound {
        name: String,
        by: String,
        path: String,
    },
    #[error(
        "state id '{id}' is declared in sls '{first}' and in sls '{second}': ids must be unique \
         across the tree; rename one"
    )]
    ConflictingId {
        id: String,
        first: String,
        second: String,
    },
    #[error(
        "{at}: {kind} requisite '{target}' matches no state: check the id or name, and that its \
         sls is included"
    )]
    Dangling {
        at: Location,
        kind: String,
        target: String,
    },
    #[error("requisite cycle: {}; remove one of these requisites", ids.join(" -> "))]
    Cycle { ids: Vec<String> },
    #[error("top.sls: no sls targets agent '{id}': add a target matching it to top.sls")]
    NoTopMatch { id: String },
}
