//! Rendering for one agent, Salt's `state.show_sls` and masterless `state.apply` up to the plan:
//! the agent's pillar from the pillar tree's `top.sls`, then the named sls (or the highstate)
//! from the file tree. `corpus-master render` and `corpus-agent apply --local` both call
//! [`render_for_agent`], so the two cannot disagree on pillar targeting or on `env`.

use std::sync::Arc;

use corpus_pillar::template::HostFunctions;
use corpus_pillar::{PillarError, PillarTree, SourceTree, TemplateContext};
use serde_json::{Value as Json, json};

use crate::compile::{RenderedPlan, StateTree};
use crate::error::StateError;

/// The one saltenv corpus has, Salt's default. Templates see it as `env` in the pillar and in
/// the sls, on the master and on the agent alike.
pub const SALTENV: &str = "base";

/// Where an agent's states and pillar come from (Salt's file_roots and pillar_roots).
pub struct AgentTrees {
    /// `top.sls` (for the highstate) and the sls files.
    pub file_root: Arc<dyn SourceTree>,
    /// A tree without `top.sls` gives an empty pillar, as in Salt.
    pub pillar_root: Arc<dyn SourceTree>,
}

impl AgentTrees {
    /// Renders on the machine `host` stands for (`apply --local`), so the sls's render-time
    /// functions (`cmd.run`, `user.info`, ...) may ask it. The master renders without one.
    pub fn on_host(self, host: Arc<dyn HostFunctions>) -> HostedTrees {
        HostedTrees { trees: self, host }
    }
}

/// [`AgentTrees`] rendered on the machine itself, with its render-time functions.
pub struct HostedTrees {
    pub trees: AgentTrees,
    pub host: Arc<dyn HostFunctions>,
}

/// What one agent's render produced.
#[derive(Debug, Clone)]
pub struct AgentRender {
    /// The agent's compiled pillar.
    pub pillar: Json,
    /// The ordered plan and the sls it was built from.
    pub rendered: RenderedPlan,
    /// The context the sls were rendered with; `file.managed` templates get the same one.
    pub context: TemplateContext,
}

/// Rendering for one agent failed: in its pillar or in its states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRenderError {
    #[error("{0}")]
    Pillar(#[from] PillarError),
    #[error("{0}")]
    State(#[from] StateError),
}

/// Renders `sls` (none: the highstate `top.sls` assigns) for agent `agent_id` with `grains`.
/// No I/O beyond reading `trees`.
pub fn render_for_agent<S: AsRef<str>>(
    trees: &AgentTrees,
    agent_id: &str,
    grains: Json,
    sls: &[S],
) -> Result<AgentRender, AgentRenderError> {
    render(trees, None, agent_id, grains, sls)
}

/// Like [`render_for_agent`], on the machine itself: the pillar and sls templates (and the
/// `file.managed` templates given [`AgentRender::context`]) get the host's render-time
/// functions.
pub fn render_on_host<S: AsRef<str>>(
    hosted: &HostedTrees,
    agent_id: &str,
    grains: Json,
    sls: &[S],
) -> Result<AgentRender, AgentRenderError> {
    render(
        &hosted.trees,
        Some(hosted.host.clone()),
        agent_id,
        grains,
        sls,
    )
}

fn render<S: AsRef<str>>(
    trees: &AgentTrees,
    host: Option<Arc<dyn HostFunctions>>,
    agent_id: &str,
    grains: Json,
    sls: &[S],
) -> Result<AgentRender, AgentRenderError> {
    let env = json!(SALTENV);
    let mut pillar_tree = PillarTree::new(trees.pillar_root.clone());
    if let Some(host) = &host {
        pillar_tree = pillar_tree.with_host(host.clone());
    }
    let pillar = pillar_tree.compile(agent_id, &grains, &env)?.data;
    let mut context = TemplateContext::new(pillar.clone(), grains, json!({}), env);
    if let Some(host) = host {
        context = context.with_host(host);
    }
    let states = StateTree::new(trees.file_root.clone());
    let rendered = if sls.is_empty() {
        states.render_highstate(agent_id, &context)?
    } else {
        states.render_sls(sls, &context)?
    };
    Ok(AgentRender {
        pillar,
        rendered,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corpus_pillar::MemoryTree;

    fn trees() -> AgentTrees {
        let states = MemoryTree::new()
            .with("top.sls", "base:\n  'web*':\n    - app\n")
            .with(
                "app.sls",
                "include:\n  - base\nconf:\n  file.managed:\n    - name: /etc/app.conf\n    - contents: \"port={{ pillar.port }} env={{ env }} id={{ grains.id }}\"\n    - require:\n      - test: ready\n",
            )
            .with("base.sls", "ready:\n  test.nop: []\n");
        let pillar = MemoryTree::new()
            .with("top.sls", "{{ env }}:\n  'web1':\n    - web\n")
            .with("web.sls", "port: 8080\nsaltenv: {{ env }}\n");
        AgentTrees {
            file_root: Arc::new(states),
            pillar_root: Arc::new(pillar),
        }
    }

    #[test]
    fn master_render_and_agent_apply_get_the_same_plan_with_pillar_and_env_base()
    -> Result<(), AgentRenderError> {
        let trees = trees();
        let grains = json!({"id": "web1"});
        // `corpus-agent apply --local --id web1` applies the highstate; an operator's
        // `corpus-master render --agent web1 app` names the sls top.sls gives web1.
        let highstate = render_for_agent::<&str>(&trees, "web1", grains.clone(), &[])?;
        let named = render_for_agent(&trees, "web1", grains, &["app"])?;
        assert_eq!(highstate.rendered, named.rendered);
        assert_eq!(highstate.pillar, json!({"port": 8080, "saltenv": "base"}));
        assert_eq!(highstate.rendered.sls, ["base", "app"]);
        let ids: Vec<_> = named.rendered.plan.chunks.iter().map(|c| &c.id).collect();
        assert_eq!(ids, ["ready", "conf"]);
        assert_eq!(
            named.rendered.plan.chunks[1].args["contents"],
            "port=8080 env=base id=web1"
        );
        Ok(())
    }

    /// A host whose commands all print `ran <command>`.
    #[derive(Debug)]
    struct EchoHost;

    impl HostFunctions for EchoHost {
        fn cmd_run(&self, command: &str, _cwd: Option<&str>) -> Result<String, String> {
            Ok(format!("ran {command}"))
        }
        fn which(&self, _name: &str) -> Option<String> {
            None
        }
        fn user_info(&self, _name: &str) -> Option<Json> {
            None
        }
        fn pkg_version(&self, _name: &str) -> String {
            String::new()
        }
        fn path_exists(&self, _path: &str, _kind: corpus_pillar::template::PathKind) -> bool {
            false
        }
        fn read_file(&self, _path: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn a_render_on_the_host_lets_sls_and_file_templates_run_host_functions()
    -> Result<(), AgentRenderError> {
        let sls = "x:\n  test.nop:\n    - name: {{ salt['cmd.run']('uname') }} {{ pillar.k }}\n";
        let trees = AgentTrees {
            file_root: Arc::new(MemoryTree::new().with("a.sls", sls)),
            pillar_root: Arc::new(
                MemoryTree::new()
                    .with("top.sls", "base:\n  '*':\n    - p\n")
                    .with("p.sls", "k: \"{{ salt['cmd.run']('id') }}\"\n"),
            ),
        };
        // The master has no host: the function (here in the pillar) fails naming itself.
        let err = render_for_agent(&trees, "web1", json!({"id": "web1"}), &["a"]);
        assert!(
            matches!(&err, Err(e) if e.to_string().contains("cmd.run")),
            "{err:?}"
        );
        let hosted = trees.on_host(Arc::new(EchoHost));
        let render = render_on_host(&hosted, "web1", json!({"id": "web1"}), &["a"])?;
        assert_eq!(render.rendered.plan.chunks[0].name, "ran uname ran id");
        assert!(render.context.host.is_some());
        Ok(())
    }

    #[test]
    fn a_pillar_tree_without_top_sls_is_an_empty_pillar() -> Result<(), AgentRenderError> {
        let trees = AgentTrees {
            file_root: Arc::new(MemoryTree::new().with("a.sls", "x:\n  test.nop: []\n")),
            pillar_root: Arc::new(MemoryTree::new().with("web.sls", "port: 1\n")),
        };
        let render = render_for_agent(&trees, "web1", json!({"id": "web1"}), &["a"])?;
        assert_eq!(render.pillar, json!({}));
        Ok(())
    }

    #[test]
    fn errors_say_whether_the_pillar_or_the_states_failed() {
        let mut trees = trees();
        let err = render_for_agent(&trees, "db1", json!({"id": "db1"}), &[] as &[&str]);
        assert!(matches!(
            err,
            Err(AgentRenderError::State(StateError::NoTopMatch { .. }))
        ));
        trees.pillar_root =
            Arc::new(MemoryTree::new().with("top.sls", "base:\n  '*':\n    - gone\n"));
        let err = render_for_agent(&trees, "web1", json!({"id": "web1"}), &["app"]);
        assert!(matches!(
            err,
            Err(AgentRenderError::Pillar(PillarError::Missing { .. }))
        ));
    }
}
