//! Fuzz bodies of `proto_agent_decode` and `proto_client_decode`: the first byte picks a message
//! an agent (or a client) sends, the rest is decoded as it with `corpus_proto`'s prost types
//! and the master's 16 MiB message limit. A message that decodes must encode back to one that
//! decodes equal, and the views the master builds from it (grains for templates, name checks,
//! quoted input, printed labels) must hold whatever the fields contain.

use corpus_proto::names::{
    printable, quote_input, validate_agent_id, validate_project_name, validate_user_id,
};
use corpus_proto::{
    AgentMessage, DestroyRequest, EnrollRequest, FetchBlobRequest, FollowRequest, InitEnvRequest,
    JobStatus, ListHostsRequest, LoginRequest, MAX_MESSAGE_BYTES, ProjectRequest, PushRequest,
    RenewRequest, RollbackRequest, SetQuotaRequest, StatusRequest, StepResult, UploadBlobRequest,
    agent_message, push_request,
};
use prost::Message;

/// Decodes `bytes` as `M`; when it decodes, checks that it survives an encode/decode round trip.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let message = M::decode(bytes).ok()?;
    let again =
        M::decode(message.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(
        again, message,
        "a message changed through encode and decode"
    );
    Some(message)
}

/// A name as the master checks and quotes it in an error.
fn check_name(value: &str, check: fn(&str) -> Result<(), corpus_proto::names::InvalidName>) {
    if let Err(e) = check(value) {
        let _ = e.to_string();
    }
    let quoted = quote_input(value);
    assert!(
        quoted.len() <= 64 * 10 + 40,
        "quote_input kept {} bytes",
        quoted.len()
    );
    let shown = printable(value);
    assert!(
        !shown.chars().any(char::is_control),
        "printable kept a control character"
    );
}

/// What an agent sends: `AgentMessage` (Attach), `EnrollRequest`, `FetchBlobRequest`,
/// `UploadBlobRequest`, `RenewRequest`.
pub fn agent(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            let Some(message) = round_trip::<AgentMessage>(bytes) else {
                return;
            };
            match message.body {
                Some(agent_message::Body::Hello(hello)) => {
                    if let Some(grains) = hello.grains {
                        check_name(&grains.id, validate_agent_id);
                        let view = corpus_proto::grains::Grains::from(grains).template_json();
                        assert!(view.is_object(), "the grains view is a mapping");
                    }
                    for finished in hello.unacknowledged {
                        let _ = JobStatus::label_of(finished.status);
                    }
                }
                Some(agent_message::Body::Event(event)) => {
                    let _ = StepResult::label_of(event.result);
                    let _ = serde_json::from_slice::<serde_json::Value>(&event.changes_json);
                    let _ = printable(&event.state_id);
                }
                Some(agent_message::Body::Finished(finished)) => {
                    let _ = JobStatus::label_of(finished.status);
                }
                Some(agent_message::Body::OperatorReturn(ret)) => {
                    let _ = serde_json::from_slice::<serde_json::Value>(&ret.return_json);
                }
                _ => {}
            }
        }
        1 => {
            if let Some(request) = round_trip::<EnrollRequest>(bytes) {
                check_name(&request.agent_id, validate_agent_id);
            }
        }
        2 => {
            let _ = round_trip::<FetchBlobRequest>(bytes);
        }
        3 => {
            let _ = round_trip::<UploadBlobRequest>(bytes);
        }
        _ => {
            let _ = round_trip::<RenewRequest>(bytes);
        }
    }
}

/// What a client sends: the `Client` service's requests.
pub fn client(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 10 {
        0 => {
            if let Some(request) = round_trip::<LoginRequest>(bytes) {
                check_name(&request.id, validate_user_id);
            }
        }
        1 => {
            let _ = round_trip::<ListHostsRequest>(bytes);
        }
        2 => {
            if let Some(request) = round_trip::<InitEnvRequest>(bytes) {
                let _ = quote_input(&request.platform);
                let _ = quote_input(&request.host);
            }
        }
        3 => {
            if let Some(request) = round_trip::<ProjectRequest>(bytes) {
                check_name(&request.project, validate_project_name);
            }
        }
        4 => {
            if let Some(PushRequest {
                body: Some(push_request::Body::Header(header)),
            }) = round_trip::<PushRequest>(bytes)
            {
                check_name(&header.project, validate_project_name);
                for name in header.pillar_files.keys() {
                    let _ = quote_input(name);
                }
            }
        }
        5 => {
            let _ = round_trip::<RollbackRequest>(bytes);
        }
        6 => {
            let _ = round_trip::<StatusRequest>(bytes);
        }
        7 => {
            let _ = round_trip::<DestroyRequest>(bytes);
        }
        8 => {
            let _ = round_trip::<SetQuotaRequest>(bytes);
        }
        _ => {
            let _ = round_trip::<FollowRequest>(bytes);
        }
    }
}
