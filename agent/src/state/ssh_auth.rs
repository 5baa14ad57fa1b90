//! Salt's `ssh_auth.present` and `ssh_auth.absent`: a public key in a user's
//! `authorized_keys` (`config`, default `.ssh/authorized_keys` under the home; `%h` and `%u`
//! expand), the file and its directory private to the user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::accounts::{User, user_by_name};
use super::args::Args;
use super::result::Outcome;

/// One authorized key: options, type, the base64 blob, comment.
#[derive(Debug, PartialEq)]
struct Key {
    options: Vec<String>,
    enc: String,
    blob: String,
    comment: String,
}

impl Key {
    fn line(&self) -> String {
        let mut line = String::new();
        if !self.options.is_empty() {
            line.push_str(&self.options.join(","));
            line.push(' ');
        }
        line.push_str(&format!("{} {}", self.enc, self.blob));
        if !self.comment.is_empty() {
            line.push(' ');
            line.push_str(&self.comment);
        }
        line
    }
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

/// Reads an `authorized_keys` line (options first when the first word is not a key type).
fn parse_line(line: &str) -> Option<Key> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| is_key_type(w))?;
    Some(Key {
        options: if at > 0 {
            words[..at]
                .join(" ")
                .split(',')
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        },
        enc: words[at].to_string(),
        blob: words.get(at + 1)?.to_string(),
        comment: words.get(at + 2..).map(|c| c.join(" ")).unwrap_or_default(),
    })
}

/// The key a state asks for: `name` is either the blob or a whole `type blob comment` line.
fn wanted_key(chunk: &Chunk, args: &Args) -> Result<Key, String> {
    let mut key = parse_line(&chunk.name).unwrap_or(Key {
        options: Vec::new(),
        enc: args.string("enc")?.unwrap_or_else(|| "ssh-rsa".to_string()),
        blob: chunk.name.trim().to_string(),
        comment: String::new(),
    });
    if let Some(comment) = args.string("comment")? {
        key.comment = comment;
    }
    let options = args.string_list("options")?;
    if !options.is_empty() {
        key.options = options;
    }
    if key.blob.is_empty() || key.blob.contains(char::is_whitespace) {
        return Err(format!(
            "ssh_auth name {:?} is not a public key",
            chunk.name
        ));
    }
    Ok(key)
}

fn keys_file(user: &User, args: &Args) -> Result<PathBuf, String> {
    let config = args
        .string("config")?
        .unwrap_or_else(|| ".ssh/authorized_keys".to_string())
        .replace("%h", &user.home)
        .replace("%u", &user.name);
    let path = Path::new(&config);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(&user.home).join(path)
    })
}

/// Writes the keys file private to the user (directory 0700, file 0600).
fn write_keys(path: &Path, user: &User, text: &str) -> Result<(), String> {
    let owner = |p: &Path| {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("cannot set owner of {}: {e}", p.display()))
    };
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set mode of {}: {e}", dir.display()))?;
        owner(dir)?;
    }
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set mode of {}: {e}", path.display()))?;
    owner(path)
}

fn refuse_source(chunk: &Chunk) -> Result<(), String> {
    if chunk.args.get("source").is_some_and(|v| !v.is_null()) {
        return Err(format!(
            "argument `source` of ssh_auth.{} is not supported by corpus: list the keys as names",
            chunk.function
        ));
    }
    Ok(())
}

/// `ssh_auth.present`: the key is authorized for `user`, with these options and comment.
pub fn present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse_source(chunk)?;
    let args = Args(&chunk.args);
    let user_name = args
        .string("user")?
        .ok_or("ssh_auth.present needs `user`")?;
    let user = user_by_name(&user_name)?;
    let key = wanted_key(chunk, &args)?;
    let path = keys_file(&user, &args)?;
    let text = fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let existing = lines
        .iter()
        .position(|l| parse_line(l).is_some_and(|k| k.blob == key.blob));
    let name = &chunk.name;
    let change = match existing {
        Some(i) if parse_line(&lines[i]).as_ref() == Some(&key) => {
            return Ok(Outcome::ok(format!(
                "The authorized host key {name} is already present for user {user_name}"
            )));
        }
        Some(i) => {
            lines[i] = key.line();
            "Updated"
        }
        None => {
            lines.push(key.line());
            "New"
        }
    };
    let changes = Map::from_iter([(name.clone(), json!(change))]);
    if ctx.test {
        return Ok(Outcome::pending(format!(
            "Key {name} for user {user_name} is set to be {}",
            if change == "New" { "added" } else { "updated" }
        )));
    }
    write_keys(&path, &user, &(lines.join("\n") + "\n"))?;
    Ok(Outcome::changed(
        format!(
            "The authorized host key {name} for user {user_name} was {}",
            if change == "New" { "added" } else { "updated" }
        ),
        changes,
    ))
}

/// `ssh_auth.absent`: the key is not authorized for `user`.
pub fn absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse_source(chunk)?;
    let args = Args(&chunk.args);
    let user_name = args.string("user")?.ok_or("ssh_auth.absent needs `user`")?;
    let user = user_by_name(&user_name)?;
    let key = wanted_key(chunk, &args)?;
    let path = keys_file(&user, &args)?;
    let text = fs::read_to_string(&path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| parse_line(l).is_none_or(|k| k.blob != key.blob))
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(Outcome::ok("Key not present"));
    }
    let changes = Map::from_iter([(chunk.name.clone(), json!("Removed"))]);
    if ctx.test {
        return Ok(Outcome::pending("Key is set for removal"));
    }
    let mut new = kept.join("\n");
    if !new.is_empty() {
        new.push('\n');
    }
    write_keys(&path, &user, &new)?;
    Ok(Outcome::changed("Key removed", changes))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn keys_are_added_updated_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ssh/authorized_keys");
        fs::create_dir(dir.path().join("ssh")).unwrap();
        fs::write(&config, "ssh-ed25519 AAAAother other@host\n").unwrap();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let run = |function: &str, name: &str, extra: Value| {
            let mut args = json!({"user": "root", "config": config.display().to_string()});
            if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
                a.extend(e.clone());
            }
            let c = chunk(function, "k", json!({"name": name}));
            let c = Chunk {
                args: args.as_object().cloned().unwrap_or_default(),
                ..c
            };
            let ctx = ctx(false, &src, &svc);
            match function {
                "ssh_auth.present" => present(&c, &ctx),
                _ => absent(&c, &ctx),
            }
            .unwrap_or_else(Outcome::fail)
        };
        let added = run(
            "ssh_auth.present",
            "AAAAkey1",
            json!({"comment": "me@laptop"}),
        );
        assert_eq!(added.changes["AAAAkey1"], json!("New"), "{}", added.comment);
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "ssh-ed25519 AAAAother other@host\nssh-rsa AAAAkey1 me@laptop\n"
        );
        assert_eq!(
            fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = run("ssh_auth.present", "ssh-rsa AAAAkey1 me@laptop", json!({}));
        assert!(again.changes.is_empty(), "{}", again.comment);
        let updated = run(
            "ssh_auth.present",
            "AAAAkey1",
            json!({"comment": "me@laptop", "options": ["no-pty"]}),
        );
        assert_eq!(updated.changes["AAAAkey1"], json!("Updated"));
        assert!(
            fs::read_to_string(&config)
                .unwrap()
                .ends_with("no-pty ssh-rsa AAAAkey1 me@laptop\n")
        );
        let removed = run("ssh_auth.absent", "AAAAkey1", json!({}));
        assert_eq!(removed.comment, "Key removed");
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "ssh-ed25519 AAAAother other@host\n"
        );
        assert_eq!(
            run("ssh_auth.absent", "AAAAkey1", json!({})).comment,
            "Key not present"
        );
    }
}
