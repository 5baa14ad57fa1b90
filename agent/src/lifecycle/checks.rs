//! The project's own checks the agent runs, as `common.data` configures them
//! ([`corpus_states::ProjectSettings`]): the health check (a command or an HTTP probe, with
//! retries) and the webhooks notified after each finished deploy.

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
    #[error("{command:?} timed out")]
    Timeout { command: String },
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

fn probe(check: &HealthProbe, cwd: &Path) -> Result<String, CheckError> {
    match check {
        HealthProbe::Command { command } => {
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| CheckError::Spawn {
                    command: command.clone(),
                    source,
                })?;
            let deadline = Instant::now() + PROBE_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) if st.success() => return Ok(format!("{command:?} succeeded")),
                    Ok(Some(status)) => {
                        return Err(CheckError::Exit {
                            command: command.clone(),
                            status,
                        });
                    }
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(CheckError::Timeout {
                            command: command.clone(),
                        });
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(source) => {
                        return Err(CheckError::Wait {
                            command: command.clone(),
                            source,
                        });
                    }
                }
            }
        }
        HealthProbe::Http { url, status } => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(PROBE_TIMEOUT))
                .http_status_as_error(false)
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

/// Runs the check up to its `retries` times, `interval` apart. Ok(comment) or the last failure.
pub fn run_healthcheck(check: &HealthCheck, cwd: &Path) -> Result<String, CheckError> {
    let retries = check.retries.max(1);
    let mut attempt = 1;
    loop {
        match probe(&check.probe, cwd) {
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
