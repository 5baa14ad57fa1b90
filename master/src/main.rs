//! `corpus-master`: the master daemon (`serve`) and the operator console (every other
//! subcommand, talking to the running master over its admin socket).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use corpus_master::ServeOptions;
use corpus_master::console::{self, Console, DataDirArg};

#[derive(Parser)]
#[command(
    name = "corpus-master",
    version,
    about = "corpus master daemon and operator console"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA, the master's certificate and the database.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// Extra DNS name or IP address for the master's certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace an existing CA (every enrolled agent must enroll again).
        #[arg(long)]
        force: bool,
    },
    /// Run the master: gRPC over TLS on --listen, the console on DATA_DIR/admin.sock.
    Serve {
        #[command(flatten)]
        dir: DataDirArg,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:4505")]
        listen: String,
        /// YAML settings (heartbeat, file_root, pillar_root), re-read on SIGHUP; flags win.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How often agents send heartbeats (default 10s); a link silent for three periods is
        /// dropped.
        #[arg(long, value_parser = corpus_runtime::parse_duration)]
        heartbeat: Option<Duration>,
        /// How long a graceful stop may take before the process exits anyway.
        #[arg(long, default_value = "10s", value_parser = corpus_runtime::parse_duration)]
        stop_deadline: Duration,
        /// State tree for `render` (Salt's file_roots); default DATA_DIR/states.
        #[arg(long)]
        file_root: Option<PathBuf>,
        /// Pillar tree for `render` (Salt's pillar_roots); default DATA_DIR/pillar.
        #[arg(long)]
        pillar_root: Option<PathBuf>,
        /// The sheet new environments' SMEP identities belong to (default `corpus`).
        #[arg(long)]
        sheet: Option<String>,
        /// The environment numbers (SMEP's M) handed out on each agent, `FIRST-LAST` within
        /// 1-99 (default 1-99): masters sharing agents take disjoint ranges.
        #[arg(long)]
        machine_numbers: Option<String>,
        /// How long agent certificates issued from now on last (default 90d); agents renew
        /// theirs over their link at two thirds of it.
        #[arg(long, value_parser = corpus_runtime::parse_duration)]
        agent_cert_lifetime: Option<Duration>,
    },
    /// Print the rendered, ordered plan for one agent without running it (Salt's state.show_sls).
    Render {
        #[command(flatten)]
        console: Console,
        /// The agent whose grains and pillar the plan is rendered for.
        #[arg(long)]
        agent: String,
        /// SLS names; none renders the highstate from top.sls.
        sls: Vec<String>,
    },
    /// Apply the highstate (or the named SLS) on every agent TARGET selects, as root.
    Apply {
        #[command(flatten)]
        args: console::fleet::ApplyArgs,
        #[command(flatten)]
        console: Console,
    },
    /// Run one execution function (test.ping, cmd.run, grains.items, ...) on every agent
    /// TARGET selects, as root.
    Run {
        #[command(flatten)]
        args: console::fleet::RunArgs,
        #[command(flatten)]
        console: Console,
    },
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: console::users::UsersCommand,
        #[command(flatten)]
        console: Console,
    },
    /// List and end login sessions.
    Sessions {
        #[command(subcommand)]
        command: console::sessions::SessionsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Manage enrollment tokens.
    Tokens {
        #[command(subcommand)]
        command: console::tokens::TokensCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Manage agents.
    Agents {
        #[command(subcommand)]
        command: console::agents::AgentsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Inspect and share environments, set their default project settings.
    Envs {
        #[command(subcommand)]
        command: console::envs::EnvsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Inspect jobs and their events; fail a job whose agent is gone for good.
    Jobs {
        #[command(subcommand)]
        command: console::jobs::JobsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Attach compute nodes over SSH (install and start their agent), detach and list them.
    Nodes {
        #[command(subcommand)]
        command: console::nodes::NodesCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Show the pillar pushed for a project (its values are secrets: mind where you print them).
    Pillar {
        #[command(subcommand)]
        command: console::pillar::PillarCommand,
        #[command(flatten)]
        console: Console,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    corpus_runtime::init_logging(default_log);
    corpus_runtime::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corpus-master: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corpus-master: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Not dropped: a stopped master still holds every connection and task of its agents, and
    // freeing them one by one took about a second at 10,000 agents, for nothing at exit.
    // Everything it stored is flushed already.
    std::mem::forget(runtime);
    code
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { dir, sans, force } => {
            corpus_master::init(&dir.data_dir, &sans, force)?;
            let ca = dir.data_dir.join("pki").join(corpus_master::pki::CA_CERT);
            println!(
                "created the CA and the master certificate in {}",
                dir.data_dir.display()
            );
            println!("agents and clients trust {}", ca.display());
            Ok(())
        }
        Command::Serve {
            dir,
            listen,
            config,
            heartbeat,
            stop_deadline,
            file_root,
            pillar_root,
            sheet,
            machine_numbers,
            agent_cert_lifetime,
        } => {
            let options = ServeOptions {
                data_dir: dir.data_dir,
                settings: corpus_master::settings::SettingsSource {
                    config,
                    heartbeat,
                    file_root,
                    pillar_root,
                    sheet,
                    machine_numbers,
                    agent_cert_lifetime,
                },
            };
            serve(options, &listen, stop_deadline).await
        }
        Command::Render {
            console,
            agent,
            sls,
        } => console::render::run(&console, agent, sls).await,
        Command::Apply { args, console } => console::fleet::apply(args, &console).await,
        Command::Run { args, console } => console::fleet::run(args, &console).await,
        Command::Users { command, console } => console::users::run(command, &console).await,
        Command::Sessions { command, console } => console::sessions::run(command, &console).await,
        Command::Tokens { command, console } => console::tokens::run(command, &console).await,
        Command::Agents { command, console } => console::agents::run(command, &console).await,
        Command::Envs { command, console } => console::envs::run(command, &console).await,
        Command::Jobs { command, console } => console::jobs::run(command, &console).await,
        Command::Pillar { command, console } => console::pillar::run(command, &console).await,
        Command::Nodes { command, console } => console::nodes::run(command, &console).await,
    }
}

async fn serve(options: ServeOptions, listen: &str, stop_deadline: Duration) -> anyhow::Result<()> {
    let data_dir = options.data_dir.clone();
    raise_open_files_limit();
    let state = corpus_master::open(&options)?;
    let listeners = corpus_master::listeners::acquire(listen, &data_dir)?;
    let (listener, admin_listener) = (listeners.tls, listeners.admin);
    let local = listener.local_addr()?;
    if listeners.tls_from_systemd || listeners.admin_from_systemd {
        tracing::info!(
            tls = listeners.tls_from_systemd,
            admin = listeners.admin_from_systemd,
            "sockets passed by systemd (socket activation)"
        );
    }
    let reloading = state.clone();
    let signals =
        corpus_runtime::handle_signals(stop_deadline, move || match reloading.reload() {
            Ok(settings) => tracing::info!(?settings, "SIGHUP: settings reloaded"),
            Err(e) => tracing::error!("SIGHUP: {e:#}; keeping the previous settings"),
        })?;
    let summarised = state.clone();
    corpus_runtime::on_state_dump(move || state_summary(&summarised))?;
    // Tests and scripts read this line to learn the bound port.
    println!("corpus-master listening on {local}");
    std::io::stdout().flush().ok();
    tracing::info!(%local, data_dir = %data_dir.display(), "master ready");
    corpus_runtime::notify_ready();
    corpus_master::serve(
        state,
        &data_dir,
        listener,
        admin_listener,
        corpus_runtime::stopped(signals),
    )
    .await
}

/// Below this many open files the master warns at start: each connected agent holds one.
const FEW_OPEN_FILES: u64 = 4_096;

/// Raises the soft limit of open files to the hard limit (one descriptor per connected agent:
/// the usual soft limit of 1,024 leaves a larger fleet unable to attach) and says so.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let limit = match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-files soft limit to the hard limit");
            soft
        }
    };
    if limit < FEW_OPEN_FILES {
        tracing::warn!(
            open_files = limit,
            "the master may keep only {limit} files open, fewer than {FEW_OPEN_FILES}: at most about that many agents can attach; raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -Hn)"
        );
    } else {
        tracing::info!(
            open_files = limit,
            was = soft,
            "open-files limit raised to the hard limit"
        );
    }
}

/// What SIGUSR2 writes to the log: what a running master holds and how far behind it is.
fn state_summary(state: &corpus_master::MasterState) -> String {
    let (jobs, followers, events_queued) = state.jobs.load_summary();
    let sessions = state
        .store
        .session_count()
        .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
    format!(
        "links={} (messages queued to agents={}), jobs in flight={jobs} (clients following={followers}, events queued to them={events_queued}), replaced certificates in grace={}, sessions={sessions}, memory RSS={}",
        state.links.count(),
        state.links.queued_messages(),
        state.replaced_certificates.count(),
        corpus_runtime::resident_memory(),
    )
}
