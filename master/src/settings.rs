//! The master's reloadable settings: flags, optionally a YAML file (`serve --config FILE`)
//! re-read on SIGHUP. A file that fails to load or validate leaves the running settings as they
//! were, and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What SIGHUP may change on a running master.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How often agents heartbeat (links attached from now on); a link silent for three
    /// periods is dropped.
    pub heartbeat: Duration,
    /// Salt's file_roots and pillar_roots for `corpus-master render`.
    pub file_root: PathBuf,
    pub pillar_root: PathBuf,
    /// How long finished jobs and their events are kept (see [`crate::retention`]).
    pub retention: Retention,
    /// The sheet this master's environments belong to (`sheet:` in the config file); its
    /// number is the first digit of every environment's SMEP identity. Existing environments
    /// keep theirs when it changes: only new ones use the new sheet.
    pub sheet: String,
    /// The environment numbers (SMEP's M, within 1-99) this master hands out on each agent
    /// (`machine_numbers: "1-99"`): masters whose agents share a UID space keep apart by
    /// taking disjoint ranges (the end-to-end tests do, running side by side).
    pub machine_numbers: std::ops::RangeInclusive<u32>,
    /// Salt's nodegroups (`nodegroups:` in the config file): name -> compound target, for
    /// `corpus-master apply|run -N NAME` and `N@NAME`.
    pub nodegroups: std::collections::BTreeMap<String, String>,
    /// How long an agent certificate issued from now on lasts (`agent_cert_lifetime:`, default
    /// 90 days); agents renew at two thirds of it (`renew.rs`).
    pub agent_cert_lifetime: Duration,
    /// Most bytes of archives the master stores in all (`max_blob_storage_bytes`; see
    /// [`crate::blob_gc`]).
    pub max_blob_storage_bytes: u64,
}

/// The default lifetime of an agent certificate.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest agent certificate lifetime accepted (tests use seconds).
pub const MIN_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(3);

/// The master-wide storage ceiling unless the settings file says otherwise: 200 GB.
pub const DEFAULT_MAX_BLOB_STORAGE_BYTES: u64 = 200_000_000_000;

/// What the background purge keeps. It never removes a running job, the job of a live
/// deployment, the newest deployment a destroy or rollback replays, or the job that cooked a
/// release; besides those it keeps, per project, the `jobs_per_project` newest jobs and every
/// job younger than `job_age`. Expired sessions always go.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub job_age: Duration,
    pub jobs_per_project: usize,
    /// How often the purge runs (also once at start).
    pub purge_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            job_age: Duration::from_secs(90 * 24 * 3600),
            jobs_per_project: 50,
            purge_every: Duration::from_secs(3600),
        }
    }
}

/// The config file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    heartbeat: Option<String>,
    file_root: Option<PathBuf>,
    pillar_root: Option<PathBuf>,
    #[serde(default)]
    retention: RetentionFile,
    sheet: Option<String>,
    machine_numbers: Option<String>,
    #[serde(default)]
    nodegroups: std::collections::BTreeMap<String, String>,
    agent_cert_lifetime: Option<String>,
    max_blob_storage_bytes: Option<u64>,
}

/// `retention:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    /// e.g. `90d`.
    jobs_for: Option<String>,
    jobs_per_project: Option<usize>,
    /// e.g. `1h`.
    purge_every: Option<String>,
}

impl RetentionFile {
    fn resolve(&self) -> anyhow::Result<Retention> {
        let defaults = Retention::default();
        let duration = |key: &str, text: &Option<String>, default: Duration| match text {
            Some(text) => corpus_runtime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("config retention.{key}: {e}")),
            None => Ok(default),
        };
        let retention = Retention {
            job_age: duration("jobs_for", &self.jobs_for, defaults.job_age)?,
            jobs_per_project: self.jobs_per_project.unwrap_or(defaults.jobs_per_project),
            purge_every: duration("purge_every", &self.purge_every, defaults.purge_every)?,
        };
        if retention.jobs_per_project == 0 {
            anyhow::bail!("config retention.jobs_per_project must be at least 1");
        }
        if retention.purge_every < Duration::from_secs(1) {
            anyhow::bail!("config retention.purge_every is too short: use at least 1s");
        }
        Ok(retention)
    }
}

/// Where settings come from: flags (which win) and an optional file.
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    pub config: Option<PathBuf>,
    pub heartbeat: Option<Duration>,
    pub file_root: Option<PathBuf>,
    pub pillar_root: Option<PathBuf>,
    pub sheet: Option<String>,
    pub machine_numbers: Option<String>,
    pub agent_cert_lifetime: Option<Duration>,
}

/// Parses `A-B` (or `A`), a range within SMEP's environment numbers 1-99.
pub fn parse_machine_numbers(text: &str) -> anyhow::Result<std::ops::RangeInclusive<u32>> {
    let all = crate::smep::MACHINE_NUMBERS;
    // Quoted short: an error never echoes a long input back.
    let shown = format!("{:?}", text.chars().take(32).collect::<String>());
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let number = |t: &str| {
        t.trim().parse::<u32>().map_err(|_| {
            anyhow::anyhow!(
                "machine_numbers {shown} is invalid: write FIRST-LAST within {}-{}, e.g. 1-99",
                all.start(),
                all.end()
            )
        })
    };
    let (first, last) = (number(first)?, number(last)?);
    if first < *all.start() || last > *all.end() || first > last {
        anyhow::bail!(
            "machine_numbers {shown} is out of range: write FIRST-LAST within {}-{}, e.g. 1-99",
            all.start(),
            all.end()
        );
    }
    Ok(first..=last)
}

impl SettingsSource {
    /// Reads the file (if any), applies the flags over it and the defaults under it.
    pub fn load(&self, data_dir: &Path) -> anyhow::Result<Settings> {
        let file = match &self.config {
            None => SettingsFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("config file {} cannot be read: {e}", path.display())
                })?;
                serde_yaml::from_str::<Option<SettingsFile>>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))?
                    .unwrap_or_default()
            }
        };
        let heartbeat = match (self.heartbeat, &file.heartbeat) {
            (Some(h), _) => h,
            (None, Some(text)) => corpus_runtime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("config heartbeat: {e}"))?,
            (None, None) => Duration::from_secs(10),
        };
        if heartbeat < Duration::from_secs(1) {
            anyhow::bail!("heartbeat {heartbeat:?} is too short: use at least 1s");
        }
        let sheet = self
            .sheet
            .clone()
            .or(file.sheet)
            .unwrap_or_else(|| crate::smep::DEFAULT_SHEET.to_owned());
        let machine_numbers = match self
            .machine_numbers
            .as_ref()
            .or(file.machine_numbers.as_ref())
        {
            Some(text) => parse_machine_numbers(text)?,
            None => crate::smep::MACHINE_NUMBERS,
        };
        let agent_cert_lifetime = match (self.agent_cert_lifetime, &file.agent_cert_lifetime) {
            (Some(l), _) => l,
            (None, Some(text)) => corpus_runtime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("config agent_cert_lifetime: {e}"))?,
            (None, None) => DEFAULT_AGENT_CERT_LIFETIME,
        };
        if agent_cert_lifetime < MIN_AGENT_CERT_LIFETIME {
            anyhow::bail!(
                "agent_cert_lifetime {agent_cert_lifetime:?} is too short: use at least {MIN_AGENT_CERT_LIFETIME:?}"
            );
        }
        if sheet.trim().is_empty() {
            anyhow::bail!("config sheet is empty: name the sheet or remove the key");
        }
        for name in file.nodegroups.keys() {
            crate::fleet::target::Target::parse(
                crate::fleet::target::TargetType::Nodegroup,
                name,
                &file.nodegroups,
            )
            .map_err(|e| anyhow::anyhow!("config nodegroups.{name}: {e}"))?;
        }
        Ok(Settings {
            nodegroups: file.nodegroups,
            max_blob_storage_bytes: file
                .max_blob_storage_bytes
                .unwrap_or(DEFAULT_MAX_BLOB_STORAGE_BYTES),
            heartbeat,
            sheet,
            machine_numbers,
            agent_cert_lifetime,
            retention: file.retention.resolve()?,
            file_root: self
                .file_root
                .clone()
                .or(file.file_root)
                .unwrap_or_else(|| data_dir.join("states")),
            pillar_root: self
                .pillar_root
                .clone()
                .or(file.pillar_root)
                .unwrap_or_else(|| data_dir.join("pillar")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_bad_files_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("master.yaml");
        std::fs::write(&config, "heartbeat: 30s\nfile_root: /srv/salt\n")?;
        let source = SettingsSource {
            config: Some(config.clone()),
            pillar_root: Some("/flag/pillar".into()),
            ..Default::default()
        };
        let s = source.load(Path::new("/data"))?;
        assert_eq!(s.heartbeat, Duration::from_secs(30));
        assert_eq!(s.file_root, PathBuf::from("/srv/salt"));
        assert_eq!(s.pillar_root, PathBuf::from("/flag/pillar"));

        std::fs::write(&config, "hartbeat: 30s\n")?;
        let err = source
            .load(Path::new("/data"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("master.yaml") && err.contains("hartbeat"),
            "{err}"
        );
        assert_eq!(s.sheet, "corpus");
        std::fs::write(&config, "sheet: acme\n")?;
        assert_eq!(source.load(Path::new("/data"))?.sheet, "acme");
        std::fs::write(&config, "heartbeat: 10ms\n")?;
        assert!(source.load(Path::new("/data")).is_err());
        Ok(())
    }

    #[test]
    fn machine_numbers_default_to_all_and_a_bad_range_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("master.yaml");
        std::fs::write(&config, "machine_numbers: 10-19\n")?;
        let mut source = SettingsSource {
            config: Some(config.clone()),
            ..Default::default()
        };
        assert_eq!(source.load(dir.path())?.machine_numbers, 10..=19);
        source.machine_numbers = Some("7".into());
        source.sheet = Some("flagged".into());
        let s = source.load(dir.path())?;
        assert_eq!((s.machine_numbers, s.sheet.as_str()), (7..=7, "flagged"));
        for bad in ["0-5", "5-100", "9-3", "x", ""] {
            source.machine_numbers = Some(bad.into());
            let err = source.load(dir.path()).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("machine_numbers")),
                "{bad:?}: {err:?}"
            );
        }
        std::fs::write(&config, "")?;
        source.machine_numbers = None;
        assert_eq!(source.load(dir.path())?.machine_numbers, 1..=99);
        Ok(())
    }

    #[test]
    fn retention_has_defaults_and_reads_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("master.yaml");
        let source = SettingsSource {
            config: Some(config.clone()),
            ..Default::default()
        };
        std::fs::write(&config, "heartbeat: 10s\n")?;
        assert_eq!(source.load(dir.path())?.retention, Retention::default());

        std::fs::write(
            &config,
            "retention:\n  jobs_for: 7d\n  jobs_per_project: 3\n  purge_every: 10m\n",
        )?;
        let retention = source.load(dir.path())?.retention;
        assert_eq!(
            retention,
            Retention {
                job_age: Duration::from_secs(7 * 24 * 3600),
                jobs_per_project: 3,
                purge_every: Duration::from_secs(600),
            }
        );
        std::fs::write(&config, "retention:\n  jobs_per_project: 0\n")?;
        assert!(source.load(dir.path()).is_err());
        std::fs::write(&config, "retention:\n  keep: 3\n")?;
        assert!(source.load(dir.path()).is_err());
        Ok(())
    }

    #[test]
    fn nodegroups_are_read_and_a_bad_one_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("master.yaml");
        let source = SettingsSource {
            config: Some(config.clone()),
            ..Default::default()
        };
        std::fs::write(&config, "nodegroups:\n  webs: 'web* and G@os:Debian'\n")?;
        let groups = source.load(dir.path())?.nodegroups;
        assert_eq!(
            groups.get("webs").map(String::as_str),
            Some("web* and G@os:Debian")
        );
        std::fs::write(&config, "nodegroups:\n  webs: 'web* and'\n")?;
        let err = source.load(dir.path()).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("nodegroups.webs")),
            "{err:?}"
        );
        Ok(())
    }
}
