//! Salt's `archive.extracted`: a tar or zip archive from the file root (`salt://`) or this
//! machine unpacked into `name`, once: when every member is already there (or `if_missing`
//! exists) nothing happens. Unpacking uses the system's `tar` and `unzip`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, json};
use sha2::{Digest, Sha256, Sha512};

use super::StateContext;
use super::args::Args;
use super::file::{TEST_NOTE, absolute_path};
use super::result::Outcome;

/// `archive.extracted` arguments corpus refuses, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    ("source_hash_name", "give the hash itself in source_hash"),
    ("password", "extract protected archives with cmd.run"),
    ("extract_perms", "set modes with file.directory states"),
];

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (archive.extracted needs it installed)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Checks `bytes` against Salt's `source_hash` (`sha256=...`, `sha512=...` or bare hex).
fn verify(bytes: &[u8], source_hash: &str, source: &str) -> Result<(), String> {
    let (kind, want) = match source_hash.split_once('=') {
        Some((kind, hex)) => (kind.to_ascii_lowercase(), hex.trim().to_ascii_lowercase()),
        None => (
            match source_hash.len() {
                128 => "sha512".to_string(),
                _ => "sha256".to_string(),
            },
            source_hash.trim().to_ascii_lowercase(),
        ),
    };
    let have = match kind.as_str() {
        "sha256" => hex::encode(Sha256::digest(bytes)),
        "sha512" => hex::encode(Sha512::digest(bytes)),
        other => {
            return Err(format!(
                "source_hash type {other} is not supported by corpus: use sha256 or sha512"
            ));
        }
    };
    if have != want {
        return Err(format!(
            "the {kind} of {source} is {have}, not the source_hash {want}"
        ));
    }
    Ok(())
}

/// Whether the archive is a zip (by `archive_format` or its name).
fn is_zip(args: &Args, source: &str) -> Result<bool, String> {
    Ok(match args.string("archive_format")?.as_deref() {
        Some("zip") => true,
        Some("tar") | None => source.ends_with(".zip") && args.raw("archive_format").is_none(),
        Some(other) => {
            return Err(format!(
                "archive_format {other:?} is not supported by corpus: use tar or zip"
            ));
        }
    })
}

/// The archive's members, as relative paths.
fn members(archive: &Path, zip: bool) -> Result<Vec<String>, String> {
    let path = archive.display().to_string();
    let listing = if zip {
        run("unzip", &["-Z1", &path])?
    } else {
        run("tar", &["-tf", &path])?
    };
    Ok(listing
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// `archive.extracted`: the archive `source` is unpacked in `name`.
pub fn extracted(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    for (arg, instead) in REFUSED {
        if args.raw(arg).is_some() {
            return Err(format!(
                "argument `{arg}` of archive.extracted is not supported by corpus: {instead}"
            ));
        }
    }
    let name = &chunk.name;
    let target = absolute_path(name)?;
    let source = args
        .string("source")?
        .ok_or("archive.extracted needs `source`")?;
    if source.starts_with("http://")
        || source.starts_with("https://")
        || source.starts_with("ftp://")
    {
        return Err(format!(
            "archive.extracted source {source}: corpus does not download archives; put it in the file root (salt://) or fetch it with cmd.run first"
        ));
    }
    if let Some(path) = args.string("if_missing")?
        && Path::new(&path).exists()
    {
        return Ok(Outcome::ok(format!("Path {path} exists")));
    }
    let bytes = ctx
        .sources
        .read(&source)?
        .ok_or_else(|| format!("Source file {source} not found"))?;
    if let Some(hash) = args.string("source_hash")? {
        verify(&bytes, &hash, &source)?;
    }
    let zip = is_zip(&args, &source)?;
    let mut file = tempfile::Builder::new()
        .prefix("corpus-archive-")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    file.write_all(&bytes)
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    let archive = file.path().to_path_buf();
    let listed = members(&archive, zip)?;
    if listed
        .iter()
        .any(|m| m.starts_with('/') || m.split('/').any(|part| part == ".."))
    {
        return Err(format!(
            "archive {source} has members outside its directory (absolute or ..): refusing to extract it"
        ));
    }
    if args.bool("enforce_toplevel", true)? {
        let tops: std::collections::BTreeSet<&str> =
            listed.iter().filter_map(|m| m.split('/').next()).collect();
        let single_dir = tops.len() == 1 && listed.iter().any(|m| m.contains('/'));
        if !single_dir {
            return Ok(Outcome::fail(
                "Archive does not have a single top-level directory. To allow this archive to be extracted, set \"enforce_toplevel\" to False. To avoid a \"{archive_name}-master\" top-level directory when extracting a GitHub archive, use the \"options\" argument to pass \"--strip-components=1\" (tar only)",
            ));
        }
    }
    let options: Vec<String> = args
        .string("options")?
        .or(args.string("tar_options")?)
        .map(|o| o.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // With options (e.g. --strip-components) members land elsewhere: only `if_missing` and
    // `overwrite` decide then, as the presence check cannot know where.
    let present = options.is_empty()
        && listed
            .iter()
            .all(|m| target.join(m.trim_end_matches('/')).exists());
    if present && !args.bool("overwrite", false)? {
        return Ok(Outcome::ok("All files in archive are already present"));
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Archive {source} would be extracted to {name}\n{TEST_NOTE}"),
            Map::new(),
        ));
    }
    fs::create_dir_all(&target).map_err(|e| format!("cannot create {name}: {e}"))?;
    let archive_text = archive.display().to_string();
    let target_text = target.display().to_string();
    if zip {
        run("unzip", &["-q", "-o", &archive_text, "-d", &target_text])?;
    } else {
        let mut tar: Vec<&str> = vec!["-xf", &archive_text, "-C", &target_text, "--no-same-owner"];
        tar.extend(options.iter().map(String::as_str));
        run("tar", &tar)?;
    }
    chown_members(&args, &target, &listed)?;
    drop(file);
    Ok(Outcome::changed(
        format!("{source} extracted to {name}"),
        Map::from_iter([("extracted_files".to_string(), json!(listed))]),
    ))
}

/// Salt's `user`/`group`: the extracted top-level members change owner, recursively.
fn chown_members(args: &Args, target: &Path, listed: &[String]) -> Result<(), String> {
    let owner = match (args.string("user")?, args.string("group")?) {
        (None, None) => return Ok(()),
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => u,
        (None, Some(g)) => format!(":{g}"),
    };
    let tops: std::collections::BTreeSet<PathBuf> = listed
        .iter()
        .filter_map(|m| m.split('/').next())
        .map(|top| target.join(top))
        .filter(|p| p.exists())
        .collect();
    for top in tops {
        run("chown", &["-R", &owner, &top.display().to_string()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn a_tar_archive_is_extracted_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let build = dir.path().join("build/app-1.0");
        fs::create_dir_all(&build).unwrap();
        fs::create_dir_all(&root).unwrap();
        fs::write(build.join("README"), "hello\n").unwrap();
        let tarball = root.join("app.tar.gz").display().to_string();
        run(
            "tar",
            &[
                "-czf",
                &tarball,
                "-C",
                &dir.path().join("build").display().to_string(),
                "app-1.0",
            ],
        )
        .unwrap();
        let sha = hex::encode(Sha256::digest(fs::read(&tarball).unwrap()));
        let target = dir.path().join("opt").display().to_string();
        let (src, svc) = (sources(&root, Value::Null), FakeServices::default());
        let apply = |extra: Value, test: bool| {
            let mut args = json!({"name": target, "source": "salt://app.tar.gz"});
            if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
                a.extend(e.clone());
            }
            extracted(
                &chunk("archive.extracted", "app", args),
                &ctx(test, &src, &svc),
            )
            .unwrap_or_else(Outcome::fail)
        };
        assert_eq!(apply(json!({}), true).result, None);
        assert!(!Path::new(&target).exists());
        let bad = apply(json!({"source_hash": "sha256=00"}), false);
        assert!(
            bad.comment.contains("not the source_hash"),
            "{}",
            bad.comment
        );
        let done = apply(json!({"source_hash": format!("sha256={sha}")}), false);
        assert_eq!(done.result, Some(true), "{}", done.comment);
        assert_eq!(
            done.changes["extracted_files"],
            json!(["app-1.0/", "app-1.0/README"])
        );
        assert_eq!(
            fs::read_to_string(format!("{target}/app-1.0/README")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            apply(json!({}), false).comment,
            "All files in archive are already present"
        );
        assert_eq!(
            apply(json!({"if_missing": target}), false).comment,
            format!("Path {target} exists")
        );
        let url = apply(json!({"source": "https://example.invalid/a.tgz"}), false);
        assert!(
            url.comment.contains("does not download archives"),
            "{}",
            url.comment
        );
    }

    #[test]
    fn an_archive_without_a_single_top_level_directory_needs_enforce_toplevel_false() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(dir.path().join("a"), "a").unwrap();
        fs::write(dir.path().join("b"), "b").unwrap();
        let tarball = root.join("flat.tar").display().to_string();
        run(
            "tar",
            &[
                "-cf",
                &tarball,
                "-C",
                &dir.path().display().to_string(),
                "a",
                "b",
            ],
        )
        .unwrap();
        let target = dir.path().join("out").display().to_string();
        let (src, svc) = (sources(&root, Value::Null), FakeServices::default());
        let apply = |extra: Value| {
            let mut args = json!({"name": target, "source": "salt://flat.tar"});
            if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
                a.extend(e.clone());
            }
            extracted(
                &chunk("archive.extracted", "flat", args),
                &ctx(false, &src, &svc),
            )
            .unwrap_or_else(Outcome::fail)
        };
        assert!(
            apply(json!({}))
                .comment
                .starts_with("Archive does not have a single top-level directory")
        );
        let done = apply(json!({"enforce_toplevel": false}));
        assert_eq!(done.result, Some(true), "{}", done.comment);
        assert_eq!(fs::read_to_string(format!("{target}/b")).unwrap(), "b");
    }
}
