//! `corpus-agent run`'s settings: flags over an optional YAML file (`--config FILE`, which
//! `corpus-master nodes attach` writes to `/etc/corpus/agent.yaml`) over defaults. SIGHUP
//! re-reads the file for what can change live ([`LiveSettings`]: slots, log level, heartbeat);
//! a file that fails to load or validate changes nothing, and the error says why, as the
//! master's settings do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

pub use corpus_proto::grains::MAX_CUSTOM_GRAINS_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{what} is missing: pass {flag} or set `{key}` in the config file")]
    Missing {
        what: &'static str,
        flag: &'static str,
        key: &'static str,
    },
    #[error("{0}")]
    Value(String),
    #[error("enrollment token file {path} cannot be read: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The config file's shape; every key is optional, an unknown one is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    master: Option<String>,
    ca: Option<PathBuf>,
    id: Option<String>,
    state_dir: Option<PathBuf>,
    root: Option<PathBuf>,
    slots: Option<u32>,
    token_file: Option<PathBuf>,
    log_level: Option<String>,
    heartbeat: Option<String>,
    outbound_allow: Option<Vec<String>>,
    /// Custom grains (Salt's `/etc/salt/grains`, a minion's `grains:`).
    grains: Option<Map<String, Json>>,
}

/// What SIGHUP may change on a running agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// How many environments this agent hosts (its `slots` grain, sent again on change).
    pub slots: u32,
    /// The operator's custom grains (`grains:`), for targeting (`-G roles:web`) and templates;
    /// sent again in a new Hello on change.
    pub grains: Map<String, Json>,
    /// A tracing filter directive (`info`, `debug`, `corpus_agent=debug`).
    pub log_level: String,
    /// Heartbeat at least this often, even if the master asks for less (None: the master's).
    pub heartbeat: Option<Duration>,
}

/// Everything `run` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub master: String,
    pub ca: PathBuf,
    pub id: Option<String>,
    pub state_dir: PathBuf,
    pub root: PathBuf,
    /// The enrollment token (from `--token`/`CORPUS_ENROLL_TOKEN` or a token file).
    pub token: Option<String>,
    pub live: LiveSettings,
    /// Where health checks and webhooks may send requests (`outbound_allow`).
    pub outbound_allow: OutboundAllow,
}

/// The operator's allow-list of the targets the agent itself sends requests to for a project:
/// HTTP health checks and webhooks (`outbound_allow` in the agent's config, a list of
/// `HOST:PORT` patterns: `HOST` exact, `*.DOMAIN` or `*`, `PORT` a number or `*`). Without it
/// only loopback is allowed, as a Kamal or Capistrano health check expects (the app on the same
/// machine); a webhook elsewhere (chat, CI) must be listed. A project's settings come from its
/// user, so without a list they could make the agent reach anything its network reaches.
/// Redirects are not followed, so an allowed target cannot send the agent elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAllow(Vec<String>);

/// What an agent allows when its config has no `outbound_allow`.
pub const DEFAULT_OUTBOUND_ALLOW: [&str; 3] = ["localhost:*", "127.0.0.1:*", "[::1]:*"];

impl Default for OutboundAllow {
    fn default() -> Self {
        OutboundAllow(DEFAULT_OUTBOUND_ALLOW.map(str::to_owned).to_vec())
    }
}

impl OutboundAllow {
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        for pattern in &patterns {
            let valid = pattern.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && (port == "*" || port.parse::<u16>().is_ok())
            });
            if !valid {
                return Err(format!(
                    "outbound_allow entry {pattern:?} is invalid: write HOST:PORT, e.g. \"127.0.0.1:*\" or \"*.example.com:443\""
                ));
            }
        }
        Ok(OutboundAllow(patterns))
    }

    /// Ok when `url` is an http(s) URL whose host and port an entry allows; else why not,
    /// naming the target and the setting.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let refused = |why: &str| {
            format!(
                "target {url} is not allowed{why}: the agent's outbound_allow (in /etc/corpus/agent.yaml) allows {}; ask its operator to add it",
                self.0.join(", ")
            )
        };
        let uri: ureq::http::Uri = url.parse().map_err(|_| refused(" (not a URL)"))?;
        let port = match (uri.port_u16(), uri.scheme_str()) {
            (Some(port), _) => port,
            (None, Some("http")) => 80,
            (None, Some("https")) => 443,
            _ => return Err(refused(" (only http and https are)")),
        };
        let host = uri
            .host()
            .ok_or_else(|| refused(" (no host)"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let allowed = self.0.iter().any(|pattern| {
            let Some((host_pattern, port_pattern)) = pattern.rsplit_once(':') else {
                return false;
            };
            let host_pattern = host_pattern
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let host_ok = match host_pattern.strip_prefix("*.") {
                _ if host_pattern == "*" => true,
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == host_pattern,
            };
            host_ok && (port_pattern == "*" || port_pattern.parse() == Ok(port))
        });
        if allowed { Ok(()) } else { Err(refused("")) }
    }
}

/// Where settings come from: the flags (None when not given: they win) and the file.
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    pub config: Option<PathBuf>,
    pub master: Option<String>,
    pub ca: Option<PathBuf>,
    pub id: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub slots: Option<u32>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub heartbeat: Option<Duration>,
}

impl SettingsSource {
    fn file(&self) -> Result<ConfigFile, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file = serde_yaml::from_str::<Option<ConfigFile>>(&text)
            .map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?
            .unwrap_or_default();
        Ok(file)
    }

    fn invalid(&self, message: String) -> ConfigError {
        match &self.config {
            Some(path) => ConfigError::Invalid {
                path: path.clone(),
                message,
            },
            None => ConfigError::Value(message),
        }
    }

    fn live_from(&self, file: &ConfigFile) -> Result<LiveSettings, ConfigError> {
        let slots = self.slots.or(file.slots).unwrap_or(4);
        if slots == 0 {
            return Err(self.invalid("slots 0 would host nothing: use at least 1".into()));
        }
        let log_level = match &self.log_level {
            Some(level) => level.clone(),
            None => std::env::var("RUST_LOG")
                .ok()
                .or(file.log_level.clone())
                .unwrap_or_else(|| "info".into()),
        };
        EnvFilter::try_new(&log_level)
            .map_err(|e| self.invalid(format!("log_level {log_level:?}: {e}")))?;
        let heartbeat = match (self.heartbeat, &file.heartbeat) {
            (Some(h), _) => Some(h),
            (None, Some(text)) => Some(
                corpus_runtime::parse_duration(text)
                    .map_err(|e| self.invalid(format!("heartbeat: {e}")))?,
            ),
            (None, None) => None,
        };
        if heartbeat.is_some_and(|h| h < Duration::from_secs(1)) {
            return Err(self.invalid("heartbeat is too short: use at least 1s".into()));
        }
        let grains = file.grains.clone().unwrap_or_default();
        check_custom_grains(&grains).map_err(|e| self.invalid(e))?;
        Ok(LiveSettings {
            slots,
            grains,
            log_level,
            heartbeat,
        })
    }

    /// Reads the file (if any), applies the flags over it and the defaults under it.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let file = self.file()?;
        let live = self.live_from(&file)?;
        let master = self
            .master
            .clone()
            .or(file.master)
            .ok_or(ConfigError::Missing {
                what: "the master's URL",
                flag: "--master",
                key: "master",
            })?;
        let ca = self.ca.clone().or(file.ca).ok_or(ConfigError::Missing {
            what: "the CA certificate",
            flag: "--ca",
            key: "ca",
        })?;
        let token = match (&self.token, &self.token_file, &file.token_file) {
            (Some(token), _, _) => Some(token.clone()),
            (None, Some(path), _) | (None, None, Some(path)) => read_token(path)?,
            (None, None, None) => None,
        };
        Ok(Settings {
            master,
            ca,
            id: self.id.clone().or(file.id),
            state_dir: self
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/corpus-agent")),
            root: self
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from("/srv/corpus")),
            token,
            live,
            outbound_allow: match file.outbound_allow {
                Some(patterns) => OutboundAllow::new(patterns).map_err(|e| self.invalid(e))?,
                None => OutboundAllow::default(),
            },
        })
    }

    /// Where the agent keeps its key: the flag, the file's `state_dir`, else the default.
    /// Needs nothing else of the configuration (`corpus-agent fingerprint`).
    pub fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        Ok(self
            .file()?
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/corpus-agent")))
    }

    /// Re-reads what can change live (SIGHUP).
    pub fn reload_live(&self) -> Result<LiveSettings, ConfigError> {
        self.live_from(&self.file()?)
    }
}

/// The longest custom grain name.
pub const MAX_GRAIN_NAME_CHARS: usize = 64;

/// Custom grains must not replace a core grain (`id`, `os`, `ipv4`, ...: targeting and
/// templates rely on them being the agent's own), must be named plainly (a `:` would split
/// in `-G key:glob`), and must fit [`MAX_CUSTOM_GRAINS_BYTES`] as JSON.
pub fn check_custom_grains(grains: &Map<String, Json>) -> Result<(), String> {
    let core = crate::grains::Grains::default().template_json();
    for key in grains.keys() {
        if core.get(key).is_some() || key == "custom" {
            return Err(format!(
                "grains: {key:?} is a core grain the agent reports itself and cannot be overridden: rename the custom grain"
            ));
        }
        let plain = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if key.is_empty() || key.chars().count() > MAX_GRAIN_NAME_CHARS || !plain {
            return Err(format!(
                "grains: name {} is invalid: use 1 to {MAX_GRAIN_NAME_CHARS} letters, digits, '_', '-' or '.'",
                corpus_proto::names::quote_input(key)
            ));
        }
    }
    let size = serde_json::to_vec(grains).map_or(usize::MAX, |b| b.len());
    if size > MAX_CUSTOM_GRAINS_BYTES {
        return Err(format!(
            "grains: {size} bytes as JSON is over the limit of {MAX_CUSTOM_GRAINS_BYTES} bytes (64 KiB): keep custom grains small, put data in pillar"
        ));
    }
    Ok(())
}

/// The token in `path` (trimmed). A missing file is no token: the file is removed once the
/// agent has enrolled, and a restarted agent no longer needs it.
fn read_token(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            Ok((!token.is_empty()).then(|| token.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "no enrollment token file");
            Ok(None)
        }
        Err(source) => Err(ConfigError::TokenFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Changes the log filter of a running agent.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl LogLevel {
    /// Installs stderr logging with `level` as a filter that [`LogLevel::set`] can replace.
    /// The level was validated by [`SettingsSource::load`]; an invalid one falls back to info.
    pub fn install(level: &str) -> LogLevel {
        let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter, handle) = reload::Layer::new(filter);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init();
        LogLevel { handle }
    }

    pub fn set(&self, level: &str) {
        if let Ok(filter) = EnvFilter::try_new(level) {
            let _ = self.handle.reload(filter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_targets_are_loopback_only_unless_the_operator_lists_more() {
        let default = OutboundAllow::default();
        assert!(default.check("http://127.0.0.1:8080/health").is_ok());
        assert!(default.check("http://localhost/").is_ok());
        assert!(default.check("http://[::1]:9000/").is_ok());
        let err = default
            .check("http://169.254.169.254/latest/meta-data")
            .unwrap_err();
        assert!(
            err.contains("169.254.169.254") && err.contains("outbound_allow"),
            "{err}"
        );
        assert!(default.check("file:///etc/shadow").is_err());

        let listed =
            OutboundAllow::new(vec!["*.example.com:443".into(), "10.0.0.5:*".into()]).unwrap();
        assert!(listed.check("https://hooks.example.com/x").is_ok());
        assert!(listed.check("http://hooks.example.com/x").is_err());
        assert!(listed.check("https://example.com.evil.net/").is_err());
        assert!(listed.check("http://10.0.0.5:81/").is_ok());
        assert!(listed.check("http://127.0.0.1/").is_err());
        assert!(OutboundAllow::new(vec!["no-port".into()]).is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_a_bad_file_changes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("agent.yaml");
        let token = dir.path().join("enroll.token");
        std::fs::write(&token, "s3cret\n")?;
        std::fs::write(
            &config,
            format!(
                "master: https://m:4505\nca: /etc/corpus/ca.crt\nid: n1\nslots: 3\n\
                 log_level: debug\nheartbeat: 5s\ntoken_file: {}\n",
                token.display()
            ),
        )?;
        let source = SettingsSource {
            config: Some(config.clone()),
            root: Some("/flag/root".into()),
            log_level: Some("warn".into()),
            ..Default::default()
        };
        let s = source.load()?;
        assert_eq!(s.master, "https://m:4505");
        assert_eq!(s.id.as_deref(), Some("n1"));
        assert_eq!(s.root, PathBuf::from("/flag/root"));
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/corpus-agent"));
        assert_eq!(s.token.as_deref(), Some("s3cret"));
        assert_eq!(
            s.live,
            LiveSettings {
                slots: 3,
                grains: Map::new(),
                log_level: "warn".into(),
                heartbeat: Some(Duration::from_secs(5)),
            }
        );
        std::fs::remove_file(&token)?;
        assert_eq!(source.load()?.token, None);

        std::fs::write(&config, "master: https://m:4505\nslotz: 3\n")?;
        let err = source.reload_live().err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("agent.yaml") && err.contains("slotz"), "{err}");
        std::fs::write(&config, "slots: 0\n")?;
        assert!(source.reload_live().is_err());
        let missing = SettingsSource::default()
            .load()
            .err()
            .map(|e| e.to_string());
        assert!(missing.unwrap_or_default().contains("--master"));
        Ok(())
    }

    #[test]
    fn custom_grains_load_and_reload_but_never_replace_a_core_grain() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            "grains:\n  roles: [web, cache]\n  site:\n    rack: r12\n",
        )?;
        let source = SettingsSource {
            config: Some(config.clone()),
            ..Default::default()
        };
        let live = source.reload_live()?;
        assert_eq!(live.grains["roles"], serde_json::json!(["web", "cache"]));
        assert_eq!(live.grains["site"]["rack"], "r12");

        for (text, names) in [
            ("grains:\n  os: Plan9\n", "\"os\""),
            ("grains:\n  id: other\n", "\"id\""),
            ("grains:\n  ipv4: [1.2.3.4]\n", "\"ipv4\""),
            ("grains:\n  'a:b': 1\n", "a:b"),
        ] {
            std::fs::write(&config, text)?;
            let err = source.reload_live().err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(
                err.contains(names) && err.contains("agent.yaml"),
                "{text}: {err}"
            );
        }
        let big = format!("grains:\n  blob: {}\n", "x".repeat(MAX_CUSTOM_GRAINS_BYTES));
        std::fs::write(&config, big)?;
        let err = source.reload_live().err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("65536 bytes"));
        Ok(())
    }
}
