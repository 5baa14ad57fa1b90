//! From a file root to a [`Plan`]: render each sls (Jinja, then YAML), follow `include:` in
//! Salt's order, apply `extend`/`exclude`, expand `names`, order by declaration and `order:`,
//! then pull every requisite target before its dependant and reject cycles and dangling targets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

use corpus_pillar::tree::{normalize_path, read_sls, resolve_include};
use corpus_pillar::yaml::{parse_yaml, top_level_key_at, yaml_key, yaml_to_json};
use corpus_pillar::{RenderError, SourceTree, TemplateContext, TemplateEngine, TopFile};

use crate::error::{Location, StateError};
use crate::high::{Exclude, SlsFile, StateCall, StateDecl, check_function, parse_sls};
use crate::plan::{Chunk, Plan, Requisite, RequisiteKind};
use crate::requisites::{
    RawRequisite, UNSUPPORTED_REQUISITES, kind_name, parse_requisites, requisite_kind,
};

/// A plan and the sls files it was built from.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedPlan {
    pub plan: Plan,
    /// Every sls rendered, in the order Salt would render them (includes before includers).
    pub sls: Vec<String>,
}

/// A state tree (Salt's file_roots) bound to a Jinja engine. Imported templates are cached, so
/// make one per version of the tree.
pub struct StateTree {
    tree: Arc<dyn SourceTree>,
    engine: TemplateEngine,
}

impl StateTree {
    pub fn new(tree: Arc<dyn SourceTree>) -> StateTree {
        StateTree {
            engine: TemplateEngine::new(tree.clone()),
            tree,
        }
    }

    /// The sls names `top.sls` assigns to agent `agent_id` (grains from `ctx`), in order.
    pub fn top_sls(
        &self,
        agent_id: &str,
        ctx: &TemplateContext,
    ) -> Result<Vec<String>, StateError> {
        let Some(text) = self.tree.read("top.sls")? else {
            return Err(StateError::Invalid {
                at: Location {
                    file: "top.sls".into(),
                    ..Location::default()
                },
                message: "the file root has no top.sls: create one, or name the sls to apply"
                    .into(),
            });
        };
        let ctx = ctx
            .clone()
            .with_var("opts", serde_json::json!({ "id": agent_id }));
        let rendered = self.render_text("top.sls", &text, &ctx)?;
        let yaml = parse_rendered("top.sls", &rendered)?;
        Ok(TopFile::from_yaml("top.sls", &yaml)?.sls_for(agent_id, &ctx.grains))
    }

    /// Salt's highstate: the sls `top.sls` assigns to `agent_id`, rendered and planned.
    pub fn render_highstate(
        &self,
        agent_id: &str,
        ctx: &TemplateContext,
    ) -> Result<RenderedPlan, StateError> {
        let names = self.top_sls(agent_id, ctx)?;
        if names.is_empty() {
            return Err(StateError::NoTopMatch {
                id: agent_id.to_string(),
            });
        }
        self.render_sls(&names, ctx)
    }

    /// Renders and plans the named sls (dotted names, `web.nginx`) and what they include.
    pub fn render_sls<S: AsRef<str>>(
        &self,
        names: &[S],
        ctx: &TemplateContext,
    ) -> Result<RenderedPlan, StateError> {
        let mut loaded = Loaded::default();
        for name in names {
            self.load(name.as_ref(), "the request", ctx, &mut loaded)?;
        }
        let decls = apply_extends_and_excludes(loaded.decls, loaded.extends, &loaded.excludes)?;
        let plan = plan(decls)?;
        Ok(RenderedPlan {
            plan,
            sls: loaded.sls,
        })
    }

    /// Renders template file `source` (`salt://path` or a root-relative path) with `ctx`: what
    /// `file.managed` does with `source:` and `template: jinja`.
    pub fn render_file(&self, source: &str, ctx: &TemplateContext) -> Result<String, StateError> {
        let path = normalize_path(source)?;
        let text = self.read_file(&path)?;
        let ctx = ctx
            .clone()
            .with_var("tplpath", Json::String(path.clone()))
            .with_var("tpldir", Json::String(parent_dir(&path)));
        self.render_text(&path, &text, &ctx)
    }

    /// Reads file `source` (`salt://path` or root-relative) as is.
    pub fn read_file(&self, source: &str) -> Result<String, StateError> {
        let path = normalize_path(source)?;
        self.tree.read(&path)?.ok_or_else(|| StateError::Invalid {
            at: Location {
                file: path.clone(),
                ..Location::default()
            },
            message: format!("source file salt://{path} does not exist in the file root"),
        })
    }

    fn render_text(
        &self,
        path: &str,
        text: &str,
        ctx: &TemplateContext,
    ) -> Result<String, StateError> {
        self.engine
            .render(path, text, ctx)
            .map_err(|err| render_error(path, text, err))
    }

    fn load(
        &self,
        name: &str,
        by: &str,
        ctx: &TemplateContext,
        loaded: &mut Loaded,
    ) -> Result<(), StateError> {
        if !loaded.seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some((path, text)) = read_sls(&*self.tree, name)? else {
            return Err(StateError::SlsNotFound {
                name: name.to_string(),
                by: by.to_string(),
                path: name.replace('.', "/"),
            });
        };
        let dir = parent_dir(&path);
        let ctx = ctx
            .clone()
            .with_var("sls", Json::String(name.to_string()))
            .with_var("slspath", Json::String(dir.clone()))
            .with_var("tpldir", Json::String(dir))
            .with_var("tplpath", Json::String(path.clone()));
        let rendered = self.render_text(&path, &text, &ctx)?;
        let yaml = parse_rendered(&path, &rendered)?;
        let SlsFile {
            includes,
            excludes,
            extends,
            states,
        } = parse_sls(name, &path, &rendered, yaml)?;
        // Salt renders includes after the file itself but numbers their states first.
        for include in includes {
            let target =
                resolve_include(name, &path, &include).map_err(|message| StateError::Invalid {
                    at: Location {
                        file: path.clone(),
                        line: None,
                        state: None,
                    },
                    message,
                })?;
            self.load(&target, &format!("the include of {path}"), &ctx, loaded)?;
        }
        for decl in states {
            if let Some(first) = loaded.ids.get(&decl.id) {
                return Err(StateError::ConflictingId {
                    id: decl.id,
                    first: first.clone(),
                    second: name.to_string(),
                });
            }
            loaded.ids.insert(decl.id.clone(), name.to_string());
            loaded.decls.push(decl);
        }
        loaded.extends.extend(extends);
        loaded.excludes.extend(excludes);
        loaded.sls.push(name.to_string());
        Ok(())
    }
}

#[derive(Default)]
struct Loaded {
    seen: HashSet<String>,
    /// State id -> the sls declaring it, to reject duplicates across files.
    ids: HashMap<String, String>,
    sls: Vec<String>,
    decls: Vec<StateDecl>,
    extends: Vec<StateDecl>,
    excludes: Vec<Exclude>,
}

fn parent_dir(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_default()
}

fn render_error(path: &str, source: &str, err: RenderError) -> StateError {
    let state = match err.line {
        Some(line) if err.file == path => top_level_key_at(source, line),
        _ => None,
    };
    StateError::Render {
        at: Location {
            file: err.file,
            line: err.line,
            state,
        },
        message: err.message,
    }
}

fn parse_rendered(path: &str, rendered: &str) -> Result<Yaml, StateError> {
    parse_yaml(path, rendered).map_err(|err| StateError::Yaml {
        at: Location {
            file: err.file,
            line: err.line,
            state: err.line.and_then(|line| top_level_key_at(rendered, line)),
        },
        message: err.message,
    })
}

/// Applies `extend:` (requisites appended, other arguments replaced) and `exclude:`.
fn apply_extends_and_excludes(
    mut decls: Vec<StateDecl>,
    extends: Vec<StateDecl>,
    excludes: &[Exclude],
) -> Result<Vec<StateDecl>, StateError> {
    for extension in extends {
        let Some(target) = decls.iter_mut().find(|d| d.id == extension.id) else {
            return Err(StateError::Invalid {
                at: extension.at,
                message: format!(
                    "extend names state '{}', which is not declared: include the sls that declares it",
                    extension.id
                ),
            });
        };
        for call in extension.calls {
            match target.calls.iter_mut().find(|c| c.module == call.module) {
                Some(existing) => {
                    if let Some(function) = call.function {
                        existing.function = Some(function);
                    }
                    for (key, value) in call.args {
                        let appendable = requisite_kind(&key).is_some();
                        match existing.args.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, Yaml::Sequence(items))) if appendable => match value {
                                Yaml::Sequence(more) => items.extend(more),
                                other => items.push(other),
                            },
                            Some((_, slot)) => *slot = value,
                            None => existing.args.push((key, value)),
                        }
                    }
                }
                None => {
                    let Some(function) = &call.function else {
                        return Err(StateError::Invalid {
                            at: extension.at.clone(),
                            message: format!(
                                "extend adds module '{}' to state '{}' without a function: write {}.<function>",
                                call.module, extension.id, call.module
                            ),
                        });
                    };
                    check_function(&call.module, function, &extension.at)?;
                    target.calls.push(call);
                }
            }
        }
    }
    decls.retain(|d| {
        !excludes.iter().any(|e| match e {
            Exclude::Id(id) => *id == d.id,
            Exclude::Sls(sls) => *sls == d.sls,
        })
    });
    Ok(decls)
}

/// Where `order:` puts a chunk: explicit numbers (and `first`) before unordered chunks, negative
/// numbers and `last` after them, as Salt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey(u8, i64);

const UNORDERED: OrderKey = OrderKey(1, 0);

fn order_key(value: &Yaml, at: &Location) -> Result<OrderKey, StateError> {
    match value {
        Yaml::Number(n) => match n.as_i64() {
            Some(n) if n >= 0 => Ok(OrderKey(0, n)),
            Some(n) => Ok(OrderKey(2, n)),
            None => Err(StateError::Invalid {
                at: at.clone(),
                message: format!("order: {n} is not an integer: use a whole number, first or last"),
            }),
        },
        Yaml::String(s) if s == "first" => Ok(OrderKey(0, 0)),
        Yaml::String(s) if s == "last" => Ok(OrderKey(2, 0)),
        other => Err(StateError::Invalid {
            at: at.clone(),
            message: format!(
                "order: {} is not valid: use a whole number, first or last",
                yaml_key(other)
            ),
        }),
    }
}

/// A chunk before ordering: Salt's low chunk plus what planning needs.
struct Low {
    chunk: Chunk,
    at: Location,
    order: OrderKey,
    requisites: Vec<RawRequisite>,
    requisites_in: Vec<RawRequisite>,
}

fn scalar_string(value: &Yaml, what: &str, at: &Location) -> Result<String, StateError> {
    match value {
        Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_) => Ok(yaml_key(value)),
        _ => Err(StateError::Invalid {
            at: at.clone(),
            message: format!("{what} must be a string"),
        }),
    }
}

/// Expands one module call of a declaration into low chunks (one per `names` entry).
fn expand(decl: &StateDecl, call: &StateCall, out: &mut Vec<Low>) -> Result<(), StateError> {
    let at = &decl.at;
    let function = call.function.clone().unwrap_or_default();
    let mut args = Map::new();
    let mut name = decl.id.clone();
    let mut names: Option<Yaml> = None;
    let mut order = UNORDERED;
    let mut requisites = Vec::new();
    let mut requisites_in = Vec::new();
    for (key, value) in &call.args {
        match key.as_str() {
            "name" => name = scalar_string(value, "name", at)?,
            "names" => names = Some(value.clone()),
            "order" => order = order_key(value, at)?,
            _ => {
                if let Some((kind, inverted)) = requisite_kind(key) {
                    let parsed = parse_requisites(kind, value.clone(), key, at)?;
                    if inverted {
                        requisites_in.extend(parsed);
                    } else {
                        requisites.extend(parsed);
                    }
                } else if UNSUPPORTED_REQUISITES.contains(&key.as_str())
                    || key
                        .strip_suffix("_in")
                        .is_some_and(|base| UNSUPPORTED_REQUISITES.contains(&base))
                {
                    return Err(StateError::Invalid {
                        at: at.clone(),
                        message: format!(
                            "requisite '{key}' is not supported: use require, watch, onchanges, \
                             onfail, listen, prereq, their _any forms or their _in forms"
                        ),
                    });
                } else {
                    args.insert(key.clone(), yaml_to_json(value));
                }
            }
        }
    }
    // `names:` makes one chunk per entry; an entry may be `- name: [{arg: value}]` to override.
    let mut variants: Vec<(String, Map<String, Json>)> = Vec::new();
    match names {
        None => variants.push((name, Map::new())),
        Some(Yaml::Sequence(items)) => {
            for item in items {
                match item {
                    Yaml::Mapping(map) if map.len() == 1 => {
                        for (n, overrides) in map {
                            let mut extra = Map::new();
                            if let Yaml::Sequence(pairs) = overrides {
                                for pair in pairs {
                                    if let Yaml::Mapping(pair) = pair {
                                        for (k, v) in pair {
                                            extra.insert(yaml_key(&k), yaml_to_json(&v));
                                        }
                                    }
                                }
                            }
                            variants.push((yaml_key(&n), extra));
                        }
                    }
                    other => {
                        variants.push((scalar_string(&other, "each of names", at)?, Map::new()))
                    }
                }
            }
        }
        Some(_) => {
            return Err(StateError::Invalid {
                at: at.clone(),
                message: "names must be a list".into(),
            });
        }
    }
    for (name, extra) in variants {
        let mut chunk_args = args.clone();
        chunk_args.extend(extra);
        out.push(Low {
            chunk: Chunk {
                id: decl.id.clone(),
                name,
                sls: decl.sls.clone(),
                module: call.module.clone(),
                function: function.clone(),
                args: chunk_args,
                requisites: Vec::new(),
            },
            at: at.clone(),
            order,
            requisites: requisites.clone(),
            requisites_in: requisites_in.clone(),
        });
    }
    Ok(())
}

/// Orders the declarations into a plan.
fn plan(decls: Vec<StateDecl>) -> Result<Plan, StateError> {
    let mut lows = Vec::new();
    for decl in &decls {
        for call in &decl.calls {
            expand(decl, call, &mut lows)?;
        }
    }
    // Declaration order, then `order:` (a stable sort keeps declaration order within a rank).
    lows.sort_by_key(|low| low.order);

    // The chunks each requisite names, in plan order, from an index of ids and names and one
    // of SLS names: a tree of n states with n requisites costs n lookups, not n * n matches.
    let mut by_label: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_sls: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, low) in lows.iter().enumerate() {
        let c = &low.chunk;
        by_label.entry(c.id.as_str()).or_default().push(j);
        if c.name != c.id {
            by_label.entry(c.name.as_str()).or_default().push(j);
        }
        by_sls.entry(c.sls.as_str()).or_default().push(j);
    }
    let matching = |req: &RawRequisite| -> Vec<usize> {
        let target = req.target.as_str();
        match req.module.as_deref() {
            Some("sls") => by_sls.get(target).cloned().unwrap_or_default(),
            Some(module) => by_label
                .get(target)
                .map(|js| {
                    js.iter()
                        .copied()
                        .filter(|&j| lows[j].chunk.module == module)
                        .collect()
                })
                .unwrap_or_default(),
            None => by_label.get(target).cloned().unwrap_or_default(),
        }
    };
    // edges[i]: (kind, j) meaning chunk i depends on chunk j.
    let mut edges: Vec<Vec<(RequisiteKind, usize)>> = vec![Vec::new(); lows.len()];
    for (i, low) in lows.iter().enumerate() {
        for req in &low.requisites {
            let targets = matching(req);
            if targets.is_empty() {
                return Err(dangling(low, req, false));
            }
            for j in targets {
                edges[i].push((req.kind, j));
            }
        }
        for req in &low.requisites_in {
            let dependants = matching(req);
            if dependants.is_empty() {
                return Err(dangling(low, req, true));
            }
            for j in dependants {
                edges[j].push((req.kind, i));
            }
        }
    }
    for list in &mut edges {
        // Visit targets in plan order; keep the first occurrence of each (kind, target).
        let mut seen = HashSet::new();
        list.retain(|edge| seen.insert(*edge));
        list.sort_by_key(|&(_, j)| j);
    }

    // What must run first: a requisite's target, except that a `prereq` chunk runs before its
    // target and `listen` does not order at all.
    let mut run_after: Vec<Vec<usize>> = vec![Vec::new(); lows.len()];
    for (i, list) in edges.iter().enumerate() {
        for &(kind, j) in list {
            match kind {
                RequisiteKind::Listen => {}
                RequisiteKind::Prereq => run_after[j].push(i),
                _ => run_after[i].push(j),
            }
        }
    }
    for list in &mut run_after {
        list.sort_unstable();
        list.dedup();
    }

    // Depth-first: each chunk in order, what it runs after pulled in first.
    let mut emitted: Vec<usize> = Vec::with_capacity(lows.len());
    let mut position: HashMap<usize, usize> = HashMap::new();
    let mut on_stack = vec![false; lows.len()];
    for start in 0..lows.len() {
        visit(
            start,
            &run_after,
            &lows,
            &mut on_stack,
            &mut position,
            &mut emitted,
            &mut Vec::new(),
        )?;
    }

    let mut slots: Vec<Option<Low>> = lows.into_iter().map(Some).collect();
    let mut chunks = Vec::with_capacity(emitted.len());
    for &i in &emitted {
        let Some(low) = slots[i].take() else { continue };
        let mut chunk = low.chunk;
        chunk.requisites = edges[i]
            .iter()
            .filter_map(|&(kind, j)| position.get(&j).map(|&target| Requisite { kind, target }))
            .collect();
        chunks.push(chunk);
    }
    Ok(Plan { chunks })
}

fn dangling(low: &Low, req: &RawRequisite, inverted: bool) -> StateError {
    let suffix = if inverted { "_in" } else { "" };
    StateError::Dangling {
        at: low.at.clone(),
        kind: format!("{}{suffix}", kind_name(req.kind)),
        target: req.describe(),
    }
}

fn visit(
    i: usize,
    edges: &[Vec<usize>],
    lows: &[Low],
    on_stack: &mut [bool],
    position: &mut HashMap<usize, usize>,
    emitted: &mut Vec<usize>,
    stack: &mut Vec<usize>,
) -> Result<(), StateError> {
    if position.contains_key(&i) {
        return Ok(());
    }
    if on_stack[i] {
        let from = stack.iter().position(|&s| s == i).unwrap_or(0);
        let mut ids: Vec<String> = stack[from..]
            .iter()
            .map(|&s| describe_chunk(&lows[s].chunk))
            .collect();
        ids.push(describe_chunk(&lows[i].chunk));
        return Err(StateError::Cycle { ids });
    }
    on_stack[i] = true;
    stack.push(i);
    for &j in &edges[i] {
        visit(j, edges, lows, on_stack, position, emitted, stack)?;
    }
    stack.pop();
    on_stack[i] = false;
    position.insert(i, emitted.len());
    emitted.push(i);
    Ok(())
}

fn describe_chunk(chunk: &Chunk) -> String {
    if chunk.name == chunk.id {
        format!("{} '{}'", chunk.module, chunk.id)
    } else {
        format!("{} '{}' ({})", chunk.module, chunk.id, chunk.name)
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
