//! What a chunk's requisites decide before it runs, from the results so far (Salt's
//! `check_requisite`): the plain kinds need every target to succeed, the `_any` kinds at least
//! one; `onchanges`/`onfail` need a change/failure among their targets; `prereq` needs its
//! target's test run to show a change; `listen` never gates (it fires at the end of the run).

use std::collections::HashSet;

use corpus_states::{Chunk, Plan, RequisiteKind};

use super::executor::has_watch_action;
use super::result::KeyedResult;

/// What the requisites of a chunk decide before it runs.
#[derive(Debug, PartialEq)]
pub(super) enum Gate {
    /// A requisite target failed (for `_any` kinds: all of them): these `sls.id` names.
    Failed(Vec<String>),
    /// It has `onfail` requisites and none of them failed.
    OnfailUnmet,
    /// It has `onchanges` requisites and none of them changed.
    OnchangesUnmet,
    /// It pre-requires these chunks (later in the plan): run only if one would change.
    Prereq(Vec<usize>),
    /// A `watch` target changed: run, then the watch action if the run changed nothing.
    Watched,
    Met,
}

fn target_name(plan: &Plan, index: usize) -> String {
    plan.chunks
        .get(index)
        .map(|t| format!("{}.{}", t.sls, t.id))
        .unwrap_or_else(|| format!("#{index}"))
}

/// Decides whether `chunk` runs, given the results of the chunks before it.
pub(super) fn gate(chunk: &Chunk, plan: &Plan, results: &[KeyedResult]) -> Gate {
    let mut failed = Vec::new();
    let (mut onfail, mut onfail_met) = (false, false);
    let (mut onchanges, mut onchanges_met) = (false, false);
    let (mut any_failed, mut any_succeeded) = (Vec::new(), false);
    let mut watched = false;
    let mut prereqs = Vec::new();
    for req in &chunk.requisites {
        match req.kind {
            RequisiteKind::Listen => continue,
            RequisiteKind::Prereq => {
                prereqs.push(req.target);
                continue;
            }
            _ => {}
        }
        // The planner puts targets first; a target that has not run yet counts as failed.
        let Some(target) = results.get(req.target).map(|k| &k.result) else {
            failed.push(target_name(plan, req.target));
            continue;
        };
        let target_failed = target.result == Some(false);
        let changed = !target.changes.is_empty();
        match req.kind {
            RequisiteKind::Onfail | RequisiteKind::OnfailAny => {
                // Salt's check_requisite: only a target that succeeded (`True`) leaves an
                // onfail unmet; `None` (test mode: it may fail) lets the state run.
                onfail = true;
                onfail_met |= target.result != Some(true);
            }
            RequisiteKind::RequireAny | RequisiteKind::WatchAny | RequisiteKind::OnchangesAny => {
                if target_failed {
                    any_failed.push(target_name(plan, req.target));
                    continue;
                }
                any_succeeded = true;
                match req.kind {
                    RequisiteKind::WatchAny => watched |= changed,
                    RequisiteKind::OnchangesAny => {
                        onchanges = true;
                        onchanges_met |= changed;
                    }
                    _ => {}
                }
            }
            _ if target_failed => failed.push(target_name(plan, req.target)),
            RequisiteKind::Onchanges => {
                onchanges = true;
                onchanges_met |= changed;
            }
            RequisiteKind::Watch => watched |= changed,
            _ => {}
        }
    }
    if !any_succeeded {
        failed.extend(any_failed);
    }
    if !failed.is_empty() {
        failed.dedup();
        Gate::Failed(failed)
    } else if onfail && !onfail_met {
        Gate::OnfailUnmet
    } else if onchanges && !onchanges_met {
        Gate::OnchangesUnmet
    } else if !prereqs.is_empty() {
        Gate::Prereq(prereqs)
    } else if watched {
        Gate::Watched
    } else {
        Gate::Met
    }
}

/// The chunks some other chunk pre-requires.
pub(super) fn prereq_targets(plan: &Plan) -> HashSet<usize> {
    plan.chunks
        .iter()
        .flat_map(|c| &c.requisites)
        .filter(|r| r.kind == RequisiteKind::Prereq)
        .map(|r| r.target)
        .collect()
}

/// When chunk `index` is pre-required by chunks that failed, their names: it then fails too.
pub(super) fn prereq_failed(
    index: usize,
    plan: &Plan,
    results: &[KeyedResult],
) -> Option<Vec<String>> {
    let names: Vec<String> = plan.chunks[..index.min(plan.chunks.len())]
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.requisites
                .iter()
                .any(|r| r.kind == RequisiteKind::Prereq && r.target == index)
        })
        .filter(|(i, _)| {
            results
                .get(*i)
                .is_some_and(|k| k.result.result == Some(false))
        })
        .map(|(i, _)| target_name(plan, i))
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The listeners whose watch action fires at the end of a run: a `listen` target changed and
/// succeeded, and the listener itself did not fail. Plan order, each once.
pub(super) fn listeners_to_fire(plan: &Plan, results: &[KeyedResult]) -> Vec<usize> {
    plan.chunks
        .iter()
        .enumerate()
        .filter(|(i, chunk)| {
            has_watch_action(chunk)
                && results
                    .get(*i)
                    .is_some_and(|own| own.result.result != Some(false))
                && chunk.requisites.iter().any(|r| {
                    r.kind == RequisiteKind::Listen
                        && results.get(r.target).is_some_and(|t| {
                            t.result.result != Some(false) && !t.result.changes.is_empty()
                        })
                })
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::state::testing::{FakeServices, chunk, sources, with_req};
    use crate::state::{Executor, Report};

    fn run(chunks: Vec<Chunk>, test: bool, services: &FakeServices) -> Report {
        let src = sources(std::path::Path::new("/nonexistent"), Value::Null);
        Executor {
            test,
            sources: &src,
            services,
        }
        .run(&Plan { chunks })
    }

    fn comments(report: &Report) -> Vec<(Option<bool>, String)> {
        report
            .results
            .iter()
            .map(|r| (r.result.result, r.result.comment.clone()))
            .collect()
    }

    fn reqs(mut c: Chunk, kind: RequisiteKind, targets: &[usize]) -> Chunk {
        for &t in targets {
            c = with_req(c, kind, t);
        }
        c
    }

    #[test]
    fn any_requisites_need_one_target_to_succeed_change_or_fail() {
        let svc = FakeServices::default();
        let targets = || {
            vec![
                chunk("test.fail_without_changes", "bad", json!({})),
                chunk("test.succeed_with_changes", "good", json!({})),
                chunk("test.fail_with_changes", "worse", json!({})),
            ]
        };
        let mut chunks = targets();
        chunks.push(reqs(
            chunk("test.succeed_with_changes", "one_ok", json!({})),
            RequisiteKind::RequireAny,
            &[0, 1],
        ));
        chunks.push(reqs(
            chunk("test.succeed_with_changes", "none_ok", json!({})),
            RequisiteKind::RequireAny,
            &[0, 2],
        ));
        chunks.push(reqs(
            chunk("test.succeed_with_changes", "one_changed", json!({})),
            RequisiteKind::OnchangesAny,
            &[0, 1],
        ));
        chunks.push(reqs(
            chunk("test.succeed_with_changes", "one_failed", json!({})),
            RequisiteKind::OnfailAny,
            &[1, 2],
        ));
        chunks.push(reqs(
            chunk("test.succeed_with_changes", "none_failed", json!({})),
            RequisiteKind::OnfailAny,
            &[1],
        ));
        let report = run(chunks, false, &svc);
        let got = comments(&report);
        assert_eq!(got[3].0, Some(true), "{got:?}");
        assert_eq!(
            got[4],
            (
                Some(false),
                "One or more requisite failed: fixture.bad, fixture.worse".to_string()
            )
        );
        assert_eq!(got[5].0, Some(true), "{got:?}");
        assert_eq!(got[6].0, Some(true), "{got:?}");
        assert_eq!(
            got[7].1,
            "State was not run because onfail req did not change"
        );
    }

    #[test]
    fn cmd_wait_runs_only_when_a_watched_state_changed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let wait = |id: &str| {
            chunk(
                "cmd.wait",
                id,
                json!({"name": format!("echo {id} >> {}", marker.display())}),
            )
        };
        let report = run(
            vec![
                chunk("test.succeed_without_changes", "quiet", json!({})),
                chunk("test.succeed_with_changes", "loud", json!({})),
                wait("alone"),
                reqs(wait("on_quiet"), RequisiteKind::Watch, &[0]),
                reqs(wait("on_loud"), RequisiteKind::Watch, &[1]),
            ],
            false,
            &FakeServices::default(),
        );
        assert_eq!(report.results[2].result.comment, "");
        assert!(report.results[3].result.changes.is_empty());
        assert_eq!(report.results[4].result.changes["retcode"], json!(0));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "on_loud\n");
    }

    #[test]
    fn watch_any_restarts_when_a_succeeding_target_changed() {
        let svc = FakeServices::default();
        svc.active.lock().unwrap().insert("app".into());
        let report = run(
            vec![
                chunk("test.fail_without_changes", "bad", json!({})),
                chunk("test.succeed_with_changes", "good", json!({})),
                reqs(
                    chunk("service.running", "app", json!({})),
                    RequisiteKind::WatchAny,
                    &[0, 1],
                ),
            ],
            false,
            &svc,
        );
        assert_eq!(report.results[2].result.comment, "Service restarted");
        assert_eq!(svc.calls(), ["restart app"]);
    }

    #[test]
    fn prereq_runs_only_when_its_target_would_change_and_its_failure_stops_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("app.conf").display().to_string();
        let svc = FakeServices::default();
        let plan_for = |prereq: Chunk| {
            vec![
                with_req(prereq, RequisiteKind::Prereq, 1),
                chunk(
                    "file.managed",
                    "conf",
                    json!({"name": conf, "contents": "v1"}),
                ),
            ]
        };
        let first = run(
            plan_for(chunk("test.succeed_with_changes", "stop", json!({}))),
            false,
            &svc,
        );
        assert_eq!(first.results[0].result.comment, "Success!");
        assert_eq!(first.results[1].result.result, Some(true));
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "v1\n");
        // Nothing would change now: the prereq does not run.
        let second = run(
            plan_for(chunk("test.succeed_with_changes", "stop", json!({}))),
            false,
            &svc,
        );
        assert_eq!(second.results[0].result.comment, "No changes detected");
        assert!(second.results[0].result.changes.is_empty());
        // A failing prereq fails the state it guards, which then changes nothing.
        std::fs::write(&conf, "drift\n").unwrap();
        let failing = run(
            plan_for(chunk("test.fail_without_changes", "stop", json!({}))),
            false,
            &svc,
        );
        assert_eq!(
            failing.results[1].result.comment,
            "One or more requisite failed: fixture.stop"
        );
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "drift\n");
    }

    #[test]
    fn listen_fires_the_watch_action_once_at_the_end_when_a_target_changed() {
        let svc = FakeServices::default();
        svc.active.lock().unwrap().insert("app".into());
        let listener = reqs(
            chunk("service.running", "app", json!({})),
            RequisiteKind::Listen,
            &[1, 2],
        );
        let report = run(
            vec![
                listener.clone(),
                chunk("test.succeed_with_changes", "a", json!({})),
                chunk("test.succeed_with_changes", "b", json!({})),
            ],
            false,
            &svc,
        );
        let keys: Vec<&str> = report.results.iter().map(|r| r.key.as_str()).collect();
        // Salt keys the fired action as a `listener_<id>` state.
        assert_eq!(
            keys[3..],
            ["service_|-listener_app_|-app_|-mod_watch"],
            "{keys:?}"
        );
        assert_eq!(
            report.results[0].result.comment,
            "The service app is already running"
        );
        assert_eq!(report.results[3].result.comment, "Service restarted");
        assert_eq!(report.results[3].result.run_num, 3);
        assert_eq!(svc.calls(), ["restart app"]);
        // No change, no mod_watch.
        let quiet = run(
            vec![
                listener,
                chunk("test.succeed_without_changes", "a", json!({})),
                chunk("test.nop", "b", json!({})),
            ],
            false,
            &svc,
        );
        assert_eq!(quiet.results.len(), 3);
        assert_eq!(svc.calls(), ["restart app"]);
    }
}
