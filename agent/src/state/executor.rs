//! Runs a [`Plan`] in order with Salt's semantics: requisites gate each state (see
//! [`super::requisites`]), `watch` calls the module's watch action when a target changed,
//! `prereq` test-runs its target first, `listen` fires watch actions at the end, and every
//! state returns Salt's fields keyed by Salt's state key.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use corpus_states::{Chunk, Plan};

use super::requisites::{Gate, gate, listeners_to_fire, prereq_failed, prereq_targets};
use super::result::{KeyedResult, Outcome, Report, StateResult};
use super::{
    FileSources, ServiceControl, StateContext, accumulated, archive, cmd, cmd_script, cron, file,
    file_edit, file_paths, file_recurse, git, hosts, pip, pkg, service, ssh_auth, sysctl, test,
    users,
};

/// Runs plans against this host.
pub struct Executor<'a> {
    /// Salt's `test=True`: nothing is changed, result is `None` where a change would happen.
    pub test: bool,
    /// Where `file.managed` finds `source:` files and how it renders templates.
    pub sources: &'a dyn FileSources,
    /// The service manager (`systemctl`).
    pub services: &'a dyn ServiceControl,
}

fn unknown_function(chunk: &Chunk) -> Outcome {
    let what = format!("{}.{}", chunk.module, chunk.function);
    // The catalogue in corpus-states is the one list of what SLS may use.
    let functions = corpus_states::catalogue::functions_of(&chunk.module);
    let known = if functions.is_empty() {
        format!(
            "known modules: {}",
            corpus_states::catalogue::modules().join(", ")
        )
    } else {
        format!("known {} functions: {}", chunk.module, functions.join(", "))
    };
    Outcome::fail(format!(
        "State '{what}' was not found in SLS '{}'\nReason: '{what}' is not available ({known})",
        chunk.sls
    ))
}

/// A state asking for an argument corpus refuses fails naming it, rather than running without it.
fn refused_argument(chunk: &Chunk) -> Option<Outcome> {
    let what = format!("{}.{}", chunk.module, chunk.function);
    let named = chunk.args.keys().find_map(|arg| {
        corpus_states::catalogue::refused_arg(arg).map(|instead| {
            Outcome::fail(format!(
                "argument `{arg}` of {what} is not supported by corpus: {instead}"
            ))
        })
    });
    if named.is_some() {
        return named;
    }
    let function = corpus_states::catalogue::lookup(&chunk.module, &chunk.function)?;
    let unknown: Vec<&str> = chunk
        .args
        .keys()
        .map(String::as_str)
        .filter(|arg| !function.accepts(arg))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    Some(Outcome::fail(format!(
        "{} `{}` of {what} not supported by corpus: remove {}, or use one of: {}",
        if unknown.len() == 1 {
            "argument"
        } else {
            "arguments"
        },
        unknown.join("`, `"),
        if unknown.len() == 1 { "it" } else { "them" },
        function.args.join(", ")
    )))
}

/// Calls the state function of `chunk` (or its watch action when `watch` is set).
fn call(chunk: &Chunk, ctx: &StateContext, watch: bool) -> Outcome {
    if let Some(refused) = refused_argument(chunk) {
        return refused;
    }
    // Salt's onlyif/unless/creates apply to every state; cmd states check them themselves.
    if chunk.module != "cmd" {
        match super::guards::skip_reason(&chunk.args) {
            Ok(Some(reason)) => return Outcome::ok(reason),
            Ok(None) => {}
            Err(e) => return Outcome::fail(e),
        }
    }
    let res = match (chunk.module.as_str(), chunk.function.as_str(), watch) {
        ("file", "managed", false) => file::managed(chunk, ctx),
        ("file", "directory", false) => file::directory(chunk, ctx),
        ("file", "symlink", false) => file::symlink(chunk, ctx),
        ("file", "absent", false) => file::absent(chunk, ctx),
        ("file", "replace", false) => file_edit::replace(chunk, ctx),
        ("file", "blockreplace", false) => file_edit::blockreplace(chunk, ctx),
        ("file", "append", false) => file_edit::append(chunk, ctx),
        ("file", "line", false) => file_edit::line(chunk, ctx),
        ("file", "exists", false) => file_paths::exists(chunk, ctx),
        ("file", "missing", false) => file_paths::missing(chunk, ctx),
        ("file", "copy", false) => file_paths::copy(chunk, ctx),
        ("file", "recurse", false) => file_recurse::recurse(chunk, ctx),
        ("file", "accumulated", false) => accumulated::accumulated(chunk, ctx),
        ("host", "present", false) => hosts::present(chunk, ctx),
        ("cron", "present", false) => cron::present(chunk, ctx),
        ("cron", "absent", false) => cron::absent(chunk, ctx),
        ("sysctl", "present", false) => sysctl::present(chunk, ctx),
        ("git", "latest", false) => git::latest(chunk, ctx),
        ("archive", "extracted", false) => archive::extracted(chunk, ctx),
        ("pip", "installed", false) => pip::installed(chunk, ctx),
        ("virtualenv", "managed", false) => pip::virtualenv_managed(chunk, ctx),
        ("ssh_auth", "present", false) => ssh_auth::present(chunk, ctx),
        ("ssh_auth", "absent", false) => ssh_auth::absent(chunk, ctx),
        ("host", "absent", false) => hosts::absent(chunk, ctx),
        ("cmd", "run", false) => cmd::run(chunk, ctx),
        ("cmd", "run", true) => cmd::mod_watch(chunk, ctx),
        ("cmd", "wait", false) => cmd_script::wait(chunk, ctx),
        ("cmd", "wait", true) => cmd::mod_watch(chunk, ctx),
        ("cmd", "script", false) => cmd_script::script(chunk, ctx),
        ("cmd", "script", true) => cmd_script::script(chunk, ctx),
        ("service", "running", false) => service::running(chunk, ctx),
        ("service", "dead", false) => service::dead(chunk, ctx),
        ("service", "restarted", false) => service::restarted(chunk, ctx),
        ("service", "enabled", false) => service::enabled(chunk, ctx, true),
        ("service", "disabled", false) => service::enabled(chunk, ctx, false),
        ("service", _, true) => service::mod_watch(chunk, ctx),
        ("pkg", "installed", false) => pkg::installed(chunk, ctx),
        ("pkg", "latest", false) => pkg::latest(chunk, ctx),
        ("pkg", "removed", false) => pkg::removed(chunk, ctx, false),
        ("pkg", "purged", false) => pkg::removed(chunk, ctx, true),
        ("pkgrepo", "managed", false) => pkg::repo_managed(chunk, ctx),
        ("pkgrepo", "absent", false) => pkg::repo_absent(chunk, ctx),
        ("user", "present", false) => users::user_present(chunk, ctx),
        ("user", "absent", false) => users::user_absent(chunk, ctx),
        ("group", "present", false) => users::group_present(chunk, ctx),
        ("group", "absent", false) => users::group_absent(chunk, ctx),
        ("test", _, false) => {
            return test::call(chunk, ctx).unwrap_or_else(|| unknown_function(chunk));
        }
        _ => return unknown_function(chunk),
    };
    res.unwrap_or_else(Outcome::fail)
}

/// Whether the module has a watch action (Salt's `mod_watch`).
pub(super) fn has_watch_action(chunk: &Chunk) -> bool {
    matches!(chunk.module.as_str(), "cmd" | "service")
}

/// Salt's `start_time`: local wall-clock time, `HH:MM:SS.ffffff`.
pub fn local_clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`; a zeroed tm is a valid initial value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    let (h, m, s) = if ok {
        (tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64)
    } else {
        let day = now.as_secs() % 86_400;
        (day / 3600, day / 60 % 60, day % 60)
    };
    format!("{h:02}:{m:02}:{s:02}.{:06}", now.subsec_micros())
}

impl Executor<'_> {
    /// Runs every chunk of `plan` in order and returns all results.
    pub fn run(&self, plan: &Plan) -> Report {
        self.run_with(plan, |_| {})
    }

    /// Like [`Executor::run`], calling `on_result` as each state finishes (to stream events).
    ///
    /// States run in plan order, one after the other, except runs of independent
    /// `file.managed` states (see [`parallel_batch`]), which are spread over the CPUs; their
    /// results are still recorded and reported in plan order.
    pub fn run_with(&self, plan: &Plan, mut on_result: impl FnMut(&KeyedResult)) -> Report {
        let ctx = StateContext {
            test: self.test,
            sources: self.sources,
            services: self.services,
            accumulators: Default::default(),
        };
        let mut report = Report {
            results: Vec::with_capacity(plan.chunks.len()),
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        // A prereq target is gated by the chunk that pre-requires it: never in a batch.
        let gated_by_prereq = prereq_targets(plan);
        let mut next = 0;
        while next < plan.chunks.len() {
            let batch = if workers > 1 {
                let until = (next..plan.chunks.len())
                    .find(|i| gated_by_prereq.contains(i))
                    .unwrap_or(plan.chunks.len());
                parallel_batch(&plan.chunks[next..until])
            } else {
                0
            };
            if batch > 0 {
                let chunks = &plan.chunks[next..next + batch];
                for (i, timed) in run_parallel(chunks, &ctx, workers).into_iter().enumerate() {
                    let keyed = finish(&plan.chunks[next + i], next + i, timed);
                    on_result(&keyed);
                    report.results.push(keyed);
                }
                next += batch;
                continue;
            }
            let chunk = &plan.chunks[next];
            let timed = timed(|| self.run_gated(chunk, plan, &report.results, &ctx));
            let keyed = finish(chunk, next, timed);
            on_result(&keyed);
            report.results.push(keyed);
            next += 1;
        }
        // Salt's `listen`: each listener whose target changed runs its watch action once, last.
        for index in listeners_to_fire(plan, &report.results) {
            let chunk = &plan.chunks[index];
            let timed = timed(|| call(chunk, &ctx, true));
            let mut keyed = finish(chunk, report.results.len(), timed);
            // Salt names the fired action after a `listener_<id>` state.
            keyed.key = format!(
                "{}_|-listener_{}_|-{}_|-mod_watch",
                chunk.module, chunk.id, chunk.name
            );
            keyed.function = format!("{}.mod_watch", chunk.module);
            on_result(&keyed);
            report.results.push(keyed);
        }
        report
    }

    fn run_gated(
        &self,
        chunk: &Chunk,
        plan: &Plan,
        done: &[KeyedResult],
        ctx: &StateContext,
    ) -> Outcome {
        if let Some(names) = prereq_failed(done.len(), plan, done) {
            return Outcome::fail(format!(
                "One or more requisite failed: {}",
                names.join(", ")
            ));
        }
        match gate(chunk, plan, done) {
            Gate::Failed(names) => Outcome::fail(format!(
                "One or more requisite failed: {}",
                names.join(", ")
            )),
            Gate::OnfailUnmet => Outcome::ok("State was not run because onfail req did not change"),
            Gate::OnchangesUnmet => {
                Outcome::ok("State was not run because none of the onchanges reqs changed")
            }
            Gate::Watched => {
                let first = call(chunk, ctx, false);
                if first.result != Some(false)
                    && first.changes.is_empty()
                    && has_watch_action(chunk)
                {
                    call(chunk, ctx, true)
                } else {
                    first
                }
            }
            Gate::Prereq(targets) => {
                // Salt test-runs the pre-required states; this one runs only if one of them
                // would change something.
                let test_ctx = StateContext {
                    test: true,
                    sources: ctx.sources,
                    services: ctx.services,
                    accumulators: ctx.accumulators.clone(),
                };
                let mut would_change = false;
                for target in targets {
                    let probe = call(&plan.chunks[target], &test_ctx, false);
                    if probe.result == Some(false) {
                        let t = &plan.chunks[target];
                        return Outcome::fail(format!(
                            "One or more requisite failed: {}.{} (its test run: {})",
                            t.sls, t.id, probe.comment
                        ));
                    }
                    would_change |= !probe.changes.is_empty();
                }
                if would_change {
                    call(chunk, ctx, false)
                } else {
                    Outcome::ok("No changes detected")
                }
            }
            Gate::Met => call(chunk, ctx, false),
        }
    }
}

/// An outcome with when it started (Salt's `start_time`) and how long it took, in ms.
struct Timed {
    outcome: Outcome,
    start_time: String,
    duration: f64,
}

fn timed(f: impl FnOnce() -> Outcome) -> Timed {
    let start_time = local_clock();
    let started = Instant::now();
    let outcome = f();
    let duration = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    Timed {
        outcome,
        start_time,
        duration,
    }
}

fn finish(chunk: &Chunk, run_num: usize, timed: Timed) -> KeyedResult {
    let result = StateResult {
        name: chunk.name.clone(),
        result: timed.outcome.result,
        changes: timed.outcome.changes,
        comment: timed.outcome.comment,
        duration: timed.duration,
        start_time: timed.start_time,
        run_num,
        id: chunk.id.clone(),
        sls: chunk.sls.clone(),
    };
    tracing::debug!(state = %chunk.key(), result = ?result.result, "state finished");
    KeyedResult {
        key: chunk.key(),
        function: format!("{}.{}", chunk.module, chunk.function),
        result,
    }
}

/// Below this many states a batch is not worth the threads.
const MIN_PARALLEL_BATCH: usize = 16;

/// How many leading chunks of `chunks` may run concurrently without changing what a sequential
/// run would do (0 when too few): `file.managed` states without requisites of their own (so
/// nothing gates them on an earlier result), each writing a different path that is not a
/// directory prefix of another's (so none observes another's effect). States that later
/// chunks depend on are fine: their results are recorded before those chunks run.
fn parallel_batch(chunks: &[Chunk]) -> usize {
    let mut names = std::collections::HashSet::new();
    let mut len = 0;
    for chunk in chunks {
        let independent = chunk.module == "file"
            && chunk.function == "managed"
            && chunk.requisites.is_empty()
            && std::path::Path::new(&chunk.name).is_absolute()
            && !chunk.name.contains("/../")
            && !chunk.name.contains("/./");
        if !independent || !names.insert(chunk.name.trim_end_matches('/')) {
            break;
        }
        len += 1;
    }
    if len < MIN_PARALLEL_BATCH {
        return 0;
    }
    // A path that is a parent directory of another in the batch (a file where another state
    // expects a directory) must keep its order: stop the batch before the later of the two.
    let mut sorted: Vec<(&str, usize)> = chunks[..len]
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.trim_end_matches('/'), i))
        .collect();
    sorted.sort_unstable();
    let mut cut = len;
    for pair in sorted.windows(2) {
        let ((a, ia), (b, ib)) = (pair[0], pair[1]);
        if b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'/' {
            cut = cut.min(ia.max(ib));
        }
    }
    if cut < MIN_PARALLEL_BATCH { 0 } else { cut }
}

/// Runs independent chunks on `workers` threads; returns their outcomes in chunk order.
fn run_parallel(chunks: &[Chunk], ctx: &StateContext, workers: usize) -> Vec<Timed> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Timed>> = (0..chunks.len()).map(|_| None).collect();
    let per_worker: Vec<Vec<(usize, Timed)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(chunks.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { break };
                        done.push((i, timed(|| call(chunk, ctx, false))));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, t) in per_worker.into_iter().flatten() {
        slots[i] = Some(t);
    }
    slots
        .into_iter()
        .map(|t| {
            t.unwrap_or_else(|| Timed {
                // Only reachable if a worker panicked: report it instead of losing the state.
                outcome: Outcome::fail("the state panicked while running"),
                start_time: local_clock(),
                duration: 0.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, sources, with_req};
    use corpus_states::RequisiteKind;
    use serde_json::{Value, json};
    use std::fs;

    fn run(plan: &Plan, test: bool, services: &FakeServices) -> Report {
        let src = sources(std::path::Path::new("/nonexistent"), Value::Null);
        Executor {
            test,
            sources: &src,
            services,
        }
        .run(plan)
    }

    fn plan(chunks: Vec<Chunk>) -> Plan {
        Plan { chunks }
    }

    #[test]
    fn every_catalogue_function_is_dispatched_by_the_executor() {
        for f in corpus_states::catalogue::CATALOGUE {
            // Only arguments the function takes, so the call reaches its module.
            let mut args = json!({"contents": "", "target": "/nonexistent/target"});
            if let Some(map) = args.as_object_mut() {
                map.retain(|arg, _| f.accepts(arg));
            }
            let c = chunk(
                &format!("{}.{}", f.module, f.function),
                "/nonexistent/corpus-probe",
                args,
            );
            // Test mode: nothing is written, nothing runs.
            let report = run(&plan(vec![c]), true, &FakeServices::default());
            let comment = &report.results[0].result.comment;
            assert!(!comment.contains("not supported by corpus"), "{comment}");
            assert!(
                !comment.contains("was not found"),
                "{}.{}: {comment}",
                f.module,
                f.function
            );
        }
    }

    #[test]
    fn onlyif_unless_and_creates_guard_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("guarded").display().to_string();
        let state = |guard: Value| {
            let mut args = json!({"name": conf, "contents": "x"});
            if let (Some(a), Some(g)) = (args.as_object_mut(), guard.as_object()) {
                a.extend(g.clone());
            }
            chunk("file.managed", "f", args)
        };
        let cases = [
            (json!({"onlyif": "false"}), "onlyif condition is false"),
            (
                json!({"unless": [{"fun": "test.true"}]}),
                "unless condition is true",
            ),
            (json!({"creates": "/"}), "All files in creates exist"),
        ];
        for (guard, comment) in cases {
            let report = run(&plan(vec![state(guard)]), false, &FakeServices::default());
            assert_eq!(report.results[0].result.comment, comment);
            assert!(fs::metadata(&conf).is_err());
        }
        let report = run(
            &plan(vec![state(json!({"onlyif": "true", "unless": "false"}))]),
            false,
            &FakeServices::default(),
        );
        assert_eq!(report.results[0].result.result, Some(true));
        assert!(fs::metadata(&conf).is_ok());
    }

    #[test]
    fn arguments_a_function_does_not_take_fail_the_state_naming_them() {
        let c = chunk(
            "file.directory",
            "d",
            json!({"name": "/nonexistent/corpus-d", "recurse": ["user"], "backup": "minion"}),
        );
        let report = run(&plan(vec![c]), true, &FakeServices::default());
        let result = &report.results[0].result;
        assert_eq!(result.result, Some(false));
        assert_eq!(
            result.comment,
            "arguments `backup`, `recurse` of file.directory not supported by corpus: remove \
             them, or use one of: mode, dir_mode, user, group, makedirs"
        );
        // Global arguments and test states' keywords are accepted.
        let ok = vec![
            chunk("test.nop", "n", json!({"anything": 1})),
            chunk(
                "test.nop",
                "g",
                json!({"reload_modules": true, "unless": "false"}),
            ),
        ];
        let report = run(&plan(ok), false, &FakeServices::default());
        assert!(report.succeeded(), "{:?}", report.results);
    }

    #[test]
    fn refused_arguments_fail_the_state_naming_them() {
        for arg in ["check_cmd", "clean", "retry", "stateful"] {
            let c = chunk("cmd.run", "c", json!({"name": "true", arg: true}));
            let report = run(&plan(vec![c]), false, &FakeServices::default());
            let result = &report.results[0].result;
            assert_eq!(result.result, Some(false), "{arg}");
            assert!(
                result
                    .comment
                    .starts_with(&format!("argument `{arg}` of cmd.run is not supported")),
                "{}",
                result.comment
            );
        }
    }

    #[test]
    fn results_carry_salt_fields_keys_and_run_numbers() {
        let p = plan(vec![
            chunk("test.succeed_with_changes", "a", json!({})),
            chunk("test.nop", "b", json!({"name": "bee"})),
        ]);
        let report = run(&p, false, &FakeServices::default());
        let keys: Vec<&str> = report.results.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "test_|-a_|-a_|-succeed_with_changes",
                "test_|-b_|-bee_|-nop"
            ]
        );
        let json = Value::Object(report.to_salt_map());
        let b = &json["test_|-b_|-bee_|-nop"];
        assert_eq!(b["name"], "bee");
        assert_eq!(b["result"], true);
        assert_eq!(b["__run_num__"], 1);
        assert_eq!(b["__id__"], "b");
        assert_eq!(b["__sls__"], "fixture");
        assert!(b["duration"].is_f64());
        assert_eq!(b["start_time"].as_str().map(str::len), Some(15));
        assert_eq!(report.succeeded_counts(), (2, 1));
        assert!(report.succeeded());
    }

    #[test]
    fn a_failed_require_fails_its_dependants_naming_it() {
        let p = plan(vec![
            chunk("test.fail_without_changes", "broken", json!({})),
            with_req(
                chunk("test.succeed_with_changes", "needs", json!({})),
                RequisiteKind::Require,
                0,
            ),
            with_req(
                chunk("test.nop", "transitively", json!({})),
                RequisiteKind::Require,
                1,
            ),
            chunk("test.nop", "independent", json!({})),
        ]);
        let report = run(&p, false, &FakeServices::default());
        let r = &report.results;
        assert_eq!(r[1].result.result, Some(false));
        assert_eq!(
            r[1].result.comment,
            "One or more requisite failed: fixture.broken"
        );
        assert!(r[1].result.changes.is_empty());
        assert_eq!(
            r[2].result.comment,
            "One or more requisite failed: fixture.needs"
        );
        assert_eq!(r[3].result.result, Some(true));
        assert_eq!(report.failed(), 3);
        assert!(!report.succeeded());
    }

    #[test]
    fn watch_restarts_a_service_only_when_the_target_changed() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("app.conf").display().to_string();
        let p = plan(vec![
            chunk(
                "file.managed",
                "conf",
                json!({"name": conf, "contents": "v1"}),
            ),
            with_req(
                chunk("service.running", "app", json!({})),
                RequisiteKind::Watch,
                0,
            ),
        ]);
        let svc = FakeServices::default();
        svc.active.lock().unwrap().insert("app".into());
        let first = run(&p, false, &svc);
        assert_eq!(first.results[1].result.comment, "Service restarted");
        assert_eq!(svc.calls(), ["restart app"]);
        let second = run(&p, false, &svc);
        assert_eq!(
            second.results[1].result.comment,
            "The service app is already running"
        );
        assert_eq!(svc.calls(), ["restart app"]);
        // A failed watched target fails the watcher like require.
        let failing = plan(vec![
            chunk("test.fail_with_changes", "bad", json!({})),
            with_req(
                chunk("service.running", "app", json!({})),
                RequisiteKind::Watch,
                0,
            ),
        ]);
        assert_eq!(
            run(&failing, false, &svc).results[1].result.comment,
            "One or more requisite failed: fixture.bad"
        );
        assert_eq!(svc.calls(), ["restart app"]);
    }

    #[test]
    fn watch_in_test_mode_says_the_service_would_restart() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("app.conf").display().to_string();
        let p = plan(vec![
            chunk(
                "file.managed",
                "conf",
                json!({"name": conf, "contents": "v1"}),
            ),
            with_req(
                chunk("service.running", "app", json!({})),
                RequisiteKind::Watch,
                0,
            ),
        ]);
        let svc = FakeServices::default();
        svc.active.lock().unwrap().insert("app".into());
        let report = run(&p, true, &svc);
        assert_eq!(report.results[0].result.result, None);
        assert_eq!(report.results[1].result.result, None);
        assert_eq!(
            report.results[1].result.comment,
            "Service is set to be restarted"
        );
        assert!(svc.calls().is_empty());
        assert!(fs::metadata(&conf).is_err());
        assert!(report.succeeded());
    }

    #[test]
    fn watch_runs_a_guarded_command_only_through_its_watch_action() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let cmd = format!("echo ran >> {}", log.display());
        let p = plan(vec![
            chunk("test.succeed_with_changes", "trigger", json!({})),
            with_req(
                chunk("cmd.run", "reload", json!({"name": cmd})),
                RequisiteKind::Watch,
                0,
            ),
        ]);
        let report = run(&p, false, &FakeServices::default());
        assert_eq!(report.results[1].result.result, Some(true));
        // The command ran once (its own run reported changes, so no second run).
        assert_eq!(fs::read_to_string(&log).unwrap(), "ran\n");
    }

    #[test]
    fn onchanges_runs_only_when_a_target_changed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        let unchanged = plan(vec![
            chunk("test.succeed_without_changes", "quiet", json!({})),
            with_req(
                chunk("cmd.run", "hook", json!({"name": touch})),
                RequisiteKind::Onchanges,
                0,
            ),
        ]);
        let report = run(&unchanged, false, &FakeServices::default());
        assert_eq!(report.results[1].result.result, Some(true));
        assert_eq!(
            report.results[1].result.comment,
            "State was not run because none of the onchanges reqs changed"
        );
        assert!(!marker.exists());
        let changed = plan(vec![
            chunk("test.succeed_without_changes", "quiet", json!({})),
            chunk("test.succeed_with_changes", "loud", json!({})),
            {
                let c = with_req(
                    chunk("cmd.run", "hook", json!({"name": touch})),
                    RequisiteKind::Onchanges,
                    0,
                );
                with_req(c, RequisiteKind::Onchanges, 1)
            },
        ]);
        let report = run(&changed, false, &FakeServices::default());
        assert_eq!(
            report.results[2].result.comment,
            format!("Command \"{touch}\" run")
        );
        assert!(marker.exists());
    }

    #[test]
    fn onfail_runs_only_when_a_target_failed() {
        let ok = plan(vec![
            chunk("test.succeed_with_changes", "deploy", json!({})),
            with_req(
                chunk("test.succeed_with_changes", "rollback", json!({})),
                RequisiteKind::Onfail,
                0,
            ),
        ]);
        let report = run(&ok, false, &FakeServices::default());
        assert_eq!(report.results[1].result.result, Some(true));
        assert_eq!(
            report.results[1].result.comment,
            "State was not run because onfail req did not change"
        );
        assert!(report.results[1].result.changes.is_empty());
        let failed = plan(vec![
            chunk("test.fail_without_changes", "deploy", json!({})),
            with_req(
                chunk("test.succeed_with_changes", "rollback", json!({})),
                RequisiteKind::Onfail,
                0,
            ),
        ]);
        let report = run(&failed, false, &FakeServices::default());
        assert_eq!(report.results[1].result.comment, "Success!");
        assert!(!report.results[1].result.changes.is_empty());
        // The run still failed: the deploy state did.
        assert!(!report.succeeded());
    }

    #[test]
    fn onfail_runs_in_test_mode_when_its_target_might_fail() {
        // As Salt: a target whose test run says `None` (it would change, so it may fail)
        // lets the onfail state run (in test mode too: `None` with changes).
        let p = plan(vec![
            chunk("test.succeed_with_changes", "deploy", json!({})),
            with_req(
                chunk("test.succeed_with_changes", "rollback", json!({})),
                RequisiteKind::Onfail,
                0,
            ),
        ]);
        let report = run(&p, true, &FakeServices::default());
        assert_eq!(report.results[0].result.result, None);
        assert_eq!(report.results[1].result.result, None);
        assert!(!report.results[1].result.changes.is_empty());
    }

    #[test]
    fn unknown_functions_name_the_known_ones() {
        let p = plan(vec![
            chunk("file.manged", "x", json!({})),
            chunk("apt.installed", "y", json!({})),
        ]);
        let report = run(&p, false, &FakeServices::default());
        let c0 = &report.results[0].result.comment;
        assert!(
            c0.starts_with("State 'file.manged' was not found in SLS 'fixture'"),
            "{c0}"
        );
        assert!(
            c0.contains("known file functions: managed, directory, symlink, absent"),
            "{c0}"
        );
        assert!(report.results[1].result.comment.contains(
            "known modules: file, cmd, service, pkg, pkgrepo, user, group, ssh_auth, host, cron, sysctl, git, archive, pip, virtualenv, test"
        ));
    }

    #[test]
    fn test_mode_changes_nothing_and_a_second_apply_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv").display().to_string();
        let p = plan(vec![
            chunk(
                "file.directory",
                "root",
                json!({"name": root, "mode": "0755"}),
            ),
            with_req(
                chunk(
                    "file.managed",
                    "index",
                    json!({"name": format!("{root}/index.html"), "contents": "hi"}),
                ),
                RequisiteKind::Require,
                0,
            ),
            with_req(
                chunk(
                    "file.symlink",
                    "cur",
                    json!({"name": format!("{root}/current"), "target": "index.html"}),
                ),
                RequisiteKind::Require,
                0,
            ),
            chunk(
                "cmd.run",
                "init",
                json!({"name": format!("touch {root}/.init"), "creates": format!("{root}/.init")}),
            ),
        ]);
        let svc = FakeServices::default();
        let dry = run(&p, true, &svc);
        assert!(
            dry.results.iter().all(|r| r.result.result.is_none()),
            "{dry:#?}"
        );
        assert!(fs::metadata(&root).is_err());
        let first = run(&p, false, &svc);
        assert_eq!(first.succeeded_counts(), (4, 4), "{first:#?}");
        let second = run(&p, false, &svc);
        assert_eq!(second.succeeded_counts(), (4, 0), "{second:#?}");
        let dry_again = run(&p, true, &svc);
        assert!(
            dry_again
                .results
                .iter()
                .all(|r| r.result.result == Some(true))
        );
    }

    #[test]
    fn independent_file_states_form_a_parallel_batch_that_stops_at_conflicts() {
        let managed = |i: usize, name: String| {
            chunk(
                "file.managed",
                &format!("f{i}"),
                json!({"name": name, "contents": "x"}),
            )
        };
        let many: Vec<Chunk> = (0..40).map(|i| managed(i, format!("/srv/a/{i}"))).collect();
        assert_eq!(parallel_batch(&many), 40);
        assert_eq!(parallel_batch(&many[..5]), 0, "too small to bother");
        let mut dup = many.clone();
        dup[30] = managed(30, "/srv/a/3".into());
        assert_eq!(
            parallel_batch(&dup),
            30,
            "the same path twice keeps its order"
        );
        let mut nested = many.clone();
        nested[25] = managed(25, "/srv/a/2/inner".into());
        assert_eq!(
            parallel_batch(&nested),
            25,
            "a path under another keeps its order"
        );
        let mut gated = many.clone();
        gated[20] = with_req(gated[20].clone(), RequisiteKind::Require, 0);
        assert_eq!(parallel_batch(&gated), 20);
        let mut other = many;
        other[18] = chunk("cmd.run", "c", json!({"name": "true"}));
        assert_eq!(parallel_batch(&other), 18);
    }

    #[test]
    fn a_parallel_batch_reports_in_plan_order_and_feeds_later_requisites() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunks: Vec<Chunk> = (0..64)
            .map(|i| {
                let name = dir.path().join(format!("d{}/f{i}", i % 4)).display().to_string();
                chunk("file.managed", &format!("f{i}"), json!({"name": name, "contents": format!("{i}"), "makedirs": true, "mode": "0600"}))
            })
            .collect();
        let marker = dir.path().join("hook");
        chunks.push(with_req(
            chunk(
                "cmd.run",
                "hook",
                json!({"name": format!("touch {}", marker.display())}),
            ),
            RequisiteKind::Onchanges,
            63,
        ));
        let p = plan(chunks);
        let mut streamed = Vec::new();
        let src = sources(std::path::Path::new("/nonexistent"), Value::Null);
        let svc = FakeServices::default();
        let report = Executor {
            test: false,
            sources: &src,
            services: &svc,
        }
        .run_with(&p, |r| streamed.push(r.result.run_num));
        assert_eq!(streamed, (0..65).collect::<Vec<_>>());
        assert_eq!(report.succeeded_counts(), (65, 65), "{report:#?}");
        for i in [0, 17, 63] {
            let path = dir.path().join(format!("d{}/f{i}", i % 4));
            assert_eq!(fs::read_to_string(&path).unwrap(), format!("{i}\n"));
        }
        assert!(marker.exists());
        let again = Executor {
            test: false,
            sources: &src,
            services: &svc,
        }
        .run(&p);
        assert_eq!(again.succeeded_counts(), (65, 0));
    }
}
