//! Salt's requisite arguments as written in an sls (`require: [- file: /etc/x]`, `- sls: web`,
//! a bare id) and the kinds they map to; which Salt requisites corpus refuses.

use serde_yaml::Value as Yaml;

use corpus_pillar::yaml::yaml_key;

use crate::error::{Location, StateError};
use crate::plan::RequisiteKind;

/// Every supported requisite argument (each also has an `_in` form).
const REQUISITES: &[(&str, RequisiteKind)] = &[
    ("require", RequisiteKind::Require),
    ("watch", RequisiteKind::Watch),
    ("onchanges", RequisiteKind::Onchanges),
    ("onfail", RequisiteKind::Onfail),
    ("require_any", RequisiteKind::RequireAny),
    ("watch_any", RequisiteKind::WatchAny),
    ("onchanges_any", RequisiteKind::OnchangesAny),
    ("onfail_any", RequisiteKind::OnfailAny),
    ("listen", RequisiteKind::Listen),
    ("prereq", RequisiteKind::Prereq),
];

/// Salt requisites corpus refuses by name rather than ignoring.
pub(crate) const UNSUPPORTED_REQUISITES: &[&str] = &["use", "onfail_all", "onfail_stop"];

/// The kind of requisite argument `arg`, and whether it is the `_in` form.
pub(crate) fn requisite_kind(arg: &str) -> Option<(RequisiteKind, bool)> {
    let (base, inverted) = match arg.strip_suffix("_in") {
        Some(base) => (base, true),
        None => (arg, false),
    };
    REQUISITES
        .iter()
        .find(|(name, _)| *name == base)
        .map(|(_, kind)| (*kind, inverted))
}

/// Salt's argument name for `kind`.
pub fn kind_name(kind: RequisiteKind) -> &'static str {
    REQUISITES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(name, _)| *name)
        .unwrap_or("require")
}

/// A requisite as written: `- file: /etc/x`, `- sls: web`, or a bare id.
#[derive(Debug, Clone)]
pub(crate) struct RawRequisite {
    pub kind: RequisiteKind,
    pub module: Option<String>,
    pub target: String,
}

impl RawRequisite {
    pub fn describe(&self) -> String {
        match &self.module {
            Some(module) => format!("{module}: {}", self.target),
            None => self.target.clone(),
        }
    }
}

/// Reads the value of requisite argument `arg` (a list, or a single reference).
pub(crate) fn parse_requisites(
    kind: RequisiteKind,
    value: Yaml,
    arg: &str,
    at: &Location,
) -> Result<Vec<RawRequisite>, StateError> {
    let items = match value {
        Yaml::Sequence(items) => items,
        Yaml::Null => Vec::new(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Yaml::Mapping(map) if !map.is_empty() => {
                for (module, target) in map {
                    out.push(RawRequisite {
                        kind,
                        module: Some(yaml_key(&module)),
                        target: yaml_key(&target),
                    });
                }
            }
            Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_) => out.push(RawRequisite {
                kind,
                module: None,
                target: yaml_key(&item),
            }),
            other => {
                return Err(StateError::Invalid {
                    at: at.clone(),
                    message: format!(
                        "{arg} entry '{}' is not a state reference: use - module: id_or_name or - id",
                        yaml_key(&other).trim()
                    ),
                });
            }
        }
    }
    Ok(out)
}
