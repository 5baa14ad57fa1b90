//! `DATA_DIR/known_hosts`, in OpenSSH's format, for the nodes the console attaches: a host's
//! key is trusted on first use only when the operator says so (`--accept-new-host-key`), and a
//! key that changed is always refused, naming both fingerprints.
//!
//! Entries are `HOST keytype base64` with HOST `name` for port 22 and `[name]:port` otherwise,
//! as `ssh` writes them. Hashed names (`|1|...`) and `@` markers are not ours and are skipped:
//! the console writes plain names, and only reads the file it writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("known hosts file {path} cannot be {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the host key of {host} is unknown ({fingerprint}): check it on the node \
         (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then pass --accept-new-host-key to record it"
    )]
    Unknown { host: String, fingerprint: String },
    #[error(
        "the host key of {host} changed: {known_hosts} has {known}, the node offered {offered}; \
         if the node was reinstalled, remove its line from {known_hosts} and attach again"
    )]
    Changed {
        host: String,
        known_hosts: PathBuf,
        known: String,
        offered: String,
    },
    #[error("the host key offered by {host} is malformed")]
    Malformed { host: String },
}

/// OpenSSH's fingerprint of a public key blob: `SHA256:` and the unpadded base64 digest.
pub fn fingerprint(key_blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(key_blob))
    )
}

/// The key type named inside an SSH public key blob (`ssh-ed25519`, `ssh-rsa`, ...).
fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

/// How OpenSSH names a host in known_hosts.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Whether a host key is trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// Not in the file: recorded only with the operator's consent.
    Unknown,
    /// The file has other keys for this host (their fingerprints).
    Changed(Vec<String>),
}

/// The known-hosts file of one master.
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    pub fn new(path: &Path) -> KnownHosts {
        KnownHosts {
            path: path.to_owned(),
        }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> KnownHostsError + '_ {
        move |source| KnownHostsError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// The keys recorded for `pattern` (as raw blobs), in file order.
    fn keys_of(&self, pattern: &str) -> Result<Vec<Vec<u8>>, KnownHostsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.io("read")(e)),
        };
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(hosts), Some(_type), Some(key)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if hosts.split(',').any(|h| h == pattern)
                && let Ok(blob) = STANDARD.decode(key)
            {
                keys.push(blob);
            }
        }
        Ok(keys)
    }

    /// Checks the key `blob` offered by `host:port`.
    pub fn check(&self, host: &str, port: u16, blob: &[u8]) -> Result<Verdict, KnownHostsError> {
        let keys = self.keys_of(&host_pattern(host, port))?;
        if keys.is_empty() {
            Ok(Verdict::Unknown)
        } else if keys.iter().any(|k| k == blob) {
            Ok(Verdict::Known)
        } else {
            Ok(Verdict::Changed(
                keys.iter().map(|k| fingerprint(k)).collect(),
            ))
        }
    }

    /// Checks the key and turns anything but a trusted one into an error; an unknown key is
    /// recorded when `accept_new`. Returns the fingerprint and whether it was newly recorded.
    pub fn verify(
        &self,
        host: &str,
        port: u16,
        blob: &[u8],
        accept_new: bool,
    ) -> Result<(String, bool), KnownHostsError> {
        let offered = fingerprint(blob);
        let name = host_pattern(host, port);
        match self.check(host, port, blob)? {
            Verdict::Known => Ok((offered, false)),
            Verdict::Unknown if accept_new => {
                self.add(&name, blob)?;
                Ok((offered, true))
            }
            Verdict::Unknown => Err(KnownHostsError::Unknown {
                host: name,
                fingerprint: offered,
            }),
            Verdict::Changed(known) => Err(KnownHostsError::Changed {
                host: name,
                known_hosts: self.path.clone(),
                known: known.join(", "),
                offered,
            }),
        }
    }

    /// Appends `pattern keytype base64` (the file is created 0600).
    fn add(&self, pattern: &str, blob: &[u8]) -> Result<(), KnownHostsError> {
        let key_type = key_type(blob).ok_or_else(|| KnownHostsError::Malformed {
            host: pattern.to_owned(),
        })?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(&self.path)
            .map_err(self.io("opened"))?;
        writeln!(file, "{pattern} {key_type} {}", STANDARD.encode(blob))
            .and_then(|()| file.sync_all())
            .map_err(self.io("written"))?;
        // The console runs as root, the master as its own user: the file belongs to whoever
        // owns the data dir, so the master can still restrict it at start.
        if let Some(dir) = self.path.parent()
            && let Ok(owner) = std::fs::metadata(dir)
        {
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::chown(&self.path, Some(owner.uid()), Some(owner.gid()));
        }
        Ok(())
    }
}

/// `OpenOptions::mode(0o600)` under a name that says why.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake ed25519 blob: the type string then 32 key bytes.
    fn blob(seed: u8) -> Vec<u8> {
        let mut b = 11u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ssh-ed25519");
        b.extend_from_slice(&32u32.to_be_bytes());
        b.extend_from_slice(&[seed; 32]);
        b
    }

    #[test]
    fn unknown_keys_need_consent_and_changed_keys_are_refused_with_both_fingerprints()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let known = KnownHosts::new(&dir.path().join("known_hosts"));
        let err = known.verify("node", 2222, &blob(1), false).err();
        assert!(
            matches!(err, Some(KnownHostsError::Unknown { .. })),
            "{err:?}"
        );
        let (fp, new) = known.verify("node", 2222, &blob(1), true)?;
        assert!(new && fp.starts_with("SHA256:"));
        let text = std::fs::read_to_string(dir.path().join("known_hosts"))?;
        assert!(text.starts_with("[node]:2222 ssh-ed25519 "), "{text}");
        assert_eq!(
            known.verify("node", 2222, &blob(1), false)?,
            (fp.clone(), false)
        );
        // Same name, other port: another host for OpenSSH.
        assert_eq!(known.check("node", 22, &blob(1))?, Verdict::Unknown);
        let err = known
            .verify("node", 2222, &blob(2), true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&fp) && err.contains(&fingerprint(&blob(2))),
            "{err}"
        );
        Ok(())
    }
}
