//! Fuzz body of `pillar_compile`: `corpus_pillar::PillarTree::compile` of the pillar tree in the
//! input (top.sls targeting, Jinja, YAML, deep merge of the matched files), then the project
//! defaults chain (`PILLAR.sample` <- environment defaults <- pillar) the master applies at push.
//! Needs `files.rs` as a sibling module.

use std::sync::Arc;

use corpus_pillar::yaml::{parse_yaml, yaml_to_json};
use corpus_pillar::{MemoryTree, PillarTree, deep_merge, defaults_chain};
use serde_json::{Value as Json, json};

use super::files::split_files;

/// Compiles the pillar in `data` (see `files.rs`; the `pillar/` prefix is optional here) for
/// agent `web1` and merges it; panics only on a bug.
pub fn run(data: &[u8]) {
    let Some(files) = split_files(data) else {
        return;
    };
    let mut tree = MemoryTree::new();
    let mut sample = None;
    for (path, text) in &files {
        let rel = path.strip_prefix("pillar/").unwrap_or(path);
        if rel == "PILLAR.sample" {
            sample = Some(*text);
        }
        tree.insert(rel, text);
    }
    let grains = json!({"id": "web1", "os": "Debian", "os_family": "Debian", "roles": ["web"]});
    let Ok(pillar) = PillarTree::new(Arc::new(tree)).compile("web1", &grains, &json!("base"))
    else {
        return;
    };
    assert!(pillar.data.is_object(), "a compiled pillar is a mapping");
    let sample = sample
        .and_then(|text| parse_yaml("PILLAR.sample", text).ok())
        .map(|yaml| yaml_to_json(&yaml))
        .unwrap_or(Json::Null);
    let env_defaults = json!({"app": {"port": 8080, "workers": [1, 2]}});
    let merged = defaults_chain(sample, env_defaults, pillar.data.clone());
    // The pillar is the chain's last layer, so it wins everywhere: merging it again is a no-op.
    let again = deep_merge(merged.clone(), pillar.data.clone());
    assert_eq!(again, merged, "the pillar did not win over the defaults");
    let itself = deep_merge(pillar.data.clone(), pillar.data.clone());
    assert_eq!(
        itself, pillar.data,
        "merging the pillar over itself changed it"
    );
}
