//! `corpus-master`: the master daemon (`serve`) and the operator console (every other
//! subcommand, talking to the running master over its admin socket).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corpus-master: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
                },
            };
            serve(options, &listen, stop_deadline).await
        }
        Command::Render {
            console,
            agent,
            sls,
        } => console::render::run(&console, agent, sls).await,
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
    let state = corpus_master::open(&options)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let admin_listener = corpus_master::bind_admin_socket(&data_dir)?;
    let reloading = state.clone();
    let signals =
        corpus_runtime::handle_signals(stop_deadline, move || match reloading.reload() {
            Ok(settings) => tracing::info!(?settings, "SIGHUP: settings reloaded"),
            Err(e) => tracing::error!("SIGHUP: {e:#}; keeping the previous settings"),
        })?;
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
