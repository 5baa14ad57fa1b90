//! `corpus-master nodes attach`: the install, step by step. The token is created only once the
//! node is reached and logged into; from then on any failure revokes it (and stops an agent
//! already started), so a failed attach leaves nothing that could enroll.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use corpus_proto::admin_client::AdminClient;
use corpus_proto::{
    AgentInfo, AgentStatus, AgentTokenRequest, Node as NodeRecord, RevokeTokenRequest,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::remote::{AgentConfig, RemoteLayout, systemd_unit};
use super::{
    Console, POLL, Step, agents, blocking, default_agent_binary, nodes, open_session, progress,
    stop_command,
};
use super::{Node, Target, quote};
use crate::console::{print_json, printable, rpc};

/// How long the node has to use its enrollment token.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// The node: [USER@]HOST[:PORT] (user root, port 22 by default).
    target: String,
    /// SSH private key to log in with.
    #[arg(long)]
    key: PathBuf,
    /// The agent's id (default: HOST).
    #[arg(long)]
    id: Option<String>,
    /// How many environments the agent hosts.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Where the agent keeps environments on the node.
    #[arg(long, default_value = "/srv/corpus")]
    root: PathBuf,
    /// The agent binary to install (default: corpus-agent beside this corpus-master).
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// Record the node's host key in DATA_DIR/known_hosts if it is not there yet.
    #[arg(long)]
    accept_new_host_key: bool,
    /// Start the agent detached instead of installing corpus-agent.service (no restart on
    /// failure or at boot).
    #[arg(long)]
    no_systemd: bool,
    /// The master's URL as the node reaches it (default: https://THIS-HOST:4505).
    #[arg(long, env = "CORPUS_MASTER_URL")]
    master_url: Option<String>,
    /// Install every file under this directory of the node instead of / (for staging and
    /// tests, which must not touch the real /etc).
    #[arg(long, default_value = "/")]
    remote_prefix: PathBuf,
    /// How long to wait for the started agent to connect.
    #[arg(long, default_value = "2m", value_parser = corpus_runtime::parse_duration)]
    wait: Duration,
}

/// Everything read and checked before the node is contacted.
struct Plan {
    target: Target,
    id: String,
    binary: Vec<u8>,
    binary_sha256: String,
    ca_pem: Vec<u8>,
    master_url: String,
    layout: RemoteLayout,
}

fn default_master_url() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --master-url given and this host's name cannot be read")?;
    Ok(format!("https://{}:4505", host.trim()))
}

fn plan(args: &AttachArgs, console: &Console) -> anyhow::Result<Plan> {
    let target = Target::parse(&args.target)?;
    let id = args.id.clone().unwrap_or_else(|| target.host.clone());
    corpus_proto::names::validate_agent_id(&id)
        .with_context(|| format!("{id:?} cannot be an agent id: pass --id"))?;
    if args.slots == 0 {
        anyhow::bail!("--slots 0 would host nothing: use at least 1");
    }
    if !args.key.is_file() {
        anyhow::bail!("SSH key {} does not exist", args.key.display());
    }
    let binary_path = match &args.agent_binary {
        Some(path) => path.clone(),
        None => default_agent_binary()?,
    };
    let binary = std::fs::read(&binary_path)
        .with_context(|| format!("cannot read the agent binary {}", binary_path.display()))?;
    let ca_path = console.dir.data_dir.join("pki").join(crate::pki::CA_CERT);
    let ca_pem = std::fs::read(&ca_path)
        .with_context(|| format!("cannot read the CA certificate {}", ca_path.display()))?;
    let master_url = match &args.master_url {
        Some(url) => url.clone(),
        None => default_master_url()?,
    };
    let master_url = corpus_runtime::tls::master_url(&master_url)?;
    Ok(Plan {
        target,
        id,
        binary_sha256: hex::encode(Sha256::digest(&binary)),
        binary,
        ca_pem,
        master_url,
        layout: RemoteLayout::new(&args.remote_prefix, &args.root),
    })
}

pub async fn run(args: AttachArgs, console: &Console) -> anyhow::Result<()> {
    let plan = plan(&args, console)?;
    let mut admin = console.admin().await?;
    let id = &plan.id;

    Step::Check.begin(&format!("{id} is not attached yet"));
    if let Some(node) = nodes(&mut admin).await?.into_iter().find(|n| &n.id == id) {
        anyhow::bail!(
            "node {id:?} is already attached ({}@{}:{}, since {}): detach it first with \
             `corpus-master nodes detach {id}`",
            node.user,
            node.host,
            node.port,
            corpus_runtime::format_unix_time(node.attached_at_unix)
        );
    }
    if agents(&mut admin).await?.iter().any(|a| &a.id == id) {
        anyhow::bail!(
            "an agent {id:?} is already known to the master: delete it first \
             (`corpus-master agents delete {id}`) or pass another --id"
        );
    }

    let node = open_session(console, &plan.target, &args.key, args.accept_new_host_key)?;

    Step::Token.begin(&format!(
        "single-use, for {id} only, valid {}",
        humantime::format_duration(TOKEN_TTL)
    ));
    let token = admin
        .create_agent_enrollment_token(AgentTokenRequest {
            agent_id: id.clone(),
            ttl_seconds: TOKEN_TTL.as_secs(),
        })
        .await
        .map_err(rpc)
        .map_err(Step::Token.failed())?
        .into_inner()
        .token;

    let mut started = false;
    let installed = install(&args, &plan, &node, &token, &mut admin, &mut started).await;
    let agent = match installed {
        Ok(agent) => agent,
        Err(e) => {
            undo(&mut admin, &node, &plan, &token, !args.no_systemd, started).await;
            return Err(e);
        }
    };
    // The token was spent by the enrollment; its file has no use left.
    let token_file = plan.layout.token();
    let _ = blocking(|| {
        node.run(
            "remove the token file",
            &format!("rm -f {}", quote(&token_file)),
        )
    });
    report(console, &agent);
    Ok(())
}

/// After a failure: the token revoked, its file removed, a started agent stopped. Each is
/// best effort, and a failure of one is said, since the operator may have to finish it.
async fn undo(
    admin: &mut AdminClient<Channel>,
    node: &Node,
    plan: &Plan,
    token: &str,
    systemd: bool,
    started: bool,
) {
    if let Err(status) = admin
        .revoke_enrollment_token(RevokeTokenRequest {
            token: token.to_owned(),
        })
        .await
    {
        eprintln!(
            "corpus-master: warning: the enrollment token could not be revoked ({}): it expires in {}",
            status.message(),
            humantime::format_duration(TOKEN_TTL)
        );
    }
    let mut cleanup = format!("rm -f {}", quote(&plan.layout.token()));
    if started {
        let record = NodeRecord {
            systemd,
            ..Default::default()
        };
        cleanup = format!("{}; {cleanup}", stop_command(&record, &plan.layout));
    }
    if let Err(e) = blocking(|| node.run("clean up after the failed attach", &cleanup)) {
        eprintln!("corpus-master: warning: {e}");
    }
}

/// Copies `bytes` to `path` with `mode` through a temporary name, so a half-copied file never
/// takes the real name.
fn copy(node: &Node, what: &str, path: &str, mode: i32, bytes: &[u8]) -> anyhow::Result<()> {
    let staged = format!("{path}.new");
    node.run(
        &format!("remove a stale {staged}"),
        &format!("rm -f {}", quote(&staged)),
    )?;
    node.upload(&staged, mode, bytes.len() as u64, &mut &bytes[..])
        .with_context(|| format!("copying the {what}"))?;
    node.run(
        &format!("install the {what}"),
        &format!(
            "chmod {mode:o} {staged} && mv -f {staged} {path}",
            staged = quote(&staged),
            path = quote(path)
        ),
    )?;
    Ok(())
}

async fn install(
    args: &AttachArgs,
    plan: &Plan,
    node: &Node,
    token: &str,
    admin: &mut AdminClient<Channel>,
    started: &mut bool,
) -> anyhow::Result<AgentInfo> {
    let layout = &plan.layout;
    let parent = |path: String| {
        Path::new(&path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Step::Prepare.begin(&layout.config_dir());
    let prepare = format!(
        "set -e; umask 077; install -d -m 0700 {config} {state}; mkdir -p {bin} {run} {log}",
        config = quote(&layout.config_dir()),
        state = quote(&layout.state_dir()),
        bin = quote(&parent(layout.binary())),
        run = quote(&parent(layout.pid_file())),
        log = quote(&parent(layout.log_file())),
    );
    blocking(|| node.run("create the agent's directories", &prepare))
        .map_err(Step::Prepare.failed())?;

    Step::CopyBinary.begin(&format!(
        "{} ({} bytes, sha256 {})",
        layout.binary(),
        plan.binary.len(),
        plan.binary_sha256
    ));
    blocking(|| -> anyhow::Result<()> {
        let staged = format!("{}.new", layout.binary());
        node.run("remove a stale binary", &format!("rm -f {}", quote(&staged)))?;
        node.upload(&staged, 0o700, plan.binary.len() as u64, &mut &plan.binary[..])?;
        let sum = node.run(
            "checksum the agent binary",
            &format!("sha256sum -- {}", quote(&staged)),
        )?;
        let remote = sum.stdout.split_whitespace().next().unwrap_or_default();
        if remote != plan.binary_sha256 {
            anyhow::bail!(
                "the copied binary's sha256 is {remote:?} on the node, {} here: the copy was corrupted",
                plan.binary_sha256
            );
        }
        node.run(
            "install the agent binary",
            &format!(
                "chmod 0700 {staged} && mv -f {staged} {path}",
                staged = quote(&staged),
                path = quote(&layout.binary())
            ),
        )?;
        Ok(())
    })
    .map_err(Step::CopyBinary.failed())?;

    let config = AgentConfig {
        master: plan.master_url.clone(),
        ca: layout.ca(),
        id: plan.id.clone(),
        state_dir: layout.state_dir(),
        root: layout.root.clone(),
        slots: args.slots,
        token_file: layout.token(),
    };
    Step::CopyFiles.begin(&format!(
        "{}, {}, {}",
        layout.ca(),
        layout.config(),
        layout.token()
    ));
    blocking(|| -> anyhow::Result<()> {
        copy(node, "CA certificate", &layout.ca(), 0o600, &plan.ca_pem)?;
        copy(
            node,
            "agent config",
            &layout.config(),
            0o600,
            config.to_yaml().as_bytes(),
        )?;
        copy(
            node,
            "enrollment token",
            &layout.token(),
            0o600,
            format!("{token}\n").as_bytes(),
        )
    })
    .map_err(Step::CopyFiles.failed())?;

    if args.no_systemd {
        Step::Start.begin("detached (--no-systemd: not restarted on failure or at boot)");
        let start = format!(
            "cd / && umask 077 && {{ setsid {bin} run --config {config} </dev/null >>{log} 2>&1 & \
             echo $! > {pid}; }} && cat {pid}",
            bin = quote(&layout.binary()),
            config = quote(&layout.config()),
            log = quote(&layout.log_file()),
            pid = quote(&layout.pid_file()),
        );
        *started = true;
        let out = blocking(|| node.run("start the agent detached", &start))
            .map_err(Step::Start.failed())?;
        progress(&format!(
            "    started the agent detached, pid {}, output in {}",
            out.stdout.trim(),
            layout.log_file()
        ));
    } else {
        Step::Start.begin("corpus-agent.service");
        blocking(|| -> anyhow::Result<()> {
            let unit = systemd_unit(layout);
            node.run(
                "create the unit directory",
                &format!("mkdir -p {}", quote(&parent(layout.unit()))),
            )?;
            copy(node, "systemd unit", &layout.unit(), 0o644, unit.as_bytes())?;
            *started = true;
            node.run(
                "enable and start corpus-agent.service",
                "systemctl daemon-reload && systemctl enable corpus-agent.service \
                 && systemctl restart corpus-agent.service",
            )?;
            Ok(())
        })
        .map_err(Step::Start.failed())?;
    }

    Step::WaitConnected.begin(&format!(
        "{} (up to {})",
        plan.id,
        humantime::format_duration(args.wait)
    ));
    let agent = wait_connected(admin, &plan.id, args.wait)
        .await
        .map_err(Step::WaitConnected.failed())?;

    Step::Record.begin(&plan.id);
    admin
        .put_node(NodeRecord {
            id: plan.id.clone(),
            user: plan.target.user.clone(),
            host: plan.target.host.clone(),
            port: u32::from(plan.target.port),
            host_key_fingerprint: node.fingerprint.clone(),
            attached_at_unix: 0,
            remote_prefix: args.remote_prefix.to_string_lossy().into_owned(),
            systemd: !args.no_systemd,
            root: layout.root.clone(),
            state_dir: layout.state_dir(),
            key_file: std::path::absolute(&args.key)
                .unwrap_or_else(|_| args.key.clone())
                .to_string_lossy()
                .into_owned(),
        })
        .await
        .map_err(rpc)
        .map_err(Step::Record.failed())?;
    Ok(agent)
}

/// Polls the master until the agent `id` is accepted and connected, or `wait` has passed.
async fn wait_connected(
    admin: &mut AdminClient<Channel>,
    id: &str,
    wait: Duration,
) -> anyhow::Result<AgentInfo> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let agent = agents(admin).await?.into_iter().find(|a| a.id == id);
        if let Some(agent) = &agent
            && agent.connected
            && agent.status == AgentStatus::Accepted as i32
        {
            return Ok(agent.clone());
        }
        last = agent.or(last);
        if start.elapsed() >= wait {
            let seen = match &last {
                None => "it never enrolled".to_owned(),
                Some(a) => format!(
                    "it is {}, {}",
                    AgentStatus::label_of(a.status),
                    if a.connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                ),
            };
            anyhow::bail!(
                "agent {id:?} did not connect within {} ({seen}): see its log on the node",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn report(console: &Console, agent: &AgentInfo) {
    let grains = agent.grains.clone().unwrap_or_default();
    if console.json {
        print_json(&json!({
            "id": agent.id,
            "status": AgentStatus::label_of(agent.status),
            "connected": agent.connected,
            "grains": {
                "hostname": grains.hostname,
                "os": grains.os,
                "kernel": grains.kernel,
                "cpus": grains.cpus,
                "memory_bytes": grains.memory_bytes,
                "ip_addresses": grains.ip_addresses,
                "slots": grains.slots,
                "root": grains.root,
                "version": grains.version,
            },
        }));
        return;
    }
    println!("attached node {}: agent connected", printable(&agent.id));
    for (name, value) in [
        ("hostname", grains.hostname),
        ("os", grains.os),
        ("kernel", grains.kernel),
        ("cpus", grains.cpus.to_string()),
        ("memory", bytes(grains.memory_bytes)),
        ("ip addresses", grains.ip_addresses.join(", ")),
        ("slots", grains.slots.to_string()),
        ("root", grains.root),
        ("version", grains.version),
    ] {
        println!("  {name:<13} {}", printable(&value));
    }
}

fn bytes(n: u64) -> String {
    format!("{:.1} GiB", n as f64 / (1024.0 * 1024.0 * 1024.0))
}
