//! What a state returns: Salt's result fields, keyed by Salt's state key, plus the report of a
//! whole run (summary counts and Salt's `--out json` shape).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a state module decides; the executor adds name, timing and bookkeeping around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `Some(true)` success, `Some(false)` failure, `None` "would change" in test mode.
    pub result: Option<bool>,
    /// Salt's `changes`: empty when nothing changed (or would change).
    pub changes: Map<String, Value>,
    pub comment: String,
}

impl Outcome {
    pub fn ok(comment: impl Into<String>) -> Self {
        Self {
            result: Some(true),
            changes: Map::new(),
            comment: comment.into(),
        }
    }

    pub fn changed(comment: impl Into<String>, changes: Map<String, Value>) -> Self {
        Self {
            result: Some(true),
            changes,
            comment: comment.into(),
        }
    }

    pub fn fail(comment: impl Into<String>) -> Self {
        Self {
            result: Some(false),
            changes: Map::new(),
            comment: comment.into(),
        }
    }

    /// Test mode, for the modules whose Salt states say what would change in the comment only
    /// (`user`, `group`, `ssh_auth`, `sysctl`): `result` None and no `changes`, as Salt returns.
    pub fn pending(comment: impl Into<String>) -> Self {
        Self::would_change(comment, Map::new())
    }

    /// Test mode: the state would change something; `changes` says what.
    pub fn would_change(comment: impl Into<String>, changes: Map<String, Value>) -> Self {
        Self {
            result: None,
            changes,
            comment: comment.into(),
        }
    }
}

/// One state's return, field for field what Salt prints (`state.apply --out json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateResult {
    pub name: String,
    pub result: Option<bool>,
    pub changes: Map<String, Value>,
    pub comment: String,
    /// Wall time of the state in milliseconds, like Salt.
    pub duration: f64,
    /// Local wall-clock time the state started, `HH:MM:SS.ffffff` like Salt.
    pub start_time: String,
    #[serde(rename = "__run_num__")]
    pub run_num: usize,
    #[serde(rename = "__id__")]
    pub id: String,
    #[serde(rename = "__sls__")]
    pub sls: String,
}

/// A result together with what identifies it: Salt's state key and the `module.function` that
/// produced it (the text output prints both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyedResult {
    /// Salt's state key, `module_|-id_|-name_|-function`.
    pub key: String,
    /// `module.function`, for the text output's `Function:` line.
    pub function: String,
    pub result: StateResult,
}

/// Every result of one run, in run order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub results: Vec<KeyedResult>,
}

impl Report {
    /// True when no state failed (test mode's `None` counts as success, like Salt's exit code).
    pub fn succeeded(&self) -> bool {
        self.results.iter().all(|r| r.result.result != Some(false))
    }

    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.result.result == Some(false))
            .count()
    }

    /// States that did not fail, and among them how many reported changes.
    pub fn succeeded_counts(&self) -> (usize, usize) {
        let ok: Vec<_> = self
            .results
            .iter()
            .filter(|r| r.result.result != Some(false))
            .collect();
        let changed = ok.iter().filter(|r| !r.result.changes.is_empty()).count();
        (ok.len(), changed)
    }

    /// Sum of the states' durations, in milliseconds.
    pub fn total_duration(&self) -> f64 {
        self.results.iter().map(|r| r.result.duration).sum()
    }

    /// Salt's JSON shape for one minion: `{key: result, ...}`.
    pub fn to_salt_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for r in &self.results {
            // Serialising a struct of strings, numbers and JSON values cannot fail.
            let value = serde_json::to_value(&r.result).unwrap_or(Value::Null);
            map.insert(r.key.clone(), value);
        }
        map
    }

    pub fn get(&self, key: &str) -> Option<&StateResult> {
        self.results
            .iter()
            .find(|r| r.key == key)
            .map(|r| &r.result)
    }
}
