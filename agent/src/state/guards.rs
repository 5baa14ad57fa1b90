//! Salt's `onlyif` / `unless` guards: a boolean, a shell command (holds when it exits 0), or
//! the `fun:` form, an execution function called with `args:` (and keyword arguments) whose
//! result holds when truthy, optionally narrowed with `get_return: a:b`. The functions are the
//! ones corpus answers on this machine ([`LocalHost`]); any other is refused naming it.

use corpus_pillar::template::{HostFunctions, PathKind};
use serde_json::{Map, Value};

use super::cmd::{CommandSpec, execute};
use super::host_functions::LocalHost;

/// How long a `cmd.retcode` guard may take.
const GUARD_FUNCTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Execution functions the `fun:` form may call.
pub const GUARD_FUNCTIONS: &[&str] = &[
    "cmd.retcode",
    "cmd.run",
    "cmd.which",
    "file.directory_exists",
    "file.exists",
    "file.file_exists",
    "pkg.version",
    "test.false",
    "test.true",
    "user.info",
];

/// Whether guard `key` holds: `None` when the state has none. Every entry of a list must hold.
/// `run_command` runs a shell command the way the state would (its `cwd`, `runas`, `env`) and
/// returns its exit code.
pub fn guard_holds(
    args: &Map<String, Value>,
    key: &str,
    run_command: &dyn Fn(&str) -> Result<i32, String>,
) -> Result<Option<bool>, String> {
    let entries = match args.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
    };
    for entry in entries {
        let holds = match entry {
            Value::Null => continue,
            Value::Bool(b) => *b,
            Value::String(command) => run_command(command)? == 0,
            Value::Number(n) => run_command(&n.to_string())? == 0,
            Value::Object(call) => truthy(&call_function(key, call)?),
            Value::Array(_) => {
                return Err(format!(
                    "`{key}` entries must be commands or `fun:` mappings, got a nested list"
                ));
            }
        };
        if !holds {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

/// Salt's `mod_run_check` for states other than `cmd` (which run guards with their own `cwd`
/// and `runas`): why the state is skipped, or `None` to run it. Commands run with `/bin/sh`
/// from `/`.
pub fn skip_reason(args: &Map<String, Value>) -> Result<Option<String>, String> {
    let creates: Vec<&str> = match args.get("creates") {
        Some(Value::String(path)) => vec![path.as_str()],
        Some(Value::Array(paths)) => paths.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !creates.is_empty() && creates.iter().all(|p| std::path::Path::new(p).exists()) {
        return Ok(Some("All files in creates exist".to_string()));
    }
    let run = |command: &str| -> Result<i32, String> {
        execute(&CommandSpec {
            command: command.to_string(),
            shell: "/bin/sh".to_string(),
            cwd: "/".into(),
            env: Vec::new(),
            runas: None,
            timeout: Some(GUARD_FUNCTION_TIMEOUT),
            output_cap: crate::state::cmd::OUTPUT_CAP_BYTES,
        })
        .map(|out| out.retcode)
    };
    if guard_holds(args, "onlyif", &run)? == Some(false) {
        return Ok(Some("onlyif condition is false".to_string()));
    }
    if guard_holds(args, "unless", &run)? == Some(true) {
        return Ok(Some("unless condition is true".to_string()));
    }
    Ok(None)
}

/// Python's truthiness, as Salt tests a function's result.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Calls the `fun:` entry of guard `key`.
fn call_function(key: &str, call: &Map<String, Value>) -> Result<Value, String> {
    let fun = call.get("fun").and_then(Value::as_str).ok_or_else(|| {
        format!(
            "no `fun` argument in {key}: {}",
            Value::Object(call.clone())
        )
    })?;
    let positional: Vec<Value> = match call.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
    };
    // The first argument by position or by the name Salt's function gives it.
    let first = |names: &[&str]| -> Result<String, String> {
        positional
            .first()
            .or_else(|| names.iter().find_map(|n| call.get(*n)))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or_else(|| format!("{key} function {fun} needs an argument ({})", names[0]))
    };
    let host = LocalHost;
    let result = match fun {
        "cmd.retcode" => {
            let cwd = call.get("cwd").and_then(Value::as_str).unwrap_or("/");
            let output = execute(&CommandSpec {
                command: first(&["cmd"])?,
                shell: "/bin/sh".to_string(),
                cwd: cwd.into(),
                env: Vec::new(),
                runas: None,
                timeout: Some(GUARD_FUNCTION_TIMEOUT),
                output_cap: crate::state::cmd::OUTPUT_CAP_BYTES,
            })?;
            Value::from(output.retcode)
        }
        "cmd.run" => {
            Value::from(host.cmd_run(&first(&["cmd"])?, call.get("cwd").and_then(Value::as_str))?)
        }
        "cmd.which" => host
            .which(&first(&["cmd"])?)
            .map_or(Value::Null, Value::from),
        "file.file_exists" => Value::from(host.path_exists(&first(&["path"])?, PathKind::File)),
        "file.directory_exists" => {
            Value::from(host.path_exists(&first(&["path"])?, PathKind::Directory))
        }
        "file.exists" => Value::from(host.path_exists(&first(&["path"])?, PathKind::Any)),
        "pkg.version" => Value::from(host.pkg_version(&first(&["name"])?)),
        "user.info" => host
            .user_info(&first(&["name"])?)
            .unwrap_or(Value::Object(Map::new())),
        "test.true" => Value::Bool(true),
        "test.false" => Value::Bool(false),
        other => {
            return Err(format!(
                "{key} function `{other}` is not supported by corpus: use one of {} or a shell \
                 command",
                GUARD_FUNCTIONS.join(", ")
            ));
        }
    };
    Ok(match call.get("get_return").and_then(Value::as_str) {
        Some(path) => path
            .split(':')
            .try_fold(&result, |v, part| match v {
                Value::Object(map) => map.get(part),
                Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
            .cloned()
            .unwrap_or(Value::Null),
        None => result,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn holds(args: Value, key: &str) -> Result<Option<bool>, String> {
        let map = args.as_object().cloned().unwrap_or_default();
        // Commands "succeed" when they say so: no shell needed for the list semantics.
        guard_holds(&map, key, &|c| Ok(if c == "ok" { 0 } else { 1 }))
    }

    #[test]
    fn guards_read_booleans_commands_and_fun_calls() {
        assert_eq!(holds(json!({}), "onlyif"), Ok(None));
        assert_eq!(holds(json!({"onlyif": false}), "onlyif"), Ok(Some(false)));
        assert_eq!(
            holds(json!({"unless": ["ok", "ok"]}), "unless"),
            Ok(Some(true))
        );
        assert_eq!(
            holds(json!({"unless": ["ok", "no"]}), "unless"),
            Ok(Some(false))
        );
        let cases = [
            (json!({"fun": "file.directory_exists", "args": ["/"]}), true),
            (json!({"fun": "file.file_exists", "path": "/"}), false),
            (
                json!({"fun": "file.exists", "args": ["/nonexistent/corpus"]}),
                false,
            ),
            (json!({"fun": "user.info", "args": ["root"]}), true),
            (
                json!({"fun": "user.info", "args": ["root"], "get_return": "uid"}),
                false,
            ),
            (
                json!({"fun": "user.info", "args": ["no-such-user-corpus"]}),
                false,
            ),
            (json!({"fun": "cmd.run", "args": ["echo yes"]}), true),
            (json!({"fun": "cmd.run", "cmd": "true"}), false),
            // Salt tests the result: retcode 0 is falsy.
            (json!({"fun": "cmd.retcode", "args": ["exit 3"]}), true),
            (json!({"fun": "cmd.retcode", "args": ["true"]}), false),
            (json!({"fun": "cmd.which", "args": ["sh"]}), true),
            (json!({"fun": "test.true"}), true),
            (
                json!({"fun": "pkg.version", "args": ["no-such-package-corpus"]}),
                false,
            ),
        ];
        for (call, expected) in cases {
            assert_eq!(
                holds(json!({"onlyif": [call.clone()]}), "onlyif"),
                Ok(Some(expected)),
                "{call}"
            );
        }
    }

    #[test]
    fn unknown_functions_and_missing_fun_are_refused_by_name() {
        let err = holds(
            json!({"onlyif": [{"fun": "mysql.db_exists", "args": ["x"]}]}),
            "onlyif",
        );
        assert!(
            err.as_ref().is_err_and(|e| e.starts_with("onlyif function `mysql.db_exists` is not supported")),
            "{err:?}"
        );
        let err = holds(json!({"unless": [{"args": ["x"]}]}), "unless");
        assert!(err.is_err_and(|e| e.starts_with("no `fun` argument in unless")));
    }
}
