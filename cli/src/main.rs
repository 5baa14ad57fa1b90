//! `corpus`: the users' command. Reads `~/.makinastates.conf`, logs in to the master over TLS
//! and drives environments and projects.

mod commands;
mod config;
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
}

/// Unix time as RFC 3339, or "never".
pub fn format_time(unix: i64) -> String {
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
    match cli.command {
        Command::Listhosts { endpoint } => {
            let endpoint = config.endpoint(endpoint.as_deref())?;
            let session = session::login(endpoint).await?;
            commands::listhosts::run(session, cli.json).await
        }
    }
}
