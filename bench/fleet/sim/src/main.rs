//! `corpus-fleet-sim`: N simulated agents in one process against a real master, for
//! `bench/fleet/run.sh`. Each agent has its own key and certificate (enrolled through the real
//! Enrollment service with a single-use token the master's admin socket issues, kept in
//! `--state-dir` for later runs), its own mutual-TLS connection and the real AgentLink
//! protocol: a Hello with grains, heartbeats at the Welcome's period, a deploy job answered
//! with a successful result, an operator `test.ping` with `true`, and reconnection with the
//! agent's own back-off (`corpus_agent::link::Backoff`, 1 s doubling to 60 s).
//!
//! It prints one JSON line a second on stdout: `{"t": seconds, "connected": n, "attaches": n,
//! "drops": n}`, and `{"event": "all_connected", "t": seconds}` each time every agent is
//! attached again (after the start, after a master restart). The script reads those.
//!
//! The master limits connections per source address (`master/src/accept.rs`: 64 in the TLS
//! handshake, 512 established). The agents are spread over loopback sources, `--per-source` to
//! each of 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is loopback on Linux), and at most
//! `--connect-concurrency` (below 64) are in the TCP and TLS handshake at once, over all sources.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use corpus_agent::link::Backoff;
use corpus_proto::admin_client::AdminClient;
use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_proto::enrollment_client::EnrollmentClient;
use corpus_proto::{
    AgentMessage, AgentStatus, CreateTokenRequest, EnrollRequest, Grains, Heartbeat, Hello,
    JobFinished, JobStatus, MasterMessage, OperatorReturn, agent_message, master_message,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser, Debug)]
#[command(about = "Simulated agents for bench/fleet")]
struct Args {
    /// The master's agent URL (https://host:port).
    #[arg(long)]
    master: String,
    /// The master's CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The master's data dir: its admin socket issues the enrollment tokens.
    #[arg(long)]
    master_data_dir: PathBuf,
    /// How many agents.
    #[arg(long)]
    agents: usize,
    /// Where each agent's key and certificate are kept between runs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Agent ids are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Slots each agent offers.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    enroll_concurrency: usize,
    /// Once every agent is attached, create this many environments through the Client API
    /// (as `--user`, an admin), placed by the master.
    #[arg(long, default_value_t = 0)]
    envs: usize,
    /// The admin user creating the environments.
    #[arg(long, default_value = "bench-admin")]
    user: String,
    /// Its password (the environment variable keeps it off the command line).
    #[arg(long, env = "SIM_PASSWORD", default_value = "")]
    password: String,
    /// Agents sharing one loopback source address (the master takes 512 per source). A real
    /// fleet has one address per agent; with 400 per address the two cores were idle 15% of
    /// the connect storm, with 10 about 7%.
    #[arg(long, default_value_t = 10)]
    per_source: usize,
    /// Agents in the TCP and TLS handshake at once, over all sources (the master takes 64
    /// in handshake per source).
    #[arg(long, default_value_t = 48)]
    connect_concurrency: usize,
    /// Worker threads of the simulator's runtime (0: one per core, tokio's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Enroll the agents missing from `--state-dir`, then exit without connecting them
    /// (`run.sh`'s `STATE_DIR=`: identities kept for later runs).
    #[arg(long)]
    enroll_only: bool,
}

/// One agent's identity.
struct Identity {
    id: String,
    certificate_pem: String,
    key_pem: String,
}

/// What every agent task shares.
struct Fleet {
    master: String,
    ca_pem: String,
    slots: u32,
    /// Held while an agent is in the TCP and TLS handshake.
    handshakes: Semaphore,
    connected: AtomicU64,
    attaches: AtomicU64,
    drops: AtomicU64,
}

/// The same allocator as the master: the simulator shares its cores.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_open_files_limit();
    corpus_runtime::install_crypto_provider();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(args))
}

/// Every agent holds one connection: the soft limit goes up to the hard limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Err(e) => eprintln!("cannot read the open-files limit: {e}"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("cannot read the CA certificate {}", args.ca.display()))?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let started = Instant::now();
    let identities = identities(&args, &ca_pem).await?;
    eprintln!(
        "{} identities ready in {:.1}s",
        identities.len(),
        started.elapsed().as_secs_f64()
    );
    if args.enroll_only {
        return Ok(());
    }

    let fleet = Arc::new(Fleet {
        master: args.master.clone(),
        ca_pem,
        slots: args.slots,
        handshakes: Semaphore::new(args.connect_concurrency.max(1)),
        connected: AtomicU64::new(0),
        attaches: AtomicU64::new(0),
        drops: AtomicU64::new(0),
    });
    // Each agent's TLS client configuration (its key parsed, the CA's roots) is built once,
    // before the storm, as a real agent builds its own at start-up on its own machine: the
    // storm then spends the shared cores on handshakes and attaches only.
    let mut agents = Vec::with_capacity(identities.len());
    for identity in identities {
        let tls = client_config(&fleet.ca_pem, &identity)
            .with_context(|| format!("invalid TLS material of agent {}", identity.id))?;
        agents.push((identity, tls));
    }
    let start = Instant::now();
    println!(
        "{}",
        serde_json::json!({"event": "connecting", "agents": agents.len()})
    );
    let per_source = args.per_source.max(1);
    for (index, (identity, tls)) in agents.into_iter().enumerate() {
        tokio::spawn(agent(
            fleet.clone(),
            identity,
            tls,
            source(index, per_source),
        ));
    }
    let envs = (args.envs > 0).then(|| (args.envs, args.user.clone(), args.password.clone()));
    report(&fleet, args.agents as u64, start, envs).await;
    Ok(())
}

/// Logs in as `user` and creates `count` dev environments, placed by the master.
async fn create_environments(
    fleet: &Fleet,
    count: usize,
    user: String,
    password: String,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let channel = corpus_runtime::tls::dial(&fleet.master, &fleet.ca_pem, None).await?;
    let mut client = corpus_proto::client_client::ClientClient::new(channel.clone());
    let token = client
        .login(corpus_proto::LoginRequest { id: user, password })
        .await
        .context("login failed")?
        .into_inner()
        .token;
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse()?;
    let mut client = corpus_proto::client_client::ClientClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert(corpus_proto::AUTHORIZATION, bearer.clone());
            Ok(request)
        },
    );
    for _ in 0..count {
        client
            .init_env(corpus_proto::InitEnvRequest {
                platform: "dev".into(),
                ..Default::default()
            })
            .await
            .context("init_env failed")?;
    }
    println!(
        "{}",
        serde_json::json!({"event": "envs_created", "count": count, "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// Prints the fleet's state every second, and a line each time every agent is attached.
async fn report(
    fleet: &Arc<Fleet>,
    total: u64,
    start: Instant,
    mut envs: Option<(usize, String, String)>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut all = false;
    let mut last_line = Instant::now();
    loop {
        ticker.tick().await;
        let connected = fleet.connected.load(Ordering::Relaxed);
        let t = start.elapsed().as_secs_f64();
        if connected == total && !all {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            println!(
                "{}",
                serde_json::json!({"event": "all_connected", "t": t, "unix_ms": unix_ms})
            );
            if let Some((count, user, password)) = envs.take() {
                let fleet = fleet.clone();
                tokio::spawn(async move {
                    if let Err(e) = create_environments(&fleet, count, user, password).await {
                        eprintln!("cannot create the environments: {e:#}");
                    }
                });
            }
        }
        all = connected == total;
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            println!(
                "{}",
                serde_json::json!({
                    "t": t,
                    "connected": connected,
                    "attaches": fleet.attaches.load(Ordering::Relaxed),
                    "drops": fleet.drops.load(Ordering::Relaxed),
                })
            );
        }
    }
}

/// The identities of the N agents: read from the state dir, or enrolled now.
async fn identities(args: &Args, ca_pem: &str) -> anyhow::Result<Vec<Identity>> {
    let slots = Arc::new(Semaphore::new(args.enroll_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.agents {
        let id = format!("{}-{index:05}", args.prefix);
        let (dir, data_dir, master, ca) = (
            args.state_dir.clone(),
            args.master_data_dir.clone(),
            args.master.clone(),
            ca_pem.to_owned(),
        );
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            identity(&dir, &data_dir, &master, &ca, id).await
        });
    }
    let mut identities = Vec::with_capacity(args.agents);
    while let Some(done) = tasks.join_next().await {
        identities.push(done.context("an enrollment task failed")??);
    }
    identities.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(identities)
}

async fn identity(
    dir: &Path,
    master_data_dir: &Path,
    master: &str,
    ca_pem: &str,
    id: String,
) -> anyhow::Result<Identity> {
    let (key_path, cert_path) = (dir.join(format!("{id}.key")), dir.join(format!("{id}.crt")));
    if let (Ok(key_pem), Ok(certificate_pem)) = (
        std::fs::read_to_string(&key_path),
        std::fs::read_to_string(&cert_path),
    ) {
        return Ok(Identity {
            id,
            certificate_pem,
            key_pem,
        });
    }
    match enroll(master_data_dir, master, ca_pem, &id).await {
        Ok(identity) => Ok(identity),
        // Enrolled by an earlier run stopped before it kept the key (a run stopped mid-way
        // stops the enrollments in flight): forgotten by the master, then enrolled again.
        Err(first) => {
            admin(master_data_dir)
                .await?
                .delete_agent(corpus_proto::AgentRef { id: id.clone() })
                .await
                .with_context(|| {
                    format!("{first:#}; cannot delete agent {id} to enroll it again")
                })?;
            enroll(master_data_dir, master, ca_pem, &id).await
        }
    }
    .and_then(|(identity, key_pem)| {
        std::fs::write(&key_path, key_pem)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        std::fs::write(&cert_path, &identity.certificate_pem)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(identity)
    })
}

/// Enrolls agent `id` with a new key: its identity and the key's PEM.
async fn enroll(
    master_data_dir: &Path,
    master: &str,
    ca_pem: &str,
    id: &str,
) -> anyhow::Result<(Identity, String)> {
    let id = id.to_owned();
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id.as_str());
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let token = admin(master_data_dir)
        .await?
        .create_enrollment_token(CreateTokenRequest { ttl_seconds: 600 })
        .await
        .with_context(|| format!("cannot create an enrollment token for {id}"))?
        .into_inner()
        .token;
    let channel = corpus_runtime::tls::dial(master, ca_pem, None).await?;
    let answer = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            agent_id: id.clone(),
            csr_pem,
            token,
        })
        .await
        .with_context(|| format!("enrollment of {id} failed"))?
        .into_inner();
    if answer.status != AgentStatus::Accepted as i32 {
        anyhow::bail!("agent {id} was not accepted: {}", answer.message);
    }
    Ok((
        Identity {
            id,
            certificate_pem: answer.certificate_pem,
            key_pem: key.serialize_pem(),
        },
        key.serialize_pem(),
    ))
}

/// The master's Admin service over its unix socket.
async fn admin(data_dir: &Path) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let socket = data_dir.join("admin.sock");
    let channel = tonic::transport::Endpoint::from_static("http://admin.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the admin socket in {}", data_dir.display()))?;
    Ok(AdminClient::new(channel))
}

/// The loopback source address of agent `index`: 127.0.0.2 for the first `per_source`, then
/// 127.0.0.3, ... (carrying into the next octet past .255).
fn source(index: usize, per_source: usize) -> IpAddr {
    let offset = u32::try_from(index / per_source).unwrap_or(u32::MAX >> 8);
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 2)).saturating_add(offset),
    ))
}

/// Agent `identity`'s TLS client configuration: the master's CA as the only root, its own
/// certificate and key for the mutual TLS, HTTP/2 by ALPN (as `corpus_runtime::tls::dial`).
fn client_config(ca_pem: &str, identity: &Identity) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_slice_iter(identity.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(corpus_runtime::crypto_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An agent's mutual-TLS channel to the master from `source`, with its prebuilt TLS
/// configuration and `corpus_runtime::tls::dial`'s HTTP/2 settings. Waits for a handshake
/// slot first.
async fn dial(
    fleet: &Fleet,
    tls: &Arc<rustls::ClientConfig>,
    source: IpAddr,
) -> anyhow::Result<tonic::transport::Channel> {
    let url: tonic::codegen::http::Uri = fleet.master.parse().context("invalid --master URL")?;
    let host = url.host().unwrap_or_default().to_owned();
    let port = url.port_u16().unwrap_or(443);
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("invalid master host {host:?}"))?;
    let address: std::net::SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .with_context(|| format!("master host {host:?} has no address"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let _slot = fleet.handshakes.acquire().await?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            async move {
                let socket = match source {
                    IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind(std::net::SocketAddr::new(source, 0))?;
                let tcp = socket.connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("{}", corpus_runtime::tls::error_chain(&e)))
}

/// One agent: attaches, serves its link, and reconnects with the agent's back-off.
async fn agent(
    fleet: Arc<Fleet>,
    identity: Identity,
    tls: Arc<rustls::ClientConfig>,
    source: IpAddr,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let attached = AtomicBool::new(false);
        let ended = link(&fleet, &identity, &tls, source, &attached, &mut backoff).await;
        if attached.load(Ordering::Relaxed) {
            fleet.connected.fetch_sub(1, Ordering::Relaxed);
            fleet.drops.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = ended {
            // Quiet unless asked: thousands of agents retrying after a restart.
            if std::env::var_os("SIM_VERBOSE").is_some() {
                eprintln!("{}: {e:#}", identity.id);
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn link(
    fleet: &Fleet,
    identity: &Identity,
    tls: &Arc<rustls::ClientConfig>,
    source: IpAddr,
    attached: &AtomicBool,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let channel = dial(fleet, tls, source).await?;
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let hello = Hello {
        grains: Some(Grains {
            id: identity.id.clone(),
            hostname: identity.id.clone(),
            os: "Debian".into(),
            kernel: "6.1.0".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            ip_addresses: vec![source.to_string()],
            slots: fleet.slots,
            guest_type: "dir".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            root: format!("/srv/sim/{}", identity.id),
            isolation: "uid".into(),
            custom_json: Vec::new(),
        }),
        unacknowledged: vec![],
        running_jobs: vec![],
    };
    tx.try_send(AgentMessage {
        body: Some(agent_message::Body::Hello(hello)),
    })?;
    let mut inbound = AgentLinkClient::new(channel)
        .max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES)
        .attach(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let period = match inbound.message().await? {
        Some(MasterMessage {
            body: Some(master_message::Body::Welcome(w)),
        }) => Duration::from_secs(u64::from(w.heartbeat_seconds.max(1))),
        _ => anyhow::bail!("the master sent no welcome"),
    };
    attached.store(true, Ordering::Relaxed);
    fleet.connected.fetch_add(1, Ordering::Relaxed);
    fleet.attaches.fetch_add(1, Ordering::Relaxed);
    backoff.reset();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                sequence += 1;
                let beat = agent_message::Body::Heartbeat(Heartbeat { sequence, running_jobs: vec![] });
                tx.send(AgentMessage { body: Some(beat) }).await?;
            }
            message = inbound.message() => {
                let Some(message) = message? else { anyhow::bail!("the master closed the link") };
                if let Some(answer) = answer(message) {
                    tx.send(AgentMessage { body: Some(answer) }).await?;
                }
            }
        }
    }
}

/// What a real agent answers, without doing the work: a job succeeds, `test.ping` returns
/// `true`, any other operator function fails as unknown.
fn answer(message: MasterMessage) -> Option<agent_message::Body> {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    match message.body? {
        master_message::Body::Job(job) => Some(agent_message::Body::Finished(JobFinished {
            job_id: job.job_id,
            status: JobStatus::Success as i32,
            deploy_id: job.deploy_id.clone(),
            live_deploy_id: job.deploy_id,
            ..Default::default()
        })),
        master_message::Body::OperatorCall(call) => {
            let started = now_ms();
            let ping = call.function == "test.ping";
            Some(agent_message::Body::OperatorReturn(OperatorReturn {
                run_id: call.run_id,
                success: ping,
                return_json: if ping { b"true".to_vec() } else { Vec::new() },
                error: if ping {
                    String::new()
                } else {
                    format!("function {:?} is not simulated", call.function)
                },
                started_unix_ms: started,
                finished_unix_ms: now_ms(),
            }))
        }
        _ => None,
    }
}
