//! `corpus`: the users' command. Checks its arguments, reads `~/.makinastates.conf`, logs in
//! to the master over TLS and drives environments and projects. Exit codes: 0 success, 1 the
//! job did not succeed, 2 the command could not run (see `corpus --help`).

mod args;
mod commands;
mod config;
mod progress;
mod session;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// The job ran and did not succeed (failed, rolled back, refused by the agent).
const EXIT_JOB_FAILED: u8 = 1;
/// The command could not run: arguments, configuration, connection, login or a refusal.
/// clap's own usage errors exit 2 as well.
const EXIT_ERROR: u8 = 2;
/// Ctrl-C or SIGTERM stopped the client (not the job), as a shell reports SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    corpus_runtime::init_logging("warn");
    if let Err(e) = cli.command.validate() {
        eprintln!(
            "corpus: error: {}",
            corpus_proto::names::printable_lines(&format!("{e:#}"))
        );
        return ExitCode::from(EXIT_ERROR);
    }
    corpus_runtime::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corpus: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "corpus: error: {}",
                corpus_proto::names::printable_lines(&format!("{e:#}"))
            );
            ExitCode::from(if e.is::<progress::JobFailed>() {
                EXIT_JOB_FAILED
            } else if e.is::<progress::Interrupted>() {
                EXIT_INTERRUPTED
            } else {
                EXIT_ERROR
            })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = match cli.config.clone() {
        Some(path) => path,
        None => config::default_path()?,
    };
    let config = config::Config::load(&path)?;
    let endpoint = config.endpoint(cli.command.endpoint())?;
    match cli.command {
        Command::Logout { .. } => return commands::logout::run(endpoint, cli.json).await,
        Command::Login { .. } => {
            session::fresh_login(endpoint).await?;
            println!("logged in to {}", endpoint.name);
            return Ok(());
        }
        _ => {}
    }
    let session = session::login(endpoint).await?;
    let cached = session.cached;
    match run_with_deadline(&cli, session).await {
        // The cached session ended on the master (expired, revoked): nothing was done, so log
        // in with the password and run the command once more.
        Err(e) if cached && session::is_session_rejected(&e) => {
            session::cache::remove(endpoint);
            let session = session::fresh_login(endpoint).await?;
            run_with_deadline(&cli, session).await
        }
        result => result,
    }
}

async fn run_with_deadline(cli: &Cli, session: session::Session) -> anyhow::Result<()> {
    let json = cli.json;
    progress::set_stream_deadlines(progress::StreamDeadlines {
        idle: std::time::Duration::from_secs(cli.idle_seconds),
        reattach: std::time::Duration::from_secs(cli.reattach_seconds),
    });
    if cli.command.follows_a_job() {
        // A job may run silently for long: its stream has h2 keep-alive pings instead.
        return run_command(cli, session, json).await;
    }
    let limit = session::deadline(session::ANSWER_DEADLINE);
    let endpoint = session.endpoint.clone();
    tokio::time::timeout(limit, run_command(cli, session, json))
        .await
        .map_err(|_| session::silent_master(&endpoint, "waiting for its answer", limit))?
}

async fn run_command(cli: &Cli, session: session::Session, json: bool) -> anyhow::Result<()> {
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
            from,
            ..
        } => {
            let endpoint_name = session.endpoint.name.clone();
            let args = commands::push::PushArgs {
                endpoint: &endpoint_name,
                env,
                project,
                path: path.clone(),
                pillar: pillar.clone(),
                release: release.as_deref(),
                from: from.as_deref(),
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
        Command::Follow { env, target, .. } => {
            commands::follow::run(session, env, target, json).await
        }
        Command::Trim {
            env, project, size, ..
        } => commands::quota::run(session, env, project, size, false, json).await,
        Command::Enlarge {
            env, project, size, ..
        } => commands::quota::run(session, env, project, size, true, json).await,
        // Handled in `run`, before any session is opened.
        Command::Login { .. } | Command::Logout { .. } => Ok(()),
    }
}
