//! Grains: what the agent tells the master (and templates) about its machine, with Salt's grain
//! names and values (`os` is `Debian`, not the os-release pretty name; `os_family`,
//! `osrelease`, `ip4_interfaces`, ... come from [`HostFacts`] read here).

pub use corpus_proto::grains::{Grains, HostFacts};

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default()
}

/// Salt's `os` grain (`Debian`), or the kernel's name when there is no os-release.
fn os_name() -> String {
    corpus_proto::grains::salt_os_name(&os_release())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

/// Salt's `init` grain: `systemd` when it runs, else PID 1's name.
/// Salt's `init` grain, found as Salt 3008 finds it: `systemd` when `/run/systemd/system`
/// exists, else from PID 1's command line (an `.../bin/init` binary naming upstart, sysvinit
/// or systemd; supervisord, dumb-init, tini, runit), else `unknown`.
fn init_system() -> String {
    if std::path::Path::new("/run/systemd/system").exists() {
        return "systemd".to_owned();
    }
    let cmdline = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let words: Vec<String> = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    init_from_cmdline(&words, &which, &|path| std::fs::read(path).ok())
}

/// The executable `name` resolves to through `PATH`, as Python's `shutil.which`.
fn which(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return executable(std::path::Path::new(name)).then(|| name.to_owned());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| executable(p))
        .map(|p| p.display().to_string())
}

/// Salt's reading of PID 1's command line (`salt/grains/core.py`, `_linux_init_system`).
fn init_from_cmdline(
    words: &[String],
    which: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> String {
    let Some(first) = words.first() else {
        return "unknown".to_owned();
    };
    let holds = |name: &str| which(name).is_some_and(|path| words.contains(&path));
    match which(first) {
        Some(binary) if binary.ends_with("bin/init") => {
            // Salt reads the binary in 256 KiB chunks and takes the first name found.
            let content = read(&binary).unwrap_or_default().to_ascii_lowercase();
            let find = |needle: &str| {
                content
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
            };
            ["upstart", "sysvinit", "systemd"]
                .iter()
                .filter_map(|name| find(name).map(|at| (at / (256 * 1024), *name)))
                .min_by_key(|(chunk, _)| *chunk)
                .map_or("unknown", |(_, name)| name)
                .to_owned()
        }
        _ if holds("supervisord") => "supervisord".to_owned(),
        _ if holds("dumb-init") => "dumb-init".to_owned(),
        _ if holds("tini") => "tini".to_owned(),
        _ if words == ["runit"] => "runit".to_owned(),
        _ if words.iter().any(|w| w == "/sbin/my_init") => "runit".to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_default()
}

/// What Salt's grains need from this machine beyond the wire fields.
pub fn host_facts() -> HostFacts {
    let mut interfaces: Vec<(String, std::net::IpAddr)> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.name.clone(), a.ip()))
        .collect();
    interfaces.sort_by(|a, b| a.0.cmp(&b.0));
    HostFacts {
        os_release: os_release(),
        interfaces,
        init: init_system(),
        cpu_model: cpu_model(),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

fn memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn ip_addresses() -> Vec<String> {
    let mut addrs = if_addrs::get_if_addrs().unwrap_or_default();
    addrs.sort_by_key(|a| (a.is_loopback(), a.ip().is_ipv6()));
    addrs.into_iter().map(|a| a.ip().to_string()).collect()
}

/// The grains of this machine for agent `id`.
pub fn collect(id: &str, slots: u32) -> Grains {
    Grains {
        id: id.to_owned(),
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        os: os_name(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: memory_bytes(),
        ip_addresses: ip_addresses(),
        slots,
        guest_type: "dir".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        root: String::new(),
        isolation: crate::confine::detect_isolation().as_str().to_owned(),
        custom: serde_json::Map::new(),
    }
}

/// The grains a Hello says: this machine's, with the live settings' slots and the operator's
/// custom grains (`grains:` in the config, checked by `config::check_custom_grains`).
pub fn for_hello(id: &str, live: &crate::config::LiveSettings) -> Grains {
    Grains {
        custom: live.grains.clone(),
        ..collect(id, live.slots)
    }
}

/// Whether `live` (after a SIGHUP) says something else than the Hello that sent `said`: the
/// agent then attaches again with a new Hello.
pub fn hello_outdated(said: &Grains, live: &crate::config::LiveSettings) -> bool {
    said.slots != live.slots || said.custom != live.grains
}

/// The grains as templates see them (`grains['os']`, `grains['os_family']`): the fields plus
/// Salt's grains from this machine's facts.
pub fn to_json(grains: &Grains) -> serde_json::Value {
    grains.template_json_with(&host_facts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_grain_is_read_from_pid_1_as_salt_reads_it() {
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let which = |name: &str| match name {
            "/sbin/init" | "init" => Some("/sbin/init".to_owned()),
            "tini" => Some("/usr/bin/tini".to_owned()),
            "runit" => Some("/usr/bin/runit".to_owned()),
            _ => None,
        };
        let systemd = |_: &str| Some(b"... SYSTEMD 252 ...".to_vec());
        let none = |_: &str| None;
        assert_eq!(
            init_from_cmdline(&words("/sbin/init splash"), &which, &systemd),
            "systemd"
        );
        assert_eq!(
            init_from_cmdline(&words("/sbin/init"), &which, &none),
            "unknown"
        );
        assert_eq!(
            init_from_cmdline(&words("/usr/bin/tini -- app"), &which, &none),
            "tini"
        );
        assert_eq!(init_from_cmdline(&words("runit"), &which, &none), "runit");
        // A sandbox's own PID 1 (this CI's `process_api`): Salt says `unknown`, not its name.
        assert_eq!(
            init_from_cmdline(&words("/process_api --addr 0.0.0.0:2024"), &which, &none),
            "unknown"
        );
        assert_eq!(init_from_cmdline(&[], &which, &none), "unknown");
    }

    #[test]
    fn grains_describe_this_machine() {
        let g = collect("node1", 4);
        assert_eq!(g.id, "node1");
        assert!(g.cpus >= 1);
        assert!(g.memory_bytes > 0);
        assert!(!g.kernel.is_empty());
        assert_eq!(g.guest_type, "dir");
        // Tests run as root on a kernel with or without Landlock.
        assert!(
            ["landlock", "uid"].contains(&g.isolation.as_str()),
            "{}",
            g.isolation
        );
        assert_eq!(to_json(&g)["slots"], 4);
    }

    #[test]
    fn grains_carry_salts_names_for_this_machine() {
        let g = to_json(&collect("node1", 1));
        assert!(
            !g["os"].as_str().unwrap_or_default().contains("GNU/Linux"),
            "{g}"
        );
        for key in [
            "os_family",
            "osrelease",
            "osarch",
            "fqdn",
            "host",
            "init",
            "ipv4",
        ] {
            assert!(g.get(key).is_some(), "grain {key} missing: {g}");
        }
        assert_eq!(g["num_cpus"], g["cpus"]);
        assert_eq!(g["saltversioninfo"][0], 3008);
    }
}
