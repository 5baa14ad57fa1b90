//! Grains, what an agent reports about its machine, as the plain data the agent collects, the
//! master stores and templates see. The one conversion to and from the wire type lives here, and
//! so does the one view templates get ([`Grains::template_json`]): these fields plus Salt's grain
//! names and values (`os_family`, `osrelease`, `num_cpus`, `fqdn`, ...), so that a formula's
//! `grains.filter_by` and `grains['os_family']` work on the master and the agent alike.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

/// What an agent runs on, sent in its Hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grains {
    pub id: String,
    pub hostname: String,
    /// Salt's `os` grain: the distribution's short name (`Debian`, `Ubuntu`, `CentOS`).
    pub os: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Non-loopback addresses first, so `listhosts` shows the useful one.
    pub ip_addresses: Vec<String>,
    /// Environments the agent is willing to host.
    pub slots: u32,
    /// How environments are isolated: `dir` (a directory per environment).
    pub guest_type: String,
    pub version: String,
    /// Where environments live (`corpus-agent run --root`); `common`'s paths start there.
    #[serde(default)]
    pub root: String,
    /// How the agent confines an environment's project states: `landlock` (its own user and a
    /// Landlock ruleset), `uid` (its own user only) or `none` (as root, e.g. not run as root).
    /// Empty from agents that predate isolation, which the master treats as `none`.
    #[serde(default)]
    pub isolation: String,
    /// The operator's custom grains (`grains:` in the agent's config, as Salt's
    /// `/etc/salt/grains`), merged into [`Grains::template_json`] under the core grains, which
    /// win.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub custom: Map<String, Json>,
}

/// The largest custom grains object, as JSON, an agent may send; a larger one is dropped.
pub const MAX_CUSTOM_GRAINS_BYTES: usize = 64 * 1024;

/// Custom grains from the wire: a JSON object of at most [`MAX_CUSTOM_GRAINS_BYTES`], else none.
fn custom_from_wire(bytes: &[u8]) -> Map<String, Json> {
    if bytes.len() > MAX_CUSTOM_GRAINS_BYTES {
        return Map::new();
    }
    match serde_json::from_slice(bytes) {
        Ok(Json::Object(map)) => map,
        _ => Map::new(),
    }
}

impl From<crate::v1::Grains> for Grains {
    fn from(g: crate::v1::Grains) -> Self {
        Grains {
            id: g.id,
            hostname: g.hostname,
            os: g.os,
            kernel: g.kernel,
            cpus: g.cpus,
            memory_bytes: g.memory_bytes,
            ip_addresses: g.ip_addresses,
            slots: g.slots,
            guest_type: g.guest_type,
            version: g.version,
            root: g.root,
            isolation: g.isolation,
            custom: custom_from_wire(&g.custom_json),
        }
    }
}

impl From<Grains> for crate::v1::Grains {
    fn from(g: Grains) -> Self {
        crate::v1::Grains {
            id: g.id,
            hostname: g.hostname,
            os: g.os,
            kernel: g.kernel,
            cpus: g.cpus,
            memory_bytes: g.memory_bytes,
            ip_addresses: g.ip_addresses,
            slots: g.slots,
            guest_type: g.guest_type,
            version: g.version,
            root: g.root,
            isolation: g.isolation,
            custom_json: if g.custom.is_empty() {
                Vec::new()
            } else {
                serde_json::to_vec(&g.custom).unwrap_or_default()
            },
        }
    }
}

/// The Salt release whose template behaviour corpus follows; formulas compare
/// `saltversioninfo` against releases to pick syntax.
pub const SALT_COMPAT_VERSION: [u32; 2] = [3008, 3];

/// Salt's `kernel` grain on the only kernel agents run on.
pub const SALT_KERNEL: &str = "Linux";

/// What an agent reads from its machine for Salt's grains beyond the wire fields. The master has
/// none of it, and sees only the grains derivable from [`Grains`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    /// The text of `/etc/os-release`.
    pub os_release: String,
    /// Every interface address, loopback included: (interface name, address).
    pub interfaces: Vec<(String, std::net::IpAddr)>,
    /// PID 1's init system (`systemd`, or the process name).
    pub init: String,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The machine architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
}

/// One `KEY=value` of os-release text, unquoted.
pub fn os_release_field(os_release: &str, key: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(
            value
                .trim()
                .trim_matches('"')
                .trim_matches('\'')
                .to_string(),
        )
    })
}

/// Salt's `os` grain from os-release text: its `ID` mapped to Salt's names.
pub fn salt_os_name(os_release: &str) -> Option<String> {
    let id = os_release_field(os_release, "ID")?;
    let known = match id.as_str() {
        "debian" => "Debian",
        "ubuntu" => "Ubuntu",
        "linuxmint" => "Mint",
        "raspbian" => "Raspbian",
        "devuan" => "Devuan",
        "centos" => "CentOS",
        "rhel" => "RedHat",
        "fedora" => "Fedora",
        "rocky" => "Rocky",
        "almalinux" => "AlmaLinux",
        "ol" => "OEL",
        "amzn" => "Amazon",
        "sles" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => "SUSE",
        "arch" => "Arch",
        "manjaro" => "Manjaro",
        "alpine" => "Alpine",
        "gentoo" => "Gentoo",
        "void" => "Void",
        "nixos" => "NixOS",
        other => {
            let mut chars = other.chars();
            return chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect());
        }
    };
    Some(known.to_string())
}

/// Salt's `os_family` for an `os` grain.
pub fn salt_os_family(os: &str) -> String {
    match os {
        "Debian" | "Ubuntu" | "Mint" | "Raspbian" | "Devuan" | "Pop" | "Kali" => "Debian",
        "CentOS" | "RedHat" | "Fedora" | "Rocky" | "AlmaLinux" | "OEL" | "Amazon" => "RedHat",
        "SUSE" => "Suse",
        "Arch" | "Manjaro" => "Arch",
        other => other,
    }
    .to_string()
}

impl Grains {
    /// The grains templates see on the master: these fields plus the Salt grains derivable from
    /// them.
    pub fn template_json(&self) -> Json {
        self.template_json_with(&HostFacts::default())
    }

    /// The grains templates see, with what the agent read from its machine (`facts`).
    pub fn template_json_with(&self, facts: &HostFacts) -> Json {
        let mut map = match serde_json::to_value(self) {
            Ok(Json::Object(map)) => map,
            _ => Map::new(),
        };
        map.remove("custom");
        for (key, value) in self.salt_grains(facts) {
            map.entry(key).or_insert(value);
        }
        // Salt's `kernel` is the kernel's name (Python's `platform.system()`); the release the
        // agent reports is Salt's `kernelrelease`.
        map.insert("kernel".into(), Json::from(SALT_KERNEL));
        for (key, value) in &self.custom {
            map.entry(key.clone()).or_insert_with(|| value.clone());
        }
        Json::Object(map)
    }

    fn salt_grains(&self, facts: &HostFacts) -> Map<String, Json> {
        let field = |key: &str| os_release_field(&facts.os_release, key).unwrap_or_default();
        let os_family = salt_os_family(&self.os);
        let osrelease = field("VERSION_ID");
        let release_info: Vec<u64> = osrelease
            .split('.')
            .filter_map(|part| part.parse().ok())
            .collect();
        let major = release_info.first().copied();
        let osfinger = match (self.os.as_str(), major) {
            ("Ubuntu", _) => format!("{}-{osrelease}", self.os),
            (_, Some(major)) => format!("{}-{major}", self.os),
            _ => self.os.clone(),
        };
        let debian_like = os_family == "Debian";
        let osarch = match (facts.arch.as_str(), debian_like) {
            ("x86_64", true) => "amd64",
            ("aarch64", true) => "arm64",
            ("x86", true) => "i386",
            (other, _) => other,
        };
        let host = self
            .hostname
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let domain = self
            .hostname
            .split_once('.')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let mut ip4_interfaces: Map<String, Json> = Map::new();
        let mut ip6_interfaces: Map<String, Json> = Map::new();
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for (name, ip) in &facts.interfaces {
            let (table, list) = if ip.is_ipv4() {
                (&mut ip4_interfaces, &mut ipv4)
            } else {
                (&mut ip6_interfaces, &mut ipv6)
            };
            if let Json::Array(items) = table.entry(name.clone()).or_insert_with(|| json!([])) {
                items.push(json!(ip.to_string()));
            }
            list.push(ip.to_string());
        }
        if facts.interfaces.is_empty() {
            for ip in &self.ip_addresses {
                if ip.contains(':') {
                    ipv6.push(ip.clone());
                } else {
                    ipv4.push(ip.clone());
                }
            }
        }
        // Salt resolves the FQDN through DNS; corpus renders without network look-ups and
        // reports the machine's own non-loopback addresses.
        let fqdn_ip4: Vec<&String> = ipv4.iter().filter(|ip| !ip.starts_with("127.")).collect();
        let fqdn_ip6: Vec<&String> = ipv6.iter().filter(|ip| ip.as_str() != "::1").collect();
        let [salt_major, salt_minor] = SALT_COMPAT_VERSION;
        let mut out = json!({
            "os_family": os_family,
            "osfullname": field("NAME"),
            "osrelease": osrelease,
            "osrelease_info": release_info,
            "osmajorrelease": major,
            "oscodename": field("VERSION_CODENAME"),
            "osfinger": osfinger,
            "osarch": osarch,
            "cpuarch": facts.arch,
            "kernelrelease": self.kernel,
            "nodename": self.hostname,
            "localhost": self.hostname,
            "host": host,
            "fqdn": self.hostname,
            "domain": domain,
            "ipv4": ipv4,
            "ipv6": ipv6,
            "ip4_interfaces": ip4_interfaces,
            "ip6_interfaces": ip6_interfaces,
            "fqdn_ip4": fqdn_ip4,
            "fqdn_ip6": fqdn_ip6,
            "num_cpus": self.cpus,
            "mem_total": self.memory_bytes / (1024 * 1024),
            "cpu_model": facts.cpu_model,
            "init": facts.init,
            "saltversion": format!("{salt_major}.{salt_minor}"),
            "saltversioninfo": [salt_major, salt_minor],
            "lsb_distrib_id": field("NAME"),
            "lsb_distrib_release": field("VERSION_ID"),
            "lsb_distrib_codename": field("VERSION_CODENAME"),
        });
        match out.as_object_mut() {
            Some(map) => std::mem::take(map),
            None => Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                          VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";

    #[test]
    fn salt_grains_come_from_os_release_and_the_fields() {
        assert_eq!(salt_os_name(DEBIAN).as_deref(), Some("Debian"));
        assert_eq!(salt_os_name("ID=\"rocky\"\n").as_deref(), Some("Rocky"));
        assert_eq!(salt_os_name("ID=plan9\n").as_deref(), Some("Plan9"));
        let grains = Grains {
            id: "web1".into(),
            hostname: "web1.example.org".into(),
            os: "Debian".into(),
            kernel: "6.1.0".into(),
            cpus: 4,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            ..Grains::default()
        };
        let facts = HostFacts {
            os_release: DEBIAN.into(),
            interfaces: vec![
                (
                    "lo".into(),
                    "127.0.0.1"
                        .parse()
                        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                ),
                (
                    "eth0".into(),
                    "10.0.0.5"
                        .parse()
                        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                ),
            ],
            init: "systemd".into(),
            cpu_model: "cpu".into(),
            arch: "x86_64".into(),
        };
        let g = grains.template_json_with(&facts);
        let expected = json!({
            "os": "Debian", "os_family": "Debian", "osrelease": "12", "osmajorrelease": 12,
            "oscodename": "bookworm", "osfinger": "Debian-12", "osarch": "amd64",
            "cpuarch": "x86_64", "host": "web1", "domain": "example.org",
            "fqdn": "web1.example.org", "num_cpus": 4, "mem_total": 8192, "init": "systemd",
            "saltversioninfo": [3008, 3], "ip4_interfaces": {"lo": ["127.0.0.1"], "eth0": ["10.0.0.5"]},
            "ipv4": ["127.0.0.1", "10.0.0.5"], "fqdn_ip4": ["10.0.0.5"], "id": "web1",
            "kernel": "Linux", "kernelrelease": "6.1.0",
        });
        for (key, value) in expected.as_object().into_iter().flatten() {
            assert_eq!(g.get(key), Some(value), "grain {key}");
        }
        // The master has no host facts: what the fields give is still there.
        let master = grains.template_json();
        assert_eq!(master["os_family"], "Debian");
        assert_eq!(master["num_cpus"], 4);
    }

    #[test]
    fn custom_grains_merge_under_the_core_ones_and_cross_the_wire() {
        let mut custom = Map::new();
        custom.insert("roles".into(), json!(["web"]));
        custom.insert("id".into(), json!("spoofed"));
        let grains = Grains {
            id: "web1".into(),
            custom,
            ..Grains::default()
        };
        let view = grains.template_json();
        assert_eq!(view["roles"], json!(["web"]));
        assert_eq!(view["id"], "web1", "a core grain wins: {view}");
        assert!(view.get("custom").is_none(), "{view}");
        let wire: crate::v1::Grains = grains.clone().into();
        assert_eq!(Grains::from(wire.clone()), grains);
        let oversized = crate::v1::Grains {
            custom_json: vec![b' '; MAX_CUSTOM_GRAINS_BYTES + 1],
            ..wire
        };
        assert!(Grains::from(oversized).custom.is_empty());
    }
}
