//! `corpus-master nodes attach|detach|list`: compute nodes installed over SSH. `attach` checks
//! the node's host key against `DATA_DIR/known_hosts`, copies the agent binary (sha256 checked
//! on the node), the CA and the agent's config, hands over a single-use enrollment token in a
//! 0600 file, starts the agent and waits until it is connected. Every step is printed as it
//! starts; a failed step stops everything, names itself and leaves no token valid.
//!
//! The SSH work runs here, in the console process (on the master's machine, reading its data
//! dir); the master keeps the node records and says whether the agent is connected.

mod attach;
mod known_hosts;
mod remote;
mod ssh;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corpus_proto::admin_client::AdminClient;
use corpus_proto::{AgentInfo, AgentRef, AgentStatus, Empty, Node as NodeRecord};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{Console, Table, print_json, printable, rpc};
use known_hosts::KnownHosts;
use remote::RemoteLayout;
use ssh::{Node, Target, quote};

#[derive(clap::Subcommand, Debug)]
pub enum NodesCommand {
    /// Install and start an agent on a machine over SSH, and wait until it is connected.
    Attach(attach::AttachArgs),
    /// Stop and remove a node's agent over SSH, and delete the agent on the master.
    Detach {
        /// The node's agent id.
        id: String,
        /// SSH private key (default: the one used to attach).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also remove the agent's state dir and every environment under its root.
        #[arg(long)]
        purge: bool,
    },
    /// List attached nodes with host, port, host-key fingerprint and agent status.
    List,
}

/// The steps of attach and detach, printed as they start and named when they fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Check,
    Connect,
    Login,
    Token,
    Prepare,
    CopyBinary,
    CopyFiles,
    Start,
    WaitConnected,
    Record,
    Stop,
    Remove,
    Forget,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Connect => "connect",
            Step::Login => "login",
            Step::Token => "enrollment token",
            Step::Prepare => "prepare directories",
            Step::CopyBinary => "copy agent binary",
            Step::CopyFiles => "copy CA, config and token",
            Step::Start => "start agent",
            Step::WaitConnected => "wait for the agent",
            Step::Record => "record node",
            Step::Stop => "stop agent",
            Step::Remove => "remove files",
            Step::Forget => "forget agent",
        }
    }

    /// Prints the step as it starts (flushed: the operator sees a slow step while it runs).
    fn begin(self, detail: &str) {
        progress(&format!("==> {}: {}", self.label(), printable(detail)));
    }

    /// Wraps a failure of this step so the message names it.
    fn failed<E: std::fmt::Display>(self) -> impl FnOnce(E) -> anyhow::Error {
        move |e| anyhow::anyhow!("step `{}` failed: {e}", self.label())
    }
}

/// With `--json`, stdout is the JSON result alone: progress goes to stderr.
static PROGRESS_ON_STDERR: AtomicBool = AtomicBool::new(false);

/// Prints a progress line at once.
fn progress(line: &str) {
    if PROGRESS_ON_STDERR.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
        std::io::stdout().flush().ok();
    }
}

/// Runs blocking SSH work without stalling the runtime's other tasks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn known_hosts(console: &Console) -> KnownHosts {
    KnownHosts::new(&console.dir.data_dir.join("known_hosts"))
}

async fn nodes(admin: &mut AdminClient<Channel>) -> anyhow::Result<Vec<NodeRecord>> {
    Ok(admin
        .list_nodes(Empty {})
        .await
        .map_err(rpc)?
        .into_inner()
        .nodes)
}

async fn agents(admin: &mut AdminClient<Channel>) -> anyhow::Result<Vec<AgentInfo>> {
    Ok(admin
        .list_agents(Empty {})
        .await
        .map_err(rpc)?
        .into_inner()
        .agents)
}

/// Connects, checks the host key (recording a new one only when `accept_new`) and logs in.
fn open_session(
    console: &Console,
    target: &Target,
    key: &Path,
    accept_new: bool,
) -> anyhow::Result<Node> {
    Step::Connect.begin(&target.address());
    let node = blocking(|| Node::connect(target, &known_hosts(console), accept_new))
        .map_err(Step::Connect.failed())?;
    let trust = if node.newly_trusted {
        "new, recorded in known_hosts"
    } else {
        "known"
    };
    progress(&format!("    host key {} ({trust})", node.fingerprint));
    Step::Login.begin(&format!("as {} with {}", target.user, key.display()));
    blocking(|| node.login(key)).map_err(Step::Login.failed())?;
    Ok(node)
}

pub async fn run(command: NodesCommand, console: &Console) -> anyhow::Result<()> {
    PROGRESS_ON_STDERR.store(console.json, Ordering::Relaxed);
    match command {
        NodesCommand::Attach(args) => attach::run(args, console).await,
        NodesCommand::Detach { id, key, purge } => detach(console, &id, key, purge).await,
        NodesCommand::List => list(console).await,
    }
}

/// Stops the agent (systemd unit or detached process), then waits until it is gone.
fn stop_command(node: &NodeRecord, layout: &RemoteLayout) -> String {
    if node.systemd {
        format!(
            "systemctl disable --now corpus-agent.service && rm -f {unit} && systemctl daemon-reload",
            unit = quote(&layout.unit())
        )
    } else {
        // A zombie still answers `kill -0`: look at the process state instead.
        format!(
            "pidfile={pid}; [ -f \"$pidfile\" ] || exit 0; pid=$(cat \"$pidfile\"); \
             alive() {{ s=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -c1); [ -n \"$s\" ] && [ \"$s\" != Z ]; }}; \
             kill \"$pid\" 2>/dev/null || true; i=0; \
             while alive && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
             if alive; then echo \"agent pid $pid did not stop within 30s\" >&2; exit 1; fi; \
             rm -f \"$pidfile\"",
            pid = quote(&layout.pid_file())
        )
    }
}

async fn detach(
    console: &Console,
    id: &str,
    key: Option<PathBuf>,
    purge: bool,
) -> anyhow::Result<()> {
    let mut admin = console.admin().await?;
    Step::Check.begin(id);
    let record = nodes(&mut admin)
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "node {id:?} is not attached: see `corpus-master nodes list` for the attached ones"
            )
        })?;
    let key = key.unwrap_or_else(|| PathBuf::from(&record.key_file));
    let port = u16::try_from(record.port).map_err(Step::Check.failed())?;
    let target = Target {
        user: record.user.clone(),
        host: record.host.clone(),
        port,
    };
    let layout = RemoteLayout::new(Path::new(&record.remote_prefix), Path::new("/"));
    let node = open_session(console, &target, &key, false)?;

    Step::Stop.begin(if record.systemd {
        "corpus-agent.service"
    } else {
        "detached process"
    });
    blocking(|| node.run("stop the agent", &stop_command(&record, &layout)))
        .map_err(Step::Stop.failed())?;

    let mut paths = vec![
        layout.binary(),
        layout.config(),
        layout.ca(),
        layout.token(),
        layout.log_file(),
    ];
    if purge {
        paths.push(record.state_dir.clone());
        paths.push(record.root.clone());
    }
    Step::Remove.begin(&paths.join(" "));
    let quoted: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    let command = format!(
        "rm -rf -- {} && {{ rmdir {} 2>/dev/null || true; }}",
        quoted.join(" "),
        quote(&layout.config_dir())
    );
    blocking(|| node.run("remove the agent's files", &command)).map_err(Step::Remove.failed())?;

    Step::Forget.begin(id);
    match admin.delete_agent(AgentRef { id: id.to_owned() }).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {}
        Err(status) => return Err(Step::Forget.failed()(rpc(status))),
    }
    let removed = admin
        .delete_node(AgentRef { id: id.to_owned() })
        .await
        .map_err(rpc)
        .map_err(Step::Forget.failed())?
        .into_inner();
    if console.json {
        print_json(&node_json(&removed, None));
    } else {
        println!(
            "detached node {} ({}@{})",
            printable(id),
            printable(&removed.user),
            printable(&target.address())
        );
    }
    Ok(())
}

/// The agent's state as `nodes list` shows it: its status, and whether it is connected.
fn agent_state(agent: Option<&AgentInfo>) -> String {
    match agent {
        None => "no agent".to_owned(),
        Some(a) if a.connected => format!("{}, connected", AgentStatus::label_of(a.status)),
        Some(a) => format!("{}, disconnected", AgentStatus::label_of(a.status)),
    }
}

fn node_json(node: &NodeRecord, agent: Option<&AgentInfo>) -> Value {
    json!({
        "id": node.id,
        "user": node.user,
        "host": node.host,
        "port": node.port,
        "host_key_fingerprint": node.host_key_fingerprint,
        "attached_at": node.attached_at_unix,
        "systemd": node.systemd,
        "remote_prefix": node.remote_prefix,
        "root": node.root,
        "status": agent.map(|a| AgentStatus::label_of(a.status)),
        "connected": agent.is_some_and(|a| a.connected),
    })
}

async fn list(console: &Console) -> anyhow::Result<()> {
    let mut admin = console.admin().await?;
    let nodes = nodes(&mut admin).await?;
    let agents = agents(&mut admin).await?;
    let agent_of = |id: &str| agents.iter().find(|a| a.id == id);
    if console.json {
        print_json(&Value::Array(
            nodes
                .iter()
                .map(|n| node_json(n, agent_of(&n.id)))
                .collect(),
        ));
        return Ok(());
    }
    let mut table = Table::new(&["ID", "HOST", "PORT", "HOST KEY", "STATUS", "ATTACHED"]);
    for n in &nodes {
        table.row([
            n.id.clone(),
            format!("{}@{}", n.user, n.host),
            n.port.to_string(),
            n.host_key_fingerprint.clone(),
            agent_state(agent_of(&n.id)),
            corpus_runtime::format_unix_time(n.attached_at_unix),
        ]);
    }
    table.print();
    Ok(())
}

/// The agent binary shipped by default: `corpus-agent` beside the running `corpus-master`.
fn default_agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the running corpus-master binary: {e}"))?;
    let path = exe.with_file_name("corpus-agent");
    if !path.is_file() {
        anyhow::bail!(
            "no corpus-agent beside {} (looked for {}): pass --agent-binary FILE",
            exe.display(),
            path.display()
        );
    }
    Ok(path)
}

/// How long to wait between two looks at the agent list while waiting for the agent.
const POLL: Duration = Duration::from_millis(250);
