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
}

/// The config file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    heartbeat: Option<String>,
    file_root: Option<PathBuf>,
    pillar_root: Option<PathBuf>,
}

/// Where settings come from: flags (which win) and an optional file.
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    pub config: Option<PathBuf>,
    pub heartbeat: Option<Duration>,
    pub file_root: Option<PathBuf>,
    pub pillar_root: Option<PathBuf>,
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
        Ok(Settings {
            heartbeat,
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
        std::fs::write(&config, "heartbeat: 10ms\n")?;
        assert!(source.load(Path::new("/data")).is_err());
        Ok(())
    }
}
