//! Logging in to a master: TLS against the endpoint's CA, id/password for an expiring token,
//! then every call carries `authorization: Bearer <token>`.

use std::time::Duration;

use anyhow::Context;
use corpus_proto::LoginRequest;
use corpus_proto::client_client::ClientClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::config::Endpoint;

/// Adds the session token to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(corpus_proto::AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

pub type Client = ClientClient<InterceptedService<Channel, Bearer>>;

/// A logged-in connection to one endpoint.
pub struct Session {
    pub client: Client,
    pub endpoint: Endpoint,
}

/// Metadata key the master sets on an Unavailable answer that is not about itself (e.g. the
/// hosting agent is down: `master/src/wire.rs`).
const UNAVAILABLE_PART: &str = "corpus-unavailable";

/// The master's refusal, as a user should read it.
pub fn rpc_error(endpoint: &Endpoint, status: Status) -> anyhow::Error {
    match status.code() {
        // The master answered: something behind it (the agent) is down; its message says what.
        Code::Unavailable if status.metadata().get(UNAVAILABLE_PART).is_some() => {
            anyhow::anyhow!("{}", status.message())
        }
        Code::Unavailable => anyhow::anyhow!(
            "the master at {} is unreachable: {}",
            endpoint.url,
            status.message()
        ),
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

/// How long connecting and logging in may take: a master that accepts the connection but
/// never answers (frozen, overloaded) must not leave the user waiting in silence.
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(15);

/// How long a command without a job to follow (status, listhosts, ...) waits for its answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// `deadline` overridden by `CORPUS_DEADLINE_SECONDS` (tests, slow links).
pub fn deadline(default: Duration) -> Duration {
    std::env::var("CORPUS_DEADLINE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs)
}

/// The error of a master that did not answer within `deadline` while the client was `doing`.
pub fn silent_master(endpoint: &Endpoint, doing: &str, deadline: Duration) -> anyhow::Error {
    anyhow::anyhow!(
        "the master at {} did not answer within {} s while {doing}: it may be stopped, frozen \
         or overloaded; check it, then try again",
        endpoint.url,
        deadline.as_secs()
    )
}

/// Connects and logs in, within [`LOGIN_DEADLINE`].
pub async fn login(endpoint: &Endpoint) -> anyhow::Result<Session> {
    let limit = deadline(LOGIN_DEADLINE);
    tokio::time::timeout(limit, login_now(endpoint))
        .await
        .map_err(|_| silent_master(endpoint, "connecting and logging in", limit))?
}

async fn login_now(endpoint: &Endpoint) -> anyhow::Result<Session> {
    let ca_pem = std::fs::read_to_string(&endpoint.ca).with_context(|| {
        format!(
            "endpoint {:?}: cannot read its CA certificate {}",
            endpoint.name,
            endpoint.ca.display()
        )
    })?;
    let channel = corpus_runtime::tls::dial(&endpoint.url, &ca_pem, None)
        .await
        .with_context(|| format!("endpoint {:?}", endpoint.name))?;
    let response = ClientClient::new(channel.clone())
        .login(LoginRequest {
            id: endpoint.id.clone(),
            password: endpoint.password.clone(),
        })
        .await
        .map_err(|status| match status.code() {
            Code::Unauthenticated => anyhow::anyhow!(
                "login to {} ({}) as {:?} failed: invalid id or password",
                endpoint.name,
                endpoint.url,
                endpoint.id
            ),
            _ => rpc_error(endpoint, status),
        })?
        .into_inner();
    let token: MetadataValue<Ascii> = format!("Bearer {}", response.token)
        .parse()
        .context("the master sent an unusable session token")?;
    Ok(Session {
        client: ClientClient::with_interceptor(channel, Bearer(token))
            .max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES),
        endpoint: endpoint.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            name: "local".into(),
            url: "https://127.0.0.1:1".into(),
            id: "u".into(),
            password: "p".into(),
            ca: "/nonexistent".into(),
        }
    }

    #[test]
    fn an_agent_down_is_not_reported_as_the_master_unreachable() {
        let mut status =
            Status::unavailable("agent \"node1\" hosting environment e is not connected");
        status
            .metadata_mut()
            .insert(UNAVAILABLE_PART, MetadataValue::from_static("agent"));
        let text = rpc_error(&endpoint(), status).to_string();
        assert!(!text.contains("master"), "{text}");
        assert!(text.contains("node1"), "{text}");
        let text = rpc_error(&endpoint(), Status::unavailable("connection refused")).to_string();
        assert!(
            text.starts_with("the master at https://127.0.0.1:1 is unreachable"),
            "{text}"
        );
    }
}
