//! Reading state arguments the way Salt does: loosely typed YAML values (a mode may be `644`,
//! `"0644"` or `0o644`; a list may be a single string; a boolean may be `"True"`).

use serde_json::{Map, Value};

/// A state's arguments with typed accessors; errors name the argument.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl<'a> Args<'a> {
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        match self.0.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A scalar as a string (numbers and booleans are stringified, like Salt).
    pub fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => scalar_to_string(v)
                .map(Some)
                .ok_or_else(|| format!("argument `{key}` must be a string, got {v}")),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.raw(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(format!("argument `{key}` must be a boolean, got {s:?}")),
            },
            Some(Value::Number(n)) => Ok(n.as_i64() != Some(0)),
            Some(v) => Err(format!("argument `{key}` must be a boolean, got {v}")),
        }
    }

    /// A string or a list of strings (Salt accepts both for `creates`, `unless`, `source`...).
    pub fn string_list(&self, key: &str) -> Result<Vec<String>, String> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| {
                    scalar_to_string(v)
                        .ok_or_else(|| format!("argument `{key}` must list strings, got {v}"))
                })
                .collect(),
            Some(v) => scalar_to_string(v)
                .map(|s| vec![s])
                .ok_or_else(|| format!("argument `{key}` must be a string or a list, got {v}")),
        }
    }

    /// A file mode: `"0644"`, `"644"`, `644` (digits read as octal, as Salt users mean them)
    /// or `"0o644"`.
    pub fn mode(&self, key: &str) -> Result<Option<u32>, String> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let text = scalar_to_string(v).ok_or_else(|| format!("argument `{key}` must be a mode"))?;
        parse_mode(&text).map(Some).ok_or_else(|| {
            format!(
                "argument `{key}` is not a valid file mode: {text:?} (use octal, e.g. \"0644\")"
            )
        })
    }

    /// Seconds as a float (`timeout`).
    pub fn seconds(&self, key: &str) -> Result<Option<f64>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|s| *s >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("argument `{key}` must be a non-negative number")),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("argument `{key}` must be a number of seconds, got {s:?}")),
            Some(v) => Err(format!(
                "argument `{key}` must be a number of seconds, got {v}"
            )),
        }
    }
}

pub fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

pub fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o7777).then_some(mode)
}

/// Salt's rendering of a mode in changes: four octal digits.
pub fn format_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn modes_are_read_as_octal_whatever_their_yaml_type() {
        let m = args(json!({"a": "0644", "b": 644, "c": "0o755", "d": "999", "e": "4755"}));
        let a = Args(&m);
        assert_eq!(a.mode("a"), Ok(Some(0o644)));
        assert_eq!(a.mode("b"), Ok(Some(0o644)));
        assert_eq!(a.mode("c"), Ok(Some(0o755)));
        assert!(a.mode("d").is_err());
        assert_eq!(a.mode("e"), Ok(Some(0o4755)));
        assert_eq!(a.mode("missing"), Ok(None));
        assert_eq!(format_mode(0o644), "0644");
    }

    #[test]
    fn lists_accept_a_single_string_and_booleans_accept_salt_spellings() {
        let m = args(json!({"one": "/a", "many": ["/a", "/b"], "t": "True", "f": false}));
        let a = Args(&m);
        assert_eq!(a.string_list("one").ok(), Some(vec!["/a".to_string()]));
        assert_eq!(a.string_list("many").ok().map(|v| v.len()), Some(2));
        assert_eq!(a.bool("t", false), Ok(true));
        assert_eq!(a.bool("f", true), Ok(false));
        assert_eq!(a.bool("none", true), Ok(true));
    }
}
