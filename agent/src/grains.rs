//! Grains: what the agent tells the master (and templates) about its machine.

pub use corpus_proto::grains::Grains;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn os_name() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
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
    }
}

/// The grains as templates see them (`grains['os']`).
pub fn to_json(grains: &Grains) -> serde_json::Value {
    serde_json::to_value(grains).unwrap_or_default()
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
}
