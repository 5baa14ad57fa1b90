//! High data: the YAML of one rendered sls, checked and read into state declarations
//! (`id: {module.function: [args]}` and `id: {module: [function, args...]}`), with its `include`,
//! `extend` and `exclude`.

use serde_yaml::{Mapping, Value as Yaml};

use corpus_pillar::yaml::{top_level_key_lines, yaml_key};

use crate::catalogue;
use crate::error::{Location, StateError};

/// One sls file after rendering and parsing.
#[derive(Debug, Clone)]
pub(crate) struct SlsFile {
    pub includes: Vec<String>,
    pub excludes: Vec<Exclude>,
    pub extends: Vec<StateDecl>,
    pub states: Vec<StateDecl>,
}

/// `exclude:` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exclude {
    Id(String),
    Sls(String),
}

/// `id: {...}`: one id and its module calls.
#[derive(Debug, Clone)]
pub(crate) struct StateDecl {
    pub id: String,
    pub sls: String,
    pub at: Location,
    pub calls: Vec<StateCall>,
}

/// `module.function: [args]` under an id.
#[derive(Debug, Clone)]
pub(crate) struct StateCall {
    pub module: String,
    /// `None` only in an `extend:` block that does not restate the function.
    pub function: Option<String>,
    /// The arguments in declaration order, as single-key pairs.
    pub args: Vec<(String, Yaml)>,
}

/// Reads the parsed YAML of sls `sls` (file `path`, rendered text `rendered` for line lookup).
pub(crate) fn parse_sls(
    sls: &str,
    path: &str,
    rendered: &str,
    yaml: Yaml,
) -> Result<SlsFile, StateError> {
    let file_at = || Location {
        file: path.to_string(),
        ..Location::default()
    };
    let mut file = SlsFile {
        includes: Vec::new(),
        excludes: Vec::new(),
        extends: Vec::new(),
        states: Vec::new(),
    };
    let map = match yaml {
        Yaml::Null => return Ok(file),
        Yaml::Mapping(map) => map,
        _ => {
            return Err(StateError::Invalid {
                at: file_at(),
                message:
                    "an sls file must be a mapping of state ids: id: {module.function: [args]}"
                        .into(),
            });
        }
    };
    let lines = top_level_key_lines(rendered);
    for (key, value) in map {
        let id = yaml_key(&key);
        let at = Location {
            file: path.to_string(),
            line: lines.get(&id).copied(),
            state: Some(id.clone()),
        };
        match id.as_str() {
            "include" => file.includes = parse_includes(value, &at)?,
            "exclude" => file.excludes = parse_excludes(value, &at)?,
            "extend" => {
                let Yaml::Mapping(targets) = value else {
                    return Err(StateError::Invalid {
                        at,
                        message:
                            "extend must map state ids to modules: extend: {id: {file: [...]}}"
                                .into(),
                    });
                };
                for (target, body) in targets {
                    let target = yaml_key(&target);
                    let at = Location {
                        state: Some(target.clone()),
                        ..at.clone()
                    };
                    file.extends.push(parse_decl(target, sls, at, body, true)?);
                }
            }
            _ if id.starts_with("__") => {}
            _ => file.states.push(parse_decl(id, sls, at, value, false)?),
        }
    }
    Ok(file)
}

fn string_list(value: Yaml, at: &Location, what: &str) -> Result<Vec<Yaml>, StateError> {
    match value {
        Yaml::Null => Ok(Vec::new()),
        Yaml::Sequence(items) => Ok(items),
        Yaml::String(_) => Ok(vec![value]),
        _ => Err(StateError::Invalid {
            at: at.clone(),
            message: format!("{what} must be a list"),
        }),
    }
}

fn parse_includes(value: Yaml, at: &Location) -> Result<Vec<String>, StateError> {
    let mut out = Vec::new();
    for item in string_list(value, at, "include")? {
        match item {
            Yaml::String(name) => out.push(name),
            // Salt's `- saltenv: sls` form: corpus has one saltenv, take the sls.
            Yaml::Mapping(m) if m.len() == 1 => {
                for (_, v) in m {
                    out.push(yaml_key(&v));
                }
            }
            other => {
                return Err(StateError::Invalid {
                    at: at.clone(),
                    message: format!(
                        "include entry '{}' is not an sls name: use - web.nginx or - .relative",
                        yaml_key(&other)
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn parse_excludes(value: Yaml, at: &Location) -> Result<Vec<Exclude>, StateError> {
    let mut out = Vec::new();
    for item in string_list(value, at, "exclude")? {
        match item {
            Yaml::String(sls) => out.push(Exclude::Sls(sls)),
            Yaml::Mapping(m) if m.len() == 1 => {
                for (k, v) in m {
                    match yaml_key(&k).as_str() {
                        "id" => out.push(Exclude::Id(yaml_key(&v))),
                        "sls" => out.push(Exclude::Sls(yaml_key(&v))),
                        other => {
                            return Err(StateError::Invalid {
                                at: at.clone(),
                                message: format!("exclude entry '{other}' is neither id nor sls"),
                            });
                        }
                    }
                }
            }
            other => {
                return Err(StateError::Invalid {
                    at: at.clone(),
                    message: format!(
                        "exclude entry '{}' must be - id: x or - sls: y",
                        yaml_key(&other)
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Reads `id: body`. `extending` relaxes the rule that each module names its function.
fn parse_decl(
    id: String,
    sls: &str,
    at: Location,
    body: Yaml,
    extending: bool,
) -> Result<StateDecl, StateError> {
    let invalid = |message: String| StateError::Invalid {
        at: at.clone(),
        message,
    };
    let body: Mapping = match body {
        Yaml::Mapping(map) => map,
        // Salt's short form `id: module.function`.
        Yaml::String(short) if short.contains('.') => {
            let mut map = Mapping::new();
            map.insert(Yaml::String(short), Yaml::Sequence(Vec::new()));
            map
        }
        _ => {
            return Err(invalid(format!(
                "state '{id}' must map modules to arguments: {id}: {{module.function: [args]}}"
            )));
        }
    };
    let mut calls: Vec<StateCall> = Vec::new();
    for (key, args) in body {
        let key = yaml_key(&key);
        if key.starts_with("__") {
            continue;
        }
        let (module, mut function) = match key.split_once('.') {
            Some((module, function)) => (module.to_string(), Some(function.to_string())),
            None => (key.clone(), None),
        };
        let items = match args {
            Yaml::Null => Vec::new(),
            Yaml::Sequence(items) => items,
            _ => {
                return Err(invalid(format!(
                    "'{key}' of state '{id}' must be a list of arguments, e.g. - name: value"
                )));
            }
        };
        let mut parsed = Vec::new();
        for item in items {
            match item {
                Yaml::String(name) => {
                    if let Some(existing) = &function {
                        return Err(invalid(format!(
                            "state '{id}' gives module '{module}' two functions, '{existing}' and \
                             '{name}': use one state id per function"
                        )));
                    }
                    function = Some(name);
                }
                Yaml::Mapping(pair) if pair.len() == 1 => {
                    for (k, v) in pair {
                        parsed.push((yaml_key(&k), v));
                    }
                }
                Yaml::Mapping(pairs) if !pairs.is_empty() => parsed.extend(split_item(pairs)),
                other => {
                    return Err(invalid(format!(
                        "argument '{}' of '{key}' in state '{id}' must be a single key: value pair \
                         (check the indentation under the '-')",
                        yaml_key(&other).trim()
                    )));
                }
            }
        }
        if calls.iter().any(|c| c.module == module) {
            return Err(invalid(format!(
                "state '{id}' declares module '{module}' twice: use a separate id for each"
            )));
        }
        match &function {
            Some(function) => check_function(&module, function, &at)?,
            None if extending => {}
            None => {
                return Err(invalid(format!(
                    "state '{id}' gives module '{module}' no function: write {module}.<function>, \
                     one of {}",
                    catalogue::functions_of(&module).join(", ")
                )));
            }
        }
        calls.push(StateCall {
            module,
            function,
            args: parsed,
        });
    }
    if calls.is_empty() && !extending {
        return Err(invalid(format!("state '{id}' declares no module.function")));
    }
    Ok(StateDecl {
        id,
        sls: sls.to_string(),
        at,
        calls,
    })
}

/// An argument item holding several keys, as YAML reads `- defaults:` followed by keys indented
/// one level short:
///
/// ```yaml
/// - defaults:
///   port: 80
/// ```
///
/// is `{defaults: null, port: 80}`. Salt passes every key on as an argument, and `file.managed`
/// hands arguments it does not know to the template as variables; corpus's equivalent is to
/// fold the siblings into the empty `defaults:`/`context:` they were meant for. Otherwise each
/// key is an argument of its own, as in Salt.
fn split_item(pairs: Mapping) -> Vec<(String, Yaml)> {
    let mut entries = pairs.into_iter().map(|(k, v)| (yaml_key(&k), v));
    let Some((first, value)) = entries.next() else {
        return Vec::new();
    };
    if matches!(first.as_str(), "defaults" | "context") && value.is_null() {
        let folded: Mapping = entries.map(|(k, v)| (Yaml::String(k), v)).collect();
        return vec![(first, Yaml::Mapping(folded))];
    }
    std::iter::once((first, value)).chain(entries).collect()
}

pub(crate) fn check_function(
    module: &str,
    function: &str,
    at: &Location,
) -> Result<(), StateError> {
    if catalogue::lookup(module, function).is_some() {
        return Ok(());
    }
    let known = catalogue::functions_of(module);
    if known.is_empty() {
        return Err(StateError::UnknownModule {
            at: at.clone(),
            module: module.to_string(),
            known: catalogue::modules(),
        });
    }
    Err(StateError::UnknownFunction {
        at: at.clone(),
        module: module.to_string(),
        function: function.to_string(),
        known,
    })
}

#[cfg(test)]
#[path = "formula_tests.rs"]
mod formula_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(text: &str) -> Result<Vec<(String, serde_json::Value)>, String> {
        let yaml = corpus_pillar::yaml::parse_yaml("x.sls", text).map_err(|e| e.to_string())?;
        let file = parse_sls("x", "x.sls", text, yaml).map_err(|e| e.to_string())?;
        Ok(file.states[0].calls[0]
            .args
            .iter()
            .map(|(k, v)| (k.clone(), corpus_pillar::yaml::yaml_to_json(v)))
            .collect())
    }

    #[test]
    fn argument_items_with_sibling_keys_read_as_salt_does() {
        let folded = "/etc/x:\n  file.managed:\n    - source: salt://x\n    - defaults:\n      port: 80\n      enabled: yes\n    - mode: 0644\n";
        assert_eq!(
            args_of(folded),
            Ok(vec![
                ("source".into(), serde_json::json!("salt://x")),
                (
                    "defaults".into(),
                    serde_json::json!({"port": 80, "enabled": true})
                ),
                ("mode".into(), serde_json::json!(644)),
            ])
        );
        let context = "a:\n  file.managed:\n    - context:\n      x: 1\n";
        assert_eq!(
            args_of(context),
            Ok(vec![("context".into(), serde_json::json!({"x": 1}))])
        );
        let several = "a:\n  file.managed:\n    - name: /a\n      user: root\n";
        assert_eq!(
            args_of(several),
            Ok(vec![
                ("name".into(), serde_json::json!("/a")),
                ("user".into(), serde_json::json!("root")),
            ])
        );
        let bad = "a:\n  file.managed:\n    - [1, 2]\n";
        let err = args_of(bad).unwrap_err();
        assert!(err.contains("must be a single key: value pair"), "{err}");
    }
}
