//! The one Jinja renderer for `file.managed` templates, shared by the lifecycle (a pushed
//! project's phases) and `corpus-agent apply --local`, so a template renders the same way in
//! both: the SLS dialect and context, the state's `defaults`/`context`, and Salt's
//! `tplpath`/`tpldir` for `salt://` sources.

use std::path::Path;
use std::sync::Arc;

use corpus_pillar::{SourceTree, TemplateContext, TemplateEngine};
use serde_json::{Map, Value, json};

use super::JinjaRenderer;

/// A renderer resolving `{% include %}`/`{% import %}` in `tree` (the file root) with `ctx`.
pub fn file_renderer(tree: Arc<dyn SourceTree>, ctx: TemplateContext) -> JinjaRenderer {
    let engine = TemplateEngine::new(tree);
    Box::new(move |name: &str, text: &str, extra: &Map<String, Value>| {
        let path = name.strip_prefix("salt://").unwrap_or(name);
        let mut ctx = ctx.clone();
        if path != name {
            let dir = Path::new(path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            ctx = ctx
                .with_var("tplpath", json!(path))
                .with_var("tpldir", json!(dir));
        }
        for (key, value) in extra {
            ctx = ctx.with_var(key, value.clone());
        }
        engine.render(path, text, &ctx).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use corpus_pillar::MemoryTree;

    use super::*;

    fn render(name: &str, text: &str) -> Result<String, String> {
        let tree = MemoryTree::new().with(
            "conf/macros.jinja",
            "{% macro hi(x) %}hi {{ x }}{% endmacro %}",
        );
        let ctx = TemplateContext::new(
            json!({"port": 8080}),
            json!({"id": "n1"}),
            json!({}),
            json!("dev"),
        );
        let render = file_renderer(Arc::new(tree), ctx);
        let mut extra = Map::new();
        extra.insert("who".into(), json!("ops"));
        render(name, text, &extra)
    }

    #[test]
    fn salt_sources_see_tpldir_pillar_grains_and_the_states_context() {
        let out = render(
            "salt://conf/app.conf",
            "{{ tpldir }} {{ tplpath }} {{ pillar.port }} {{ grains.id }} {{ who }}",
        )
        .unwrap();
        assert_eq!(out, "conf conf/app.conf 8080 n1 ops");
    }

    #[test]
    fn templates_import_from_the_file_root() {
        let out = render(
            "salt://conf/app.conf",
            "{% from 'conf/macros.jinja' import hi %}{{ hi(who) }}",
        )
        .unwrap();
        assert_eq!(out, "hi ops");
    }
}
