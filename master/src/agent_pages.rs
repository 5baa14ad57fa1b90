//! `corpus-master agents list` at fleet scale (`Admin.StreamAgents`): every agent record is
//! read in one pass over the store and sent in pages as it is converted, so the listing is
//! never held in one message (tonic's limit) and the console prints the first page while the
//! master still converts the others. Pending enrollments past their time are removed in the
//! same pass, as `ListAgents` does before listing.

use tokio::sync::mpsc;
use tonic::Status;
use tracing::info;

use crate::MasterState;
use crate::error::{MasterError, MasterResult};
use crate::store::AgentStatus;

/// Agents per page when the console asks for none in particular.
pub const DEFAULT_AGENTS_PAGE: usize = 1_000;
/// The most agents one page may hold: an agent is about 500 bytes on the wire, so a page
/// stays far below the console's message limit.
pub const MAX_AGENTS_PAGE: usize = 5_000;

/// The page size a request asks for: 0 means [`DEFAULT_AGENTS_PAGE`]; above
/// [`MAX_AGENTS_PAGE`] is refused.
pub fn page_size(requested: u32) -> MasterResult<usize> {
    match usize::try_from(requested).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_AGENTS_PAGE),
        n if n > MAX_AGENTS_PAGE => Err(MasterError::invalid(format!(
            "page_size {n} is above the most agents per page ({MAX_AGENTS_PAGE}): ask for {MAX_AGENTS_PAGE} or fewer"
        ))),
        n => Ok(n),
    }
}

/// The fingerprint of the key an agent enrolled with (sha256 of the CSR's public key), as
/// `enroll::key_fingerprint` computes it, without checking the CSR's signature again: that was
/// checked when the CSR was stored, and checking it for each of 10,000 agents made a listing
/// take a second. Empty when the stored CSR does not parse.
pub fn stored_key_fingerprint(csr_pem: &str) -> String {
    use x509_parser::prelude::FromDer;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()) else {
        return String::new();
    };
    match x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents) {
        Ok((_, csr)) => crate::pki::fingerprint(
            &csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data,
        ),
        Err(_) => String::new(),
    }
}

/// Sends every agent, ordered by id, in pages of `page_size` down `pages`; stops early when the
/// receiver is gone (the console went away). Blocking: run it off the async workers. Returns how
/// many agents were sent.
pub fn send_agent_pages(
    state: &MasterState,
    page_size: usize,
    now: i64,
    pages: &mpsc::Sender<Result<corpus_proto::AgentList, Status>>,
) -> MasterResult<usize> {
    let oldest_pending = now.saturating_sub(crate::enroll::PENDING_TTL.as_secs() as i64);
    let mut page = Vec::with_capacity(page_size);
    let mut sent = 0;
    for record in state.store.agents()? {
        if record.status == AgentStatus::Pending && record.enrolled_at < oldest_pending {
            state.store.delete_agent(&record.id)?;
            info!(agent = %record.id, "pending enrollment expired");
            continue;
        }
        page.push(crate::admin::agent_info(state, record));
        if page.len() == page_size {
            sent += page.len();
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size));
            if pages
                .blocking_send(Ok(corpus_proto::AgentList { agents: full }))
                .is_err()
            {
                return Ok(sent);
            }
        }
    }
    // The last page, or one empty page for an empty fleet: the console always gets an answer.
    if !page.is_empty() || sent == 0 {
        sent += page.len();
        let _ = pages.blocking_send(Ok(corpus_proto::AgentList { agents: page }));
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AgentRecord;

    fn record(id: &str, status: AgentStatus, enrolled_at: i64) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            status,
            csr_pem: String::new(),
            certificate_pem: None,
            fingerprint: None,
            enrolled_at,
            decided_at: None,
            grains: None,
            last_seen: Some(enrolled_at),
            address: None,
            conflicting_keys: Vec::new(),
        }
    }

    #[test]
    fn the_stored_key_fingerprint_is_the_enrollment_one() -> anyhow::Result<()> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "node1");
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let expected = crate::enroll::key_fingerprint("node1", &csr_pem);
        assert!(expected.as_ref().is_some_and(|f| f.len() >= 16));
        assert_eq!(Some(stored_key_fingerprint(&csr_pem)), expected);
        assert_eq!(stored_key_fingerprint("not a CSR"), "");
        Ok(())
    }

    #[test]
    fn page_sizes_default_and_are_bounded() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_AGENTS_PAGE));
        assert_eq!(page_size(7).ok(), Some(7));
        assert_eq!(page_size(5_000).ok(), Some(MAX_AGENTS_PAGE));
        let refused = page_size(5_001).err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|m| m.contains("5000")),
            "{refused:?}"
        );
    }

    #[test]
    fn every_agent_comes_once_in_order_in_pages_and_expired_pending_ones_are_removed()
    -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let now = 1_000_000_000;
        for index in 0..7 {
            state
                .store
                .put_agent(&record(&format!("node{index}"), AgentStatus::Accepted, now))?;
        }
        state
            .store
            .put_agent(&record("late", AgentStatus::Pending, 0))?;
        state
            .store
            .put_agent(&record("waiting", AgentStatus::Pending, now))?;
        let (tx, mut rx) = mpsc::channel(16);
        assert_eq!(send_agent_pages(&state, 3, now, &tx)?, 8);
        drop(tx);
        let mut pages = Vec::new();
        while let Some(page) = rx.blocking_recv() {
            let page = page.map_err(|s| anyhow::anyhow!("{s:?}"))?;
            pages.push(page.agents.into_iter().map(|a| a.id).collect::<Vec<_>>());
        }
        assert_eq!(
            pages,
            vec![
                vec!["node0", "node1", "node2"],
                vec!["node3", "node4", "node5"],
                vec!["node6", "waiting"],
            ]
        );
        assert_eq!(state.store.agent("late")?, None);
        assert!(state.store.agent("waiting")?.is_some());
        Ok(())
    }

    #[test]
    fn an_empty_fleet_gets_one_empty_page_and_a_gone_console_stops_the_pass() -> anyhow::Result<()>
    {
        let (_dir, state) = crate::test_state()?;
        let (tx, mut rx) = mpsc::channel(4);
        assert_eq!(send_agent_pages(&state, 10, 0, &tx)?, 0);
        let first = rx.blocking_recv().and_then(Result::ok);
        assert_eq!(first.map(|p| p.agents.len()), Some(0));

        for index in 0..5 {
            state
                .store
                .put_agent(&record(&format!("node{index}"), AgentStatus::Accepted, 1))?;
        }
        drop(rx);
        // The first page finds no receiver: nothing more is converted or sent.
        assert_eq!(send_agent_pages(&state, 2, 1, &tx)?, 2);
        Ok(())
    }
}
