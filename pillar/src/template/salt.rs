//! `salt` in templates: Salt's render-time execution functions, reachable both as
//! `salt['mod.fun'](...)` and `salt.mod.fun(...)`, and how their arguments are read. The
//! functions' bodies are in [`super::functions`].

use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};
use serde_json::Value as Json;

use super::functions::call;
use super::host::HostFunctions;
use super::values::LazyValue;
use crate::tree::SourceTree;

/// What the functions of one render can reach.
pub(crate) struct SaltScope {
    pub pillar: Arc<LazyValue>,
    pub grains: Arc<LazyValue>,
    pub opts: Value,
    pub common: Arc<Json>,
    pub tree: Option<Arc<dyn SourceTree>>,
    pub host: Option<Arc<dyn HostFunctions>>,
}

impl std::fmt::Debug for SaltScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaltScope")
            .field("host", &self.host.is_some())
            .finish_non_exhaustive()
    }
}

/// Every function `salt` answers to, for `'x.y' in salt` and error hints.
pub(crate) const FUNCTIONS: &[&str] = &[
    "cmd.has_exec",
    "cmd.run",
    "cmd.run_stdout",
    "cmd.shell",
    "cmd.which",
    "config.get",
    "cp.get_file_str",
    "defaults.deepcopy",
    "defaults.get",
    "defaults.merge",
    "file.basename",
    "file.directory_exists",
    "file.dirname",
    "file.exists",
    "file.file_exists",
    "file.join",
    "file.read",
    "grains.filter_by",
    "grains.get",
    "grains.has_value",
    "grains.item",
    "grains.items",
    "grains.ls",
    "log.critical",
    "log.debug",
    "log.error",
    "log.exception",
    "log.info",
    "log.trace",
    "log.warning",
    "mc_project.get_configuration",
    "mc_utils.json_dump",
    "mc_utils.json_load",
    "mine.get",
    "network.get_hostname",
    "network.ip_addrs",
    "network.ip_addrs6",
    "pillar.fetch",
    "pillar.get",
    "pillar.item",
    "pillar.items",
    "pillar.raw",
    "pkg.version",
    "pkg.version_cmp",
    "slsutil.deserialize",
    "slsutil.merge",
    "slsutil.merge_all",
    "slsutil.serialize",
    "slsutil.update",
    "test.ping",
    "user.info",
];

/// The `salt` object.
#[derive(Debug)]
pub(crate) struct Salt(pub Arc<SaltScope>);

impl Object for Salt {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if FUNCTIONS.contains(&name) {
            return Some(Value::from_object(SaltFunction {
                scope: self.0.clone(),
                name: name.to_string(),
            }));
        }
        let prefix = format!("{name}.");
        FUNCTIONS.iter().any(|f| f.starts_with(&prefix)).then(|| {
            Value::from_object(SaltModule {
                scope: self.0.clone(),
                module: name.to_string(),
            })
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(FUNCTIONS)
    }
}

/// `salt.pillar`: a module whose functions are called as methods (`salt.pillar.get(...)`).
#[derive(Debug)]
struct SaltModule {
    scope: Arc<SaltScope>,
    module: String,
}

impl Object for SaltModule {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = format!("{}.{}", self.module, key.as_str()?);
        FUNCTIONS.contains(&name.as_str()).then(|| {
            Value::from_object(SaltFunction {
                scope: self.scope.clone(),
                name,
            })
        })
    }

    fn call_method(
        self: &Arc<Self>,
        state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let name = format!("{}.{method}", self.module);
        if !FUNCTIONS.contains(&name.as_str()) {
            return Err(unknown_function(&name));
        }
        call(&self.scope, state, &name, args)
    }
}

/// One execution function as a callable value.
#[derive(Debug)]
struct SaltFunction {
    scope: Arc<SaltScope>,
    name: String,
}

impl Object for SaltFunction {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn call(self: &Arc<Self>, state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        call(&self.scope, state, &self.name, args)
    }
}

pub(crate) fn unknown_function(name: &str) -> Error {
    Error::new(
        ErrorKind::UnknownFunction,
        format!(
            "salt['{name}'] is not available while rendering in corpus; available: {}",
            FUNCTIONS.join(", ")
        ),
    )
}

/// Positional and keyword arguments, read Python-style (`get(0, "key")`).
pub(crate) struct Args {
    pub(crate) positional: Vec<Value>,
    keywords: IndexMap<String, Value>,
}

impl Args {
    pub(crate) fn parse(args: &[Value]) -> Result<Args, Error> {
        let (positional, kwargs) = match args.split_last() {
            Some((last, rest)) if last.is_kwargs() => (rest, Some(Kwargs::try_from(last.clone())?)),
            _ => (args, None),
        };
        let mut keywords = IndexMap::new();
        if let Some(kwargs) = kwargs {
            for key in kwargs.args() {
                let value: Value = kwargs.get(key)?;
                keywords.insert(key.to_string(), value);
            }
        }
        Ok(Args {
            positional: positional.to_vec(),
            keywords,
        })
    }

    pub(crate) fn get(&self, index: usize, name: &str) -> Option<Value> {
        self.keywords
            .get(name)
            .or_else(|| self.positional.get(index))
            .cloned()
    }

    pub(crate) fn string(&self, index: usize, name: &str, function: &str) -> Result<String, Error> {
        match self.get(index, name) {
            Some(value) if !value.is_undefined() && !value.is_none() => Ok(value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string())),
            _ => Err(Error::new(
                ErrorKind::MissingArgument,
                format!("salt['{function}'] needs argument '{name}'"),
            )),
        }
    }

    pub(crate) fn flag(&self, index: usize, name: &str, default: bool) -> bool {
        self.get(index, name).map_or(default, |v| v.is_true())
    }
}

/// Walks a Salt-style `a:b:c` path through template values, as Salt's
/// `traverse_dict_and_list`: numeric segments index lists, and a segment that meets a list is
/// first looked up in the dicts the list holds (`users:alice` over `users: [{alice: ...}]`).
pub(crate) fn traverse_value(data: &Value, path: &str, delimiter: &str) -> Option<Value> {
    let mut current = data.clone();
    for segment in path.split(delimiter) {
        let key = Value::from(segment);
        let next = match current.kind() {
            ValueKind::Map => current.get_item(&key).ok(),
            ValueKind::Seq => {
                let items: Vec<Value> = current.try_iter().ok()?.collect();
                let embedded = items
                    .iter()
                    .filter(|item| item.kind() == ValueKind::Map)
                    .find_map(|item| item.get_item(&key).ok().filter(|v| !v.is_undefined()));
                match embedded {
                    Some(found) => Some(found),
                    None => segment
                        .parse::<i64>()
                        .ok()
                        .and_then(|i| current.get_item(&Value::from(i)).ok()),
                }
            }
            _ => None,
        };
        current = next.filter(|v| !v.is_undefined())?;
    }
    Some(current)
}
