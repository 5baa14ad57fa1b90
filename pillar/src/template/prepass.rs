//! A source pre-pass that turns Salt's Jinja dialect into what minijinja parses. minijinja has no
//! pluggable statements, so Salt's own tags become standard ones calling helper functions:
//!
//! - `{% import_yaml "x.yaml" as v %}` (and `import_json`, `import_text`) becomes
//!   `{% set v = __import_data("x.yaml", "<this file>", "yaml") %}`;
//! - `{% load_yaml as v %}...{% endload %}` becomes `{% set v %}...{% endset %}` followed by
//!   `{% set v = __load_data(v, "yaml") %}`;
//! - `{% do expr %}` accepts any expression (minijinja only takes calls): `{% set __do = expr %}`;
//! - dict and list literals become `__dict({...})` / `__list([...])`, mutable objects, so that
//!   `{% do d.update(x) %}` works on them as in Python;
//! - `'%s-%s' % (a, b)` (a string literal, a name or a bracketed expression on the left)
//!   becomes `'%s-%s'|__percent((a, b))`, which formats a string and takes a number's modulo.
//!
//! Line breaks are kept exactly, so error line numbers still match the user's file.

/// Rewrites one template's source; `file` is its path in the tree (for relative imports).
pub(crate) fn rewrite(source: &str, file: &str) -> String {
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    let mut loads: Vec<(String, String)> = Vec::new();
    let mut rest = source;
    while let Some(start) = find_open(rest) {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some((text, consumed)) = rewrite_tag(tag, file, &mut loads) else {
            // Unterminated: copy it as is; minijinja reports the syntax error with its line.
            out.push_str(tag);
            return out;
        };
        out.push_str(&text);
        rest = &tag[consumed..];
    }
    out.push_str(rest);
    out
}

/// Rewrites the tag that `tag` starts with: the new text and how many bytes it replaced.
fn rewrite_tag(
    tag: &str,
    file: &str,
    loads: &mut Vec<(String, String)>,
) -> Option<(String, usize)> {
    match tag.as_bytes()[1] {
        b'#' => {
            let end = comment_len(tag)?;
            Some((tag[..end].to_string(), end))
        }
        b'{' => {
            let end = find_close(&tag[2..], b'}')?;
            let (open_mark, inner, close_mark) = split_marks(&tag[2..2 + end]);
            let text = format!(
                "{{{{{open_mark}{}{close_mark}}}}}",
                rewrite_expression(inner)
            );
            Some((text, 2 + end + 2))
        }
        _ => {
            let end = find_close(&tag[2..], b'%')?;
            let body = &tag[2..2 + end];
            let consumed = 2 + end + 2;
            match raw_block_len(body, &tag[consumed..]) {
                Some(len) => Some((tag[..consumed + len].to_string(), consumed + len)),
                None => Some((rewrite_statement(body, file, loads), consumed)),
            }
        }
    }
}

/// The length of the comment `tag` starts with, up to and including its `#}` (the `#` of
/// `{#` does not close it: `{#}` is an unterminated comment, as in Jinja).
pub(super) fn comment_len(tag: &str) -> Option<usize> {
    Some(tag.get(2..)?.find("#}")? + 4)
}

/// The next `{{`, `{%` or `{#`.
pub(super) fn find_open(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#'))
}

/// The end of a tag body: the `%}` or `}}` outside string literals and brackets.
pub(super) fn find_close(body: &str, marker: u8) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_string(bytes, i),
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            c if c == marker && depth == 0 && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the string literal starting at `start`.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Splits whitespace-control markers (`-`, `+`) off a tag body.
pub(super) fn split_marks(body: &str) -> (&str, &str, &str) {
    let open = if body.starts_with(['-', '+']) { 1 } else { 0 };
    let close = if body.len() > open && body.ends_with(['-', '+']) {
        1
    } else {
        0
    };
    (
        &body[..open],
        &body[open..body.len() - close],
        &body[body.len() - close..],
    )
}

/// For `{% raw %}`, the length of `after` up to and including its `{% endraw %}` (all of it
/// when there is none). As Jinja's lexer, only a whole `{%[-+] endraw [-+]%}` ends the block:
/// any other `{%` inside it is text.
pub(super) fn raw_block_len(body: &str, after: &str) -> Option<usize> {
    let (_, inner, _) = split_marks(body);
    if inner.trim() != "raw" {
        return None;
    }
    let mut offset = 0;
    while let Some(found) = after[offset..].find("{%") {
        let at = offset + found;
        if let Some(len) = endraw_len(&after[at + 2..]) {
            return Some(at + 2 + len);
        }
        offset = at + 2;
    }
    Some(after.len())
}

/// When `text` (what follows a `{%`) is `[-+] endraw [-+]%}`, its length.
fn endraw_len(text: &str) -> Option<usize> {
    let rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    let rest = rest.trim_start().strip_prefix("endraw")?.trim_start();
    let rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
    let rest = rest.strip_prefix("%}")?;
    Some(text.len() - rest.len())
}

fn rewrite_statement(body: &str, file: &str, loads: &mut Vec<(String, String)>) -> String {
    let (open, inner, close) = split_marks(body);
    let trimmed = inner.trim_start();
    let leading = &inner[..inner.len() - trimmed.len()];
    let (word, args) = match trimmed.find(|c: char| !(c.is_alphanumeric() || c == '_')) {
        Some(end) => (&trimmed[..end], &trimmed[end..]),
        None => (trimmed, ""),
    };
    let tag = |text: String| format!("{{%{open}{leading}{text} {close}%}}");
    match word {
        "import_yaml" | "import_json" | "import_text" => {
            if let Some((path, name)) = split_as(args) {
                let kind = &word["import_".len()..];
                return tag(format!(
                    "set {name} = __import_data({}, {}, \"{kind}\")",
                    rewrite_expression(path),
                    quote(file)
                ));
            }
        }
        "load_yaml" | "load_json" | "load_text" => {
            if let Some(name) = args.trim().strip_prefix("as ").map(str::trim) {
                loads.push((name.to_string(), word["load_".len()..].to_string()));
                return tag(format!("set {name}"));
            }
        }
        "endload" => {
            if let Some((name, kind)) = loads.pop() {
                return format!(
                    "{{%{open}{leading}endset %}}{{% set {name} = __load_data({name}, \"{kind}\") \
                     {close}%}}"
                );
            }
        }
        "do" => {
            return tag(format!("set __do = {}", rewrite_expression(args.trim())));
        }
        _ => {}
    }
    format!("{{%{open}{}{close}%}}", rewrite_expression(inner))
}

/// `"x.yaml" as name [with context]` -> (`"x.yaml"`, `name`).
fn split_as(args: &str) -> Option<(&str, &str)> {
    let at = args.rfind(" as ")?;
    let path = args[..at].trim();
    let mut name = args[at + 4..].trim();
    for suffix in ["with context", "without context"] {
        name = name.strip_suffix(suffix).unwrap_or(name).trim();
    }
    (!path.is_empty() && !name.is_empty()).then_some((path, name))
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    Space,
    Str,
    Num,
    Name,
    Punct(u8),
}

pub(super) fn tokenize(text: &str) -> Vec<(Token, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let token = if c.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            Token::Space
        } else if c == b'\'' || c == b'"' {
            i = skip_string(bytes, i);
            Token::Str
        } else if c.is_ascii_digit() {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
            {
                i += 1;
            }
            Token::Num
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80)
            {
                i += 1;
            }
            Token::Name
        } else {
            i += 1;
            Token::Punct(c)
        };
        out.push((token, &text[start..i.min(bytes.len())]));
    }
    out
}

/// Names after which a `[` starts a list literal rather than a subscript.
const KEYWORDS: &[&str] = &[
    "in", "and", "or", "not", "if", "else", "elif", "is", "set", "do", "for", "return", "with",
    "call", "filter", "print",
];

/// Rewrites the expressions of one tag body (see the module doc).
pub(crate) fn rewrite_expression(text: &str) -> String {
    let tokens = tokenize(text);
    let mut pieces: Vec<String> = tokens.iter().map(|(_, t)| t.to_string()).collect();
    rewrite_percent(&tokens, &mut pieces);
    let mut stack: Vec<bool> = Vec::new();
    let mut previous: Option<(Token, &str)> = None;
    for (i, (token, text)) in tokens.iter().enumerate() {
        match token {
            Token::Punct(b'[') | Token::Punct(b'{') => {
                let literal = *token == Token::Punct(b'{')
                    || match previous {
                        None => true,
                        Some((Token::Name, name)) => KEYWORDS.contains(&name),
                        Some((Token::Punct(p), _)) => !matches!(p, b')' | b']' | b'}'),
                        Some(_) => false,
                    };
                if literal {
                    let wrapper = if *token == Token::Punct(b'[') {
                        "__list("
                    } else {
                        "__dict("
                    };
                    pieces[i].insert_str(0, wrapper);
                }
                stack.push(literal);
            }
            Token::Punct(b'(') => stack.push(false),
            Token::Punct(b']') | Token::Punct(b'}') | Token::Punct(b')')
                if stack.pop() == Some(true) =>
            {
                insert_after_close(&mut pieces[i], ")");
            }
            _ => {}
        }
        if *token != Token::Space {
            previous = Some((*token, text));
        }
    }
    pieces.concat()
}

/// Appends to a closing bracket's piece, keeping anything `rewrite_percent` already put after it.
fn insert_after_close(piece: &mut String, text: &str) {
    piece.insert_str(1, text);
}

/// `'fmt' % operand` (or `fmt % operand`) -> `'fmt'|__percent(operand)`.
fn rewrite_percent(tokens: &[(Token, &str)], pieces: &mut [String]) {
    let significant = |from: usize| (from..tokens.len()).find(|&j| tokens[j].0 != Token::Space);
    let mut previous: Option<Token> = None;
    for i in 0..tokens.len() {
        let token = tokens[i].0;
        // A name or a bracketed expression on the left may hold a format string
        // (`fmt % args`): `__percent` formats a string and takes the modulo of a number.
        if token == Token::Punct(b'%')
            && matches!(
                previous,
                Some(Token::Str | Token::Name | Token::Punct(b')' | b']'))
            )
            && let Some(start) = significant(i + 1)
            && let Some(end) = operand_end(tokens, start)
        {
            pieces[i] = "|__percent(".to_string();
            // Newlines stay, so that line numbers in errors still match the file.
            for space in &mut pieces[i + 1..start] {
                if !space.contains('\n') {
                    space.clear();
                }
            }
            pieces[end].push(')');
        }
        if token != Token::Space {
            previous = Some(token);
        }
    }
}

/// Last token index of the operand starting at `start`: a primary with its attribute,
/// subscript, call and filter suffixes.
fn operand_end(tokens: &[(Token, &str)], start: usize) -> Option<usize> {
    let mut end = match tokens[start].0 {
        Token::Name | Token::Str | Token::Num => start,
        Token::Punct(b'(' | b'[' | b'{') => matching(tokens, start)?,
        _ => return None,
    };
    loop {
        let next = end + 1;
        match tokens.get(next).map(|t| t.0) {
            Some(Token::Punct(b'.')) if tokens.get(next + 1).map(|t| t.0) == Some(Token::Name) => {
                end = next + 1;
            }
            Some(Token::Punct(b'(' | b'[')) => end = matching(tokens, next)?,
            _ => {
                // A filter binds tighter than `%`: `'%s' % x|join(',')`.
                let significant =
                    |from: usize| (from..tokens.len()).find(|&j| tokens[j].0 != Token::Space);
                let Some(pipe) = significant(next).filter(|&p| tokens[p].0 == Token::Punct(b'|'))
                else {
                    return Some(end);
                };
                let Some(name) = significant(pipe + 1).filter(|&n| tokens[n].0 == Token::Name)
                else {
                    return Some(end);
                };
                end = name;
            }
        }
    }
}

fn matching(tokens: &[(Token, &str)], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, (token, _)) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct(b'(' | b'[' | b'{') => depth += 1,
            Token::Punct(b')' | b']' | b'}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn rewrites_salt_statements_literals_and_percent_keeping_lines() {
        let cases = [
            (
                "{% import_yaml 'a/defaults.yaml' as d %}",
                "{% set d = __import_data('a/defaults.yaml', \"f/x.sls\", \"yaml\") %}",
            ),
            (
                "{%- import_json tpldir ~ '/m.json' as m with context -%}",
                "{%- set m = __import_data(tpldir ~ '/m.json', \"f/x.sls\", \"json\") -%}",
            ),
            (
                "{% load_yaml as v -%}\na: 1\n{%- endload %}x",
                "{% set v -%}\na: 1\n{%- endset %}{% set v = __load_data(v, \"yaml\") %}x",
            ),
            (
                "{% do d.update({'a': [1]}) %}",
                "{% set __do = d.update(__dict({'a': __list([1])})) %}",
            ),
            (
                "{{ x[0] }}{{ f(x)[1] }}{{ 'ab'[0] }}",
                "{{ x[0] }}{{ f(x)[1] }}{{ 'ab'[0] }}",
            ),
            ("{% for i in [1, 2] %}", "{% for i in __list([1, 2]) %}"),
            ("{{ '%s-%s' % (a, b) }}", "{{ '%s-%s' |__percent((a, b)) }}"),
            (
                "{{ 'a' ~ '%s' % x.y[0]|upper ~ 'b' }}",
                "{{ 'a' ~ '%s' |__percent(x.y[0]|upper) ~ 'b' }}",
            ),
            ("{{ 7 % 2 }}", "{{ 7 % 2 }}"),
            (
                "{# {'a': [ #}{% raw %}{{ {} }}{% endraw %}",
                "{# {'a': [ #}{% raw %}{{ {} }}{% endraw %}",
            ),
            ("{{ \"{'not': [1]}\" }}", "{{ \"{'not': [1]}\" }}"),
            (
                "a: {b: 1}\n{{ {'k': 'v'}['k'] }}",
                "a: {b: 1}\n{{ __dict({'k': 'v'})['k'] }}",
            ),
            ("{% if x %}\n{{ unterminated", "{% if x %}\n{{ unterminated"),
            // Found by the sls_render fuzz target: the `%` of an inner `{%}` closed the tag
            // and sliced the body backwards (a panic).
            ("{% raw%}{%}x", "{% raw%}{%}x"),
            (
                "{% raw %}{%}\n{%- endraw +%}{{ [1] }}",
                "{% raw %}{%}\n{%- endraw +%}{{ __list([1]) }}",
            ),
            ("{#}{{ {} }}#}{{ 1 }}", "{#}{{ {} }}#}{{ 1 }}"),
        ];
        for (source, expected) in cases {
            let got = rewrite(source, "f/x.sls");
            assert_eq!(got, expected, "{source:?}");
            assert_eq!(got.lines().count(), source.lines().count(), "{source:?}");
        }
    }
}
