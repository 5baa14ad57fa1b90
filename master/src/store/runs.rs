//! Operator runs (`corpus-master apply|run`, [`Tree::Runs`]): the run itself under
//! `h/<run id>` and each agent's return under `r/<run id>/<agent>`, so listing runs reads no
//! return and a run of thousands of agents writes each return once (in batches, see
//! `fleet/runs.rs`), not the whole run per return.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Store, StoreError, decode, encode};
use crate::db::{Tree, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    /// The master stopped while the run was open: returns not received by then never will be.
    Interrupted,
}

impl RunStatus {
    pub fn label(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// One operator run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Salt-like job id: the start time `YYYYMMDDhhmmssffffff`, unique on this master.
    pub id: String,
    pub target: String,
    pub target_type: String,
    pub function: String,
    pub args: Vec<String>,
    pub kwargs: std::collections::BTreeMap<String, String>,
    pub test: bool,
    pub user: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub status: RunStatus,
    /// Every agent the target selected, in order.
    pub targeted: Vec<String>,
    pub returned: u32,
    pub succeeded: u32,
    /// Every agent that did not succeed, the not connected ones included.
    pub failed: u32,
    pub not_connected: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnStatus {
    Succeeded,
    Failed,
    NotConnected,
}

impl ReturnStatus {
    pub fn label(self) -> &'static str {
        match self {
            ReturnStatus::Succeeded => "succeeded",
            ReturnStatus::Failed => "failed",
            ReturnStatus::NotConnected => "not connected",
        }
    }
}

/// What one agent of a run returned (or why it did not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReturn {
    pub agent: String,
    pub status: ReturnStatus,
    /// The agent's return (Salt's shape), `null` when it never returned.
    pub value: Json,
    pub error: String,
    /// Whether the agent itself answered (false: not connected, render error, timeout).
    pub from_agent: bool,
    pub started_ms: i64,
    pub finished_ms: i64,
}

fn head_key(id: &str) -> String {
    format!("h/{id}")
}

fn return_key(id: &str, agent: &str) -> String {
    format!("r/{id}/{agent}")
}

impl Store {
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.get(Tree::Runs, "run", &head_key(id))
    }

    /// Every run, oldest first (ids sort by start time).
    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.db
            .scan(Tree::Runs, b"h/")?
            .into_iter()
            .map(|(k, v)| decode("run", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    /// A run's returns so far, in agent id order.
    pub fn run_returns(&self, id: &str) -> Result<Vec<AgentReturn>, StoreError> {
        self.db
            .scan(Tree::Runs, format!("r/{id}/").as_bytes())?
            .into_iter()
            .map(|(k, v)| decode("run return", &String::from_utf8_lossy(&k), &v))
            .collect()
    }

    /// Stores the run as it is now and `returns` with it, in one durable batch.
    pub fn put_run(&self, run: &RunRecord, returns: &[AgentReturn]) -> Result<(), StoreError> {
        let mut writes = vec![Write::put(Tree::Runs, head_key(&run.id), encode(run))];
        writes.extend(
            returns
                .iter()
                .map(|r| Write::put(Tree::Runs, return_key(&run.id, &r.agent), encode(r))),
        );
        self.db.batch(writes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_their_returns_round_trip_apart() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let mut run = RunRecord {
            id: "20260101000000000001".into(),
            target: "web*".into(),
            target_type: "glob".into(),
            function: "test.ping".into(),
            args: vec![],
            kwargs: Default::default(),
            test: false,
            user: "root".into(),
            started_ms: 1,
            finished_ms: None,
            status: RunStatus::Running,
            targeted: vec!["web1".into(), "web2".into()],
            returned: 0,
            succeeded: 0,
            failed: 0,
            not_connected: 0,
        };
        state.store.put_run(&run, &[])?;
        let ret = AgentReturn {
            agent: "web2".into(),
            status: ReturnStatus::Succeeded,
            value: serde_json::json!(true),
            error: String::new(),
            from_agent: true,
            started_ms: 2,
            finished_ms: 3,
        };
        run.returned = 1;
        state.store.put_run(&run, std::slice::from_ref(&ret))?;
        assert_eq!(state.store.run(&run.id)?, Some(run.clone()));
        assert_eq!(state.store.runs()?, vec![run.clone()]);
        assert_eq!(state.store.run_returns(&run.id)?, vec![ret]);
        assert!(state.store.run_returns("2026")?.is_empty());
        Ok(())
    }
}
