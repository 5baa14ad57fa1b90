//! Salt's `file` functions that edit part of a file in place: `file.replace` (regex),
//! `file.blockreplace` (a block between marker lines), `file.append` (lines not yet there) and
//! `file.line` (one line by mode). Each reports Salt's unified `diff` and keeps the file's
//! mode and owner.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use corpus_states::Chunk;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value, json};

use super::StateContext;
use super::args::{Args, scalar_to_string};
use super::file::{TEST_NOTE, absolute_path, ensure_parent, unified_diff, write_atomically};
use super::result::Outcome;

/// The file's text, `None` when it does not exist.
fn read_text(name: &str) -> Result<Option<String>, String> {
    match fs::read(name) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{name} is not UTF-8 text: corpus edits text files only")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {name}: {e}")),
    }
}

/// Writes `new` over `old` (or creates the file), reporting Salt's outcome; with a `backup`
/// suffix, the file as it was is first copied to `name` + suffix (Salt's `backup='.bak'`).
fn finish(
    name: &str,
    old: Option<&str>,
    new: String,
    ctx: &StateContext,
    show_changes: bool,
    backup: Option<&str>,
) -> Result<Outcome, String> {
    if old == Some(new.as_str()) {
        return Ok(Outcome::ok("No changes needed to be made"));
    }
    let diff = if show_changes {
        unified_diff(old.unwrap_or_default().as_bytes(), new.as_bytes())
    } else {
        "<show_changes=False>".to_string()
    };
    let changes = Map::from_iter([("diff".to_string(), json!(diff))]);
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Changes would have been made\n{TEST_NOTE}"),
            changes,
        ));
    }
    let path = absolute_path(name)?;
    let meta = fs::metadata(&path).ok();
    if let (Some(suffix), Some(_)) = (backup, old) {
        let copy = format!("{name}{suffix}");
        fs::copy(&path, &copy).map_err(|e| format!("cannot back up {name} to {copy}: {e}"))?;
    }
    write_atomically(
        &path,
        new.as_bytes(),
        meta.as_ref().map(|m| m.permissions().mode() & 0o7777),
        meta.as_ref().map(|m| (m.uid(), m.gid())),
    )?;
    Ok(Outcome::changed("Changes were made", changes))
}

/// `backup` of `file.replace`/`file.blockreplace`: the suffix of the copy made before an edit,
/// `.bak` by default as in Salt; `False` or an empty string makes none.
fn backup_suffix(args: &Args) -> Result<Option<String>, String> {
    match args.raw("backup") {
        None => Ok(Some(".bak".to_string())),
        Some(Value::Bool(false) | Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() || s.eq_ignore_ascii_case("false") => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "backup must be a file suffix such as '.bak' or False, not {other}"
        )),
    }
}

/// Python's `re` flags as Salt takes them: a list of names or their integer sum.
fn regex_with_flags(pattern: &str, args: &Args) -> Result<Regex, String> {
    let (mut ignore_case, mut multi_line, mut dot_all, mut verbose) = (false, true, false, false);
    if let Some(flags) = args.raw("flags") {
        (ignore_case, multi_line, dot_all, verbose) = (false, false, false, false);
        let names: Vec<String> = match flags {
            Value::Number(n) => {
                let bits = n.as_u64().unwrap_or_default();
                ignore_case = bits & 2 != 0;
                multi_line = bits & 8 != 0;
                dot_all = bits & 16 != 0;
                verbose = bits & 64 != 0;
                Vec::new()
            }
            _ => args.string_list("flags")?,
        };
        for flag in names {
            match flag.to_ascii_uppercase().as_str() {
                "IGNORECASE" | "I" => ignore_case = true,
                "MULTILINE" | "M" => multi_line = true,
                "DOTALL" | "S" => dot_all = true,
                "VERBOSE" | "X" => verbose = true,
                other => return Err(format!("argument `flags`: {other} is not a supported flag")),
            }
        }
    }
    RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .multi_line(multi_line)
        .dot_matches_new_line(dot_all)
        .ignore_whitespace(verbose)
        .build()
        .map_err(|e| format!("pattern {pattern:?} is not a valid regular expression: {e}"))
}

/// Python's replacement syntax (`\1`, `\g<name>`, `\g<1>`) in Rust's (`${1}`, `${name}`).
fn python_replacement(repl: &str) -> String {
    let mut out = String::with_capacity(repl.len());
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut group = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        group.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('g') => {
                    chars.next();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        let group: String = chars.by_ref().take_while(|c| *c != '>').collect();
                        out.push_str(&format!("${{{group}}}"));
                    } else {
                        out.push_str("\\g");
                    }
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

/// `file.replace`: every match of `pattern` (Python regex, `MULTILINE` by default) becomes
/// `repl`; with `append_if_not_found`/`prepend_if_not_found`, `repl` (or
/// `not_found_content`) is added when nothing matches.
pub fn replace(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    absolute_path(name)?;
    let pattern = args
        .string("pattern")?
        .ok_or("file.replace needs `pattern`")?;
    let repl = args.string("repl")?.ok_or("file.replace needs `repl`")?;
    let Some(old) = read_text(name)? else {
        if args.bool("ignore_if_missing", false)? {
            return Ok(Outcome::ok(format!(
                "No changes needed to be made to {name}: it does not exist"
            )));
        }
        return Ok(Outcome::fail(format!("{name}: file not found")));
    };
    let regex = regex_with_flags(&pattern, &args)?;
    let count = args
        .string("count")?
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let new = if regex.is_match(&old) {
        regex
            .replacen(&old, count, python_replacement(&repl).as_str())
            .into_owned()
    } else {
        let content = args.string("not_found_content")?.unwrap_or(repl);
        let mut content = content;
        if !content.ends_with('\n') {
            content.push('\n');
        }
        if args.bool("append_if_not_found", false)? {
            let mut new = old.clone();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new + &content
        } else if args.bool("prepend_if_not_found", false)? {
            content + &old
        } else {
            old.clone()
        }
    };
    let backup = backup_suffix(&args)?;
    finish(
        name,
        Some(&old),
        new,
        ctx,
        args.bool("show_changes", true)?,
        backup.as_deref(),
    )
}

/// `file.blockreplace`: the lines between the line holding `marker_start` and the line holding
/// `marker_end` become `content`.
pub fn blockreplace(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    absolute_path(name)?;
    let start = args
        .string("marker_start")?
        .unwrap_or_else(|| "#-- start managed zone --".to_string());
    let end = args
        .string("marker_end")?
        .unwrap_or_else(|| "#-- end managed zone --".to_string());
    let mut content = match args.raw("content") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(scalar_to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => args.string("content")?.unwrap_or_default(),
    };
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    // Salt appends what `file.accumulated` states gathered for this file to the block.
    for lines in ctx
        .accumulators
        .for_file(&chunk.name)
        .into_iter()
        .flat_map(|m| m.into_values())
    {
        for line in lines
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            content.push_str(line);
            content.push('\n');
        }
    }
    let Some(old) = read_text(name)? else {
        return Ok(Outcome::fail(format!("{name}: file not found")));
    };
    let lines: Vec<&str> = old.split_inclusive('\n').collect();
    let start_at = lines.iter().position(|l| l.contains(start.trim()));
    let end_at = start_at.and_then(|s| {
        lines[s + 1..]
            .iter()
            .position(|l| l.contains(end.trim()))
            .map(|i| s + 1 + i)
    });
    let new = match (start_at, end_at) {
        (Some(s), Some(e)) => {
            let mut new: String = lines[..=s].concat();
            if !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&content);
            new.push_str(&lines[e..].concat());
            new
        }
        _ => {
            let block = format!("{start}\n{content}{end}\n");
            if args.bool("append_if_not_found", false)? {
                let mut new = old.clone();
                if !new.is_empty() && !new.ends_with('\n') {
                    new.push('\n');
                }
                new + &block
            } else if args.bool("prepend_if_not_found", false)? {
                block + &old
            } else {
                return Ok(Outcome::fail(
                    "Cannot edit marked block. Markers were not found in file.",
                ));
            }
        }
    };
    let backup = backup_suffix(&args)?;
    finish(
        name,
        Some(&old),
        new,
        ctx,
        args.bool("show_changes", true)?,
        backup.as_deref(),
    )
}

/// `text` of `file.append`: a string or a list, each entry one or more lines.
fn text_lines(args: &Args, key: &str) -> Result<Vec<String>, String> {
    Ok(args
        .string_list(key)?
        .iter()
        .flat_map(|chunk| chunk.lines().map(str::to_string).collect::<Vec<_>>())
        .collect())
}

/// Salt compares lines ignoring runs of whitespace.
fn squashed(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `file.append`: each line of `text` not yet in the file is appended (the file is created
/// when missing).
pub fn append(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let path = absolute_path(name)?;
    if args.raw("source").is_some() || args.raw("template").is_some() {
        return Err(
            "argument `source` of file.append is not supported by corpus: list the lines in `text`"
                .to_string(),
        );
    }
    let lines = text_lines(&args, "text")?;
    let old = read_text(name)?;
    let present: Vec<String> = old
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(squashed)
        .collect();
    let missing: Vec<&String> = lines
        .iter()
        .filter(|l| !present.contains(&squashed(l)))
        .collect();
    if missing.is_empty() && old.is_some() {
        return Ok(Outcome::ok(format!("File {name} is in correct state")));
    }
    let mut new = old.clone().unwrap_or_default();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    for line in &missing {
        new.push_str(line);
        new.push('\n');
    }
    if !ctx.test {
        ensure_parent(
            &path,
            args.bool("makedirs", false)?,
            None,
            &format!("Parent directory of {name} does not exist: set makedirs: True"),
        )?;
    }
    let mut out = finish(name, old.as_deref(), new, ctx, true, None)?;
    if out.result == Some(true) {
        out.comment = format!("Appended {} lines", missing.len());
    }
    Ok(out)
}

/// `file.line`: one line, by `mode`: `replace` the lines matching `match` with `content`,
/// `delete` them, `insert` `content` (at `location` start/end, or `before`/`after` a matching
/// line) when missing, or `ensure` it directly `after`/`before` a matching line.
pub fn line(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let path = absolute_path(name)?;
    let mode = args
        .string("mode")?
        .ok_or("file.line needs `mode`: replace, delete, insert or ensure")?
        .to_ascii_lowercase();
    let content = args.string("content")?.unwrap_or_default();
    let pattern = args.string("match")?;
    let search = |p: &str| {
        Regex::new(p).map_err(|e| format!("`{p}` is not a valid regular expression: {e}"))
    };
    let old = match read_text(name)? {
        Some(text) => text,
        None if args.bool("create", false)? => {
            if !ctx.test {
                ensure_parent(&path, true, None, "")?;
            }
            String::new()
        }
        None => return Ok(Outcome::fail(format!("{name}: file not found"))),
    };
    let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
    let indent = args.bool("indent", true)?;
    let find = |lines: &[String], key: &str| -> Result<Option<usize>, String> {
        match args.string(key)? {
            Some(p) => {
                let re = search(&p)?;
                Ok(lines.iter().position(|l| re.is_match(l)))
            }
            None => Ok(None),
        }
    };
    match mode.as_str() {
        "replace" | "delete" => {
            let re = search(pattern.as_deref().unwrap_or(&regex::escape(&content)))?;
            if mode == "delete" {
                lines.retain(|l| !re.is_match(l));
            } else {
                for l in lines.iter_mut().filter(|l| re.is_match(l)) {
                    let lead: String = l.chars().take_while(|c| c.is_whitespace()).collect();
                    *l = if indent {
                        format!("{lead}{}", content.trim_start())
                    } else {
                        content.clone()
                    };
                }
            }
        }
        "insert" | "ensure" => {
            let has_anchor = args.raw("before").is_some() || args.raw("after").is_some();
            let after = find(&lines, "after")?;
            let before = find(&lines, "before")?;
            if has_anchor && after.is_none() && before.is_none() {
                return Ok(Outcome::fail(format!(
                    "Unable to find the before/after line in {name}"
                )));
            }
            let present = |lines: &[String], at: usize| {
                lines.get(at).is_some_and(|l| l.trim() == content.trim())
            };
            match (after, before) {
                (Some(a), Some(b)) if b > a => {
                    if !(a + 1..b).any(|i| present(&lines, i)) {
                        if mode == "ensure" && b == a + 2 {
                            lines[a + 1] = content.clone();
                        } else {
                            lines.insert(a + 1, content.clone());
                        }
                    }
                }
                (Some(a), _) => {
                    // `insert` adds the line once anywhere; `ensure` wants it right after.
                    let in_place = present(&lines, a + 1);
                    let anywhere = lines.iter().any(|l| l.trim() == content.trim());
                    if !(in_place || mode == "insert" && anywhere) {
                        lines.insert(a + 1, content.clone());
                    }
                }
                (None, Some(b)) => {
                    let in_place = b > 0 && present(&lines, b - 1);
                    let anywhere = lines.iter().any(|l| l.trim() == content.trim());
                    if !(in_place || mode == "insert" && anywhere) {
                        lines.insert(b, content.clone());
                    }
                }
                (None, None) if mode == "ensure" => {
                    return Err("file.line mode ensure needs `before` or `after`".to_string());
                }
                (None, None) => {
                    if !lines.iter().any(|l| l.trim() == content.trim()) {
                        match args.string("location")?.as_deref() {
                            Some("start") => lines.insert(0, content.clone()),
                            Some("end") | None => lines.push(content.clone()),
                            Some(other) => {
                                return Err(format!(
                                    "argument `location` must be start or end, got {other:?}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "file.line mode {other:?} is not one of replace, delete, insert, ensure"
            ));
        }
    }
    let mut new = lines.join("\n");
    if !lines.is_empty() && (old.ends_with('\n') || old.is_empty()) {
        new.push('\n');
    }
    finish(
        name,
        Some(&old),
        new,
        ctx,
        args.bool("show_changes", true)?,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    /// Writes `before` to a file, applies `function` with `args`, returns the outcome and the
    /// file's text after.
    fn edit(
        function: &str,
        before: Option<&str>,
        args: Value,
        test: bool,
    ) -> (Outcome, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("f.conf").display().to_string();
        if let Some(text) = before {
            fs::write(&name, text).unwrap();
        }
        let mut args = args;
        if let Some(map) = args.as_object_mut() {
            map.insert("name".into(), json!(name));
        }
        let c = chunk(function, "e", args);
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let ctx = ctx(test, &src, &svc);
        let out = match function {
            "file.replace" => replace(&c, &ctx),
            "file.blockreplace" => blockreplace(&c, &ctx),
            "file.append" => append(&c, &ctx),
            "file.line" => line(&c, &ctx),
            other => panic!("no {other}"),
        }
        .unwrap_or_else(Outcome::fail);
        (out, fs::read_to_string(&name).ok())
    }

    #[test]
    fn replace_and_blockreplace_keep_a_bak_copy_unless_backup_is_false() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("f.conf").display().to_string();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let run = |args: Value| {
            fs::write(&name, "port=80\n").unwrap();
            let _ = fs::remove_file(format!("{name}.bak"));
            let mut args = args;
            args["name"] = json!(name);
            let c = chunk("file.replace", "e", args);
            replace(&c, &ctx(false, &src, &svc)).unwrap()
        };
        let out = run(json!({"pattern": "80", "repl": "8080"}));
        assert_eq!(out.result, Some(true));
        assert_eq!(fs::read_to_string(&name).unwrap(), "port=8080\n");
        assert_eq!(
            fs::read_to_string(format!("{name}.bak")).unwrap(),
            "port=80\n"
        );
        run(json!({"pattern": "80", "repl": "8080", "backup": false}));
        assert!(!std::path::Path::new(&format!("{name}.bak")).exists());
        run(json!({"pattern": "80", "repl": "8080", "backup": ".orig"}));
        assert_eq!(
            fs::read_to_string(format!("{name}.orig")).unwrap(),
            "port=80\n"
        );
        // No change, no copy.
        run(json!({"pattern": "nomatch", "repl": "x"}));
        assert!(!std::path::Path::new(&format!("{name}.bak")).exists());
    }

    #[test]
    fn each_edit_gives_salts_text() {
        let cases: Vec<(&str, Option<&str>, Value, Option<&str>)> = vec![
            (
                "file.replace",
                Some("port=80\nhost=a\n"),
                json!({"pattern": "^port=.*$", "repl": "port=8080"}),
                Some("port=8080\nhost=a\n"),
            ),
            (
                "file.replace",
                Some("a-1 b-2\n"),
                json!({"pattern": "(\\w)-(\\d)", "repl": "\\2:\\g<1>", "count": 1}),
                Some("1:a b-2\n"),
            ),
            (
                "file.replace",
                Some("X=1\n"),
                json!({"pattern": "x=1", "repl": "x=2", "flags": ["IGNORECASE"]}),
                Some("x=2\n"),
            ),
            (
                "file.replace",
                Some("a\n"),
                json!({"pattern": "^b=", "repl": "b=1", "append_if_not_found": true}),
                Some("a\nb=1\n"),
            ),
            (
                "file.replace",
                Some("a\n"),
                json!({"pattern": "^b=", "repl": "b=1", "prepend_if_not_found": true}),
                Some("b=1\na\n"),
            ),
            (
                "file.replace",
                Some("a\n"),
                json!({"pattern": "^b=", "repl": "b=1"}),
                Some("a\n"),
            ),
            (
                "file.blockreplace",
                Some("top\n# BEGIN\nold\n# END\nbottom\n"),
                json!({"marker_start": "# BEGIN", "marker_end": "# END", "content": "new1\nnew2"}),
                Some("top\n# BEGIN\nnew1\nnew2\n# END\nbottom\n"),
            ),
            (
                "file.blockreplace",
                Some("top\n"),
                json!({"marker_start": "# BEGIN", "marker_end": "# END", "content": ["x"], "append_if_not_found": true}),
                Some("top\n# BEGIN\nx\n# END\n"),
            ),
            (
                "file.append",
                Some("a\nb  c\n"),
                json!({"text": ["b c", "d"]}),
                Some("a\nb  c\nd\n"),
            ),
            (
                "file.append",
                None,
                json!({"text": "one\ntwo"}),
                Some("one\ntwo\n"),
            ),
            (
                "file.line",
                Some("a=1\nb=2\n"),
                json!({"mode": "replace", "match": "^b=", "content": "b=3"}),
                Some("a=1\nb=3\n"),
            ),
            (
                "file.line",
                Some("  a=1\n"),
                json!({"mode": "replace", "match": "a=", "content": "a=2"}),
                Some("  a=2\n"),
            ),
            (
                "file.line",
                Some("a\nb\n"),
                json!({"mode": "delete", "content": "a"}),
                Some("b\n"),
            ),
            (
                "file.line",
                Some("a\nb\n"),
                json!({"mode": "insert", "location": "start", "content": "z"}),
                Some("z\na\nb\n"),
            ),
            (
                "file.line",
                Some("a\nb\n"),
                json!({"mode": "insert", "after": "^a$", "content": "z"}),
                Some("a\nz\nb\n"),
            ),
            (
                "file.line",
                Some("a\nb\n"),
                json!({"mode": "insert", "before": "^b$", "content": "a"}),
                Some("a\nb\n"),
            ),
            (
                "file.line",
                Some("[s]\nk=1\n"),
                json!({"mode": "ensure", "after": "^\\[s\\]", "content": "k=1"}),
                Some("[s]\nk=1\n"),
            ),
            (
                "file.line",
                Some("[s]\nj=1\n"),
                json!({"mode": "ensure", "after": "^\\[s\\]", "content": "k=1"}),
                Some("[s]\nk=1\nj=1\n"),
            ),
        ];
        for (function, before, args, after) in cases {
            let (out, text) = edit(function, before, args.clone(), false);
            assert_ne!(
                out.result,
                Some(false),
                "{function} {args}: {}",
                out.comment
            );
            assert_eq!(text.as_deref(), after, "{function} {args}");
            if before == after {
                assert!(out.changes.is_empty(), "{function} {args}");
            } else {
                assert!(
                    out.changes["diff"]
                        .as_str()
                        .is_some_and(|d| d.contains("@@")),
                    "{function} {args}"
                );
            }
        }
    }

    #[test]
    fn edits_in_test_mode_write_nothing_and_failures_say_why() {
        let (out, text) = edit(
            "file.replace",
            Some("a\n"),
            json!({"pattern": "a", "repl": "b"}),
            true,
        );
        assert_eq!(out.result, None);
        assert!(out.comment.starts_with("Changes would have been made"));
        assert_eq!(text.as_deref(), Some("a\n"));
        let (out, _) = edit(
            "file.replace",
            None,
            json!({"pattern": "a", "repl": "b"}),
            false,
        );
        assert_eq!(out.result, Some(false));
        assert!(out.comment.ends_with("file not found"));
        let (out, _) = edit(
            "file.blockreplace",
            Some("a\n"),
            json!({"marker_start": "#s", "marker_end": "#e"}),
            false,
        );
        assert_eq!(
            out.comment,
            "Cannot edit marked block. Markers were not found in file."
        );
        let (out, _) = edit(
            "file.line",
            Some("a\n"),
            json!({"mode": "ensure", "after": "^zz", "content": "x"}),
            false,
        );
        assert_eq!(out.result, Some(false));
        let (out, _) = edit(
            "file.replace",
            Some("a\n"),
            json!({"pattern": "(", "repl": "b"}),
            false,
        );
        assert!(
            out.comment.contains("not a valid regular expression"),
            "{}",
            out.comment
        );
        let (out, _) = edit("file.append", Some("a\n"), json!({"text": "a"}), false);
        assert_eq!(out.result, Some(true));
        assert!(out.changes.is_empty());
    }
}
