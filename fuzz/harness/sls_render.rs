//! Fuzz body of `sls_render`: the master's render of one agent (pillar from the pillar tree's
//! `top.sls`, then the highstate or the first file's sls: Jinja, YAML, high data, plan) through
//! `corpus_states::render_for_agent`, then the plan's JSON round trip the job takes to the
//! agent. Needs `files.rs` as a sibling module.

use std::sync::Arc;

use corpus_pillar::MemoryTree;
use corpus_states::{AgentTrees, Plan, render_for_agent};
use serde_json::json;

use super::files::split_files;

/// Renders the tree in `data` (see `files.rs`) for agent `web1`; panics only on a bug.
pub fn run(data: &[u8]) {
    let Some(files) = split_files(data) else {
        return;
    };
    let mut states = MemoryTree::new();
    let mut pillar = MemoryTree::new();
    let mut first_sls = None;
    for (path, text) in &files {
        match path.strip_prefix("pillar/") {
            Some(rel) => pillar.insert(rel, text),
            None => {
                states.insert(path, text);
                if first_sls.is_none() && *path != "top.sls" {
                    first_sls = path.strip_suffix(".sls").map(|s| s.replace('/', "."));
                }
            }
        }
    }
    let trees = AgentTrees {
        file_root: Arc::new(states),
        pillar_root: Arc::new(pillar),
    };
    let grains = json!({
        "id": "web1", "os": "Debian", "os_family": "Debian", "osrelease": "12",
        "kernel": "Linux", "ipv4": ["10.0.0.1"], "roles": ["web"],
    });
    let has_top = files.iter().any(|(path, _)| *path == "top.sls");
    let sls: Vec<String> = match (has_top, first_sls) {
        (true, _) => Vec::new(),
        (false, Some(name)) => vec![name],
        (false, None) => return,
    };
    let Ok(render) = render_for_agent(&trees, "web1", grains, &sls) else {
        return;
    };
    // The master sends the plan as JSON (`Job.plan_json`) and the agent reads it back: a plan
    // that does not survive the trip would run something else than what was checked.
    let sent = serde_json::to_string(&render.rendered.plan).expect("a plan serializes");
    let received: Plan = serde_json::from_str(&sent).expect("a serialized plan deserializes");
    assert_eq!(
        received, render.rendered.plan,
        "the plan changed on its way to the agent"
    );
}
