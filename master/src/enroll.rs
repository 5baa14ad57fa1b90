//! The Enrollment service: an agent without a certificate submits its CSR; it stays pending
//! until an operator accepts it, or is accepted at once with a valid enrollment token.

use std::sync::Arc;

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
const MAX_PENDING: usize = 1000;

fn pending_count(state: &MasterState) -> MasterResult<usize> {
    Ok(state
        .store
        .agents()?
        .iter()
        .filter(|a| a.status == AgentStatus::Pending)
        .count())
}

/// Largest CSR accepted; a real one is well under 2 KiB.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct EnrollmentService {
    pub state: Arc<MasterState>,
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
        tokio::task::spawn_blocking(move || decide(&state, id, req, key))
            .await
            .map_err(internal)?
    }
}

/// The enrollment decision for agent `id` whose CSR has public key `key`. Blocking (store
/// writes, signing); called under the enrollment lock.
fn decide(
    state: &MasterState,
    id: String,
    req: EnrollRequest,
    key: Vec<u8>,
) -> Result<Response<EnrollResponse>, Status> {
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
                    warn!(agent = %id, "enrollment refused: id already enrolled with another key");
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
                "{MAX_PENDING} agents already wait for acceptance: an operator must accept or reject some first (corpus-master agents list), or enroll with a token"
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
            address: None,
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
