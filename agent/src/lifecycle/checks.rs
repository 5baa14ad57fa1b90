//! The project's own checks the agent runs, as `common.data` configures them
//! ([`corpus_states::ProjectSettings`]): the health check (a command or an HTTP probe, with
//! retries) and the webhooks notified after each finished deploy.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corpus_states::{HealthCheck, HealthProbe};
use serde_json::Value;

/// Why a probe or a webhook failed; each names the command or URL.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot run {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command:?} exited with {status}")]
    Exit {
        command: String,
        status: std::process::ExitStatus,
    },
    #[error("{command:?} timed out after {after:?}: its process group was killed")]
    Timeout { command: String, after: Duration },
    #[error("{command:?}: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url} returned {got}, expected {expected}")]
    Status {
        url: String,
        got: u16,
        expected: u16,
    },
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("webhook {url}: {source}")]
    Webhook {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// The target is not on the operator's allow-list (`outbound_allow`).
    #[error("health check {0}")]
    NotAllowed(String),
    /// Every attempt failed; the last failure.
    #[error("{last} (attempt {attempt}/{retries})")]
    Attempts {
        last: Box<CheckError>,
        attempt: u32,
        retries: u32,
    },
}

/// Time one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

fn probe(check: &HealthProbe, cwd: &Path, run_as: Option<RunAs>) -> Result<String, CheckError> {
    match check {
        HealthProbe::Command { command } => probe_command(command, cwd, PROBE_TIMEOUT, run_as),
        HealthProbe::Http { url, status } => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(PROBE_TIMEOUT))
                .http_status_as_error(false)
                // An allowed target must not send the agent to one that is not.
                .max_redirects(0)
                .build()
                .into();
            match agent.get(url).call() {
                Ok(resp) if resp.status().as_u16() == *status => {
                    Ok(format!("GET {url} returned {status}"))
                }
                Ok(resp) => Err(CheckError::Status {
                    url: url.clone(),
                    got: resp.status().as_u16(),
                    expected: *status,
                }),
                Err(e) => Err(CheckError::Http {
                    url: url.clone(),
                    source: Box::new(e),
                }),
            }
        }
    }
}

/// A confined environment's (uid, gid): its health check command runs as that user, never as
/// root (the command is the project's).
pub type RunAs = (u32, u32);

/// Runs `command` with `/bin/sh -c` in its own process group; past `timeout` the whole group
/// is killed, so a probe's children (a `curl`, a `sleep`) never outlive it.
fn probe_command(
    command: &str,
    cwd: &Path,
    timeout: Duration,
    run_as: Option<RunAs>,
) -> Result<String, CheckError> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = run_as {
        // SAFETY: between fork and exec only async-signal-safe syscalls run, on copied values.
        unsafe {
            cmd.pre_exec(move || {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| CheckError::Spawn {
        command: command.to_owned(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(format!("{command:?} succeeded")),
            Ok(Some(status)) => {
                return Err(CheckError::Exit {
                    command: command.to_owned(),
                    status,
                });
            }
            Ok(None) if Instant::now() > deadline => {
                // SAFETY: kill(2) on the process group of our own child; its pid fits pid_t.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(CheckError::Timeout {
                    command: command.to_owned(),
                    after: timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                return Err(CheckError::Wait {
                    command: command.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Runs the check up to its `retries` times, `interval` apart. Ok(comment) or the last failure.
pub fn run_healthcheck(
    check: &HealthCheck,
    cwd: &Path,
    run_as: Option<RunAs>,
) -> Result<String, CheckError> {
    let retries = check.retries.max(1);
    let mut attempt = 1;
    loop {
        match probe(&check.probe, cwd, run_as) {
            Ok(msg) => return Ok(format!("{msg} (attempt {attempt}/{retries})")),
            Err(e) if attempt >= retries => {
                return Err(CheckError::Attempts {
                    last: Box::new(e),
                    attempt,
                    retries,
                });
            }
            Err(_) => {}
        }
        std::thread::sleep(check.interval);
        attempt += 1;
    }
}

/// POSTs `event` as JSON to `url`; the error names the url and the cause.
pub fn post_webhook(url: &str, event: &Value) -> Result<(), CheckError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .max_redirects(0)
        .build()
        .into();
    agent
        .post(url)
        .header("content-type", "application/json")
        .send(event.to_string())
        .map(|_| ())
        .map_err(|e| CheckError::Webhook {
            url: url.to_string(),
            source: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` still runs (a zombie waiting for its reaper does not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_probe_timing_out_kills_its_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let err =
            probe_command(&command, dir.path(), Duration::from_millis(300), None).unwrap_err();
        assert!(matches!(err, CheckError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("process group was killed"),
            "{err}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(pid) {
            assert!(
                Instant::now() < deadline,
                "the probe's child {pid} survived it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
