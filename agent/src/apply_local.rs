//! `corpus-agent apply --local`: Salt's masterless `salt-call --local state.apply`. Renders
//! for this machine with `corpus_states::render_for_agent` (the same function as the master's
//! `render`: pillar from a local pillar root, SLS from a local file root, this machine's
//! grains), executes the plan and prints Salt's highstate output (text or JSON).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use corpus_pillar::{DirTree, SourceTree, TemplateContext};
use corpus_states::{AgentRender, AgentRenderError, AgentTrees, render_on_host};
use serde_json::{Value, json};

use crate::state::{Executor, JinjaRenderer, KeyedResult, LocalFileSources, Report, Systemctl};

/// Exit status when the run completed but a state failed (Salt's `--retcode-passthrough` uses 2
/// for the same case); render and usage errors exit 1 through `main`.
pub const EXIT_STATE_FAILED: u8 = 2;

/// Output formats, like Salt's `--out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// Salt's highstate text: one block per state, then a summary.
    Text,
    /// Salt's JSON: `{"local": {state key: result}}`.
    Json,
}

/// `corpus-agent apply`: apply state files on this machine.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// Masterless: render and apply from local file and pillar roots. Required for now:
    /// master-driven applies go through `corpus push`.
    #[arg(long)]
    pub local: bool,
    /// The state tree (Salt's file_roots): `top.sls`, `*.sls` and `salt://` sources.
    #[arg(long, value_name = "DIR", default_value = "/srv/salt")]
    pub file_root: PathBuf,
    /// The pillar tree (Salt's pillar_roots); a missing directory means an empty pillar.
    #[arg(long, value_name = "DIR", default_value = "/srv/pillar")]
    pub pillar_root: PathBuf,
    /// This agent's id for top.sls targeting and `grains.id` (default: the host name).
    #[arg(long)]
    pub id: Option<String>,
    /// Salt's test=True: change nothing, show what would change.
    #[arg(long)]
    pub test: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutFormat::Text)]
    pub out: OutFormat,
    /// SLS to apply (dotted names, e.g. `web.nginx`); none applies the highstate from top.sls.
    #[arg(value_name = "SLS")]
    pub sls: Vec<String>,
}

fn host_name() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --id given and the host name cannot be read: pass --id")?;
    Ok(host.trim().to_string())
}

/// This machine's grains, with Salt's names for the common ones (`host`, `num_cpus`,
/// `kernelrelease`) alongside the agent's own.
fn local_grains(id: &str) -> Value {
    let mut grains = crate::grains::to_json(&crate::grains::collect(id, 0));
    if let Value::Object(map) = &mut grains {
        let hostname = map.get("hostname").cloned().unwrap_or(Value::Null);
        let short = hostname
            .as_str()
            .and_then(|h| h.split('.').next())
            .map(str::to_string);
        map.entry("host").or_insert_with(|| json!(short));
        map.entry("fqdn").or_insert(hostname);
        let cpus = map.get("cpus").cloned().unwrap_or(Value::Null);
        map.entry("num_cpus").or_insert(cpus);
        let kernel = map.get("kernel").cloned().unwrap_or(Value::Null);
        map.entry("kernelrelease").or_insert(kernel);
    }
    grains
}

/// A Jinja renderer for `file.managed` templates: the one the lifecycle uses too
/// ([`crate::state::file_renderer`]), so `tpldir` and imports behave the same on push.
fn file_renderer(tree: Arc<dyn SourceTree>, ctx: TemplateContext) -> JinjaRenderer {
    crate::state::file_renderer(tree, ctx)
}

/// Runs `corpus-agent apply`, printing to stdout; exit 0 only when every state succeeded.
pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    run_to(args, &mut std::io::stdout().lock())
}

/// Like [`run`], writing the output to `out`.
pub fn run_to(args: ApplyArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    if !args.local {
        bail!(
            "apply needs --local: master-driven applies go through `corpus push` (this command \
             applies a local file root on this machine)"
        );
    }
    if !args.file_root.is_dir() {
        bail!(
            "file root {} is not a directory: pass --file-root DIR (Salt's file_roots)",
            args.file_root.display()
        );
    }
    let id = match args.id.clone() {
        Some(id) => id,
        None => host_name()?,
    };
    let started = Instant::now();
    let grains = local_grains(&id);
    let tree: Arc<dyn SourceTree> = Arc::new(DirTree::new(&args.file_root));
    // Rendering runs on this machine, so `salt['cmd.run']`, `user.info`, ... may ask it.
    let trees = AgentTrees {
        file_root: tree.clone(),
        pillar_root: Arc::new(DirTree::new(&args.pillar_root)),
    }
    .on_host(Arc::new(crate::state::host_functions::LocalHost));
    let AgentRender {
        rendered,
        context: ctx,
        ..
    } = render_on_host(&trees, &id, grains, &args.sls).map_err(|e| match e {
        AgentRenderError::Pillar(e) => anyhow::anyhow!(
            "cannot compile the pillar from {}: {e}",
            args.pillar_root.display()
        ),
        AgentRenderError::State(e) => anyhow::anyhow!("{e}"),
    })?;
    tracing::debug!(states = rendered.plan.chunks.len(), sls = ?rendered.sls, "plan rendered");

    let sources =
        LocalFileSources::new(Some(args.file_root.clone()), Some(file_renderer(tree, ctx)));
    let services = Systemctl::default();
    let executor = Executor {
        test: args.test,
        sources: &sources,
        services: &services,
    };
    let report = executor.run(&rendered.plan);
    tracing::debug!(elapsed = ?started.elapsed(), "apply finished");

    let text = match args.out {
        OutFormat::Text => format_text(&report, args.test),
        OutFormat::Json => format_json(&report)?,
    };
    out.write_all(text.as_bytes())
        .context("cannot write the output")?;
    out.flush().context("cannot write the output")?;
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_STATE_FAILED)
    })
}

/// Salt's JSON output for a masterless run.
pub fn format_json(report: &Report) -> anyhow::Result<String> {
    let out = json!({ "local": Value::Object(report.to_salt_map()) });
    let mut text = serde_json::to_string_pretty(&out).context("cannot serialise the results")?;
    text.push('\n');
    Ok(text)
}

/// Salt's nested outputter, as used for `Changes:`: maps open with `----------`, each key on
/// its own line, values indented four more columns below it.
fn write_nested(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            let _ = writeln!(out, "{pad}----------");
            for (key, v) in map {
                let _ = writeln!(out, "{pad}{key}:");
                write_nested(out, v, indent + 4);
            }
        }
        Value::Array(items) => {
            for item in items {
                let _ = writeln!(out, "{pad}- {}", scalar(item));
            }
        }
        Value::String(s) => {
            for line in s.lines() {
                let _ = writeln!(out, "{pad}{line}");
            }
            if s.is_empty() {
                let _ = writeln!(out);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn format_duration(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:>7.3} s", ms / 1000.0)
    } else {
        format!("{ms:>7.3} ms")
    }
}

fn write_state(out: &mut String, r: &KeyedResult) {
    let s = &r.result;
    let label = |out: &mut String, name: &str, value: &str| {
        let mut lines = value.lines();
        let _ = writeln!(out, "{name:>12}: {}", lines.next().unwrap_or(""));
        for line in lines {
            let _ = writeln!(out, "{:14}{line}", "");
        }
    };
    let _ = writeln!(out, "----------");
    label(out, "ID", &s.id);
    label(out, "Function", &r.function);
    label(out, "Name", &s.name);
    label(
        out,
        "Result",
        &scalar(&s.result.map_or(Value::Null, Value::Bool)),
    );
    label(out, "Comment", &s.comment);
    label(out, "Started", &s.start_time);
    label(out, "Duration", &format!("{} ms", s.duration));
    if s.changes.is_empty() {
        let _ = writeln!(out, "{:>12}:", "Changes");
    } else {
        let _ = writeln!(out, "{:>12}:   ", "Changes");
        write_nested(out, &Value::Object(s.changes.clone()), 14);
    }
}

/// Salt's highstate text output for a masterless run.
pub fn format_text(report: &Report, test: bool) -> String {
    let mut out = String::with_capacity(512 * report.results.len() + 256);
    out.push_str("local:\n");
    for r in &report.results {
        write_state(&mut out, r);
    }
    let (ok, changed) = report.succeeded_counts();
    let unchanged = report
        .results
        .iter()
        .filter(|r| r.result.result.is_none())
        .count();
    let detail = if test && unchanged > 0 {
        format!("(unchanged={unchanged}, changed={changed})")
    } else {
        format!("(changed={changed})")
    };
    let _ = write!(
        out,
        "\nSummary for local\n------------\nSucceeded: {ok} {detail}\nFailed:    {}\n------------\n\
         Total states run: {:>5}\nTotal run time: {}\n",
        report.failed(),
        report.results.len(),
        format_duration(report.total_duration()),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::StateResult;

    fn keyed(id: &str, result: Option<bool>, changes: Value, comment: &str) -> KeyedResult {
        KeyedResult {
            key: format!("file_|-{id}_|-/tmp/{id}_|-managed"),
            function: "file.managed".into(),
            result: StateResult {
                name: format!("/tmp/{id}"),
                result,
                changes: changes.as_object().cloned().unwrap_or_default(),
                comment: comment.into(),
                duration: 1.5,
                start_time: "10:00:00.000001".into(),
                run_num: 0,
                id: id.into(),
                sls: "motd".into(),
            },
        }
    }

    #[test]
    fn text_output_follows_salts_highstate_layout() {
        let report = Report {
            results: vec![
                keyed(
                    "a",
                    Some(true),
                    json!({"diff": "New file", "mode": "0644"}),
                    "File /tmp/a updated",
                ),
                keyed(
                    "b",
                    Some(false),
                    json!({}),
                    "One or more requisite failed:\nmotd.a",
                ),
            ],
        };
        let text = format_text(&report, false);
        let expected = "local:
----------
          ID: a
    Function: file.managed
        Name: /tmp/a
      Result: True
     Comment: File /tmp/a updated
     Started: 10:00:00.000001
    Duration: 1.5 ms
     Changes:   
              ----------
              diff:
                  New file
              mode:
                  0644
----------
          ID: b
    Function: file.managed
        Name: /tmp/b
      Result: False
     Comment: One or more requisite failed:
              motd.a
     Started: 10:00:00.000001
    Duration: 1.5 ms
     Changes:

Summary for local
------------
Succeeded: 1 (changed=1)
Failed:    1
------------
Total states run:     2
Total run time:   3.000 ms
";
        assert_eq!(text, expected);
    }

    #[test]
    fn test_mode_summary_counts_unchanged_states() {
        let report = Report {
            results: vec![
                keyed("a", None, json!({"newfile": "/tmp/a"}), "would change"),
                keyed("b", Some(true), json!({}), "ok"),
            ],
        };
        let text = format_text(&report, true);
        assert!(text.contains("      Result: None\n"), "{text}");
        assert!(
            text.contains("Succeeded: 2 (unchanged=1, changed=1)\n"),
            "{text}"
        );
    }

    #[test]
    fn json_output_is_keyed_by_state_under_local() {
        let report = Report {
            results: vec![keyed("a", Some(true), json!({}), "ok")],
        };
        let text = format_json(&report).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let r = &v["local"]["file_|-a_|-/tmp/a_|-managed"];
        assert_eq!(r["result"], true);
        assert_eq!(r["__run_num__"], 0);
        assert_eq!(r["__sls__"], "motd");
    }

    #[test]
    fn apply_without_local_points_at_corpus_push() {
        let args = ApplyArgs {
            local: false,
            file_root: "/nonexistent".into(),
            pillar_root: "/nonexistent".into(),
            id: Some("t".into()),
            test: false,
            out: OutFormat::Text,
            sls: vec![],
        };
        let err = run(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("corpus push"), "{err}");
    }

    fn apply(root: &Path, pillar: &Path, test: bool, sls: &[&str]) -> (ExitCode, String) {
        let args = ApplyArgs {
            local: true,
            file_root: root.to_path_buf(),
            pillar_root: pillar.to_path_buf(),
            id: Some("web1".into()),
            test,
            out: OutFormat::Json,
            sls: sls.iter().map(|s| s.to_string()).collect(),
        };
        match run_to(args, &mut Vec::new()) {
            Ok(code) => (code, String::new()),
            Err(e) => (ExitCode::FAILURE, e.to_string()),
        }
    }

    #[test]
    fn apply_renders_with_pillar_and_grains_and_a_templated_source() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (root, pillar, out) = (
            dir.path().join("salt"),
            dir.path().join("pillar"),
            dir.path().join("out"),
        );
        for d in [&root, &pillar, &root.join("app")] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let write = |p: PathBuf, t: String| std::fs::write(p, t).unwrap_or_else(|e| panic!("{e}"));
        write(pillar.join("top.sls"), "base:\n  '*':\n    - app\n".into());
        write(pillar.join("app.sls"), "app:\n  port: 8080\n".into());
        write(root.join("top.sls"), "base:\n  'web*':\n    - app\n".into());
        write(
            root.join("app/conf.j2"),
            "port={{ pillar.app.port }} id={{ grains.id }} n={{ n }}\n".into(),
        );
        write(
            root.join("app/init.sls"),
            format!(
                "{out}/app.conf:\n  file.managed:\n    - source: salt://app/conf.j2\n    - template: jinja\n    - makedirs: True\n    - context:\n        n: 3\n",
                out = out.display()
            ),
        );
        let (code, err) = apply(&root, &pillar, true, &[]);
        assert_eq!((code, err.as_str()), (ExitCode::SUCCESS, ""));
        assert!(!out.exists());
        let (code, err) = apply(&root, &pillar, false, &[]);
        assert_eq!((code, err.as_str()), (ExitCode::SUCCESS, ""));
        let text = std::fs::read_to_string(out.join("app.conf")).unwrap_or_default();
        assert_eq!(text, "port=8080 id=web1 n=3\n");
        let (code, err) = apply(&root, &pillar, false, &["nope"]);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(err.contains("sls 'nope' not found"), "{err}");
    }
}
