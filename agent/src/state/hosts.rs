//! Salt's `host.present` and `host.absent`: a name on the lines of given addresses in
//! `/etc/hosts`. The file is rewritten in place (not renamed over), because containers
//! bind-mount it.

use std::fs;
use std::path::Path;

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

const HOSTS: &str = "/etc/hosts";

/// One line of a hosts file: its address and names, or a line kept as is.
enum Line {
    Entry {
        ip: String,
        names: Vec<String>,
        comment: String,
    },
    Other(String),
}

fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .map(|raw| {
            let (body, comment) = match raw.find('#') {
                Some(i) => (&raw[..i], raw[i..].to_string()),
                None => (raw, String::new()),
            };
            let mut words = body.split_whitespace();
            match words.next() {
                Some(ip) => Line::Entry {
                    ip: ip.to_string(),
                    names: words.map(str::to_string).collect(),
                    comment,
                },
                None => Line::Other(raw.to_string()),
            }
        })
        .collect()
}

fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Entry { ip, names, comment } => {
                out.push_str(ip);
                for name in names {
                    out.push('\t');
                    out.push_str(name);
                }
                if !comment.is_empty() {
                    out.push(' ');
                    out.push_str(comment);
                }
            }
            Line::Other(raw) => out.push_str(raw),
        }
        out.push('\n');
    }
    out
}

/// Salt's `ip`: one address or a list.
fn addresses(args: &Args, chunk: &Chunk) -> Result<Vec<String>, String> {
    let ips = args.string_list("ip")?;
    if ips.is_empty() && chunk.function == "present" {
        return Err("host.present needs `ip`: the address (or list) to give the name".to_string());
    }
    Ok(ips)
}

/// Applies `host.present` (`add`) or `host.absent` to the hosts file `path`.
fn apply(path: &Path, chunk: &Chunk, ctx: &StateContext, add: bool) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let ips = addresses(&args, chunk)?;
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = parse(&text);
    let mut changed: Vec<String> = Vec::new();
    if add {
        for ip in &ips {
            let entry = lines.iter_mut().find_map(|l| match l {
                Line::Entry {
                    ip: have, names, ..
                } if have == ip => Some(names),
                _ => None,
            });
            match entry {
                Some(names) if names.contains(name) => {}
                Some(names) => {
                    names.push(name.clone());
                    changed.push(ip.clone());
                }
                None => {
                    lines.push(Line::Entry {
                        ip: ip.clone(),
                        names: vec![name.clone()],
                        comment: String::new(),
                    });
                    changed.push(ip.clone());
                }
            }
        }
    } else {
        for line in lines.iter_mut() {
            if let Line::Entry { ip, names, .. } = line
                && (ips.is_empty() || ips.contains(ip))
                && names.contains(name)
            {
                names.retain(|n| n != name);
                changed.push(ip.clone());
            }
        }
        lines.retain(|l| !matches!(l, Line::Entry { names, .. } if names.is_empty()));
    }
    let verb = if add { "added" } else { "removed" };
    if changed.is_empty() {
        return Ok(Outcome::ok(if add {
            format!("Host {name} ({}) already present", ips.join(", "))
        } else {
            format!("Host {name} already absent")
        }));
    }
    let listed: Map<String, Value> = changed
        .iter()
        .map(|ip| (ip.clone(), json!([name])))
        .collect();
    let changes = Map::from_iter([(verb.to_string(), Value::Object(listed))]);
    let summary = format!("{name} ({})", changed.join(", "));
    if ctx.test {
        let would = if add {
            "would be added"
        } else {
            "would be removed"
        };
        return Ok(Outcome::would_change(
            format!("Host {summary} {would}"),
            changes,
        ));
    }
    fs::write(path, render(&lines)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let done = if add { "Added" } else { "Removed" };
    Ok(Outcome::changed(format!("{done} host {summary}"), changes))
}

/// `host.present`: `name` is on the line of each `ip` in `/etc/hosts`.
pub fn present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    apply(Path::new(HOSTS), chunk, ctx, true)
}

/// `host.absent`: `name` is on no line (of the given `ip`s) in `/etc/hosts`.
pub fn absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    apply(Path::new(HOSTS), chunk, ctx, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn names_are_added_to_and_removed_from_address_lines() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        fs::write(
            &hosts,
            "# static\n127.0.0.1\tlocalhost\n10.0.0.1 db # primary\n",
        )
        .unwrap();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let run = |function: &str, args: Value, test: bool| {
            let c = chunk(function, "web.local", args);
            apply(
                &hosts,
                &c,
                &ctx(test, &src, &svc),
                function == "host.present",
            )
            .unwrap_or_else(Outcome::fail)
        };
        let ips = json!({"ip": ["10.0.0.1", "10.0.0.2"]});
        assert_eq!(run("host.present", ips.clone(), true).result, None);
        let added = run("host.present", ips.clone(), false);
        assert_eq!(added.comment, "Added host web.local (10.0.0.1, 10.0.0.2)");
        assert_eq!(
            added.changes["added"],
            json!({"10.0.0.1": ["web.local"], "10.0.0.2": ["web.local"]})
        );
        assert_eq!(
            fs::read_to_string(&hosts).unwrap(),
            "# static\n127.0.0.1\tlocalhost\n10.0.0.1\tdb\tweb.local # primary\n10.0.0.2\tweb.local\n"
        );
        assert!(run("host.present", ips, false).changes.is_empty());
        let removed = run("host.absent", json!({}), false);
        assert_eq!(
            removed.changes["removed"],
            json!({"10.0.0.1": ["web.local"], "10.0.0.2": ["web.local"]})
        );
        assert_eq!(
            fs::read_to_string(&hosts).unwrap(),
            "# static\n127.0.0.1\tlocalhost\n10.0.0.1\tdb # primary\n"
        );
        assert_eq!(
            run("host.absent", json!({}), false).comment,
            "Host web.local already absent"
        );
        assert!(
            run("host.present", json!({}), false)
                .comment
                .starts_with("host.present needs `ip`")
        );
    }
}
