//! The bodies of Salt's render-time execution functions (`pillar.get`, `grains.filter_by`,
//! `defaults.merge`, `slsutil.*`, `file.*`, `cmd.*`, `mc_project.get_configuration`, ...).
//! Pure ones compute here; the ones that need the machine ask [`HostFunctions`], and fail naming
//! the function when there is none (the master).

use indexmap::IndexMap;
use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State};
use serde_json::Value as Json;

use super::filters;
use super::host::{HostFunctions, PathKind};
use super::join_template_path;
use super::python::write_python_json_value;
use super::pyyaml::{self, FlowStyle};
use super::salt::{Args, SaltScope, traverse_value, unknown_function};
use super::values::{
    Dict, List, deep_copy, deep_update, from_json, map_entries, mutable, reject_undefined, to_json,
};
use crate::top::glob_match;
use crate::tree::normalize_path;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// Where a lookup function takes its optional arguments positionally, as Salt declares them:
/// `pillar.get(key, default, merge, merge_nested_lists, delimiter)`,
/// `grains.get(key, default, delimiter)`.
struct LookupArgs {
    merge: Option<usize>,
    merge_nested_lists: Option<usize>,
    delimiter: usize,
}

const PILLAR_GET: LookupArgs = LookupArgs {
    merge: Some(2),
    merge_nested_lists: Some(3),
    delimiter: 4,
};

const GRAINS_GET: LookupArgs = LookupArgs {
    merge: None,
    merge_nested_lists: None,
    delimiter: 2,
};

/// `pillar.get` / `grains.get`, as Salt's: no default gives `''`; `merge=True` merges the found
/// dict over a dict default (a copy), or appends the found list's new items to a list default;
/// a found value of another type is returned as it is (Salt logs and skips the merge).
fn lookup(data: &Value, args: &Args, function: &str, layout: &LookupArgs) -> Result<Value, Error> {
    let key = args.string(0, "key", function)?;
    let default = args.get(1, "default").unwrap_or_else(|| Value::from(""));
    let delimiter = args
        .get(layout.delimiter, "delimiter")
        .and_then(|d| d.as_str().map(str::to_string))
        .unwrap_or_else(|| ":".into());
    let found = traverse_value(data, &key, &delimiter);
    let merge = layout
        .merge
        .is_some_and(|index| args.flag(index, "merge", false));
    match found {
        Some(found) if merge && default.kind() == ValueKind::Map => {
            if found.kind() != ValueKind::Map {
                return Ok(found);
            }
            let merged = deep_copy(&default);
            let merge_lists = layout
                .merge_nested_lists
                .is_some_and(|index| args.flag(index, "merge_nested_lists", false));
            deep_update(&merged, &found, merge_lists)?;
            Ok(merged)
        }
        Some(found) if merge && default.kind() == ValueKind::Seq => {
            if found.kind() != ValueKind::Seq {
                return Ok(found);
            }
            // Salt: `default.extend([x for x in ret if x not in default])`.
            let defaults: Vec<Value> = default.try_iter()?.map(|v| deep_copy(&v)).collect();
            let mut items = defaults.clone();
            items.extend(found.try_iter()?.filter(|item| !defaults.contains(item)));
            Ok(List::new_value(items))
        }
        Some(found) => Ok(found),
        None if merge => Ok(deep_copy(&default)),
        None => Ok(mutable(default)),
    }
}

/// Salt's `grains.filter_by`: the entry of `lookup_dict` whose key (a glob) matches the grain's
/// value, else the `default` entry; `base` is merged under it and `merge` over it.
fn filter_by(scope: &SaltScope, args: &Args) -> Result<Value, Error> {
    let lookup_dict = args
        .get(0, "lookup_dict")
        .filter(|v| v.kind() == ValueKind::Map)
        .ok_or_else(|| invalid("grains.filter_by needs a dict of values by grain (lookup_dict)"))?;
    let grain = args
        .get(1, "grain")
        .and_then(|g| g.as_str().map(str::to_string))
        .unwrap_or_else(|| "os_family".into());
    let merge = args
        .get(2, "merge")
        .filter(|m| !m.is_none() && !m.is_undefined());
    let default = args
        .get(3, "default")
        .and_then(|d| d.as_str().map(str::to_string))
        .unwrap_or_else(|| "default".into());
    let base = args
        .get(4, "base")
        .filter(|b| !b.is_none() && !b.is_undefined());
    let entries = map_entries(&lookup_dict)?;
    let grain_value = traverse_value(scope.grains.get(), &grain, ":");
    let candidates: Vec<Value> = match &grain_value {
        Some(v) if v.kind() == ValueKind::Seq => v.try_iter()?.collect(),
        Some(v) => vec![v.clone()],
        None => Vec::new(),
    };
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut found = candidates.iter().find_map(|candidate| {
        entries
            .iter()
            .find(|(key, _)| glob_match(&text(key), &text(candidate)))
            .map(|(_, value)| value.clone())
    });
    if found.is_none() {
        found = lookup_dict
            .get_item(&Value::from(default))
            .ok()
            .filter(|v| !v.is_undefined());
    }
    if let Some(base) = base {
        let base_values = lookup_dict
            .get_item(&base)
            .ok()
            .filter(|v| !v.is_undefined());
        if let Some(base_values) = base_values {
            found = Some(match found {
                None => base_values,
                Some(over) if base_values.kind() == ValueKind::Map => {
                    let merged = deep_copy(&base_values);
                    deep_update(&merged, &over, false)?;
                    merged
                }
                Some(over) => over,
            });
        }
    }
    if let Some(merge) = merge {
        if merge.kind() != ValueKind::Map {
            return Err(invalid("grains.filter_by: merge must be a dict"));
        }
        found = Some(match found {
            None => deep_copy(&merge),
            Some(value) => {
                let value = mutable(value);
                deep_update(&value, &merge, false)?;
                value
            }
        });
    }
    Ok(found.unwrap_or(Value::from(())))
}

fn need_host<'a>(scope: &'a SaltScope, function: &str) -> Result<&'a dyn HostFunctions, Error> {
    scope.host.as_deref().ok_or_else(|| {
        invalid(format!(
            "salt['{function}'] needs the target machine and cannot run on the master: render \
             this file with `corpus-agent apply --local`, or use a grain or pillar value instead"
        ))
    })
}

/// Python's `os.path.join`.
fn path_join(parts: &[String]) -> String {
    let mut out = String::new();
    for part in parts {
        if part.starts_with('/') {
            out = part.clone();
        } else if out.is_empty() || out.ends_with('/') {
            out.push_str(part);
        } else {
            out.push('/');
            out.push_str(part);
        }
    }
    out
}

fn dirname(path: &str) -> String {
    match path.rfind('/') {
        Some(0) => "/".into(),
        Some(at) => path[..at].trim_end_matches('/').to_string(),
        None => String::new(),
    }
}

/// Compares Debian-style versions well enough for `pkg.version_cmp`: numeric runs compare as
/// numbers, other runs as text, `~` sorts first.
pub(crate) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn chunks(v: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in v.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, s)) if *d == digit && !matches!(c, '.' | '-' | ':' | '~' | '+') => {
                    s.push(c)
                }
                _ if matches!(c, '.' | '-' | ':' | '+') => out.push((false, String::new())),
                _ => out.push((digit, c.to_string())),
            }
        }
        out.into_iter().filter(|(_, s)| !s.is_empty()).collect()
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for i in 0..ca.len().max(cb.len()) {
        let ordering = match (ca.get(i), cb.get(i)) {
            (Some((_, x)), None) => {
                if x.starts_with('~') {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (None, Some((_, y))) => {
                if y.starts_with('~') {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some((true, x)), Some((true, y))) => {
                let (x, y) = (
                    x.parse::<u128>().unwrap_or(0),
                    y.parse::<u128>().unwrap_or(0),
                );
                x.cmp(&y)
            }
            (Some((_, x)), Some((_, y))) => x.cmp(y),
            (None, None) => Ordering::Equal,
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// makina-states' project configuration (`mc_project.get_configuration`, `opts['ms_project']`),
/// mapped from corpus's `common`.
pub(crate) fn makina_project(common: &Json) -> Json {
    let get = |key: &str| common.get(key).cloned().unwrap_or(Json::Null);
    let text = |key: &str| common.get(key).and_then(Json::as_str).unwrap_or_default();
    // makina's `project_dir` is the project's base (corpus's `project_root`) and its
    // `project_root` the checkout inside it (corpus's `project_dir`).
    serde_json::json!({
        "name": get("name"),
        "project_dir": get("project_root"),
        "project_root": get("project_dir"),
        "salt_root": format!("{}/.salt", text("project_dir")),
        "deploy_marker": format!("{}/.tmp_deploy", text("project_dir")),
        "data_root": get("data_dir"),
        "pillar_root": get("pillar_dir"),
        "archives_root": get("archives_dir"),
        "releases_root": get("releases_dir"),
        "build_root": get("build_dir"),
        "run_root": get("run_dir"),
        "user": get("user"),
        "group": get("group"),
        "groups": [get("group")],
        "default_env": get("env"),
        "env": get("env"),
        "data": common.get("data").cloned().unwrap_or_else(|| serde_json::json!({})),
    })
}

fn makina_configuration(scope: &SaltScope, name: Option<Value>) -> Value {
    let mut project = makina_project(&scope.common);
    if let (Some(name), Json::Object(map)) = (
        name.and_then(|n| n.as_str().map(str::to_string)),
        &mut project,
    ) {
        map.insert("name".into(), Json::String(name));
    }
    from_json(&project)
}

fn serialize(format: &str, value: &Value) -> Result<String, Error> {
    match format {
        // Salt's JSON serializer: `json.dumps(obj, ensure_ascii=False)`, keys in their order.
        "json" => {
            reject_undefined(value)?;
            let mut out = String::new();
            write_python_json_value(value, None, false, false, 0, &mut out)?;
            Ok(out)
        }
        // Salt's YAML serializer: PyYAML's dump with `default_flow_style=None`, no unicode.
        "yaml" => Ok(pyyaml::dump(&to_json(value)?, FlowStyle::Auto, false)),
        other => Err(invalid(format!(
            "slsutil.serialize: unknown serializer '{other}': use json or yaml"
        ))),
    }
}

fn log_message(args: &Args) -> Value {
    // Salt writes these to the minion log; rendering has no log of its own, and a template's
    // debug chatter must not reach the rendered text. `None` is what Salt returns.
    let _ = args;
    Value::from(())
}

/// Runs function `name`.
pub(crate) fn call(
    scope: &SaltScope,
    state: &State<'_, '_>,
    name: &str,
    raw: &[Value],
) -> Result<Value, Error> {
    let args = Args::parse(raw)?;
    let string = |i: usize, key: &str| args.string(i, key, name);
    Ok(match name {
        "pillar.get" | "pillar.fetch" => lookup(scope.pillar.get(), &args, name, &PILLAR_GET)?,
        "pillar.items" | "pillar.raw" => scope.pillar.get().clone(),
        "grains.items" => scope.grains.get().clone(),
        "pillar.item" | "grains.item" => {
            let data = if name == "pillar.item" {
                scope.pillar.get()
            } else {
                scope.grains.get()
            };
            let mut out = IndexMap::new();
            for key in &args.positional {
                let key = key
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| key.to_string());
                let value = traverse_value(data, &key, ":").unwrap_or_else(|| Value::from(""));
                out.insert(Value::from(key), value);
            }
            Dict::new_value(out)
        }
        "grains.get" => lookup(scope.grains.get(), &args, name, &GRAINS_GET)?,
        "grains.has_value" => Value::from(
            traverse_value(scope.grains.get(), &string(0, "key")?, ":")
                .is_some_and(|v| v.is_true()),
        ),
        "grains.ls" => {
            let mut keys: Vec<Value> = scope.grains.get().try_iter()?.collect();
            keys.sort();
            List::new_value(keys)
        }
        "grains.filter_by" => filter_by(scope, &args)?,
        "config.get" => {
            let key = string(0, "key")?;
            let delimiter = args
                .get(2, "delimiter")
                .and_then(|d| d.as_str().map(str::to_string))
                .unwrap_or_else(|| ":".into());
            [&scope.opts, scope.grains.get(), scope.pillar.get()]
                .into_iter()
                .find_map(|data| traverse_value(data, &key, &delimiter))
                .unwrap_or_else(|| {
                    mutable(args.get(1, "default").unwrap_or_else(|| Value::from("")))
                })
        }
        "defaults.merge" => {
            let dest = args.get(0, "dest").unwrap_or_default();
            let src = args.get(1, "src").unwrap_or_default();
            let target = if args.flag(3, "in_place", true) {
                dest
            } else {
                deep_copy(&dest)
            };
            deep_update(&target, &src, args.flag(2, "merge_lists", false))?;
            target
        }
        "defaults.deepcopy" => deep_copy(&args.get(0, "source").unwrap_or_default()),
        "defaults.get" => {
            let key = string(0, "key")?;
            let default = args.get(1, "default").unwrap_or_else(|| Value::from(""));
            let (formula, rest) = key.split_once(':').unwrap_or((key.as_str(), ""));
            let data = read_tree_data(
                scope,
                &format!("{}/defaults.yaml", formula.replace('.', "/")),
                "yaml",
            )?
            .or(read_tree_data(
                scope,
                &format!("{}/defaults.json", formula.replace('.', "/")),
                "json",
            )?);
            match data {
                Some(data) if rest.is_empty() => data,
                Some(data) => traverse_value(&data, rest, ":").unwrap_or(default),
                None => default,
            }
        }
        "slsutil.merge" => {
            let merged = deep_copy(&args.get(0, "obj_a").unwrap_or_default());
            let strategy = args.get(2, "strategy");
            if strategy
                .as_ref()
                .and_then(|s| s.as_str())
                .is_some_and(|s| s == "overwrite")
            {
                return Ok(deep_copy(&args.get(1, "obj_b").unwrap_or_default()));
            }
            deep_update(
                &merged,
                &args.get(1, "obj_b").unwrap_or_default(),
                args.flag(4, "merge_lists", false),
            )?;
            merged
        }
        "slsutil.merge_all" => {
            let merged = Dict::new_value(IndexMap::new());
            let merge_lists = args.flag(2, "merge_lists", false);
            for item in args.get(0, "lst").unwrap_or_default().try_iter()? {
                deep_update(&merged, &item, merge_lists)?;
            }
            merged
        }
        "slsutil.update" => {
            let dest = args.get(0, "dest").unwrap_or_default();
            let upd = args.get(1, "upd").unwrap_or_default();
            if args.flag(2, "recursive_update", true) {
                deep_update(&dest, &upd, args.flag(3, "merge_lists", false))?;
            } else if let Some(dict) = dest.downcast_object_ref::<Dict>() {
                for (k, v) in map_entries(&upd)? {
                    dict.insert(k, v)?;
                }
            }
            dest
        }
        "slsutil.serialize" => {
            let format = string(0, "serializer")?;
            Value::from(serialize(&format, &args.get(1, "obj").unwrap_or_default())?)
        }
        "slsutil.deserialize" => {
            let format = string(0, "serializer")?;
            let text = string(1, "stream_or_string")?;
            filters::parse_data(&text, &format)?
        }
        "log.debug" | "log.info" | "log.warning" | "log.error" | "log.critical" | "log.trace"
        | "log.exception" => log_message(&args),
        "file.join" => {
            let parts: Vec<String> = args
                .positional
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| p.to_string())
                })
                .collect();
            Value::from(path_join(&parts))
        }
        "file.dirname" => Value::from(dirname(&string(0, "path")?)),
        "file.basename" => {
            let path = string(0, "path")?;
            Value::from(path.rsplit('/').next().unwrap_or_default())
        }
        "file.file_exists" | "file.directory_exists" | "file.exists" => {
            let kind = match name {
                "file.file_exists" => PathKind::File,
                "file.directory_exists" => PathKind::Directory,
                _ => PathKind::Any,
            };
            Value::from(need_host(scope, name)?.path_exists(&string(0, "path")?, kind))
        }
        "cmd.run" | "cmd.run_stdout" | "cmd.shell" => {
            let command = string(0, "cmd")?;
            let cwd = args
                .get(usize::MAX, "cwd")
                .and_then(|c| c.as_str().map(str::to_string));
            let output = need_host(scope, name)?
                .cmd_run(&command, cwd.as_deref())
                // The command is not echoed: it may carry a pillar secret.
                .map_err(|e| invalid(format!("salt['{name}'] failed: {e}")))?;
            Value::from(output)
        }
        "cmd.which" => need_host(scope, name)?
            .which(&string(0, "cmd")?)
            .map(Value::from)
            .unwrap_or(Value::from(())),
        "cmd.has_exec" => Value::from(need_host(scope, name)?.which(&string(0, "cmd")?).is_some()),
        "user.info" => need_host(scope, name)?
            .user_info(&string(0, "name")?)
            .map(|info| from_json(&info))
            .unwrap_or_else(|| Dict::new_value(IndexMap::new())),
        "pkg.version" => Value::from(need_host(scope, name)?.pkg_version(&string(0, "name")?)),
        "pkg.version_cmp" => {
            let ordering = version_cmp(&string(0, "pkg1")?, &string(1, "pkg2")?);
            Value::from(ordering as i32)
        }
        "mine.get" => Dict::new_value(IndexMap::new()),
        "network.ip_addrs" | "network.ip_addrs6" => {
            // From the grains rather than the host, so it answers on the master too.
            let (grain, loopback) = if name == "network.ip_addrs" {
                ("ipv4", "127.")
            } else {
                ("ipv6", "::1")
            };
            let include_loopback = args.flag(usize::MAX, "include_loopback", false);
            let addresses = traverse_value(scope.grains.get(), grain, ":")
                .map(|list| {
                    list.try_iter()
                        .map(|iter| iter.collect::<Vec<Value>>())
                        .unwrap_or_default()
                })
                .unwrap_or_default()
                .into_iter()
                .filter(|ip: &Value| {
                    include_loopback || !ip.as_str().is_some_and(|s| s.starts_with(loopback))
                })
                .collect();
            List::new_value(addresses)
        }
        "network.get_hostname" => {
            traverse_value(scope.grains.get(), "host", ":").unwrap_or_else(|| Value::from(""))
        }
        "file.read" => {
            let path = string(0, "path")?;
            let text = need_host(scope, name)?.read_file(&path).ok_or_else(|| {
                invalid(format!(
                    "salt['file.read']: {path} cannot be read on this host"
                ))
            })?;
            Value::from(text)
        }
        "cp.get_file_str" => {
            let path = string(0, "path")?;
            let text = if path.starts_with("salt://") {
                let joined = join_template_path(&path, "");
                read_tree(scope, &joined)?
            } else {
                need_host(scope, name)?.read_file(&path)
            };
            text.map(Value::from).unwrap_or(Value::from(false))
        }
        "mc_project.get_configuration" => makina_configuration(scope, args.get(0, "name")),
        "mc_utils.json_dump" => {
            let json = to_json(&args.get(0, "data").unwrap_or_default())?;
            Value::from(serde_json::to_string(&json).map_err(|e| invalid(format!("json: {e}")))?)
        }
        "mc_utils.json_load" => filters::parse_data(&string(0, "data")?, "json")?,
        "test.ping" => Value::from(true),
        _ => {
            let _ = state;
            return Err(unknown_function(name));
        }
    })
}

fn read_tree(scope: &SaltScope, path: &str) -> Result<Option<String>, Error> {
    let Some(tree) = &scope.tree else {
        return Ok(None);
    };
    let path = normalize_path(path).map_err(|e| invalid(e.to_string()))?;
    tree.read(&path).map_err(|e| invalid(e.to_string()))
}

fn read_tree_data(scope: &SaltScope, path: &str, format: &str) -> Result<Option<Value>, Error> {
    read_tree(scope, path)?
        .map(|text| filters::parse_data(&text, format))
        .transpose()
}
