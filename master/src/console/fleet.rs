//! `corpus-master apply TARGET [SLS ...]` and `corpus-master run TARGET FUNCTION [ARG ...]`:
//! operator runs on every agent a target selects (Salt's `salt TARGET state.apply` and
//! `salt TARGET FUNCTION`). Prints each agent's return as it arrives (Salt's highstate summary
//! for `apply`), then a total line; fails unless every targeted agent succeeded.

use std::time::Duration;

use corpus_proto::{RunAgentReturn, RunRef, RunSummary, StartRunRequest, run_event};
use serde_json::{Value, json};

use super::{Console, printable, rpc};

/// Salt's target types; at most one (none: a glob on the agent id).
#[derive(clap::Args, Debug, Clone, Default)]
#[group(multiple = false)]
pub struct TargetKind {
    /// TARGET is a comma-separated list of agent ids.
    #[arg(short = 'L', long = "list")]
    pub list: bool,
    /// TARGET is a regular expression on the agent id.
    #[arg(short = 'E', long = "pcre")]
    pub pcre: bool,
    /// TARGET is GRAIN:GLOB (nested keys joined with `:`).
    #[arg(short = 'G', long = "grain")]
    pub grain: bool,
    /// TARGET is PILLAR:GLOB, on each agent's pillar from pillar_root's top.sls.
    #[arg(short = 'I', long = "pillar")]
    pub pillar: bool,
    /// TARGET is a compound expression: `G@os:Debian and web* or L@a,b`, `not`, `( )`.
    #[arg(short = 'C', long = "compound")]
    pub compound: bool,
    /// TARGET names a nodegroup of the master's config file.
    #[arg(short = 'N', long = "nodegroup")]
    pub nodegroup: bool,
}

impl TargetKind {
    fn name(&self) -> &'static str {
        let kinds = [
            (self.list, "list"),
            (self.pcre, "pcre"),
            (self.grain, "grain"),
            (self.pillar, "pillar"),
            (self.compound, "compound"),
            (self.nodegroup, "nodegroup"),
        ];
        kinds
            .iter()
            .find(|(set, _)| *set)
            .map_or("glob", |(_, name)| name)
    }
}

/// How a run is driven, shared by `apply` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// At most this many agents at once, `N` or `N%` (the next starts as soon as one returns).
    #[arg(long, short = 'b')]
    pub batch: Option<String>,
    /// How long to wait for each agent's return (default 10m for apply, 60s for run).
    #[arg(long, short = 't', value_parser = corpus_runtime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print the run id and return at once (`corpus-master jobs show RUN_ID` later).
    #[arg(long = "async")]
    pub run_async: bool,
}

/// `corpus-master apply`.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub kind: TargetKind,
    /// Which agents (a glob on the id unless a target type flag says otherwise).
    pub target: String,
    /// SLS to apply; none applies the highstate from the file_root's top.sls.
    pub sls: Vec<String>,
    /// Salt's test=True: report what would change, change nothing.
    #[arg(long)]
    pub test: bool,
    #[command(flatten)]
    pub options: RunOptions,
}

/// `corpus-master run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub kind: TargetKind,
    /// Which agents (a glob on the id unless a target type flag says otherwise).
    pub target: String,
    /// The execution function: test.ping, cmd.run, grains.items, grains.get, state.show_sls, ...
    pub function: String,
    /// Positional arguments, and KEY=VALUE keyword arguments (after `--` when one starts
    /// with `-`).
    pub args: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

/// Who the run is recorded for: the operator behind sudo, or the console's user.
fn operator_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "root".to_owned())
}

/// A KEY=VALUE argument (KEY an identifier), as Salt's CLI reads it.
fn keyword(arg: &str) -> Option<(String, String)> {
    let (key, value) = arg.split_once('=')?;
    let is_identifier = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    is_identifier.then(|| (key.to_owned(), value.to_owned()))
}

pub async fn apply(args: ApplyArgs, console: &Console) -> anyhow::Result<()> {
    let request = StartRunRequest {
        target: args.target,
        target_type: args.kind.name().to_owned(),
        function: "state.apply".to_owned(),
        args: args.sls,
        test: args.test,
        ..Default::default()
    };
    start(request, &args.options, console).await
}

pub async fn run(args: RunArgs, console: &Console) -> anyhow::Result<()> {
    let (mut positional, mut kwargs) = (Vec::new(), std::collections::HashMap::new());
    for arg in args.args {
        match keyword(&arg) {
            Some((key, value)) => {
                kwargs.insert(key, value);
            }
            None => positional.push(arg),
        }
    }
    let test = kwargs
        .get("test")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let request = StartRunRequest {
        target: args.target,
        target_type: args.kind.name().to_owned(),
        function: args.function,
        args: positional,
        kwargs,
        test,
        ..Default::default()
    };
    start(request, &args.options, console).await
}

async fn start(
    mut request: StartRunRequest,
    options: &RunOptions,
    console: &Console,
) -> anyhow::Result<()> {
    request.batch = options.batch.clone().unwrap_or_default();
    request.timeout_seconds = match options.timeout {
        Some(t) if t.as_secs() == 0 || t.as_secs() > u64::from(u32::MAX) => {
            anyhow::bail!("--timeout {t:?} is out of range: give at least 1s")
        }
        Some(t) => t.as_secs() as u32,
        None => 0,
    };
    request.user = operator_name();
    let function = request.function.clone();
    let mut client = console.admin().await?;
    let started = client.start_run(request).await.map_err(rpc)?.into_inner();
    let run_id = started.run_id;
    if options.run_async {
        if console.json {
            println!(
                "{}",
                json!({"run_id": run_id, "targeted": started.targeted})
            );
        } else {
            println!("{run_id}");
        }
        return Ok(());
    }
    let mut stream = client
        .follow_run(RunRef {
            run_id: run_id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut summary = None;
    while let Some(event) = stream.message().await.map_err(rpc)? {
        match event.body {
            Some(run_event::Body::AgentReturn(ret)) => {
                if console.json {
                    println!("{}", return_json(&ret));
                } else {
                    print!("{}", format_return(&function, &ret));
                }
            }
            Some(run_event::Body::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    let summary = summary
        .ok_or_else(|| anyhow::anyhow!("the master ended run {run_id} without a summary"))?;
    if !console.json {
        println!("{}", total_line(&summary));
    }
    if summary.succeeded != summary.targeted {
        anyhow::bail!(
            "{} of {} targeted agents did not succeed (see `corpus-master jobs show {run_id}`)",
            summary.targeted - summary.succeeded,
            summary.targeted
        );
    }
    Ok(())
}

/// One agent's return as the `--json` line prints it.
pub fn return_json(ret: &RunAgentReturn) -> Value {
    json!({
        "agent": ret.agent,
        "status": ret.status,
        "return": serde_json::from_slice::<Value>(&ret.return_json).unwrap_or(Value::Null),
        "error": ret.error,
        "started_unix_ms": ret.started_unix_ms,
        "finished_unix_ms": ret.finished_unix_ms,
    })
}

/// `Total: ...`, the last line of a run's text output.
pub fn total_line(s: &RunSummary) -> String {
    let mut line = format!(
        "Total: {} targeted, {} succeeded, {} failed",
        s.targeted, s.succeeded, s.failed
    );
    if s.not_connected > 0 {
        line.push_str(&format!(" ({} not connected)", s.not_connected));
    }
    if s.status == "interrupted" {
        line.push_str("; the run was interrupted by a master restart");
    }
    line
}

/// One agent's block of text output: Salt's highstate summary for state.apply, the return
/// itself otherwise. Every line is made printable.
pub fn format_return(function: &str, ret: &RunAgentReturn) -> String {
    let mut lines = vec![format!("{}:", ret.agent)];
    let value = serde_json::from_slice::<Value>(&ret.return_json).ok();
    if !ret.error.is_empty() || value.is_none() {
        let why = if ret.error.is_empty() {
            "no return"
        } else {
            &ret.error
        };
        for (i, line) in why.lines().enumerate() {
            if i == 0 {
                lines.push(format!("    {}: {line}", ret.status));
            } else {
                lines.push(format!("      {line}"));
            }
        }
    }
    match (function, value) {
        ("state.apply", Some(Value::Object(states))) => {
            lines.extend(highstate_summary(&ret.agent, &states))
        }
        (_, Some(value)) if ret.error.is_empty() => {
            let text = match &value {
                Value::String(s) => s.clone(),
                Value::Bool(true) => "True".into(),
                Value::Bool(false) => "False".into(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            lines.extend(text.lines().map(|l| format!("    {l}")));
        }
        _ => {}
    }
    let mut out = String::new();
    for line in lines {
        out.push_str(&printable(&line));
        out.push('\n');
    }
    out
}

/// Salt's `Summary for AGENT` block, with each failing state's id and comment.
fn highstate_summary(agent: &str, states: &serde_json::Map<String, Value>) -> Vec<String> {
    let (mut succeeded, mut changed, mut failed) = (0, 0, Vec::new());
    let mut ordered: Vec<(&String, &Value)> = states.iter().collect();
    ordered.sort_by_key(|(_, v)| v.get("__run_num__").and_then(Value::as_u64).unwrap_or(0));
    for (key, state) in ordered {
        let has_changes = state
            .get("changes")
            .and_then(Value::as_object)
            .is_some_and(|c| !c.is_empty());
        if state.get("result") == Some(&Value::Bool(false)) {
            let id = state
                .get("__id__")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| key.split("_|-").nth(1).unwrap_or(key).to_owned());
            let comment = state.get("comment").and_then(Value::as_str).unwrap_or("");
            failed.push(format!(
                "    - {id}: {}",
                comment.lines().next().unwrap_or("")
            ));
        } else {
            succeeded += 1;
            changed += usize::from(has_changes);
        }
    }
    let mut lines = vec![
        format!("  Summary for {agent}"),
        "  ------------".into(),
        format!("  Succeeded: {succeeded} (changed={changed})"),
        format!("  Failed:    {}", failed.len()),
    ];
    if !failed.is_empty() {
        lines.push("  Failed states:".into());
        lines.extend(failed);
    }
    lines.push("  ------------".into());
    lines.push(format!("  Total states run: {}", states.len()));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_arguments_are_identifiers_before_an_equals_sign() {
        assert_eq!(keyword("cwd=/tmp"), Some(("cwd".into(), "/tmp".into())));
        assert_eq!(keyword("echo a=b"), None);
        assert_eq!(keyword("=x"), None);
        assert_eq!(keyword("1a=x"), None);
        assert_eq!(keyword("plain"), None);
    }

    #[test]
    fn a_highstate_return_prints_salts_summary_with_the_failing_ids() {
        let states = json!({
            "file_|-conf_|-/etc/a_|-managed": {"result": true, "changes": {"diff": "new"},
                "comment": "written", "__run_num__": 0, "__id__": "conf"},
            "cmd_|-boom_|-false_|-run": {"result": false, "changes": {},
                "comment": "Command \"false\" run\nmore", "__run_num__": 1},
            "test_|-ok_|-ok_|-nop": {"result": true, "changes": {}, "comment": "", "__run_num__": 2},
        });
        let ret = RunAgentReturn {
            agent: "web1".into(),
            status: "failed".into(),
            return_json: serde_json::to_vec(&states).unwrap_or_default(),
            ..Default::default()
        };
        let text = format_return("state.apply", &ret);
        assert!(text.starts_with("web1:\n  Summary for web1\n"), "{text}");
        assert!(text.contains("Succeeded: 2 (changed=1)\n"), "{text}");
        assert!(text.contains("Failed:    1\n"), "{text}");
        assert!(
            text.contains("    - boom: Command \"false\" run\n"),
            "{text}"
        );
        assert!(text.contains("Total states run: 3\n"), "{text}");
    }

    #[test]
    fn errors_and_control_characters_are_printed_escaped() {
        let ret = RunAgentReturn {
            agent: "db\u{1b}[2J1".into(),
            status: "not connected".into(),
            error: "agent db1 is not connected".into(),
            ..Default::default()
        };
        let text = format_return("test.ping", &ret);
        assert_eq!(
            text,
            "db\\u{1b}[2J1:\n    not connected: agent db1 is not connected\n"
        );
    }
}
