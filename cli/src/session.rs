//! Logging in to a master: TLS against the endpoint's CA, id/password for an expiring token,
//! then every call carries `authorization: Bearer <token>`.
//!
//! The token is cached per endpoint (URL, CA and user id) in a 0600 file under
//! [`crate::config::session_cache_dir`] (a 0700 dir), so commands do not log in (and run the
//! master's password hash) every time. A cached token the master no longer takes (expired,
//! revoked, the user disabled) is dropped and the command logs in again: see
//! [`SessionRejected`].

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
    /// The session came from the cache (no login was made for this command).
    pub cached: bool,
}

/// The master refused the session token (expired, revoked, user disabled or deleted): the
/// command may log in again and retry, as nothing was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SessionRejected(String);

/// Whether `error` is (or wraps) the master's refusal of the session token.
pub fn is_session_rejected(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<SessionRejected>())
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
        Code::Unauthenticated => SessionRejected(status.message().to_owned()).into(),
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

/// Connects and logs in, within [`LOGIN_DEADLINE`], reusing the cached session when there is
/// an unexpired one.
pub async fn login(endpoint: &Endpoint) -> anyhow::Result<Session> {
    let limit = deadline(LOGIN_DEADLINE);
    tokio::time::timeout(limit, login_now(endpoint, true))
        .await
        .map_err(|_| silent_master(endpoint, "connecting and logging in", limit))?
}

/// Connects and logs in with the password even when a session is cached (which it replaces).
pub async fn fresh_login(endpoint: &Endpoint) -> anyhow::Result<Session> {
    let limit = deadline(LOGIN_DEADLINE);
    tokio::time::timeout(limit, login_now(endpoint, false))
        .await
        .map_err(|_| silent_master(endpoint, "connecting and logging in", limit))?
}

/// A TLS channel to the endpoint's master.
pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Channel> {
    let ca_pem = std::fs::read_to_string(&endpoint.ca).with_context(|| {
        format!(
            "endpoint {:?}: cannot read its CA certificate {}",
            endpoint.name,
            endpoint.ca.display()
        )
    })?;
    corpus_runtime::tls::dial(&endpoint.url, &ca_pem, None)
        .await
        .with_context(|| format!("endpoint {:?}", endpoint.name))
}

/// A client whose calls carry `token`.
pub fn client_with_token(channel: Channel, token: &str) -> anyhow::Result<Client> {
    let token: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the session token is unusable (not ASCII)")?;
    Ok(ClientClient::with_interceptor(channel, Bearer(token))
        .max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES))
}

async fn login_now(endpoint: &Endpoint, use_cache: bool) -> anyhow::Result<Session> {
    let channel = connect(endpoint).await?;
    if use_cache && let Some(token) = cache::load(endpoint) {
        return Ok(Session {
            client: client_with_token(channel, &token)?,
            endpoint: endpoint.clone(),
            cached: true,
        });
    }
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
    let client = client_with_token(channel, &response.token)?;
    cache::store(endpoint, &response.token, response.expires_at_unix);
    Ok(Session {
        client,
        endpoint: endpoint.clone(),
        cached: false,
    })
}

/// The per-endpoint session cache. Failing to read or write it only costs a login: errors are
/// logged at debug level, never fatal.
pub mod cache {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use serde::{Deserialize, Serialize};
    use sha2::{Digest, Sha256};

    use crate::config::{Endpoint, session_cache_dir};

    /// A cached session expiring within this many seconds is not used (a command may run a
    /// while after it starts).
    const EXPIRY_MARGIN_SECS: i64 = 60;

    #[derive(Serialize, Deserialize)]
    struct Cached {
        token: String,
        expires_at_unix: i64,
    }

    fn now_unix() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// The cache file of `endpoint`: a hash of its URL, CA path and user id, so another
    /// master, CA or user never reuses the token.
    pub fn path(endpoint: &Endpoint) -> Option<PathBuf> {
        let mut hash = Sha256::new();
        for part in [
            endpoint.url.as_bytes(),
            endpoint.ca.as_os_str().as_encoded_bytes(),
            endpoint.id.as_bytes(),
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        let name = hex::encode(&hash.finalize()[..16]);
        session_cache_dir().map(|dir| dir.join(name))
    }

    /// The cached, unexpired token of `endpoint`, if any. A file others could read or that
    /// is not ours is ignored (and replaced by the next login).
    pub fn load(endpoint: &Endpoint) -> Option<String> {
        let path = path(endpoint)?;
        let meta = std::fs::symlink_metadata(&path).ok()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.mode() & 0o077 != 0 || meta.uid() != euid {
            tracing::warn!(
                "ignoring session cache {}: not a private file of this user",
                path.display()
            );
            return None;
        }
        let cached: Cached = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (cached.expires_at_unix > now_unix() + EXPIRY_MARGIN_SECS).then_some(cached.token)
    }

    /// Caches `token` for `endpoint` (dir 0700, file 0600, replaced atomically).
    pub fn store(endpoint: &Endpoint, token: &str, expires_at_unix: i64) {
        let Some(path) = path(endpoint) else { return };
        let result = (|| -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            let body = serde_json::to_vec(&Cached {
                token: token.to_owned(),
                expires_at_unix,
            })?;
            // tempfile creates the file 0600.
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            file.write_all(&body)?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::debug!("cannot cache the session in {}: {e}", path.display());
        }
    }

    /// Forgets the cached session of `endpoint`; whether there was one.
    pub fn remove(endpoint: &Endpoint) -> bool {
        path(endpoint).is_some_and(|path| std::fs::remove_file(path).is_ok())
    }
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
