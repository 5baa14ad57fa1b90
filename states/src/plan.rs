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
    /// Requisites resolved to indices into [`Plan::chunks`]; a target precedes its dependant
    /// in the plan, except a `prereq` target (which follows) and a `listen` target (anywhere).
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
    /// Run if at least one of the `require_any` targets succeeded.
    RequireAny,
    /// Like `require_any`; the watch action runs when a target changed.
    WatchAny,
    /// Run if at least one of the `onchanges_any` targets changed.
    OnchangesAny,
    /// Run if at least one of the `onfail_any` targets failed.
    OnfailAny,
    /// Does not gate or order: when the target changed, the module's watch action runs once at
    /// the end of the run (Salt's `mod_watch` result).
    Listen,
    /// Runs *before* its target, and only if the target, run in test mode first, would change;
    /// the target then fails if this chunk failed. The one edge whose target comes later.
    Prereq,
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

/// A project lifecycle's SLS phase. Each maps to `.salt/<phase>.sls` in the project; a missing
/// file is an empty plan. The names are part of the protocol (plan keys, job events, journals),
/// so [`Phase::as_str`] never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stop,
    Backup,
    Configure,
    Build,
    PostBuild,
    Start,
    Upgrade,
    PostDeploy,
    PostInstall,
    Restore,
    Notify,
}

impl Phase {
    /// Every phase, in the order the lifecycle may run them.
    pub const ALL: [Phase; 11] = [
        Phase::Stop,
        Phase::Backup,
        Phase::Configure,
        Phase::Build,
        Phase::PostBuild,
        Phase::Start,
        Phase::Upgrade,
        Phase::PostDeploy,
        Phase::PostInstall,
        Phase::Restore,
        Phase::Notify,
    ];

    /// The phase's name on the wire and in `.salt/`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Stop => "stop",
            Phase::Backup => "backup",
            Phase::Configure => "configure",
            Phase::Build => "build",
            Phase::PostBuild => "post_build",
            Phase::Start => "start",
            Phase::Upgrade => "upgrade",
            Phase::PostDeploy => "post_deploy",
            Phase::PostInstall => "post_install",
            Phase::Restore => "restore",
            Phase::Notify => "notify",
        }
    }

    /// The phase's state file inside `.salt/`, e.g. `post_build.sls`.
    pub fn sls_file(self) -> String {
        format!("{}.sls", self.as_str())
    }

    /// The phase named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Phase {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A project's rendered plans, one per lifecycle phase (`Job.plan_json` on the wire). Keys are
/// [`Phase::as_str`] names; they stay strings so the wire format does not change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectPlan {
    pub phases: std::collections::BTreeMap<String, Plan>,
}

impl ProjectPlan {
    /// The plan of `phase` (a [`Phase`] or its name), empty when the project has no such file.
    pub fn phase(&self, phase: impl AsRef<str>) -> Plan {
        self.phases.get(phase.as_ref()).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phase_names_round_trip_and_match_serde() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.as_str()), Some(phase));
            let json = serde_json::to_value(phase).unwrap();
            assert_eq!(json, phase.as_str());
        }
        assert_eq!(Phase::PostBuild.sls_file(), "post_build.sls");
        assert_eq!(Phase::from_name("postbuild"), None);
    }
}
