//! Agent certificate renewal: an accepted agent presenting the exact certificate last issued
//! to it sends a CSR for a new key before that certificate expires (at two thirds of its
//! lifetime, see the agent's `renew.rs`); the master signs it and pins the new fingerprint.
//!
//! The certificate it replaces stays valid for the connections it already authenticated (the
//! agent's live link is not cut, and a fetch on that connection still passes) until the agent
//! attaches with the new one or the old one expires, whichever comes first. That grace lives in
//! memory only: a master restart cuts every link, and the agent's next connection presents its
//! new certificate.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::MasterState;
use crate::error::{MasterError, MasterResult};
use crate::pki::{csr_public_key, not_after, pem_to_der};
use crate::store::AgentStatus;

/// Largest CSR a renewal accepts (as enrollment does); a real one is well under 2 KiB.
pub const MAX_RENEW_CSR_BYTES: usize = 16 * 1024;

/// A certificate issued by a renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewed {
    pub certificate_pem: String,
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The certificate each renewed agent had before its renewal, honoured for the connections it
/// authenticated until the agent attaches with the new one.
#[derive(Default)]
pub struct ReplacedCertificates {
    /// agent id -> (the replaced fingerprint, the fingerprint that replaced it).
    by_agent: Mutex<HashMap<String, (String, String)>>,
}

impl ReplacedCertificates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.by_agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if `presented` is the certificate a renewal replaced with `current`, the agent's
    /// pinned fingerprint now. Once anything else is pinned (the agent was deleted and enrolled
    /// again, or renewed twice), the old certificate is worth nothing.
    pub fn honours(&self, agent: &str, presented: &str, current: Option<&str>) -> bool {
        self.lock()
            .get(agent)
            .is_some_and(|(replaced, by)| replaced == presented && Some(by.as_str()) == current)
    }

    /// The agent attached with its new certificate: the old one is no longer honoured.
    pub fn forget(&self, agent: &str) {
        self.lock().remove(agent);
    }

    /// How many agents may still use a replaced certificate (for the state summary).
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Signs a new certificate for agent `agent`, who authenticated with the certificate whose
/// fingerprint is `presented`, for the key of `csr_pem`, and pins it. Refused, naming the
/// agent, unless the agent is accepted and `presented` is exactly its pinned certificate.
/// Blocking (signing, store write); call under the enrollment lock, so an operator's reject or
/// delete never interleaves with it.
pub fn renew(
    state: &MasterState,
    agent: &str,
    presented: &str,
    csr_pem: &str,
) -> MasterResult<Renewed> {
    if csr_pem.len() > MAX_RENEW_CSR_BYTES {
        return Err(MasterError::invalid(format!(
            "certificate request of agent {agent:?} is larger than {MAX_RENEW_CSR_BYTES} bytes"
        )));
    }
    csr_public_key(agent, csr_pem).map_err(|e| MasterError::invalid(e.to_string()))?;
    let Some(mut record) = state.store.agent(agent)? else {
        return Err(MasterError::Refused(format!(
            "renewal refused: agent {agent:?} is not known to the master (deleted?): enroll it again"
        )));
    };
    match record.status {
        AgentStatus::Accepted => {}
        AgentStatus::Rejected => {
            return Err(MasterError::Refused(format!(
                "renewal refused: agent {agent:?} was rejected by an operator"
            )));
        }
        AgentStatus::Pending => {
            return Err(MasterError::Refused(format!(
                "renewal refused: agent {agent:?} is pending acceptance"
            )));
        }
    }
    if record.fingerprint.as_deref() != Some(presented) {
        return Err(MasterError::Refused(format!(
            "renewal refused: the certificate of agent {agent:?} is not the one last issued to it (already renewed, or enrolled again)"
        )));
    }
    let lifetime = state.settings().agent_cert_lifetime;
    let (certificate_pem, new_fingerprint) = state.pki.sign_agent(agent, csr_pem, lifetime)?;
    let expires = pem_to_der(&certificate_pem)
        .and_then(|der| not_after(&der))
        .ok_or_else(|| MasterError::internal("a freshly signed certificate does not parse"))?;
    record.csr_pem = csr_pem.to_owned();
    record.certificate_pem = Some(certificate_pem.clone());
    record.fingerprint = Some(new_fingerprint.clone());
    state.store.put_agent(&record)?;
    state.replaced_certificates.lock().insert(
        agent.to_owned(),
        (presented.to_owned(), new_fingerprint.clone()),
    );
    Ok(Renewed {
        certificate_pem,
        fingerprint: new_fingerprint,
        not_after: expires,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::AgentRecord;

    fn csr(id: &str) -> anyhow::Result<String> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, id);
        Ok(params.serialize_request(&key)?.pem()?)
    }

    fn accepted(state: &MasterState, id: &str) -> anyhow::Result<AgentRecord> {
        let (token, _) = state
            .auth
            .create_enrollment_token(Duration::from_secs(60))?;
        let mut record = AgentRecord {
            id: id.into(),
            status: AgentStatus::Pending,
            csr_pem: csr(id)?,
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: 0,
            decided_at: None,
            grains: None,
            last_seen: None,
            address: None,
            conflicting_keys: Vec::new(),
        };
        assert!(state.accept_with_token(&mut record, &token)?);
        Ok(record)
    }

    #[test]
    fn renewal_pins_the_new_certificate_and_honours_the_old_one_until_forgotten()
    -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let record = accepted(&state, "node1")?;
        let old = record.fingerprint.clone().unwrap_or_default();
        let new_csr = csr("node1")?;
        let renewed = renew(&state, "node1", &old, &new_csr)?;
        assert_ne!(renewed.fingerprint, old);
        let stored = state.existing_agent("node1")?;
        assert_eq!(
            stored.fingerprint.as_deref(),
            Some(renewed.fingerprint.as_str())
        );
        assert_eq!(stored.csr_pem, new_csr);
        assert!(
            state
                .replaced_certificates
                .honours("node1", &old, stored.fingerprint.as_deref())
        );
        // The old certificate cannot renew again: only the pinned one can.
        let again = renew(&state, "node1", &old, &csr("node1")?);
        assert!(
            matches!(&again, Err(MasterError::Refused(m)) if m.contains("not the one last issued")),
            "{again:?}"
        );
        state.replaced_certificates.forget("node1");
        assert!(
            !state
                .replaced_certificates
                .honours("node1", &old, stored.fingerprint.as_deref())
        );
        Ok(())
    }

    #[test]
    fn a_deleted_or_rejected_agent_cannot_renew() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let record = accepted(&state, "gone")?;
        let fp = record.fingerprint.clone().unwrap_or_default();
        state.store.delete_agent("gone")?;
        let refused = renew(&state, "gone", &fp, &csr("gone")?);
        assert!(
            matches!(&refused, Err(MasterError::Refused(m)) if m.contains("\"gone\" is not known")),
            "{refused:?}"
        );

        let mut record = accepted(&state, "bad")?;
        let fp = record.fingerprint.clone().unwrap_or_default();
        record.status = AgentStatus::Rejected;
        state.store.put_agent(&record)?;
        let refused = renew(&state, "bad", &fp, &csr("bad")?);
        assert!(
            matches!(&refused, Err(MasterError::Refused(m)) if m.contains("rejected")),
            "{refused:?}"
        );
        Ok(())
    }
}
