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
fn init_system() -> String {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        return "systemd".to_owned();
    }
    read_trimmed("/proc/1/comm").unwrap_or_else(|| "unknown".to_owned())
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
        // Filled by the agent's confinement (B3); empty reads as "none" on the master.
        isolation: String::new(),
    }
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
    fn grains_describe_this_machine() {
        let g = collect("node1", 4);
        assert_eq!(g.id, "node1");
        assert!(g.cpus >= 1);
        assert!(g.memory_bytes > 0);
        assert!(!g.kernel.is_empty());
        assert_eq!(g.guest_type, "dir");
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
