//! `corpus-agent`: the agent daemon (`run`) on each compute node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
}

#[derive(Args)]
struct RunArgs {
    /// The master's URL, https://HOST:PORT.
    #[arg(long, env = "CORPUS_MASTER")]
    master: String,
    /// The corpus CA certificate (the master's DATA_DIR/pki/ca.crt).
    #[arg(long, env = "CORPUS_CA")]
    ca: PathBuf,
    /// This agent's id (default: the host name).
    #[arg(long, env = "CORPUS_AGENT_ID")]
    id: Option<String>,
    /// Where the agent keeps its key and certificate.
    #[arg(
        long,
        env = "CORPUS_STATE_DIR",
        default_value = "/var/lib/corpus-agent"
    )]
    state_dir: PathBuf,
    /// Single-use enrollment token (`corpus-master tokens create`): accepted at once.
    #[arg(long, env = "CORPUS_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How many environments this agent hosts.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Where environments live: ROOT/<env-uuid>/srv/projects/<project>.
    #[arg(long, env = "CORPUS_ROOT", default_value = "/srv/corpus")]
    root: PathBuf,
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
    corpus_runtime::init_logging("info");
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
    let id = match args.id {
        Some(id) => id,
        None => default_id()?,
    };
    corpus_proto::names::validate_agent_id(&id)?;
    corpus_runtime::tls::master_url(&args.master)?;
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("cannot read the CA certificate {}", args.ca.display()))?;
    if !ca_pem.contains("BEGIN CERTIFICATE") {
        anyhow::bail!("{} is not a PEM certificate", args.ca.display());
    }
    let options = LinkOptions {
        master: args.master,
        ca_pem,
        id,
        state_dir: args.state_dir,
        token: args.token,
        slots: args.slots,
        enroll_poll: args.enroll_poll,
        rejected_poll: args.reconnect_max,
        reconnect_min: args.reconnect_min,
        reconnect_max: args.reconnect_max,
        root: args.root,
        stop_deadline: args.stop_deadline,
    };
    let stop = corpus_runtime::handle_signals(args.stop_deadline, || {
        tracing::info!("SIGHUP: the agent has no reloadable configuration yet; nothing changed");
    })?;
    tracing::info!(agent = %options.id, master = %options.master, "agent starting");
    corpus_runtime::notify_ready();
    link::run(options, stop).await
}
