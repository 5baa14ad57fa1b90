//! Salt's Jinja filters (`yaml`, `json`, `tojson`, `load_yaml`, `traverse`, `regex_*`, `to_bool`,
//! `quote`, `yaml_encode`, `sequence`, `unique`, ...) and the helper functions the pre-pass
//! calls (`__import_data`, `__load_data`). Output layouts are Python's ([`super::python`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minijinja::ErrorKind;
use minijinja::value::{Kwargs, Value, ValueKind};
use serde_json::Value as Json;

use super::python::{write_python_json_value, write_yaml_flow};
use super::pyyaml::{self, FlowStyle};
use super::salt::traverse_value;
use super::values::{List, Tuple, deep_copy, from_json, mutable, reject_undefined, to_json};
use crate::tree::{SourceTree, normalize_path};

fn invalid(message: impl Into<String>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message.into())
}

/// Parses `text` as `format` (`yaml` as Salt's loader reads it, `json`, or `text`).
pub(crate) fn parse_data(text: &str, format: &str) -> Result<Value, minijinja::Error> {
    let json: Json = match format {
        "yaml" => {
            let yaml = crate::yaml::parse_yaml("(load_yaml)", text)
                .map_err(|e| invalid(format!("load_yaml: {}", e.message)))?;
            crate::yaml::yaml_to_json(&yaml)
        }
        "json" => serde_json::from_str(text).map_err(|e| invalid(format!("load_json: {e}")))?,
        _ => return Ok(Value::from(text)),
    };
    Ok(from_json(&json))
}

/// The files `import_yaml`/`import_json`/`import_text` parsed in one engine (one run, one version
/// of the tree), by path and format: a `map.jinja` imported by 200 templates parses its
/// `defaults.yaml` once. Each import gets its own deep copy, because template dicts are mutable
/// and Salt parses the file again for every import.
#[derive(Default)]
pub(crate) struct ImportCache(Mutex<HashMap<(String, String), Value>>);

/// `{% import_yaml path as v %}`: reads `path` (relative to the tree root, or to `from` with
/// `./`) and parses it.
pub(crate) fn import_data(
    tree: &Arc<dyn SourceTree>,
    cache: &ImportCache,
    path: &str,
    from: &str,
    format: &str,
) -> Result<Value, minijinja::Error> {
    let joined = super::join_template_path(path, from);
    let normalized = normalize_path(&joined).map_err(|e| invalid(e.to_string()))?;
    let key = (normalized, format.to_string());
    if let Some(parsed) = cache.0.lock().ok().and_then(|map| map.get(&key).cloned()) {
        return Ok(deep_copy(&parsed));
    }
    let parsed = read_and_parse(tree, &key.0, from, format)?;
    let copy = deep_copy(&parsed);
    if let Ok(mut map) = cache.0.lock() {
        map.insert(key, parsed);
    }
    Ok(copy)
}

fn read_and_parse(
    tree: &Arc<dyn SourceTree>,
    normalized: &str,
    from: &str,
    format: &str,
) -> Result<Value, minijinja::Error> {
    let text = tree
        .read(normalized)
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| {
            invalid(format!(
                "import_{format}: {normalized} does not exist in the tree (imported from {from})"
            ))
        })?;
    parse_data(&text, format).map_err(|e| invalid(format!("{normalized}: {e}")))
}

/// `{% load_yaml as v %}...{% endload %}`: the captured block parsed.
pub(crate) fn load_data(text: Value, format: &str) -> Result<Value, minijinja::Error> {
    parse_data(text.as_str().unwrap_or_default(), format)
}

pub(crate) fn filter_load_yaml(text: &str) -> Result<Value, minijinja::Error> {
    parse_data(text, "yaml")
}

pub(crate) fn filter_load_json(text: &str) -> Result<Value, minijinja::Error> {
    parse_data(text, "json")
}

/// `data|traverse('a:b', default)`.
pub(crate) fn filter_traverse(
    data: Value,
    path: &str,
    default: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let delimiter: Option<String> = kwargs.get("delimiter")?;
    let kw_default: Option<Value> = kwargs.get("default")?;
    kwargs.assert_all_used()?;
    Ok(
        traverse_value(&data, path, delimiter.as_deref().unwrap_or(":"))
            .or(default)
            .or(kw_default)
            .unwrap_or_default(),
    )
}

fn regex(pattern: &str, kwargs: &Kwargs) -> Result<regex::Regex, minijinja::Error> {
    let ignorecase: Option<bool> = kwargs.get("ignorecase")?;
    let multiline: Option<bool> = kwargs.get("multiline")?;
    kwargs.assert_all_used()?;
    regex::RegexBuilder::new(pattern)
        .case_insensitive(ignorecase.unwrap_or(false))
        .multi_line(multiline.unwrap_or(false))
        .build()
        .map_err(|e| invalid(format!("invalid regular expression {pattern:?}: {e}")))
}

/// `regex_replace(pattern, replacement)`: Python's `re.sub`; `\1` back-references work.
pub(crate) fn filter_regex_replace(
    text: &str,
    pattern: &str,
    replacement: &str,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let re = regex(pattern, &kwargs)?;
    let mut rust_replacement = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                rust_replacement.push_str(&format!("${{{digits}}}"));
            }
            '$' => rust_replacement.push_str("$$"),
            c => rust_replacement.push(c),
        }
    }
    Ok(re.replace_all(text, rust_replacement.as_str()).into_owned())
}

/// What Salt's `regex_search`/`regex_match` return: none without a match, else the groups as
/// a tuple, or `(whole match,)` when the pattern has no group.
fn groups(captures: Option<regex::Captures<'_>>) -> Value {
    match captures {
        None => Value::from(()),
        Some(found) if found.len() == 1 => {
            Tuple::new_value(vec![Value::from(found.get(0).map_or("", |m| m.as_str()))])
        }
        Some(found) => Tuple::new_value(
            found
                .iter()
                .skip(1)
                .map(|g| g.map_or(Value::from(()), |m| Value::from(m.as_str())))
                .collect::<Vec<_>>(),
        ),
    }
}

/// `regex_search(pattern)`: the match's groups (a tuple), or none.
pub(crate) fn filter_regex_search(
    text: &str,
    pattern: &str,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let re = regex(pattern, &kwargs)?;
    Ok(groups(re.captures(text)))
}

/// `regex_match(pattern)`: like `regex_search`, anchored at the start.
pub(crate) fn filter_regex_match(
    text: &str,
    pattern: &str,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let re = regex(&format!("^(?:{pattern})"), &kwargs)?;
    Ok(groups(re.captures(text)))
}

/// Salt's `match` test: the regular expression matches at the start of the text.
pub(crate) fn test_match(
    text: &str,
    pattern: &str,
    kwargs: Kwargs,
) -> Result<bool, minijinja::Error> {
    let re = regex(&format!("^(?:{pattern})"), &kwargs)?;
    Ok(re.is_match(text))
}

/// Salt's `to_bool`: strings `yes`/`true`/`1`/`on` are true, numbers when positive,
/// containers when not empty.
pub(crate) fn filter_to_bool(value: Value) -> bool {
    match value.kind() {
        ValueKind::String => matches!(
            value
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .as_str(),
            "yes" | "true" | "1" | "on"
        ),
        ValueKind::Number => value.as_i64().map_or_else(
            || f64::try_from(value.clone()).is_ok_and(|f| f > 0.0),
            |i| i > 0,
        ),
        ValueKind::Seq | ValueKind::Map => value.len().unwrap_or(0) > 0,
        _ => value.is_true(),
    }
}

/// `quote`: Python's `shlex.quote`.
pub(crate) fn filter_quote(value: Value) -> String {
    let text = value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\"'\"'"))
    }
}

/// `yaml_encode`: one scalar as Salt writes it: a string always double-quoted (PyYAML's
/// escapes), `null`, `true`/`false`, a number as is. A list or dict is refused, as in Salt.
pub(crate) fn filter_yaml_encode(value: Value) -> Result<String, minijinja::Error> {
    match to_json(&value)? {
        Json::String(text) => Ok(yaml_double_quoted(&text)),
        Json::Array(_) | Json::Object(_) => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "yaml_encode() only works with YAML scalar data (a string, number, boolean or none), \
             not a list or dict: use `yaml` or `json` for those",
        )),
        other => {
            let mut out = String::new();
            write_yaml_flow(&other, &mut out);
            Ok(out)
        }
    }
}

/// A string as PyYAML's emitter writes it double-quoted (without `allow_unicode`): printable
/// ASCII as is, `"` and `\` escaped, the named escapes (`\n`, `\t`, ...), anything else as
/// `\xXX`, `\uXXXX` or `\UXXXXXXXX`.
pub(crate) fn yaml_double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        let named = match c {
            '\0' => Some('0'),
            '\u{07}' => Some('a'),
            '\u{08}' => Some('b'),
            '\t' => Some('t'),
            '\n' => Some('n'),
            '\u{0B}' => Some('v'),
            '\u{0C}' => Some('f'),
            '\r' => Some('r'),
            '\u{1B}' => Some('e'),
            '"' => Some('"'),
            '\\' => Some('\\'),
            '\u{85}' => Some('N'),
            '\u{A0}' => Some('_'),
            '\u{2028}' => Some('L'),
            '\u{2029}' => Some('P'),
            _ => None,
        };
        match named {
            Some(letter) => {
                out.push('\\');
                out.push(letter);
            }
            None if (' '..='~').contains(&c) => out.push(c),
            None if (c as u32) <= 0xFF => out.push_str(&format!("\\x{:02X}", c as u32)),
            None if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            None => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// `yaml_dquote`: a string as a double-quoted YAML scalar (Salt's, PyYAML's escapes).
pub(crate) fn filter_yaml_dquote(value: Value) -> String {
    let text = value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    yaml_double_quoted(&text)
}

/// `yaml_squote`: a string as a single-quoted YAML scalar.
pub(crate) fn filter_yaml_squote(value: Value) -> String {
    let text = value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    format!("'{}'", text.replace('\'', "''"))
}

/// `sequence`: a list stays, anything else becomes a one-item list.
pub(crate) fn filter_sequence(value: Value) -> Value {
    if value.kind() == ValueKind::Seq {
        value
    } else {
        List::new_value(vec![value])
    }
}

/// `is_list`.
pub(crate) fn filter_is_list(value: Value) -> bool {
    value.kind() == ValueKind::Seq
}

/// `unique`: first occurrences, in order.
pub(crate) fn filter_unique(value: Value) -> Result<Value, minijinja::Error> {
    let mut out: Vec<Value> = Vec::new();
    for item in value.try_iter()? {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(List::new_value(out))
}

/// `__dict(...)` / `__list(...)`: literals made mutable (see `prepass`).
pub(crate) fn make_mutable(value: Value) -> Value {
    mutable(value)
}

/// Salt's `yaml` filter: flow style by default (`{a: 1, b: [x, y]}`, fit for inlining in an sls),
/// block style with `flow_style=False`. Keys are sorted, as PyYAML does.
pub(crate) fn filter_yaml(
    value: Value,
    flow_style: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let kw_flow_style: Option<bool> = kwargs.get("flow_style")?;
    let flow_style = flow_style.or(kw_flow_style);
    kwargs.assert_all_used()?;
    let json = to_json(&value)?;
    // Salt's `format_yaml`: `safe_dump(value, default_flow_style=flow_style, allow_unicode=True)`.
    let style = if flow_style == Some(false) {
        FlowStyle::Never
    } else {
        FlowStyle::Always
    };
    Ok(pyyaml::dump(&json, style, true))
}

/// Salt's `json` filter: Python's `json.dumps(value, sort_keys=True, indent=None)` layout.
pub(crate) fn filter_json(value: Value, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    reject_undefined(&value)?;
    let mut out = String::new();
    write_python_json_value(
        &value,
        indent,
        sort_keys.unwrap_or(true),
        false,
        0,
        &mut out,
    )?;
    Ok(out)
}

/// Salt's `tojson` filter: ASCII-only JSON with `<`, `>`, `&` and `'` escaped so the result is
/// safe inside HTML and single-quoted YAML.
pub(crate) fn filter_tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let kw_indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    reject_undefined(&value)?;
    let mut out = String::new();
    write_python_json_value(
        &value,
        indent.or(kw_indent),
        sort_keys.unwrap_or(false),
        true,
        0,
        &mut out,
    )?;
    Ok(out
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027"))
}
