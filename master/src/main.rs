//! `corpus-master`: the master daemon (`serve`) and the operator console (every other
//! subcommand, talking to the running master over its admin socket).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corpus_master::{ServeOptions, admin, console};
use corpus_proto::{AddUserRequest, AgentInfo, AgentRef, AgentStatus, CreateTokenRequest, Empty};

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

#[derive(Args, Clone)]
struct DataDirArg {
    /// The master's data dir (CA, database, admin socket).
    #[arg(
        long,
        global = true,
        env = "CORPUS_MASTER_DATA_DIR",
        default_value = "/var/lib/corpus-master"
    )]
    data_dir: PathBuf,
}

#[derive(Args, Clone)]
struct Console {
    #[command(flatten)]
    dir: DataDirArg,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
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
        command: UsersCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Manage enrollment tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Manage agents.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Inspect and share environments, set their default project settings.
    Envs {
        #[command(subcommand)]
        command: EnvsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Inspect jobs and their events; fail a job whose agent is gone for good.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[command(flatten)]
        console: Console,
    },
    /// Show the pillar pushed for a project (its values are secrets: mind where you print them).
    Pillar {
        #[command(subcommand)]
        command: PillarCommand,
        #[command(flatten)]
        console: Console,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user; the password is read from standard input.
    Add {
        id: String,
        /// The user may act on every environment.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a single-use enrollment token, printed alone on stdout.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = corpus_runtime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum EnvsCommand {
    /// List environments.
    List,
    /// Let another user act on an environment.
    Grant { env: String, user: String },
    /// Set the environment's default project settings from YAML on standard input (between
    /// `.salt/PILLAR.sample` and the pushed pillar).
    Defaults { env: String },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs, oldest first.
    List {
        /// Only the jobs of this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// One job with every step event.
    Show { id: String },
    /// Mark a running job failed (its agent is gone for good), freeing its project.
    Fail { id: String },
}

#[derive(Subcommand)]
enum PillarCommand {
    /// The latest pillar pushed for a project.
    Show { env: String, project: String },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// List agents with their status and connection.
    List,
    /// Accept a pending (or rejected) agent.
    Accept { id: String },
    /// Reject an agent: it is refused from now on.
    Reject { id: String },
    /// Forget an agent: its certificate stops working; it may enroll again.
    Delete { id: String },
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
        } => {
            let options = ServeOptions {
                data_dir: dir.data_dir,
                settings: corpus_master::settings::SettingsSource {
                    config,
                    heartbeat,
                    file_root,
                    pillar_root,
                },
            };
            serve(options, &listen, stop_deadline).await
        }
        Command::Render {
            console,
            agent,
            sls,
        } => render(console, agent, sls).await,
        Command::Users { command, console } => users(command, console).await,
        Command::Tokens { command, console } => tokens(command, console).await,
        Command::Agents { command, console } => agents(command, console).await,
        Command::Envs { command, console } => {
            let dir = &console.dir.data_dir;
            match command {
                EnvsCommand::List => console::envs_list(dir, console.json).await,
                EnvsCommand::Grant { env, user } => {
                    console::envs_grant(dir, env, user, console.json).await
                }
                EnvsCommand::Defaults { env } => {
                    console::envs_defaults(dir, env, console.json).await
                }
            }
        }
        Command::Jobs { command, console } => {
            let dir = &console.dir.data_dir;
            match command {
                JobsCommand::List { env } => console::jobs_list(dir, env, console.json).await,
                JobsCommand::Show { id } => console::jobs_show(dir, id, console.json).await,
                JobsCommand::Fail { id } => console::jobs_fail(dir, id, console.json).await,
            }
        }
        Command::Pillar { command, console } => {
            let PillarCommand::Show { env, project } = command;
            console::pillar_show(&console.dir.data_dir, env, project, console.json).await
        }
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

fn read_password(id: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {id}: "))
            .context("cannot read the password")?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the password from standard input")?;
        input.lines().next().unwrap_or_default().to_owned()
    };
    if password.is_empty() {
        anyhow::bail!("no password given on standard input for user {id:?}");
    }
    Ok(password)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A gRPC error from the master, as the operator should read it.
fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

async fn users(command: UsersCommand, console: Console) -> anyhow::Result<()> {
    let mut admin = admin::connect(&console.dir.data_dir).await?;
    match command {
        UsersCommand::Add {
            id,
            admin: is_admin,
        } => {
            corpus_proto::names::validate_user_id(&id)?;
            let password = read_password(&id)?;
            let user = admin
                .add_user(AddUserRequest {
                    id,
                    password,
                    admin: is_admin,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if console.json {
                print_json(&serde_json::json!({"id": user.id, "admin": user.admin}));
            } else {
                println!(
                    "added user {}{}",
                    user.id,
                    if user.admin { " (admin)" } else { "" }
                );
            }
        }
        UsersCommand::List => {
            let users = admin
                .list_users(Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .users;
            if console.json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"id": u.id, "admin": u.admin, "created_at": u.created_at_unix}))
                    .collect();
                print_json(&serde_json::Value::Array(list));
            } else {
                for u in users {
                    println!("{}{}", u.id, if u.admin { " (admin)" } else { "" });
                }
            }
        }
    }
    Ok(())
}

async fn tokens(command: TokensCommand, console: Console) -> anyhow::Result<()> {
    let mut admin = admin::connect(&console.dir.data_dir).await?;
    let TokensCommand::Create { ttl } = command;
    let token = admin
        .create_enrollment_token(CreateTokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&serde_json::json!({"token": token.token, "expires_at": token.expires_at_unix}));
    } else {
        println!("{}", token.token);
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    match AgentStatus::try_from(status) {
        Ok(AgentStatus::Pending) => "pending",
        Ok(AgentStatus::Accepted) => "accepted",
        Ok(AgentStatus::Rejected) => "rejected",
        _ => "unknown",
    }
}

fn agent_json(a: &AgentInfo) -> serde_json::Value {
    let grains = a.grains.as_ref();
    serde_json::json!({
        "id": a.id,
        "status": status_name(a.status),
        "connected": a.connected,
        "last_seen": a.last_seen_unix,
        "enrolled_at": a.enrolled_at_unix,
        "address": a.address,
        "fingerprint": a.fingerprint,
        "hostname": grains.map(|g| g.hostname.clone()),
        "slots": grains.map(|g| g.slots),
    })
}

async fn agents(command: AgentsCommand, console: Console) -> anyhow::Result<()> {
    let mut admin = admin::connect(&console.dir.data_dir).await?;
    let (verb, info) = match command {
        AgentsCommand::List => {
            let agents = admin
                .list_agents(Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .agents;
            if console.json {
                print_json(&serde_json::Value::Array(
                    agents.iter().map(agent_json).collect(),
                ));
            } else {
                println!(
                    "{:<30} {:<9} {:<10} {:<25} ADDRESS",
                    "ID", "STATUS", "CONNECTED", "LAST SEEN"
                );
                for a in &agents {
                    println!(
                        "{:<30} {:<9} {:<10} {:<25} {}",
                        a.id,
                        status_name(a.status),
                        if a.connected { "yes" } else { "no" },
                        corpus_runtime::format_unix_time(a.last_seen_unix),
                        a.address
                    );
                }
            }
            return Ok(());
        }
        AgentsCommand::Accept { id } => ("accepted", admin.accept_agent(AgentRef { id }).await),
        AgentsCommand::Reject { id } => ("rejected", admin.reject_agent(AgentRef { id }).await),
        AgentsCommand::Delete { id } => ("deleted", admin.delete_agent(AgentRef { id }).await),
    };
    let info = info.map_err(rpc)?.into_inner();
    if console.json {
        print_json(&agent_json(&info));
    } else {
        println!("{verb} agent {}", info.id);
    }
    Ok(())
}

async fn render(console: Console, agent: String, sls: Vec<String>) -> anyhow::Result<()> {
    corpus_proto::names::validate_agent_id(&agent)?;
    let mut admin = admin::connect(&console.dir.data_dir).await?;
    let response = admin
        .render(corpus_proto::RenderRequest {
            agent_id: agent,
            sls,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let plan: corpus_states::Plan = serde_json::from_slice(&response.plan_json)
        .map_err(|e| anyhow::anyhow!("the master sent an unreadable plan: {e}"))?;
    if console.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", corpus_states::show_sls(&plan));
    }
    Ok(())
}
