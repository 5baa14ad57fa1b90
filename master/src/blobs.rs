//! Content-addressed blobs (source archives, release archives) as files next to the database:
//! `DATA_DIR/blobs/<2 hex>/<sha256 hex>`. Written while hashing, verified, fsynced, then renamed
//! into place, so a blob that exists is always complete. Streamed in chunks both ways; never
//! held whole in memory. Every write error, the last one included, fails the upload and leaves
//! nothing under the digest: a full disk is named as such.
//!
//! A blob in use by a push that has not recorded its job yet is *pinned* (in memory): the
//! collector ([`crate::blob_gc`]) and a refused push's clean-up never remove a pinned blob, so
//! two pushes of the same source cannot delete each other's upload.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob digest {} is invalid: expected 64 lowercase hex characters", corpus_proto::names::quote_input(.0))]
    BadDigest(String),
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upload is corrupt: its sha256 is {actual}, the sender announced {expected}")]
    Mismatch { expected: String, actual: String },
    #[error("upload is truncated: {actual} bytes received, {expected} announced")]
    Truncated { expected: u64, actual: u64 },
    #[error(
        "the master's disk is full: cannot write {path} (free space on the master's data directory, then push again)"
    )]
    DiskFull { path: PathBuf },
    #[error("upload is incomplete on disk: {written} of {expected} bytes reached {path}")]
    ShortWrite {
        path: PathBuf,
        written: u64,
        expected: u64,
    },
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
    /// Digests in use by pushes in flight, with how many hold each.
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// One stored blob, as [`BlobStore::list`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBlob {
    pub digest: String,
    pub size: u64,
    /// Last modification (unix seconds): when its upload ended.
    pub modified: i64,
}

/// Keeps a blob from being collected while its push renders; released on drop.
#[derive(Debug)]
pub struct BlobPin {
    pins: Arc<Mutex<HashMap<String, usize>>>,
    digest: String,
}

impl BlobPin {
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = pins.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| {
        if is_disk_full(&source) {
            BlobError::DiskFull {
                path: path.to_owned(),
            }
        } else {
            BlobError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// ENOSPC and EDQUOT: out of space for whatever reason, which the operator fixes the same way.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl BlobStore {
    pub fn open(dir: PathBuf) -> Result<BlobStore, BlobError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        // Blobs hold users' sources: owner only, whatever the umask or an older layout left.
        for private in [&dir, &tmp] {
            std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))
                .map_err(io(private))?;
        }
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore {
            dir,
            pins: Arc::default(),
        })
    }

    fn pin(&self, digest: &str) -> BlobPin {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins.entry(digest.to_owned()).or_default() += 1;
        BlobPin {
            pins: self.pins.clone(),
            digest: digest.to_owned(),
        }
    }

    /// Every complete blob on disk (uploads in progress excluded). Blocking.
    pub fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        let mut found = Vec::new();
        let shards = std::fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        for shard in shards.flatten() {
            let shard_path = shard.path();
            if shard.file_name() == "tmp" || !shard_path.is_dir() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&shard_path) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(digest) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if validate_digest(&digest).is_err() {
                    continue;
                }
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                found.push(StoredBlob {
                    digest,
                    size: meta.len(),
                    modified,
                });
            }
        }
        Ok(found)
    }

    /// Size of a stored blob; None when it is not there.
    pub fn size(&self, digest: &str) -> Option<u64> {
        let path = self.path(digest).ok()?;
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Removes blob `digest` unless a push in flight holds it. True when it was removed.
    /// The caller checked that nothing recorded refers to it. Blocking.
    pub fn remove_unpinned(&self, digest: &str) -> Result<bool, BlobError> {
        let path = self.path(digest)?;
        // Held across the removal: a push finishing the same content pins it (under this
        // lock) before it renames the file into place, so it is never removed under it.
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.contains_key(digest) {
            return Ok(false);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
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
        // 0600 from the start (then the umask can only narrow it); fixed again in `finish`.
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(io(&tmp))?;
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
        if let Err(e) = self.file.write_all(chunk).await {
            // Free the space at once: on a full disk, the next upload needs it.
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(io(&self.tmp)(e));
        }
        Ok(())
    }

    /// Makes everything written so far durable, or says why not. tokio's `File` writes in the
    /// background and reports a failed write only at the next write or flush: `sync_all` alone
    /// does not, so without the flush the last chunk's ENOSPC is lost and a short file would
    /// pass. The size on disk is checked too, as the final word.
    async fn make_durable(&mut self) -> Result<(), BlobError> {
        self.file.flush().await.map_err(io(&self.tmp))?;
        self.file.sync_all().await.map_err(io(&self.tmp))?;
        let written = self.file.metadata().await.map_err(io(&self.tmp))?.len();
        if written != self.size {
            return Err(BlobError::ShortWrite {
                path: self.tmp.clone(),
                written,
                expected: self.size,
            });
        }
        Ok(())
    }

    /// Verifies the upload against what the sender announced (empty: not announced), makes it
    /// durable and moves it into place. Returns (digest, size).
    pub async fn finish(
        self,
        expected_digest: &str,
        expected_size: Option<u64>,
    ) -> Result<(String, u64), BlobError> {
        let (digest, size, _pin) = self.finish_pinned(expected_digest, expected_size).await?;
        Ok((digest, size))
    }

    /// [`BlobWriter::finish`], the blob pinned until the returned pin is dropped: the push
    /// keeps it until its job is recorded (or it is refused and removes the upload).
    pub async fn finish_pinned(
        mut self,
        expected_digest: &str,
        expected_size: Option<u64>,
    ) -> Result<(String, u64, BlobPin), BlobError> {
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
        // On failure the temp file goes with `self` (drop): nothing is left under the digest.
        self.make_durable().await?;
        let path = self.store.path(&digest)?;
        if let Some(parent) = path.parent() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .await
                .map_err(io(parent))?;
        }
        // Pinned before it appears under its digest: see `remove_unpinned`.
        let pin = self.store.pin(&digest);
        tokio::fs::rename(&self.tmp, &path)
            .await
            .map_err(io(&path))?;
        self.done = true;
        Ok((digest, self.size, pin))
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

#[cfg(test)]
mod full_disk_tests {
    use super::*;

    /// A tmpfs of `size` mounted on a temp dir, unmounted on drop (even when the test fails).
    struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        fn mount(size: &str) -> anyhow::Result<SmallDisk> {
            let dir = tempfile::tempdir()?;
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "mount tmpfs failed (tests run as root)");
            Ok(SmallDisk { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    fn leftovers(store_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(store_dir)? {
            let path = entry?.path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path)? {
                    found.push(inner?.path());
                }
            }
        }
        Ok(found)
    }

    #[tokio::test]
    async fn an_upload_to_a_full_disk_fails_naming_it_and_stores_nothing() -> anyhow::Result<()> {
        let disk = SmallDisk::mount("256k")?;
        let store = BlobStore::open(disk.path().join("blobs"))?;
        let body = vec![7u8; 600 * 1024];
        let digest = hex::encode(Sha256::digest(&body));

        let mut writer = store.writer(u64::MAX).await?;
        let mut failed = None;
        for chunk in body.chunks(64 * 1024) {
            if let Err(e) = writer.write(chunk).await {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => match writer.finish(&digest, Some(body.len() as u64)).await {
                Err(e) => e,
                Ok(_) => anyhow::bail!("an upload larger than the disk was accepted"),
            },
        };
        assert!(
            matches!(err, BlobError::DiskFull { .. }),
            "unexpected error: {err}"
        );
        assert!(err.to_string().contains("disk is full"), "{err}");
        assert!(!store.exists(&digest));
        assert_eq!(
            leftovers(&disk.path().join("blobs"))?,
            Vec::<PathBuf>::new()
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_small_upload_at_zero_bytes_free_fails_at_its_last_write() -> anyhow::Result<()> {
        let disk = SmallDisk::mount("256k")?;
        let store = BlobStore::open(disk.path().join("blobs"))?;
        // Fill the disk to the last byte.
        let filler = disk.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler)?;
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
            let _ = f.write_all(&[0u8]);
        }
        let body = b"a small source archive".to_vec();
        let digest = hex::encode(Sha256::digest(&body));
        let mut writer = store.writer(u64::MAX).await?;
        let result = match writer.write(&body).await {
            Ok(()) => writer.finish(&digest, Some(body.len() as u64)).await,
            Err(e) => Err(e),
        };
        assert!(
            matches!(result, Err(BlobError::DiskFull { .. })),
            "unexpected result: {result:?}"
        );
        assert!(!store.exists(&digest));

        // Once space is freed the same upload succeeds and is complete.
        std::fs::remove_file(&filler)?;
        let mut writer = store.writer(u64::MAX).await?;
        writer.write(&body).await?;
        writer.finish(&digest, Some(body.len() as u64)).await?;
        assert_eq!(file_digest(&store.path(&digest)?).await?, digest);
        Ok(())
    }
}
