//! YAML after Jinja: parsing with a line number on error, and conversion to JSON values (the form
//! pillar and plan arguments travel in).

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The rendered text of a file is not valid YAML. `line` counts lines of the rendered text, which
/// match the source file unless Jinja loops or includes added lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: yaml error: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct YamlError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Parses rendered text. An empty document (everything rendered away) is `Yaml::Null`.
pub fn parse_yaml(file: &str, text: &str) -> Result<Yaml, YamlError> {
    serde_yaml::from_str::<Yaml>(text).map_err(|err| YamlError {
        file: file.to_string(),
        line: err.location().map(|l| l.line()),
        message: format!("{err}; check the indentation and quoting near that line"),
    })
}

/// Converts YAML to JSON: non-string keys become their YAML text (`1`, `true`), tags are dropped,
/// non-finite floats become `null` (JSON has no NaN).
pub fn yaml_to_json(value: &Yaml) -> Json {
    match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .unwrap_or(Json::Null)
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Yaml::Tagged(tagged) => yaml_to_json(&tagged.value),
    }
}

/// A mapping key as a string: Salt ids and pillar keys may be written as numbers or booleans.
pub fn yaml_key(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        Yaml::Null => "None".to_string(),
        Yaml::Bool(true) => "True".to_string(),
        Yaml::Bool(false) => "False".to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Tagged(tagged) => yaml_key(&tagged.value),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// The state id (top-level key) in effect at `line` (1-based) of `text`: the last line at or
/// before it that starts in column 0 with a key. Used to say which state a YAML or Jinja error is
/// in. Keys still holding Jinja (`{{ x }}:`) yield `None`.
pub fn top_level_key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let end = line.min(lines.len());
    for candidate in lines[..end].iter().rev() {
        if candidate.is_empty()
            || candidate.starts_with([' ', '\t', '#', '-', '{', '}', '%', '|', '>'])
            || candidate.starts_with("...")
        {
            continue;
        }
        let (key, _) = candidate.split_once(':')?;
        let key = key.trim();
        let key = key
            .strip_prefix('\'')
            .and_then(|k| k.strip_suffix('\''))
            .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            .unwrap_or(key);
        if key.is_empty() || key.contains("{{") || key.contains("{%") {
            return None;
        }
        return Some(key.to_string());
    }
    None
}

/// The 1-based line where top-level key `id` is declared in `text`, if it can be found.
pub fn line_of_top_level_key(text: &str, id: &str) -> Option<usize> {
    top_level_key_lines(text).remove(id)
}

/// Every top-level key of `text` with the 1-based line declaring it (first occurrence), in one
/// pass, so that locating all state ids of a file stays linear.
pub fn top_level_key_lines(text: &str) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with([' ', '\t', '#', '-', '{', '}', '%', '|', '>']) {
            continue;
        }
        if let Some(key) = top_level_key_of_line(line) {
            out.entry(key).or_insert(i + 1);
        }
    }
    out
}

fn top_level_key_of_line(line: &str) -> Option<String> {
    let trimmed = line.trim_end();
    let key = if let Some(rest) = trimmed.strip_prefix('\'') {
        rest.split_once("':").map(|(k, _)| k.replace("''", "'"))?
    } else if let Some(rest) = trimmed.strip_prefix('"') {
        rest.split_once("\":").map(|(k, _)| k.to_string())?
    } else {
        // A plain key ends at the first ': ' or at a trailing ':'.
        match trimmed.find(": ") {
            Some(end) => trimmed[..end].to_string(),
            None => trimmed.strip_suffix(':')?.to_string(),
        }
    };
    Some(key.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_error_carries_the_line() {
        let err = parse_yaml("web.sls", "a:\n  b: 1\n c: [\n").unwrap_err();
        assert_eq!(err.file, "web.sls");
        assert_eq!(err.line, Some(3), "{err}");
        assert!(
            err.to_string().starts_with("web.sls, line 3: yaml error: "),
            "{err}"
        );
    }

    #[test]
    fn converts_yaml_to_json() {
        // Note: a leading-zero mode stays the string "0644" (Salt would load the int 644); both
        // mean the octal digits 644 to the file module.
        let yaml = parse_yaml("x", "1: a\ntrue: [1, 2.5, ~]\nk: !tag v\nmode: 0644\n");
        assert_eq!(
            yaml.map(|y| yaml_to_json(&y)),
            Ok(json!({"1": "a", "True": [1, 2.5, null], "k": "v", "mode": "0644"}))
        );
        assert_eq!(
            parse_yaml("x", "").map(|y| yaml_to_json(&y)),
            Ok(Json::Null)
        );
    }

    #[test]
    fn finds_the_enclosing_top_level_key() {
        let text = "# c\nnginx:\n  pkg.installed: []\n\n'/etc/x':\n  file.managed:\n    - a: 1\n";
        assert_eq!(top_level_key_at(text, 3).as_deref(), Some("nginx"));
        assert_eq!(top_level_key_at(text, 7).as_deref(), Some("/etc/x"));
        assert_eq!(top_level_key_at(text, 1), None);
        assert_eq!(top_level_key_at("{{ x }}:\n  a: 1\n", 2), None);
        assert_eq!(line_of_top_level_key(text, "/etc/x"), Some(5));
        assert_eq!(line_of_top_level_key(text, "nginx"), Some(2));
    }
}
