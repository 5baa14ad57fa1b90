//! YAML written the way PyYAML's `yaml.dump` writes it, because Salt's `slsutil.serialize('yaml')`
//! and its `yaml` filter are that call and templates put their text into files: the same
//! collection styles (`default_flow_style`: `None` makes a collection of scalars flow style,
//! `{a: 1}`, and one holding a collection block style), sorted keys, block sequences not indented
//! under their key, flow collections wrapped past column 80, scalars plain unless the YAML 1.1
//! resolver would read them as something else (`'yes'`, `'0644'`, `''`), single-quoted with
//! PyYAML's line folding otherwise, double-quoted with its escapes when they hold control (or,
//! without `allow_unicode`, non-ASCII) characters. Not reproduced: the folding of long
//! double-quoted scalars and of keys longer than 128 characters (`? ` keys).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value as Json;

/// PyYAML's `default_flow_style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowStyle {
    /// `True`: every collection in flow style.
    Always,
    /// `None`: flow style for a collection whose items are all scalars.
    Auto,
    /// `False`: block style, except for empty collections.
    Never,
}

/// PyYAML's `best_width`: flow collections and scalars wrap past this column.
const BEST_WIDTH: usize = 80;
/// PyYAML's `best_indent`.
const INDENT: usize = 2;

/// `yaml.dump(value, default_flow_style=style, allow_unicode=allow_unicode)` with the document end
/// marker (`...`) and the final newline removed, as Salt's serializer and filter return it.
pub(crate) fn dump(value: &Json, style: FlowStyle, allow_unicode: bool) -> String {
    let mut emitter = Emitter {
        out: String::new(),
        column: 0,
        whitespace: true,
        indention: true,
        style,
        allow_unicode,
    };
    match value {
        Json::Array(_) | Json::Object(_) if !emitter.is_flow(value) => {
            emitter.block(value, 0);
        }
        _ => emitter.node(value, Some(INDENT), 0),
    }
    let out = emitter.out;
    out.strip_suffix("\n...").unwrap_or(&out).to_string()
}

struct Emitter {
    out: String,
    column: usize,
    /// The last character written is whitespace (no separating space needed).
    whitespace: bool,
    /// Only indentation (and `- ` indicators) on the current line so far.
    indention: bool,
    style: FlowStyle,
    allow_unicode: bool,
}

fn is_collection(value: &Json) -> bool {
    matches!(value, Json::Array(_) | Json::Object(_))
}

fn sorted(map: &serde_json::Map<String, Json>) -> Vec<(&String, &Json)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

impl Emitter {
    fn is_flow(&self, value: &Json) -> bool {
        let children: Vec<&Json> = match value {
            Json::Array(items) => items.iter().collect(),
            Json::Object(map) => map.values().collect(),
            _ => return false,
        };
        children.is_empty()
            || match self.style {
                FlowStyle::Always => true,
                FlowStyle::Never => false,
                FlowStyle::Auto => !children.iter().any(|c| is_collection(c)),
            }
    }

    fn write(&mut self, text: &str) {
        self.out.push_str(text);
        self.column += text.chars().count();
    }

    fn indicator(&mut self, indicator: &str, need_whitespace: bool, whitespace: bool) {
        if !self.whitespace && need_whitespace {
            self.write(" ");
        }
        self.write(indicator);
        self.whitespace = whitespace;
        self.indention = false;
    }

    fn line_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
        self.whitespace = true;
        self.indention = true;
    }

    fn indent_to(&mut self, indent: usize) {
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.line_break();
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.out.push_str(&pad);
            self.column = indent;
        }
    }

    /// A block collection whose items start at column `indent`.
    fn block(&mut self, value: &Json, indent: usize) {
        match value {
            Json::Object(map) => {
                for (key, item) in sorted(map) {
                    self.indent_to(indent);
                    self.scalar_text(key, indent + INDENT, false, true);
                    self.indicator(":", false, false);
                    self.value(item, indent, true);
                }
            }
            Json::Array(items) => {
                for item in items {
                    self.indent_to(indent);
                    // The dash keeps the line an indentation one, so that a nested collection
                    // starts on it (`- - a`, `- k: v`).
                    let indention = self.indention;
                    self.indicator("-", true, false);
                    self.indention = indention;
                    self.value(item, indent, false);
                }
            }
            _ => {}
        }
    }

    /// The value of a block mapping key (`in_mapping`) or of a block sequence item, whose
    /// collection sits at column `indent`.
    fn value(&mut self, item: &Json, indent: usize, in_mapping: bool) {
        if is_collection(item) && !self.is_flow(item) {
            let nested_sequence = matches!(item, Json::Array(_));
            // A sequence under a mapping key is not indented ("indentless"); everything else is.
            let child = if in_mapping && nested_sequence {
                indent
            } else {
                indent + INDENT
            };
            self.block(item, child);
        } else {
            self.node(item, Some(indent + INDENT), 0);
        }
    }

    /// A scalar or a flow collection; `indent` is where its continuation lines start.
    fn node(&mut self, value: &Json, indent: Option<usize>, flow_level: usize) {
        let indent = indent.unwrap_or(INDENT);
        match value {
            Json::Null => self.plain("null"),
            Json::Bool(b) => self.plain(if *b { "true" } else { "false" }),
            Json::Number(n) => self.plain(&python_number(n)),
            Json::String(text) => self.scalar_text(text, indent, flow_level > 0, false),
            Json::Array(items) => {
                self.indicator("[", true, true);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.indicator(",", false, false);
                    }
                    if self.column > BEST_WIDTH {
                        self.indent_to(indent);
                    }
                    self.node(item, Some(indent + INDENT), flow_level + 1);
                }
                self.indicator("]", false, false);
            }
            Json::Object(map) => {
                self.indicator("{", true, true);
                for (i, (key, item)) in sorted(map).into_iter().enumerate() {
                    if i > 0 {
                        self.indicator(",", false, false);
                    }
                    if self.column > BEST_WIDTH {
                        self.indent_to(indent);
                    }
                    self.scalar_text(key, indent + INDENT, true, true);
                    self.indicator(":", false, false);
                    self.node(item, Some(indent + INDENT), flow_level + 1);
                }
                self.indicator("}", false, false);
            }
        }
    }

    fn plain(&mut self, text: &str) {
        if !self.whitespace {
            self.write(" ");
        }
        self.write(text);
        self.whitespace = false;
        self.indention = false;
    }

    /// A string in the style PyYAML's `choose_scalar_style` picks for it.
    fn scalar_text(&mut self, text: &str, indent: usize, in_flow: bool, simple_key: bool) {
        let analysis = analyze(text, self.allow_unicode);
        let split = !simple_key;
        let plain_ok = if in_flow {
            analysis.allow_flow_plain
        } else {
            analysis.allow_block_plain
        };
        if resolves_to_string(text)
            && !(simple_key && (text.is_empty() || analysis.multiline))
            && plain_ok
        {
            self.write_plain(text, indent, split);
        } else if analysis.allow_single_quoted && !(simple_key && analysis.multiline) {
            self.write_single_quoted(text, indent, split);
        } else {
            self.write_double_quoted(text);
        }
    }

    fn write_plain(&mut self, text: &str, indent: usize, split: bool) {
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write(" ");
        }
        self.whitespace = false;
        self.indention = false;
        for (i, word) in split_spaces(text).into_iter().enumerate() {
            if i % 2 == 1 && word == " " && self.column > BEST_WIDTH && split {
                self.indent_to(indent);
                self.whitespace = false;
                self.indention = false;
            } else {
                self.write(word);
            }
        }
    }

    fn write_single_quoted(&mut self, text: &str, indent: usize, split: bool) {
        self.indicator("'", true, false);
        let chars: Vec<char> = text.chars().collect();
        let mut start = 0;
        let mut end = 0;
        let (mut spaces, mut breaks) = (false, false);
        while end <= chars.len() {
            let ch = chars.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != chars.len()
                    {
                        self.indent_to(indent);
                    } else {
                        let run: String = chars[start..end].iter().collect();
                        self.write(&run);
                    }
                    start = end;
                }
            } else if breaks {
                if ch.is_none_or(|c| !is_break(c)) {
                    if chars[start] == '\n' {
                        self.line_break();
                    }
                    for _ in start..end {
                        self.line_break();
                    }
                    self.indent_to(indent);
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c) || c == '\'') && start < end {
                let run: String = chars[start..end].iter().collect();
                self.write(&run);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.indicator("'", false, false);
    }

    fn write_double_quoted(&mut self, text: &str) {
        self.indicator("\"", true, false);
        let mut body = String::new();
        for c in text.chars() {
            let printable = (' '..='~').contains(&c)
                || (self.allow_unicode
                    && (('\u{a0}'..='\u{d7ff}').contains(&c)
                        || ('\u{e000}'..='\u{fffd}').contains(&c)));
            let escape = match c {
                '\0' => Some("0"),
                '\u{7}' => Some("a"),
                '\u{8}' => Some("b"),
                '\t' => Some("t"),
                '\n' => Some("n"),
                '\u{b}' => Some("v"),
                '\u{c}' => Some("f"),
                '\r' => Some("r"),
                '\u{1b}' => Some("e"),
                '"' => Some("\""),
                '\\' => Some("\\"),
                '\u{85}' => Some("N"),
                '\u{a0}' if !printable => Some("_"),
                '\u{2028}' => Some("L"),
                '\u{2029}' => Some("P"),
                _ => None,
            };
            match escape {
                Some(e) => {
                    body.push('\\');
                    body.push_str(e);
                }
                None if printable && c != '\u{feff}' => body.push(c),
                None if (c as u32) <= 0xff => body.push_str(&format!("\\x{:02X}", c as u32)),
                None if (c as u32) <= 0xffff => body.push_str(&format!("\\u{:04X}", c as u32)),
                None => body.push_str(&format!("\\U{:08X}", c as u32)),
            }
        }
        self.write(&body);
        self.indicator("\"", false, false);
    }
}

/// Runs of non-spaces and runs of spaces, alternating, starting with a (possibly empty) word.
fn split_spaces(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_spaces = false;
    for (i, c) in text.char_indices() {
        if (c == ' ') != in_spaces {
            parts.push(&text[start..i]);
            start = i;
            in_spaces = !in_spaces;
        }
    }
    parts.push(&text[start..]);
    parts
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// A JSON number as Python's `repr` (through PyYAML's float representer) writes it.
fn python_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or_default();
        let text = format!("{f:?}");
        if let Some((mantissa, exponent)) = text.split_once('e') {
            let mantissa = if mantissa.contains('.') {
                mantissa.to_string()
            } else {
                format!("{mantissa}.0")
            };
            let sign = if exponent.starts_with('-') { "" } else { "+" };
            return format!("{mantissa}e{sign}{exponent}");
        }
        text
    } else {
        n.to_string()
    }
}

/// PyYAML's implicit resolvers (YAML 1.1): a plain scalar matching one is not a string.
fn resolves_to_string(text: &str) -> bool {
    static NOT_STRING: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(concat!(
            r"^(?:",
            // bool
            r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
            // float
            r"|[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
            r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
            r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
            // int
            r"|[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+",
            r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
            // merge, null, value
            r"|<<|~|null|Null|NULL|=",
            // timestamp
            r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
            r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?",
            r":[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?",
            r")$"
        ))
        .ok()
    });
    !text.is_empty() && NOT_STRING.as_ref().is_some_and(|re| !re.is_match(text))
}

struct Analysis {
    multiline: bool,
    allow_flow_plain: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

/// PyYAML's `analyze_scalar`.
fn analyze(text: &str, allow_unicode: bool) -> Analysis {
    let chars: Vec<char> = text.chars().collect();
    let is_space_or_break = |c: Option<&char>| {
        c.is_none_or(|c| matches!(c, '\0' | ' ' | '\t' | '\r' | '\n') || is_break(*c))
    };
    let mut block_indicators = false;
    let mut flow_indicators = false;
    let mut line_breaks = false;
    let mut special = false;
    let (mut leading_space, mut leading_break) = (false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    if text.starts_with("---") || text.starts_with("...") {
        block_indicators = true;
        flow_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = chars.len() == 1 || is_space_or_break(chars.get(1));
    let (mut previous_space, mut previous_break) = (false, false);
    for (index, &ch) in chars.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                flow_indicators = true;
                block_indicators = true;
            }
            if ch == '?' || ch == ':' {
                flow_indicators = true;
                block_indicators |= followed_by_whitespace;
            }
            if ch == '-' && followed_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        } else {
            if ",?[]{}".contains(ch) {
                flow_indicators = true;
            }
            if ch == ':' {
                flow_indicators = true;
                block_indicators |= followed_by_whitespace;
            }
            if ch == '#' && preceded_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || (' '..='~').contains(&ch)) {
            let unicode = (ch == '\u{85}'
                || ('\u{a0}'..='\u{d7ff}').contains(&ch)
                || ('\u{e000}'..='\u{fffd}').contains(&ch)
                || ('\u{10000}'..'\u{10ffff}').contains(&ch))
                && ch != '\u{feff}';
            if !unicode || !allow_unicode {
                special = true;
            }
        }
        let last = index + 1 == chars.len();
        if ch == ' ' {
            leading_space |= index == 0;
            trailing_space |= last;
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            leading_break |= index == 0;
            trailing_break |= last;
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_space_or_break(Some(&ch));
        followed_by_whitespace = is_space_or_break(chars.get(index + 2));
    }
    let mut allow_flow_plain = true;
    let mut allow_block_plain = true;
    let mut allow_single_quoted = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        allow_flow_plain = false;
        allow_block_plain = false;
    }
    if break_space || space_break || special {
        allow_flow_plain = false;
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if line_breaks {
        allow_flow_plain = false;
        allow_block_plain = false;
    }
    if flow_indicators {
        allow_flow_plain = false;
    }
    if block_indicators {
        allow_block_plain = false;
    }
    Analysis {
        multiline: line_breaks,
        allow_flow_plain,
        allow_block_plain,
        allow_single_quoted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Expected texts are PyYAML 6's (Salt 3008.3's venv), `salt.serializers.yaml.serialize`.
    #[test]
    fn dump_matches_pyyaml_default_flow_style_none() {
        let cases = [
            (json!({"a": 1}), "{a: 1}"),
            (
                json!({"b": {"x": 1, "y": [1, 2]}, "a": "z"}),
                "a: z\nb:\n  x: 1\n  y: [1, 2]",
            ),
            (
                json!({"l": [{"x": 1, "y": 2}, [1, 2], "q", {"n": {"m": 1}}]}),
                "l:\n- {x: 1, y: 2}\n- [1, 2]\n- q\n- n: {m: 1}",
            ),
            (json!([1, 2]), "[1, 2]"),
            (json!([[1, 2], {"a": 1}]), "- [1, 2]\n- {a: 1}"),
            (json!("abc"), "abc"),
            (json!(1), "1"),
            (json!(null), "null"),
            (json!(true), "true"),
            (json!({}), "{}"),
            (
                json!({"e": {}, "f": [], "g": null, "h": "yes", "i": "0644", "j": "a: b",
                       "k": "multi\nline", "m": "", "n": "1.5", "o": 1.5}),
                "e: {}\nf: []\ng: null\nh: 'yes'\ni: '0644'\nj: 'a: b'\nk: 'multi\n\n  line'\n\
                 m: ''\nn: '1.5'\no: 1.5",
            ),
            (json!([[[1]]]), "- - [1]"),
            (json!({"a": [[1, 2], [3]]}), "a:\n- [1, 2]\n- [3]"),
        ];
        for (value, expected) in cases {
            assert_eq!(dump(&value, FlowStyle::Auto, false), expected, "{value}");
        }
    }

    #[test]
    fn dump_wraps_flow_collections_and_long_scalars_as_pyyaml() {
        let items: Vec<String> = (0..20).map(|i| format!("item-number-{i}")).collect();
        assert_eq!(
            dump(&json!({ "long": items }), FlowStyle::Auto, false),
            "long: [item-number-0, item-number-1, item-number-2, item-number-3, item-number-4,\n  \
             item-number-5, item-number-6, item-number-7, item-number-8, item-number-9, item-number-10,\n  \
             item-number-11, item-number-12, item-number-13, item-number-14, item-number-15,\n  \
             item-number-16, item-number-17, item-number-18, item-number-19]"
        );
        let map: serde_json::Map<String, Json> = (0..12)
            .map(|i| (format!("k{i}"), json!(format!("value-{i}"))))
            .collect();
        assert_eq!(
            dump(&json!({ "d": map }), FlowStyle::Auto, false),
            "d: {k0: value-0, k1: value-1, k10: value-10, k11: value-11, k2: value-2, k3: value-3,\n  \
             k4: value-4, k5: value-5, k6: value-6, k7: value-7, k8: value-8, k9: value-9}"
        );
        assert_eq!(
            dump(
                &json!({ "longs": "word ".repeat(30) }),
                FlowStyle::Auto,
                false
            ),
            "{longs: 'word word word word word word word word word word word word word word word\n    \
             word word word word word word word word word word word word word word word '}"
        );
    }

    #[test]
    fn dump_flow_always_and_never() {
        let value = json!({"b": {"x": 1, "y": [1, 2]}, "a": "z", "e": []});
        assert_eq!(
            dump(&value, FlowStyle::Always, true),
            "{a: z, b: {x: 1, y: [1, 2]}, e: []}"
        );
        assert_eq!(
            dump(&value, FlowStyle::Never, true),
            "a: z\nb:\n  x: 1\n  y:\n  - 1\n  - 2\ne: []"
        );
        assert_eq!(
            dump(&json!("é\tx"), FlowStyle::Auto, false),
            "\"\\xE9\\tx\""
        );
        assert_eq!(dump(&json!("é"), FlowStyle::Auto, true), "é");
    }
}
