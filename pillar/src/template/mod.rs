//! The Jinja dialect shared by pillar and state files: minijinja configured the way Salt
//! configures Jinja (trailing newline kept, no auto-escaping, Python-style methods), with Salt's
//! context (`pillar`, `grains`, `opts`, `salt['mod.fun']`, `sls`, `tpldir`, ...), its own
//! statements (`import_yaml`, `load_yaml`, any-expression `do`, through [`prepass`]), mutable
//! dicts and lists ([`values`]) and its filters ([`filters`]). It lives here because `states`
//! depends on `pillar`, not the reverse.
//!
//! Templates are sandboxed: `import`/`include`/`extends`/`import_yaml` go through a
//! [`SourceTree`], and the only way out to the machine is a [`HostFunctions`] the caller chooses
//! to give (the agent for `apply --local`; never the master).

mod filters;
mod functions;
mod host;
pub mod limits;
mod prepass;
mod python;
mod pyyaml;
mod salt;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::Value as Json;

pub use host::{HostFunctions, PathKind};

use crate::tree::{SourceTree, normalize_path};
use salt::{Args, Salt, SaltScope, traverse_value};
use values::{LazyValue, from_json};

/// A template failed to render. `file` and `line` point at the template where the error occurred
/// (an imported file when the error is inside it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: jinja error: {message}", line_suffix(*line))]
pub struct RenderError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// What a template sees. Values are shared (`Arc`) because the same pillar is handed to every
/// file of a render.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    /// The agent's compiled pillar, reachable as `pillar` and `salt['pillar.get']`.
    pub pillar: Arc<Json>,
    /// Facts about the agent, reachable as `grains` and `salt['grains.get']`.
    pub grains: Arc<Json>,
    /// Project-wide shared data (`common`).
    pub common: Arc<Json>,
    /// The environment being deployed (`env`): its name and settings.
    pub env: Arc<Json>,
    /// Extra top-level variables: `sls`, `tpldir`, a `file.managed` state's `context`/`defaults`.
    pub vars: BTreeMap<String, Json>,
    /// The machine rendered for, when rendering runs on it (`apply --local`): what `cmd.run`,
    /// `user.info`, `file.file_exists` and friends ask. `None` on the master, where they fail.
    pub host: Option<Arc<dyn HostFunctions>>,
    /// `pillar`, `grains` and `common` as template values, shared by the clones of this context
    /// so that the files of one run convert them once (and, as in Salt, see each other's
    /// in-place changes to them).
    converted: Arc<ConvertedData>,
}

/// One slot per converted field: the JSON it came from (the fields are public and may be
/// replaced, so a slot is only reused for the same `Arc`) and its lazy conversion.
type ConvertedSlot = std::sync::Mutex<Option<(Arc<Json>, Arc<LazyValue>)>>;

#[derive(Default)]
struct ConvertedData {
    pillar: ConvertedSlot,
    grains: ConvertedSlot,
    common: ConvertedSlot,
    /// The variables every render of the context shares (see [`TemplateContext::to_value`]).
    shared: std::sync::Mutex<Option<(SharedKey, SharedVars)>>,
}

impl fmt::Debug for ConvertedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvertedData").finish_non_exhaustive()
    }
}

/// The variables every render of a context shares, by name.
type SharedVars = Arc<BTreeMap<String, Value>>;

/// What the shared variables were made from: the same `Arc`s (held, so an address is never
/// reused while it keys the slot) and the same `opts` override.
struct SharedKey {
    pillar: Arc<Json>,
    grains: Arc<Json>,
    common: Arc<Json>,
    env: Arc<Json>,
    tree: Arc<dyn SourceTree>,
    host: Option<Arc<dyn HostFunctions>>,
    opts: Option<Json>,
}

impl SharedKey {
    fn of(ctx: &TemplateContext, tree: &Arc<dyn SourceTree>) -> SharedKey {
        SharedKey {
            pillar: ctx.pillar.clone(),
            grains: ctx.grains.clone(),
            common: ctx.common.clone(),
            env: ctx.env.clone(),
            tree: tree.clone(),
            host: ctx.host.clone(),
            opts: ctx.vars.get("opts").cloned(),
        }
    }

    fn same(&self, other: &SharedKey) -> bool {
        fn same_object<T: ?Sized>(a: &Arc<T>, b: &Arc<T>) -> bool {
            std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
        }
        same_object(&self.pillar, &other.pillar)
            && same_object(&self.grains, &other.grains)
            && same_object(&self.common, &other.common)
            && same_object(&self.env, &other.env)
            && same_object(&self.tree, &other.tree)
            && match (&self.host, &other.host) {
                (Some(a), Some(b)) => same_object(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.opts == other.opts
    }
}

fn converted(slot: &ConvertedSlot, json: &Arc<Json>) -> Arc<LazyValue> {
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((source, value)) = &*slot
        && Arc::ptr_eq(source, json)
    {
        return value.clone();
    }
    let value = LazyValue::new(json.clone());
    *slot = Some((json.clone(), value.clone()));
    value
}

impl TemplateContext {
    pub fn new(pillar: Json, grains: Json, common: Json, env: Json) -> TemplateContext {
        TemplateContext {
            pillar: Arc::new(pillar),
            grains: Arc::new(grains),
            common: Arc::new(common),
            env: Arc::new(env),
            vars: BTreeMap::new(),
            host: None,
            converted: Arc::default(),
        }
    }

    /// Returns a copy with an extra top-level variable.
    pub fn with_var(mut self, name: &str, value: Json) -> TemplateContext {
        self.vars.insert(name.to_string(), value);
        self
    }

    /// Returns a copy whose render-time functions may ask `host`.
    pub fn with_host(mut self, host: Arc<dyn HostFunctions>) -> TemplateContext {
        self.host = Some(host);
        self
    }

    /// Salt's `opts`: corpus's few real settings plus what formulas read from it
    /// (`saltenv`, `renderer`, `file_roots`, ...); `vars["opts"]` overrides. makina-states trees
    /// also get `ms_project` from `common`.
    fn opts(&self) -> Json {
        let mut opts = serde_json::json!({
            "id": self.grains.get("id").cloned().unwrap_or(Json::Null),
            "saltenv": "base",
            "environment": "base",
            "pillarenv": null,
            "renderer": "jinja|yaml",
            "file_client": "local",
            "file_roots": {"base": ["/srv/salt"]},
            "pillar_roots": {"base": ["/srv/pillar"]},
            "cachedir": "/var/cache/salt/minion",
            "config_dir": "/etc/salt",
            "conf_file": "/etc/salt/minion",
            "hash_type": "sha256",
            "test": false,
        });
        if let (Json::Object(map), Some(Json::Object(extra))) = (&mut opts, self.vars.get("opts")) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        opts
    }

    /// Salt's path variables, derived from `sls` and `tplpath` where the caller gave them:
    /// `slspath`, `slsdotpath`, `slscolonpath`, `sls_path`, `tplfile`, `tpldir` (`.` at the
    /// root), `tpldot`.
    fn path_vars(&self) -> BTreeMap<String, Json> {
        let mut out = BTreeMap::new();
        let text = |name: &str| {
            self.vars
                .get(name)
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        if let Some(tplpath) = text("tplpath") {
            out.insert("tplfile".into(), Json::String(tplpath.clone()));
            let dir = tplpath
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            let tpldir = text("tpldir").filter(|d| !d.is_empty()).unwrap_or(dir);
            let tpldir = if tpldir.is_empty() {
                ".".to_string()
            } else {
                tpldir
            };
            out.insert("tpldot".into(), Json::String(tpldir.replace('/', ".")));
            out.insert("tpldir".into(), Json::String(tpldir));
        }
        if let Some(sls) = text("sls") {
            let slspath = text("slspath").unwrap_or_else(|| {
                sls.rsplit_once('.')
                    .map(|(d, _)| d.replace('.', "/"))
                    .unwrap_or_default()
            });
            out.insert("slsdotpath".into(), Json::String(slspath.replace('/', ".")));
            out.insert(
                "slscolonpath".into(),
                Json::String(slspath.replace('/', ":")),
            );
            out.insert("sls_path".into(), Json::String(slspath.replace('/', "_")));
            out.insert("slspath".into(), Json::String(slspath));
        }
        out
    }

    fn to_value(&self, tree: &Arc<dyn SourceTree>) -> Value {
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        for (name, value) in &self.vars {
            map.insert(name.clone(), from_json(value));
        }
        for (name, value) in self.path_vars() {
            map.insert(name, from_json(&value));
        }
        // The shared variables win over a var of the same name, as before they were shared.
        for (name, value) in self.shared(tree).iter() {
            map.insert(name.clone(), value.clone());
        }
        Value::from(map)
    }

    /// `opts`, `salt`, `pillar`, `grains`, `saltenv`, `common` and `env`: made once for the
    /// clones of this context that render from `tree` (the files of one run), as Salt shares
    /// `__opts__` between renders. Converting them for each of 1,000 file templates was a
    /// tenth of a no-op `apply --local` (`bench/apply`).
    fn shared(&self, tree: &Arc<dyn SourceTree>) -> SharedVars {
        let key = SharedKey::of(self, tree);
        let mut slot = self
            .converted
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((made_from, shared)) = &*slot
            && made_from.same(&key)
        {
            return shared.clone();
        }
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        let mut opts = self.opts();
        if self.common.as_object().is_some_and(|c| !c.is_empty())
            && let Json::Object(map) = &mut opts
        {
            let project = functions::makina_project(&self.common);
            map.insert("ms_project".into(), project);
        }
        let opts = from_json(&opts);
        let pillar = converted(&self.converted.pillar, &self.pillar);
        let grains = converted(&self.converted.grains, &self.grains);
        let scope = Arc::new(SaltScope {
            pillar: pillar.clone(),
            grains: grains.clone(),
            opts: opts.clone(),
            common: self.common.clone(),
            tree: Some(tree.clone()),
            host: self.host.clone(),
        });
        map.insert(
            "pillar".into(),
            Value::from_object(Lookup {
                what: "pillar",
                data: pillar,
            }),
        );
        map.insert(
            "grains".into(),
            Value::from_object(Lookup {
                what: "grains",
                data: grains,
            }),
        );
        map.insert("opts".into(), opts);
        map.insert("salt".into(), Value::from_object(Salt(scope)));
        map.insert("saltenv".into(), Value::from("base"));
        let common = converted(&self.converted.common, &self.common);
        map.insert("common".into(), common.get().clone());
        map.insert("env".into(), from_json(&self.env));
        let shared = Arc::new(map);
        *slot = Some((key, shared.clone()));
        shared
    }
}

/// Instructions one template render may execute (minijinja fuel).
pub const TEMPLATE_FUEL: u64 = 50_000_000;

/// A Jinja environment bound to one source tree. Imported templates are cached, so build one per
/// version of the tree (per render job), not one per process.
pub struct TemplateEngine {
    env: Environment<'static>,
    tree: Arc<dyn SourceTree>,
    inline: Arc<InlineSources>,
}

/// Marks the internal name of a template rendered from a given text (see [`InlineSources`]);
/// never part of a tree path.
const INLINE_MARK: char = '\u{1}';

/// Texts handed to [`TemplateEngine::render`], by internal name (`<file>\u{1}<n>`), so that the
/// environment compiles each distinct text once and caches it like an imported template: a
/// `salt://` template shared by 1,000 `file.managed` states is parsed once per run, not 1,000
/// times. The mark keeps these names apart from the tree's, and [`display_name`] drops it
/// again in error messages; relative imports resolve against the directory, which it leaves
/// alone.
#[derive(Debug, Default)]
struct InlineSources {
    /// By file: each distinct text rendered under that name, with its internal name.
    names: std::sync::Mutex<std::collections::HashMap<String, Vec<(String, String)>>>,
    texts: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

impl InlineSources {
    /// The internal name of `source` rendered as `file`, registering it on first use.
    fn name_for(&self, file: &str, source: &str) -> String {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let known = names.get(file).and_then(|texts| {
            texts
                .iter()
                .find(|(text, _)| text == source)
                .map(|(_, name)| name.clone())
        });
        if let Some(name) = known {
            return name;
        }
        let texts = names.entry(file.to_string()).or_default();
        let name = format!("{file}{INLINE_MARK}{}", texts.len());
        texts.push((source.to_string(), name.clone()));
        self.texts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), (file.to_string(), source.to_string()));
        name
    }

    /// The template text (after the pre-pass) of an internal name.
    fn load(&self, name: &str) -> Option<String> {
        let texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
        let (file, source) = texts.get(name)?;
        Some(limits::guard_template(&prepass::rewrite(source, file)))
    }
}

/// A template's name as the user knows it: its file, without the inline mark.
fn display_name(name: &str) -> &str {
    name.split(INLINE_MARK).next().unwrap_or(name)
}

impl fmt::Debug for TemplateEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TemplateEngine")
    }
}

impl TemplateEngine {
    pub fn new(tree: Arc<dyn SourceTree>) -> TemplateEngine {
        let mut env = Environment::new();
        // SemiStrict: printing or iterating a missing value fails (so a typo in a pillar key is an
        // error, not an empty string in a config file), while `{% if pillar.x %}` still works.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        // Templates come from users: a render may execute at most this many instructions, so a
        // runaway loop fails with a clear error instead of holding a master thread forever.
        // Rendering 1,000 templated states uses well under 1% of it.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(limits::counting_formatter);
        // Jinja drops a template's final newline (also in imports and includes, as in Salt);
        // `render` then restores it on the file rendered, as Salt's renderer does.
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        add_salt_filters(&mut env, &tree);
        env.set_path_join_callback(join_template_path);
        let loader_tree = tree.clone();
        let inline = Arc::new(InlineSources::default());
        let loader_inline = inline.clone();
        env.set_loader(move |name| {
            if name.contains(INLINE_MARK) {
                return Ok(loader_inline.load(name));
            }
            // Not TemplateNotFound: minijinja would replace the reason with a generic message.
            let path = normalize_path(name)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let source = loader_tree
                .read(&path)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(source.map(|text| limits::guard_template(&prepass::rewrite(&text, &path))))
        });
        TemplateEngine { env, tree, inline }
    }

    /// Renders `source` as the template named `file` (its path in the tree, used for relative
    /// imports and in error messages).
    pub fn render(
        &self,
        file: &str,
        source: &str,
        ctx: &TemplateContext,
    ) -> Result<String, RenderError> {
        let newline = trailing_newline(source);
        let name = self.inline.name_for(file, source);
        let mut output = limits::CappedOutput::default();
        let rendered = self.env.get_template(&name).and_then(|template| {
            template
                .render_captured_to(ctx.to_value(&self.tree), &mut output)
                .map(|_| ())
        });
        if output.overflowed {
            return Err(RenderError {
                file: file.to_string(),
                line: None,
                message: format!(
                    "the rendered text is over the limit of {} bytes; render less, or split \
                     the file",
                    limits::MAX_TEMPLATE_OUTPUT
                ),
            });
        }
        rendered.map_err(|err| render_error(file, &err))?;
        let mut text = String::from_utf8(output.bytes).map_err(|err| RenderError {
            file: file.to_string(),
            line: None,
            message: format!("the rendered text is not UTF-8: {err}"),
        })?;
        text.push_str(newline);
        Ok(text)
    }
}

/// Salt's renderer notes whether the template ends in a newline and appends it to the output,
/// whatever the last tag stripped: `a{% endif -%}\n` renders `a\n`.
fn trailing_newline(source: &str) -> &'static str {
    if source.ends_with("\r\n") {
        "\r\n"
    } else if source.ends_with('\n') {
        "\n"
    } else {
        ""
    }
}

fn add_salt_filters(env: &mut Environment<'static>, tree: &Arc<dyn SourceTree>) {
    env.add_filter("yaml", filters::filter_yaml);
    env.add_filter("json", filters::filter_json);
    env.add_filter("tojson", filters::filter_tojson);
    env.add_filter("load_yaml", filters::filter_load_yaml);
    env.add_filter("load_json", filters::filter_load_json);
    env.add_filter("traverse", filters::filter_traverse);
    env.add_filter("regex_replace", filters::filter_regex_replace);
    env.add_filter("regex_search", filters::filter_regex_search);
    env.add_filter("regex_match", filters::filter_regex_match);
    env.add_filter("to_bool", filters::filter_to_bool);
    env.add_filter("quote", filters::filter_quote);
    env.add_filter("yaml_encode", filters::filter_yaml_encode);
    env.add_filter("yaml_dquote", filters::filter_yaml_dquote);
    env.add_filter("yaml_squote", filters::filter_yaml_squote);
    env.add_filter("sequence", filters::filter_sequence);
    env.add_filter("is_list", filters::filter_is_list);
    env.add_filter("unique", filters::filter_unique);
    env.add_test("match", filters::test_match);
    env.add_filter("__percent", python::percent);
    env.add_function("__dict", filters::make_mutable);
    env.add_function("__list", filters::make_mutable);
    env.add_function("__load_data", filters::load_data);
    env.add_function("__guard", limits::guard);
    let tree = tree.clone();
    let imports = Arc::new(filters::ImportCache::default());
    env.add_function(
        "__import_data",
        move |path: &str, from: &str, format: &str| {
            filters::import_data(&tree, &imports, path, from, format)
        },
    );
}

/// Salt-style relative imports: `./x.jinja` and `../x.jinja` resolve against the importing file;
/// anything else is relative to the root of the tree.
pub(crate) fn join_template_path<'s>(name: &'s str, parent: &'s str) -> std::borrow::Cow<'s, str> {
    let name = name.strip_prefix("salt://").unwrap_or(name);
    if !(name.starts_with("./") || name.starts_with("../")) {
        return name.into();
    }
    let mut parts: Vec<&str> = parent.split('/').collect();
    parts.pop();
    for segment in name.split('/') {
        match segment {
            "." | "" => {}
            ".." => {
                if parts.pop().is_none() {
                    // Leave the `..` in; the loader refuses it with a clear message.
                    return name.into();
                }
            }
            other => parts.push(other),
        }
    }
    parts.join("/").into()
}

fn render_error(file: &str, err: &minijinja::Error) -> RenderError {
    // An error inside an imported or included template arrives wrapped: report the innermost
    // template's file and line, and say where it was pulled in from.
    let mut chain = vec![err];
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        match inner.downcast_ref::<minijinja::Error>() {
            Some(jinja) => chain.push(jinja),
            None => break,
        }
        source = inner.source();
    }
    let innermost = chain
        .iter()
        .rev()
        .find(|e| e.line().is_some())
        .copied()
        .unwrap_or(err);
    let mut message = match innermost.detail() {
        Some(detail) => format!("{}: {}", innermost.kind(), detail),
        None => innermost.kind().to_string(),
    };
    if innermost.kind() == ErrorKind::UndefinedError && !message.contains("give a default") {
        message.push_str(
            "; check the name, or give a default with pillar.get('a:b', default) or the \
             `default` filter",
        );
    }
    if message.contains("undefined") && (message.contains("salt[") || message.contains("salt.")) {
        message.push_str(&format!(
            "; execution functions available while rendering: {}",
            salt::FUNCTIONS.join(", ")
        ));
    }
    if let Some(foreign) = source {
        message.push_str(": ");
        message.push_str(&foreign.to_string());
    }
    let outer: Vec<String> = chain
        .iter()
        .filter(|e| !std::ptr::eq(**e, innermost))
        .filter_map(|e| {
            let name = display_name(e.name()?);
            Some(format!("{name}{}", line_suffix(e.line())))
        })
        .collect();
    if !outer.is_empty() {
        message.push_str(&format!(" (included from {})", outer.join(" <- ")));
    }
    RenderError {
        file: innermost.name().map_or(file, display_name).to_string(),
        line: innermost.line(),
        message,
    }
}

/// Walks a Salt-style `a:b:c` path; numeric segments index lists.
pub fn traverse<'a>(data: &'a Json, path: &str) -> Option<&'a Json> {
    let mut current = data;
    for segment in path.split(':') {
        current = match current {
            Json::Object(map) => map.get(segment)?,
            Json::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// `pillar` and `grains` in templates: a dict that also answers Salt's `.get('a:b', default)`.
#[derive(Debug)]
struct Lookup {
    what: &'static str,
    data: Arc<LazyValue>,
}

impl Lookup {
    /// `get(key, default)`, the dict's own method. In Salt, `pillar` and `grains` are plain dicts:
    /// `.get` finds a top-level key or returns the default, `None` without one. Corpus does the
    /// same and, beyond Salt, walks an `a:b` path (Salt's dict would return `None` for it); a
    /// missing path without a default is an error naming it, because in Salt it could never
    /// have found anything. The default may be positional or `default=`.
    fn get(&self, args: &[Value]) -> Result<Value, minijinja::Error> {
        let parsed = Args::parse(args)?;
        let key = match parsed.get(0, "key") {
            Some(key) => key.as_str().map(str::to_string).unwrap_or(key.to_string()),
            None => {
                return Err(minijinja::Error::new(
                    ErrorKind::MissingArgument,
                    format!(
                        "{}.get needs a key, e.g. {}.get('a:b', default)",
                        self.what, self.what
                    ),
                ));
            }
        };
        let delimiter = parsed
            .get(usize::MAX, "delimiter")
            .and_then(|d| d.as_str().map(str::to_string))
            .unwrap_or_else(|| ":".into());
        let data = self.data.get();
        let top_level = data
            .get_item(&Value::from(key.as_str()))
            .ok()
            .filter(|v| !v.is_undefined());
        if let Some(found) = top_level {
            return Ok(found);
        }
        let default = parsed.get(1, "default").map(values::mutable);
        if !key.contains(delimiter.as_str()) {
            return Ok(default.unwrap_or_else(|| Value::from(())));
        }
        match traverse_value(data, &key, &delimiter) {
            Some(found) => Ok(found),
            None => default.ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::UndefinedError,
                    format!(
                        "{what} key '{key}' is missing: add it to the {what}, or give a default: \
                         {what}.get('{key}', default)",
                        what = self.what
                    ),
                )
            }),
        }
    }
}

impl Object for Lookup {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.data
            .get()
            .get_item(key)
            .ok()
            .filter(|v| !v.is_undefined())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.data.get().try_iter() {
            Ok(keys) => Enumerator::Values(keys.collect()),
            Err(_) => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.data.get().len()
    }

    fn call_method(
        self: &Arc<Self>,
        state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "get" => self.get(args),
            _ => self.data.get().call_method(state, method, args),
        }
    }
}

#[cfg(test)]
mod tests;
