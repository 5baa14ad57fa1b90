//! Grains, what an agent reports about its machine, as the plain data the agent collects, the
//! master stores and templates see. The one conversion to and from the wire type lives here.

use serde::{Deserialize, Serialize};

/// What an agent runs on, sent in its Hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grains {
    pub id: String,
    pub hostname: String,
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
        }
    }
}
