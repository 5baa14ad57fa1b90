//! Compiling an agent's pillar: render `top.sls`, pick the sls files targeting the agent, render
//! each (Jinja then YAML, following `include:`) and deep-merge them in order.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::merge::deep_merge_into;
use crate::template::{HostFunctions, RenderError, TemplateContext, TemplateEngine};
use crate::top::{TopError, TopFile};
use crate::tree::{SourceTree, TreeError, read_sls, resolve_include};
use crate::yaml::{YamlError, parse_yaml, yaml_key, yaml_to_json};

/// Compiling a pillar failed. Every variant names the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PillarError {
    #[error("pillar tree: {0}")]
    Tree(#[from] TreeError),
    #[error("pillar {0}")]
    Render(#[from] RenderError),
    #[error("pillar {0}")]
    Yaml(#[from] YamlError),
    #[error("pillar {0}")]
    Top(#[from] TopError),
    /// The file rendered to something that is not pillar data.
    #[error("pillar {file}: {message}")]
    Invalid { file: String, message: String },
    /// The merged pillar is larger than [`MAX_PILLAR_BYTES`] (it is stored with every job).
    #[error(
        "pillar {file}: the merged pillar is over the limit of {limit} bytes of JSON once this \
         file is merged; keep large data out of pillar (a file in the source tree)"
    )]
    TooLarge { file: String, limit: usize },
    /// An sls named by top.sls or an include does not exist.
    #[error(
        "pillar sls '{name}' not found (named in {by}): create {path}.sls or {path}/init.sls in the pillar tree"
    )]
    Missing {
        name: String,
        by: String,
        path: String,
    },
}

/// The most bytes an agent's compiled pillar may take as JSON. The pillar is rendered for every
/// job and stored with it, so a few kilobytes that expand to megabytes cost each push.
pub const MAX_PILLAR_BYTES: usize = 8 * 1024 * 1024;

/// Whether `data` serializes to more than `limit` bytes of JSON, found without building the text.
pub fn json_larger_than(data: &Json, limit: usize) -> bool {
    struct Counter {
        left: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over the limit"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { left: limit }, data).is_err()
}

/// An agent's compiled pillar and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pillar {
    /// The merged data (a JSON object).
    pub data: Json,
    /// The sls files merged into it, in merge order (includes before their includer).
    pub sls: Vec<String>,
}

/// A pillar tree (Salt's pillar_roots): `top.sls` plus sls files.
pub struct PillarTree {
    tree: Arc<dyn SourceTree>,
    engine: TemplateEngine,
    /// The machine compiled for, when compiling runs on it (`apply --local`).
    host: Option<Arc<dyn HostFunctions>>,
}

impl PillarTree {
    pub fn new(tree: Arc<dyn SourceTree>) -> PillarTree {
        PillarTree {
            engine: TemplateEngine::new(tree.clone()),
            tree,
            host: None,
        }
    }

    /// Compiles on the machine `host` stands for: pillar templates may call `cmd.run`,
    /// `user.info`, ... as in Salt's masterless runs.
    pub fn with_host(mut self, host: Arc<dyn HostFunctions>) -> PillarTree {
        self.host = Some(host);
        self
    }

    /// Compiles the pillar of agent `agent_id`. Templates see `grains`, `env`, `opts.id` and
    /// `pillar` (the data merged so far). No `top.sls` means an empty pillar.
    pub fn compile(
        &self,
        agent_id: &str,
        grains: &Json,
        env: &Json,
    ) -> Result<Pillar, PillarError> {
        let base_ctx = TemplateContext::new(
            Json::Object(Default::default()),
            grains.clone(),
            Json::Null,
            env.clone(),
        )
        .with_var("opts", serde_json::json!({ "id": agent_id }));
        let base_ctx = match &self.host {
            Some(host) => base_ctx.with_host(host.clone()),
            None => base_ctx,
        };
        let Some(top_text) = self.tree.read("top.sls")? else {
            return Ok(Pillar {
                data: Json::Object(Default::default()),
                sls: Vec::new(),
            });
        };
        let rendered = self.engine.render("top.sls", &top_text, &base_ctx)?;
        let top = TopFile::from_yaml("top.sls", &parse_yaml("top.sls", &rendered)?)?;
        let mut state = CompileState {
            data: Json::Object(Default::default()),
            sls: Vec::new(),
            seen: HashSet::new(),
            ctx: base_ctx,
        };
        for name in top.sls_for(agent_id, grains) {
            let data = self.render_sls(&name, "top.sls", &mut state)?;
            deep_merge_into(&mut state.data, data);
            if json_larger_than(&state.data, MAX_PILLAR_BYTES) {
                return Err(PillarError::TooLarge {
                    file: name,
                    limit: MAX_PILLAR_BYTES,
                });
            }
            state.ctx.pillar = Arc::new(state.data.clone());
        }
        Ok(Pillar {
            data: state.data,
            sls: state.sls,
        })
    }

    /// Renders one sls and its includes into a single value (includes first, the file itself
    /// merged last so it wins). An sls already rendered in this compile yields nothing.
    fn render_sls(
        &self,
        name: &str,
        by: &str,
        state: &mut CompileState,
    ) -> Result<Json, PillarError> {
        let empty = || Json::Object(Default::default());
        if !state.seen.insert(name.to_string()) {
            return Ok(empty());
        }
        let Some((path, text)) = read_sls(&*self.tree, name)? else {
            return Err(PillarError::Missing {
                name: name.to_string(),
                by: by.to_string(),
                path: name.replace('.', "/"),
            });
        };
        let ctx = state
            .ctx
            .clone()
            .with_var("sls", Json::String(name.to_string()));
        let rendered = self.engine.render(&path, &text, &ctx)?;
        let mut map = match parse_yaml(&path, &rendered)? {
            Yaml::Null => Default::default(),
            Yaml::Mapping(map) => map,
            _ => {
                return Err(PillarError::Invalid {
                    file: path,
                    message: "a pillar file must be a mapping of keys to values".into(),
                });
            }
        };
        let includes = map.remove("include");
        let mut merged = empty();
        if let Some(includes) = includes {
            let Yaml::Sequence(items) = includes else {
                return Err(PillarError::Invalid {
                    file: path,
                    message: "include must be a list of sls names".into(),
                });
            };
            for item in items {
                // `- name` or `- name: {key: 'a:b'}` (nest the included data under a key).
                let (target, key) = match &item {
                    Yaml::String(target) => (target.clone(), None),
                    Yaml::Mapping(m) if m.len() == 1 => {
                        let Some((k, v)) = m.iter().next() else {
                            continue;
                        };
                        let key = v.get("key").map(yaml_key);
                        (yaml_key(k), key)
                    }
                    _ => {
                        return Err(PillarError::Invalid {
                            file: path,
                            message: format!(
                                "include entry '{}' is not an sls name",
                                yaml_key(&item)
                            ),
                        });
                    }
                };
                let target = resolve_include(name, &path, &target).map_err(|message| {
                    PillarError::Invalid {
                        file: path.clone(),
                        message,
                    }
                })?;
                let mut data =
                    self.render_sls(&target, &format!("the include of {path}"), state)?;
                if let Some(key) = key {
                    for segment in key.rsplit(':') {
                        let mut wrapper = serde_json::Map::new();
                        wrapper.insert(segment.to_string(), data);
                        data = Json::Object(wrapper);
                    }
                }
                deep_merge_into(&mut merged, data);
            }
        }
        deep_merge_into(&mut merged, yaml_to_json(&Yaml::Mapping(map)));
        state.sls.push(name.to_string());
        Ok(merged)
    }
}

struct CompileState {
    data: Json,
    sls: Vec<String>,
    seen: HashSet<String>,
    ctx: TemplateContext,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MemoryTree;
    use serde_json::json;

    fn compile(tree: MemoryTree, id: &str) -> Result<Pillar, PillarError> {
        PillarTree::new(Arc::new(tree)).compile(
            id,
            &json!({"os": "Debian"}),
            &json!({"name": "prod"}),
        )
    }

    #[test]
    fn matched_files_merge_in_top_order() {
        let tree = MemoryTree::new()
            .with(
                "top.sls",
                "base:\n  '*':\n    - common\n  'web*':\n    - web\n  'db*':\n    - db\n",
            )
            .with(
                "common.sls",
                "ntp: {server: pool.ntp.org}\nusers: [root]\nrole: none\n",
            )
            .with(
                "web/init.sls",
                "include:\n  - .tls\nrole: web\nusers: [www]\nntp:\n  iburst: true\n",
            )
            .with("web/tls.sls", "tls: {cert: /etc/ssl/web.pem}\nrole: tls\n")
            .with("db.sls", "role: db\n");
        let pillar = compile(tree.clone(), "web1").unwrap();
        assert_eq!(
            pillar.data,
            json!({
                "ntp": {"server": "pool.ntp.org", "iburst": true},
                "users": ["www"],
                "role": "web",
                "tls": {"cert": "/etc/ssl/web.pem"},
            })
        );
        assert_eq!(pillar.sls, ["common", "web.tls", "web"]);
        let pillar = compile(tree, "db1").unwrap();
        assert_eq!(pillar.data["role"], json!("db"));
        assert_eq!(pillar.sls, ["common", "db"]);
    }

    #[test]
    fn a_pillar_that_expands_past_the_size_limit_is_refused() {
        // 40 KB of text whose aliases expand to 10 MB of JSON.
        let big = format!(
            "a: &a {}\nb: [{}]\n",
            "y".repeat(1_000),
            vec!["*a"; 10_000].join(", ")
        );
        let tree = MemoryTree::new()
            .with("top.sls", "base:\n  '*':\n    - small\n    - big\n")
            .with("small.sls", "x: 1\n")
            .with("big.sls", &big);
        let err = compile(tree, "web1").unwrap_err();
        assert_eq!(
            err,
            PillarError::TooLarge {
                file: "big".into(),
                limit: MAX_PILLAR_BYTES
            }
        );
        assert!(
            err.to_string().contains("over the limit of 8388608 bytes"),
            "{err}"
        );
    }

    #[test]
    fn pillar_files_are_jinja_with_grains_env_and_earlier_pillar() {
        let tree = MemoryTree::new()
            .with("top.sls", "base:\n  '{{ opts.id }}':\n    - a\n    - b\n")
            .with(
                "a.sls",
                "os: {{ grains.os }}\nenv: {{ env.name }}\nport: 80\n",
            )
            .with("b.sls", "url: http://{{ opts.id }}:{{ pillar.port }}\n");
        let pillar = compile(tree, "web1").unwrap();
        assert_eq!(
            pillar.data,
            json!({"os": "Debian", "env": "prod", "port": 80, "url": "http://web1:80"})
        );
    }

    #[test]
    fn include_with_key_nests_data() {
        let tree = MemoryTree::new()
            .with("top.sls", "base:\n  '*':\n    - main\n")
            .with(
                "main.sls",
                "include:\n  - users:\n      key: 'acct:list'\nx: 1\n",
            )
            .with("users.sls", "alice: 1\n");
        assert_eq!(
            compile(tree, "a").unwrap().data,
            json!({"x": 1, "acct": {"list": {"alice": 1}}})
        );
    }

    #[test]
    fn no_top_file_is_an_empty_pillar() {
        assert_eq!(compile(MemoryTree::new(), "a").unwrap().data, json!({}));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let top = "base:\n  '*':\n    - a\n";
        let cases = [
            (
                MemoryTree::new().with("top.sls", top),
                "pillar sls 'a' not found (named in top.sls)",
            ),
            (
                MemoryTree::new()
                    .with("top.sls", top)
                    .with("a.sls", "x: 1\n  y: 2\n"),
                "pillar a.sls, line 2: yaml error:",
            ),
            (
                MemoryTree::new()
                    .with("top.sls", top)
                    .with("a.sls", "x: 1\ny: {{ pillar.get('db:pw') }}\n"),
                "pillar a.sls, line 2: jinja error: undefined value: pillar key 'db:pw' is missing",
            ),
            (
                MemoryTree::new()
                    .with("top.sls", top)
                    .with("a.sls", "- 1\n"),
                "pillar a.sls: a pillar file must be a mapping",
            ),
            (
                MemoryTree::new().with("top.sls", "base:\n  '*': 1\n"),
                "pillar top.sls: target '*'",
            ),
        ];
        for (tree, expected) in cases {
            let err = compile(tree, "a").unwrap_err().to_string();
            assert!(err.starts_with(expected), "got: {err}\nwant: {expected}");
        }
    }
}
