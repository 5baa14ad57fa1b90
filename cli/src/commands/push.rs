//! `corpus push ENDPOINT ENV_UUID PROJECT [--path DIR] [--pillar FILE|DIR] [--release ID] [--from ENV]`:
//! streams the git tree at HEAD of DIR (which must hold `.salt/`) and the pillar to the master,
//! then follows the deploy live. The tar lives in an anonymous temporary file (unlinked from
//! its creation), so no exit, not even a kill, leaves it behind in the temp dir.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use corpus_proto::{PushHeader, PushRequest, push_request};
use sha2::{Digest, Sha256};

use crate::progress;
use crate::session::{Session, rpc_error};

/// Largest pillar file read.
const MAX_PILLAR_FILE: u64 = 4 * 1024 * 1024;

fn git(path: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(path)
        .args(args)
        .output()
        .context("cannot run git: is it installed?")?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// How many files `git status` shows as changed or untracked: a push sends the commit at HEAD,
/// not them.
fn uncommitted_files(path: &Path) -> usize {
    git(path, &["status", "--porcelain", "--untracked-files=normal"])
        .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

/// The warning for `count` uncommitted files in `path`, if any.
fn uncommitted_warning(path: &Path, count: usize) -> Option<String> {
    (count > 0).then(|| {
        format!(
            "warning: {count} file{} in {} {} uncommitted changes (git status): corpus pushes \
             the commit at HEAD, without them; commit them first to deploy them",
            if count == 1 { "" } else { "s" },
            path.display(),
            if count == 1 { "has" } else { "have" },
        )
    })
}

/// The commit at HEAD and a tar of its tree in an anonymous temp file (rewound), with its
/// sha256 and size.
fn archive_source(path: &Path) -> anyhow::Result<(String, std::fs::File, String, u64)> {
    let commit = git(path, &["rev-parse", "--verify", "HEAD"]).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a git repository with a commit: corpus pushes the git tree at HEAD ({e})",
            path.display()
        )
    })?;
    if git(path, &["ls-tree", "-d", "HEAD", ".salt"])?.is_empty() {
        anyhow::bail!(
            "{} has no .salt/ directory at HEAD: corpus deploys need .salt/ with the lifecycle's SLS files (commit it first)",
            path.display()
        );
    }
    let mut file = tempfile::tempfile().context("cannot create a temporary file")?;
    let status = Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["archive", "--format=tar", "HEAD"])
        .stdout(Stdio::from(
            file.try_clone()
                .context("cannot share the temporary file")?,
        ))
        .status()
        .context("cannot run git archive")?;
    if !status.success() {
        anyhow::bail!("git archive failed in {}", path.display());
    }
    let mut hasher = Sha256::new();
    file.rewind()?;
    let mut reader = &file;
    let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    file.rewind()?;
    Ok((commit, file, hex::encode(hasher.finalize()), size))
}

/// The pillar files: a single file becomes `init.sls`; a directory gives every `.sls` below
/// it, by relative path (a `top.sls` there targets like Salt's pillar_roots).
fn read_pillar(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let read = |p: &Path| -> anyhow::Result<String> {
        let meta =
            std::fs::metadata(p).with_context(|| format!("cannot read pillar {}", p.display()))?;
        if meta.len() > MAX_PILLAR_FILE {
            anyhow::bail!(
                "pillar file {} is larger than {MAX_PILLAR_FILE} bytes",
                p.display()
            );
        }
        std::fs::read_to_string(p).with_context(|| format!("cannot read pillar {}", p.display()))
    };
    let mut files = HashMap::new();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read pillar {}", path.display()))?;
    if meta.is_file() {
        files.insert("init.sls".to_owned(), read(path)?);
        return Ok(files);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read pillar dir {}", dir.display()))?
        {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "sls") {
                let rel = p
                    .strip_prefix(path)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, read(&p)?);
            }
        }
    }
    if files.is_empty() {
        anyhow::bail!("pillar dir {} holds no .sls file", path.display());
    }
    Ok(files)
}

pub struct PushArgs<'a> {
    /// The endpoint's name, for the hints printed on an interruption.
    pub endpoint: &'a str,
    pub env: &'a str,
    pub project: &'a str,
    pub path: PathBuf,
    pub pillar: Option<PathBuf>,
    pub release: Option<&'a str>,
    /// The staging environment a final push takes its release from.
    pub from: Option<&'a str>,
    pub json: bool,
}

pub async fn run(session: Session, args: PushArgs<'_>) -> anyhow::Result<()> {
    // Interrupting the upload; once the job exists, following handles interruptions.
    let (session, updates, what) = tokio::select! {
        uploaded = upload(session, &args) => uploaded?,
        () = progress::interrupted() => {
            return Err(progress::Interrupted(format!(
                "interrupted: the push of {} stopped while uploading; the master may have \
                 received it: see `corpus status {} {}`",
                args.project, args.endpoint, args.env
            ))
            .into());
        }
    };
    progress::follow(session, args.env, &what, updates, args.json).await
}

/// Sends the source and pillar: the job's update stream, and what to call the job.
async fn upload(
    mut session: Session,
    args: &PushArgs<'_>,
) -> anyhow::Result<(Session, tonic::Streaming<corpus_proto::JobUpdate>, String)> {
    let pillar_files = match &args.pillar {
        Some(p) => read_pillar(p)?,
        None => HashMap::new(),
    };
    if let Some(warning) = uncommitted_warning(&args.path, uncommitted_files(&args.path)) {
        eprintln!("{warning}");
    }
    let (commit, archive, digest, size) = archive_source(&args.path)?;
    let header = PushRequest {
        body: Some(push_request::Body::Header(PushHeader {
            env_uuid: args.env.to_owned(),
            project: args.project.to_owned(),
            commit: commit.clone(),
            pillar_files,
            release_id: args.release.unwrap_or_default().to_owned(),
            source_size: size,
            source_digest: digest,
            from_env: args.from.unwrap_or_default().to_owned(),
        })),
    };
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bytes}/{total_bytes} {wide_bar} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut reader = archive;
    let uploader_bar = bar.clone();
    let sender = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if tx.blocking_send(header).is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if let Some(bar) = &uploader_bar {
                bar.inc(n as u64);
            }
            let chunk = PushRequest {
                body: Some(push_request::Body::SourceChunk(buf[..n].to_vec())),
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let response = session
        .client
        .push(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    sender.await??;
    let updates = response
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner();
    let what = format!(
        "push of {} ({})",
        args.project,
        commit.get(..8).unwrap_or(&commit)
    );
    Ok((session, updates, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".salt")).unwrap();
        std::fs::write(dir.path().join(".salt/build.sls"), "{}\n").unwrap();
        for args in [
            &["init", "-q"][..],
            &["add", "-A"],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-qm",
                "one",
            ],
        ] {
            git(dir.path(), args).unwrap();
        }
        dir
    }

    #[test]
    fn uncommitted_files_are_counted_and_named_in_a_warning() {
        let dir = repo();
        assert_eq!(uncommitted_files(dir.path()), 0);
        assert!(uncommitted_warning(dir.path(), 0).is_none());
        std::fs::write(dir.path().join(".salt/build.sls"), "changed: {}\n").unwrap();
        std::fs::write(dir.path().join("new.txt"), "new").unwrap();
        assert_eq!(uncommitted_files(dir.path()), 2);
        let warning = uncommitted_warning(dir.path(), 2).unwrap();
        assert!(warning.starts_with("warning: 2 files in "), "{warning}");
        assert!(warning.contains("commit them first"), "{warning}");
    }

    #[test]
    fn the_source_archive_leaves_no_file_in_the_temp_dir() {
        let dir = repo();
        let (_, mut file, digest, size) = archive_source(dir.path()).unwrap();
        // No name links to it: it goes with the process, however that ends.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(file.metadata().unwrap().nlink(), 0);
        assert!(size > 0 && digest.len() == 64);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            bytes.len() as u64,
            size,
            "the archive is rewound for the upload"
        );
    }
}
