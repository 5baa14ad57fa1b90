//! Salt's `file.exists`, `file.missing` (checks that change nothing) and `file.copy` (a local
//! file copied to `name`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::args::Args;
use super::file::{TEST_NOTE, absolute_path, ensure_parent, write_atomically};
use super::result::Outcome;

/// `file.exists`: fails unless `name` exists (any kind of file).
pub fn exists(chunk: &Chunk, _ctx: &StateContext) -> Result<Outcome, String> {
    let name = &chunk.name;
    Ok(if fs::symlink_metadata(name).is_ok() {
        Outcome::ok(format!("Path {name} exists"))
    } else {
        Outcome::fail(format!("Specified path {name} does not exist"))
    })
}

/// `file.missing`: fails if `name` exists.
pub fn missing(chunk: &Chunk, _ctx: &StateContext) -> Result<Outcome, String> {
    let name = &chunk.name;
    Ok(if fs::symlink_metadata(name).is_ok() {
        Outcome::fail(format!("Specified path {name} exists"))
    } else {
        Outcome::ok(format!("Path {name} is missing"))
    })
}

/// `file.copy`: copies the local file `source` to `name`; an existing `name` is replaced only
/// with `force` (and only when it differs). `mode` sets the copy's mode, otherwise it keeps
/// the source's.
pub fn copy(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let path = absolute_path(name)?;
    for arg in ["subdir", "preserve"] {
        if args.bool(arg, false)? {
            return Err(format!(
                "argument `{arg}` of file.copy is not supported by corpus: name the target file and set `mode`/`user`/`group`"
            ));
        }
    }
    if args.raw("user").is_some() || args.raw("group").is_some() {
        return Err(
            "arguments `user`/`group` of file.copy are not supported by corpus: set the owner with a file.managed or file.directory state".to_string(),
        );
    }
    let source = args
        .string("source")?
        .ok_or("file.copy needs `source`, an absolute path on this machine")?;
    let source_path = absolute_path(&source)?;
    let Ok(source_meta) = fs::metadata(&source_path) else {
        return Ok(Outcome::fail(format!(
            "Source file \"{source}\" is not present"
        )));
    };
    if !source_meta.is_file() {
        return Err(format!(
            "source {source} is not a regular file: corpus copies files only (use file.recurse semantics with file.managed states)"
        ));
    }
    let mode = args.mode("mode")?;
    if path.exists() {
        let same = fs::read(&path).ok() == fs::read(&source_path).ok();
        if !args.bool("force", false)? || same {
            return Ok(Outcome::ok(format!(
                "The target file \"{name}\" exists and will not be overwritten"
            )));
        }
    }
    let changes = Map::from_iter([(name.clone(), json!(source))]);
    if ctx.test {
        // Salt's file.copy reports no changes in test mode, only the comment.
        return Ok(Outcome::would_change(
            format!("File \"{source}\" is set to be copied to \"{name}\"\n{TEST_NOTE}"),
            Map::new(),
        ));
    }
    ensure_parent(
        &path,
        args.bool("makedirs", false)?,
        None,
        &format!("The target directory {} is not present", parent_of(&path)),
    )?;
    let bytes = fs::read(&source_path).map_err(|e| format!("cannot read {source}: {e}"))?;
    let keep_mode = mode.unwrap_or(source_meta.permissions().mode() & 0o7777);
    write_atomically(&path, &bytes, Some(keep_mode), None)?;
    Ok(Outcome::changed(
        format!("Copied \"{source}\" to \"{name}\""),
        changes,
    ))
}

fn parent_of(path: &Path) -> String {
    path.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    fn apply(function: &str, args: Value, test: bool) -> Outcome {
        let (src, svc) = (
            sources(Path::new("/"), Value::Null),
            FakeServices::default(),
        );
        let c = chunk(function, "p", args);
        let ctx = ctx(test, &src, &svc);
        match function {
            "file.exists" => exists(&c, &ctx),
            "file.missing" => missing(&c, &ctx),
            "file.copy" => copy(&c, &ctx),
            other => panic!("no {other}"),
        }
        .unwrap_or_else(Outcome::fail)
    }

    #[test]
    fn exists_missing_and_copy() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        fs::write(&source, "data\n").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o640)).unwrap();
        let target = dir.path().join("sub/copy").display().to_string();
        let src = source.display().to_string();

        assert_eq!(
            apply("file.exists", json!({"name": src}), false).result,
            Some(true)
        );
        assert_eq!(
            apply("file.missing", json!({"name": src}), false).result,
            Some(false)
        );
        assert_eq!(
            apply("file.exists", json!({"name": target}), false).comment,
            format!("Specified path {target} does not exist")
        );
        assert_eq!(
            apply("file.missing", json!({"name": target}), false).result,
            Some(true)
        );

        let args = json!({"name": target, "source": src, "makedirs": true});
        assert_eq!(apply("file.copy", args.clone(), true).result, None);
        assert!(!Path::new(&target).exists());
        let copied = apply("file.copy", args.clone(), false);
        assert_eq!(copied.comment, format!("Copied \"{src}\" to \"{target}\""));
        assert_eq!(fs::read_to_string(&target).unwrap(), "data\n");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        fs::write(&source, "new\n").unwrap();
        let kept = apply("file.copy", args.clone(), false);
        assert!(kept.changes.is_empty() && kept.comment.ends_with("will not be overwritten"));
        let forced = apply(
            "file.copy",
            json!({"name": target, "source": src, "force": true}),
            false,
        );
        assert_eq!(forced.changes[&target], json!(src));
        assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
        let gone = apply(
            "file.copy",
            json!({"name": target, "source": "/nonexistent/corpus"}),
            false,
        );
        assert_eq!(
            gone.comment,
            "Source file \"/nonexistent/corpus\" is not present"
        );
    }
}
