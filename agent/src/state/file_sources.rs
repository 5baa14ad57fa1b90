//! Where `file.*` states' `source:` files come from and how their `template: jinja` is
//! rendered: the [`FileSources`] trait the executor is given, and [`LocalFileSources`], its
//! implementation over a file root on this machine (`salt://a/b` is `<root>/a/b`).

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// Where `source:` files come from and how `template: jinja` is rendered: the masterless agent
/// reads a local file root and renders with the SLS context; the master-driven agent will read
/// from the pushed project tree.
pub trait FileSources: Send + Sync {
    /// The bytes of `source` (`salt://path`, `file:///path` or an absolute path), or `None`
    /// when it does not exist (Salt then tries the next source of a list).
    fn read(&self, source: &str) -> Result<Option<Vec<u8>>, String>;

    /// The files under the directory `source`, as paths relative to it (`file.recurse`);
    /// `None` when it is not a directory.
    fn list(&self, source: &str) -> Result<Option<Vec<String>>, String> {
        Err(format!(
            "cannot list {source}: this file source has no directories"
        ))
    }

    /// Renders `text` (from the file `name`) as Jinja with the SLS context (pillar, grains,
    /// common, env) plus `extra` (the state's `defaults` overlaid with its `context`).
    fn render_jinja(
        &self,
        name: &str,
        text: &str,
        extra: &Map<String, Value>,
    ) -> Result<String, String>;
}

/// Renders a Jinja template: `(template name, text, extra context)` to text.
pub type JinjaRenderer =
    Box<dyn Fn(&str, &str, &Map<String, Value>) -> Result<String, String> + Send + Sync>;

/// [`FileSources`] over a local file root (`salt://a/b` is `<root>/a/b`).
pub struct LocalFileSources {
    /// `salt://` paths resolve under this directory; `None` refuses `salt://` sources.
    file_root: Option<PathBuf>,
    /// Renders `template: jinja`; `None` refuses templates.
    renderer: Option<JinjaRenderer>,
    /// Sources already read in this run: a template shared by many states is read once, as
    /// Salt's file client caches what it fetched.
    cache: Mutex<HashMap<String, Option<Arc<Vec<u8>>>>>,
}

impl LocalFileSources {
    pub fn new(file_root: Option<PathBuf>, renderer: Option<JinjaRenderer>) -> Self {
        Self {
            file_root,
            renderer,
            cache: Mutex::default(),
        }
    }

    /// Where `source` is on this machine.
    fn resolve(&self, source: &str) -> Result<PathBuf, String> {
        Ok(if let Some(rel) = source.strip_prefix("salt://") {
            let rel = rel.split('?').next().unwrap_or(rel);
            let root = self
                .file_root
                .as_ref()
                .ok_or_else(|| format!("source {source:?} needs a file root (pass --file-root)"))?;
            let rel = Path::new(rel);
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(format!("source {source:?} must stay inside the file root"));
            }
            root.join(rel)
        } else if let Some(abs) = source.strip_prefix("file://") {
            PathBuf::from(abs)
        } else if source.starts_with('/') {
            PathBuf::from(source)
        } else {
            return Err(format!(
                "source {source:?} is not supported: use salt://, file:// or an absolute path"
            ));
        })
    }

    fn read_uncached(&self, source: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.resolve(source)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read source {source:?} ({}): {e}",
                path.display()
            )),
        }
    }
}

impl FileSources for LocalFileSources {
    fn read(&self, source: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(source).cloned()) {
            return Ok(hit.map(|b| b.as_ref().clone()));
        }
        let bytes = self.read_uncached(source)?.map(Arc::new);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(source.to_string(), bytes.clone());
        }
        Ok(bytes.map(|b| b.as_ref().clone()))
    }

    fn list(&self, source: &str) -> Result<Option<Vec<String>>, String> {
        super::file_recurse::files_under(&self.resolve(source)?)
    }

    fn render_jinja(
        &self,
        name: &str,
        text: &str,
        extra: &Map<String, Value>,
    ) -> Result<String, String> {
        match &self.renderer {
            Some(render) => render(name, text, extra),
            None => Err(format!(
                "cannot render {name}: no template renderer configured"
            )),
        }
    }
}
