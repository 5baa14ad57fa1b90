//! `corpus-agent`: the agent daemon (`run`) on each compute node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corpus_agent::config::{LogLevel, SettingsSource};
use corpus_agent::link::{self, LinkOptions};

#[derive(Parser)]
#[command(
    name = "corpus-agent",
    version,
    about = "corpus agent: applies projects on a compute node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll with the master (first start) and keep the link to it open.
    Run(RunArgs),
    /// Apply state files on this machine (masterless: `apply --local`).
    Apply(corpus_agent::apply_local::ApplyArgs),
    /// Print the fingerprint of this agent's key (sha256 of its public key), to compare with
    /// what `corpus-master agents list` shows before accepting it.
    Fingerprint(FingerprintArgs),
    /// Internal: one confined project phase, spawned by the agent (protocol on stdin/stdout).
    #[command(name = "confined-phase", hide = true)]
    ConfinedPhase,
    /// Internal: one operator call in its own session, spawned by the agent (stdin/stdout).
    #[command(name = "operator-call", hide = true)]
    OperatorCall,
}

#[derive(Args)]
struct FingerprintArgs {
    /// The agent's YAML config (for its state_dir).
    #[arg(long, env = "CORPUS_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Where the agent keeps its key (default /var/lib/corpus-agent).
    #[arg(long, env = "CORPUS_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// sha256 of the agent's public key, hex: the master computes the same from the CSR.
fn fingerprint(args: FingerprintArgs) -> anyhow::Result<()> {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let state_dir = SettingsSource {
        config: args.config,
        state_dir: args.state_dir,
        ..Default::default()
    }
    .state_dir()?;
    let key_path = state_dir.join("agent.key");
    let pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the agent key {}: the agent makes it at its first start (corpus-agent run)",
            key_path.display()
        )
    })?;
    let key = rcgen::KeyPair::from_pem(&pem)
        .with_context(|| format!("{} is not a valid key", key_path.display()))?;
    println!("{}", hex::encode(sha2::Sha256::digest(key.der_bytes())));
    Ok(())
}

#[derive(Args)]
struct RunArgs {
    /// YAML config (master, ca, id, state_dir, root, slots, token_file, log_level, heartbeat);
    /// flags win. SIGHUP re-reads slots, log_level and heartbeat.
    #[arg(long, env = "CORPUS_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The master's URL, https://HOST:PORT.
    #[arg(long, env = "CORPUS_MASTER")]
    master: Option<String>,
    /// The corpus CA certificate (the master's DATA_DIR/pki/ca.crt).
    #[arg(long, env = "CORPUS_CA")]
    ca: Option<PathBuf>,
    /// This agent's id (default: the host name).
    #[arg(long, env = "CORPUS_AGENT_ID")]
    id: Option<String>,
    /// Where the agent keeps its key and certificate (default /var/lib/corpus-agent).
    #[arg(long, env = "CORPUS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Single-use enrollment token (`corpus-master tokens create`): accepted at once. Prefer
    /// --token-file or the environment: a command line is visible to every local user.
    #[arg(long, env = "CORPUS_ENROLL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the enrollment token (mode 0600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How many environments this agent hosts (default 4).
    #[arg(long)]
    slots: Option<u32>,
    /// Where environments live: ROOT/<env-uuid>/srv/projects/<project> (default /srv/corpus).
    #[arg(long, env = "CORPUS_ROOT")]
    root: Option<PathBuf>,
    /// Log filter (default: RUST_LOG, then the config's log_level, then info).
    #[arg(long)]
    log_level: Option<String>,
    /// Heartbeat at least this often, even if the master asks for less.
    #[arg(long, value_parser = corpus_runtime::parse_duration)]
    heartbeat: Option<Duration>,
    /// How often a pending agent asks whether it was accepted.
    #[arg(long, default_value = "5s", value_parser = corpus_runtime::parse_duration)]
    enroll_poll: Duration,
    /// First reconnect delay; doubles (with jitter) up to --reconnect-max.
    #[arg(long, default_value = "1s", value_parser = corpus_runtime::parse_duration)]
    reconnect_min: Duration,
    #[arg(long, default_value = "60s", value_parser = corpus_runtime::parse_duration)]
    reconnect_max: Duration,
    /// How long a graceful stop may take before the process exits anyway.
    #[arg(long, default_value = "10s", value_parser = corpus_runtime::parse_duration)]
    stop_deadline: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ConfinedPhase = cli.command {
        // No runtime and no logging: stdout is the protocol to the agent.
        return match corpus_agent::confine::child_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corpus-agent confined-phase: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::OperatorCall = cli.command {
        // No runtime and no logging: stdout carries the return to the agent.
        return match corpus_agent::operator::child::child_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corpus-agent operator-call: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Apply(_) = cli.command {
        corpus_runtime::init_logging("info");
    }
    if let Command::Fingerprint(args) = cli.command {
        return match fingerprint(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corpus-agent: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    corpus_runtime::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corpus-agent: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Apply(args) => match corpus_agent::apply_local::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::ConfinedPhase | Command::OperatorCall | Command::Fingerprint(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corpus-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_id() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --id given and the host name cannot be read")?;
    Ok(host.trim().to_owned())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = SettingsSource {
        config: args.config,
        master: args.master,
        ca: args.ca,
        id: args.id,
        state_dir: args.state_dir,
        root: args.root,
        slots: args.slots,
        token: args.token,
        token_file: args.token_file,
        log_level: args.log_level,
        heartbeat: args.heartbeat,
    };
    let settings = source.load()?;
    let log_level = LogLevel::install(&settings.live.log_level);
    if std::env::args().any(|a| a == "--token" || a.starts_with("--token=")) {
        // Issue 10: argv is readable by every local user (ps, /proc) while the agent retries.
        tracing::warn!(
            "the enrollment token was given with --token, which every local user can read: use \
             --token-file (mode 0600) or CORPUS_ENROLL_TOKEN, and create tokens with a short --ttl"
        );
    }
    let id = match settings.id {
        Some(id) => id,
        None => default_id()?,
    };
    corpus_proto::names::validate_agent_id(&id)?;
    corpus_runtime::tls::master_url(&settings.master)?;
    let ca_pem = std::fs::read_to_string(&settings.ca)
        .with_context(|| format!("cannot read the CA certificate {}", settings.ca.display()))?;
    if !ca_pem.contains("BEGIN CERTIFICATE") {
        anyhow::bail!("{} is not a PEM certificate", settings.ca.display());
    }
    corpus_agent::lifecycle::secure_state_dir(&settings.state_dir, &settings.root).with_context(
        || {
            format!(
                "cannot make the state dir {} private",
                settings.state_dir.display()
            )
        },
    )?;
    let (live_tx, live) = tokio::sync::watch::channel(settings.live);
    let status = std::sync::Arc::new(corpus_agent::status::AgentStatus::new(
        settings.state_dir.clone(),
    ));
    let options = LinkOptions {
        master: settings.master,
        ca_pem,
        id,
        state_dir: settings.state_dir,
        token: settings.token,
        live,
        enroll_poll: args.enroll_poll,
        rejected_poll: args.reconnect_max,
        reconnect_min: args.reconnect_min,
        reconnect_max: args.reconnect_max,
        root: settings.root,
        stop_deadline: args.stop_deadline,
        status,
        outbound: settings.outbound_allow,
    };
    let stop =
        corpus_runtime::handle_signals(args.stop_deadline, move || match source.reload_live() {
            Ok(live) => {
                log_level.set(&live.log_level);
                tracing::info!(?live, "SIGHUP: settings reloaded");
                live_tx.send_replace(live);
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the running settings"),
        })?;
    let status = options.status.clone();
    corpus_runtime::on_state_dump(move || status.summary())?;
    tracing::info!(agent = %options.id, master = %options.master, "agent starting");
    corpus_runtime::notify_ready();
    link::run(options, stop).await
}
