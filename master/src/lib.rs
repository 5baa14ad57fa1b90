//! corpus-master: keeps the pillar, renders state files, dispatches jobs to agents over their
//! long-lived mutual-TLS streams, and serves the operator console on a local socket.
//!
//! [`serve`] takes what a test needs to inject (a bound listener, a shutdown future, the data
//! dir); `main` only parses flags, installs logging and calls it.

pub mod accept;
pub mod admin;
pub mod agent_pages;
pub mod auth;
pub mod blob_gc;
pub mod blobs;
pub mod client;
pub mod confine;
pub mod console;
pub mod db;
pub mod deploys;
pub mod enroll;
pub mod environments;
pub mod error;
pub mod fleet;
pub mod hosts;
pub mod jobs;
pub mod link;
pub mod link_confirm;
pub mod link_registry;
pub mod listeners;
pub mod pki;
pub mod records;
pub mod relay;
pub mod render;
pub mod renew;
pub mod retention;
pub mod settings;
pub mod smep;
pub mod store;
pub mod wire;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corpus_proto::MAX_MESSAGE_BYTES;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::info;

use crate::auth::{Auth, now_unix};
use crate::db::SledDb;
use crate::error::{MasterError, MasterResult};
use crate::link_registry::LinkRegistry;
use crate::pki::Pki;
use crate::store::{AgentRecord, AgentStatus, EnvironmentRecord, JobRecord, Store};

/// The layout of the master's data dir.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn pki(&self) -> PathBuf {
        self.0.join("pki")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    pub fn socket(&self) -> PathBuf {
        admin::socket_path(&self.0)
    }
}

/// Everything the services share.
pub struct MasterState {
    pub store: Store,
    pub auth: Auth,
    pub pki: Pki,
    /// The agents connected now, and the way to send them jobs.
    pub links: LinkRegistry,
    /// Attaches waiting for their new grains to be stored in the next batch (`link_confirm.rs`).
    pub grains_writes: link_confirm::GrainsWrites,
    pub jobs: jobs::Jobs,
    /// Operator runs open now and their calls awaiting returns (`fleet/runs.rs`).
    pub runs: fleet::runs::Runs,
    pub blobs: blobs::BlobStore,
    /// Bounds concurrent password verifications: each argon2 run takes ~19 MiB and a core, so
    /// a flood of logins queues instead of exhausting the master.
    pub login_slots: tokio::sync::Semaphore,
    /// Serialises enrollment decisions (enroll, accept, reject, delete) so they never interleave.
    pub enroll_lock: tokio::sync::Mutex<()>,
    /// Certificates a renewal replaced, still honoured on the connections they authenticated.
    pub replaced_certificates: renew::ReplacedCertificates,
    /// Serialises environment creation, so a slot is counted free and taken in one step.
    /// (A multi-master backend needs this in a transaction instead.)
    pub slot_allocation: std::sync::Mutex<()>,
    /// What SIGHUP may change; read through [`MasterState::settings`].
    settings: std::sync::RwLock<settings::Settings>,
    /// Where the settings come from, to re-read them on SIGHUP.
    settings_source: settings::SettingsSource,
    data_dir: PathBuf,
}

impl MasterState {
    /// Runs store calls (and anything else that blocks: signing, rendering) off the async
    /// workers, so a slow disk never stalls heartbeats or logins.
    pub async fn blocking<T, F>(self: &Arc<Self>, work: F) -> MasterResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&MasterState) -> MasterResult<T> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(MasterError::internal)?
    }

    /// Signs the agent's CSR and records it as accepted.
    pub fn accept(&self, record: &mut AgentRecord) -> MasterResult<()> {
        self.sign(record)?;
        self.store.put_agent(record)?;
        Ok(())
    }

    /// Accepts the agent if `token` is a valid enrollment token, spending the token and
    /// recording the agent in one batch; false (and nothing recorded) otherwise. An expired
    /// token is spent all the same. Call under `enroll_lock`, which keeps two enrollments from
    /// redeeming one token between its check and its spending.
    pub fn accept_with_token(&self, record: &mut AgentRecord, token: &str) -> MasterResult<bool> {
        if !self.auth.enrollment_token_usable_by(token, &record.id)? {
            self.auth.consume_enrollment_token(token)?;
            return Ok(false);
        }
        let mut accepted = record.clone();
        self.sign(&mut accepted)?;
        if !self
            .store
            .put_agent_spending_token(&auth::secret_hash(token), &accepted)?
        {
            return Ok(false);
        }
        *record = accepted;
        Ok(true)
    }

    /// Signs the agent's CSR into its record, marking it accepted (not stored).
    fn sign(&self, record: &mut AgentRecord) -> MasterResult<()> {
        let lifetime = self.settings().agent_cert_lifetime;
        let (pem, fingerprint) = self.pki.sign_agent(&record.id, &record.csr_pem, lifetime)?;
        record.status = AgentStatus::Accepted;
        record.certificate_pem = Some(pem);
        record.fingerprint = Some(fingerprint);
        record.decided_at = Some(now_unix());
        Ok(())
    }

    /// The settings in force now.
    pub fn settings(&self) -> settings::Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The heartbeat period in force now, without copying the settings (every attach reads it).
    pub fn heartbeat(&self) -> Duration {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat
    }

    /// SIGHUP: re-reads the settings; on any error the running ones stay and the error says
    /// why. Returns the settings now in force.
    pub fn reload(&self) -> anyhow::Result<settings::Settings> {
        if self.settings_source.config.is_none() {
            anyhow::bail!("no --config file: nothing to reload");
        }
        let new = self.settings_source.load(&self.data_dir)?;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        Ok(new)
    }

    pub fn existing_agent(&self, id: &str) -> MasterResult<AgentRecord> {
        self.store.agent(id)?.ok_or_else(|| {
            MasterError::not_found(
                "agent",
                format!("{id:?}"),
                ": see `corpus-master agents list` for the known ones",
            )
        })
    }

    pub fn existing_environment(&self, uuid: &str) -> MasterResult<EnvironmentRecord> {
        self.store.environment(uuid)?.ok_or_else(|| {
            MasterError::not_found(
                "environment",
                format!("{uuid:?}"),
                ": see `corpus-master envs list`",
            )
        })
    }

    pub fn existing_job(&self, id: &str) -> MasterResult<JobRecord> {
        self.store.job(id)?.ok_or_else(|| {
            MasterError::not_found("job", format!("{id:?}"), ": see `corpus-master jobs list`")
        })
    }
}

/// A master initialised and opened in a fresh temporary data dir, for unit tests (the dir
/// must outlive the state).
#[cfg(test)]
pub(crate) fn test_state() -> anyhow::Result<(tempfile::TempDir, Arc<MasterState>)> {
    let dir = tempfile::tempdir()?;
    init(dir.path(), &[], false)?;
    let state = open(&ServeOptions {
        data_dir: dir.path().to_owned(),
        settings: Default::default(),
    })?;
    Ok((dir, state))
}

/// `corpus-master init`: the CA, the master's certificate, the database.
pub fn init(data_dir: &Path, sans: &[String], force: bool) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let dir = DataDir(data_dir.to_owned());
    pki::init(&dir.pki(), sans, force)?;
    SledDb::open(&dir.db())?;
    restrict_data_dir(data_dir)?;
    Ok(())
}

/// Makes the data dir private whatever the umask or an earlier version left: the dir and every
/// dir under it 0700, every file 0600 (the database, blobs, known hosts). `pki/` keeps the modes
/// `pki.rs` gives (keys 0600, public certificates 0644); links are not followed.
fn restrict_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot restrict {} to {mode:o}", path.display()))
    }
    fn walk(dir: &Path, skip: &Path) -> anyhow::Result<()> {
        restrict(dir, 0o700)?;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if path == skip {
                restrict(&path, 0o700)?;
            } else if kind.is_dir() {
                walk(&path, skip)?;
            } else if kind.is_file() {
                restrict(&path, 0o600)?;
            }
        }
        Ok(())
    }
    walk(data_dir, &DataDir(data_dir.to_owned()).pki())
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    /// Flags and the optional `--config` file.
    pub settings: settings::SettingsSource,
}

/// Opens the data dir written by [`init`].
pub fn open(options: &ServeOptions) -> anyhow::Result<Arc<MasterState>> {
    let dir = DataDir(options.data_dir.clone());
    if !dir.pki().join(pki::CA_CERT).exists() {
        anyhow::bail!(
            "{} holds no CA: run `corpus-master init --data-dir {}` first",
            dir.0.display(),
            dir.0.display()
        );
    }
    let pki = Pki::load(&dir.pki())?;
    let store = Store::open(SledDb::open(&dir.db())?)?;
    let state = Arc::new(MasterState {
        auth: Auth::new(store.clone()),
        store,
        pki,
        links: LinkRegistry::default(),
        grains_writes: Default::default(),
        jobs: jobs::Jobs::default(),
        runs: fleet::runs::Runs::default(),
        blobs: blobs::BlobStore::open(dir.0.join("blobs"))?,
        login_slots: tokio::sync::Semaphore::new(
            2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        enroll_lock: tokio::sync::Mutex::new(()),
        replaced_certificates: Default::default(),
        slot_allocation: std::sync::Mutex::new(()),
        settings: std::sync::RwLock::new(options.settings.load(&options.data_dir)?),
        settings_source: options.settings.clone(),
        data_dir: options.data_dir.clone(),
    });
    jobs::Jobs::load(&state)?;
    // Attaches check agents against it: built before the first one, off the async workers.
    state.store.load_agent_index()?;
    environments::assign_missing_identities(&state)?;
    restrict_data_dir(&options.data_dir)?;
    Ok(state)
}

/// Binds the admin socket `DATA_DIR/admin.sock` (0600), refusing to steal it from a running
/// master. Bind it before announcing readiness: the console needs it from then on.
pub fn bind_admin_socket(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = &admin::socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another master is already serving {}: stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict admin socket {}", path.display()))?;
    Ok(listener)
}

/// Serves gRPC over TLS on `listener` and the console on `admin_listener` (from
/// [`bind_admin_socket`]) until `shutdown` resolves; then closes agent links and stops.
pub async fn serve(
    state: Arc<MasterState>,
    data_dir: &Path,
    listener: TcpListener,
    admin_listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = DataDir(data_dir.to_owned());

    // Our own TLS accept (handshake timeout, per-source limits): see accept.rs.
    let tls = accept::server_config(&state.pki)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // Sessions, jobs and events do not pile up: purged in the background per the settings.
    tokio::spawn(retention::run(state.clone(), stop_rx.clone()));
    // Agents' last-seen times: kept in the link registry, written in batches.
    tokio::spawn(link::save_seen_periodically(state.clone(), stop_rx.clone()));
    // Unreferenced archives too (see blob_gc).
    tokio::spawn(blob_gc::run(state.clone(), stop_rx.clone()));

    let grpc = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(corpus_proto::enrollment_server::EnrollmentServer::new(
            enroll::EnrollmentService::new(state.clone()),
        ))
        .add_service(
            corpus_proto::agent_link_server::AgentLinkServer::new(link::AgentLinkService {
                state: state.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            corpus_proto::client_server::ClientServer::new(client::ClientService {
                state: state.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            accept::incoming(listener, tls, accept::AcceptLimits::default()),
            wait(stop_rx.clone()),
        );

    let admin = Server::builder()
        .add_service(
            corpus_proto::admin_server::AdminServer::new(admin::AdminService {
                state: state.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(admin_listener), wait(stop_rx));

    let links_state = state.clone();
    let (saved_tx, saved_rx) = tokio::sync::oneshot::channel();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        info!(agents = links_state.links.count(), "closing agent links");
        links_state.links.close_all();
        let _ = stop_tx.send(true);
        let _ = stopping_tx.send(());
        // When each agent was last seen goes to the store in one batch while the connections
        // drain, not after: the batch of 10,000 agents takes most of a second.
        let saving = std::time::Instant::now();
        let saved = links_state.blocking(link::save_last_seen).await;
        let _ = saved_tx.send((saved, saving.elapsed()));
    });

    let result = drain_bounded(async { tokio::try_join!(grpc, admin) }, stopping_rx).await;
    let (mut written, mut took) = (0, Duration::ZERO);
    match saved_rx.await {
        Ok((Ok(n), t)) => (written, took) = (n, t),
        Ok((Err(e), _)) => {
            tracing::warn!(error = %e, "cannot save agents' last-seen times at stop: trying again")
        }
        // The server stopped without the stop signal (it failed): nothing saved yet.
        Err(_) => {}
    }
    // What the batch above left (nothing normally: every link was closed before it).
    let saving = std::time::Instant::now();
    match state.blocking(link::save_last_seen).await {
        Ok(more) => info!(
            written = written + more,
            took = ?(took + saving.elapsed()),
            "saved agents' last-seen times"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot save agents' last-seen times at stop"),
    }
    let _ = std::fs::remove_file(dir.socket());
    result.context("server failed")?;
    Ok(())
}

/// How long a graceful stop waits for connections to close once every agent link was told
/// to: real agents close theirs at once; at 10,000 links, waiting for the slowest peer to read
/// its close took the whole stop deadline. A client stream or an upload still open then is cut
/// (agents retry their uploads; `corpus follow` reattaches to a job).
pub const STOP_DRAIN: Duration = Duration::from_secs(1);

/// Runs the servers until they end, or until [`STOP_DRAIN`] after `stopping` fires (the links
/// were closed), when the connections still open are left to the process's exit.
async fn drain_bounded<T>(
    servers: impl Future<Output = Result<T, tonic::transport::Error>>,
    stopping: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), tonic::transport::Error> {
    let bound = async {
        match stopping.await {
            Ok(()) => tokio::time::sleep(STOP_DRAIN).await,
            // The servers ended without a stop (they failed): they decide.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = servers => ended.map(|_| ()),
        () = bound => {
            info!("stopped waiting for connections to close after {STOP_DRAIN:?}: the rest are cut at exit");
            Ok(())
        }
    }
}

/// Agent records for the master's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::MasterState;
    use crate::store::{AgentRecord, AgentStatus};

    pub(crate) fn pending_agent(id: &str) -> anyhow::Result<AgentRecord> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, id);
        Ok(AgentRecord {
            id: id.into(),
            status: AgentStatus::Pending,
            csr_pem: params.serialize_request(&key)?.pem()?,
            certificate_pem: None,
            fingerprint: None,
            enrolled_at: 0,
            decided_at: None,
            grains: None,
            last_seen: None,
            address: None,
            conflicting_keys: Vec::new(),
        })
    }

    /// A pending agent with a fresh key, accepted (its certificate signed and stored).
    pub(crate) fn accepted_agent(state: &MasterState, id: &str) -> anyhow::Result<AgentRecord> {
        let mut record = pending_agent(id)?;
        state.accept(&mut record)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::pending_agent;
    use super::*;

    #[tokio::test]
    async fn a_stop_waits_for_open_connections_only_for_the_drain_bound() -> anyhow::Result<()> {
        // Servers whose connections never close: the stop ends after the bound all the same.
        let (stopping, stopped) = tokio::sync::oneshot::channel();
        let never = std::future::pending::<Result<(), tonic::transport::Error>>();
        let started = std::time::Instant::now();
        stopping
            .send(())
            .map_err(|()| anyhow::anyhow!("the drain is gone"))?;
        drain_bounded(never, stopped).await?;
        assert!(started.elapsed() >= STOP_DRAIN);
        // Servers that end by themselves are not held up; without a stop, only they decide.
        let (_stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let ended = async { Ok::<_, tonic::transport::Error>(()) };
        tokio::time::timeout(Duration::from_secs(60), drain_bounded(ended, stopped)).await??;
        Ok(())
    }

    #[test]
    fn the_data_dir_is_made_private_whatever_existed_before() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let mode = |p: &Path| -> anyhow::Result<u32> {
            Ok(std::fs::symlink_metadata(p)?.permissions().mode() & 0o777)
        };
        std::fs::create_dir(&data)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
        init(&data, &[], false)?;
        assert_eq!(mode(&data)?, 0o700);
        // An older master (or a loose umask) left readable files and dirs behind.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir_all(data.join("blobs/ab"))?;
        std::fs::set_permissions(data.join("blobs"), std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(data.join("blobs/ab/old"), "x")?;
        std::fs::set_permissions(
            data.join("blobs/ab/old"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        open(&ServeOptions {
            data_dir: data.clone(),
            settings: Default::default(),
        })?;
        assert_eq!(mode(&data)?, 0o700);
        assert_eq!(mode(&data.join("blobs"))?, 0o700);
        assert_eq!(mode(&data.join("blobs/ab"))?, 0o700);
        assert_eq!(mode(&data.join("blobs/ab/old"))?, 0o600);
        for entry in std::fs::read_dir(data.join("db"))? {
            let path = entry?.path();
            let expected = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&path)?, expected, "{}", path.display());
        }
        // Public certificates stay readable; keys stay private.
        assert_eq!(mode(&data.join("pki").join(pki::CA_CERT))?, 0o644);
        Ok(())
    }

    #[test]
    fn a_token_admits_one_agent_and_is_spent_with_its_acceptance() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        init(dir.path(), &[], false)?;
        let state = open(&ServeOptions {
            data_dir: dir.path().to_owned(),
            settings: Default::default(),
        })?;
        let (token, _) = state
            .auth
            .create_enrollment_token(Duration::from_secs(60))?;

        let mut first = pending_agent("node1")?;
        assert!(state.accept_with_token(&mut first, &token)?);
        assert_eq!(first.status, AgentStatus::Accepted);
        assert_eq!(state.store.agent("node1")?, Some(first));
        assert!(!state.auth.enrollment_token_usable(&token)?);

        // Spent: the next agent stays as it was and nothing is recorded for it.
        let mut second = pending_agent("node2")?;
        assert!(!state.accept_with_token(&mut second, &token)?);
        assert_eq!(second.status, AgentStatus::Pending);
        assert_eq!(state.store.agent("node2")?, None);

        // An expired token admits nobody and is spent all the same.
        let (expired, _) = state.auth.create_enrollment_token(Duration::ZERO)?;
        assert!(!state.accept_with_token(&mut second, &expired)?);
        assert!(
            state
                .store
                .enrollment_token(&auth::secret_hash(&expired))?
                .is_none()
        );
        Ok(())
    }
}
