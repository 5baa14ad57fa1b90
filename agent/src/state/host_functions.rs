//! The agent's side of render-time execution functions (`salt['cmd.run']`, `salt['user.info']`,
//! `salt['pkg.version']`, `salt['file.file_exists']`, ...): templates rendered on this machine
//! (`apply --local`) may ask it, through the [`HostFunctions`] capability the pillar crate
//! defines. The master never has one, so there those functions fail naming themselves.

use std::path::Path;
use std::time::Duration;

use corpus_pillar::template::{HostFunctions, PathKind};
use serde_json::{Value, json};

use super::accounts::{groups_of, user_by_name};
use super::cmd::{CommandSpec, execute};

/// How long one `cmd.run` in a template may take: rendering waits for it.
const TEMPLATE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// This machine, as render-time functions see it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalHost;

impl HostFunctions for LocalHost {
    fn cmd_run(&self, command: &str, cwd: Option<&str>) -> Result<String, String> {
        let output = execute(&CommandSpec {
            command: command.to_string(),
            shell: "/bin/sh".to_string(),
            cwd: cwd.unwrap_or("/").into(),
            env: Vec::new(),
            runas: None,
            timeout: Some(TEMPLATE_COMMAND_TIMEOUT),
            output_cap: crate::state::cmd::OUTPUT_CAP_BYTES,
        })?;
        if output.timed_out {
            return Err(format!(
                "timed out after {}s",
                TEMPLATE_COMMAND_TIMEOUT.as_secs()
            ));
        }
        // Salt's cmd.run returns stdout and stderr together, without the final newline, and
        // does not fail on a non-zero exit.
        let mut text = output.stdout;
        if !output.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&output.stderr);
        }
        Ok(text.trim_end_matches('\n').to_string())
    }

    fn which(&self, name: &str) -> Option<String> {
        if name.contains('/') {
            return is_executable(Path::new(name)).then(|| name.to_string());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
            .map(|found| found.to_string_lossy().into_owned())
    }

    fn user_info(&self, name: &str) -> Option<Value> {
        let user = user_by_name(name).ok()?;
        let groups: Vec<String> = groups_of(&user)
            .into_iter()
            .filter_map(|gid| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .collect();
        Some(json!({
            "name": user.name,
            "uid": user.uid,
            "gid": user.gid,
            "home": user.home,
            "shell": user.shell,
            "groups": groups,
            "passwd": "x",
        }))
    }

    fn pkg_version(&self, name: &str) -> String {
        let quoted = shell_quote(name);
        let queries = [
            format!("dpkg-query -W -f='${{Version}}' {quoted} 2>/dev/null"),
            format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {quoted} 2>/dev/null"),
        ];
        for query in queries {
            if let Ok(output) = execute(&CommandSpec {
                command: query,
                shell: "/bin/sh".to_string(),
                cwd: "/".into(),
                env: Vec::new(),
                runas: None,
                timeout: Some(TEMPLATE_COMMAND_TIMEOUT),
                output_cap: crate::state::cmd::OUTPUT_CAP_BYTES,
            }) && output.retcode == 0
                && !output.stdout.trim().is_empty()
            {
                return output.stdout.trim().to_string();
            }
        }
        String::new()
    }

    fn path_exists(&self, path: &str, kind: PathKind) -> bool {
        match std::fs::metadata(path) {
            Ok(meta) => match kind {
                PathKind::File => meta.is_file(),
                PathKind::Directory => meta.is_dir(),
                PathKind::Any => true,
            },
            Err(_) => false,
        }
    }

    fn read_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_host_answers_render_time_functions() {
        let host = LocalHost;
        assert_eq!(
            host.cmd_run("echo hi; echo err >&2", None),
            Ok("hi\nerr".into())
        );
        assert_eq!(host.cmd_run("pwd", Some("/tmp")), Ok("/tmp".into()));
        assert!(host.which("sh").is_some_and(|p| p.ends_with("/sh")));
        assert_eq!(host.which("no-such-program-corpus"), None);
        let root = host.user_info("root");
        assert_eq!(root.as_ref().map(|r| r["uid"].clone()), Some(json!(0)));
        assert_eq!(host.user_info("no-such-user-corpus"), None);
        assert_eq!(host.pkg_version("no-such-package-corpus"), "");
        assert!(host.path_exists("/", PathKind::Directory));
        assert!(!host.path_exists("/", PathKind::File));
        assert!(host.read_file("/proc/self/status").is_some());
    }
}
