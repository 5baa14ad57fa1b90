//! Salt's `git.latest`: a clone of `name` (the repository URL) in `target`, checked out at
//! `rev` (a branch, tag or commit; default the remote's HEAD), through the `git` command.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::accounts::{User, user_by_name};
use super::args::Args;
use super::result::Outcome;

/// `git.latest` arguments corpus refuses, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    (
        "identity",
        "give the user an ssh config (file.managed) naming the key",
    ),
    (
        "https_user",
        "put the credentials in the user's git credential store",
    ),
    (
        "https_pass",
        "put the credentials in the user's git credential store",
    ),
    ("fetch_tags", "tags are always fetched"),
    ("sync_tags", "tags are always fetched"),
    ("bare", "clone with cmd.run"),
    ("mirror", "clone with cmd.run"),
];

/// Runs git in `dir` (as `user` when given); `Err` carries its error output.
fn git(dir: Option<&Path>, user: Option<&User>, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid).env("HOME", &user.home);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run git: {e} (git.latest needs git installed)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The commit `rev` names after a fetch: a remote branch, a tag, or a commit.
fn resolve(target: &Path, user: Option<&User>, remote: &str, rev: &str) -> Result<String, String> {
    for candidate in [
        format!("refs/remotes/{remote}/{rev}"),
        format!("refs/tags/{rev}^{{commit}}"),
        format!("{rev}^{{commit}}"),
    ] {
        if let Ok(sha) = git(
            Some(target),
            user,
            &["rev-parse", "--verify", "--quiet", &candidate],
        ) {
            return Ok(sha);
        }
    }
    Err(format!(
        "revision {rev:?} was not found in the remote repository"
    ))
}

/// The commit `rev` names on the remote, read with `git ls-remote` so that a test run leaves
/// the clone's refs as they are (Salt's test mode does the same); a commit id the remote does
/// not advertise is looked up in the clone. `None`: not known without fetching.
fn remote_commit(
    target: &Path,
    user: Option<&User>,
    remote: &str,
    rev: &str,
) -> Result<Option<String>, String> {
    let listing = git(Some(target), user, &["ls-remote", remote])?;
    let find = |wanted: &str| {
        listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(_, name)| *name == wanted)
            .map(|(sha, _)| sha.to_string())
    };
    if rev == "HEAD" {
        return Ok(find("HEAD"));
    }
    Ok(find(&format!("refs/heads/{rev}"))
        .or_else(|| find(&format!("refs/tags/{rev}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{rev}")))
        .or_else(|| {
            let commit = format!("{rev}^{{commit}}");
            git(
                Some(target),
                user,
                &["rev-parse", "--verify", "--quiet", &commit],
            )
            .ok()
        }))
}

/// `git.latest`: `target` is a clone of `name` at `rev`.
pub fn latest(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    for (arg, instead) in REFUSED {
        if args.raw(arg).is_some() {
            return Err(format!(
                "argument `{arg}` of git.latest is not supported by corpus: {instead}"
            ));
        }
    }
    let name = &chunk.name;
    let target_text = args
        .string("target")?
        .ok_or("git.latest needs `target`, the directory to clone into")?;
    let target = Path::new(&target_text);
    if !target.is_absolute() {
        return Err(format!("target {target_text} is not an absolute path"));
    }
    let user = args.string("user")?.map(|u| user_by_name(&u)).transpose()?;
    let user = user.as_ref();
    let remote = args
        .string("remote")?
        .unwrap_or_else(|| "origin".to_string());
    let rev = args.string("rev")?.unwrap_or_else(|| "HEAD".to_string());
    let depth = args.string("depth")?;
    let is_repo = target.join(".git").exists();
    let empty = !target.exists() || target.read_dir().is_ok_and(|mut d| d.next().is_none());
    if !is_repo && !empty {
        return Ok(Outcome::fail(format!(
            "Target '{target_text}' exists, is non-empty and is not a git repository. Set the 'force_clone' option to True to remove this directory's contents and proceed with cloning the remote repository"
        )));
    }
    if !is_repo {
        if ctx.test {
            return Ok(Outcome::would_change(
                format!("Repository {name} would be cloned to {target_text}"),
                Map::from_iter([("new".to_string(), json!(format!("{name} => {target_text}")))]),
            ));
        }
        let mut clone = vec!["clone", "--origin", remote.as_str()];
        if let Some(depth) = &depth {
            clone.extend(["--depth", depth.as_str()]);
        }
        clone.extend([name.as_str(), target_text.as_str()]);
        git(None, user, &clone)?;
        if rev != "HEAD" {
            let sha = resolve(target, user, &remote, &rev)?;
            checkout(target, user, &remote, &rev, &sha, args.string("branch")?)?;
        }
        let new = git(Some(target), user, &["rev-parse", "HEAD"])?;
        return Ok(Outcome::changed(
            format!("{name} cloned to {target_text}"),
            Map::from_iter([
                ("new".to_string(), json!(format!("{name} => {target_text}"))),
                (
                    "revision".to_string(),
                    json!({"old": Value::Null, "new": new}),
                ),
            ]),
        ));
    }
    let old = git(Some(target), user, &["rev-parse", "HEAD"])?;
    let wanted = if ctx.test {
        match remote_commit(target, user, &remote, &rev)? {
            Some(sha) => sha,
            None => {
                return Ok(Outcome::would_change(
                    format!("Repository {target_text} would be fetched and checked out at {rev}"),
                    Map::from_iter([("revision".to_string(), json!({"old": old, "new": rev}))]),
                ));
            }
        }
    } else if rev == "HEAD" {
        git(Some(target), user, &["fetch", "--tags", remote.as_str()])?;
        git(
            Some(target),
            user,
            &["rev-parse", &format!("refs/remotes/{remote}/HEAD")],
        )
        .or_else(|_| git(Some(target), user, &["rev-parse", "FETCH_HEAD"]))?
    } else {
        git(Some(target), user, &["fetch", "--tags", remote.as_str()])?;
        resolve(target, user, &remote, &rev)?
    };
    if old == wanted {
        return Ok(Outcome::ok(format!(
            "Repository {target_text} is up-to-date"
        )));
    }
    let dirty = !git(
        Some(target),
        user,
        &["status", "--porcelain", "--untracked-files=no"],
    )?
    .is_empty();
    if dirty && !args.bool("force_reset", false)? {
        return Ok(Outcome::fail(format!(
            "Repository {target_text} has local changes: set force_reset to True to discard them"
        )));
    }
    let changes = Map::from_iter([("revision".to_string(), json!({"old": old, "new": wanted}))]);
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "Repository {target_text} would be updated from {} to {}",
                short(&old),
                short(&wanted)
            ),
            changes,
        ));
    }
    checkout(target, user, &remote, &rev, &wanted, args.string("branch")?)?;
    Ok(Outcome::changed(
        format!("Repository {target_text} updated"),
        changes,
    ))
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// Puts the work tree at `sha` as Salt does: on `branch` when given, otherwise on whatever
/// branch is checked out (a fresh clone's is the remote's default branch), hard reset; that
/// branch then tracks `remote/rev` when `rev` is a remote branch, and nothing when it is a tag
/// or a commit. Local changes are discarded: callers refuse them first unless `force_reset`
/// allows it.
fn checkout(
    target: &Path,
    user: Option<&User>,
    remote: &str,
    rev: &str,
    sha: &str,
    branch: Option<String>,
) -> Result<(), String> {
    match &branch {
        Some(local) => git(
            Some(target),
            user,
            &["checkout", "-q", "-f", "-B", local, sha],
        )?,
        None => git(Some(target), user, &["reset", "-q", "--hard", sha])?,
    };
    if rev == "HEAD" {
        return Ok(());
    }
    // A detached HEAD has no branch to track anything.
    let Ok(local) = git(
        Some(target),
        user,
        &["symbolic-ref", "-q", "--short", "HEAD"],
    ) else {
        return Ok(());
    };
    let remote_branch = format!("refs/remotes/{remote}/{rev}");
    let is_branch = git(
        Some(target),
        user,
        &["rev-parse", "--verify", "--quiet", &remote_branch],
    )
    .is_ok();
    if is_branch {
        git(
            Some(target),
            user,
            &[
                "branch",
                "-q",
                "--set-upstream-to",
                &format!("{remote}/{rev}"),
                &local,
            ],
        )
        .map(|_| ())
    } else {
        // Fails when the branch tracked nothing, which is the state wanted.
        let _ = git(Some(target), user, &["branch", "--unset-upstream", &local]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    fn commit(repo: &Path, file: &str, text: &str) -> String {
        fs::write(repo.join(file), text).unwrap();
        let id = [
            "-c",
            "user.name=corpus",
            "-c",
            "user.email=corpus@localhost",
        ];
        git(Some(repo), None, &["add", file]).unwrap();
        let mut args = id.to_vec();
        args.extend(["commit", "-q", "-m", text]);
        git(Some(repo), None, &args).unwrap();
        git(Some(repo), None, &["rev-parse", "HEAD"]).unwrap()
    }

    #[test]
    fn a_repository_is_cloned_updated_and_kept_at_a_revision() {
        // `.ci/run` installs git: a host without it fails here rather than skipping.
        git(None, None, &["--version"]).expect("git is required by this test (apt install git)");
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        fs::create_dir(&upstream).unwrap();
        git(Some(&upstream), None, &["init", "-q", "-b", "main"]).unwrap();
        let first = commit(&upstream, "a.txt", "one");
        let target = dir.path().join("clone");
        let url = upstream.display().to_string();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let run = |extra: Value, test: bool| {
            let mut args = json!({"name": url, "target": target.display().to_string()});
            if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
                a.extend(e.clone());
            }
            latest(&chunk("git.latest", "repo", args), &ctx(test, &src, &svc))
                .unwrap_or_else(Outcome::fail)
        };
        assert_eq!(run(json!({}), true).result, None);
        assert!(!target.exists());
        let cloned = run(json!({}), false);
        assert_eq!(cloned.result, Some(true), "{}", cloned.comment);
        assert_eq!(cloned.changes["revision"]["new"], json!(first));
        assert_eq!(
            run(json!({}), false).comment,
            format!("Repository {} is up-to-date", target.display())
        );

        let second = commit(&upstream, "a.txt", "two");
        let would = run(json!({}), true);
        assert_eq!(would.result, None);
        assert_eq!(
            would.changes["revision"],
            json!({"old": first, "new": second}),
            "{}",
            would.comment
        );
        assert_eq!(
            git(
                Some(&target),
                None,
                &["rev-parse", "refs/remotes/origin/main"]
            )
            .unwrap(),
            first,
            "a test run fetches nothing"
        );
        let updated = run(json!({}), false);
        assert_eq!(
            updated.changes["revision"],
            json!({"old": first, "new": second}),
            "{}",
            updated.comment
        );
        assert_eq!(fs::read_to_string(target.join("a.txt")).unwrap(), "two");

        // Pinned to the first commit; local changes need force_reset.
        fs::write(target.join("a.txt"), "mine").unwrap();
        let refused = run(json!({"rev": first}), false);
        assert!(
            refused.comment.contains("has local changes"),
            "{}",
            refused.comment
        );
        let pinned = run(json!({"rev": first, "force_reset": true}), false);
        assert_eq!(pinned.result, Some(true), "{}", pinned.comment);
        assert_eq!(
            pinned.changes["revision"]["new"],
            json!(first),
            "{}",
            pinned.comment
        );
        assert_eq!(fs::read_to_string(target.join("a.txt")).unwrap(), "one");
        let branch = run(json!({"rev": "main"}), false);
        assert_eq!(
            branch.changes["revision"]["new"],
            json!(second),
            "{}",
            branch.comment
        );
        assert_eq!(
            git(Some(&target), None, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap(),
            "main"
        );

        let refused = run(json!({"identity": "/root/.ssh/id"}), false);
        assert!(
            refused
                .comment
                .starts_with("argument `identity` of git.latest")
        );
    }
}
