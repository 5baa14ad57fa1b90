//! Python's text layouts, which Salt users diff rendered files against: `str()`/`repr()` of
//! values, printf-style `%` formatting, `json.dumps` and PyYAML's flow style.

use minijinja::value::{Value, ValueKind};
use minijinja::{ErrorKind, State};
use serde_json::Value as Json;

use super::values::{List, map_entries};

fn invalid(message: impl Into<String>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message.into())
}

/// Python's `str()` of a value, for `%s`.
pub(crate) fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Seq | ValueKind::Map => python_repr(value),
        _ => value.to_string(),
    }
}

/// Python's `repr()` of a value, for `%r` and containers.
pub(crate) fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => format!(
            "'{}'",
            value.as_str().unwrap_or_default().replace('\'', "\\'")
        ),
        ValueKind::Seq
            if value
                .downcast_object_ref::<super::values::Tuple>()
                .is_some() =>
        {
            value.to_string()
        }
        ValueKind::Seq => {
            let items: Vec<String> = value
                .try_iter()
                .map(|iter| iter.map(|v| python_repr(&v)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .map(|iter| {
                    iter.map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k), python_repr(&v))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => python_str(value),
    }
}

/// `'fmt' % args`: Python's printf-style formatting (`%s %r %d %i %f %x %o %e %%`, flags,
/// width, precision, `%(name)s` with a dict).
pub(crate) fn percent(
    state: &State<'_, '_>,
    left: Value,
    args: Value,
) -> Result<Value, minijinja::Error> {
    if left.kind() == ValueKind::Number {
        return modulo(&left, &args);
    }
    let Some(format) = left.as_str() else {
        return Err(invalid(format!(
            "unsupported operand types for %: {} and {}",
            left.kind(),
            args.kind()
        )));
    };
    format_percent(state, format, args).map(Value::from)
}

/// A number's `%` as in Python: the result has the divisor's sign.
fn modulo(left: &Value, right: &Value) -> Result<Value, minijinja::Error> {
    let zero = || invalid("integer division or modulo by zero");
    match (i64::try_from(left.clone()), i64::try_from(right.clone())) {
        (Ok(a), Ok(b)) => {
            if b == 0 {
                return Err(zero());
            }
            Ok(Value::from(
                a.rem_euclid(b) + if b < 0 && a.rem_euclid(b) != 0 { b } else { 0 },
            ))
        }
        _ => {
            let (Ok(a), Ok(b)) = (f64::try_from(left.clone()), f64::try_from(right.clone())) else {
                return Err(invalid(format!(
                    "unsupported operand types for %: number and {}",
                    right.kind()
                )));
            };
            if b == 0.0 {
                return Err(zero());
            }
            let r = a % b;
            Ok(Value::from(if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }))
        }
    }
}

fn format_percent(
    _state: &State<'_, '_>,
    format: &str,
    args: Value,
) -> Result<String, minijinja::Error> {
    let named = args.kind() == ValueKind::Map;
    let spread = args.kind() == ValueKind::Seq && args.downcast_object_ref::<List>().is_none();
    let positional: Vec<Value> = if spread {
        args.try_iter()?.collect()
    } else {
        vec![args.clone()]
    };
    let mut next = positional.into_iter();
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut key = None;
        if chars.peek() == Some(&'(') {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == ')' {
                    break;
                }
                name.push(c);
            }
            key = Some(name);
        }
        let mut flags = String::new();
        while let Some(f) = chars.peek().copied().filter(|f| "-+ 0#".contains(*f)) {
            flags.push(f);
            chars.next();
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            width.push(d);
            chars.next();
        }
        let mut precision = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse::<usize>().unwrap_or(0));
        }
        let Some(conversion) = chars.next() else {
            return Err(invalid("% format: incomplete format"));
        };
        if conversion == '%' {
            out.push('%');
            continue;
        }
        let value = match &key {
            Some(name) if named => args.get_item(&Value::from(name.as_str()))?,
            Some(name) => return Err(invalid(format!("% format: %({name}) needs a dict"))),
            None => next
                .next()
                .ok_or_else(|| invalid("% format: not enough arguments for format string"))?,
        };
        let number = || f64::try_from(value.clone()).ok();
        let text = match conversion {
            's' => {
                let s = python_str(&value);
                match precision {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            'r' => python_repr(&value),
            'd' | 'i' | 'u' => {
                let n = number().ok_or_else(|| {
                    invalid(format!(
                        "% format: %d needs a number, got a {}",
                        value.kind()
                    ))
                })?;
                let n = n.trunc() as i64;
                if flags.contains('+') && n >= 0 {
                    format!("+{n}")
                } else {
                    n.to_string()
                }
            }
            'f' | 'F' => {
                let n = number().ok_or_else(|| {
                    invalid(format!(
                        "% format: %f needs a number, got a {}",
                        value.kind()
                    ))
                })?;
                format!("{:.*}", precision.unwrap_or(6), n)
            }
            'e' | 'E' => {
                let n = number().ok_or_else(|| {
                    invalid(format!(
                        "% format: %e needs a number, got a {}",
                        value.kind()
                    ))
                })?;
                format!("{:.*e}", precision.unwrap_or(6), n)
            }
            'x' | 'X' | 'o' => {
                let n = value.as_i64().ok_or_else(|| {
                    invalid(format!(
                        "% format: %{conversion} needs an integer, got a {}",
                        value.kind()
                    ))
                })?;
                match conversion {
                    'x' => format!("{n:x}"),
                    'X' => format!("{n:X}"),
                    _ => format!("{n:o}"),
                }
            }
            other => {
                return Err(invalid(format!(
                    "% format: unsupported conversion %{other}"
                )));
            }
        };
        let width = width.parse::<usize>().unwrap_or(0);
        let pad = width.saturating_sub(text.chars().count());
        if flags.contains('-') {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else if flags.contains('0') && conversion != 's' {
            let (sign, digits) = match text.strip_prefix('-') {
                Some(rest) => ("-", rest),
                None => ("", text.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    if !named && next.next().is_some() {
        return Err(invalid(
            "% format: not all arguments converted during string formatting",
        ));
    }
    Ok(out)
}

pub(crate) fn sorted_entries(
    map: &serde_json::Map<String, Json>,
    sort: bool,
) -> Vec<(&String, &Json)> {
    let mut entries: Vec<_> = map.iter().collect();
    if sort {
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    entries
}

pub(crate) fn write_json_string(text: &str, ascii: bool, out: &mut String) {
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
pub(crate) fn write_python_json(
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

/// [`write_python_json`] over a template value, keeping each dict's insertion order as Python's
/// `json.dumps` does (a JSON conversion first would sort the keys: `serde_json`'s map is ordered
/// by key). Scalars are written as their JSON form.
pub(crate) fn write_python_json_value(
    value: &Value,
    indent: Option<usize>,
    sort: bool,
    ascii: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Map if !value.is_kwargs() => {
            let mut entries = Vec::new();
            for (key, item) in map_entries(value)? {
                entries.push((json_key(&key)?, item));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_json_string(key, ascii, out);
                out.push_str(": ");
                write_python_json_value(item, indent, sort, ascii, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json_value(item, indent, sort, ascii, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            let json = serde_json::to_value(value)
                .map_err(|e| invalid(format!("cannot serialise value: {e}")))?;
            write_python_json(&json, indent, sort, ascii, depth, out);
        }
    }
    Ok(())
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, booleans and `None` as
/// their JSON text.
fn json_key(key: &Value) -> Result<String, minijinja::Error> {
    if let Some(text) = key.as_str() {
        return Ok(text.to_string());
    }
    match serde_json::to_value(key) {
        Ok(Json::String(text)) => Ok(text),
        Ok(other @ (Json::Number(_) | Json::Bool(_) | Json::Null)) => Ok(other.to_string()),
        _ => Err(invalid(format!(
            "cannot serialise a dict key of type {}: keys must be strings, numbers, booleans or none",
            key.kind()
        ))),
    }
}

pub(crate) fn write_yaml_flow(value: &Json, out: &mut String) {
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
pub(crate) fn write_yaml_scalar(s: &str, out: &mut String) {
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
