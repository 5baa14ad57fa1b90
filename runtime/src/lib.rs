//! Process plumbing shared by the corpus binaries (master, agent, client): logging, the rustls
//! crypto provider, TLS dialling of the master (`tls`), signal handling with a graceful-stop
//! deadline, systemd notification, and the time and duration formats every binary prints and
//! parses. It knows nothing of corpus's domain.

use std::time::Duration;

/// TLS to the master: `tls::dial` against a given CA, refusing `http://`.
pub mod tls;

/// Graceful stop, SIGHUP reload, SIGUSR2 state summary.
pub mod signals;
pub use signals::{Signal, handle_signals, on_state_dump, resident_memory, stopped};

/// Logs to stderr (journald picks it up under systemd), with colours only on a terminal;
/// `RUST_LOG` overrides `default` (an `EnvFilter` directive such as `info` or `corpus=debug`).
/// Safe to call more than once: later calls keep the first subscriber.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Installs ring as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// ring's TLS provider with AES-128-GCM-SHA256 ahead of AES-256-GCM-SHA384: the key exchange
/// (X25519) and the certificates (P-256) are of the 128-bit strength either way, and SHA-256
/// runs in hardware (SHA-NI) where SHA-384 does not. A key schedule in SHA-384 cost about 3% of
/// each side's CPU in a connect storm (`bench/fleet`, `PERF=1`). Every suite stays accepted.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != TLS13_AES_128_GCM_SHA256);
    provider
}

/// Tells systemd the service is ready (no-op outside systemd) and starts the watchdog pings
/// when the unit asks for them.
pub fn notify_ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

/// Tells systemd the service is stopping (no-op outside systemd), so a slow graceful stop is not
/// mistaken for a hang.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Unix seconds as RFC 3339 UTC, or "never" for zero (a host never seen, say).
pub fn format_unix_time(unix: i64) -> String {
    if unix <= 0 {
        return "never".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Parses durations the way every corpus flag does: `500ms`, `10s`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("duration {text:?} is invalid ({e}): use e.g. 500ms, 30s, 10m, 1h, 7d")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_errors_name_the_input() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("3parsecs")
                .unwrap_err()
                .contains("\"3parsecs\"")
        );
        assert!(parse_duration("soon").is_err());
    }
}
