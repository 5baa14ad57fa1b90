//! Salt's `cmd.wait` (runs only as a watch action) and `cmd.script` (a script from `source`,
//! optionally a Jinja template, run with `args`). Both hand the actual run to `cmd.run`, so
//! guards, `runas`, `cwd`, test mode and the output fields are the same.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use corpus_states::Chunk;
use serde_json::{Map, Value};

use super::StateContext;
use super::args::Args;
use super::cmd;
use super::result::Outcome;

/// `cmd.wait` on its own: nothing to do until a watched state changes.
pub fn wait(_chunk: &Chunk, _ctx: &StateContext) -> Result<Outcome, String> {
    Ok(Outcome::ok(""))
}

/// `cmd.script`: fetches `source` (default: the name), renders it when `template: jinja`,
/// and runs it with `args` like `cmd.run` would run a command.
pub fn script(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    if ctx.test {
        // Salt's `cmd.script` in test mode: no `changes` (unlike `cmd.run`), the name in single
        // quotes, and the source is not fetched.
        return Ok(Outcome::pending(format!(
            "Command '{}' would have been executed",
            chunk.name
        )));
    }
    let source = args.string("source")?.unwrap_or_else(|| {
        chunk
            .name
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let bytes = ctx
        .sources
        .read(&source)?
        .ok_or_else(|| format!("Source file {source} not found"))?;
    let body = match args.string("template")?.as_deref() {
        None => bytes,
        Some("jinja") => {
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("template {source} is not UTF-8 text"))?;
            let extra = match args.raw("context") {
                Some(Value::Object(map)) => map.clone(),
                _ => Map::new(),
            };
            ctx.sources
                .render_jinja(&source, &text, &extra)?
                .into_bytes()
        }
        Some(other) => {
            return Err(format!(
                "template {other:?} is not supported: corpus renders jinja only"
            ));
        }
    };
    // World-readable and executable: `runas` users run it too. Removed when the run ends.
    let mut file = tempfile::Builder::new()
        .prefix("corpus-script-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempfile()
        .map_err(|e| format!("cannot create a temporary script: {e}"))?;
    file.write_all(&body)
        .map_err(|e| format!("cannot write the temporary script: {e}"))?;
    let path = file.into_temp_path();
    let mut command = path.display().to_string();
    if let Some(extra) = args.string("args")? {
        command.push(' ');
        command.push_str(&extra);
    }
    let mut run_chunk = chunk.clone();
    run_chunk.name = command;
    for key in ["source", "template", "args", "context"] {
        run_chunk.args.remove(key);
    }
    let mut outcome = cmd::run(&run_chunk, ctx)?;
    // Report the script by the name the sls gave it, not its temporary path, quoted as Salt's
    // `cmd.script` quotes it.
    outcome.comment = outcome.comment.replace(
        &format!("\"{}\"", run_chunk.name),
        &format!("'{}'", chunk.name),
    );
    outcome.comment = outcome.comment.replace(&run_chunk.name, &chunk.name);
    if let Some(Value::String(cmd)) = outcome.changes.get_mut("cmd") {
        *cmd = chunk.name.clone();
    }
    drop(path);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn script_runs_a_rendered_source_with_args() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("hello.sh"),
            "#!/bin/sh\necho \"{{ greeting }} $1\"\n",
        )
        .unwrap();
        let (src, svc) = (sources(dir.path(), json!({})), FakeServices::default());
        let c = chunk(
            "cmd.script",
            "hello",
            json!({"source": "salt://hello.sh", "template": "jinja", "args": "world",
                   "context": {"greeting": "hi"}}),
        );
        let out = script(&c, &ctx(false, &src, &svc)).unwrap_or_else(Outcome::fail);
        assert_eq!(out.result, Some(true), "{}", out.comment);
        assert_eq!(out.changes["stdout"], json!("hi world"));
        assert_eq!(out.comment, "Command 'hello' run");
        // Salt 3008's cmd.script in test mode: no changes (the parity fixture
        // `accumulated_script` checks it against salt-call).
        let test = script(&c, &ctx(true, &src, &svc)).unwrap_or_else(Outcome::fail);
        assert_eq!(test.result, None);
        assert!(test.changes.is_empty(), "{:?}", test.changes);
        assert_eq!(test.comment, "Command 'hello' would have been executed");
        let missing = chunk("cmd.script", "x", json!({"source": "salt://nope.sh"}));
        let out = script(&missing, &ctx(false, &src, &svc)).unwrap_or_else(Outcome::fail);
        assert_eq!(out.comment, "Source file salt://nope.sh not found");
    }
}
