//! The master's own TLS accept for the gRPC port, in place of tonic's: a connection that never
//! finishes its handshake cannot hold a descriptor for long, and no one source can fill the
//! master with them.
//!
//! - every accepted socket gets TCP keepalive, so dead peers are found;
//! - a handshake must finish within [`HANDSHAKE_TIMEOUT`] or the connection is closed;
//! - at most [`MAX_IN_HANDSHAKE`] connections are in handshake at once, at most
//!   [`MAX_IN_HANDSHAKE_PER_SOURCE`] of them from one source address, and at most
//!   [`MAX_ESTABLISHED_PER_SOURCE`] established connections per source: a connection beyond
//!   any of these is closed as soon as it is accepted;
//! - an accept error (`EMFILE` when descriptors run out) backs off from [`ACCEPT_BACKOFF_MIN`]
//!   doubling to [`ACCEPT_BACKOFF_MAX`] instead of spinning on the listener.
//!
//! A "source" is the peer's IPv4 address, or the /64 prefix of an IPv6 one (one host usually
//! holds a whole /64). Handshakes run in their own tasks; the established TLS streams reach
//! tonic through [`incoming`], and the client certificate reaches `request.peer_certs()` as with
//! tonic's own acceptor (`TlsStream<GuardedTcp>` implements tonic's `Connected`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::pki::Pki;

/// Longest time a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in TLS handshake at once, all sources together.
pub const MAX_IN_HANDSHAKE: usize = 512;
/// Connections in TLS handshake at once from one source address.
pub const MAX_IN_HANDSHAKE_PER_SOURCE: usize = 64;
/// Established (TLS done) connections from one source address. Users and agents each hold
/// one; a NAT gateway in front of a large fleet needs several source addresses.
pub const MAX_ESTABLISHED_PER_SOURCE: usize = 512;
/// Idle time before the first TCP keepalive probe, then the probe interval and count: a peer
/// that vanished is found within about two minutes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 6;
/// Pause after a failed accept (descriptors exhausted...), doubling up to the maximum.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("invalid master TLS material in the data dir's pki/: {0}")]
    Material(String),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The limits [`incoming`] enforces; [`Default`] gives the documented constants.
#[derive(Debug, Clone)]
pub struct AcceptLimits {
    pub handshake_timeout: Duration,
    pub max_in_handshake: usize,
    pub max_in_handshake_per_source: usize,
    pub max_established_per_source: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_in_handshake: MAX_IN_HANDSHAKE,
            max_in_handshake_per_source: MAX_IN_HANDSHAKE_PER_SOURCE,
            max_established_per_source: MAX_ESTABLISHED_PER_SOURCE,
        }
    }
}

/// The server side of the mutual TLS: the master's identity, client certificates checked
/// against the CA when given (optional: users log in without one), HTTP/2 by ALPN.
pub fn server_config(pki: &Pki) -> Result<Arc<ServerConfig>, AcceptError> {
    let material = |e: rustls::pki_types::pem::Error| AcceptError::Material(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.map_err(material)?)?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let chain = CertificateDer::pem_slice_iter(pki.master_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(material)?;
    let key = PrivateKeyDer::from_pem_slice(pki.master_key_pem.as_bytes()).map_err(material)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(corpus_runtime::crypto_provider()))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: every connection proves its key and certificate again (a
    // resumed session would skip the check of a certificate revoked since), and no ticket
    // is made, encrypted and sent per handshake for clients that never use it.
    config.send_tls13_tickets = 0;
    // The provider's suite order (`corpus_runtime::crypto_provider`), whatever a client prefers.
    config.ignore_client_order = true;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The key connections are counted under: the IPv4 address (IPv4-mapped IPv6 included), or
/// the /64 prefix of an IPv6 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SourceCount {
    handshaking: usize,
    established: usize,
}

#[derive(Debug, Default)]
struct Counts {
    handshaking: usize,
    sources: HashMap<IpAddr, SourceCount>,
}

/// Connections per state and source, shared by the accept loop and every connection's slot.
#[derive(Debug, Clone, Default)]
struct Tracker(Arc<Mutex<Counts>>);

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    InHandshake(usize),
    InHandshakePerSource(usize),
    EstablishedPerSource(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InHandshake(n) => write!(f, "{n} connections in TLS handshake (the limit)"),
            Refusal::InHandshakePerSource(n) => {
                write!(
                    f,
                    "{n} connections in TLS handshake from this source (the limit)"
                )
            }
            Refusal::EstablishedPerSource(n) => {
                write!(
                    f,
                    "{n} established connections from this source (the limit)"
                )
            }
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection in handshake from `source`, or says which limit it passes.
    fn admit(&self, source: IpAddr, limits: &AcceptLimits) -> Result<Slot, Refusal> {
        let mut counts = self.lock();
        if counts.handshaking >= limits.max_in_handshake {
            return Err(Refusal::InHandshake(limits.max_in_handshake));
        }
        let entry = counts.sources.entry(source).or_default();
        if entry.handshaking >= limits.max_in_handshake_per_source {
            return Err(Refusal::InHandshakePerSource(
                limits.max_in_handshake_per_source,
            ));
        }
        if entry.established >= limits.max_established_per_source {
            return Err(Refusal::EstablishedPerSource(
                limits.max_established_per_source,
            ));
        }
        entry.handshaking += 1;
        counts.handshaking += 1;
        Ok(Slot {
            tracker: self.clone(),
            source,
            established: false,
        })
    }

    #[cfg(test)]
    fn counts(&self, source: IpAddr) -> (usize, SourceCount) {
        let counts = self.lock();
        (
            counts.handshaking,
            counts.sources.get(&source).copied().unwrap_or_default(),
        )
    }
}

/// One connection's place in the counts; given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    tracker: Tracker,
    source: IpAddr,
    established: bool,
}

impl Slot {
    /// The handshake finished: the connection now counts as established.
    fn establish(&mut self) {
        if self.established {
            return;
        }
        let mut counts = self.tracker.lock();
        counts.handshaking = counts.handshaking.saturating_sub(1);
        let entry = counts.sources.entry(self.source).or_default();
        entry.handshaking = entry.handshaking.saturating_sub(1);
        entry.established += 1;
        self.established = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.tracker.lock();
        if !self.established {
            counts.handshaking = counts.handshaking.saturating_sub(1);
        }
        if let Some(entry) = counts.sources.get_mut(&self.source) {
            if self.established {
                entry.established = entry.established.saturating_sub(1);
            } else {
                entry.handshaking = entry.handshaking.saturating_sub(1);
            }
            if *entry == SourceCount::default() {
                counts.sources.remove(&self.source);
            }
        }
    }
}

/// An accepted TCP connection holding its slot in the counts until it is dropped.
#[derive(Debug)]
pub struct GuardedTcp {
    stream: TcpStream,
    slot: Slot,
}

impl AsyncRead for GuardedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for GuardedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.stream.local_addr().ok(),
            remote_addr: self.stream.peer_addr().ok(),
        }
    }
}

/// The established TLS connections on `listener`, for tonic's `serve_with_incoming*`. The
/// accept loop stops when the returned stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: AcceptLimits,
) -> ReceiverStream<io::Result<TlsStream<GuardedTcp>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        limits,
        Tracker::default(),
        tx,
    ));
    ReceiverStream::new(rx)
}

/// Errors that concern one connection only (the peer gave up before we accepted it).
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: AcceptLimits,
    tracker: Tracker,
    tx: mpsc::Sender<io::Result<TlsStream<GuardedTcp>>>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot accept connections");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = match tracker.admit(source_key(peer.ip()), &limits) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Dropping the stream closes it now. Debug only: a flood must not flood the log.
                debug!(%peer, "connection closed at once: {refusal}");
                continue;
            }
        };
        set_keepalive(&stream, peer);
        tokio::spawn(handshake(
            acceptor.clone(),
            GuardedTcp { stream, slot },
            peer,
            limits.handshake_timeout,
            tx.clone(),
        ));
    }
}

fn set_keepalive(stream: &TcpStream, peer: SocketAddr) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_nodelay(true))
    {
        debug!(%peer, error = %e, "cannot set TCP keepalive");
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    connection: GuardedTcp,
    peer: SocketAddr,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<TlsStream<GuardedTcp>>>,
) {
    match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
        Ok(Ok(mut tls)) => {
            tls.get_mut().0.slot.establish();
            // Fails only when the server stopped: the connection is dropped with it.
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(
            %peer,
            "no TLS handshake within {} s (the limit): connection closed",
            timeout.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AcceptLimits {
        AcceptLimits {
            handshake_timeout: Duration::from_secs(1),
            max_in_handshake: 3,
            max_in_handshake_per_source: 2,
            max_established_per_source: 1,
        }
    }

    /// The server picks AES-128-GCM-SHA256 even for a client preferring AES-256 (ring's own
    /// order, as tonic's client has), and sends no session ticket.
    #[test]
    fn the_handshake_uses_the_providers_suite_order_and_sends_no_ticket() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        crate::pki::init(dir.path(), &[], false)?;
        let pki = Pki::load(dir.path())?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tickets = Arc::new(TicketCount::default());
        client_config.resumption = rustls::client::Resumption::store(tickets.clone());
        assert_eq!(
            client_config.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            rustls::pki_types::ServerName::try_from("localhost")?,
        )?;
        let mut server = rustls::ServerConnection::new(server_config(&pki)?)?;
        // Both flights and anything after them (a ticket would come here), in memory.
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire)?;
            }
            server.read_tls(&mut wire.as_slice())?;
            server.process_new_packets()?;
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire)?;
            }
            client.read_tls(&mut wire.as_slice())?;
            client.process_new_packets()?;
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(tickets.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        Ok(())
    }

    /// A client session store that only counts the TLS 1.3 tickets it is given.
    #[derive(Debug, Default)]
    struct TicketCount(std::sync::atomic::AtomicUsize);

    impl rustls::client::ClientSessionStore for TicketCount {
        fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, _: rustls::NamedGroup) {}
        fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
            None
        }
        fn set_tls12_session(
            &self,
            _: rustls::pki_types::ServerName<'static>,
            _: rustls::client::Tls12ClientSessionValue,
        ) {
        }
        fn tls12_session(
            &self,
            _: &rustls::pki_types::ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            None
        }
        fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}
        fn insert_tls13_ticket(
            &self,
            _: rustls::pki_types::ServerName<'static>,
            _: rustls::client::Tls13ClientSessionValue,
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn take_tls13_ticket(
            &self,
            _: &rustls::pki_types::ServerName<'static>,
        ) -> Option<rustls::client::Tls13ClientSessionValue> {
            None
        }
    }

    #[test]
    fn sources_are_addresses_or_ipv6_prefixes() {
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()))
        };
        assert_eq!(source_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:bbbb::9")),
            source_key(ip("2001:db8:1:2:aaaa::1"))
        );
    }

    #[test]
    fn slots_are_limited_per_source_and_overall_and_given_back() {
        let tracker = Tracker::default();
        let limits = limits();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut a1 = tracker.admit(a, &limits).ok();
        let a2 = tracker.admit(a, &limits).ok();
        assert!(a1.is_some() && a2.is_some());
        assert_eq!(
            tracker.admit(a, &limits).err(),
            Some(Refusal::InHandshakePerSource(2))
        );
        let b1 = tracker.admit(b, &limits).ok();
        assert!(b1.is_some());
        assert_eq!(
            tracker.admit(b, &limits).err(),
            Some(Refusal::InHandshake(3))
        );

        // An established connection leaves the handshake counts and fills its own.
        if let Some(slot) = a1.as_mut() {
            slot.establish();
        }
        assert_eq!(
            tracker.counts(a),
            (
                2,
                SourceCount {
                    handshaking: 1,
                    established: 1
                }
            )
        );
        assert_eq!(
            tracker.admit(a, &limits).err(),
            Some(Refusal::EstablishedPerSource(1))
        );

        drop((a1, a2, b1));
        assert_eq!(tracker.counts(a), (0, SourceCount::default()));
        assert!(tracker.lock().sources.is_empty());
        assert!(tracker.admit(a, &limits).is_ok());
    }
}
