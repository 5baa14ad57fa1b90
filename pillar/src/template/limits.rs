//! Memory bounds on rendering. minijinja's fuel bounds the instructions a template runs, not the
//! memory they ask for: `{% set s = s ~ s %}` in a loop doubles a string with one instruction.
//! There is no allocation hook, so the bound is built from two parts:
//!
//! - every operand of `~`, `+` and every product (`*`) goes through [`guard`] (the pre-pass wraps
//!   them in `__guard(...)`, [`guard_operators`]), which refuses a string over
//!   [`MAX_TEMPLATE_STRING`] bytes or a list over [`MAX_TEMPLATE_LIST`] items; a concatenation
//!   of two guarded values is at most twice the limit, and using it again fails;
//! - the rendered text is written into a [`CappedOutput`] that stops at [`MAX_TEMPLATE_OUTPUT`],
//!   and every printed value is counted ([`counting_formatter`], [`MAX_TEMPLATE_PRINTED`]), also
//!   when it goes into a `{% set %}` block or a macro's output.
//!
//! What remains unbounded: a filter or method that builds one large value from small operands
//! (`'x'|center(10**9)`, `'x'.ljust(...)`, `join` of a long repeated list) allocates once before
//! any check can see it; and the literal text of a loop body captured by `{% set %}...{% endset %}`
//! grows with the iterations (bounded only by fuel), since minijinja has no hook there.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::prepass::{
    Token, comment_len, find_close, find_open, raw_block_len, split_marks, tokenize,
};

/// The most bytes one render may output (the text of an SLS, a pillar file or a managed file).
pub const MAX_TEMPLATE_OUTPUT: usize = 32 * 1024 * 1024;
/// The most bytes a string may have when it is concatenated (`~`, `+`) or multiplied.
pub const MAX_TEMPLATE_STRING: usize = 16 * 1024 * 1024;
/// The most items a list may have when it is concatenated (`+`) or multiplied.
pub const MAX_TEMPLATE_LIST: usize = 1_000_000;

/// The most bytes of values one render may print (`{{ ... }}`), counted also when the text goes
/// into a `{% set %}` block or a macro's output, which [`MAX_TEMPLATE_OUTPUT`] never sees.
pub const MAX_TEMPLATE_PRINTED: usize = 64 * 1024 * 1024;

thread_local! {
    /// The cancel flag of the renders running on this thread ([`cancellable`]).
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `body` (renders on this thread) so that setting `flag` stops them soon: every printed
/// value, every write of output and every guarded `~`/`+`/`*` checks it and fails the render
/// with "the render was cancelled". Between those, a render runs at most its fuel. The master
/// sets the flag when the client of a push goes away.
pub fn cancellable<T>(flag: Arc<AtomicBool>, body: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<AtomicBool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CANCEL.with(|cell| *cell.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CANCEL.with(|cell| cell.borrow_mut().replace(flag)));
    body()
}

fn cancel_requested() -> bool {
    CANCEL.with(|cell| {
        cell.borrow()
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    })
}

fn cancelled_error() -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        "the render was cancelled (its client went away)",
    )
}

/// The render-local counter of printed bytes ([`counting_formatter`]).
const PRINTED_TEMP: &str = "__corpus_printed_bytes";

/// The formatter every `{{ ... }}` goes through: minijinja's own, after counting the value's
/// size (strings exactly, lists and maps roughly by their length) against
/// [`MAX_TEMPLATE_PRINTED`].
pub(crate) fn counting_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), Error> {
    if cancel_requested() {
        return Err(cancelled_error());
    }
    let size = match value.as_str() {
        Some(text) => text.len(),
        None => value.len().unwrap_or(1).saturating_mul(8),
    };
    let printed = state
        .get_temp(PRINTED_TEMP)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
        .saturating_add(size as u64);
    if printed > MAX_TEMPLATE_PRINTED as u64 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the template prints more than the limit of {MAX_TEMPLATE_PRINTED} bytes of \
                 values in one render"
            ),
        ));
    }
    state.set_temp(PRINTED_TEMP, Value::from(printed));
    minijinja::escape_formatter(out, state, value)
}

/// `__guard(value)`: the value itself, unless it is a string or list over the limits.
pub(crate) fn guard(value: Value) -> Result<Value, Error> {
    if cancel_requested() {
        return Err(cancelled_error());
    }
    let too_large = match value.kind() {
        ValueKind::String => value
            .as_str()
            .filter(|s| s.len() > MAX_TEMPLATE_STRING)
            .map(|s| {
                format!(
                    "a string of {} bytes is over the limit of {MAX_TEMPLATE_STRING} bytes for \
                     a value that is concatenated or repeated",
                    s.len()
                )
            }),
        // A repeated or concatenated list is lazy (an iterable that knows its length).
        ValueKind::Seq | ValueKind::Iterable => value.len().filter(|n| *n > MAX_TEMPLATE_LIST).map(|n| {
            format!(
                "a list of {n} items is over the limit of {MAX_TEMPLATE_LIST} items for a value \
                 that is concatenated or repeated"
            )
        }),
        _ => None,
    };
    match too_large {
        Some(message) => Err(Error::new(ErrorKind::InvalidOperation, message)),
        None => Ok(value),
    }
}

/// Where rendered text goes: a buffer that refuses to grow past [`MAX_TEMPLATE_OUTPUT`].
#[derive(Debug, Default)]
pub(crate) struct CappedOutput {
    pub(crate) bytes: Vec<u8>,
    /// Set when a write was refused, so the caller reports the limit and not a write failure.
    pub(crate) overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if cancel_requested() {
            return Err(std::io::Error::other("the render was cancelled"));
        }
        if self.bytes.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("template output limit reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Applies [`guard_operators`] to every expression and statement tag of a template the
/// pre-pass already rewrote. Comments and `{% raw %}` blocks are copied as they are.
pub(crate) fn guard_template(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + source.len() / 16);
    let mut rest = source;
    while let Some(start) = find_open(rest) {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let marker = match tag.as_bytes()[1] {
            b'#' => {
                let Some(end) = comment_len(tag) else {
                    out.push_str(tag);
                    return out;
                };
                out.push_str(&tag[..end]);
                rest = &tag[end..];
                continue;
            }
            b'{' => b'}',
            _ => b'%',
        };
        let Some(end) = find_close(&tag[2..], marker) else {
            // Unterminated: minijinja reports the syntax error with its line.
            out.push_str(tag);
            return out;
        };
        let body = &tag[2..2 + end];
        let consumed = 2 + end + 2;
        if marker == b'%'
            && let Some(len) = raw_block_len(body, &tag[consumed..])
        {
            out.push_str(&tag[..consumed + len]);
            rest = &tag[consumed + len..];
            continue;
        }
        let (open, inner, close) = split_marks(body);
        out.push_str(&tag[..2]);
        out.push_str(open);
        out.push_str(&guard_operators(inner));
        out.push_str(close);
        out.push_str(&tag[2 + end..consumed]);
        rest = &tag[consumed..];
    }
    out.push_str(rest);
    out
}

/// Bracket levels the guard pass descends into.
const MAX_BRACKET_DEPTH: usize = 200;

/// Names that end an operand of `~`/`+`/`*` (they bind looser, or start a statement's parts).
const LOOSER_WORDS: &[&str] = &[
    "in",
    "and",
    "or",
    "not",
    "if",
    "else",
    "elif",
    "is",
    "set",
    "do",
    "for",
    "return",
    "with",
    "without",
    "call",
    "filter",
    "print",
    "include",
    "import",
    "from",
    "extends",
    "macro",
    "as",
    "context",
    "ignore",
    "missing",
    "recursive",
    "block",
    "endset",
    "endif",
    "endfor",
];

/// Wraps every operand of `~` and `+`, and every product, of an expression in `__guard(...)`.
/// Operands are found by precedence: in Jinja `~` and `+` bind looser than `*`, `/`, `%`, `**`,
/// filters, tests, calls and subscripts, and tighter than comparisons, `not`, `and`, `or`,
/// conditionals, `,` and `=`; brackets are rewritten level by level. No line break is added.
pub(crate) fn guard_operators(text: &str) -> String {
    let tokens = tokenize(text);
    if !tokens
        .iter()
        .any(|(t, _)| matches!(t, Token::Punct(b'~' | b'+' | b'*')))
    {
        return text.to_string();
    }
    let mut pieces: Vec<String> = tokens.iter().map(|(_, t)| t.to_string()).collect();
    guard_level(&tokens, 0, tokens.len(), 0, &mut pieces);
    pieces.concat()
}

/// One bracket level, tokens `start..end`: splits it into operands and wraps those that are
/// concatenated or multiplied, then recurses into the brackets.
fn guard_level(
    tokens: &[(Token, &str)],
    start: usize,
    end: usize,
    depth: usize,
    pieces: &mut [String],
) {
    // Each operand: (first token, last non-space token, contains a product at this level).
    let mut operands: Vec<(usize, usize, bool)> = Vec::new();
    // The separators between them: whether each is `~` or `+`.
    let mut joins: Vec<bool> = Vec::new();
    let mut current: Option<(usize, usize, bool)> = None;
    // An attribute or filter name (`x.set`, `x|format`) is never a keyword.
    let mut after_dot_or_pipe = false;
    let mut after_star = false;
    let mut previous_ends_operand = false;
    // After `is`: 1 (a `not` may follow), after `is not`: 2; the next word is the test's name.
    let mut test_state = 0u8;
    let mut after_test_name = false;
    let mut i = start;
    while i < end {
        let (token, text) = tokens[i];
        // `+`/`-` are binary only right after something that ends an operand (`a - -b`).
        let operand_ends_here = current.is_some() && previous_ends_operand;
        let boundary = match token {
            Token::Space => None,
            Token::Punct(b'~') => Some(true),
            Token::Punct(b'+' | b'-') if operand_ends_here => Some(token == Token::Punct(b'+')),
            Token::Punct(b'=' | b'!' | b'<' | b'>' | b',' | b':') => Some(false),
            Token::Name if !after_dot_or_pipe && LOOSER_WORDS.contains(&text) => {
                // `is not`, `is defined`: a test binds tighter than `~`; after a test's name a
                // word other than `and`/`or`/`else`/`is` is its argument (minijinja's rule).
                let test = test_state > 0
                    || text == "is"
                    || (after_test_name && !matches!(text, "and" | "or" | "else"));
                (!test).then_some(false)
            }
            _ => None,
        };
        if token != Token::Space {
            after_dot_or_pipe = matches!(token, Token::Punct(b'.' | b'|'));
            // After a test's name (`x is divisibleby -3`) a sign starts the test's argument.
            let test_name =
                token == Token::Name && (test_state == 2 || (test_state == 1 && text != "not"));
            after_test_name = test_name;
            previous_ends_operand = !test_name
                && matches!(
                    token,
                    Token::Name | Token::Str | Token::Num | Token::Punct(b')' | b']' | b'}')
                );
            test_state = match (token, text) {
                (Token::Name, "is") => 1,
                (Token::Name, "not") if test_state == 1 => 2,
                _ => 0,
            };
        }
        if let Some(concatenation) = boundary {
            if let Some(operand) = current.take() {
                operands.push(operand);
                joins.push(concatenation);
            } else if let Some(last) = joins.last_mut() {
                *last |= concatenation;
            }
            i += 1;
            continue;
        }
        let mut last = i;
        if let Token::Punct(b'(' | b'[' | b'{') = token {
            let close = matching(tokens, i, end);
            // Deeper than minijinja's parser accepts (150): the render fails anyway, and the
            // recursion here stays bounded.
            if depth < MAX_BRACKET_DEPTH {
                guard_level(tokens, i + 1, close, depth + 1, pieces);
            }
            last = close;
            // The group is skipped whole: it ends an operand as its closing bracket would.
            previous_ends_operand = true;
            test_state = 0;
            after_test_name = false;
        }
        if token != Token::Space {
            // A leading `*` is a splat (`f(**kwargs)`), not a product; `**` is one operator.
            let star = token == Token::Punct(b'*');
            let product = star && current.is_some() && !after_star;
            after_star = star;
            current = Some(match current {
                Some((first, _, had)) => (first, last.min(end - 1), had || product),
                None => (i, last.min(end - 1), product),
            });
        }
        i = last + 1;
    }
    if let Some(operand) = current {
        operands.push(operand);
        joins.push(false);
    }
    for (index, &(first, last, product)) in operands.iter().enumerate() {
        let after = joins[index];
        let before = index > 0 && joins[index - 1];
        if product || after || before {
            pieces[first].insert_str(0, "__guard(");
            pieces[last].push(')');
        }
    }
}

/// The closing bracket matching the one at `open`, or `end` if it is missing.
fn matching(tokens: &[(Token, &str)], open: usize, end: usize) -> usize {
    let mut depth = 0usize;
    for (j, (token, _)) in tokens.iter().enumerate().take(end).skip(open) {
        match token {
            Token::Punct(b'(' | b'[' | b'{') => depth += 1,
            Token::Punct(b')' | b']' | b'}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{TemplateContext, TemplateEngine};
    use crate::tree::MemoryTree;
    use serde_json::json;

    fn render(source: &str) -> Result<String, String> {
        let engine = TemplateEngine::new(std::sync::Arc::new(MemoryTree::new()));
        let ctx = TemplateContext::new(json!({"a": "x"}), json!({}), json!({}), json!({}));
        engine
            .render("bomb.sls", source, &ctx)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn wraps_the_operands_of_concatenations_and_products() {
        let cases = [
            ("a ~ b", "__guard(a) ~ __guard(b)"),
            (" set s = s ~ s ", " set s = __guard(s) ~ __guard(s) "),
            (
                "'x' ~ y.z[0]|upper ~ f(a, b)",
                "__guard('x') ~ __guard(y.z[0]|upper) ~ __guard(f(a, b))",
            ),
            ("a + b * c", "__guard(a) + __guard(b * c)"),
            ("a - b == c", "a - b == c"),
            ("x if a ~ b else y", "x if __guard(a) ~ __guard(b) else y"),
            (
                "f(a ~ b, c=d * 2)",
                "f(__guard(a) ~ __guard(b), c=__guard(d * 2))",
            ),
            ("x is not none ~ y", "__guard(x is not none) ~ __guard(y)"),
            ("x.set ~ -y", "__guard(x.set) ~ __guard(-y)"),
            (" include 'a' ~ b ", " include __guard('a') ~ __guard(b) "),
            ("f(**kw)", "f(**kw)"),
            // Found by the property tests (pillar/tests/hostile_input.rs): signs that are unary.
            ("1 ~ --y", "__guard(1) ~ __guard(--y)"),
            (
                "y is divisibleby -3 ~ z",
                "__guard(y is divisibleby -3) ~ __guard(z)",
            ),
            ("y is number + y", "y is number + y"),
            (
                "(1 + 2) + 1 ~ 1",
                "__guard((__guard(1) + __guard(2))) + __guard(1) ~ __guard(1)",
            ),
            ("not a ~ b", "not __guard(a) ~ __guard(b)"),
            ("{'k': a ~ b}", "{'k': __guard(a) ~ __guard(b)}"),
        ];
        for (expression, expected) in cases {
            assert_eq!(guard_operators(expression), expected, "{expression:?}");
        }
        let template = "{% raw %}{{ a ~ b }}{% endraw %}{# a ~ b #}\n{{- a ~ b -}}";
        assert_eq!(
            guard_template(template),
            "{% raw %}{{ a ~ b }}{% endraw %}{# a ~ b #}\n{{- __guard(a) ~ __guard(b) -}}"
        );
    }

    #[test]
    fn a_doubling_string_fails_at_the_limit_instead_of_exhausting_memory() {
        let doubling = format!(
            "{{% set s = 'x' * 1000000 %}}\n{}{{{{ s|length }}}}",
            "{% set s = s ~ s %}\n".repeat(40)
        );
        let err = render(&doubling).unwrap_err();
        assert!(err.contains("over the limit of 16777216 bytes"), "{err}");
        assert!(err.starts_with("bomb.sls, line "), "{err}");
        let plus = format!(
            "{{% set s = 'x' * 1000000 %}}{}",
            "{% set s = s + s %}".repeat(40)
        );
        assert!(render(&plus).unwrap_err().contains("16777216 bytes"));
        let lists = "{% set l = [1] * 600000 %}{% set l = l + l %}{% set l = l + l %}";
        assert!(render(lists).unwrap_err().contains("1000000 items"));
        let loop_doubling = "{% set ns = namespace(s='x') %}{% for i in range(60) %}\
            {% set ns.s = ns.s ~ ns.s %}{% endfor %}";
        assert!(
            render(loop_doubling)
                .unwrap_err()
                .contains("16777216 bytes")
        );
        // Ordinary concatenations, sums and products render as before.
        assert_eq!(
            render("{{ pillar.a ~ '-' ~ 2 }} {{ 1 + 2 * 3 }} {{ [1] + [2] }} {{ 'ab' * 2 }}"),
            Ok("x-2 7 [1, 2] abab".to_string())
        );
    }

    #[test]
    fn values_printed_into_a_capture_are_counted() {
        let capture = "{% set big = 'x' * 1000000 %}{% set s %}{% for i in range(100) %}\
            {{ big }}{% endfor %}{% endset %}{{ s|length }}";
        let err = render(capture).unwrap_err();
        assert!(err.contains("limit of 67108864 bytes of values"), "{err}");
    }

    #[test]
    fn rendered_output_stops_at_the_limit() {
        let err = render("{% for i in range(40) %}{{ 'x' * 1000000 }}{% endfor %}").unwrap_err();
        assert!(err.contains("over the limit of 33554432 bytes"), "{err}");
    }
}
