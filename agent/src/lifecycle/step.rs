//! The lifecycle's steps as a type: the agent's built-in steps and the project's SLS phases
//! ([`Phase`]), the step list of each mode, and the names they carry on the wire, in journals,
//! in events and in `CORPUS_TEST_PAUSE_AT`. Those names are a protocol the master, the CLI and
//! the e2e tests read: [`Step::as_str`] never changes a name.

use std::fmt;
use std::str::FromStr;

use corpus_states::Phase;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One step of a job, built in or a project phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Creates the layout and writes the pillar.
    PreInstall,
    /// Copies `data/` into the deploy's archive.
    BackupData,
    /// Moves the live tree into the deploy's archive.
    Archive,
    /// Points `run/` at the new (or, rolling back, the target) tree.
    Switch,
    /// Unpacks the pushed source into `project/`.
    Sync,
    /// Editable mode: `run -> project`.
    LinkRun,
    /// Final mode: unpacks the release into `deploy/<id>`.
    Unpack,
    /// Cooking mode: bundles the built tree into a release archive.
    Bundle,
    Healthcheck,
    /// Removes archives and releases beyond `keep_archives`.
    Rotate,
    /// The filesystem part of the undo after a failure.
    Revert,
    /// `.salt/<phase>.sls`; `notify` also POSTs the webhooks first.
    Phase(Phase),
    /// Outside the step lists: the job was checked before anything was touched.
    Validate,
    /// Outside the step lists: the project lock was taken (or refused).
    Lock,
    /// Outside the step lists: one webhook POST (the state id is the URL).
    Webhook,
    /// Outside the step lists: the undo after a failure (its start and its result), or a
    /// requested rollback that found nothing to return to.
    Rollback,
    /// Outside the step lists: the project directory was removed.
    Destroy,
}

const BUILT_IN: [Step; 16] = [
    Step::PreInstall,
    Step::BackupData,
    Step::Archive,
    Step::Switch,
    Step::Sync,
    Step::LinkRun,
    Step::Unpack,
    Step::Bundle,
    Step::Healthcheck,
    Step::Rotate,
    Step::Revert,
    Step::Validate,
    Step::Lock,
    Step::Webhook,
    Step::Rollback,
    Step::Destroy,
];

impl Step {
    pub const STOP: Step = Step::Phase(Phase::Stop);
    pub const START: Step = Step::Phase(Phase::Start);
    pub const NOTIFY: Step = Step::Phase(Phase::Notify);

    /// The step's name on the wire, in journals and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::PreInstall => "pre_install",
            Step::BackupData => "backup_data",
            Step::Archive => "archive",
            Step::Switch => "switch",
            Step::Sync => "sync",
            Step::LinkRun => "link_run",
            Step::Unpack => "unpack",
            Step::Bundle => "bundle",
            Step::Healthcheck => "healthcheck",
            Step::Rotate => "rotate",
            Step::Revert => "revert",
            Step::Phase(phase) => phase.as_str(),
            Step::Validate => "validate",
            Step::Lock => "lock",
            Step::Webhook => "webhook",
            Step::Rollback => "rollback",
            Step::Destroy => "destroy",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a lifecycle step")]
pub struct UnknownStep(pub String);

impl FromStr for Step {
    type Err = UnknownStep;

    fn from_str(name: &str) -> Result<Step, UnknownStep> {
        if let Some(phase) = Phase::from_name(name) {
            return Ok(Step::Phase(phase));
        }
        BUILT_IN
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownStep(name.to_string()))
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Journals write "no step" as `""`, as they always have.
pub(super) mod optional_step {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Step;

    pub fn serialize<S: Serializer>(step: &Option<Step>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(step.map_or("", Step::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Step>, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Ok(None);
        }
        name.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

use Phase as P;

/// Steps of a deploy in editable mode.
pub const EDITABLE_STEPS: &[Step] = &[
    Step::PreInstall,
    Step::STOP,
    Step::Sync,
    Step::LinkRun,
    Step::Phase(P::Configure),
    Step::Phase(P::Build),
    Step::Phase(P::PostBuild),
    Step::START,
    Step::Phase(P::Upgrade),
    Step::Phase(P::PostDeploy),
    Step::Phase(P::PostInstall),
    Step::Healthcheck,
    Step::NOTIFY,
];
/// Steps of a deploy in cooking mode.
pub const COOKING_STEPS: &[Step] = &[
    Step::PreInstall,
    Step::STOP,
    Step::BackupData,
    Step::Phase(P::Backup),
    Step::Archive,
    Step::Switch,
    Step::Sync,
    Step::Phase(P::Configure),
    Step::Phase(P::Build),
    Step::Phase(P::PostBuild),
    Step::Bundle,
    Step::START,
    Step::Phase(P::Upgrade),
    Step::Phase(P::PostDeploy),
    Step::Phase(P::PostInstall),
    Step::Healthcheck,
    Step::Rotate,
    Step::NOTIFY,
];
/// Steps of a deploy in final mode.
pub const FINAL_STEPS: &[Step] = &[
    Step::PreInstall,
    Step::STOP,
    Step::BackupData,
    Step::Phase(P::Backup),
    Step::Archive,
    Step::Unpack,
    Step::Switch,
    Step::START,
    Step::Phase(P::Upgrade),
    Step::Phase(P::PostDeploy),
    Step::Phase(P::PostInstall),
    Step::Healthcheck,
    Step::Rotate,
    Step::NOTIFY,
];
/// Steps of a requested rollback (`corpus rollback`).
pub const ROLLBACK_STEPS: &[Step] = &[
    Step::STOP,
    Step::Archive,
    Step::Switch,
    Step::Phase(P::Restore),
    Step::START,
    Step::Rotate,
    Step::NOTIFY,
];
/// Steps of the undo after a failure (reported under these names, between a `rollback` event
/// marking its start and one with its result; paused at as `rollback_<step>`).
pub const UNDO_STEPS: &[Step] = &[
    Step::STOP,
    Step::Revert,
    Step::Phase(P::Restore),
    Step::START,
];

/// The step after which a deploy is kept rather than undone on a crash.
pub const COMMIT_AFTER: Step = Step::Healthcheck;
/// The step after which a requested rollback stands (its notify failing undoes nothing).
pub const ROLLBACK_COMMIT_AFTER: Step = Step::START;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_name_parses_back_to_its_step() {
        let phases = Phase::ALL.map(Step::Phase);
        for step in BUILT_IN.iter().chain(&phases) {
            assert_eq!(step.as_str().parse::<Step>(), Ok(*step));
            assert_eq!(
                serde_json::to_value(step).unwrap(),
                serde_json::json!(step.as_str())
            );
        }
        assert!("buidl".parse::<Step>().is_err());
    }

    #[test]
    fn every_phase_is_in_some_step_list() {
        let lists = [
            EDITABLE_STEPS,
            COOKING_STEPS,
            FINAL_STEPS,
            ROLLBACK_STEPS,
            UNDO_STEPS,
        ];
        for phase in Phase::ALL {
            assert!(
                lists.iter().any(|l| l.contains(&Step::Phase(phase))),
                "{phase} never runs"
            );
        }
    }
}
