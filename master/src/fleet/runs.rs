//! Operator runs: `corpus-master apply|run` on every agent a target selects. A run is recorded
//! before anything is sent; a driver task then calls at most `batch` agents at once (the next
//! one as soon as one returns), each with only its own plan and pillar, and waits for each
//! return up to the run's timeout. Returns are stored as they arrive, in batches, so `jobs show`
//! works while the run goes on and after a restart (a run the master did not see end is shown
//! `interrupted`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corpus_proto::{OperatorCall, OperatorFile, OperatorReturn, StartRunRequest};
use serde_json::Value as Json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{info, warn};

use super::plan;
use super::target::{Target, TargetType};
use crate::MasterState;
use crate::error::{MasterError, MasterResult};
use crate::link_registry::ToAgent;
use crate::store::{AgentReturn, ReturnStatus, RunRecord, RunStatus};

/// Per-agent wait when the console gives none: a highstate may install packages.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest per-agent timeout a run may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long after the call's timeout the master still waits: the agent's own timeout failure,
/// sent when it stops the call, should arrive before the master gives up on it.
const RETURN_GRACE: Duration = Duration::from_secs(2);
/// How often arrived returns are written, in one batch.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The runs open on this master and the calls awaiting their agent's return.
#[derive(Default)]
pub struct Runs {
    /// (run id, agent) -> where its return goes.
    pending: Mutex<HashMap<(String, String), oneshot::Sender<OperatorReturn>>>,
    /// Runs whose driver is alive: a stored `running` run not in here was interrupted.
    open: Mutex<HashSet<String>>,
    last_id: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `N` or `N%` of `targeted` (at least one); empty is every agent at once.
pub fn parse_batch(text: &str, targeted: usize) -> MasterResult<usize> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(targeted.max(1));
    }
    let bad = || {
        MasterError::invalid(format!(
            "batch {:?} is invalid: give a number of agents (e.g. 5) or a percentage (e.g. 25%)",
            text.chars().take(32).collect::<String>()
        ))
    };
    let size = match text.strip_suffix('%') {
        Some(percent) => {
            let percent: usize = percent.trim().parse().map_err(|_| bad())?;
            if percent == 0 || percent > 100 {
                return Err(bad());
            }
            (targeted * percent).div_ceil(100)
        }
        None => text.parse().map_err(|_| bad())?,
    };
    if size == 0 {
        return Err(bad());
    }
    Ok(size.min(targeted.max(1)))
}

impl Runs {
    /// A Salt-like job id from the clock, never one given before on this master.
    fn new_id(&self) -> String {
        let now = time::OffsetDateTime::now_utc();
        let mut id = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:06}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond()
        );
        let mut last = lock(&self.last_id);
        if id <= *last {
            // Same microsecond (or a clock step back): one past the last, same width.
            let next = last.parse::<u128>().map_or(0, |n| n + 1);
            id = format!("{next:020}");
        }
        last.clone_from(&id);
        id
    }

    pub fn is_open(&self, run_id: &str) -> bool {
        lock(&self.open).contains(run_id)
    }

    /// An agent's return: handed to its waiting call; false (ignored) when no call of that run
    /// waits for this agent (unknown run, timed out already, another agent's run).
    pub fn on_return(&self, agent: &str, ret: OperatorReturn) -> bool {
        let waiting = lock(&self.pending).remove(&(ret.run_id.clone(), agent.to_owned()));
        match waiting {
            Some(tx) => tx.send(ret).is_ok(),
            None => false,
        }
    }

    /// The run as stored, shown `interrupted` when it says running but no driver has it.
    pub fn stored(&self, state: &MasterState, run_id: &str) -> MasterResult<RunRecord> {
        let mut run = state.store.run(run_id)?.ok_or_else(|| {
            MasterError::not_found(
                "run",
                format!("{run_id:?}"),
                ": see `corpus-master jobs list`",
            )
        })?;
        self.settle(state, &mut run)?;
        Ok(run)
    }

    /// Every run, oldest first, interrupted ones marked.
    pub fn list(&self, state: &MasterState) -> MasterResult<Vec<RunRecord>> {
        let mut runs = state.store.runs()?;
        for run in &mut runs {
            self.settle(state, run)?;
        }
        Ok(runs)
    }

    fn settle(&self, state: &MasterState, run: &mut RunRecord) -> MasterResult<()> {
        if run.status == RunStatus::Running && !self.is_open(&run.id) {
            run.status = RunStatus::Interrupted;
            state.store.put_run(run, &[])?;
        }
        Ok(())
    }
}

/// What every call of one run shares.
struct RunPlan {
    run: RunRecord,
    /// The agents to call with their grains, in order.
    agents: Vec<(String, Json)>,
    batch: usize,
    timeout: Duration,
}

/// Starts a run: selects the agents, records the run, and leaves it to a driver task. Returns
/// the run as first stored.
pub async fn start(state: &Arc<MasterState>, request: StartRunRequest) -> MasterResult<RunRecord> {
    let kind =
        TargetType::parse(&request.target_type).map_err(|e| MasterError::invalid(e.to_string()))?;
    let function = request.function.trim().to_owned();
    if !function.contains('.') || function.chars().any(char::is_whitespace) {
        return Err(MasterError::invalid(format!(
            "function {:?} is invalid: name it module.function, e.g. test.ping or state.apply",
            function.chars().take(64).collect::<String>()
        )));
    }
    let timeout = match request.timeout_seconds {
        0 if function == "state.apply" => DEFAULT_APPLY_TIMEOUT,
        0 => DEFAULT_CALL_TIMEOUT,
        s => Duration::from_secs(u64::from(s)),
    };
    if timeout > MAX_TIMEOUT {
        return Err(MasterError::invalid(format!(
            "timeout {timeout:?} is longer than the limit of {MAX_TIMEOUT:?}"
        )));
    }
    let target = Target::parse(kind, &request.target, &state.settings().nodegroups)
        .map_err(|e| MasterError::invalid(e.to_string()))?;
    let agents = state
        .blocking(move |state| plan::select(state, &target))
        .await?;
    let batch = parse_batch(&request.batch, agents.len())?;
    let user = if request.user.trim().is_empty() {
        "root".to_owned()
    } else {
        request.user.clone()
    };
    let run = RunRecord {
        id: state.runs.new_id(),
        target: request.target,
        target_type: kind.name().to_owned(),
        function,
        args: request.args,
        kwargs: request.kwargs.into_iter().collect::<BTreeMap<_, _>>(),
        test: request.test,
        user,
        started_ms: now_ms(),
        finished_ms: None,
        status: RunStatus::Running,
        targeted: agents.iter().map(|(id, _)| id.clone()).collect(),
        returned: 0,
        succeeded: 0,
        failed: 0,
        not_connected: 0,
    };
    lock(&state.runs.open).insert(run.id.clone());
    let stored = run.clone();
    if let Err(e) = state
        .blocking(move |state| Ok(state.store.put_run(&stored, &[])?))
        .await
    {
        lock(&state.runs.open).remove(&run.id);
        return Err(e);
    }
    info!(run = %run.id, function = %run.function, target = %run.target, agents = agents.len(),
        batch, "operator run started");
    let plan = RunPlan {
        run: run.clone(),
        agents,
        batch,
        timeout,
    };
    tokio::spawn(drive(state.clone(), plan));
    Ok(run)
}

/// Calls every agent of the run, `batch` at a time, and records their returns.
async fn drive(state: Arc<MasterState>, plan: RunPlan) {
    let RunPlan {
        run,
        agents,
        batch,
        timeout,
    } = plan;
    let (returns_tx, returns_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(record_returns(state.clone(), run.clone(), returns_rx));
    let slots = Arc::new(Semaphore::new(batch));
    let call = Arc::new(run.clone());
    let mut calls = tokio::task::JoinSet::new();
    for (agent, grains) in agents {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (state, call, returns_tx) = (state.clone(), call.clone(), returns_tx.clone());
        calls.spawn(async move {
            let ret = call_agent(&state, &call, &agent, grains, timeout).await;
            let _ = returns_tx.send(ret);
            drop(slot);
        });
        // Reaps the calls done so far, so the set holds only those in flight.
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    drop(returns_tx);
    if let Err(e) = writer.await {
        warn!(run = %run.id, error = %e, "the run's writer failed");
    }
    lock(&state.runs.open).remove(&run.id);
}

/// Stores returns as they arrive, one batch per [`FLUSH_EVERY`], then the finished run.
async fn record_returns(
    state: Arc<MasterState>,
    mut run: RunRecord,
    mut returns: mpsc::UnboundedReceiver<AgentReturn>,
) {
    let mut ended = false;
    while !ended {
        let mut batch = Vec::new();
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = returns.recv() => match next {
                    Some(ret) => batch.push(ret),
                    None => { ended = true; break; }
                },
                _ = &mut deadline => break,
            }
        }
        for ret in &batch {
            run.returned += u32::from(ret.from_agent);
            match ret.status {
                ReturnStatus::Succeeded => run.succeeded += 1,
                ReturnStatus::Failed => run.failed += 1,
                ReturnStatus::NotConnected => {
                    run.failed += 1;
                    run.not_connected += 1;
                }
            }
        }
        if ended {
            run.status = RunStatus::Finished;
            run.finished_ms = Some(now_ms());
        }
        if batch.is_empty() && !ended {
            continue;
        }
        let (stored, id) = (run.clone(), run.id.clone());
        if let Err(e) = state
            .blocking(move |state| Ok(state.store.put_run(&stored, &batch)?))
            .await
        {
            warn!(run = %id, error = %e, "cannot store the run's returns");
        }
    }
    info!(run = %run.id, succeeded = run.succeeded, failed = run.failed,
        not_connected = run.not_connected, "operator run finished");
}

fn failure(agent: &str, status: ReturnStatus, error: String, started_ms: i64) -> AgentReturn {
    AgentReturn {
        agent: agent.to_owned(),
        status,
        value: Json::Null,
        error,
        from_agent: false,
        started_ms,
        finished_ms: now_ms(),
    }
}

/// The part of a call that carries what was rendered for the agent.
fn into_call(rendered: plan::RenderedCall) -> OperatorCall {
    OperatorCall {
        plan_json: rendered.plan,
        pillar_json: rendered.pillar,
        files: rendered
            .files
            .into_iter()
            .map(|f| OperatorFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            })
            .collect(),
        ..Default::default()
    }
}

/// One agent's call: its own plan, pillar and `salt://` files, sent; its return awaited.
async fn call_agent(
    state: &Arc<MasterState>,
    run: &RunRecord,
    agent: &str,
    grains: Json,
    timeout: Duration,
) -> AgentReturn {
    let started = now_ms();
    let not_connected = || {
        failure(
            agent,
            ReturnStatus::NotConnected,
            format!("agent {agent} is not connected"),
            started,
        )
    };
    if !state.links.is_connected(agent) {
        return not_connected();
    }
    let rendered = if matches!(run.function.as_str(), "state.apply" | "state.show_sls") {
        let (agent_id, sls) = (agent.to_owned(), run.args.clone());
        let with_files = run.function == "state.apply";
        let rendered = state
            .blocking(move |state| {
                Ok(plan::render(
                    &state.settings(),
                    &agent_id,
                    grains,
                    &sls,
                    with_files,
                ))
            })
            .await;
        match rendered {
            Ok(Ok(rendered)) => Some(rendered),
            Ok(Err(why)) => return failure(agent, ReturnStatus::Failed, why, started),
            Err(e) => return failure(agent, ReturnStatus::Failed, e.to_string(), started),
        }
    } else {
        None
    };
    let call = OperatorCall {
        run_id: run.id.clone(),
        function: run.function.clone(),
        args: if rendered.is_some() {
            Vec::new()
        } else {
            run.args.clone()
        },
        kwargs_json: serde_json::to_vec(&run.kwargs).unwrap_or_default(),
        test: run.test,
        timeout_seconds: timeout.as_secs().min(u64::from(u32::MAX)) as u32,
        requested_by: run.user.clone(),
        ..rendered.map(into_call).unwrap_or_default()
    };
    let key = (run.id.clone(), agent.to_owned());
    let (tx, rx) = oneshot::channel();
    lock(&state.runs.pending).insert(key.clone(), tx);
    let sent = match state.links.sender(agent) {
        Some(link) => link.send(ToAgent::Operator(Box::new(call))).await.is_ok(),
        None => false,
    };
    if !sent {
        lock(&state.runs.pending).remove(&key);
        return not_connected();
    }
    // A return may come on a later link of the agent (it keeps it across a reconnect).
    let waited = tokio::time::timeout(timeout + RETURN_GRACE, rx).await;
    lock(&state.runs.pending).remove(&key);
    match waited {
        Ok(Ok(ret)) => AgentReturn {
            agent: agent.to_owned(),
            status: if ret.success {
                ReturnStatus::Succeeded
            } else {
                ReturnStatus::Failed
            },
            value: serde_json::from_slice(&ret.return_json).unwrap_or(Json::Null),
            error: ret.error,
            from_agent: true,
            started_ms: if ret.started_unix_ms > 0 {
                ret.started_unix_ms
            } else {
                started
            },
            finished_ms: if ret.finished_unix_ms > 0 {
                ret.finished_unix_ms
            } else {
                now_ms()
            },
        },
        _ => failure(
            agent,
            ReturnStatus::Failed,
            format!("no return within {}", humantime::format_duration(timeout)),
            started,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_a_count_or_a_percentage_of_the_targeted() -> MasterResult<()> {
        assert_eq!(parse_batch("", 7)?, 7);
        assert_eq!(parse_batch("1", 7)?, 1);
        assert_eq!(parse_batch("50", 7)?, 7);
        assert_eq!(parse_batch("25%", 7)?, 2);
        assert_eq!(parse_batch("1%", 7)?, 1);
        assert_eq!(parse_batch("100%", 7)?, 7);
        for bad in ["0", "0%", "101%", "x", "-1", "5%%"] {
            assert!(parse_batch(bad, 7).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn a_run_no_driver_holds_is_shown_interrupted() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let run = RunRecord {
            id: state.runs.new_id(),
            target: "*".into(),
            target_type: "glob".into(),
            function: "test.ping".into(),
            args: vec![],
            kwargs: BTreeMap::new(),
            test: false,
            user: "root".into(),
            started_ms: now_ms(),
            finished_ms: None,
            status: RunStatus::Running,
            targeted: vec!["web1".into()],
            returned: 0,
            succeeded: 0,
            failed: 0,
            not_connected: 0,
        };
        state.store.put_run(&run, &[])?;
        lock(&state.runs.open).insert(run.id.clone());
        assert_eq!(
            state.runs.stored(&state, &run.id)?.status,
            RunStatus::Running
        );
        // What a master restarted during the run finds: no driver for it.
        lock(&state.runs.open).clear();
        assert_eq!(state.runs.list(&state)?[0].status, RunStatus::Interrupted);
        assert_eq!(
            state.store.run(&run.id)?.map(|r| r.status),
            Some(RunStatus::Interrupted)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_target_matching_no_accepted_agent_is_refused_naming_it() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let request = StartRunRequest {
            target: "web*".into(),
            function: "test.ping".into(),
            ..Default::default()
        };
        let err = start(&state, request).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("\"web*\" matched no agent")),
            "{err:?}"
        );
        let request = StartRunRequest {
            target: "*".into(),
            function: "ping".into(),
            ..Default::default()
        };
        assert!(start(&state, request).await.is_err());
        Ok(())
    }

    #[test]
    fn run_ids_are_unique_and_sort_by_time() {
        let runs = Runs::default();
        let ids: Vec<String> = (0..50).map(|_| runs.new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|id| id.len() == 20));
    }

    #[test]
    fn a_return_reaches_only_the_call_of_its_run_and_agent() {
        let runs = Runs::default();
        let (tx, mut rx) = oneshot::channel();
        lock(&runs.pending).insert(("r1".into(), "web1".into()), tx);
        let ret = |run: &str| OperatorReturn {
            run_id: run.into(),
            success: true,
            ..Default::default()
        };
        assert!(!runs.on_return("web2", ret("r1")));
        assert!(!runs.on_return("web1", ret("r2")));
        assert!(rx.try_recv().is_err());
        assert!(runs.on_return("web1", ret("r1")));
        assert!(rx.try_recv().is_ok_and(|r| r.success));
        assert!(!runs.on_return("web1", ret("r1")));
    }
}
