//! Operator calls (`corpus-master apply|run`, PRODUCT.md "Two kinds of state runs"): run as
//! root, outside any environment, with the full module set, beside project jobs without taking
//! a project slot (at most [`MAX_CONCURRENT_CALLS`] at once). `state.apply` executes the plan
//! the master rendered for this agent with the state executor `apply --local` uses, its
//! `salt://` sources read from the files the master shipped with the call ([`files`]); the
//! other functions are Salt's cheap execution functions. Calls that start processes
//! (`state.apply`, `cmd.run`) run in a child process of their own session ([`child`]), so the
//! call's timeout stops every process it started. The return goes through the link's outbox,
//! which keeps it while the link is down and sends it on the next link.

pub mod child;
pub mod files;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use corpus_pillar::{DirTree, MemoryTree, SourceTree, TemplateContext};
use corpus_proto::{AgentMessage, OperatorCall, OperatorReturn, agent_message};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::jobs::JobContext;
use crate::state::cmd::{self, CommandSpec, OUTPUT_CAP_BYTES};
use crate::state::{Executor, LocalFileSources, Systemctl};

pub use child::CHILD_SUBCOMMAND;

/// Operator calls running at once; more wait for a free one (their timeout running).
pub const MAX_CONCURRENT_CALLS: usize = 4;
/// A call's limit when the master gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The functions this agent answers (besides `state.apply`), for the unknown-function error.
const FUNCTIONS: &[&str] = &[
    "state.apply",
    "state.show_sls",
    "test.ping",
    "test.echo",
    "test.version",
    "cmd.run",
    "grains.items",
    "grains.get",
];

/// One call as the agent runs it: the wire's `OperatorCall` read once at the edge, and what a
/// call's child process is given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Call {
    pub function: String,
    pub args: Vec<String>,
    pub kwargs: BTreeMap<String, String>,
    /// `state.apply`/`state.show_sls`: this agent's plan (corpus-states' Plan, as JSON).
    pub plan: Json,
    pub pillar: Json,
    pub test: bool,
    /// Where the `salt://` files shipped with the call were written; `None` when none were.
    pub file_root: Option<PathBuf>,
}

impl Call {
    fn from_wire(wire: &OperatorCall, file_root: Option<PathBuf>) -> Result<Call, String> {
        let json_of = |bytes: &[u8], what: &str, empty: Json| {
            if bytes.is_empty() {
                Ok(empty)
            } else {
                serde_json::from_slice(bytes)
                    .map_err(|e| format!("the master sent an unreadable {what}: {e}"))
            }
        };
        Ok(Call {
            function: wire.function.clone(),
            args: wire.args.clone(),
            kwargs: serde_json::from_slice(&wire.kwargs_json).unwrap_or_default(),
            plan: json_of(&wire.plan_json, "plan", Json::Null)?,
            pillar: json_of(&wire.pillar_json, "pillar", json!({}))?,
            test: wire.test,
            file_root,
        })
    }
}

fn slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS)))
        .clone()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The failure of a call stopped by its timeout.
fn timed_out(timeout: Duration, what: &str) -> String {
    format!(
        "the call did not end within its timeout of {}: {what}",
        humantime::format_duration(timeout)
    )
}

/// Runs one call and queues its return for the master. The timeout counts from the call's
/// arrival, as the master's does from sending it.
pub async fn run(ctx: Arc<JobContext>, wire: OperatorCall) {
    let started = now_ms();
    let timeout = match wire.timeout_seconds {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s)),
    };
    let deadline = Instant::now() + timeout;
    info!(run = %wire.run_id, function = %wire.function, by = %wire.requested_by, "operator call");
    let run_id = wire.run_id.clone();
    let outcome = match tokio::time::timeout_at(deadline, slots().acquire_owned()).await {
        Ok(Ok(_slot)) => perform(&ctx, wire, deadline, timeout).await,
        Ok(Err(_)) => return,
        Err(_) => Err(timed_out(timeout, "it waited for a free call slot")),
    };
    let (success, value, error) = match outcome {
        Ok((success, value)) => (success, value, String::new()),
        Err(why) => (false, Json::Null, why),
    };
    if !error.is_empty() {
        warn!(run = %run_id, %error, "operator call failed");
    }
    let ret = OperatorReturn {
        run_id,
        success,
        return_json: serde_json::to_vec(&value).unwrap_or_default(),
        error,
        started_unix_ms: started,
        finished_unix_ms: now_ms(),
    };
    let _ = ctx.outbox.send(AgentMessage {
        body: Some(agent_message::Body::OperatorReturn(ret)),
    });
}

/// The call's (success, return): its shipped files written, then run here or, when it starts
/// processes, in its own child. The files are removed when it ends.
async fn perform(
    ctx: &JobContext,
    mut wire: OperatorCall,
    deadline: Instant,
    timeout: Duration,
) -> Result<(bool, Json), String> {
    // `state.apply` always gets a file root, empty when nothing was shipped, so a missing
    // `salt://` source reads as not found (Salt's message), not as a missing setting.
    let shipped = if wire.files.is_empty() && wire.function != "state.apply" {
        None
    } else {
        let (state_dir, shipped) = (ctx.state_dir.clone(), std::mem::take(&mut wire.files));
        Some(
            tokio::task::spawn_blocking(move || files::write(&state_dir, &shipped))
                .await
                .map_err(|e| format!("the call's files could not be written: {e}"))??,
        )
    };
    let call = Call::from_wire(&wire, shipped.as_ref().map(|d| d.path().to_owned()))?;
    if child::starts_processes(&call.function) {
        child::run(&call, &ctx.grains, deadline, timeout).await
    } else {
        let grains = ctx.grains.clone();
        tokio::task::spawn_blocking(move || execute(&call, &grains))
            .await
            .map_err(|e| format!("the call failed: {e}"))?
    }
}

/// The call's (success, return), or why it could not run.
pub fn execute(call: &Call, grains: &Json) -> Result<(bool, Json), String> {
    match call.function.as_str() {
        "test.ping" => Ok((true, json!(true))),
        "test.echo" => Ok((true, json!(call.args.join(" ")))),
        "test.version" => Ok((true, json!(env!("CARGO_PKG_VERSION")))),
        "grains.items" => Ok((true, grains.clone())),
        "grains.get" => {
            let key = call
                .args
                .first()
                .ok_or("grains.get needs a KEY (nested keys joined with `:`)")?;
            let mut value = grains;
            for part in key.split(':') {
                value = value.get(part).unwrap_or(&Json::Null);
            }
            let value = if value.is_null() {
                json!("")
            } else {
                value.clone()
            };
            Ok((true, value))
        }
        "cmd.run" => cmd_run(call),
        "state.show_sls" => Ok((true, plan_of(call)?)),
        "state.apply" => state_apply(call, grains),
        other => Err(format!(
            "function {:?} is not available: this agent answers {}",
            other.chars().take(64).collect::<String>(),
            FUNCTIONS.join(", ")
        )),
    }
}

fn plan_of(call: &Call) -> Result<Json, String> {
    if call.plan.is_null() {
        return Err("the master sent no plan".into());
    }
    Ok(call.plan.clone())
}

/// Salt's `cmd.run`: the output (stdout, then stderr), as root; fails on a non-zero exit. The
/// call's timeout is enforced by whoever runs the call ([`child::run`] stops its processes).
fn cmd_run(call: &Call) -> Result<(bool, Json), String> {
    if call.args.is_empty() {
        return Err("cmd.run needs a command".into());
    }
    let kwargs = &call.kwargs;
    let spec = CommandSpec {
        command: call.args.join(" "),
        shell: kwargs
            .get("shell")
            .cloned()
            .unwrap_or_else(|| "/bin/sh".into()),
        cwd: kwargs.get("cwd").map_or_else(|| "/".into(), Into::into),
        env: Vec::new(),
        runas: None,
        timeout: None,
        output_cap: OUTPUT_CAP_BYTES,
    };
    let out = cmd::execute(&spec)?;
    let mut text = out.stdout.trim_end_matches('\n').to_owned();
    let stderr = out.stderr.trim_end_matches('\n');
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr);
    }
    Ok((out.retcode == 0 && !out.timed_out, json!(text)))
}

/// Executes the master's plan for this agent (Salt's `state.apply`, `test=True` honoured) and
/// returns Salt's per-state mapping. `salt://` sources are the files the master shipped with
/// the call; templates render here, with this agent's grains and pillar, as Salt's do.
fn state_apply(call: &Call, grains: &Json) -> Result<(bool, Json), String> {
    let plan: corpus_states::Plan = serde_json::from_value(call.plan.clone())
        .map_err(|e| format!("the master sent an unreadable plan: {e}"))?;
    let context = TemplateContext::new(
        call.pillar.clone(),
        grains.clone(),
        json!({}),
        json!(corpus_states::SALTENV),
    );
    let tree: Arc<dyn SourceTree> = match &call.file_root {
        Some(root) => Arc::new(DirTree::new(root)),
        None => Arc::new(MemoryTree::new()),
    };
    let renderer = crate::state::file_renderer(tree, context);
    let sources = LocalFileSources::new(call.file_root.clone(), Some(renderer));
    let services = Systemctl::default();
    let executor = Executor {
        test: call.test,
        sources: &sources,
        services: &services,
    };
    let report = executor.run(&plan);
    Ok((report.succeeded(), Json::Object(report.to_salt_map())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(function: &str, args: &[&str]) -> Call {
        Call {
            function: function.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn execution_functions_answer_in_salts_shape() -> Result<(), String> {
        let grains = json!({"id": "web1", "os": "Debian", "net": {"eth0": "10.0.0.1"}});
        assert_eq!(
            execute(&call("test.ping", &[]), &grains)?,
            (true, json!(true))
        );
        assert_eq!(
            execute(&call("grains.get", &["net:eth0"]), &grains)?,
            (true, json!("10.0.0.1"))
        );
        assert_eq!(execute(&call("grains.items", &[]), &grains)?.1, grains);
        assert_eq!(
            execute(&call("cmd.run", &["echo out; echo err >&2"]), &grains)?,
            (true, json!("out\nerr"))
        );
        assert!(!execute(&call("cmd.run", &["exit 3"]), &grains)?.0);
        let err = execute(&call("pkg.nope", &[]), &grains).err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("\"pkg.nope\"") && e.contains("test.ping")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn state_apply_runs_the_plan_and_honours_test() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let target = dir.path().join("motd");
        let plan = json!({"chunks": [{
            "id": "motd", "module": "file", "function": "managed",
            "name": target.display().to_string(), "sls": "motd",
            "args": {"name": target.display().to_string(), "contents": "hi {{ pillar.who }}",
                     "template": "jinja"},
            "requisites": []
        }]});
        let mut c = call("state.apply", &[]);
        c.plan = plan;
        c.pillar = json!({"who": "ops"});
        c.test = true;
        let (ok, map) = execute(&c, &json!({"id": "web1"}))?;
        assert!(ok, "{map}");
        assert!(!target.exists());
        c.test = false;
        let (ok, map) = execute(&c, &json!({"id": "web1"}))?;
        assert!(ok, "{map}");
        assert_eq!(
            std::fs::read_to_string(&target).map_err(|e| e.to_string())?,
            "hi ops\n"
        );
        let key = format!("file_|-motd_|-{}_|-managed", target.display());
        assert_eq!(map[&key]["result"], json!(true), "{map}");
        Ok(())
    }
}
