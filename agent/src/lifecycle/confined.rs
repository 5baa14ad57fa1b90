//! A phase of a confined environment (`common.uid` set): the plan re-checked
//! ([`crate::confine::check_plan`]), the project's owners and modes enforced, then the plan run
//! by a child process as the environment's user ([`crate::confine::run_confined`]), its state
//! results reported as the in-process executor's are.

use std::path::PathBuf;
use std::time::Duration;

use corpus_states::{Phase, Plan};
use serde_json::Value;

use super::engine::{Engine, StepResult};
use super::error::{NO_SPACE_TEXT, StepError, StepFailure};
use super::step::Step;
use super::{Job, Lifecycle, StepStatus};
use crate::confine::{self, Identity, PhaseRequest};

impl Lifecycle {
    /// A confined job's account and environment root (`confine::prepare_environment`); a job
    /// without identity needs nothing. The error is the refusal's message.
    pub(super) fn prepare_confinement(&self, job: &Job) -> Result<(), String> {
        match Identity::from_common(&job.common) {
            Ok(None) => Ok(()),
            Ok(Some(identity)) => {
                confine::prepare_environment(&self.env_root(&job.env_uuid), &identity)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Engine<'_> {
    pub(super) fn run_phase_confined(
        &mut self,
        phase: Phase,
        plan: &Plan,
        file_root: PathBuf,
        identity: Identity,
    ) -> StepResult {
        let step = Step::Phase(phase);
        let fail = |e: StepError| StepFailure::new(step, e);
        // ROOT/<env>/srv/projects/<project>: the environment root is three up.
        let Some(env_root) = self.layout.dir.ancestors().nth(3).map(PathBuf::from) else {
            return Err(fail(StepError::Invalid(format!(
                "project directory {} has no environment root",
                self.layout.dir.display()
            ))));
        };
        if let Err(refusal) = confine::check_plan(plan, &identity, &env_root) {
            return Err(fail(StepError::State {
                phase,
                state: refusal.state.clone(),
                comment: refusal.to_string(),
            }));
        }
        confine::secure_project(&self.layout.dir, &identity).map_err(|e| fail(e.into()))?;
        let request = PhaseRequest {
            identity,
            env_root,
            file_root,
            plan: plan.clone(),
            pillar: self.spec.pillar.clone(),
            grains: self.spec.grains.clone(),
            common: self.spec.common.clone(),
            env: self.spec.common.get("env").cloned().unwrap_or(Value::Null),
        };
        let mut failed: Option<(String, String)> = None;
        let mut disk_full = false;
        let reporter = &mut *self.reporter;
        let ran = confine::run_confined(
            &self.phase_program,
            &request,
            self.services.as_ref(),
            &mut |r| {
                let status = match r.result {
                    Some(true) => StepStatus::Success,
                    Some(false) => StepStatus::Failed,
                    None => StepStatus::Skipped,
                };
                if status == StepStatus::Failed && failed.is_none() {
                    failed = Some((r.id.clone(), r.comment.clone()));
                    disk_full = r
                        .changes
                        .get("stderr")
                        .and_then(Value::as_str)
                        .is_some_and(|e| e.contains(NO_SPACE_TEXT));
                }
                reporter.step(
                    step,
                    &r.id,
                    status,
                    Value::Object(r.changes.clone()),
                    &r.comment,
                    Duration::from_secs_f64(r.duration.max(0.0) / 1000.0),
                );
            },
        );
        if let Err(e) = ran {
            return Err(fail(e.into()));
        }
        match failed {
            None => Ok(()),
            Some((state, comment)) => {
                let mut failure = fail(StepError::State {
                    phase,
                    state,
                    comment,
                });
                failure.disk_full |= disk_full;
                Err(failure)
            }
        }
    }
}
