//! YAML after Jinja: parsing with a line number on error, and conversion to JSON values (the form
//! pillar and plan arguments travel in).
//!
//! Salt reads YAML 1.1 through its own loader, where plain `yes`/`no`/`on`/`off` are booleans and
//! a leading-zero integer (`0644`) is read as the integer of its digits (`644`, which the file
//! module takes as octal). The YAML parser here implements 1.2, so [`parse_yaml`] first rewrites
//! those plain scalars in value positions ([`salt_scalars`]); quoted ones stay strings.

use std::borrow::Cow;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

mod limits;
use limits::{BuildYaml, ExpansionBudget, too_deep};

/// The rendered text of a file is not valid YAML. `line` counts lines of the rendered text, which
/// match the source file unless Jinja loops or includes added lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: yaml error: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct YamlError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The deepest nesting (block levels plus flow brackets) a YAML document may have. Checked by a
/// linear scan before parsing: the parser's time grows with the square of the nesting depth.
pub const MAX_YAML_DEPTH: usize = 64;
/// The most nodes (scalars, lists, mappings) a YAML document may hold once its aliases are
/// expanded: a flat alias fan-out turns a few kilobytes into hundreds of millions of nodes.
pub const MAX_YAML_NODES: usize = 1_000_000;
/// The most bytes of scalar text a YAML document may hold once its aliases are expanded.
pub const MAX_YAML_EXPANDED_BYTES: usize = 64 * 1024 * 1024;

/// Parses rendered text. An empty document (everything rendered away) is `Yaml::Null`. The
/// nesting depth is checked before parsing and the expanded size while parsing, so a hostile
/// document fails in time linear in its length (see [`MAX_YAML_DEPTH`], [`MAX_YAML_NODES`],
/// [`MAX_YAML_EXPANDED_BYTES`]).
pub fn parse_yaml(file: &str, text: &str) -> Result<Yaml, YamlError> {
    if let Some((depth, line)) = too_deep(text, MAX_YAML_DEPTH) {
        return Err(YamlError {
            file: file.to_string(),
            line: Some(line),
            message: format!(
                "nesting depth reaches {depth}, over the limit of {MAX_YAML_DEPTH} levels; \
                 flatten the data"
            ),
        });
    }
    let budget = std::cell::Cell::new(ExpansionBudget {
        nodes: MAX_YAML_NODES,
        bytes: MAX_YAML_EXPANDED_BYTES,
        exceeded: false,
    });
    let parsed = serde::de::DeserializeSeed::deserialize(
        BuildYaml(&budget),
        serde_yaml::Deserializer::from_str(&salt_scalars(text)),
    );
    if budget.get().exceeded {
        return Err(YamlError {
            file: file.to_string(),
            line: None,
            message: format!(
                "the document expands to more than {MAX_YAML_NODES} nodes or \
                 {MAX_YAML_EXPANDED_BYTES} bytes of text once its aliases (*name) are \
                 resolved; use fewer aliases or smaller anchored values"
            ),
        });
    }
    parsed.map_err(|err| YamlError {
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

/// PyYAML's YAML 1.1 booleans, as Salt's loader reads them.
fn yaml11_bool(word: &str) -> Option<&'static str> {
    match word {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some("true"),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some("false"),
        _ => None,
    }
}

/// A plain scalar as Salt's loader types it, when that differs from YAML 1.2: the replacement.
fn salt_scalar(word: &str) -> Option<String> {
    if let Some(b) = yaml11_bool(word) {
        return Some(b.to_string());
    }
    // Salt strips the leading zeros of `0644` (an octal int to YAML 1.1) and keeps the digits.
    let (sign, digits) = match word.strip_prefix(['-', '+']) {
        Some(rest) => (&word[..1], rest),
        None => ("", word),
    };
    let octal = digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    octal.then(|| {
        let stripped = digits.trim_start_matches('0');
        format!("{sign}{}", if stripped.is_empty() { "0" } else { stripped })
    })
}

/// Rewrites plain YAML 1.1 booleans and leading-zero integers in value positions (`key: yes`,
/// `- 0644`, `[on, off]`) into their YAML 1.2 spelling, leaving quoted scalars, keys, block
/// scalars (`|`, `>`) and continuation lines of multi-line plain scalars alone.
pub fn salt_scalars(text: &str) -> Cow<'_, str> {
    // Built only once a line changes: most rendered lines have nothing to rewrite, and a document
    // with no change is returned as it is, without a copy.
    let mut out: Option<String> = None;
    let mut block_indent: Option<usize> = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let this_start = line_start;
        line_start += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        let ending = &line[content.len()..];
        let indent = content.len() - content.trim_start_matches(' ').len();
        if let Some(parent) = block_indent {
            if content.trim().is_empty() || indent > parent {
                if let Some(out) = out.as_mut() {
                    out.push_str(line);
                }
                continue;
            }
            block_indent = None;
        }
        let (rewritten, opens_block) = rewrite_line(content);
        if opens_block {
            block_indent = Some(indent);
        }
        match rewritten {
            Some(new) => {
                let out = out.get_or_insert_with(|| {
                    let mut fresh = String::with_capacity(text.len() + 64);
                    fresh.push_str(&text[..this_start]);
                    fresh
                });
                out.push_str(&new);
                out.push_str(ending);
            }
            None => {
                if let Some(out) = out.as_mut() {
                    out.push_str(line);
                }
            }
        }
    }
    match out {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(text),
    }
}

/// One line: its rewritten text if anything changed, and whether it opens a block scalar.
fn rewrite_line(line: &str) -> (Option<String>, bool) {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(['#', '%']) || trimmed.starts_with("---") {
        return (None, false);
    }
    let mut at = line.len() - trimmed.len();
    let mut item = false;
    while line[at..].starts_with("- ") || &line[at..] == "-" {
        item = true;
        at += 1;
        at += line[at..].len() - line[at..].trim_start().len();
    }
    let rest = &line[at..];
    let value_start = match key_separator(rest) {
        Some(colon) => at + colon + 1,
        // A line that is neither an item nor `key: value` continues a multi-line scalar.
        None if item => at,
        None => return (None, false),
    };
    let value = &line[value_start..];
    let value_trimmed = value.trim_start();
    let value_at = value_start + (value.len() - value_trimmed.len());
    let value_end = comment_start(value_trimmed).map_or(line.len(), |c| value_at + c);
    let word = line[value_at..value_end].trim_end();
    let prefix = &line[..value_at];
    let suffix = &line[value_at + word.len()..];
    if word.starts_with(['|', '>']) {
        return (None, true);
    }
    if word.starts_with(['[', '{']) {
        let flow = rewrite_flow(word);
        return (
            (flow != word).then(|| format!("{prefix}{flow}{suffix}")),
            false,
        );
    }
    (
        salt_scalar(word).map(|new| format!("{prefix}{new}{suffix}")),
        false,
    )
}

/// The byte index of the `:` ending a mapping key at the start of `text`, if any.
fn key_separator(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    if let Some(&quote @ (b'\'' | b'"')) = bytes.first() {
        i = 1;
        while i < bytes.len() && bytes[i] != quote {
            i += if bytes[i] == b'\\' && quote == b'"' {
                2
            } else {
                1
            };
        }
        i += 1;
    }
    if bytes.first().is_some_and(|b| matches!(b, b'[' | b'{')) {
        return None;
    }
    while i < bytes.len() {
        if bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some(i);
        }
        if bytes[i] == b' ' && bytes.get(i + 1) == Some(&b'#') {
            return None;
        }
        i += 1;
    }
    None
}

/// Where a ` #` comment starts in a value, outside quotes.
fn comment_start(value: &str) -> Option<usize> {
    let bytes = value.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if (b == b'\'' || b == b'"') && (i == 0 || bytes[i - 1] == b' ') => {
                quote = Some(b)
            }
            None if b == b'#' && (i == 0 || bytes[i - 1] == b' ') => return Some(i),
            None => {}
        }
    }
    None
}

/// A one-line flow collection with its plain scalars rewritten.
fn rewrite_flow(flow: &str) -> String {
    let mut out = String::with_capacity(flow.len());
    let mut segment = String::new();
    let mut quote: Option<char> = None;
    let flush = |segment: &mut String, out: &mut String| {
        let word = segment.trim();
        match salt_scalar(word) {
            Some(new) => {
                let lead = &segment[..segment.len() - segment.trim_start().len()];
                let trail = &segment[segment.trim_end().len()..];
                out.push_str(lead);
                out.push_str(&new);
                out.push_str(trail);
            }
            None => out.push_str(segment),
        }
        segment.clear();
    };
    let mut chars = flow.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            segment.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' if segment.trim().is_empty() => {
                quote = Some(c);
                segment.push(c);
            }
            '[' | ']' | '{' | '}' | ',' => {
                flush(&mut segment, &mut out);
                out.push(c);
            }
            ':' if chars.peek().is_none_or(|n| *n == ' ') => {
                flush(&mut segment, &mut out);
                out.push(c);
            }
            c => segment.push(c),
        }
    }
    flush(&mut segment, &mut out);
    out
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
    fn refuses_a_flat_alias_fan_out_before_building_it() {
        // 20,000 items aliased 20,000 times: 400 million nodes from about 200 KB of text.
        let text = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["x"; 20_000].join(", "),
            vec!["*a"; 20_000].join(", ")
        );
        let started = std::time::Instant::now();
        let err = parse_yaml("pillar/big.sls", &text).unwrap_err();
        assert!(
            err.to_string().starts_with("pillar/big.sls: yaml error: "),
            "{err}"
        );
        assert!(err.message.contains("more than 1000000 nodes"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // Long anchored strings count by their bytes.
        let text = format!(
            "a: &a {}\nb: [{}]\n",
            "y".repeat(100_000),
            vec!["*a"; 1_000].join(", ")
        );
        let err = parse_yaml("x.sls", &text).unwrap_err();
        assert!(err.message.contains("67108864 bytes"), "{err}");
        // A few aliases stay fine, tags and duplicates behave as before.
        let ok = parse_yaml("x", "a: &a [1, 2]\nb: *a\nc: !t v\n").map(|y| yaml_to_json(&y));
        assert_eq!(ok, Ok(json!({"a": [1, 2], "b": [1, 2], "c": "v"})));
        let dup = parse_yaml("x", "a: 1\na: 2\n").unwrap_err();
        assert!(
            dup.message.contains("duplicate entry with key \"a\""),
            "{dup}"
        );
    }

    #[test]
    fn refuses_deep_nesting_before_parsing() {
        let flow = format!("a: {}{}\n", "[".repeat(300_000), "]".repeat(300_000));
        let started = std::time::Instant::now();
        let err = parse_yaml("deep.sls", &flow).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(err.line, Some(1));
        assert!(err.message.contains("over the limit of 64 levels"), "{err}");
        let block: String = (0..80)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let err = parse_yaml("deep.sls", &block).unwrap_err();
        assert_eq!(err.line, Some(65), "{err}");
        // Brackets in block scalars, quotes and comments are not nesting.
        let text = format!(
            "a: |\n  {}\nb: '{}'\nc: 1 # {}\nd: \"{}\"\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100),
            "[".repeat(100)
        );
        assert!(
            parse_yaml("x", &text).is_ok(),
            "{:?}",
            parse_yaml("x", &text)
        );
        let nested: String = (0..30)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(parse_yaml("x", &format!("{nested}{}[[[1]]]\n", " ".repeat(31))).is_ok());
        // A quote inside a plain scalar does not hide the brackets that follow from the scan.
        for hiding in ["a: b 'c\n", "a: b - 'c\n", "- x 'y\n", "a: don't\n"] {
            let text = format!("{hiding}z: {}{}\n", "[".repeat(5_000), "]".repeat(5_000));
            let err = parse_yaml("deep.sls", &text).unwrap_err();
            assert!(
                err.message.contains("limit of 64 levels"),
                "{hiding:?}: {err}"
            );
        }
        let quoted = "a: 'x'\nb: [\"y\", 'z']\nc: {\"k\":\"v\"}\nd:\n- 'w'\n";
        assert_eq!(too_deep(quoted, MAX_YAML_DEPTH), None);
    }

    #[test]
    fn converts_yaml_to_json() {
        // A leading-zero mode is the int 644, as Salt's loader reads it (the file module takes
        // its digits as octal).
        let yaml = parse_yaml("x", "1: a\ntrue: [1, 2.5, ~]\nk: !tag v\nmode: 0644\n");
        assert_eq!(
            yaml.map(|y| yaml_to_json(&y)),
            Ok(json!({"1": "a", "True": [1, 2.5, null], "k": "v", "mode": 644}))
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

    #[test]
    fn reads_yaml_1_1_scalars_as_salt_does() {
        let cases = [
            (
                "a: yes\nb: No\nc: on\nd: OFF\n",
                json!({"a": true, "b": false, "c": true, "d": false}),
            ),
            (
                "a: 'yes'\nb: \"off\"\nc: yesterday\n",
                json!({"a": "yes", "b": "off", "c": "yesterday"}),
            ),
            (
                "mode: 0644\ndir_mode: 0755 # comment\nzero: 00\nplain: 644\nq: '0644'\n",
                json!({"mode": 644, "dir_mode": 755, "zero": 0, "plain": 644, "q": "0644"}),
            ),
            (
                "- yes\n- - off\n- k: on\n  m: 0600\n",
                json!([true, [false], {"k": true, "m": 600}]),
            ),
            (
                "f: [yes, 'no', 0644, {x: on}]\n",
                json!({"f": [true, "no", 644, {"x": true}]}),
            ),
            (
                "t: |\n  yes\n  0644\nu: >\n  on\nv: no\n",
                json!({"t": "yes\n0644\n", "u": "on\n", "v": false}),
            ),
            (
                "d: this is\n  on\nyes: key stays\nurl: http://x/on\n",
                json!({"d": "this is on", "yes": "key stays", "url": "http://x/on"}),
            ),
        ];
        for (text, expected) in cases {
            let parsed = parse_yaml("x", text).map(|y| yaml_to_json(&y));
            assert_eq!(parsed, Ok(expected), "{text:?}");
        }
    }
}
