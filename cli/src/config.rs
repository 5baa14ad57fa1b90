//! `~/.makinastates.conf`: YAML mapping endpoint nicknames to `{url, id, password, ca}`, as the
//! RFC describes. `CORPUS_CONFIG` overrides the path. Errors name the file and the problem and
//! never echo a value (the file holds passwords).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {0} does not exist: create it with an entry `NAME: {{url: https://MASTER:4505, id: USER, password: PASSWORD, ca: /path/to/ca.crt}}` (CORPUS_CONFIG overrides the path)"
    )]
    Missing(PathBuf),
    #[error("config file {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("config file {path} has no endpoint {name:?} (it has: {known})")]
    UnknownEndpoint {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("config file {path} defines several endpoints ({known}): name one")]
    Ambiguous { path: PathBuf, known: String },
    #[error("cannot find the config file: set CORPUS_CONFIG or HOME")]
    NoHome,
}

/// One endpoint of the config file.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub id: String,
    pub password: String,
    /// The corpus CA certificate to trust for this master.
    pub ca: PathBuf,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("id", &self.id)
            .field("password", &"<redacted>")
            .field("ca", &self.ca)
            .finish()
    }
}

pub struct Config {
    pub path: PathBuf,
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// `CORPUS_CONFIG`, else `~/.makinastates.conf`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    if let Some(path) = std::env::var_os("CORPUS_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").ok_or(ConfigError::NoHome)?;
    Ok(Path::new(&home).join(".makinastates.conf"))
}

/// Where session tokens are cached: `CORPUS_CACHE_DIR`, else `$XDG_CACHE_HOME/corpus/sessions`,
/// else `~/.cache/corpus/sessions`; None (no caching) without any of them.
pub fn session_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|d| !d.is_empty());
    if let Some(dir) = var("CORPUS_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(Path::new(&dir).join("corpus").join("sessions"));
    }
    var("HOME").map(|home| {
        Path::new(&home)
            .join(".cache")
            .join("corpus")
            .join("sessions")
    })
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing(path.to_owned())
            } else {
                ConfigError::Unreadable {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "config file {} holds passwords and is readable by others: chmod 600 it",
                path.display()
            );
        }
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let malformed = |reason: String| ConfigError::Malformed {
            path: path.to_owned(),
            reason,
        };
        // Parse to a generic value first: typed deserialisation errors may quote values.
        let doc: Value = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            malformed(format!("invalid YAML{at}"))
        })?;
        let Value::Mapping(map) = doc else {
            return Err(malformed(
                "expected a mapping of endpoint names to {url, id, password, ca}".into(),
            ));
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut endpoints = BTreeMap::new();
        for (key, value) in map {
            let Value::String(name) = key else {
                return Err(malformed("endpoint names must be strings".into()));
            };
            let Value::Mapping(fields) = value else {
                return Err(malformed(format!(
                    "endpoint {name:?} must be a mapping with url, id, password and ca"
                )));
            };
            let field = |key: &str| -> Result<String, ConfigError> {
                match fields.get(key) {
                    Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    Some(Value::Number(n)) if key == "password" => Ok(n.to_string()),
                    Some(_) => Err(malformed(format!(
                        "endpoint {name:?}: {key} must be a non-empty string"
                    ))),
                    None => Err(malformed(format!("endpoint {name:?} has no {key}"))),
                }
            };
            let ca = PathBuf::from(field("ca")?);
            let endpoint = Endpoint {
                url: field("url")?,
                id: field("id")?,
                password: field("password")?,
                ca: if ca.is_absolute() { ca } else { base.join(ca) },
                name: name.clone(),
            };
            endpoints.insert(name, endpoint);
        }
        if endpoints.is_empty() {
            return Err(malformed("it defines no endpoint".into()));
        }
        Ok(Config {
            path: path.to_owned(),
            endpoints,
        })
    }

    fn known(&self) -> String {
        self.endpoints
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The named endpoint, or the only one when no name is given.
    pub fn endpoint(&self, name: Option<&str>) -> Result<&Endpoint, ConfigError> {
        match name {
            Some(name) => self
                .endpoints
                .get(name)
                .ok_or_else(|| ConfigError::UnknownEndpoint {
                    path: self.path.clone(),
                    name: name.to_owned(),
                    known: self.known(),
                }),
            None if self.endpoints.len() == 1 => {
                Ok(self
                    .endpoints
                    .values()
                    .next()
                    .ok_or(ConfigError::Ambiguous {
                        path: self.path.clone(),
                        known: String::new(),
                    })?)
            }
            None => Err(ConfigError::Ambiguous {
                path: self.path.clone(),
                known: self.known(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/home/u/.makinastates.conf"), text)
    }

    #[test]
    fn endpoints_resolve_by_name_or_alone() -> Result<(), ConfigError> {
        let c =
            parse("prod: {url: 'https://m:4505', id: me@x.net, password: s3cr3t, ca: ca.crt}\n")?;
        let e = c.endpoint(None)?;
        assert_eq!(e.ca, PathBuf::from("/home/u/ca.crt"));
        assert_eq!(c.endpoint(Some("prod"))?.id, "me@x.net");
        let err = c
            .endpoint(Some("dev"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no endpoint \"dev\" (it has: prod)"), "{err}");
        Ok(())
    }

    #[test]
    fn several_endpoints_need_a_name() -> Result<(), ConfigError> {
        let c = parse(
            "a: {url: u, id: i, password: p, ca: /c}\nb: {url: u, id: i, password: p, ca: /c}\n",
        )?;
        let err = c
            .endpoint(None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("several endpoints (a, b)"), "{err}");
        Ok(())
    }

    #[test]
    fn malformed_files_are_named_and_passwords_never_echoed() {
        for (text, expect) in [
            ("prod: [unclosed", "invalid YAML at line"),
            ("- a\n- b\n", "expected a mapping"),
            (
                "prod: {url: u, id: i, ca: c}",
                "endpoint \"prod\" has no password",
            ),
            (
                "prod: {url: u, id: i, password: [hunter2], ca: c}",
                "password must be",
            ),
            ("", "expected a mapping"),
        ] {
            let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("/home/u/.makinastates.conf"), "{err}");
            assert!(err.contains(expect), "{text:?} gave {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
