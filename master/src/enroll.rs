//! The Enrollment service: an agent without a certificate submits its CSR; it stays pending
//! until an operator accepts it, or is accepted at once with a valid enrollment token.
//!
//! Enrollment needs no login, so what it records is bounded and shown for the operator to
//! judge: a pending record keeps the key fingerprint (sha256 of the CSR's public key, what
//! `corpus-agent fingerprint` prints on the machine) and the source address; an id tried by a
//! second key is flagged (logged, listed, and accepted only with `--fingerprint`); pending
//! records expire after [`PENDING_TTL`]; new pending records are limited per source address
//! ([`NEW_PENDING_PER_SOURCE`] a minute) and in total ([`MAX_PENDING`]). Token-carrying
//! enrollments pass every one of these bounds: they prove themselves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corpus_proto::{AgentStatus as WireStatus, EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::MasterState;
use crate::auth::now_unix;
use crate::error::{MasterError, MasterResult};
use crate::pki::csr_public_key;
use crate::store::{AgentRecord, AgentStatus};
use crate::wire::internal;

/// Most agents that may wait for acceptance at once: enrollment is unauthenticated, so
/// without a bound anyone could fill the master with pending records.
pub const MAX_PENDING: usize = 1000;

/// How long a pending record waits for an operator; a still-polling agent enrolls again.
pub const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// New pending records one source address may create per minute.
pub const NEW_PENDING_PER_SOURCE: usize = 10;

/// Other keys remembered per pending id (the flag needs one; a few help the operator).
const MAX_CONFLICTING_KEYS: usize = 8;

/// sha256 of the public key of an agent's CSR, hex (see `corpus-agent fingerprint`).
pub fn key_fingerprint(id: &str, csr_pem: &str) -> Option<String> {
    csr_public_key(id, csr_pem)
        .ok()
        .map(|key| fingerprint_of_key(&key))
}

fn fingerprint_of_key(key_der: &[u8]) -> String {
    crate::pki::fingerprint(key_der)
}

/// Removes pending records older than [`PENDING_TTL`]; returns how many. Blocking.
pub fn expire_pending(state: &MasterState, now: i64) -> MasterResult<usize> {
    let oldest = now.saturating_sub(PENDING_TTL.as_secs() as i64);
    let mut expired = 0;
    for agent in state.store.agents()? {
        if agent.status == AgentStatus::Pending && agent.enrolled_at < oldest {
            state.store.delete_agent(&agent.id)?;
            info!(agent = %agent.id, "pending enrollment expired");
            expired += 1;
        }
    }
    Ok(expired)
}

fn pending_count(state: &MasterState) -> MasterResult<usize> {
    Ok(state
        .store
        .agents()?
        .iter()
        .filter(|a| a.status == AgentStatus::Pending)
        .count())
}

/// When each source address created its recent pending records.
#[derive(Default)]
pub struct SourceLimiter {
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SourceLimiter {
    /// Counts one new pending record from `source`; false when it already made
    /// [`NEW_PENDING_PER_SOURCE`] within the last minute.
    fn admit(&self, source: &str) -> bool {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle sources, so the map stays as small as the last minute's traffic.
        recent.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < window);
            !times.is_empty()
        });
        let times = recent.entry(source.to_owned()).or_default();
        if times.len() >= NEW_PENDING_PER_SOURCE {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Whether an operator may accept `record` given the fingerprint they read on the machine
/// (`given`; empty: none). An id tried by more than one key needs it; one that was given must
/// match the key the record holds.
pub fn check_operator_accept(record: &AgentRecord, given: &str) -> MasterResult<()> {
    let id = &record.id;
    let Some(key) = key_fingerprint(id, &record.csr_pem) else {
        return Err(MasterError::internal(format!(
            "the stored request of agent {id:?} is unreadable: delete it (corpus-master agents delete {id}) and let the agent enroll again"
        )));
    };
    let given = given.trim().to_ascii_lowercase();
    if given.is_empty() {
        if record.status == AgentStatus::Pending && !record.conflicting_keys.is_empty() {
            return Err(MasterError::Refused(format!(
                "agent id {id:?} was tried by {} keys: run `corpus-agent fingerprint` on the machine and accept only if it matches ({key}, from {}): corpus-master agents accept {id} --fingerprint FP",
                record.conflicting_keys.len() + 1,
                record.address.as_deref().unwrap_or("an unknown address")
            )));
        }
        return Ok(());
    }
    let matches = |fp: &str| given.len() >= 16 && fp.starts_with(&given);
    if matches(&key) {
        return Ok(());
    }
    let quoted = corpus_proto::names::quote_input(&given);
    if record.conflicting_keys.iter().any(|k| matches(k)) {
        return Err(MasterError::Refused(format!(
            "fingerprint {quoted} is another key that tried id {id:?}, not the one pending ({key}): delete the pending record (corpus-master agents delete {id}) so that agent can enroll again, then accept it"
        )));
    }
    Err(MasterError::Refused(format!(
        "fingerprint {quoted} does not match the key agent {id:?} enrolled with ({key}; give at least 16 hex characters): do not accept it; nothing was changed"
    )))
}

/// Largest CSR accepted; a real one is well under 2 KiB.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct EnrollmentService {
    pub state: Arc<MasterState>,
    pub sources: Arc<SourceLimiter>,
}

impl EnrollmentService {
    pub fn new(state: Arc<MasterState>) -> Self {
        EnrollmentService {
            state,
            sources: Arc::default(),
        }
    }
}

fn response(
    status: WireStatus,
    certificate_pem: String,
    message: String,
) -> Response<EnrollResponse> {
    Response::new(EnrollResponse {
        status: status as i32,
        certificate_pem,
        message,
    })
}

#[tonic::async_trait]
impl corpus_proto::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let source = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
        let req = request.into_inner();
        let id = req.agent_id.clone();
        corpus_proto::names::validate_agent_id(&id).map_err(MasterError::from)?;
        if req.csr_pem.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "certificate request of agent {id:?} is larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let key = csr_public_key(&id, &req.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;

        // One enrollment decision at a time: a token race or two polls cannot interleave.
        let _guard = self.state.enroll_lock.lock().await;
        let state = self.state.clone();
        let sources = self.sources.clone();
        tokio::task::spawn_blocking(move || {
            decide(
                &state,
                Enrollment {
                    id,
                    req,
                    key,
                    source,
                },
                &sources,
            )
        })
        .await
        .map_err(internal)?
    }
}

/// One enrollment request: agent `id`, whose CSR has public key `key`, from `source`.
struct Enrollment {
    id: String,
    req: EnrollRequest,
    key: Vec<u8>,
    source: String,
}

/// The enrollment decision. Blocking (store writes, signing); called under the enrollment
/// lock.
fn decide(
    state: &MasterState,
    enrollment: Enrollment,
    sources: &SourceLimiter,
) -> Result<Response<EnrollResponse>, Status> {
    let Enrollment {
        id,
        req,
        key,
        source,
    } = enrollment;
    expire_pending(state, now_unix())?;
    let existing = state.store.agent(&id).map_err(MasterError::from)?;
    let mut record = match existing {
        Some(record) => {
            let known_key = csr_public_key(&id, &record.csr_pem).map_err(internal)?;
            if known_key != key {
                // A pending id proves nothing (anyone can enroll any id); a valid token
                // does, so its holder takes the id over instead of being locked out by a
                // squatter. An accepted or rejected id keeps its key.
                let mut claimed = record.clone();
                claimed.csr_pem = req.csr_pem.clone();
                let takes_over = record.status == AgentStatus::Pending
                    && !req.token.is_empty()
                    && state.accept_with_token(&mut claimed, &req.token)?;
                if !takes_over {
                    let tried = fingerprint_of_key(&key);
                    warn!(agent = %id, source = %source, key = %tried, "enrollment refused: id already enrolled with another key");
                    if record.status == AgentStatus::Pending
                        && !record.conflicting_keys.contains(&tried)
                        && record.conflicting_keys.len() < MAX_CONFLICTING_KEYS
                    {
                        // Flag the id: the operator must now name the key to accept it.
                        let mut flagged = record.clone();
                        flagged.conflicting_keys.push(tried);
                        state.store.put_agent(&flagged).map_err(MasterError::from)?;
                    }
                    return Err(Status::permission_denied(format!(
                        "agent id {id:?} is already enrolled with another key: an operator must delete it first (corpus-master agents delete {id})"
                    )));
                }
                warn!(agent = %id, "a token holder took over a pending id enrolled with another key");
                claimed
            } else {
                record
            }
        }
        None if req.token.is_empty() && pending_count(state)? >= MAX_PENDING => {
            return Err(Status::resource_exhausted(format!(
                "{MAX_PENDING} agents already wait for acceptance (the most at once): an operator must accept or reject some first (corpus-master agents list), or enroll with a token"
            )));
        }
        None if req.token.is_empty() && !sources.admit(&source) => {
            warn!(agent = %id, source = %source, "enrollment refused: too many new pending agents from one address");
            return Err(Status::resource_exhausted(format!(
                "address {source} enrolled {NEW_PENDING_PER_SOURCE} new agents within a minute (the most allowed): wait a minute, or enroll with a token"
            )));
        }
        None => AgentRecord {
            id: id.clone(),
            status: AgentStatus::Pending,
            csr_pem: req.csr_pem.clone(),
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: now_unix(),
            decided_at: None,
            grains: None,
            last_seen: None,
            address: Some(source.clone()),
            conflicting_keys: Vec::new(),
        },
    };

    let mut message = String::new();
    if record.status == AgentStatus::Pending {
        if !req.token.is_empty() {
            if state.accept_with_token(&mut record, &req.token)? {
                info!(agent = %id, "agent accepted with an enrollment token");
            } else {
                warn!(agent = %id, "enrollment token invalid, expired or already used");
                message = format!(
                    "enrollment token is invalid, expired or already used: agent {id:?} waits for an operator (corpus-master agents accept {id})"
                );
            }
        }
        if record.status == AgentStatus::Pending {
            if message.is_empty() {
                message = format!(
                    "agent {id:?} is pending: an operator must accept it (corpus-master agents accept {id})"
                );
            }
            state.store.put_agent(&record).map_err(MasterError::from)?;
        }
    }

    Ok(match record.status {
        AgentStatus::Pending => response(WireStatus::Pending, String::new(), message),
        AgentStatus::Rejected => response(
            WireStatus::Rejected,
            String::new(),
            format!("agent {id:?} was rejected by an operator"),
        ),
        AgentStatus::Accepted => response(
            WireStatus::Accepted,
            record.certificate_pem.unwrap_or_default(),
            String::new(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            last_seen: None,
            address: Some("192.0.2.1".into()),
            conflicting_keys: Vec::new(),
        }
    }

    #[test]
    fn pending_records_expire_and_decided_ones_stay() -> anyhow::Result<()> {
        let (_dir, state) = crate::test_state()?;
        let now = 10 * PENDING_TTL.as_secs() as i64;
        let day_old = now - PENDING_TTL.as_secs() as i64 - 1;
        state
            .store
            .put_agent(&record("stale", AgentStatus::Pending, day_old))?;
        state
            .store
            .put_agent(&record("fresh", AgentStatus::Pending, now - 60))?;
        state
            .store
            .put_agent(&record("kept", AgentStatus::Accepted, 0))?;
        assert_eq!(expire_pending(&state, now)?, 1);
        assert!(state.store.agent("stale")?.is_none());
        assert!(state.store.agent("fresh")?.is_some());
        assert!(state.store.agent("kept")?.is_some());
        Ok(())
    }

    #[test]
    fn a_source_may_create_only_so_many_pending_records_a_minute() {
        let limiter = SourceLimiter::default();
        for _ in 0..NEW_PENDING_PER_SOURCE {
            assert!(limiter.admit("192.0.2.1"));
        }
        assert!(!limiter.admit("192.0.2.1"));
        assert!(limiter.admit("192.0.2.2"));
    }
}
