//! The Jinja dialect shared by pillar and state files: minijinja configured the way Salt
//! configures Jinja (trailing newline kept, no auto-escaping, Python-style methods), with Salt's
//! context helpers (`pillar.get('a:b', default)`, `salt['pillar.get']`, `grains.get`) and filters
//! (`yaml`, `json`, `tojson`). It lives here because `states` depends on `pillar`, not the reverse.
//!
//! Templates are sandboxed: `import`/`include`/`extends` go through a [`SourceTree`] and nothing
//! else is reachable (no filesystem, environment or process access).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Kwargs, Object, ObjectRepr, Serde, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::Value as Json;

use crate::tree::{SourceTree, normalize_path};

/// A template failed to render. `file` and `line` point at the template where the error occurred
/// (an imported file when the error is inside it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: jinja error: {message}", line_suffix(*line))]
pub struct RenderError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// What a template sees. Values are shared (`Arc`) because the same pillar is handed to every
/// file of a render.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    /// The agent's compiled pillar, reachable as `pillar` and `salt['pillar.get']`.
    pub pillar: Arc<Json>,
    /// Facts about the agent, reachable as `grains` and `salt['grains.get']`.
    pub grains: Arc<Json>,
    /// Project-wide shared data (`common`).
    pub common: Arc<Json>,
    /// The environment being deployed (`env`): its name and settings.
    pub env: Arc<Json>,
    /// Extra top-level variables: `sls`, `tpldir`, a `file.managed` state's `context`/`defaults`.
    pub vars: BTreeMap<String, Json>,
}

impl TemplateContext {
    pub fn new(pillar: Json, grains: Json, common: Json, env: Json) -> TemplateContext {
        TemplateContext {
            pillar: Arc::new(pillar),
            grains: Arc::new(grains),
            common: Arc::new(common),
            env: Arc::new(env),
            vars: BTreeMap::new(),
        }
    }

    /// Returns a copy with an extra top-level variable.
    pub fn with_var(mut self, name: &str, value: Json) -> TemplateContext {
        self.vars.insert(name.to_string(), value);
        self
    }

    fn to_value(&self) -> Value {
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        for (name, value) in &self.vars {
            map.insert(name.clone(), Value::from(Serde(value)));
        }
        let pillar = Arc::new(Lookup {
            what: "pillar",
            data: self.pillar.clone(),
        });
        let grains = Arc::new(Lookup {
            what: "grains",
            data: self.grains.clone(),
        });
        map.insert("pillar".into(), Value::from_dyn_object(pillar.clone()));
        map.insert("grains".into(), Value::from_dyn_object(grains.clone()));
        map.insert(
            "salt".into(),
            Value::from_object(SaltFunctions { pillar, grains }),
        );
        map.insert("common".into(), Value::from(Serde(&*self.common)));
        map.insert("env".into(), Value::from(Serde(&*self.env)));
        Value::from(map)
    }
}

/// A Jinja environment bound to one source tree. Imported templates are cached, so build one per
/// version of the tree (per render job), not one per process.
/// Instructions one template render may execute (minijinja fuel).
pub const TEMPLATE_FUEL: u64 = 50_000_000;

pub struct TemplateEngine {
    env: Environment<'static>,
}

impl fmt::Debug for TemplateEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TemplateEngine")
    }
}

impl TemplateEngine {
    pub fn new(tree: Arc<dyn SourceTree>) -> TemplateEngine {
        let mut env = Environment::new();
        // SemiStrict: printing or iterating a missing value fails (so a typo in a pillar key is an
        // error, not an empty string in a config file), while `{% if pillar.x %}` still works.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        // Templates come from users: a render may execute at most this many instructions, so a
        // runaway loop fails with a clear error instead of holding a master thread forever.
        // Rendering 1,000 templated states uses well under 1% of it.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Salt restores the trailing newline Jinja drops; files must come out byte-identical.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build();
        if let Ok(syntax) = syntax {
            env.set_syntax(syntax);
        }
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("yaml", filter_yaml);
        env.add_filter("json", filter_json);
        env.add_filter("tojson", filter_tojson);
        env.add_filter("load_yaml", filter_load_yaml);
        env.add_filter("load_json", filter_load_json);
        env.set_path_join_callback(join_template_path);
        env.set_loader(move |name| {
            // Not TemplateNotFound: minijinja would replace the reason with a generic message.
            let path = normalize_path(name)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            tree.read(&path)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        TemplateEngine { env }
    }

    /// Renders `source` as the template named `file` (its path in the tree, used for relative
    /// imports and in error messages).
    pub fn render(
        &self,
        file: &str,
        source: &str,
        ctx: &TemplateContext,
    ) -> Result<String, RenderError> {
        self.env
            .render_named_str(file, source, ctx.to_value())
            .map_err(|err| render_error(file, &err))
    }
}

/// Salt-style relative imports: `./x.jinja` and `../x.jinja` resolve against the importing file;
/// anything else is relative to the root of the tree.
fn join_template_path<'s>(name: &'s str, parent: &'s str) -> std::borrow::Cow<'s, str> {
    let name = name.strip_prefix("salt://").unwrap_or(name);
    if !(name.starts_with("./") || name.starts_with("../")) {
        return name.into();
    }
    let mut parts: Vec<&str> = parent.split('/').collect();
    parts.pop();
    for segment in name.split('/') {
        match segment {
            "." | "" => {}
            ".." => {
                if parts.pop().is_none() {
                    // Leave the `..` in; the loader refuses it with a clear message.
                    return name.into();
                }
            }
            other => parts.push(other),
        }
    }
    parts.join("/").into()
}

fn render_error(file: &str, err: &minijinja::Error) -> RenderError {
    // An error inside an imported or included template arrives wrapped: report the innermost
    // template's file and line, and say where it was pulled in from.
    let mut chain = vec![err];
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        match inner.downcast_ref::<minijinja::Error>() {
            Some(jinja) => chain.push(jinja),
            None => break,
        }
        source = inner.source();
    }
    let innermost = chain
        .iter()
        .rev()
        .find(|e| e.line().is_some())
        .copied()
        .unwrap_or(err);
    let mut message = match innermost.detail() {
        Some(detail) => format!("{}: {}", innermost.kind(), detail),
        None => innermost.kind().to_string(),
    };
    if innermost.kind() == ErrorKind::UndefinedError && !message.contains("give a default") {
        message.push_str(
            "; check the name, or give a default with pillar.get('a:b', default) or the \
             `default` filter",
        );
    }
    if let Some(foreign) = source {
        message.push_str(": ");
        message.push_str(&foreign.to_string());
    }
    let outer: Vec<String> = chain
        .iter()
        .filter(|e| !std::ptr::eq(**e, innermost))
        .filter_map(|e| Some(format!("{}{}", e.name()?, line_suffix(e.line()))))
        .collect();
    if !outer.is_empty() {
        message.push_str(&format!(" (included from {})", outer.join(" <- ")));
    }
    RenderError {
        file: innermost.name().unwrap_or(file).to_string(),
        line: innermost.line(),
        message,
    }
}

/// Walks a Salt-style `a:b:c` path; numeric segments index lists.
pub fn traverse<'a>(data: &'a Json, path: &str) -> Option<&'a Json> {
    let mut current = data;
    for segment in path.split(':') {
        current = match current {
            Json::Object(map) => map.get(segment)?,
            Json::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// `pillar` and `grains` in templates: a map that also answers Salt's `.get('a:b', default)`.
#[derive(Debug)]
struct Lookup {
    what: &'static str,
    data: Arc<Json>,
}

impl Lookup {
    /// `get(key, default)`: the default may be positional or `default=`; without one, a missing
    /// key is an error naming the key (Salt would silently return '').
    fn get(&self, args: &[Value]) -> Result<Value, minijinja::Error> {
        let (positional, kwargs) = split_kwargs(args)?;
        let key = match positional.first() {
            Some(key) => key.as_str().map(str::to_string).unwrap_or(key.to_string()),
            None => {
                return Err(minijinja::Error::new(
                    ErrorKind::MissingArgument,
                    format!(
                        "{}.get needs a key, e.g. {}.get('a:b', default)",
                        self.what, self.what
                    ),
                ));
            }
        };
        let mut default = positional.get(1).cloned();
        if let Some(kwargs) = &kwargs {
            if let Some(value) = kwargs.get::<Option<Value>>("default")? {
                default = Some(value);
            } else if kwargs.has("default") {
                default = Some(Value::from(()));
            }
            // Salt's merge= and delimiter= are accepted; only ':' paths are supported.
            let _ = kwargs.get::<Option<Value>>("merge")?;
            let delimiter: Option<String> = kwargs.get("delimiter")?;
            if delimiter.is_some_and(|d| d != ":") {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{}.get only supports ':' as delimiter", self.what),
                ));
            }
            kwargs.assert_all_used()?;
        }
        match traverse(&self.data, &key) {
            Some(found) => Ok(Value::from(Serde(found))),
            None => default.ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::UndefinedError,
                    format!(
                        "{what} key '{key}' is missing: add it to the {what}, or give a default: \
                         {what}.get('{key}', default)",
                        what = self.what
                    ),
                )
            }),
        }
    }
}

fn split_kwargs(args: &[Value]) -> Result<(&[Value], Option<Kwargs>), minijinja::Error> {
    match args.split_last() {
        Some((last, rest)) if last.is_kwargs() => Ok((rest, Some(Kwargs::try_from(last.clone())?))),
        _ => Ok((args, None)),
    }
}

impl Object for Lookup {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let found = match &*self.data {
            Json::Object(map) => map.get(key.as_str()?)?,
            _ => return None,
        };
        Some(Value::from(Serde(found)))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        match &*self.data {
            Json::Object(map) => minijinja::value::Enumerator::Values(
                map.keys().map(|k| Value::from(k.as_str())).collect(),
            ),
            _ => minijinja::value::Enumerator::Empty,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "get" => self.get(args),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `salt[...]` in templates: the few execution functions that make sense while rendering.
#[derive(Debug)]
struct SaltFunctions {
    pillar: Arc<Lookup>,
    grains: Arc<Lookup>,
}

const SALT_FUNCTIONS: &[&str] = &["pillar.get", "grains.get", "config.get"];

impl Object for SaltFunctions {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let lookup = match key.as_str()? {
            "pillar.get" | "config.get" => self.pillar.clone(),
            "grains.get" => self.grains.clone(),
            _ => return None,
        };
        Some(Value::from_object(BoundGet(lookup)))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(SALT_FUNCTIONS)
    }
}

/// `salt['pillar.get']` as a callable value.
#[derive(Debug)]
struct BoundGet(Arc<Lookup>);

impl Object for BoundGet {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn call(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        self.0.get(args)
    }
}

fn to_json(value: &Value) -> Result<Json, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "cannot serialise an undefined value; check the variable name or add a default",
        ));
    }
    serde_json::to_value(value).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot serialise value: {e}"),
        )
    })
}

/// Salt's `yaml` filter: flow style by default (`{a: 1, b: [x, y]}`, fit for inlining in an sls),
/// block style with `flow_style=False`. Keys are sorted, as PyYAML does.
fn filter_yaml(value: Value, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let flow_style: Option<bool> = kwargs.get("flow_style")?;
    kwargs.assert_all_used()?;
    let json = to_json(&value)?;
    if flow_style == Some(false) {
        let text = serde_yaml::to_string(&json).map_err(|e| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot write yaml: {e}"),
            )
        })?;
        return Ok(text.trim_end().to_string());
    }
    let mut out = String::new();
    write_yaml_flow(&json, &mut out);
    Ok(out)
}

/// Salt's `json` filter: Python's `json.dumps(value, sort_keys=True, indent=None)` layout.
fn filter_json(value: Value, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = to_json(&value)?;
    let mut out = String::new();
    write_python_json(&json, indent, sort_keys.unwrap_or(true), false, 0, &mut out);
    Ok(out)
}

/// Salt's `tojson` filter: ASCII-only JSON with `<`, `>`, `&` and `'` escaped so the result is
/// safe inside HTML and single-quoted YAML.
fn filter_tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let kw_indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = to_json(&value)?;
    let mut out = String::new();
    write_python_json(
        &json,
        indent.or(kw_indent),
        sort_keys.unwrap_or(false),
        true,
        0,
        &mut out,
    );
    Ok(out
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027"))
}

fn filter_load_yaml(text: &str) -> Result<Value, minijinja::Error> {
    let json: Json = serde_yaml::from_str(text).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("load_yaml: {e}"))
    })?;
    Ok(Value::from(Serde(json)))
}

fn filter_load_json(text: &str) -> Result<Value, minijinja::Error> {
    let json: Json = serde_json::from_str(text).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("load_json: {e}"))
    })?;
    Ok(Value::from(Serde(json)))
}

fn sorted_entries(map: &serde_json::Map<String, Json>, sort: bool) -> Vec<(&String, &Json)> {
    let mut entries: Vec<_> = map.iter().collect();
    if sort {
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    entries
}

fn write_json_string(text: &str, ascii: bool, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// JSON laid out like Python's `json.dumps`: `", "` and `": "` separators, or one item per line
/// with `indent`.
fn write_python_json(
    value: &Json,
    indent: Option<usize>,
    sort: bool,
    ascii: bool,
    depth: usize,
    out: &mut String,
) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, sort, ascii, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in sorted_entries(map, sort).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_json_string(key, ascii, out);
                out.push_str(": ");
                write_python_json(item, indent, sort, ascii, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        Json::String(text) => write_json_string(text, ascii, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_yaml_flow(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => write_yaml_scalar(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_yaml_flow(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (key, item)) in sorted_entries(map, true).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_yaml_scalar(key, out);
                out.push_str(": ");
                write_yaml_flow(item, out);
            }
            out.push('}');
        }
    }
}

/// A string as YAML: plain when it cannot be mistaken for anything else, single-quoted otherwise,
/// double-quoted (JSON escapes) when it holds control characters.
fn write_yaml_scalar(s: &str, out: &mut String) {
    if s.chars().any(|c| c.is_control()) {
        write_json_string(s, false, out);
        return;
    }
    let lower = s.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off"
    );
    let looks_numeric = s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o")
        || lower == ".inf"
        || lower == "-.inf"
        || lower == ".nan";
    let bad_start = s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@` ".contains(c));
    let bad_inner = s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.ends_with(' ')
        || s.contains(|c: char| ",[]{}".contains(c));
    if reserved || looks_numeric || bad_start || bad_inner {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        out.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MemoryTree;
    use serde_json::json;

    fn engine(tree: MemoryTree) -> TemplateEngine {
        TemplateEngine::new(Arc::new(tree))
    }

    fn ctx() -> TemplateContext {
        TemplateContext::new(
            json!({"web": {"port": 8080, "hosts": ["a", "b"]}, "motd": "hi"}),
            json!({"os": "Debian", "id": "web1"}),
            json!({"company": "acme"}),
            json!({"name": "prod"}),
        )
    }

    fn render(source: &str) -> Result<String, RenderError> {
        engine(MemoryTree::new()).render("t.sls", source, &ctx())
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel_instead_of_running_forever() {
        let start = std::time::Instant::now();
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("fuel"), "{err}");
        // Not a timing assertion on speed: only that it ended at all, long before 10^10 steps.
        assert!(start.elapsed() < std::time::Duration::from_secs(120));
    }

    #[test]
    fn renders_salt_lookups_and_filters() {
        let cases = [
            ("{{ pillar.motd }}", "hi"),
            ("{{ pillar['web']['port'] }}", "8080"),
            ("{{ pillar.get('web:port') }}", "8080"),
            ("{{ pillar.get('web:hosts:1') }}", "b"),
            ("{{ pillar.get('web:missing', 'dflt') }}", "dflt"),
            ("{{ pillar.get('web:missing', default='kw') }}", "kw"),
            ("{{ pillar.get('nope', none) is none }}", "True"),
            ("{{ salt['pillar.get']('web:port', 1) }}", "8080"),
            ("{{ salt['pillar.get']('x:y', 7) }}", "7"),
            ("{{ salt['grains.get']('os') }}", "Debian"),
            ("{{ grains.get('osfinger', 'unknown') }}", "unknown"),
            ("{{ grains['id'] }}", "web1"),
            ("{{ common.company }}/{{ env.name }}", "acme/prod"),
            ("{{ pillar.nope | default('d') }}", "d"),
            ("{% if pillar.nope %}yes{% else %}no{% endif %}", "no"),
            ("{{ pillar.web | yaml }}", "{hosts: [a, b], port: 8080}"),
            (
                "{{ {'k': 'a: b', 'n': '1'} | yaml }}",
                "{k: 'a: b', n: '1'}",
            ),
            (
                "{{ pillar.web | yaml(flow_style=False) }}",
                "hosts:\n- a\n- b\nport: 8080",
            ),
            (
                "{{ pillar.web | json }}",
                r#"{"hosts": ["a", "b"], "port": 8080}"#,
            ),
            ("{{ [1] | json(indent=2) }}", "[\n  1\n]"),
            (
                "{{ {'b': '<é>', 'a': 1} | tojson }}",
                r#"{"a": 1, "b": "\u003c\u00e9\u003e"}"#,
            ),
            ("{{ pillar.web.get('port') }}", "8080"),
            (
                "{% for k, v in pillar.web.items() %}{{ k }};{% endfor %}",
                "hosts;port;",
            ),
            ("{{ 'a,b'.split(',') | join('+') }}", "a+b"),
            ("{{ '{\"x\": 1}' | load_json | json }}", r#"{"x": 1}"#),
            ("line\n", "line\n"),
        ];
        for (source, expected) in cases {
            assert_eq!(
                render(source).as_deref(),
                Ok(expected),
                "template {source:?}"
            );
        }
    }

    #[test]
    fn missing_pillar_key_without_default_names_key_and_file() {
        let err = render("a: 1\nb: {{ pillar.get('db:password') }}\n").unwrap_err();
        assert_eq!(err.file, "t.sls");
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("'db:password'"), "{err}");
        let err = render("{{ salt['pillar.get']('db:password') }}").unwrap_err();
        assert!(err.message.contains("'db:password'"), "{err}");
        let err = render("x\n\n{{ pillar.db }}").unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("t.sls", Some(3)), "{err}");
        assert!(
            err.to_string()
                .starts_with("t.sls, line 3: jinja error: undefined value"),
            "{err}"
        );
    }

    #[test]
    fn jinja_syntax_error_names_file_and_line() {
        let err = render("ok\n{% if %}\n").unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("t.sls", Some(2)));
        assert!(err.message.contains("syntax error"), "{err}");
    }

    #[test]
    fn imports_resolve_in_the_tree_and_nowhere_else() {
        let tree = MemoryTree::new()
            .with(
                "macros.jinja",
                "{% macro hello(n) %}hello {{ n }}{% endmacro %}",
            )
            .with("web/map.jinja", "{% set port = pillar.get('web:port') %}")
            .with(
                "web/init.sls",
                "{% from './map.jinja' import port %}{{ port }}",
            )
            .with("web/broken.jinja", "{{ pillar.nope }}");
        let e = engine(tree);
        let c = ctx();
        assert_eq!(
            e.render(
                "x.sls",
                "{% import 'macros.jinja' as m %}{{ m.hello('w') }}",
                &c
            )
            .as_deref(),
            Ok("hello w")
        );
        assert_eq!(
            e.render(
                "web/init.sls",
                "{% from './map.jinja' import port %}{{ port }}",
                &c
            )
            .as_deref(),
            Ok("8080")
        );
        assert_eq!(
            e.render("x.sls", "{% include 'salt://macros.jinja' %}ok", &c)
                .as_deref(),
            Ok("ok")
        );
        let err = e
            .render("x.sls", "{% include '/etc/passwd' %}", &c)
            .unwrap_err();
        assert!(err.message.contains("absolute"), "{err}");
        let err = e
            .render("x.sls", "{% include '../../etc/passwd' %}", &c)
            .unwrap_err();
        assert!(err.message.contains(".."), "{err}");
        let err = e
            .render("x.sls", "{% include 'web/broken.jinja' %}", &c)
            .unwrap_err();
        assert_eq!(err.file, "web/broken.jinja", "{err}");
    }

    #[test]
    fn traverse_walks_maps_and_lists() {
        let data = json!({"a": {"b": [10, {"c": true}]}});
        assert_eq!(traverse(&data, "a:b:0"), Some(&json!(10)));
        assert_eq!(traverse(&data, "a:b:1:c"), Some(&json!(true)));
        assert_eq!(traverse(&data, "a:x"), None);
        assert_eq!(traverse(&data, "a:b:9"), None);
    }
}
