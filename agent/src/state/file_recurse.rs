//! Salt's `file.recurse`: every file under a source directory (`salt://dir`) managed under
//! `name`, each exactly as `file.managed` would (templates, modes, owner), with one change
//! entry per file that changed.

use std::fs;
use std::path::Path;

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::args::Args;
use super::file::{TEST_NOTE, absolute_path, managed};
use super::result::Outcome;

/// Arguments of Salt's `file.recurse` corpus refuses, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    (
        "keep_symlinks",
        "links are followed; manage links with file.symlink",
    ),
    (
        "include_empty",
        "create empty directories with file.directory",
    ),
    ("maxdepth", "narrow the files with include_pat/exclude_pat"),
    ("force_symlinks", "manage links with file.symlink"),
];

/// The regular files under `dir` (links to files inside it followed), relative to it, sorted;
/// `None` when `dir` is not a directory.
pub fn files_under(dir: &Path) -> Result<Option<Vec<String>>, String> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let root = fs::canonicalize(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current)
            .map_err(|e| format!("cannot read {}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", current.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if kind.is_symlink() {
                // A link is followed to a file inside the directory, never out of it.
                let target = fs::canonicalize(&path).ok();
                if !target
                    .as_ref()
                    .is_some_and(|t| t.starts_with(&root) && t.is_file())
                {
                    return Err(format!(
                        "{} links outside the source directory (or to a directory): \
                         file.recurse follows links to files inside it only",
                        path.display()
                    ));
                }
            }
            if let Ok(rel) = path.strip_prefix(&root) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    Ok(Some(out))
}

/// Salt's `include_pat`/`exclude_pat`: a glob, or `E@` and a regular expression.
fn pattern_matches(pattern: &str, path: &str) -> Result<bool, String> {
    match pattern.strip_prefix("E@") {
        Some(re) => regex::Regex::new(re)
            .map(|re| re.is_match(path))
            .map_err(|e| format!("`{pattern}` is not a valid regular expression: {e}")),
        None => Ok(corpus_pillar::glob_match(pattern, path)
            || path
                .rsplit('/')
                .next()
                .is_some_and(|base| corpus_pillar::glob_match(pattern, base))),
    }
}

/// `file.recurse`: the files of `source` (a directory) are managed under `name`.
pub fn recurse(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = chunk.name.trim_end_matches('/');
    let target = absolute_path(name)?;
    for (arg, instead) in REFUSED {
        if args.raw(arg).is_some() {
            return Err(format!(
                "argument `{arg}` of file.recurse is not supported by corpus: {instead}"
            ));
        }
    }
    let source = args
        .string("source")?
        .ok_or("file.recurse needs `source`, a salt:// directory")?;
    let source = source.trim_end_matches('/').to_string();
    if target.exists() && !target.is_dir() {
        return Ok(Outcome::fail(format!(
            "The path {name} exists and is not a directory"
        )));
    }
    let Some(files) = ctx.sources.list(&source)? else {
        return Ok(Outcome::fail(format!(
            "The directory '{source}' does not exist on the salt fileserver in saltenv 'base'"
        )));
    };
    let include = args.string("include_pat")?;
    let exclude = args.string("exclude_pat")?;
    let mut changes = Map::new();
    let mut failures = Vec::new();
    for rel in files {
        if let Some(p) = &include
            && !pattern_matches(p, &rel)?
        {
            continue;
        }
        if let Some(p) = &exclude
            && pattern_matches(p, &rel)?
        {
            continue;
        }
        let mut file_args = Map::new();
        for key in [
            "template", "user", "group", "context", "defaults", "dir_mode", "replace",
        ] {
            if let Some(v) = args.raw(key) {
                file_args.insert(key.to_string(), v.clone());
            }
        }
        if let Some(mode) = args.raw("file_mode") {
            file_args.insert("mode".into(), mode.clone());
        }
        file_args.insert("source".into(), json!(format!("{source}/{rel}")));
        file_args.insert("makedirs".into(), Value::Bool(true));
        let file = Chunk {
            name: format!("{name}/{rel}"),
            function: "managed".to_string(),
            args: file_args,
            requisites: Vec::new(),
            ..chunk.clone()
        };
        let out = managed(&file, ctx).unwrap_or_else(Outcome::fail);
        if out.result == Some(false) {
            failures.push(format!("{}: {}", file.name, out.comment));
        } else if !out.changes.is_empty() {
            changes.insert(file.name.clone(), Value::Object(out.changes));
        }
    }
    if !failures.is_empty() {
        let mut out = Outcome::fail(failures.join("\n"));
        out.changes = changes;
        return Ok(out);
    }
    if changes.is_empty() {
        return Ok(Outcome::ok(format!(
            "The directory {name} is in the correct state"
        )));
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("The directory {name} is set to be changed\n{TEST_NOTE}"),
            changes,
        ));
    }
    Ok(Outcome::changed(
        format!("Recursively updated {name}"),
        changes,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn every_file_of_the_source_directory_is_managed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("conf/sub")).unwrap();
        fs::write(root.join("conf/a.conf"), "port={{ pillar.port }}\n").unwrap();
        fs::write(root.join("conf/sub/b.conf"), "b\n").unwrap();
        fs::write(root.join("conf/skip.bak"), "old\n").unwrap();
        let target = dir.path().join("etc/app").display().to_string();
        let (src, svc) = (sources(&root, json!({"port": 80})), FakeServices::default());
        let args = json!({"name": target, "source": "salt://conf/", "template": "jinja",
                          "file_mode": "0640", "exclude_pat": "*.bak"});
        let run = |test: bool| {
            recurse(
                &chunk("file.recurse", "r", args.clone()),
                &ctx(test, &src, &svc),
            )
            .unwrap_or_else(Outcome::fail)
        };
        let would = run(true);
        assert_eq!(would.result, None, "{}", would.comment);
        assert!(!Path::new(&target).exists());
        let done = run(false);
        assert_eq!(done.comment, format!("Recursively updated {target}"));
        let keys: Vec<&String> = done.changes.keys().collect();
        assert_eq!(
            keys,
            [&format!("{target}/a.conf"), &format!("{target}/sub/b.conf")]
        );
        assert_eq!(
            fs::read_to_string(format!("{target}/a.conf")).unwrap(),
            "port=80\n"
        );
        let mode = fs::metadata(format!("{target}/sub/b.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(!Path::new(&format!("{target}/skip.bak")).exists());
        assert_eq!(
            run(false).comment,
            format!("The directory {target} is in the correct state")
        );
        let missing = recurse(
            &chunk(
                "file.recurse",
                "r",
                json!({"name": target, "source": "salt://nope"}),
            ),
            &ctx(false, &src, &svc),
        )
        .unwrap_or_else(Outcome::fail);
        assert!(
            missing
                .comment
                .starts_with("The directory 'salt://nope' does not exist")
        );
    }
}
