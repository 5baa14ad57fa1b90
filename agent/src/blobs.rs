//! Blobs between the agent and the master: a job's source and release fetched (sha256 checked
//! as they stream) and a cooked release uploaded. The upload is retried with backoff while the
//! master cannot be reached, so a master restarting when a build ends delays the result instead
//! of failing the job; only the master's refusal ends it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_proto::{
    BlobRef, FetchBlobRequest, UploadBlobRequest, UploadHeader, upload_blob_request,
};
use corpus_runtime::Signal;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic::Code;
use tracing::warn;

use crate::jobs::JobContext;
use crate::lifecycle::ReleaseArchive;
use crate::link::Backoff;
use crate::results::valid_id;

/// First and longest wait between two upload attempts.
const UPLOAD_RETRY_MIN: Duration = Duration::from_secs(1);
const UPLOAD_RETRY_MAX: Duration = Duration::from_secs(30);

/// Where a job keeps a fetched blob: `STATE_DIR/blobs/<job id>-<digest>`.
pub fn blob_file(blob_dir: &Path, job_id: &str, digest: &str) -> PathBuf {
    blob_dir.join(format!("{job_id}-{digest}"))
}

pub fn valid_hex(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn client(ctx: &JobContext) -> anyhow::Result<AgentLinkClient<tonic::transport::Channel>> {
    let channel = corpus_runtime::tls::dial(
        &ctx.master,
        &ctx.ca_pem,
        Some((&ctx.identity.certificate_pem, &ctx.identity.key_pem)),
    )
    .await?;
    Ok(AgentLinkClient::new(channel).max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES))
}

/// Downloads a blob to `blob_dir/<job id>-<digest>`, verifying its sha256 as it streams.
pub async fn fetch(
    ctx: &JobContext,
    job: &corpus_proto::Job,
    digest: &str,
    blob_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if digest.is_empty() {
        return Ok(None);
    }
    if !valid_hex(digest) {
        anyhow::bail!("blob digest {digest:?} is invalid");
    }
    if !valid_id(&job.job_id) {
        anyhow::bail!("job id {:?} is invalid", job.job_id);
    }
    tokio::fs::create_dir_all(blob_dir)
        .await
        .with_context(|| format!("cannot create {}", blob_dir.display()))?;
    // Per job: two jobs fetching the same blob never share (or delete) each other's file.
    let path = blob_file(blob_dir, &job.job_id, digest);
    let part = path.with_extension("part");
    let mut stream = client(ctx)
        .await?
        .fetch_blob(FetchBlobRequest {
            digest: digest.to_owned(),
            env_uuid: job.env_uuid.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the master refused blob {digest}: {}", s.message()))?
        .into_inner();
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot create {}", part.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("blob {digest} transfer failed: {}", s.message()))?
    {
        hasher.update(&chunk.data);
        file.write_all(&chunk.data)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        let _ = tokio::fs::remove_file(&part).await;
        anyhow::bail!("blob {digest} arrived corrupt (sha256 {actual})");
    }
    tokio::fs::rename(&part, &path)
        .await
        .with_context(|| format!("cannot move {} to {}", part.display(), path.display()))?;
    Ok(Some(path))
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// The master could not be reached or did not answer: try again later.
    Unreachable(String),
    /// The master answered no: trying again cannot help.
    Refused(String),
}

/// Why an upload ended without a blob.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// The master refused the release (quota, the job is no longer running...).
    Refused(String),
    /// The agent is stopping: the result stays pending, and the upload resumes at the next start.
    Stopped,
}

/// Runs `attempt` until it succeeds or is refused, waiting `backoff` between attempts; gives up
/// when `stop` says stop (an attempt in flight is finished first).
pub async fn retry_while_unreachable<T, F, Fut>(
    mut attempt: F,
    mut backoff: Backoff,
    stop: &mut watch::Receiver<Signal>,
) -> Result<T, UploadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    loop {
        let why = match attempt().await {
            Ok(value) => return Ok(value),
            Err(AttemptError::Refused(why)) => return Err(UploadError::Refused(why)),
            Err(AttemptError::Unreachable(why)) => why,
        };
        if *stop.borrow() == Signal::Stop {
            return Err(UploadError::Stopped);
        }
        let delay = backoff.next_delay();
        warn!("the master cannot take the release now ({why}); trying again in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s == Signal::Stop) => return Err(UploadError::Stopped),
        }
    }
}

/// Uploads a cooked release for job `job_id`, retrying while the master is unreachable.
pub async fn upload_release(
    ctx: &JobContext,
    job_id: &str,
    env_uuid: &str,
    project: &str,
    release: &ReleaseArchive,
) -> Result<BlobRef, UploadError> {
    let mut stop = ctx.stop.clone();
    let backoff = Backoff::new(UPLOAD_RETRY_MIN, UPLOAD_RETRY_MAX);
    retry_while_unreachable(
        || upload_once(ctx, job_id, env_uuid, project, release),
        backoff,
        &mut stop,
    )
    .await
}

/// Whether the master's answer means "not now" rather than "no".
fn unreachable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

async fn upload_once(
    ctx: &JobContext,
    job_id: &str,
    env_uuid: &str,
    project: &str,
    release: &ReleaseArchive,
) -> Result<BlobRef, AttemptError> {
    // The archive is ours: a missing or unreadable one will not come back.
    let mut file = tokio::fs::File::open(&release.path).await.map_err(|e| {
        AttemptError::Refused(format!("cannot read {}: {e}", release.path.display()))
    })?;
    let mut client = client(ctx)
        .await
        .map_err(|e| AttemptError::Unreachable(format!("{e:#}")))?;
    let header = UploadBlobRequest {
        body: Some(upload_blob_request::Body::Header(UploadHeader {
            env_uuid: env_uuid.to_owned(),
            project: project.to_owned(),
            job_id: job_id.to_owned(),
            digest: release.sha256.clone(),
            size: release.size,
            manifest_json: serde_json::to_vec(&release.manifest).unwrap_or_default(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
        while let Ok(n) = file.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let chunk = UploadBlobRequest {
                body: Some(upload_blob_request::Body::Data(buf[..n].to_vec())),
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    match client
        .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(blob) => Ok(blob.into_inner()),
        Err(s) if unreachable(s.code()) => Err(AttemptError::Unreachable(format!(
            "{:?}: {}",
            s.code(),
            s.message()
        ))),
        Err(s) => Err(AttemptError::Refused(s.message().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[tokio::test]
    async fn an_unreachable_master_is_retried_until_it_takes_the_upload() {
        let (_tx, mut stop) = watch::channel(Signal::Running);
        let tries = AtomicU32::new(0);
        let got = retry_while_unreachable(
            || async {
                match tries.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err(AttemptError::Unreachable("connection refused".into())),
                    _ => Ok("blob"),
                }
            },
            quick(),
            &mut stop,
        )
        .await;
        assert_eq!(got, Ok("blob"));
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_refusal_ends_the_upload_at_once() {
        let (_tx, mut stop) = watch::channel(Signal::Running);
        let tries = AtomicU32::new(0);
        let got: Result<(), _> = retry_while_unreachable(
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(AttemptError::Refused("over quota".into()))
            },
            quick(),
            &mut stop,
        )
        .await;
        assert_eq!(got, Err(UploadError::Refused("over quota".into())));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stop_leaves_the_upload_for_the_next_start() {
        let (tx, mut stop) = watch::channel(Signal::Running);
        let tries = AtomicU32::new(0);
        let got: Result<(), _> = retry_while_unreachable(
            || async {
                if tries.fetch_add(1, Ordering::SeqCst) == 1 {
                    let _ = tx.send(Signal::Stop);
                }
                Err(AttemptError::Unreachable("connection refused".into()))
            },
            quick(),
            &mut stop,
        )
        .await;
        assert_eq!(got, Err(UploadError::Stopped));
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_transport_trouble_is_retried() {
        assert!(unreachable(Code::Unavailable));
        assert!(!unreachable(Code::FailedPrecondition));
        assert!(!unreachable(Code::InvalidArgument));
        assert!(!unreachable(Code::PermissionDenied));
    }
}
