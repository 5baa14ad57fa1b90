//! What an operator run needs per agent before anything is sent: which accepted agents a target
//! selects (with their last grains and, when the target asks, their pillar), and each agent's
//! own rendered plan and pillar from the master's `file_root` and `pillar_root`. Blocking
//! (store reads, rendering): async callers go through `MasterState::blocking`.

use std::sync::Arc;

use corpus_pillar::{DirTree, PillarTree};
use serde_json::{Value as Json, json};

use super::target::{Minion, Target};
use crate::MasterState;
use crate::error::MasterResult;
use crate::settings::Settings;
use crate::store::{AgentRecord, AgentStatus, Grains};

/// The grains templates and targeting see for an agent: its last Hello's, in Salt's names.
pub fn template_grains(record: &AgentRecord) -> Json {
    record
        .grains
        .clone()
        .unwrap_or_else(|| Grains {
            id: record.id.clone(),
            ..Default::default()
        })
        .template_json()
}

/// An agent's pillar from `pillar_root`'s `top.sls`, or the error naming file and line.
pub fn pillar_of(settings: &Settings, agent: &str, grains: &Json) -> Result<Json, String> {
    PillarTree::new(Arc::new(DirTree::new(&settings.pillar_root)))
        .compile(agent, grains, &json!(corpus_states::SALTENV))
        .map(|p| p.data)
        .map_err(|e| format!("pillar of {agent}: {e}"))
}

/// The accepted agents `target` selects, in id order. An agent whose pillar does not compile
/// is not matched by pillar (and is logged).
pub fn select(state: &MasterState, target: &Target) -> MasterResult<Vec<(String, Json)>> {
    let settings = state.settings();
    let mut agents: Vec<AgentRecord> = state
        .store
        .agents()?
        .into_iter()
        .filter(|a| a.status == AgentStatus::Accepted)
        .collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let minions: Vec<Minion> = agents
        .iter()
        .map(|record| {
            let grains = template_grains(record);
            let pillar = if target.needs_pillar() {
                pillar_of(&settings, &record.id, &grains)
                    .inspect_err(|e| tracing::warn!("targeting: {e}"))
                    .ok()
            } else {
                None
            };
            Minion {
                id: record.id.clone(),
                grains,
                pillar,
            }
        })
        .collect();
    let ids = target
        .select(&minions)
        .map_err(|e| crate::error::MasterError::invalid(e.to_string()))?;
    Ok(minions
        .into_iter()
        .filter(|m| ids.contains(&m.id))
        .map(|m| (m.id, m.grains))
        .collect())
}

/// The most one call's plan, pillar and files may take: the link's message limit, less room for
/// the call's other fields. A larger call would break the agent's link, so it is refused.
pub const MAX_CALL_BYTES: usize = corpus_proto::MAX_MESSAGE_BYTES - 64 * 1024;

/// What one agent's call carries of the master's trees.
pub struct RenderedCall {
    /// JSON of corpus-states' Plan.
    pub plan: Vec<u8>,
    /// The agent's pillar, JSON.
    pub pillar: Vec<u8>,
    /// The `salt://` files the plan references ([`super::sources`]).
    pub files: Vec<super::sources::ShippedFile>,
}

/// One agent's plan and pillar: the highstate when `sls` is empty, else the named SLS, with the
/// `salt://` files the plan references when `with_files`. The error names the file, line and
/// state id.
pub fn render(
    settings: &Settings,
    agent: &str,
    grains: Json,
    sls: &[String],
    with_files: bool,
) -> Result<RenderedCall, String> {
    if !settings.file_root.is_dir() {
        return Err(format!(
            "state tree {} does not exist: pass --file-root to corpus-master serve",
            settings.file_root.display()
        ));
    }
    let trees = corpus_states::AgentTrees {
        file_root: Arc::new(DirTree::new(&settings.file_root)),
        pillar_root: Arc::new(DirTree::new(&settings.pillar_root)),
    };
    let render = corpus_states::render_for_agent(&trees, agent, grains, sls)
        .map_err(|e| format!("render failed: {e}"))?;
    let files = if with_files {
        super::sources::collect(&settings.file_root, &render.rendered.plan)?
    } else {
        Vec::new()
    };
    let plan = serde_json::to_vec(&render.rendered.plan)
        .map_err(|e| format!("render failed: the plan does not serialise: {e}"))?;
    let pillar = serde_json::to_vec(&render.pillar)
        .map_err(|e| format!("render failed: the pillar does not serialise: {e}"))?;
    let size = plan.len()
        + pillar.len()
        + files
            .iter()
            .map(|f| f.path.len() + f.content.len() + 16)
            .sum::<usize>();
    if size > MAX_CALL_BYTES {
        return Err(format!(
            "the call for {agent} would be {size} bytes (plan, pillar and salt:// files), over the limit of {MAX_CALL_BYTES} bytes (the link's 16 MiB message less 64 KiB): ship fewer or smaller files"
        ));
    }
    Ok(RenderedCall {
        plan,
        pillar,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_over_the_links_message_limit_is_refused_naming_the_agent() -> anyhow::Result<()> {
        let (dir, state) = crate::test_state()?;
        let mut settings = state.settings();
        settings.file_root = dir.path().join("states");
        settings.pillar_root = dir.path().join("pillar");
        std::fs::create_dir_all(&settings.file_root)?;
        std::fs::create_dir_all(&settings.pillar_root)?;
        std::fs::write(
            settings.file_root.join("top.sls"),
            "base:\n  '*':\n    - big\n",
        )?;
        std::fs::write(
            settings.file_root.join("big.sls"),
            "blob:\n  file.managed:\n    - name: /tmp/never\n    - source: salt://blob\n",
        )?;
        // Each part within its own limit (8 MiB of files, 8 MiB of pillar), together over.
        let shipped = vec![b'x'; crate::fleet::sources::MAX_SHIPPED_BYTES as usize];
        std::fs::write(settings.file_root.join("blob"), &shipped)?;
        std::fs::write(
            settings.pillar_root.join("top.sls"),
            "base:\n  '*':\n    - p\n",
        )?;
        let filler = "y".repeat(corpus_pillar::compile::MAX_PILLAR_BYTES - 64);
        std::fs::write(settings.pillar_root.join("p.sls"), "filler: small\n")?;
        let grains = serde_json::json!({"id": "web1"});
        let fits =
            render(&settings, "web1", grains.clone(), &[], true).map_err(anyhow::Error::msg)?;
        assert_eq!(fits.files.len(), 1);
        std::fs::write(
            settings.pillar_root.join("p.sls"),
            format!("filler: {filler}\n"),
        )?;
        let err = render(&settings, "web1", grains.clone(), &[], true).err();
        let err = err.unwrap_or_default();
        assert!(
            err.contains("web1") && err.contains(&MAX_CALL_BYTES.to_string()),
            "{}",
            err.chars().take(300).collect::<String>()
        );
        // Without files (state.show_sls) the same pillar fits.
        assert!(render(&settings, "web1", grains, &[], false).is_ok());
        Ok(())
    }
}
