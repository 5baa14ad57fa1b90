//! Salt's `cron.present` and `cron.absent`: a line in a user's crontab (through the `crontab`
//! command), tracked by Salt's `# SALT_CRON_IDENTIFIER:<id>` comment so it can be changed or
//! removed later; crontabs Salt wrote stay compatible.

use std::io::Write;
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

const MARKER: &str = "# Lines below here are managed by Salt, do not edit";
const IDENTIFIER: &str = "# SALT_CRON_IDENTIFIER:";

/// The wanted crontab entry of a `cron.present` state.
fn entry_line(chunk: &Chunk, args: &Args) -> Result<String, String> {
    let command = &chunk.name;
    let schedule = match args.string("special")? {
        Some(special) => special,
        None => {
            let mut fields = Vec::new();
            for key in ["minute", "hour", "daymonth", "month", "dayweek"] {
                fields.push(args.string(key)?.unwrap_or_else(|| "*".to_string()));
            }
            fields.join(" ")
        }
    };
    let prefix = if args.bool("commented", false)? {
        "#DISABLED#"
    } else {
        ""
    };
    Ok(format!("{prefix}{schedule} {command}"))
}

fn identifier(chunk: &Chunk, args: &Args) -> Result<String, String> {
    Ok(args
        .string("identifier")?
        .unwrap_or_else(|| chunk.name.clone()))
}

/// `crontab` with `id`'s entry set to `line` (or removed when `None`): the new text, and
/// whether the entry was there before.
fn edit(crontab: &str, id: &str, line: Option<&str>, comment: Option<&str>) -> (String, bool) {
    let tag = format!("{IDENTIFIER}{id}");
    let mut out: Vec<String> = Vec::new();
    let mut lines = crontab.lines().peekable();
    let mut found = false;
    while let Some(l) = lines.next() {
        // Salt writes an optional `# comment` before the identifier on the same line.
        if l.starts_with('#') && l.ends_with(&tag) {
            found = true;
            lines.next();
            continue;
        }
        out.push(l.to_string());
    }
    if let Some(line) = line {
        if !out.iter().any(|l| l == MARKER) {
            out.push(MARKER.to_string());
        }
        let head = match comment {
            Some(c) => format!("# {c} {tag}"),
            None => tag,
        };
        out.push(head);
        out.push(line.to_string());
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    (text, found)
}

fn read_crontab(user: &str) -> Result<String, String> {
    let output = Command::new("crontab")
        .args(["-l", "-u", user])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run crontab: {e} (cron states need cron installed)"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&output.stderr);
    if err.contains("no crontab") {
        Ok(String::new())
    } else {
        Err(format!("crontab -l -u {user} failed: {}", err.trim()))
    }
}

fn write_crontab(user: &str, text: &str) -> Result<(), String> {
    let mut child = Command::new("crontab")
        .args(["-u", user, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run crontab: {e} (cron states need cron installed)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {user}'s crontab: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("crontab -u {user} failed: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "crontab -u {user} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Decides and applies one cron state against `current`, writing with `write`.
fn apply(
    chunk: &Chunk,
    ctx: &StateContext,
    present: bool,
    current: &str,
    write: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let user = args.string("user")?.unwrap_or_else(|| "root".to_string());
    let id = identifier(chunk, &args)?;
    let line = if present {
        Some(entry_line(chunk, &args)?)
    } else {
        None
    };
    let comment = args.string("comment")?;
    let (new, found) = edit(current, &id, line.as_deref(), comment.as_deref());
    if new == current || (!present && !found) {
        return Ok(Outcome::ok(if present {
            format!("Cron {name} already present")
        } else {
            format!("Cron {name} already absent from {user}'s crontab")
        }));
    }
    let changes = Map::from_iter([(user.clone(), json!(name))]);
    if ctx.test {
        let what = match (present, found) {
            (true, false) => "is set to be added",
            (true, true) => "is set to be updated",
            _ => "is set to be removed",
        };
        return Ok(Outcome::would_change(
            format!("Cron {name} {what}"),
            changes,
        ));
    }
    write(&new)?;
    Ok(Outcome::changed(
        match (present, found) {
            (true, false) => format!("Cron {name} added to {user}'s crontab"),
            (true, true) => format!("Cron {name} updated"),
            _ => format!("Cron {name} removed from {user}'s crontab"),
        },
        changes,
    ))
}

/// `cron.present`: the entry is in `user`'s crontab (default root) with this schedule.
pub fn present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let user = Args(&chunk.args)
        .string("user")?
        .unwrap_or_else(|| "root".to_string());
    let current = read_crontab(&user)?;
    apply(chunk, ctx, true, &current, &|text| {
        write_crontab(&user, text)
    })
}

/// `cron.absent`: the entry with this identifier (default: the command) is gone.
pub fn absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let user = Args(&chunk.args)
        .string("user")?
        .unwrap_or_else(|| "root".to_string());
    let current = read_crontab(&user)?;
    apply(chunk, ctx, false, &current, &|text| {
        write_crontab(&user, text)
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::Value;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn entries_are_added_updated_and_removed_by_identifier() {
        let crontab = RefCell::new("MAILTO=root\n".to_string());
        let (src, svc) = (
            sources(std::path::Path::new("/"), Value::Null),
            FakeServices::default(),
        );
        let run = |present: bool, args: Value| {
            let c = chunk(
                if present {
                    "cron.present"
                } else {
                    "cron.absent"
                },
                "/usr/bin/backup",
                args,
            );
            let current = crontab.borrow().clone();
            apply(&c, &ctx(false, &src, &svc), present, &current, &|text| {
                *crontab.borrow_mut() = text.to_string();
                Ok(())
            })
            .unwrap_or_else(Outcome::fail)
        };
        let added = run(true, json!({"minute": 5, "hour": "2"}));
        assert_eq!(
            added.comment,
            "Cron /usr/bin/backup added to root's crontab"
        );
        assert_eq!(
            *crontab.borrow(),
            format!(
                "MAILTO=root\n{MARKER}\n# SALT_CRON_IDENTIFIER:/usr/bin/backup\n5 2 * * * /usr/bin/backup\n"
            )
        );
        assert!(
            run(true, json!({"minute": 5, "hour": "2"}))
                .changes
                .is_empty()
        );
        let updated = run(
            true,
            json!({"special": "@daily", "identifier": "/usr/bin/backup"}),
        );
        assert_eq!(updated.comment, "Cron /usr/bin/backup updated");
        assert!(
            crontab
                .borrow()
                .ends_with("SALT_CRON_IDENTIFIER:/usr/bin/backup\n@daily /usr/bin/backup\n")
        );
        let removed = run(false, json!({}));
        assert_eq!(
            removed.comment,
            "Cron /usr/bin/backup removed from root's crontab"
        );
        assert_eq!(*crontab.borrow(), format!("MAILTO=root\n{MARKER}\n"));
        assert_eq!(
            run(false, json!({})).comment,
            "Cron /usr/bin/backup already absent from root's crontab"
        );
    }
}
