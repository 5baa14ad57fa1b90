//! Salt's `sysctl.present`: a kernel parameter has `value` now (written under `/proc/sys`) and
//! after reboot (a `name = value` line in `config`, default `/etc/sysctl.d/99-salt.conf`).

use std::fs;
use std::path::{Path, PathBuf};

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

/// Salt's default persistence file.
const DEFAULT_CONFIG: &str = "/etc/sysctl.d/99-salt.conf";

/// Kernel parameters have runs of whitespace (tabs) between fields: compare them folded.
fn folded(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `sysctl.present` against the parameters under `proc_sys` (`/proc/sys` in production).
fn present_in(proc_sys: &Path, chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    // The name becomes a path under /proc/sys: it must stay there.
    if name.is_empty() || name.contains("..") || name.starts_with('/') {
        return Err(format!(
            "sysctl name {name:?} is not a kernel parameter name"
        ));
    }
    let value = args
        .string("value")?
        .ok_or("sysctl.present needs `value`")?;
    let config = args
        .string("config")?
        .unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    let param: PathBuf = proc_sys.join(name.replace('.', "/"));
    let running = fs::read_to_string(&param).map_err(|_| {
        format!(
            "Invalid sysctl key {name}: {} does not exist",
            param.display()
        )
    })?;
    let config_text = fs::read_to_string(&config).unwrap_or_default();
    let config_line = |line: &str| {
        line.split_once('=')
            .is_some_and(|(key, _)| key.trim() == name.as_str())
    };
    let persisted = config_text
        .lines()
        .find(|l| config_line(l))
        .and_then(|l| l.split_once('='))
        .map(|(_, v)| folded(v));
    let wanted = folded(&value);
    let live_ok = folded(&running) == wanted;
    let saved_ok = persisted.as_deref() == Some(wanted.as_str());
    if live_ok && saved_ok {
        return Ok(Outcome::ok(format!(
            "Sysctl value {name} = {value} is already set"
        )));
    }
    let changes = Map::from_iter([(name.clone(), json!(value))]);
    if ctx.test {
        return Ok(Outcome::pending(format!(
            "Sysctl option {name} set to be changed to {value}"
        )));
    }
    if !live_ok {
        fs::write(&param, format!("{value}\n"))
            .map_err(|e| format!("cannot set {name} ({}): {e}", param.display()))?;
    }
    if !saved_ok {
        let mut lines: Vec<String> = config_text
            .lines()
            .filter(|l| !config_line(l))
            .map(str::to_string)
            .collect();
        lines.push(format!("{name} = {value}"));
        if let Some(parent) = Path::new(&config).parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        fs::write(&config, lines.join("\n") + "\n")
            .map_err(|e| format!("cannot write {config}: {e}"))?;
    }
    Ok(Outcome::changed(
        format!("Updated sysctl value {name} = {value}"),
        changes,
    ))
}

/// `sysctl.present` on this machine.
pub fn present(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    present_in(Path::new("/proc/sys"), chunk, ctx)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    #[test]
    fn a_parameter_is_set_live_and_persisted_once() {
        let dir = tempfile::tempdir().unwrap();
        let proc_sys = dir.path().join("proc");
        fs::create_dir_all(proc_sys.join("net/ipv4")).unwrap();
        let param = proc_sys.join("net/ipv4/ip_forward");
        fs::write(&param, "0\n").unwrap();
        let config = dir.path().join("sysctl.d/99-salt.conf");
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let run = |value: &str, test: bool| {
            let c = chunk(
                "sysctl.present",
                "net.ipv4.ip_forward",
                json!({"value": value, "config": config.display().to_string()}),
            );
            present_in(&proc_sys, &c, &ctx(test, &src, &svc)).unwrap_or_else(Outcome::fail)
        };
        assert_eq!(run("1", true).result, None);
        assert_eq!(fs::read_to_string(&param).unwrap(), "0\n");
        let set = run("1", false);
        assert_eq!(set.comment, "Updated sysctl value net.ipv4.ip_forward = 1");
        assert_eq!(set.changes["net.ipv4.ip_forward"], json!("1"));
        assert_eq!(fs::read_to_string(&param).unwrap(), "1\n");
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "net.ipv4.ip_forward = 1\n"
        );
        assert_eq!(
            run("1", false).comment,
            "Sysctl value net.ipv4.ip_forward = 1 is already set"
        );
        run("0", false);
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "net.ipv4.ip_forward = 0\n"
        );
        let c = chunk("sysctl.present", "net.nope", json!({"value": "1"}));
        let out = present_in(&proc_sys, &c, &ctx(false, &src, &svc)).unwrap_or_else(Outcome::fail);
        assert!(
            out.comment.starts_with("Invalid sysctl key net.nope"),
            "{}",
            out.comment
        );
    }
}
