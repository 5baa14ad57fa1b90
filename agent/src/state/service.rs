//! Salt's `service` state module on systemd: `running`, `dead`, `restarted`, `enabled`,
//! `disabled`, and the `watch` action (restart). Hosts without systemd get a clear failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

/// The service manager the states drive; [`Systemctl`] in production, a fake in tests.
pub trait ServiceControl: Send + Sync {
    /// `Err` with an explanation when services cannot be managed on this host.
    fn available(&self) -> Result<(), String>;
    fn is_active(&self, name: &str) -> Result<bool, String>;
    fn is_enabled(&self, name: &str) -> Result<bool, String>;
    /// Runs `systemctl <verb> <name>` (`start`, `stop`, `restart`, `reload`, `enable`, `disable`).
    fn control(&self, verb: &str, name: &str) -> Result<(), String>;
}

/// systemd through the `systemctl` binary.
pub struct Systemctl {
    /// Exists only while systemd is PID 1 (`sd_booted(3)` checks the same directory).
    pub booted_marker: PathBuf,
}

impl Default for Systemctl {
    fn default() -> Self {
        Self {
            booted_marker: PathBuf::from("/run/systemd/system"),
        }
    }
}

impl Systemctl {
    fn status(&self, args: &[&str]) -> Result<bool, String> {
        Command::new("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|e| format!("cannot run systemctl: {e}"))
    }
}

impl ServiceControl for Systemctl {
    fn available(&self) -> Result<(), String> {
        if self.booted_marker.is_dir() {
            Ok(())
        } else {
            Err(format!(
                "systemd is not running on this host ({} does not exist): service states need systemd",
                self.booted_marker.display()
            ))
        }
    }

    fn is_active(&self, name: &str) -> Result<bool, String> {
        self.status(&["is-active", "--quiet", name])
    }

    fn is_enabled(&self, name: &str) -> Result<bool, String> {
        self.status(&["is-enabled", "--quiet", name])
    }

    fn control(&self, verb: &str, name: &str) -> Result<(), String> {
        let out = Command::new("systemctl")
            .args([verb, name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

fn service_changes(name: &str) -> Map<String, serde_json::Value> {
    Map::from_iter([(name.to_string(), json!(true))])
}

/// Salt's optional `enable` argument of `running`/`dead`: returns a comment line when it acted.
fn apply_enable(
    ctx: &StateContext,
    name: &str,
    enable: Option<bool>,
    changes: &mut Map<String, serde_json::Value>,
) -> Result<Option<String>, String> {
    let Some(want) = enable else { return Ok(None) };
    let svc = ctx.services;
    if svc.is_enabled(name)? == want {
        return Ok(None);
    }
    let (verb, done) = if want {
        ("enable", "enabled")
    } else {
        ("disable", "disabled")
    };
    changes.insert(name.to_string(), json!(true));
    if ctx.test {
        return Ok(Some(format!("Service {name} set to be {done}")));
    }
    svc.control(verb, name)
        .map_err(|e| format!("Failed when setting service {name} to {verb}: {e}"))?;
    Ok(Some(format!("Service {name} has been {done}")))
}

fn enable_arg(args: &Args) -> Result<Option<bool>, String> {
    match args.raw("enable") {
        None => Ok(None),
        Some(_) => args.bool("enable", false).map(Some),
    }
}

fn finish(
    ctx: &StateContext,
    comments: Vec<String>,
    changes: Map<String, serde_json::Value>,
) -> Outcome {
    let comment = comments.join("\n");
    if changes.is_empty() {
        Outcome::ok(comment)
    } else if ctx.test {
        Outcome::would_change(comment, changes)
    } else {
        Outcome::changed(comment, changes)
    }
}

/// `service.running`: the unit is active (and enabled/disabled if `enable` says so).
pub fn running(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    ctx.services.available()?;
    let name = &chunk.name;
    let enable = enable_arg(&Args(&chunk.args))?;
    let mut changes = Map::new();
    let mut comments = Vec::new();
    if ctx.services.is_active(name)? {
        comments.push(format!("The service {name} is already running"));
    } else if ctx.test {
        changes.insert(name.clone(), json!(true));
        comments.push(format!("Service {name} is set to start"));
    } else {
        if let Err(e) = ctx.services.control("start", name) {
            return Ok(Outcome::fail(format!(
                "Service {name} failed to start: {e}"
            )));
        }
        changes.insert(name.clone(), json!(true));
        comments.push(format!("Started service {name}"));
    }
    comments.extend(apply_enable(ctx, name, enable, &mut changes)?);
    Ok(finish(ctx, comments, changes))
}

/// `service.dead`: the unit is stopped (and enabled/disabled if `enable` says so).
pub fn dead(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    ctx.services.available()?;
    let name = &chunk.name;
    let enable = enable_arg(&Args(&chunk.args))?;
    let mut changes = Map::new();
    let mut comments = Vec::new();
    if !ctx.services.is_active(name)? {
        comments.push(format!("The service {name} is already dead"));
    } else if ctx.test {
        changes.insert(name.clone(), json!(true));
        comments.push(format!("Service {name} is set to be killed"));
    } else {
        if let Err(e) = ctx.services.control("stop", name) {
            return Ok(Outcome::fail(format!("Service {name} failed to die: {e}")));
        }
        changes.insert(name.clone(), json!(true));
        comments.push(format!("Service {name} was killed"));
    }
    comments.extend(apply_enable(ctx, name, enable, &mut changes)?);
    Ok(finish(ctx, comments, changes))
}

/// `service.restarted`: restart the unit every time (start it when stopped).
pub fn restarted(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    ctx.services.available()?;
    let name = &chunk.name;
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Service {name} is set to be restarted"),
            service_changes(name),
        ));
    }
    match ctx.services.control("restart", name) {
        Ok(()) => Ok(Outcome::changed(
            format!("Service {name} restarted"),
            service_changes(name),
        )),
        Err(e) => Ok(Outcome::fail(format!(
            "Service {name} failed to restart: {e}"
        ))),
    }
}

/// `service.enabled` / `service.disabled`: the unit starts (or not) at boot.
pub fn enabled(chunk: &Chunk, ctx: &StateContext, want: bool) -> Result<Outcome, String> {
    ctx.services.available()?;
    let name = &chunk.name;
    let mut changes = Map::new();
    let comment = match apply_enable(ctx, name, Some(want), &mut changes)? {
        Some(c) => c,
        None if want => format!("Service {name} is already enabled, and is in the desired state"),
        None => format!("Service {name} is already disabled, and is in the desired state"),
    };
    Ok(finish(ctx, vec![comment], changes))
}

/// Salt's `service.mod_watch`: a watched state changed, so restart a `running` unit (start it
/// if it is down) or stop a `dead` one.
pub fn mod_watch(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    ctx.services.available()?;
    let name = &chunk.name;
    let (verb, done) = match chunk.function.as_str() {
        "running" => {
            if !ctx.services.is_active(name)? {
                ("start", "started")
            } else if Args(&chunk.args).bool("reload", false)? {
                // Salt's `reload: True`: a watched change reloads instead of restarting.
                ("reload", "reloaded")
            } else {
                ("restart", "restarted")
            }
        }
        "dead" => {
            if !ctx.services.is_active(name)? {
                return Ok(Outcome::ok(format!("Service {name} is already stopped")));
            }
            ("stop", "stopped")
        }
        other => {
            return Ok(Outcome::fail(format!(
                "Unable to trigger watch for service.{other}"
            )));
        }
    };
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Service is set to be {done}"),
            service_changes(name),
        ));
    }
    match ctx.services.control(verb, name) {
        Ok(()) => Ok(Outcome::changed(
            format!("Service {done}"),
            service_changes(name),
        )),
        Err(e) => Ok(Outcome::fail(format!(
            "Service {name} failed to {verb}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};
    use serde_json::{Value, json};

    fn call(
        f: fn(&Chunk, &StateContext) -> Result<Outcome, String>,
        svc: &FakeServices,
        test: bool,
        c: &Chunk,
    ) -> Outcome {
        let src = sources(std::path::Path::new("/nonexistent"), Value::Null);
        f(c, &ctx(test, &src, svc)).unwrap_or_else(Outcome::fail)
    }

    #[test]
    fn running_starts_a_stopped_unit_once_and_enables_it() {
        let svc = FakeServices::default();
        let c = chunk("service.running", "nginx", json!({"enable": true}));
        let t = call(running, &svc, true, &c);
        assert_eq!(t.result, None);
        assert!(svc.calls().is_empty());
        let out = call(running, &svc, false, &c);
        assert_eq!(out.result, Some(true));
        assert_eq!(
            out.changes,
            json!({"nginx": true})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
        assert_eq!(
            out.comment,
            "Started service nginx\nService nginx has been enabled"
        );
        assert_eq!(svc.calls(), ["start nginx", "enable nginx"]);
        let again = call(running, &svc, false, &c);
        assert_eq!(again, Outcome::ok("The service nginx is already running"));
    }

    #[test]
    fn a_unit_that_fails_to_start_fails_the_state() {
        let svc = FakeServices {
            broken: ["bad".to_string()].into(),
            ..Default::default()
        };
        let out = call(
            running,
            &svc,
            false,
            &chunk("service.running", "bad", json!({})),
        );
        assert_eq!(out.result, Some(false));
        assert_eq!(
            out.comment,
            "Service bad failed to start: Job for bad.service failed"
        );
    }

    #[test]
    fn dead_restarted_enabled_and_disabled() {
        let svc = FakeServices::default();
        svc.active.lock().unwrap().insert("cron".into());
        let out = call(dead, &svc, false, &chunk("service.dead", "cron", json!({})));
        assert_eq!(out.comment, "Service cron was killed");
        assert_eq!(
            call(dead, &svc, false, &chunk("service.dead", "cron", json!({}))).changes,
            Map::new()
        );
        let out = call(
            restarted,
            &svc,
            false,
            &chunk("service.restarted", "cron", json!({})),
        );
        assert_eq!(out.comment, "Service cron restarted");
        let en = |c: &Chunk, ctx: &StateContext| enabled(c, ctx, true);
        let dis = |c: &Chunk, ctx: &StateContext| enabled(c, ctx, false);
        assert_eq!(
            call(
                en,
                &svc,
                false,
                &chunk("service.enabled", "cron", json!({}))
            )
            .changes
            .len(),
            1
        );
        assert_eq!(
            call(
                en,
                &svc,
                false,
                &chunk("service.enabled", "cron", json!({}))
            )
            .changes
            .len(),
            0
        );
        assert_eq!(
            call(
                dis,
                &svc,
                false,
                &chunk("service.disabled", "cron", json!({}))
            )
            .changes
            .len(),
            1
        );
        assert_eq!(
            svc.calls(),
            ["stop cron", "restart cron", "enable cron", "disable cron"]
        );
    }

    #[test]
    fn watch_restarts_a_running_unit_and_starts_a_stopped_one() {
        let svc = FakeServices::default();
        let c = chunk("service.running", "app", json!({}));
        assert_eq!(call(mod_watch, &svc, false, &c).comment, "Service started");
        assert_eq!(call(mod_watch, &svc, true, &c).result, None);
        assert_eq!(
            call(mod_watch, &svc, false, &c).comment,
            "Service restarted"
        );
        let reload = chunk("service.running", "app", json!({"reload": true}));
        assert_eq!(
            call(mod_watch, &svc, false, &reload).comment,
            "Service reloaded"
        );
        assert_eq!(svc.calls(), ["start app", "restart app", "reload app"]);
        let e = chunk("service.enabled", "app", json!({}));
        assert_eq!(call(mod_watch, &svc, false, &e).result, Some(false));
    }

    #[test]
    fn without_systemd_service_states_fail_saying_so() {
        let out = Systemctl {
            booted_marker: "/nonexistent/run/systemd/system".into(),
        }
        .available();
        assert!(out.is_err_and(|e| e.contains("systemd is not running on this host")));
        let svc = FakeServices {
            unavailable: true,
            ..Default::default()
        };
        let out = call(
            running,
            &svc,
            false,
            &chunk("service.running", "nginx", json!({})),
        );
        assert_eq!(out.result, Some(false));
        assert!(out.comment.contains("systemd is not running"));
    }
}
