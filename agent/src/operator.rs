//! Operator calls (`corpus-master apply|run`, PRODUCT.md "Two kinds of state runs"): run as
//! root, outside any environment, with the full module set, beside project jobs without taking
//! a project slot (at most [`MAX_CONCURRENT_CALLS`] at once). `state.apply` executes the plan
//! the master rendered for this agent with the state executor `apply --local` uses; the other
//! functions are Salt's cheap execution functions. The return goes through the link's outbox,
//! which keeps it while the link is down and sends it on the next link.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use corpus_pillar::{MemoryTree, TemplateContext};
use corpus_proto::{AgentMessage, OperatorCall, OperatorReturn, agent_message};
use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::jobs::JobContext;
use crate::state::cmd::{self, CommandSpec, OUTPUT_CAP_BYTES};
use crate::state::{Executor, LocalFileSources, Systemctl};

/// Operator calls running at once; more wait for a free one.
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

/// Runs one call and queues its return for the master.
pub async fn run(ctx: Arc<JobContext>, call: OperatorCall) {
    let Ok(_slot) = slots().acquire_owned().await else {
        return;
    };
    let started = now_ms();
    info!(run = %call.run_id, function = %call.function, by = %call.requested_by, "operator call");
    let timeout = match call.timeout_seconds {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s)),
    };
    let run_id = call.run_id.clone();
    let grains = ctx.grains.clone();
    let work = tokio::task::spawn_blocking(move || execute(&call, &grains));
    let (success, value, error) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(Ok((success, value)))) => (success, value, String::new()),
        Ok(Ok(Err(why))) => (false, Json::Null, why),
        Ok(Err(e)) => (false, Json::Null, format!("the call failed: {e}")),
        // The blocking work cannot be interrupted; it ends on its own, its result unsent.
        Err(_) => (
            false,
            Json::Null,
            format!(
                "the call did not end within {}",
                humantime::format_duration(timeout)
            ),
        ),
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

/// The call's (success, return), or why it could not run.
fn execute(call: &OperatorCall, grains: &Json) -> Result<(bool, Json), String> {
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

fn plan_of(call: &OperatorCall) -> Result<Json, String> {
    serde_json::from_slice(&call.plan_json)
        .map_err(|e| format!("the master sent an unreadable plan: {e}"))
}

/// Salt's `cmd.run`: the output (stdout, then stderr), as root; fails on a non-zero exit.
fn cmd_run(call: &OperatorCall) -> Result<(bool, Json), String> {
    if call.args.is_empty() {
        return Err("cmd.run needs a command".into());
    }
    let kwargs: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&call.kwargs_json).unwrap_or_default();
    let spec = CommandSpec {
        command: call.args.join(" "),
        shell: kwargs
            .get("shell")
            .cloned()
            .unwrap_or_else(|| "/bin/sh".into()),
        cwd: kwargs.get("cwd").map_or_else(|| "/".into(), Into::into),
        env: Vec::new(),
        runas: None,
        timeout: (call.timeout_seconds > 0)
            .then(|| Duration::from_secs(u64::from(call.timeout_seconds))),
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
/// returns Salt's per-state mapping.
fn state_apply(call: &OperatorCall, grains: &Json) -> Result<(bool, Json), String> {
    let plan: corpus_states::Plan = serde_json::from_slice(&call.plan_json)
        .map_err(|e| format!("the master sent an unreadable plan: {e}"))?;
    let pillar: Json = if call.pillar_json.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&call.pillar_json)
            .map_err(|e| format!("the master sent an unreadable pillar: {e}"))?
    };
    // `template: jinja` contents render with this agent's pillar and grains; `salt://`
    // sources are not served to operator runs yet.
    let context = TemplateContext::new(
        pillar,
        grains.clone(),
        json!({}),
        json!(corpus_states::SALTENV),
    );
    let renderer = crate::state::file_renderer(Arc::new(MemoryTree::new()), context);
    let sources = LocalFileSources::new(None, Some(renderer));
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

    fn call(function: &str, args: &[&str]) -> OperatorCall {
        OperatorCall {
            run_id: "r1".into(),
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
        c.plan_json = serde_json::to_vec(&plan).map_err(|e| e.to_string())?;
        c.pillar_json = br#"{"who": "ops"}"#.to_vec();
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
