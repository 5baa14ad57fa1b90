//! Dialling the master: every corpus connection is TLS, verified against the corpus CA the
//! caller was given; agents add their client certificate.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("master URL {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the master at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// How long connecting (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts `https://host:port` (or `host:port`, taken as https); refuses plaintext.
pub fn master_url(url: &str) -> Result<String, DialError> {
    let bad = |reason: &str| DialError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url.trim();
    if url.starts_with("http://") {
        return Err(bad("corpus only talks TLS: use https://"));
    }
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    };
    if !full.starts_with("https://") {
        return Err(bad("use https://HOST:PORT"));
    }
    let uri: tonic::codegen::http::Uri = full.parse().map_err(|_| bad("use https://HOST:PORT"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host: use https://HOST:PORT"));
    }
    Ok(full)
}

/// A TLS channel to the master, trusting only `ca_pem`, optionally presenting a client identity
/// (certificate and key PEM). Connects eagerly so that TLS failures surface here.
pub async fn dial(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, DialError> {
    let url = master_url(url)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| DialError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| DialError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint.connect().await.map_err(|e| DialError::Connect {
        url,
        reason: error_chain(&e),
    })
}

/// An error and its sources on one line: tonic's transport errors hide the useful part
/// ("invalid peer certificate: UnknownIssuer") in their sources.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_tls() {
        assert_eq!(
            master_url("master:4505").ok().as_deref(),
            Some("https://master:4505")
        );
        assert!(master_url("https://127.0.0.1:1").is_ok());
        let err = master_url("http://master:4505").unwrap_err().to_string();
        assert!(err.contains("use https://"), "{err}");
        assert!(master_url("https://").is_err());
    }
}
