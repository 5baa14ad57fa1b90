//! Content-addressed blobs (source archives, release archives) as files next to the database:
//! `DATA_DIR/blobs/<2 hex>/<sha256 hex>`. Written while hashing, verified, fsynced, then renamed
//! into place, so a blob that exists is always complete. Streamed in chunks both ways; never
//! held whole in memory.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob digest {0:?} is invalid: expected 64 lowercase hex characters")]
    BadDigest(String),
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upload is corrupt: its sha256 is {actual}, the sender announced {expected}")]
    Mismatch { expected: String, actual: String },
    #[error("upload is truncated: {actual} bytes received, {expected} announced")]
    Truncated { expected: u64, actual: u64 },
    #[error("blob store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn validate_digest(digest: &str) -> Result<(), BlobError> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(BlobError::BadDigest(digest.to_owned()))
    }
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

impl BlobStore {
    pub fn open(dir: PathBuf) -> Result<BlobStore, BlobError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore { dir })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        validate_digest(digest)?;
        Ok(self.dir.join(&digest[..2]).join(digest))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.exists())
    }

    /// Starts an upload of at most `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        let name = format!("{}.part", hex::encode(rand::random::<[u8; 16]>()));
        let tmp = self.dir.join("tmp").join(name);
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file,
            tmp,
            hasher: Sha256::new(),
            size: 0,
            limit,
            done: false,
        })
    }

    /// Opens a blob for streaming.
    pub async fn open_blob(&self, digest: &str) -> Result<(tokio::fs::File, u64), BlobError> {
        let path = self.path(digest)?;
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let size = file.metadata().await.map_err(io(&path))?.len();
        Ok((file, size))
    }
}

/// An upload in progress. Dropping it without a successful `finish` removes its temp file; a
/// crash leaves one, removed at the next start.
pub struct BlobWriter {
    store: BlobStore,
    file: tokio::fs::File,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
    /// Set by `finish` once the upload is renamed into place: there is no temp file left to
    /// remove on drop.
    done: bool,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(io(&self.tmp))
    }

    /// Verifies the upload against what the sender announced (empty: not announced), makes it
    /// durable and moves it into place. Returns (digest, size).
    pub async fn finish(
        mut self,
        expected_digest: &str,
        expected_size: Option<u64>,
    ) -> Result<(String, u64), BlobError> {
        let digest = hex::encode(self.hasher.finalize_reset());
        if let Some(expected) = expected_size
            && expected != self.size
        {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(BlobError::Truncated {
                expected,
                actual: self.size,
            });
        }
        if !expected_digest.is_empty() && expected_digest != digest {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(BlobError::Mismatch {
                expected: expected_digest.to_owned(),
                actual: digest,
            });
        }
        self.file.sync_all().await.map_err(io(&self.tmp))?;
        let path = self.store.path(&digest)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
        }
        tokio::fs::rename(&self.tmp, &path)
            .await
            .map_err(io(&path))?;
        self.done = true;
        Ok((digest, self.size))
    }
}

/// sha256 of a whole file, hex, read in chunks.
pub async fn file_digest(path: &Path) -> Result<String, BlobError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; corpus_proto::BLOB_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_verified_and_content_addressed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path().join("blobs"))?;
        let mut w = store.writer(1024).await?;
        w.write(b"hello ").await?;
        w.write(b"world").await?;
        let expected = hex::encode(Sha256::digest(b"hello world"));
        let (digest, size) = w.finish(&expected, Some(11)).await?;
        assert_eq!((digest.as_str(), size), (expected.as_str(), 11));
        assert!(store.exists(&digest));
        assert_eq!(file_digest(&store.path(&digest)?).await?, digest);

        let mut w = store.writer(1024).await?;
        w.write(b"tampered").await?;
        assert!(matches!(
            w.finish(&expected, None).await,
            Err(BlobError::Mismatch { .. })
        ));

        let mut w = store.writer(4).await?;
        assert!(matches!(
            w.write(b"too long").await,
            Err(BlobError::TooLarge { .. })
        ));
        assert!(matches!(
            store.path("../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));
        Ok(())
    }
}
