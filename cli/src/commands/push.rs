//! `corpus push ENDPOINT ENV_UUID PROJECT [--path DIR] [--pillar FILE|DIR] [--release ID] [--from ENV]`:
//! streams the git tree at HEAD of DIR (which must hold `.salt/`) and the pillar to the master,
//! then follows the deploy live.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
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

/// The commit at HEAD and a tar of its tree in a temp file, with its sha256 and size.
fn archive_source(path: &Path) -> anyhow::Result<(String, tempfile::NamedTempFile, String, u64)> {
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
    let file = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    let status = Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["archive", "--format=tar", "HEAD"])
        .stdout(Stdio::from(file.reopen()?))
        .status()
        .context("cannot run git archive")?;
    if !status.success() {
        anyhow::bail!("git archive failed in {}", path.display());
    }
    let mut hasher = Sha256::new();
    let mut reader = file.reopen()?;
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
    pub env: &'a str,
    pub project: &'a str,
    pub path: PathBuf,
    pub pillar: Option<PathBuf>,
    pub release: Option<&'a str>,
    /// The staging environment a final push takes its release from.
    pub from: Option<&'a str>,
    pub json: bool,
}

pub async fn run(mut session: Session, args: PushArgs<'_>) -> anyhow::Result<()> {
    let pillar_files = match &args.pillar {
        Some(p) => read_pillar(p)?,
        None => HashMap::new(),
    };
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
    let mut reader = archive.reopen()?;
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
    progress::follow(&session, &what, updates, args.json).await
}
