//! Operator runs (`corpus-master apply|run`, PRODUCT.md "Two kinds of state runs"): Salt's
//! targeting over the accepted agents ([`target`]), per-agent selection and rendering
//! ([`plan`]), the `salt://` files each call carries ([`sources`]), the run driver with batches and timeouts ([`runs`]), and the console's view of
//! runs ([`summary`], [`agent_return`], [`follow`]).

pub mod plan;
pub mod runs;
pub mod sources;
pub mod target;

use std::collections::HashSet;
use std::sync::Arc;

use corpus_proto::{RunAgentReturn, RunEvent, RunSummary, run_event};
use tokio::sync::mpsc;

use crate::MasterState;
use crate::error::MasterResult;
use crate::store::{AgentReturn, RunRecord};

/// How often a follower looks for new returns.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

pub fn summary(run: &RunRecord) -> RunSummary {
    RunSummary {
        run_id: run.id.clone(),
        target: run.target.clone(),
        target_type: run.target_type.clone(),
        function: run.function.clone(),
        args: run.args.clone(),
        test: run.test,
        user: run.user.clone(),
        started_unix_ms: run.started_ms,
        finished_unix_ms: run.finished_ms.unwrap_or(0),
        status: run.status.label().to_owned(),
        targeted: run.targeted.len() as u32,
        returned: run.returned,
        succeeded: run.succeeded,
        failed: run.failed,
        not_connected: run.not_connected,
    }
}

pub fn agent_return(run_id: &str, ret: &AgentReturn) -> RunAgentReturn {
    RunAgentReturn {
        run_id: run_id.to_owned(),
        agent: ret.agent.clone(),
        status: ret.status.label().to_owned(),
        return_json: if ret.value.is_null() && !ret.from_agent {
            Vec::new()
        } else {
            serde_json::to_vec(&ret.value).unwrap_or_default()
        },
        error: ret.error.clone(),
        started_unix_ms: ret.started_ms,
        finished_unix_ms: ret.finished_ms,
    }
}

/// Streams the run's returns as they are stored, then its summary once it is no longer
/// running. Ends early when the receiver goes away.
pub async fn follow(
    state: Arc<MasterState>,
    run_id: String,
    out: mpsc::Sender<Result<RunEvent, tonic::Status>>,
) {
    let mut sent: HashSet<String> = HashSet::new();
    loop {
        let id = run_id.clone();
        let now = state
            .blocking(move |state| -> MasterResult<_> {
                let run = state.runs.stored(state, &id)?;
                Ok((state.store.run_returns(&id)?, run))
            })
            .await;
        let (returns, run) = match now {
            Ok(now) => now,
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
        };
        for ret in returns {
            if sent.insert(ret.agent.clone()) {
                let event = RunEvent {
                    body: Some(run_event::Body::AgentReturn(agent_return(&run_id, &ret))),
                };
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
        if run.status != crate::store::RunStatus::Running {
            let event = RunEvent {
                body: Some(run_event::Body::Summary(summary(&run))),
            };
            let _ = out.send(Ok(event)).await;
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}
