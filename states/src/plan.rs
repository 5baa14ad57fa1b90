//! The plan: what the master (or a masterless agent) hands to the executor. It is plain data,
//! serialised as JSON on the wire (`Job.plan_json`), so its shape is part of the protocol.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An ordered list of state chunks, ready to execute in `chunks` order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub chunks: Vec<Chunk>,
}

/// One state call, Salt's "low chunk": `id: {module.function: [args]}` after expansion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The state id (Salt's `__id__`), unique per module across the rendered tree.
    pub id: String,
    /// The `name` argument, defaulting to the id (for files: the path).
    pub name: String,
    /// The SLS the chunk came from, dotted (Salt's `__sls__`), e.g. `web.nginx`.
    pub sls: String,
    /// State module, e.g. `file`, `cmd`, `service`.
    pub module: String,
    /// Function of the module, e.g. `managed`, `run`, `running`.
    pub function: String,
    /// Every remaining argument (requisites and `order` removed), as Salt would pass them.
    pub args: Map<String, Value>,
    /// Requisites resolved to indices into [`Plan::chunks`]; a target always precedes its
    /// dependant in the plan.
    pub requisites: Vec<Requisite>,
}

/// A resolved requisite edge: this chunk depends on `target` in the way `kind` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requisite {
    pub kind: RequisiteKind,
    /// Index of the target chunk in [`Plan::chunks`].
    pub target: usize,
}

/// Salt's requisite kinds (the `_in` forms are folded into these on the target's dependant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequisiteKind {
    /// Run only if the target succeeded.
    Require,
    /// Like `require`, and when the target reported changes, call the module's watch action
    /// (`service.running` restarts, `cmd.run` runs).
    Watch,
    /// Run only if the target succeeded and reported changes.
    Onchanges,
    /// Run only if the target failed.
    Onfail,
}

impl Chunk {
    /// Salt's state key, `module_|-id_|-name_|-function`, used in results and error messages.
    pub fn key(&self) -> String {
        format!(
            "{}_|-{}_|-{}_|-{}",
            self.module, self.id, self.name, self.function
        )
    }
}

/// The project lifecycle's SLS phases, in the order the lifecycle may run them. Each maps to
/// `.salt/<phase>.sls` in the project; a missing file is an empty plan.
pub const PHASES: &[&str] = &[
    "stop",
    "backup",
    "configure",
    "build",
    "post_build",
    "start",
    "upgrade",
    "post_deploy",
    "post_install",
    "restore",
    "notify",
];

/// A project's rendered plans, one per lifecycle phase (`Job.plan_json` on the wire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectPlan {
    pub phases: std::collections::BTreeMap<String, Plan>,
}

impl ProjectPlan {
    /// The plan of `phase`, empty when the project has no such file.
    pub fn phase(&self, phase: &str) -> Plan {
        self.phases.get(phase).cloned().unwrap_or_default()
    }
}
