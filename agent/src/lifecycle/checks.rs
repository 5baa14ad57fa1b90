//! The project's own settings the agent acts on (`common.data`): the health check (a command or
//! an HTTP probe, with retries) and the webhooks notified after each finished deploy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `common.data.keep_archives`, default 3 (at least 1).
pub fn keep_archives(common: &Value) -> usize {
    common
        .pointer("/data/keep_archives")
        .and_then(Value::as_u64)
        .map_or(3, |n| n.max(1) as usize)
}

/// `common.data.backup_data`, default true.
pub fn backup_data(common: &Value) -> bool {
    common
        .pointer("/data/backup_data")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// `common.data.notify.webhooks`.
pub fn webhooks(common: &Value) -> Vec<String> {
    common
        .pointer("/data/notify/webhooks")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A configured health check.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    Command { command: String },
    Http { url: String, status: u16 },
}

/// The health check settings: `(check, retries, interval)`, or `None` when not configured.
pub fn healthcheck(common: &Value) -> Result<Option<(HealthCheck, u32, Duration)>, String> {
    let Some(hc) = common.pointer("/data/healthcheck") else {
        return Ok(None);
    };
    if hc.is_null() {
        return Ok(None);
    }
    let retries = hc
        .get("retries")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .max(1) as u32;
    let interval = hc
        .get("interval")
        .and_then(|v| v.as_f64())
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs_f64(s.max(0.0))
        });
    let check = if let Some(command) = hc.get("command").and_then(Value::as_str) {
        HealthCheck::Command {
            command: command.to_string(),
        }
    } else if let Some(url) = hc.get("http").and_then(Value::as_str) {
        let status = hc.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
        HealthCheck::Http {
            url: url.to_string(),
            status,
        }
    } else {
        return Err(
            "healthcheck needs `command` or `http` (e.g. {command: 'curl -f localhost', \
             retries: 3, interval: 1})"
                .into(),
        );
    };
    Ok(Some((check, retries, interval)))
}

/// Time one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

fn probe(check: &HealthCheck, cwd: &std::path::Path) -> Result<String, String> {
    match check {
        HealthCheck::Command { command } => {
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {command:?}: {e}"))?;
            let deadline = Instant::now() + PROBE_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) if st.success() => return Ok(format!("{command:?} succeeded")),
                    Ok(Some(st)) => return Err(format!("{command:?} exited with {st}")),
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("{command:?} timed out"));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => return Err(format!("{command:?}: {e}")),
                }
            }
        }
        HealthCheck::Http { url, status } => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(PROBE_TIMEOUT))
                .http_status_as_error(false)
                .build()
                .into();
            match agent.get(url).call() {
                Ok(resp) if resp.status().as_u16() == *status => {
                    Ok(format!("GET {url} returned {status}"))
                }
                Ok(resp) => Err(format!(
                    "GET {url} returned {}, expected {status}",
                    resp.status().as_u16()
                )),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        }
    }
}

/// Runs the check up to `retries` times, `interval` apart. Ok(comment) or Err(last failure).
pub fn run_healthcheck(
    check: &HealthCheck,
    retries: u32,
    interval: Duration,
    cwd: &std::path::Path,
) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 1..=retries {
        match probe(check, cwd) {
            Ok(msg) => return Ok(format!("{msg} (attempt {attempt}/{retries})")),
            Err(e) => last = format!("{e} (attempt {attempt}/{retries})"),
        }
        if attempt < retries {
            std::thread::sleep(interval);
        }
    }
    Err(last)
}

/// POSTs `event` as JSON to `url`; Err names the url and the cause.
pub fn post_webhook(url: &str, event: &Value) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .post(url)
        .header("content-type", "application/json")
        .send(event.to_string())
        .map(|_| ())
        .map_err(|e| format!("webhook {url}: {e}"))
}
