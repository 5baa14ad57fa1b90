//! Validation of the names that cross the wire and end up as paths or keys: agent ids, user
//! ids, environment and project names. Every entry point calls these before acting. Also
//! [`quote_input`], the one way an error quotes a value it refused, and [`printable`], the one
//! way the CLI and the console print text that came from elsewhere.

use std::fmt;

/// A name that failed validation, with what it was meant to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is invalid: {}",
            self.what,
            quote_input(&self.value),
            self.rule
        )
    }
}

/// The most characters of a refused value an error message quotes.
pub const QUOTED_INPUT_CHARS: usize = 64;

/// Quotes a value that came from outside for an error message: escaped as a Rust string literal
/// and cut after [`QUOTED_INPUT_CHARS`] characters (then with its full length), so a hostile
/// 10 MB value is not echoed back or logged in full.
pub fn quote_input(value: &str) -> String {
    match value.char_indices().nth(QUOTED_INPUT_CHARS) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
        None => format!("{value:?}"),
    }
}

/// Makes text safe to print on a terminal: control characters (an escape sequence in a state
/// id, an agent id or a job comment) are shown escaped (`\u{1b}`) instead of being
/// interpreted. Line breaks are escaped too: use [`printable_lines`] for multi-line text.
pub fn printable(text: &str) -> String {
    escape_controls(text, false)
}

/// [`printable`] that keeps line breaks and tabs (error messages, comments), escaping every
/// other control character, carriage returns included (they would overwrite the line).
pub fn printable_lines(text: &str) -> String {
    escape_controls(text, true)
}

fn escape_controls(text: &str, keep_lines: bool) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && !(keep_lines && (c == '\n' || c == '\t')) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl std::error::Error for InvalidName {}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    rule: &'static str,
) -> Result<(), InvalidName> {
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || value.len() > max || !value.chars().all(allowed) {
        return Err(InvalidName {
            what,
            value: value.to_owned(),
            rule,
        });
    }
    Ok(())
}

/// Agent ids are host-like names: letters, digits, '.', '-' and '_', starting alphanumeric.
pub fn validate_agent_id(id: &str) -> Result<(), InvalidName> {
    check(
        "agent id",
        id,
        128,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'),
        "use letters, digits, '.', '-' and '_' (at most 128, starting with a letter or digit)",
    )
}

/// User ids may be e-mail addresses, as in the RFC's `~/.makinastates.conf` examples.
pub fn validate_user_id(id: &str) -> Result<(), InvalidName> {
    check(
        "user id",
        id,
        128,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+'),
        "use letters, digits, '.', '-', '_', '+' and '@' (at most 128, starting with a letter or digit)",
    )
}

/// Project names become directory names under `srv/projects/`.
pub fn validate_project_name(name: &str) -> Result<(), InvalidName> {
    check(
        "project name",
        name,
        64,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'),
        "use lowercase letters, digits, '-' and '_' (at most 64, starting with a letter or digit)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        let hostile = "state\u{1b}]0;owned\u{7}\r\nnext";
        assert_eq!(printable(hostile), "state\\u{1b}]0;owned\\u{7}\\r\\nnext");
        assert_eq!(
            printable_lines(hostile),
            "state\\u{1b}]0;owned\\u{7}\\r\nnext"
        );
        assert_eq!(printable("plain text, été"), "plain text, été");
    }

    #[test]
    fn agent_ids_accept_host_names_and_refuse_paths() {
        for ok in ["node1", "web-01.example.com", "a_b"] {
            assert!(validate_agent_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(validate_agent_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names_are_lowercase_and_error_names_the_value() {
        assert!(validate_project_name("my_project-2").is_ok());
        let err = validate_project_name("../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "project name \"../x\" is invalid: use lowercase letters, digits, '-' and '_' (at most 64, starting with a letter or digit)"
        );
        assert!(validate_project_name("MyProject").is_err());
    }

    #[test]
    fn refused_values_are_quoted_only_up_to_a_short_prefix() {
        assert_eq!(quote_input("dev\n"), "\"dev\\n\"");
        let huge = "é".repeat(5_000_000);
        let quoted = quote_input(&huge);
        assert_eq!(
            quoted,
            format!("\"{}\"... (10000000 bytes)", "é".repeat(QUOTED_INPUT_CHARS))
        );
        let err = validate_agent_id(&"x".repeat(10_000_000)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn user_ids_may_be_email_addresses() {
        assert!(validate_user_id("someone@foo.net").is_ok());
        assert!(validate_user_id("some one").is_err());
        assert!(validate_user_id("").is_err());
    }
}
