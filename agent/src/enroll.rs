//! First start: make a key and a CSR, submit them, and wait for the certificate. The key never
//! leaves the state dir (mode 0600); the certificate is written next to it once accepted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use corpus_proto::enrollment_client::EnrollmentClient;
use corpus_proto::{AgentStatus, EnrollRequest};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tracing::{error, info, warn};

use crate::link::{Backoff, LinkOptions};

const KEY_FILE: &str = "agent.key";
const CSR_FILE: &str = "agent.csr";
const CERT_FILE: &str = "agent.crt";
/// A renewal's key, CSR and certificate in one file: written atomically first, it is the
/// renewal's commit point; the three files are then replaced from it and it is removed. A
/// crash in between is finished by the next [`load_identity`], so the key and certificate on
/// disk always match.
const RENEWED_FILE: &str = "agent.renewed";

/// What a renewal installs.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RenewedIdentity {
    pub key_pem: String,
    pub csr_pem: String,
    pub certificate_pem: String,
}

/// Installs a renewal's key and certificate (both 0600) and its CSR, replacing the current
/// ones; crash-safe (see [`RENEWED_FILE`]).
pub fn install_renewed(state_dir: &Path, renewed: &RenewedIdentity) -> anyhow::Result<()> {
    let pending = path(state_dir, RENEWED_FILE);
    let json = serde_json::to_string(renewed).context("cannot encode the renewed identity")?;
    write_private(&pending, &json, 0o600)?;
    finish_renewal(state_dir)
}

/// Replaces key, CSR and certificate from a committed renewal, if one is pending.
fn finish_renewal(state_dir: &Path) -> anyhow::Result<()> {
    let pending = path(state_dir, RENEWED_FILE);
    let text = match std::fs::read_to_string(&pending) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", pending.display())),
    };
    let renewed: RenewedIdentity = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged: remove it", pending.display()))?;
    write_private(&path(state_dir, KEY_FILE), &renewed.key_pem, 0o600)?;
    write_private(&path(state_dir, CSR_FILE), &renewed.csr_pem, 0o644)?;
    write_private(&path(state_dir, CERT_FILE), &renewed.certificate_pem, 0o600)?;
    std::fs::remove_file(&pending).with_context(|| format!("cannot remove {}", pending.display()))
}

/// The agent's client identity, PEM.
#[derive(Clone)]
pub struct AgentIdentity {
    pub certificate_pem: String,
    pub key_pem: String,
}

fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(name)
}

fn write_private(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The identity from a previous enrollment, if the state dir holds one.
pub fn load_identity(state_dir: &Path) -> anyhow::Result<Option<AgentIdentity>> {
    finish_renewal(state_dir)?;
    let (cert, key) = (path(state_dir, CERT_FILE), path(state_dir, KEY_FILE));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    Ok(Some(AgentIdentity {
        certificate_pem: std::fs::read_to_string(&cert)
            .with_context(|| format!("cannot read {}", cert.display()))?,
        key_pem: std::fs::read_to_string(&key)
            .with_context(|| format!("cannot read {}", key.display()))?,
    }))
}

/// Drops the certificate (keeping the key): the master no longer honours it and the agent
/// must enroll again.
pub fn forget_certificate(state_dir: &Path) {
    let _ = std::fs::remove_file(path(state_dir, CERT_FILE));
}

/// The agent's key and CSR, made on first use.
fn key_and_csr(state_dir: &Path, id: &str) -> anyhow::Result<(String, String)> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let key_path = path(state_dir, KEY_FILE);
    let key = if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a valid key", key_path.display()))?
    } else {
        let key = KeyPair::generate().context("cannot generate the agent key")?;
        write_private(&key_path, &key.serialize_pem(), 0o600)?;
        info!(path = %key_path.display(), "generated the agent key");
        key
    };
    let csr_path = path(state_dir, CSR_FILE);
    if let Ok(csr) = std::fs::read_to_string(&csr_path) {
        return Ok((key.serialize_pem(), csr));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("cannot make the certificate request")?;
    write_private(&csr_path, &csr, 0o644)?;
    Ok((key.serialize_pem(), csr))
}

/// Returns the agent's identity, enrolling (and waiting for acceptance) when there is none.
/// Returns `None` if `stop` resolves first.
pub async fn ensure_identity(
    options: &LinkOptions,
    stop: &mut tokio::sync::watch::Receiver<corpus_runtime::Signal>,
) -> anyhow::Result<Option<AgentIdentity>> {
    if let Some(identity) = load_identity(&options.state_dir)? {
        return Ok(Some(identity));
    }
    let (key_pem, csr_pem) = key_and_csr(&options.state_dir, &options.id)?;
    let mut backoff = Backoff::new(options.reconnect_min, options.reconnect_max);
    let mut last_notice: Option<Instant> = None;
    loop {
        let wait = match enroll_once(options, &csr_pem).await {
            Ok((AgentStatus::Accepted, certificate_pem, _)) => {
                write_private(
                    &path(&options.state_dir, CERT_FILE),
                    &certificate_pem,
                    0o644,
                )?;
                info!("enrolled: the master accepted this agent");
                return Ok(Some(AgentIdentity {
                    certificate_pem,
                    key_pem,
                }));
            }
            Ok((AgentStatus::Rejected, _, message)) => {
                error!(
                    "{message}; retrying in {:?} in case an operator accepts it",
                    options.rejected_poll
                );
                backoff.reset();
                options.rejected_poll
            }
            Ok((_, _, message)) => {
                // Say it once a minute, not on every poll.
                if last_notice.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    info!("waiting for acceptance: {message}");
                    last_notice = Some(Instant::now());
                }
                backoff.reset();
                options.enroll_poll
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!("enrollment failed: {e:#}; retrying in {delay:?}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s == corpus_runtime::Signal::Stop) => return Ok(None),
        }
    }
}

async fn enroll_once(
    options: &LinkOptions,
    csr_pem: &str,
) -> anyhow::Result<(AgentStatus, String, String)> {
    let channel = corpus_runtime::tls::dial(&options.master, &options.ca_pem, None).await?;
    let response = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            agent_id: options.id.clone(),
            csr_pem: csr_pem.to_owned(),
            token: options.token.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let status = AgentStatus::try_from(response.status).unwrap_or(AgentStatus::Unspecified);
    Ok((status, response.certificate_pem, response.message))
}
