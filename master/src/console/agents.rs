//! `corpus-master agents list|accept|reject|delete`: deciding which machines may attach.

use corpus_proto::{AgentInfo, AgentRef, AgentStatus, StreamAgentsRequest};
use serde_json::{Value, json};

use super::{Console, Table, print_json, printable, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum AgentsCommand {
    /// List agents with their status and connection.
    List,
    /// Accept a pending (or rejected) agent.
    Accept {
        id: String,
        /// The key fingerprint `corpus-agent fingerprint` prints on the machine (at least 16
        /// hex characters); required when the id was tried by more than one key.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Reject an agent: it is refused from now on.
    Reject { id: String },
    /// Forget an agent: its certificate stops working; it may enroll again.
    Delete { id: String },
}

fn agent_json(a: &AgentInfo) -> Value {
    let grains = a.grains.as_ref();
    json!({
        "id": a.id,
        "status": AgentStatus::label_of(a.status),
        "connected": a.connected,
        "last_seen": a.last_seen_unix,
        "enrolled_at": a.enrolled_at_unix,
        "address": a.address,
        "fingerprint": a.fingerprint,
        "key_fingerprint": a.key_fingerprint,
        "conflicting_keys": a.conflicting_keys,
        "hostname": grains.map(|g| g.hostname.clone()),
        "slots": grains.map(|g| g.slots),
    })
}

pub async fn run(command: AgentsCommand, console: &Console) -> anyhow::Result<()> {
    let mut client = console.admin().await?;
    let (verb, info) = match command {
        AgentsCommand::List => {
            // Paged: a fleet of any size fits (one message would hit the message limit).
            let mut pages = client
                .stream_agents(StreamAgentsRequest { page_size: 0 })
                .await
                .map_err(rpc)?
                .into_inner();
            let mut agents = Vec::new();
            while let Some(page) = pages.message().await.map_err(rpc)? {
                agents.extend(page.agents);
            }
            print_list(console, &agents);
            return Ok(());
        }
        AgentsCommand::Accept {
            id,
            fingerprint: Some(fingerprint),
        } => (
            "accepted",
            client
                .accept_agent_key(corpus_proto::AcceptAgentKeyRequest { id, fingerprint })
                .await,
        ),
        AgentsCommand::Accept {
            id,
            fingerprint: None,
        } => ("accepted", client.accept_agent(AgentRef { id }).await),
        AgentsCommand::Reject { id } => ("rejected", client.reject_agent(AgentRef { id }).await),
        AgentsCommand::Delete { id } => ("deleted", client.delete_agent(AgentRef { id }).await),
    };
    let info = info.map_err(rpc)?.into_inner();
    if console.json {
        print_json(&agent_json(&info));
    } else {
        println!("{verb} agent {}", printable(&info.id));
    }
    Ok(())
}

fn print_list(console: &Console, agents: &[AgentInfo]) {
    if console.json {
        print_json(&Value::Array(agents.iter().map(agent_json).collect()));
        return;
    }
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "CONNECTED",
        "LAST SEEN",
        "ADDRESS",
        "KEY FINGERPRINT",
    ]);
    for a in agents {
        // 16 hex characters (64 bits) to compare by eye; --json has the whole of it.
        let key: String = a.key_fingerprint.chars().take(16).collect();
        table.row([
            a.id.as_str(),
            AgentStatus::label_of(a.status),
            if a.connected { "yes" } else { "no" },
            corpus_runtime::format_unix_time(a.last_seen_unix).as_str(),
            a.address.as_str(),
            key.as_str(),
        ]);
    }
    table.print();
    for a in agents.iter().filter(|a| !a.conflicting_keys.is_empty()) {
        eprintln!(
            "warning: agent id {} was tried by {} other key(s) ({}): compare `corpus-agent fingerprint` on the machine, then corpus-master agents accept {} --fingerprint FP",
            printable(&a.id),
            a.conflicting_keys.len(),
            a.conflicting_keys
                .iter()
                .map(|k| k.chars().take(16).collect::<String>())
                .collect::<Vec<_>>()
                .join(", "),
            printable(&a.id),
        );
    }
}
