//! The project settings corpus itself acts on, read from `common.data` (PRODUCT.md's
//! `PILLAR.sample` <- environment defaults <- pillar): `keep_archives`, `healthcheck`, `notify`
//! and `backup_data`, as one typed [`ProjectSettings`].
//!
//! It lives in `states` rather than `pillar` because it is part of the project lifecycle's
//! language, next to [`crate::Phase`]: the master validates it at push time (so a typo fails the
//! push before anything runs) and the agent acts on it, and both already depend on `states`.
//! `pillar` only builds the merged mapping and knows nothing of what the lifecycle reads.
//! Like the rest of this crate it is data in, data out: no I/O.
//!
//! Every other key of `data` is the project's own setting and stays allowed; the settings that
//! are objects (`healthcheck`, `notify`) refuse unknown fields, so `{comand: ...}` is an error.
//! Error messages name the key and never quote a value (a webhook URL may carry a token).

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The lifecycle's settings of one project, with PRODUCT.md's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings {
    /// Archives (and releases) rotation keeps; at least 1, default 3.
    pub keep_archives: usize,
    /// Run after start; a failure rolls the deploy back. `None` skips the step.
    pub healthcheck: Option<HealthCheck>,
    /// Who hears about a finished deploy.
    pub notify: NotifySettings,
    /// Whether `data/` is copied into the deploy's archive before anything changes (and put back
    /// on rollback); default true.
    pub backup_data: bool,
}

impl Default for ProjectSettings {
    fn default() -> Self {
        ProjectSettings {
            keep_archives: DEFAULT_KEEP_ARCHIVES,
            healthcheck: None,
            notify: NotifySettings::default(),
            backup_data: true,
        }
    }
}

/// `notify`: webhooks POSTed a JSON summary of each finished deploy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    #[serde(default)]
    pub webhooks: Vec<String>,
}

/// `healthcheck`: one probe, tried up to `retries` times `interval` apart.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// At least 1, default 3.
    pub retries: u32,
    /// Default one second.
    pub interval: Duration,
}

/// What a health check tries.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthProbe {
    /// A shell command that must exit 0, run in `run/`.
    Command { command: String },
    /// A GET that must answer `status` (default 200).
    Http { url: String, status: u16 },
}

/// `healthcheck` as written; [`HealthCheck`] is what it means.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFields {
    command: Option<String>,
    http: Option<String>,
    status: Option<u16>,
    retries: Option<u32>,
    interval: Option<f64>,
}

const DEFAULT_KEEP_ARCHIVES: usize = 3;
const HEALTHCHECK_EXAMPLE: &str = "{command: 'curl -f localhost', retries: 3, interval: 1} or {http: 'http://localhost/', status: 200}";

/// A project setting that cannot be used. The push is refused before any job exists.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("project setting `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("project setting `healthcheck` needs `command` or `http`, e.g. {HEALTHCHECK_EXAMPLE}")]
    NoProbe,
    #[error(
        "project setting `healthcheck.interval` must be a number of seconds between 0 and one day"
    )]
    Interval,
}

impl ProjectSettings {
    /// The settings in `common.data` of a job (`common` as the master builds it).
    pub fn from_common(common: &Value) -> Result<ProjectSettings, SettingsError> {
        ProjectSettings::from_data(common.get("data").unwrap_or(&Value::Null))
    }

    /// The settings in a project's merged `data` mapping; absent or null keys take defaults.
    pub fn from_data(data: &Value) -> Result<ProjectSettings, SettingsError> {
        let defaults = ProjectSettings::default();
        let keep_archives = setting::<u64>(data, "keep_archives")?
            .map_or(defaults.keep_archives, |n| {
                usize::try_from(n.max(1)).unwrap_or(usize::MAX)
            });
        let backup_data = setting::<bool>(data, "backup_data")?.unwrap_or(defaults.backup_data);
        let notify = setting::<NotifySettings>(data, "notify")?.unwrap_or_default();
        let healthcheck = setting::<HealthCheckFields>(data, "healthcheck")?
            .map(HealthCheck::try_from)
            .transpose()?;
        Ok(ProjectSettings {
            keep_archives,
            healthcheck,
            notify,
            backup_data,
        })
    }
}

impl TryFrom<HealthCheckFields> for HealthCheck {
    type Error = SettingsError;

    fn try_from(fields: HealthCheckFields) -> Result<HealthCheck, SettingsError> {
        // A command wins over a URL when both are given, as it always has.
        let probe = match (fields.command, fields.http) {
            (Some(command), _) => HealthProbe::Command { command },
            (None, Some(url)) => HealthProbe::Http {
                url,
                status: fields.status.unwrap_or(200),
            },
            (None, None) => return Err(SettingsError::NoProbe),
        };
        let interval = match fields.interval {
            None => Duration::from_secs(1),
            Some(s) if s <= MAX_INTERVAL_SECS => {
                Duration::try_from_secs_f64(s.max(0.0)).map_err(|_| SettingsError::Interval)?
            }
            Some(_) => return Err(SettingsError::Interval),
        };
        Ok(HealthCheck {
            probe,
            retries: fields.retries.unwrap_or(3).max(1),
            interval,
        })
    }
}

/// A day between probes is already far past any sensible health check.
const MAX_INTERVAL_SECS: f64 = 86_400.0;

/// `data[key]` as a `T`, `None` when absent or null.
fn setting<T: DeserializeOwned>(
    data: &Value,
    key: &'static str,
) -> Result<Option<T>, SettingsError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|e| SettingsError::Invalid {
                key,
                reason: without_values(&e.to_string()),
            }),
    }
}

/// serde's `invalid type: string "https://..?token=..", expected u64` without the value: keep
/// what kind of value was found and what was expected.
fn without_values(message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    let Some((found, expected)) = rest.and_then(|r| r.split_once(", expected ")) else {
        return message.to_string();
    };
    let kind = found.split(['"', '`']).next().unwrap_or(found).trim_end();
    format!("expected {expected}, found {kind}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(data: Value) -> String {
        match ProjectSettings::from_data(&data) {
            Ok(s) => panic!("{data} was accepted as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_settings_take_the_documented_defaults() {
        let s = ProjectSettings::from_data(&json!({"workers": 2, "user": "app"})).unwrap();
        assert_eq!(s, ProjectSettings::default());
        assert_eq!(s.keep_archives, 3);
        assert!(s.backup_data);
        assert_eq!(ProjectSettings::from_common(&Value::Null).unwrap(), s);
        let nulls = json!({"keep_archives": null, "healthcheck": null, "notify": null});
        assert_eq!(ProjectSettings::from_data(&nulls).unwrap(), s);
    }

    #[test]
    fn settings_are_read_with_their_defaults_filled_in() {
        let common = json!({"data": {
            "keep_archives": 0,
            "backup_data": false,
            "notify": {"webhooks": ["http://hooks/a"]},
            "healthcheck": {"http": "http://localhost:8080/", "interval": 0.5},
        }});
        let s = ProjectSettings::from_common(&common).unwrap();
        assert_eq!(s.keep_archives, 1, "at least one archive is kept");
        assert!(!s.backup_data);
        assert_eq!(s.notify.webhooks, ["http://hooks/a"]);
        let hc = s.healthcheck.unwrap();
        assert_eq!(
            hc.probe,
            HealthProbe::Http {
                url: "http://localhost:8080/".into(),
                status: 200
            }
        );
        assert_eq!((hc.retries, hc.interval), (3, Duration::from_millis(500)));
        let cmd =
            ProjectSettings::from_data(&json!({"healthcheck": {"command": "true", "retries": 0}}))
                .unwrap()
                .healthcheck
                .unwrap();
        assert_eq!(
            cmd.probe,
            HealthProbe::Command {
                command: "true".into()
            }
        );
        assert_eq!((cmd.retries, cmd.interval), (1, Duration::from_secs(1)));
    }

    #[test]
    fn a_misspelt_healthcheck_field_names_the_setting_and_the_field() {
        let e = error(json!({"healthcheck": {"comand": "curl -f localhost"}}));
        assert!(e.contains("`healthcheck`"), "{e}");
        assert!(e.contains("comand"), "{e}");
    }

    #[test]
    fn a_healthcheck_without_a_probe_is_refused() {
        let e = error(json!({"healthcheck": {"retries": 2}}));
        assert!(e.contains("`healthcheck` needs `command` or `http`"), "{e}");
    }

    #[test]
    fn a_healthcheck_of_the_wrong_type_is_refused() {
        let e = error(json!({"healthcheck": "curl -f localhost"}));
        assert!(e.contains("`healthcheck`"), "{e}");
        let e = error(json!({"healthcheck": {"command": "true", "retries": -1}}));
        assert!(e.contains("`healthcheck`"), "{e}");
        let e = error(json!({"healthcheck": {"http": "http://x/", "status": 70000}}));
        assert!(e.contains("`healthcheck`"), "{e}");
    }

    #[test]
    fn a_healthcheck_interval_out_of_range_is_refused() {
        let e = error(json!({"healthcheck": {"command": "true", "interval": 1e300}}));
        assert!(e.contains("healthcheck.interval"), "{e}");
    }

    #[test]
    fn keep_archives_must_be_a_whole_number() {
        let e = error(json!({"keep_archives": "x"}));
        assert!(
            e.starts_with("project setting `keep_archives` is invalid"),
            "{e}"
        );
        assert!(!e.contains("\"x\""), "values are never quoted: {e}");
        let e = error(json!({"keep_archives": -2}));
        assert!(e.contains("`keep_archives`"), "{e}");
        let e = error(json!({"keep_archives": 2.5}));
        assert!(e.contains("`keep_archives`"), "{e}");
    }

    #[test]
    fn backup_data_must_be_a_boolean() {
        let e = error(json!({"backup_data": "yes"}));
        assert!(e.contains("`backup_data`"), "{e}");
    }

    #[test]
    fn notify_refuses_unknown_fields_and_non_url_lists_without_quoting_them() {
        let e = error(json!({"notify": {"webhook": ["http://x/"]}}));
        assert!(e.contains("`notify`") && e.contains("webhook"), "{e}");
        let secret = "http://hooks/T0/B0/s3cr3t";
        let e = error(json!({"notify": {"webhooks": secret}}));
        assert!(e.contains("`notify`"), "{e}");
        assert!(!e.contains("s3cr3t"), "the URL must not be echoed: {e}");
        let e = error(json!({"notify": {"webhooks": [1]}}));
        assert!(e.contains("`notify`"), "{e}");
    }
}
