//! Python-like mutable dicts and lists for templates. Salt formulas build their data in place
//! (`{% do defaults.update(...) %}`, `{% do users.append(u) %}`), which minijinja's own maps and
//! sequences cannot do: every dict and list a template sees (context data, literals, function
//! results) is one of these objects, shared by reference as in Python.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use indexmap::IndexMap;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};
use serde_json::Value as Json;

/// A Python `dict`: insertion-ordered, mutable through its methods.
#[derive(Debug, Default)]
pub(crate) struct Dict(Mutex<IndexMap<Value, Value>>);

/// A Python `list`.
#[derive(Debug, Default)]
pub(crate) struct List(Mutex<Vec<Value>>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-written in a way that matters to a
    // template; keep going rather than failing every later render.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Refuses to put `value` into the container at `target` when `value` is or holds it: the cycle
/// would send every walk of the data (printing, serialising, copying) round forever, and a
/// stack overflow aborts the whole process, master included.
fn refuse_cycle(value: &Value, target: *const ()) -> Result<(), Error> {
    if holds(value, target, 0) {
        return Err(arg_error(
            "cannot put a dict or list inside itself: copy it first with .copy()",
        ));
    }
    Ok(())
}

/// How deep [`holds`] looks; data nested deeper than this is refused too.
const MAX_NESTING: usize = 256;

fn holds(value: &Value, target: *const (), depth: usize) -> bool {
    if depth > MAX_NESTING {
        return true;
    }
    if let Some(dict) = value.downcast_object_ref::<Dict>() {
        return std::ptr::eq(dict as *const Dict as *const (), target)
            || dict
                .entries()
                .iter()
                .any(|(_, v)| holds(v, target, depth + 1));
    }
    if let Some(list) = value.downcast_object_ref::<List>() {
        return std::ptr::eq(list as *const List as *const (), target)
            || list.items().iter().any(|v| holds(v, target, depth + 1));
    }
    match value.kind() {
        // minijinja's own sequences and maps (tuples, kwargs) may hold ours.
        ValueKind::Seq => value
            .try_iter()
            .is_ok_and(|mut items| items.any(|v| holds(&v, target, depth + 1))),
        ValueKind::Map => map_entries(value)
            .is_ok_and(|entries| entries.iter().any(|(_, v)| holds(v, target, depth + 1))),
        _ => false,
    }
}

fn arg_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

impl Dict {
    pub(crate) fn new_value(entries: IndexMap<Value, Value>) -> Value {
        Value::from_object(Dict(Mutex::new(entries)))
    }

    pub(crate) fn entries(&self) -> Vec<(Value, Value)> {
        lock(&self.0)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn get(&self, key: &Value) -> Option<Value> {
        lock(&self.0).get(key).cloned()
    }

    pub(crate) fn insert(&self, key: Value, value: Value) -> Result<(), Error> {
        refuse_cycle(&value, self as *const Dict as *const ())?;
        lock(&self.0).insert(key, value);
        Ok(())
    }

    fn update(&self, args: &[Value]) -> Result<(), Error> {
        let mut new = Vec::new();
        for arg in args {
            if arg.is_kwargs() || arg.kind() == ValueKind::Map {
                new.extend(map_entries(arg)?);
            } else if arg.kind() == ValueKind::Seq {
                for pair in arg.try_iter()? {
                    let items: Vec<Value> = pair.try_iter()?.collect();
                    match <[Value; 2]>::try_from(items) {
                        Ok([k, v]) => new.push((k, v)),
                        Err(_) => {
                            return Err(arg_error("dict.update: sequence items must be pairs"));
                        }
                    }
                }
            } else if !arg.is_none() {
                return Err(arg_error(format!(
                    "dict.update needs a dict, got {}",
                    arg.kind()
                )));
            }
        }
        for (_, v) in &new {
            refuse_cycle(v, self as *const Dict as *const ())?;
        }
        let mut map = lock(&self.0);
        for (k, v) in new {
            map.insert(k, v);
        }
        Ok(())
    }
}

/// The (key, value) pairs of any map-like value, kwargs included.
pub(crate) fn map_entries(value: &Value) -> Result<Vec<(Value, Value)>, Error> {
    if let Some(dict) = value.downcast_object_ref::<Dict>() {
        return Ok(dict.entries());
    }
    let mut out = Vec::new();
    for key in value.try_iter()? {
        let item = value.get_item(&key)?;
        out.push((key, item));
    }
    Ok(out)
}

impl Object for Dict {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(lock(&self.0).keys().cloned().collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(lock(&self.0).len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let arg = |i: usize| args.get(i).cloned();
        let key = || arg(0).ok_or_else(|| arg_error(format!("dict.{method} needs a key")));
        match method {
            "update" => {
                self.update(args)?;
                Ok(Value::from(()))
            }
            "get" => Ok(self
                .get(&key()?)
                .unwrap_or_else(|| arg(1).unwrap_or_default())),
            "setdefault" => {
                let key = key()?;
                if let Some(default) = arg(1) {
                    refuse_cycle(&default, Arc::as_ptr(self) as *const ())?;
                }
                let mut map = lock(&self.0);
                Ok(map
                    .entry(key)
                    .or_insert_with(|| arg(1).unwrap_or_default())
                    .clone())
            }
            "pop" => {
                let key = key()?;
                match lock(&self.0).shift_remove(&key) {
                    Some(found) => Ok(found),
                    None => arg(1).ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            format!("dict.pop: no key {key}"),
                        )
                    }),
                }
            }
            "copy" => Ok(Dict::new_value(lock(&self.0).clone())),
            "clear" => {
                lock(&self.0).clear();
                Ok(Value::from(()))
            }
            "keys" => Ok(List::new_value(lock(&self.0).keys().cloned().collect())),
            "values" => Ok(List::new_value(lock(&self.0).values().cloned().collect())),
            "items" | "iteritems" => Ok(List::new_value(
                self.entries()
                    .into_iter()
                    .map(|(k, v)| Value::from(vec![k, v]))
                    .collect(),
            )),
            "has_key" => Ok(Value::from(self.get(&key()?).is_some())),
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

impl List {
    pub(crate) fn new_value(items: Vec<Value>) -> Value {
        Value::from_object(List(Mutex::new(items)))
    }

    pub(crate) fn items(&self) -> Vec<Value> {
        lock(&self.0).clone()
    }
}

/// A Python `tuple` (what `regex_search` and `regex_match` return): read-only, printed as
/// `('a', 'b')` or `('a',)`.
#[derive(Debug)]
pub(crate) struct Tuple(Vec<Value>);

impl Tuple {
    pub(crate) fn new_value(items: Vec<Value>) -> Value {
        Value::from_object(Tuple(items))
    }
}

impl Object for Tuple {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let index = key.as_i64()?;
        let index = if index < 0 {
            self.0.len().checked_sub(index.unsigned_abs() as usize)?
        } else {
            index as usize
        };
        self.0.get(index).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.clone())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result
    where
        Self: Sized + 'static,
    {
        let items: Vec<String> = self.0.iter().map(super::python::python_repr).collect();
        match items.as_slice() {
            [one] => write!(f, "({one},)"),
            _ => write!(f, "({})", items.join(", ")),
        }
    }
}

impl Object for List {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let items = lock(&self.0);
        let index = key.as_i64()?;
        let index = if index < 0 {
            items.len().checked_sub(index.unsigned_abs() as usize)?
        } else {
            index as usize
        };
        items.get(index).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.items())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(lock(&self.0).len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let first = || {
            args.first()
                .cloned()
                .ok_or_else(|| arg_error(format!("list.{method} needs an argument")))
        };
        match method {
            "append" => {
                let item = first()?;
                refuse_cycle(&item, Arc::as_ptr(self) as *const ())?;
                lock(&self.0).push(item);
                Ok(Value::from(()))
            }
            "extend" => {
                let new: Vec<Value> = first()?.try_iter()?.collect();
                for item in &new {
                    refuse_cycle(item, Arc::as_ptr(self) as *const ())?;
                }
                lock(&self.0).extend(new);
                Ok(Value::from(()))
            }
            "insert" => {
                let index = first()?.as_i64().unwrap_or(0);
                let item = args.get(1).cloned().unwrap_or_default();
                refuse_cycle(&item, Arc::as_ptr(self) as *const ())?;
                let mut items = lock(&self.0);
                let len = items.len() as i64;
                let at = if index < 0 {
                    (len + index).max(0)
                } else {
                    index.min(len)
                };
                items.insert(at as usize, item);
                Ok(Value::from(()))
            }
            "pop" => {
                let mut items = lock(&self.0);
                let len = items.len() as i64;
                let index = args.first().and_then(Value::as_i64).unwrap_or(-1);
                let at = if index < 0 { len + index } else { index };
                if at < 0 || at >= len {
                    return Err(arg_error("list.pop: index out of range"));
                }
                Ok(items.remove(at as usize))
            }
            "remove" => {
                let item = first()?;
                let mut items = lock(&self.0);
                match items.iter().position(|x| *x == item) {
                    Some(at) => {
                        items.remove(at);
                        Ok(Value::from(()))
                    }
                    None => Err(arg_error("list.remove: the item is not in the list")),
                }
            }
            "index" => {
                let item = first()?;
                lock(&self.0)
                    .iter()
                    .position(|x| *x == item)
                    .map(Value::from)
                    .ok_or_else(|| arg_error("list.index: the item is not in the list"))
            }
            "count" => {
                let item = first()?;
                Ok(Value::from(
                    lock(&self.0).iter().filter(|x| **x == item).count(),
                ))
            }
            "copy" => Ok(List::new_value(self.items())),
            "reverse" => {
                lock(&self.0).reverse();
                Ok(Value::from(()))
            }
            "sort" => {
                lock(&self.0).sort();
                Ok(Value::from(()))
            }
            "clear" => {
                lock(&self.0).clear();
                Ok(Value::from(()))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// JSON converted to template values on first use: a template reads a few keys of the pillar
/// and grains, or none, and converting them for each of a thousand rendered files adds up.
#[derive(Debug)]
pub(crate) struct LazyValue {
    json: Arc<Json>,
    value: OnceLock<Value>,
}

impl LazyValue {
    pub(crate) fn new(json: Arc<Json>) -> Arc<LazyValue> {
        Arc::new(LazyValue {
            json,
            value: OnceLock::new(),
        })
    }

    pub(crate) fn get(&self) -> &Value {
        self.value.get_or_init(|| from_json(&self.json))
    }
}

/// JSON data (pillar, grains, YAML files) as template values: every map and array mutable.
pub(crate) fn from_json(json: &Json) -> Value {
    match json {
        Json::Object(map) => Dict::new_value(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                .collect(),
        ),
        Json::Array(items) => List::new_value(items.iter().map(from_json).collect()),
        other => Value::from(minijinja::value::Serde(other)),
    }
}

/// A value with every map and sequence turned into a mutable [`Dict`] or [`List`]; used on
/// literals and on what filters and functions return. Objects that are already mutable are
/// kept (shared), as Python keeps references.
pub(crate) fn mutable(value: Value) -> Value {
    if value.downcast_object_ref::<Dict>().is_some()
        || value.downcast_object_ref::<List>().is_some()
    {
        return value;
    }
    match value.kind() {
        ValueKind::Map if !value.is_kwargs() => match map_entries(&value) {
            Ok(entries) => {
                Dict::new_value(entries.into_iter().map(|(k, v)| (k, mutable(v))).collect())
            }
            Err(_) => value,
        },
        ValueKind::Seq => match value.try_iter() {
            Ok(iter) => List::new_value(iter.map(mutable).collect()),
            Err(_) => value,
        },
        _ => value,
    }
}

/// A deep, independent copy (Python's `copy.deepcopy`).
pub(crate) fn deep_copy(value: &Value) -> Value {
    if let Some(dict) = value.downcast_object_ref::<Dict>() {
        return Dict::new_value(
            dict.entries()
                .into_iter()
                .map(|(k, v)| (k, deep_copy(&v)))
                .collect(),
        );
    }
    if let Some(list) = value.downcast_object_ref::<List>() {
        return List::new_value(list.items().iter().map(deep_copy).collect());
    }
    mutable(value.clone())
}

/// Salt's `dictupdate.update`: merges `src` into `dest` in place, recursing into maps present in
/// both; lists are replaced, or concatenated with `merge_lists`.
pub(crate) fn deep_update(dest: &Value, src: &Value, merge_lists: bool) -> Result<(), Error> {
    let Some(dict) = dest.downcast_object_ref::<Dict>() else {
        return Err(arg_error(format!(
            "cannot merge into a {}: the destination must be a dict",
            dest.kind()
        )));
    };
    for (key, value) in map_entries(src)? {
        let existing = dict.get(&key);
        match existing {
            Some(old)
                if old.kind() == ValueKind::Map
                    && value.kind() == ValueKind::Map
                    && old.downcast_object_ref::<Dict>().is_some() =>
            {
                deep_update(&old, &value, merge_lists)?;
            }
            Some(old)
                if merge_lists
                    && old.kind() == ValueKind::Seq
                    && value.kind() == ValueKind::Seq =>
            {
                let mut items: Vec<Value> = old.try_iter()?.collect();
                items.extend(value.try_iter()?.map(|v| deep_copy(&v)));
                dict.insert(key, List::new_value(items))?;
            }
            _ => dict.insert(key, deep_copy(&value))?,
        }
    }
    Ok(())
}

/// Refuses to serialise an undefined value (a misspelt variable would otherwise become `null`).
pub(crate) fn reject_undefined(value: &Value) -> Result<(), Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "cannot serialise an undefined value; check the variable name or add a default",
        ));
    }
    Ok(())
}

/// Template value to JSON (for the `yaml` filter and serialiser, which sort keys as PyYAML does).
pub(crate) fn to_json(value: &Value) -> Result<Json, Error> {
    reject_undefined(value)?;
    serde_json::to_value(value).map_err(|e| arg_error(format!("cannot serialise value: {e}")))
}
