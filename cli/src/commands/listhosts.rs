//! `corpus listhosts [ENDPOINT]`: the hosts (agents) projects can be installed onto.

use corpus_proto::{Host, ListHostsRequest};
use serde_json::json;

use crate::session::{Session, rpc_error};

pub async fn run(mut session: Session, json: bool) -> anyhow::Result<()> {
    let hosts = session
        .client
        .list_hosts(ListHostsRequest {})
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner()
        .hosts;
    if json {
        let list: Vec<_> = hosts.iter().map(host_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if hosts.is_empty() {
        println!("no hosts: accept an agent on the master first (corpus-master agents accept ID)");
        return Ok(());
    }
    println!(
        "{:<30} {:<16} {:<6} {:<6} {:<9} STATUS",
        "ID", "IP", "SLOTS", "GUEST", "ISOLATION"
    );
    for h in &hosts {
        println!(
            "{:<30} {:<16} {:<6} {:<6} {:<9} {}",
            h.id,
            // Grains come from the agent: escaped, like everything the CLI prints.
            corpus_proto::names::printable(&h.ip),
            format!("{}/{}", h.slots_free, h.slots_total),
            corpus_proto::names::printable(&h.guest_type),
            isolation(h),
            if h.connected {
                "connected".to_owned()
            } else {
                format!(
                    "last seen {}",
                    corpus_runtime::format_unix_time(h.last_seen_unix)
                )
            }
        );
    }
    Ok(())
}

/// How the agent confines project states (`landlock`, `uid` or `none`); agents older than
/// isolation report nothing, which the master treats as `none`.
fn isolation(h: &Host) -> &str {
    match h.grains.as_ref().map(|g| g.isolation.as_str()) {
        Some(level) if !level.is_empty() => level,
        _ => "none",
    }
}

fn host_json(h: &Host) -> serde_json::Value {
    json!({
        "id": h.id,
        "ip": h.ip,
        "slots_total": h.slots_total,
        "slots_free": h.slots_free,
        "guest_type": h.guest_type,
        "connected": h.connected,
        "isolation": isolation(h),
        "last_seen": h.last_seen_unix,
        "os": h.grains.as_ref().map(|g| g.os.clone()),
        "cpus": h.grains.as_ref().map(|g| g.cpus),
        "memory_bytes": h.grains.as_ref().map(|g| g.memory_bytes),
    })
}
