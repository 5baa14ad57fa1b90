//! `corpus`: the users' command. Reads `~/.makinastates.conf`, logs in to the master over TLS
//! and drives environments and projects.

mod commands;
mod config;
mod progress;
mod session;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corpus",
    version,
    about = "deploy projects into corpus environments"
)]
struct Cli {
    /// Config file (default: $CORPUS_CONFIG, else ~/.makinastates.conf).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the hosts projects can be installed onto.
    Listhosts {
        /// Endpoint name from the config file; optional when it defines only one.
        endpoint: Option<String>,
    },
    /// Create an environment and print its UUID.
    #[command(name = "init_env", alias = "init-env")]
    InitEnv {
        endpoint: String,
        /// dev, staging or prod.
        platform: String,
        /// The host (agent id) to create it on; default: one with a free slot.
        host: Option<String>,
        /// Override the platform's mode: editable, cooking or final.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Create a project's layout in an environment.
    Init {
        endpoint: String,
        env: String,
        project: String,
    },
    /// Deploy the git tree at HEAD of --path into an environment.
    Push {
        endpoint: String,
        env: String,
        project: String,
        /// The project's git checkout (must contain .salt/).
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// Pillar: a YAML file, or a directory of .sls files (with an optional top.sls).
        #[arg(long)]
        pillar: Option<PathBuf>,
        /// Final mode: the release to deploy (default: the latest cooked one).
        #[arg(long)]
        release: Option<String>,
    },
    /// Return to the previous deployment, or to --to DEPLOY_ID.
    Rollback {
        endpoint: String,
        env: String,
        project: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Show deployments, releases and storage.
    Status {
        endpoint: String,
        env: String,
        project: Option<String>,
    },
    /// Free a project, or the whole environment.
    Destroy {
        endpoint: String,
        env: String,
        project: Option<String>,
    },
    /// Shrink a project's storage quota by SIZE.
    Trim {
        endpoint: String,
        env: String,
        project: String,
        size: String,
    },
    /// Grow a project's storage quota by SIZE.
    Enlarge {
        endpoint: String,
        env: String,
        project: String,
        size: String,
    },
}

impl Command {
    /// The endpoint named on the command line, if any.
    fn endpoint(&self) -> Option<&str> {
        match self {
            Command::Listhosts { endpoint } => endpoint.as_deref(),
            Command::InitEnv { endpoint, .. }
            | Command::Init { endpoint, .. }
            | Command::Push { endpoint, .. }
            | Command::Rollback { endpoint, .. }
            | Command::Status { endpoint, .. }
            | Command::Destroy { endpoint, .. }
            | Command::Trim { endpoint, .. }
            | Command::Enlarge { endpoint, .. } => Some(endpoint),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    corpus_runtime::init_logging("warn");
    corpus_runtime::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corpus: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corpus: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = match cli.config {
        Some(path) => path,
        None => config::default_path()?,
    };
    let config = config::Config::load(&path)?;
    let endpoint = config.endpoint(cli.command.endpoint())?;
    let session = session::login(endpoint).await?;
    let json = cli.json;
    match &cli.command {
        Command::Listhosts { .. } => commands::listhosts::run(session, json).await,
        Command::InitEnv {
            platform,
            host,
            mode,
            ..
        } => {
            commands::init_env::run(session, platform, host.as_deref(), mode.as_deref(), json).await
        }
        Command::Init { env, project, .. } => {
            commands::init::run(session, env, project, json).await
        }
        Command::Push {
            env,
            project,
            path,
            pillar,
            release,
            ..
        } => {
            let args = commands::push::PushArgs {
                env,
                project,
                path: path.clone(),
                pillar: pillar.clone(),
                release: release.as_deref(),
                json,
            };
            commands::push::run(session, args).await
        }
        Command::Rollback {
            env, project, to, ..
        } => commands::rollback::run(session, env, project, to.as_deref(), json).await,
        Command::Status { env, project, .. } => {
            commands::status::run(session, env, project.as_deref(), json).await
        }
        Command::Destroy { env, project, .. } => {
            commands::destroy::run(session, env, project.as_deref(), json).await
        }
        Command::Trim {
            env, project, size, ..
        } => commands::quota::run(session, env, project, size, false, json).await,
        Command::Enlarge {
            env, project, size, ..
        } => commands::quota::run(session, env, project, size, true, json).await,
    }
}
