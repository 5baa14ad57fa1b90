//! Certificate renewal: at two thirds of its certificate's lifetime the agent makes a new key
//! and CSR and asks the master (`AgentLink.Renew`, authenticated by its current certificate)
//! for a new certificate. The attached link is left alone: the new key and certificate are
//! installed on disk (`enroll::install_renewed`, crash-safe) and used from the next connection.
//! An expired certificate cannot be renewed: the agent says how to enroll it again.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use corpus_proto::RenewRequest;
use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_runtime::Signal;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::enroll::{self, AgentIdentity};
use crate::link::LinkOptions;

/// The longest wait between two attempts of a failed renewal (the first waits a tenth of
/// what is left of the certificate's life, at least a second).
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A certificate's validity, unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// When to renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// The validity of a PEM certificate; None if it does not parse.
pub fn validity(certificate_pem: &str) -> Option<Validity> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    Some(Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The operator's way out when the agent's certificate has expired, or None if it has not.
pub fn expired_message(id: &str, identity: &AgentIdentity) -> Option<String> {
    let validity = validity(&identity.certificate_pem)?;
    (validity.not_after <= now_unix()).then(|| {
        format!(
            "the certificate of agent {id:?} expired at {} and can no longer be renewed: re-enroll it (on the master: `corpus-master agents delete {id}`, then `corpus-master tokens create` and restart this agent with the token)",
            corpus_runtime::format_unix_time(validity.not_after)
        )
    })
}

/// Renews the agent's certificate whenever it is due, until `stop`. Runs beside the link for
/// the agent's whole life; re-reads the identity from disk each round, so a re-enrollment or
/// a renewal is picked up.
pub async fn run(options: LinkOptions, mut stop: watch::Receiver<Signal>) {
    let mut retry: Option<Duration> = None;
    loop {
        let wait = match enroll::load_identity(&options.state_dir) {
            // Not enrolled yet (or enrolling again): look again later.
            Ok(None) => options.enroll_poll.max(Duration::from_secs(1)),
            Err(e) => {
                warn!("certificate renewal: {e:#}");
                Duration::from_secs(60)
            }
            Ok(Some(identity)) => match next_step(&options, &identity, retry).await {
                Step::Wait(wait) => {
                    retry = None;
                    wait
                }
                Step::Retry(wait) => {
                    retry = Some(wait);
                    wait
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s == Signal::Stop) => return,
        }
    }
}

enum Step {
    /// Nothing to do before then.
    Wait(Duration),
    /// A renewal failed: try again after this.
    Retry(Duration),
}

async fn next_step(
    options: &LinkOptions,
    identity: &AgentIdentity,
    retry: Option<Duration>,
) -> Step {
    let Some(validity) = validity(&identity.certificate_pem) else {
        warn!(
            "certificate renewal: {} does not parse; the agent will enroll again when the master refuses it",
            options.state_dir.join("agent.crt").display()
        );
        return Step::Wait(Duration::from_secs(60));
    };
    let now = now_unix();
    if validity.not_after <= now {
        if let Some(message) = expired_message(&options.id, identity) {
            error!("{message}");
        }
        return Step::Wait(Duration::from_secs(300));
    }
    if now < validity.renew_at() && retry.is_none() {
        return Step::Wait(Duration::from_secs((validity.renew_at() - now) as u64));
    }
    match renew_once(options, identity).await {
        Ok(renewed) => {
            info!(
                expires = %corpus_runtime::format_unix_time(renewed.not_after),
                "certificate renewed: the new key and certificate are used from the next connection"
            );
            Step::Wait(Duration::ZERO)
        }
        Err(e) => {
            let left = Duration::from_secs((validity.not_after - now).max(0) as u64);
            let wait = retry
                .map_or(left / 10, |last| last * 2)
                .clamp(Duration::from_secs(1), MAX_RETRY);
            warn!("certificate renewal failed: {e:#}; retrying in {wait:?}");
            Step::Retry(wait)
        }
    }
}

/// One renewal: a new key and CSR, the master's signature, both installed on disk.
async fn renew_once(options: &LinkOptions, identity: &AgentIdentity) -> anyhow::Result<Validity> {
    let key = KeyPair::generate().context("cannot generate the agent's new key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, options.id.as_str());
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("cannot make the certificate request")?;
    let channel = corpus_runtime::tls::dial(
        &options.master,
        &options.ca_pem,
        Some((&identity.certificate_pem, &identity.key_pem)),
    )
    .await?;
    let response = AgentLinkClient::new(channel)
        .renew(RenewRequest {
            csr_pem: csr_pem.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let validity = validity(&response.certificate_pem)
        .ok_or_else(|| anyhow::anyhow!("the master sent a certificate that does not parse"))?;
    install(
        &options.state_dir,
        &key.serialize_pem(),
        &csr_pem,
        &response.certificate_pem,
    )?;
    Ok(validity)
}

fn install(state_dir: &Path, key_pem: &str, csr_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
    enroll::install_renewed(
        state_dir,
        &enroll::RenewedIdentity {
            key_pem: key_pem.to_owned(),
            csr_pem: csr_pem.to_owned(),
            certificate_pem: cert_pem.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let v = Validity {
            not_before: 1_000,
            not_after: 1_900,
        };
        assert_eq!(v.renew_at(), 1_600);
    }

    #[test]
    fn an_expired_certificate_names_the_way_to_enroll_again() -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let expired = AgentIdentity {
            certificate_pem: params.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        };
        let message = expired_message("node7", &expired).unwrap_or_default();
        assert!(
            message.contains("corpus-master agents delete node7"),
            "{message}"
        );
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let valid = AgentIdentity {
            certificate_pem: params.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        };
        assert_eq!(expired_message("node7", &valid), None);
        Ok(())
    }
}
