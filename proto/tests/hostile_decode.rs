//! Property tests: whatever bytes arrive on the wire, decoding the messages agents and clients
//! send, and the views built from them (grains, labels, name checks), never panics. Runs 256
//! cases per property in the normal suite; `PROPTEST_CASES=100000` runs a longer campaign.

use corpus_proto::{
    AgentMessage, EnrollRequest, Grains, InitEnvRequest, LoginRequest, PushRequest,
    UploadBlobRequest,
};
use proptest::prelude::*;
use prost::Message;

/// Bytes that look like protobuf often enough to reach nested messages: a valid encoding of a
/// rich message with some bytes flipped, cut or appended.
fn mutated_agent_message() -> impl Strategy<Value = Vec<u8>> {
    let seed = AgentMessage::default();
    let mut base = seed.encode_to_vec();
    let grains = Grains {
        id: "node1".into(),
        os: "debian".into(),
        ip_addresses: vec!["10.0.0.1".into()],
        ..Default::default()
    };
    base.extend(grains.encode_to_vec());
    (
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        any::<usize>(),
    )
        .prop_map(move |(tail, flips, cut)| {
            let mut bytes = base.clone();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
            }
            bytes.truncate(cut % (bytes.len() + 1));
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = AgentMessage::decode(bytes.as_slice());
        let _ = EnrollRequest::decode(bytes.as_slice());
        let _ = LoginRequest::decode(bytes.as_slice());
        let _ = InitEnvRequest::decode(bytes.as_slice());
        let _ = PushRequest::decode(bytes.as_slice());
        let _ = UploadBlobRequest::decode(bytes.as_slice());
        if let Ok(grains) = Grains::decode(bytes.as_slice()) {
            let _ = corpus_proto::grains::Grains::from(grains).template_json();
        }
    }

    #[test]
    fn mutated_messages_decode_or_fail_cleanly_and_reencode(bytes in mutated_agent_message()) {
        if let Ok(message) = AgentMessage::decode(bytes.as_slice()) {
            let again = AgentMessage::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again.ok(), Some(message));
        }
        if let Ok(grains) = Grains::decode(bytes.as_slice()) {
            let view = corpus_proto::grains::Grains::from(grains.clone()).template_json();
            prop_assert!(view.is_object());
            let _ = corpus_proto::names::validate_agent_id(&grains.id)
                .map_err(|e| e.to_string());
        }
    }

    #[test]
    fn quoted_input_is_short_whatever_it_holds(value in ".{0,3000}") {
        let quoted = corpus_proto::names::quote_input(&value);
        // 64 characters escaped (at most 10 bytes each: \u{10ffff}) plus quotes and the length.
        prop_assert!(quoted.len() <= 64 * 10 + 40, "{}", quoted.len());
    }
}
