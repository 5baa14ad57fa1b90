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
const IDENTIFIER: &str = "SALT_CRON_IDENTIFIER";

/// When an entry runs: five fields, or a special such as `@daily`.
#[derive(Clone, PartialEq, Debug)]
enum Schedule {
    Fields([String; 5]),
    Special(String),
}

/// One entry below Salt's marker, as Salt's `cron.list_tab` reads it.
#[derive(Clone, Debug)]
struct Entry {
    schedule: Schedule,
    command: String,
    identifier: Option<String>,
    /// `Some("")` when the comment line held only the identifier.
    comment: Option<String>,
    commented: bool,
}

/// A crontab as Salt models it: lines above the marker kept as they are, then variables,
/// entries with fields, entries with a special, rendered in that order (so an entry Salt
/// changes moves to the end of its group, and unparsable lines below the marker are dropped).
#[derive(Default, Debug)]
struct Crontab {
    pre: Vec<String>,
    env: Vec<(String, String)>,
    crons: Vec<Entry>,
    special: Vec<Entry>,
}

impl Crontab {
    /// Salt's `list_tab`.
    fn parse(text: &str) -> Crontab {
        let mut tab = Crontab::default();
        let (mut managed, mut comment, mut identifier) = (false, None::<String>, None);
        for line in text.lines() {
            if line == MARKER {
                managed = true;
                continue;
            }
            if !managed {
                tab.pre.push(line.to_string());
                continue;
            }
            let (line, commented) = match line.strip_prefix("#DISABLED#") {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            let fields: Vec<&str> = line.split(' ').collect();
            if line.starts_with('@') {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() < 2 {
                    continue;
                }
                tab.special.push(Entry {
                    schedule: Schedule::Special(words[0].to_string()),
                    command: words[1..].join(" "),
                    identifier: identifier.take(),
                    comment: comment.take(),
                    commented,
                });
            } else if line.starts_with('#') {
                let mut text = line.trim_start_matches(['#', ' ']).to_string();
                if let Some((before, after)) = text.clone().split_once(IDENTIFIER) {
                    text = before.trim_end().to_string();
                    if after.len() > 1 {
                        identifier = Some(after[1..].to_string());
                    }
                }
                comment = Some(match comment.take() {
                    Some(previous) => format!("{previous}\n{text}"),
                    None => text,
                });
            } else if let Some(eq) = line
                .find('=')
                .filter(|&eq| eq > 0 && line.find(' ').is_none_or(|space| eq < space))
            {
                tab.env
                    .push((line[..eq].to_string(), line[eq + 1..].to_string()));
            } else if fields.len() > 5 {
                tab.crons.push(Entry {
                    schedule: Schedule::Fields([0, 1, 2, 3, 4].map(|i| fields[i].to_string())),
                    command: fields[5..].join(" "),
                    identifier: identifier.take(),
                    comment: comment.take(),
                    commented,
                });
            }
        }
        tab
    }

    /// Salt's `_render_tab`.
    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.pre {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(MARKER);
        out.push('\n');
        for (name, value) in &self.env {
            if value.is_empty() {
                out.push_str(&format!("{name}=\"\"\n"));
            } else {
                out.push_str(&format!("{name}={value}\n"));
            }
        }
        for entry in self.crons.iter().chain(&self.special) {
            if entry.comment.is_some() || entry.identifier.is_some() {
                out.push('#');
                if let Some(comment) = entry.comment.as_deref().filter(|c| !c.is_empty()) {
                    out.push_str(&format!(" {}", comment.trim_end().replace('\n', "\n# ")));
                }
                if let Some(id) = &entry.identifier {
                    out.push_str(&format!(" {IDENTIFIER}:{id}"));
                }
                out.push('\n');
            }
            let disabled = if entry.commented { "#DISABLED#" } else { "" };
            let schedule = match &entry.schedule {
                Schedule::Fields(fields) => fields.join(" "),
                Schedule::Special(special) => special.clone(),
            };
            out.push_str(&format!("{disabled}{schedule} {}\n", entry.command));
        }
        out
    }
}

/// Salt's `_cron_matched` for a state, which always has an identifier (default: the
/// command): the entry carries that identifier, or none and the same command.
fn matches(entry: &Entry, command: &str, id: &str) -> bool {
    match &entry.identifier {
        Some(have) => have == id,
        None => entry.command == command,
    }
}

/// What a `cron.present` state wants.
fn wanted_entry(chunk: &Chunk, args: &Args) -> Result<Entry, String> {
    let schedule = match args.string("special")? {
        Some(special) => Schedule::Special(special),
        None => {
            let mut fields: [String; 5] = Default::default();
            for (field, key) in fields
                .iter_mut()
                .zip(["minute", "hour", "daymonth", "month", "dayweek"])
            {
                let value = args.string(key)?.unwrap_or_else(|| "*".to_string());
                if value.eq_ignore_ascii_case("random") || value.contains(':') {
                    return Err(format!(
                        "{key} {value:?} of cron.present is not supported by corpus: give the value itself"
                    ));
                }
                *field = value.to_lowercase();
            }
            Schedule::Fields(fields)
        }
    };
    Ok(Entry {
        schedule,
        command: chunk.name.trim().to_string(),
        identifier: Some(identifier(chunk, args)?),
        comment: args.string("comment")?,
        commented: args.bool("commented", false)?,
    })
}

fn identifier(chunk: &Chunk, args: &Args) -> Result<String, String> {
    Ok(args
        .string("identifier")?
        .unwrap_or_else(|| chunk.name.trim().to_string()))
}

/// Whether `have` differs from `want` in what the state sets (Salt's `_needs_change`: a
/// comment the state does not give is kept).
fn needs_change(have: &Entry, want: &Entry) -> bool {
    have.schedule != want.schedule
        || have.identifier != want.identifier
        || have.command != want.command
        || have.commented != want.commented
        || (want.comment.is_some() && have.comment != want.comment)
}

/// How a state found the crontab.
enum Found {
    Absent,
    Present,
    Changed,
}

/// `cron.present` on `tab` (Salt's `set_job`/`set_special`): a changed entry is removed and
/// added again at the end of its group, keeping its comment when the state gives none.
fn set_entry(tab: &mut Crontab, mut want: Entry) -> Found {
    let id = want.identifier.clone().unwrap_or_default();
    let in_crons = tab
        .crons
        .iter()
        .position(|e| matches(e, &want.command, &id));
    let found = match in_crons {
        Some(at) => Some((true, at)),
        None => tab
            .special
            .iter()
            .position(|e| matches(e, &want.command, &id))
            .map(|at| (false, at)),
    };
    let mut result = Found::Absent;
    if let Some((crons, at)) = found {
        let group = if crons {
            &mut tab.crons
        } else {
            &mut tab.special
        };
        if !needs_change(&group[at], &want) {
            return Found::Present;
        }
        let old = group.remove(at);
        if want.comment.is_none() {
            want.comment = old.comment;
        }
        result = Found::Changed;
    }
    match want.schedule {
        Schedule::Fields(_) => tab.crons.push(want),
        Schedule::Special(_) => tab.special.push(want),
    }
    result
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
    let name = chunk.name.trim();
    let user = args.string("user")?.unwrap_or_else(|| "root".to_string());
    let mut tab = Crontab::parse(current);
    let found = if present {
        set_entry(&mut tab, wanted_entry(chunk, &args)?)
    } else {
        // Salt looks among the entries with fields only, unless `special` is given.
        let id = identifier(chunk, &args)?;
        let group = if args.raw("special").is_some() {
            &mut tab.special
        } else {
            &mut tab.crons
        };
        match group.iter().position(|e| matches(e, name, &id)) {
            Some(at) => {
                group.remove(at);
                Found::Changed
            }
            None => Found::Absent,
        }
    };
    let unchanged = matches!(
        (present, &found),
        (true, Found::Present) | (false, Found::Absent)
    );
    if unchanged {
        return Ok(Outcome::ok(if present {
            format!("Cron {name} already present")
        } else {
            format!("Cron {name} already absent from {user}'s crontab")
        }));
    }
    if ctx.test {
        // Salt's test mode reports no changes, only the comment.
        let what = match (present, found) {
            (true, Found::Absent) => "is set to be added",
            (true, _) => "is set to be updated",
            _ => "is set to be removed",
        };
        return Ok(Outcome::would_change(
            format!("Cron {name} {what}"),
            Map::new(),
        ));
    }
    write(&tab.render())?;
    let changes = Map::from_iter([(user.clone(), json!(name))]);
    Ok(Outcome::changed(
        match (present, found) {
            (true, Found::Absent) => format!("Cron {name} added to {user}'s crontab"),
            (true, _) => format!("Cron {name} updated"),
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
        // As in Salt, cron.absent looks among specials only when given `special`.
        let removed = run(false, json!({"special": "@daily"}));
        assert_eq!(
            removed.comment,
            "Cron /usr/bin/backup removed from root's crontab"
        );
        assert_eq!(*crontab.borrow(), format!("MAILTO=root\n{MARKER}\n"));
        assert_eq!(
            run(false, json!({"special": "@daily"})).comment,
            "Cron /usr/bin/backup already absent from root's crontab"
        );
    }
}
