//! What `nodes attach` puts on a node and where: every path under a remote prefix (`/` in
//! production; a temporary directory in tests and staging, so they never touch the real
//! `/etc`), the agent's config file and its systemd unit.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The agent's files on one node.
#[derive(Debug, Clone)]
pub struct RemoteLayout {
    prefix: PathBuf,
    /// Where environments live (`--root`), under the prefix.
    pub root: String,
}

impl RemoteLayout {
    pub fn new(prefix: &Path, root: &Path) -> RemoteLayout {
        let layout = RemoteLayout {
            prefix: prefix.to_owned(),
            root: String::new(),
        };
        let root = layout.path(&root.to_string_lossy());
        RemoteLayout { root, ..layout }
    }

    /// `relative` (leading `/` ignored) under the prefix.
    fn path(&self, relative: &str) -> String {
        self.prefix
            .join(relative.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned()
    }

    pub fn binary(&self) -> String {
        self.path("usr/local/bin/corpus-agent")
    }
    pub fn config_dir(&self) -> String {
        self.path("etc/corpus")
    }
    pub fn config(&self) -> String {
        self.path("etc/corpus/agent.yaml")
    }
    pub fn ca(&self) -> String {
        self.path("etc/corpus/ca.crt")
    }
    /// The single-use enrollment token, 0600, read by the agent through `token_file`.
    pub fn token(&self) -> String {
        self.path("etc/corpus/enroll.token")
    }
    pub fn state_dir(&self) -> String {
        self.path("var/lib/corpus-agent")
    }
    pub fn unit(&self) -> String {
        self.path("etc/systemd/system/corpus-agent.service")
    }
    /// Without systemd: the detached agent's pid and output.
    pub fn pid_file(&self) -> String {
        self.path("run/corpus-agent.pid")
    }
    pub fn log_file(&self) -> String {
        self.path("var/log/corpus-agent.log")
    }
}

/// `/etc/corpus/agent.yaml`: the keys `corpus-agent run --config` reads.
#[derive(Debug, Serialize)]
pub struct AgentConfig {
    pub master: String,
    pub ca: String,
    pub id: String,
    pub state_dir: String,
    pub root: String,
    pub slots: u32,
    pub token_file: String,
}

impl AgentConfig {
    pub fn to_yaml(&self) -> String {
        // A flat struct of strings and a number always serialises.
        let body = serde_yaml::to_string(self).unwrap_or_default();
        format!(
            "# Written by `corpus-master nodes attach`; re-read on SIGHUP (slots, log_level, heartbeat).\n{body}"
        )
    }
}

/// The unit shipped in `dist/systemd/`, installed as is in production.
const DIST_UNIT: &str = include_str!("../../../../dist/systemd/corpus-agent.service");

/// `corpus-agent.service`: the shipped unit, its binary and config paths under the prefix.
pub fn systemd_unit(layout: &RemoteLayout) -> String {
    DIST_UNIT
        .replace("/usr/local/bin/corpus-agent", &layout.binary())
        .replace("/etc/corpus/agent.yaml", &layout.config())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_prefix() {
        let layout = RemoteLayout::new(Path::new("/tmp/node"), Path::new("/srv/corpus"));
        for path in [
            layout.binary(),
            layout.config(),
            layout.ca(),
            layout.token(),
            layout.state_dir(),
            layout.unit(),
            layout.pid_file(),
            layout.log_file(),
            layout.root.clone(),
        ] {
            assert!(path.starts_with("/tmp/node/"), "{path}");
        }
        let production = RemoteLayout::new(Path::new("/"), Path::new("/srv/corpus"));
        assert_eq!(production.config(), "/etc/corpus/agent.yaml");
        assert_eq!(production.root, "/srv/corpus");
        assert!(
            systemd_unit(&production).contains(
                "ExecStart=/usr/local/bin/corpus-agent run --config /etc/corpus/agent.yaml"
            )
        );
    }
}
