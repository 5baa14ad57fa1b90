//! Lifecycle tests on real temporary directories, with state files running real commands.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corpus_states::{Chunk, Plan, ProjectPlan};
use serde_json::{Value, json};

use super::*;
use corpus_states::Phase;

/// Records every event.
#[derive(Default)]
struct Recorder {
    events: Vec<(String, String, StepStatus, String)>,
}

impl Reporter for Recorder {
    fn step(&mut self, step: Step, id: &str, st: StepStatus, _: Value, comment: &str, _: Duration) {
        self.events
            .push((step.to_string(), id.to_string(), st, comment.to_string()));
    }
}

impl Recorder {
    fn has(&self, step: &str, status: StepStatus) -> bool {
        self.events.iter().any(|e| e.0 == step && e.2 == status)
    }
}

/// What [`Reporter::finished`] received, and whether the journal was still on disk then.
#[derive(Debug, Clone)]
struct Handed {
    journal_present: bool,
    live: Option<String>,
    status: Status,
    release: Option<ReleaseArchive>,
}

/// A reporter that records only the final result, shared with the test, and checks that the
/// project's journal is still there when the result is handed over.
#[derive(Clone)]
struct HandedOver {
    journal: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<Handed>>>,
}

impl HandedOver {
    fn new(f: &Fixture) -> HandedOver {
        HandedOver {
            journal: f.dir().join(".corpus/journal.json"),
            log: Default::default(),
        }
    }

    fn taken(&self) -> Vec<Handed> {
        self.log.lock().unwrap().clone()
    }
}

impl Reporter for HandedOver {
    fn step(&mut self, _: Step, _: &str, _: StepStatus, _: Value, _: &str, _: Duration) {}

    fn finished(&mut self, result: &Finished<'_>) {
        self.log.lock().unwrap().push(Handed {
            journal_present: self.journal.exists(),
            live: result.live.map(str::to_string),
            status: result.outcome.status,
            release: result.outcome.release.clone(),
        });
    }
}

/// A `cmd.run` state run from the project directory.
fn cmd(phase: &str, id: &str, command: &str, cwd: &Path) -> Chunk {
    let mut args = serde_json::Map::new();
    args.insert("cwd".into(), json!(cwd.display().to_string()));
    Chunk {
        id: id.to_string(),
        name: command.to_string(),
        sls: phase.to_string(),
        module: "cmd".into(),
        function: "run".into(),
        args,
        requisites: Vec::new(),
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    lc: Lifecycle,
    env: String,
}

const PROJECT: &str = "shop";

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let lc = Lifecycle::new(base.join("root"));
        Fixture {
            _tmp: tmp,
            base,
            lc,
            env: "0b1c2d3e-aaaa-4bbb-8ccc-000000000001".into(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.lc.project_dir(&self.env, PROJECT)
    }

    /// A source tarball holding `version` and a `.salt/` directory.
    fn source(&self, version: &str) -> PathBuf {
        let src = self.base.join(format!("src-{version}"));
        fs::create_dir_all(src.join(".salt")).unwrap();
        fs::write(src.join("version"), version).unwrap();
        fs::write(src.join(".salt/build.sls"), "# fixture").unwrap();
        let out = self.base.join(format!("src-{version}.tar"));
        let mut b = tar::Builder::new(fs::File::create(&out).unwrap());
        b.append_dir_all(".", &src).unwrap();
        b.finish().unwrap();
        out
    }

    /// A plan per phase from `(phase, id, command)`.
    fn plans(&self, states: &[(&str, &str, &str)]) -> ProjectPlan {
        let mut phases: BTreeMap<String, Plan> = BTreeMap::new();
        for (phase, id, command) in states {
            phases
                .entry(phase.to_string())
                .or_default()
                .chunks
                .push(cmd(phase, id, command, &self.dir()));
        }
        ProjectPlan { phases }
    }

    fn job(&self, kind: JobKind, mode: Mode, plans: ProjectPlan, data: Value) -> Job {
        Job {
            job_id: format!("job-{}", uuid::Uuid::new_v4()),
            kind,
            env_uuid: self.env.clone(),
            project: PROJECT.into(),
            mode,
            deploy_id: new_deploy_id(),
            plans,
            common: json!({"env": "staging", "data": data}),
            pillar: json!({"secret": "s3cr3t"}),
            grains: json!({"id": "agent-1"}),
            source: None,
            release: None,
            commit: "abc123".into(),
            requested_by: "alice".into(),
        }
    }

    /// A cooking deploy whose build copies the version into run/ and writes data/.
    fn cook(&self, version: &str, extra: &[(&str, &str, &str)], data: Value) -> (Job, JobOutcome) {
        let mut states = vec![
            (
                "build",
                "copy",
                "cp project/version run/version && mkdir -p run/lib && echo lib > run/lib/x",
            ),
            ("build", "data", "echo $(cat project/version) > data/seen"),
        ];
        states.extend_from_slice(extra);
        let mut job = self.job(JobKind::Deploy, Mode::Cooking, self.plans(&states), data);
        job.source = Some(self.source(version));
        let out = self.lc.run(&job, &mut Recorder::default());
        (job, out)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.dir().join(rel)).unwrap_or_default()
    }
}

/// Every path under `dir` (links not followed) with file contents and link targets.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(path);
            } else {
                out.insert(rel, fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    out
}

/// `run/` resolved, as a snapshot.
fn run_tree(f: &Fixture) -> BTreeMap<String, String> {
    snapshot(&fs::canonicalize(f.dir().join("run")).unwrap())
}

#[test]
fn cooking_deploy_builds_run_and_bundles_a_release() {
    let f = Fixture::new();
    let (job, out) = f.cook("v1", &[], json!({}));
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v1");
    assert_eq!(f.read("data/seen"), "v1\n");
    let rel = out.release.expect("cooking returns its release");
    assert!(rel.path.starts_with(f.dir().join("releases")));
    assert_eq!(rel.manifest["project"], PROJECT);
    assert_eq!(rel.manifest["build_id"], job.deploy_id);
    assert_eq!(rel.manifest["sha256"], rel.sha256);
    assert_eq!(fs::metadata(&rel.path).unwrap().len(), rel.size);
    let st = f.lc.status(&f.env, PROJECT);
    assert_eq!(st.live.as_deref(), Some(job.deploy_id.as_str()));
    assert_eq!(st.releases, vec![job.deploy_id.clone()]);
    assert_eq!(st.deployments[0].result, Status::Success);
    assert!(st.deployments[0].live);
    assert!(st.disk_used > 0);
    // The pillar is there, read-only.
    let pillar = f.dir().join("pillar/pillar.json");
    assert!(fs::read_to_string(&pillar).unwrap().contains("s3cr3t"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&pillar).unwrap().permissions().mode() & 0o777,
        0o440
    );
    // No journal, no lock holder left.
    assert!(!f.dir().join(".corpus/journal.json").exists());
    assert!(st.locked_by.is_none());
}

#[test]
fn final_deploy_unpacks_the_release_and_never_builds() {
    let staging = Fixture::new();
    let (_, cooked) = staging.cook("v1", &[], json!({}));
    let release = cooked.release.unwrap().path;

    let prod = Fixture::new();
    let marker = prod.base.join("build-ran");
    fs::create_dir_all(prod.dir().join("data")).unwrap();
    fs::write(prod.dir().join("data/db"), "precious").unwrap();
    let plans = prod.plans(&[
        ("build", "b", &format!("touch {}", marker.display())),
        ("configure", "c", &format!("touch {}", marker.display())),
        ("start", "s", "test -f run/version"),
    ]);
    let mut job = prod.job(JobKind::Deploy, Mode::Final, plans, json!({}));
    job.release = Some(release);
    let mut rec = Recorder::default();
    let out = prod.lc.run(&job, &mut rec);
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert!(
        !marker.exists(),
        "build.sls/configure.sls must never run in final mode"
    );
    assert_eq!(prod.read("run/version"), "v1");
    assert_eq!(prod.read("run/lib/x"), "lib\n");
    assert_eq!(prod.read("data/db"), "precious");
    assert!(rec.has("unpack", StepStatus::Success));
    assert!(rec.has("switch", StepStatus::Success));
    assert!(!rec.events.iter().any(|e| e.0 == "build"));
    assert_eq!(
        fs::read_link(prod.dir().join("deploy/current")).unwrap(),
        PathBuf::from(&job.deploy_id)
    );
}

#[test]
fn final_deploy_without_release_fails_and_touches_nothing() {
    let f = Fixture::new();
    let job = f.job(
        JobKind::Deploy,
        Mode::Final,
        ProjectPlan::default(),
        json!({}),
    );
    let out = f.lc.run(&job, &mut Recorder::default());
    assert_eq!(out.status, Status::Failed);
    assert!(out.message.contains("release"), "{}", out.message);
    assert!(!f.base.join("root").exists(), "nothing may be created");
}

#[test]
fn invalid_names_are_refused_before_anything_is_touched() {
    let f = Fixture::new();
    let mut job = f.job(
        JobKind::Deploy,
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    job.source = Some(f.source("v1"));
    job.project = "../x".into();
    assert_eq!(f.lc.run(&job, &mut NullReporter).status, Status::Failed);
    job.project = PROJECT.into();
    job.deploy_id = "../../etc".into();
    let out = f.lc.run(&job, &mut NullReporter);
    assert_eq!(out.status, Status::Failed);
    assert!(out.message.contains("deploy id"), "{}", out.message);
    assert!(!f.base.join("root").exists());
}

#[test]
fn failed_build_restores_run_and_data_and_runs_restore_sls() {
    let f = Fixture::new();
    let (_, first) = f.cook("v1", &[], json!({}));
    assert_eq!(first.status, Status::Success, "{}", first.message);
    fs::write(f.dir().join("data/db"), "v1-data").unwrap();
    let before = run_tree(&f);
    let restored = f.base.join("restore-ran");
    let restore = format!("touch {}", restored.display());
    let (job, out) = f.cook(
        "v2",
        &[
            (
                "build",
                "scribble",
                "echo broken > data/db && echo junk > run/junk",
            ),
            ("build", "compile", "exit 3"),
            ("restore", "reload", &restore),
        ],
        json!({}),
    );
    assert_eq!(out.status, Status::RolledBack, "{}", out.message);
    assert_eq!(out.failed_step, "build");
    assert_eq!(out.failed_state, "compile");
    assert!(out.message.contains("compile"), "{}", out.message);
    assert_eq!(
        run_tree(&f),
        before,
        "run/ must be byte-identical to before"
    );
    assert_eq!(f.read("data/db"), "v1-data");
    assert_eq!(f.read("data/seen"), "v1\n");
    assert!(restored.exists(), "restore.sls must run");
    let arch = f.dir().join("archives").join(&job.deploy_id);
    assert!(arch.join("run.failed/junk").exists(), "failed tree kept");
    assert!(out.release.is_none());
    assert!(
        !f.dir()
            .join(format!("releases/{}.tar.zst", job.deploy_id))
            .exists()
    );
    let st = f.lc.status(&f.env, PROJECT);
    let d = st
        .deployments
        .iter()
        .find(|d| d.id == job.deploy_id)
        .unwrap();
    assert_eq!(d.result, Status::RolledBack);
    assert_eq!(d.failed_step, "build");
    assert_eq!(d.failed_state, "compile");
    assert_eq!(st.live.as_deref(), Some(first.deploy_id.as_str()));
}

#[test]
fn first_deploy_failing_leaves_no_tree() {
    let f = Fixture::new();
    let (_, out) = f.cook("v1", &[("build", "boom", "false")], json!({}));
    assert_eq!(out.status, Status::RolledBack, "{}", out.message);
    assert!(f.lc.status(&f.env, PROJECT).live.is_none());
    assert!(
        !f.dir().join("run").exists(),
        "run/ resolves to nothing, as before"
    );
}

#[test]
fn failing_healthcheck_in_final_rolls_back() {
    let staging = Fixture::new();
    let (_, c1) = staging.cook("v1", &[], json!({}));
    let (_, c2) = staging.cook("v2", &[], json!({}));
    let prod = Fixture::new();
    let mut j1 = prod.job(
        JobKind::Deploy,
        Mode::Final,
        ProjectPlan::default(),
        json!({}),
    );
    j1.release = Some(c1.release.unwrap().path);
    assert_eq!(prod.lc.run(&j1, &mut NullReporter).status, Status::Success);
    let before = run_tree(&prod);
    let hc =
        json!({"healthcheck": {"command": "test -f run/healthy", "retries": 2, "interval": 0.01}});
    let mut j2 = prod.job(JobKind::Deploy, Mode::Final, ProjectPlan::default(), hc);
    j2.release = Some(c2.release.unwrap().path);
    let mut rec = Recorder::default();
    let out = prod.lc.run(&j2, &mut rec);
    assert_eq!(out.status, Status::RolledBack, "{}", out.message);
    assert_eq!(out.failed_step, "healthcheck");
    assert!(rec.has("healthcheck", StepStatus::Failed));
    assert!(rec.has("rollback", StepStatus::Success));
    assert_eq!(run_tree(&prod), before);
    assert_eq!(prod.read("run/version"), "v1");
}

#[test]
fn rollback_on_request_then_to_an_older_deployment() {
    let f = Fixture::new();
    let ids: Vec<String> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| {
            let (job, out) = f.cook(v, &[], json!({}));
            assert_eq!(out.status, Status::Success, "{}", out.message);
            job.deploy_id
        })
        .collect();
    assert_eq!(f.read("data/seen"), "v3\n");
    let job = f.job(
        JobKind::Rollback { to: None },
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    let out = f.lc.run(&job, &mut NullReporter);
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v2");
    assert_eq!(f.read("data/seen"), "v2\n", "data/ as v2 left it");
    assert_eq!(
        f.lc.status(&f.env, PROJECT).live.as_deref(),
        Some(ids[1].as_str())
    );

    let to = JobKind::Rollback {
        to: Some(ids[0].clone()),
    };
    let out = f.lc.run(
        &f.job(to, Mode::Cooking, ProjectPlan::default(), json!({})),
        &mut NullReporter,
    );
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v1");
    assert_eq!(f.read("data/seen"), "v1\n");
    let st = f.lc.status(&f.env, PROJECT);
    assert_eq!(st.live.as_deref(), Some(ids[0].as_str()));
    assert!(
        st.deployments.iter().any(|d| d.id == ids[0] && d.live),
        "{st:#?}"
    );

    // And forward again to v3, which is still kept.
    let to = JobKind::Rollback {
        to: Some(ids[2].clone()),
    };
    let out = f.lc.run(
        &f.job(to, Mode::Cooking, ProjectPlan::default(), json!({})),
        &mut NullReporter,
    );
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v3");
    assert_eq!(f.read("data/seen"), "v3\n");

    // An unknown target is refused with the list of available ones.
    let to = JobKind::Rollback {
        to: Some(new_deploy_id()),
    };
    let out = f.lc.run(
        &f.job(to, Mode::Cooking, ProjectPlan::default(), json!({})),
        &mut NullReporter,
    );
    assert_eq!(out.status, Status::Failed);
    assert!(out.message.contains("available"), "{}", out.message);
    assert_eq!(f.read("run/version"), "v3");
}

#[test]
fn rotation_keeps_keep_archives_and_never_the_live_or_last_good() {
    let f = Fixture::new();
    let keep = json!({"keep_archives": 2});
    let mut ids = Vec::new();
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        let (job, out) = f.cook(v, &[], keep.clone());
        assert_eq!(out.status, Status::Success, "{}", out.message);
        ids.push(job.deploy_id);
    }
    let archives = history::list_archives(&ProjectLayout::new(f.dir()));
    assert_eq!(archives.len(), 2, "{archives:?}");
    assert!(archives.contains(&ids[4]), "the live one stays");
    assert!(archives.contains(&ids[3]));
    // The last good tree (v4, kept in v5's archive) is still there to roll back to.
    let out = f.lc.run(
        &f.job(
            JobKind::Rollback { to: None },
            Mode::Cooking,
            ProjectPlan::default(),
            keep.clone(),
        ),
        &mut NullReporter,
    );
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v4");
    // After rolling back, the live deployment's archive is old but protected.
    for v in ["v6", "v7"] {
        let (_, out) = f.cook(v, &[], json!({"keep_archives": 1}));
        assert_eq!(out.status, Status::Success, "{}", out.message);
    }
    let st = f.lc.status(&f.env, PROJECT);
    assert!(st.deployments.iter().any(|d| d.live));
    assert!(st.releases.len() <= 2, "{:?}", st.releases);
}

#[test]
fn concurrent_job_is_refused_with_the_holders_details() {
    let f = Fixture::new();
    let (_, first) = f.cook("v1", &[], json!({}));
    assert_eq!(first.status, Status::Success);
    let before = snapshot(&f.dir());
    let holder = LockHolder {
        user: "bob".into(),
        job_id: "job-42".into(),
        started: "2025-01-02T03:04:05Z".into(),
        pid: 4242,
    };
    let lock_path = ProjectLayout::new(f.dir()).lock_file();
    let held = lock::ProjectLock::acquire(&lock_path, &holder).unwrap();
    let mut job = f.job(
        JobKind::Deploy,
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    job.source = Some(f.source("v2"));
    let t = Instant::now();
    let out = f.lc.run(&job, &mut NullReporter);
    assert!(t.elapsed() < Duration::from_secs(5), "refused at once");
    assert_eq!(out.status, Status::Refused);
    for part in ["bob", "job-42", "2025-01-02T03:04:05Z"] {
        assert!(
            out.message.contains(part),
            "{part} missing from {}",
            out.message
        );
    }
    let st = f.lc.status(&f.env, PROJECT);
    assert_eq!(
        st.locked_by,
        Some(("bob".into(), "job-42".into(), "2025-01-02T03:04:05Z".into()))
    );
    drop(held);
    let mut after = snapshot(&f.dir());
    after.remove(".corpus/lock");
    let mut before = before;
    before.remove(".corpus/lock");
    assert_eq!(after, before, "a refused job touches nothing");
    // Released: the next job runs.
    assert_eq!(f.lc.run(&job, &mut NullReporter).status, Status::Success);
}

#[test]
fn editable_run_resolves_to_project_and_failure_is_left_alone() {
    let f = Fixture::new();
    let mut job = f.job(
        JobKind::Deploy,
        Mode::Editable,
        f.plans(&[("build", "gen", "echo generated > run/generated")]),
        json!({}),
    );
    job.source = Some(f.source("v1"));
    let out = f.lc.run(&job, &mut NullReporter);
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(
        fs::read_link(f.dir().join("run")).unwrap(),
        PathBuf::from("project")
    );
    assert_eq!(f.read("project/generated"), "generated\n");

    let mut job = f.job(
        JobKind::Deploy,
        Mode::Editable,
        f.plans(&[
            ("build", "half", "echo half > run/half"),
            ("build", "broken", "false"),
        ]),
        json!({}),
    );
    job.source = Some(f.source("v2"));
    let out = f.lc.run(&job, &mut NullReporter);
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.failed_step, "build");
    assert_eq!(out.failed_state, "broken");
    assert_eq!(
        f.read("project/version"),
        "v2",
        "the tree is left for the developer"
    );
    assert_eq!(f.read("project/half"), "half\n");
}

#[test]
fn init_creates_the_layout_only() {
    let f = Fixture::new();
    let job = f.job(
        JobKind::Init,
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    assert_eq!(f.lc.run(&job, &mut NullReporter).status, Status::Success);
    for d in [
        "project", "pillar", "data", "build", "deploy", "releases", "archives",
    ] {
        assert!(f.dir().join(d).is_dir(), "{d}");
    }
    assert_eq!(
        fs::read_link(f.dir().join("run")).unwrap(),
        PathBuf::from("deploy/current")
    );
    let job = f.job(
        JobKind::Destroy,
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    assert_eq!(f.lc.run(&job, &mut NullReporter).status, Status::Success);
    assert!(!f.dir().exists());
}

#[test]
fn webhook_failures_are_reported_but_do_not_fail_the_deploy() {
    let f = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while !String::from_utf8_lossy(&got).contains("\"project\"") {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        String::from_utf8_lossy(&got).to_string()
    });
    let data = json!({"notify": {"webhooks": [
        format!("http://127.0.0.1:{port}/hook"),
        "http://127.0.0.1:1/closed",
    ]}});
    let mut job = f.job(JobKind::Deploy, Mode::Cooking, ProjectPlan::default(), data);
    job.source = Some(f.source("v1"));
    let mut rec = Recorder::default();
    let out = f.lc.run(&job, &mut rec);
    assert_eq!(out.status, Status::Success, "{}", out.message);
    let body = server.join().unwrap();
    assert!(body.starts_with("POST /hook"), "{body}");
    assert!(body.contains("\"status\":\"success\""), "{body}");
    assert!(body.contains("\"commit\":\"abc123\""), "{body}");
    assert!(rec.has("webhook", StepStatus::Success));
    assert!(rec.has("webhook", StepStatus::Failed));
}

#[test]
fn outbound_targets_off_the_allow_list_fail_their_step_naming_them() {
    // No outbound_allow in the agent's config: loopback only.
    let f = Fixture::new();
    let data = json!({
        "healthcheck": {"http": "http://192.0.2.7:8080/health"},
        "notify": {"webhooks": ["http://192.0.2.7/hook"]},
    });
    let mut job = f.job(JobKind::Deploy, Mode::Cooking, ProjectPlan::default(), data);
    job.source = Some(f.source("v1"));
    let mut rec = Recorder::default();
    let out = f.lc.run(&job, &mut rec);
    assert_ne!(out.status, Status::Success);
    assert_eq!(out.failed_step, "healthcheck");
    assert!(
        out.message.contains("http://192.0.2.7:8080/health")
            && out.message.contains("outbound_allow"),
        "{}",
        out.message
    );
    let webhook = rec
        .events
        .iter()
        .find(|e| e.0 == "webhook")
        .map(|e| e.3.clone())
        .unwrap_or_default();
    assert!(
        webhook.contains("http://192.0.2.7/hook") && webhook.contains("outbound_allow"),
        "{webhook}"
    );
}

// ---- unsafe archives ------------------------------------------------------------------------

/// A tar with one raw entry (name written unchecked into the header).
fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let body: &[u8] = if *kind == tar::EntryType::Regular {
            b"x"
        } else {
            b""
        };
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn unsafe_archive_entries_are_refused() {
    use tar::EntryType as T;
    type Entries<'a> = &'a [(&'a str, T, &'a str)];
    let cases: &[(&str, Entries)] = &[
        ("absolute path", &[("/tmp/evil", T::Regular, "")]),
        ("dot-dot", &[("a/../../evil", T::Regular, "")]),
        ("link to /", &[("l", T::Symlink, "/etc")]),
        ("link up", &[("d/l", T::Symlink, "../../x")]),
        (
            "write through link",
            &[("l", T::Symlink, "d"), ("l/f", T::Regular, "")],
        ),
        (
            "chained links",
            &[("d/l1", T::Symlink, ".."), ("l2", T::Symlink, "d/l1/..")],
        ),
        ("device", &[("dev", T::Char, "")]),
        ("fifo", &[("p", T::Fifo, "")]),
        ("hard link out", &[("h", T::Link, "../../etc/passwd")]),
        (
            // link(2) does not follow a symlink: the hard link would be a new, unchecked
            // symlink pointing three levels up, and the next entry would be written there.
            "hard link to a symlink",
            &[
                ("x", T::Symlink, "."),
                ("d1/d2/d3/z", T::Symlink, "../../.."),
                ("h", T::Link, "x/d1/d2/d3/z"),
                ("h/evil", T::Regular, ""),
            ],
        ),
        (
            "hard link to a symlink, directly",
            &[
                ("d1/d2/z", T::Symlink, "../.."),
                ("h", T::Link, "d1/d2/z"),
                ("h/evil", T::Regular, ""),
            ],
        ),
    ];
    for (what, entries) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("tree");
        let bytes = raw_tar(entries);
        let res = archive::unpack(bytes.as_slice(), &dst, None, Limits::default());
        let err = res.expect_err(what);
        assert!(err.to_string().contains("refused"), "{what}: {err}");
        assert!(!tmp.path().join("evil").exists(), "{what}");
    }
    // Limits.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = raw_tar(&[("a", T::Regular, ""), ("b", T::Regular, "")]);
    let small = Limits {
        max_bytes: 1,
        max_entries: 10,
    };
    assert!(archive::unpack(bytes.as_slice(), &tmp.path().join("t"), None, small).is_err());
    // A sane archive with an in-tree link unpacks.
    let ok = raw_tar(&[("d/f", T::Regular, ""), ("l", T::Symlink, "d/f")]);
    archive::unpack(
        ok.as_slice(),
        &tmp.path().join("ok"),
        None,
        Limits::default(),
    )
    .unwrap();
    assert_eq!(fs::read_to_string(tmp.path().join("ok/l")).unwrap(), "x");
}

#[test]
fn a_release_of_another_project_is_refused() {
    let staging = Fixture::new();
    let (_, c) = staging.cook("v1", &[], json!({}));
    let prod = Fixture::new();
    let mut job = prod.job(
        JobKind::Deploy,
        Mode::Final,
        ProjectPlan::default(),
        json!({}),
    );
    job.project = "other".into();
    job.release = Some(c.release.unwrap().path);
    let out = prod.lc.run(&job, &mut NullReporter);
    assert_eq!(out.status, Status::Failed);
    assert!(
        out.message.contains("cooked for project"),
        "{}",
        out.message
    );
}

#[test]
fn a_deploy_failing_on_a_full_disk_keeps_no_failed_tree_and_says_so() {
    let f = Fixture::new();
    let (first, _) = f.cook("v1", &[], json!({}));
    fs::write(f.dir().join("data/db"), "v1-data").unwrap();
    let (job, out) = f.cook(
        "v2",
        &[
            ("build", "scribble", "echo broken > data/db"),
            // A real ENOSPC, as a build filling the disk gets it.
            ("build", "fill", "cp project/version /dev/full"),
        ],
        json!({}),
    );
    assert_eq!(out.status, Status::RolledBack, "{}", out.message);
    assert!(out.message.contains("disk is full"), "{}", out.message);
    let arch = f.dir().join("archives").join(&job.deploy_id);
    assert!(!arch.join("run.failed").exists(), "failed tree kept");
    assert!(!arch.join("data.failed").exists(), "failed data kept");
    assert!(!f.dir().join("deploy").join(&job.deploy_id).exists());
    assert_eq!(f.read("data/db"), "v1-data");
    assert_eq!(
        f.lc.status(&f.env, PROJECT).live.as_deref(),
        Some(first.deploy_id.as_str())
    );
}

#[test]
fn failed_trees_are_rotated_under_keep_archives() {
    let f = Fixture::new();
    let settings = json!({"keep_archives": 1});
    f.cook("v1", &[], settings.clone());
    let mut failed = Vec::new();
    for version in ["v2", "v3", "v4"] {
        let (job, out) = f.cook(version, &[("build", "compile", "false")], settings.clone());
        assert_eq!(out.status, Status::RolledBack, "{}", out.message);
        failed.push(f.dir().join("archives").join(&job.deploy_id));
    }
    let keeps =
        |arch: &PathBuf| arch.join("run.failed").exists() || arch.join("data.failed").exists();
    assert!(
        keeps(&failed[2]),
        "the newest failure is kept for inspection"
    );
    assert!(
        !keeps(&failed[0]) && !keeps(&failed[1]),
        "older failed trees rotated"
    );
    // Their records stay: `corpus status` still lists the failures.
    assert!(failed[0].join("status.json").exists());
    f.lc.sweep(&f.env, PROJECT);
    let trash: Vec<_> = fs::read_dir(f.dir().join("archives"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
        .collect();
    assert!(trash.is_empty(), "swept after the job");
}

#[test]
fn a_start_failing_during_the_undo_is_reported_as_failed_not_rolled_back() {
    let f = Fixture::new();
    let (first, _) = f.cook("v1", &[], json!({}));
    let plans = f.plans(&[
        ("build", "compile", "false"),
        ("start", "start_app", "echo cannot bind >&2; false"),
    ]);
    let mut job = f.job(JobKind::Deploy, Mode::Cooking, plans, json!({}));
    job.source = Some(f.source("v2"));
    let mut rec = Recorder::default();
    let out = f.lc.run(&job, &mut rec);
    assert_eq!(out.status, Status::Failed, "{}", out.message);
    assert_eq!(out.failed_step, "build");
    assert!(out.message.contains("start_app"), "{}", out.message);
    assert!(
        out.message.contains("service may be down"),
        "{}",
        out.message
    );
    assert!(rec.has("rollback", StepStatus::Failed));
    // The files were put back all the same.
    assert_eq!(f.read("run/version"), "v1");
    assert_eq!(
        f.lc.status(&f.env, PROJECT).live.as_deref(),
        Some(first.deploy_id.as_str())
    );
}

#[test]
fn a_requested_rollback_whose_start_fails_is_undone_back_to_the_live_deployment() {
    let f = Fixture::new();
    let (first, _) = f.cook("v1", &[], json!({}));
    let (second, _) = f.cook("v2", &[], json!({}));
    fs::write(f.dir().join("data/db"), "v2-data").unwrap();
    // v1 cannot start any more; v2 can.
    let plans = f.plans(&[("start", "start_app", "test \"$(cat run/version)\" != v1")]);
    let back = f.job(
        JobKind::Rollback { to: None },
        Mode::Cooking,
        plans,
        json!({}),
    );
    let mut rec = Recorder::default();
    let out = f.lc.run(&back, &mut rec);
    assert_eq!(out.status, Status::Failed, "{}", out.message);
    assert_eq!(out.failed_step, "start");
    assert!(out.message.contains("undone"), "{}", out.message);
    assert!(rec.has("revert", StepStatus::Success));
    assert_eq!(f.read("run/version"), "v2");
    assert_eq!(f.read("data/db"), "v2-data");
    assert_eq!(
        f.lc.status(&f.env, PROJECT).live.as_deref(),
        Some(second.deploy_id.as_str())
    );
    // v1's tree is kept where it was: a rollback to it can be tried again.
    let again = f.job(
        JobKind::Rollback { to: None },
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    let out = f.lc.run(&again, &mut Recorder::default());
    assert_eq!(out.status, Status::Success, "{}", out.message);
    assert_eq!(f.read("run/version"), "v1");
    assert_eq!(f.read("data/seen"), "v1\n", "v1's data came back with it");
    assert_eq!(
        f.lc.status(&f.env, PROJECT).live.as_deref(),
        Some(first.deploy_id.as_str())
    );
}

#[test]
fn the_result_is_handed_over_before_the_journal_goes_naming_the_live_deployment() {
    let f = Fixture::new();
    let (first, _) = f.cook("v1", &[], json!({}));
    let plans = f.plans(&[("build", "copy", "cp project/version run/version")]);
    let mut job = f.job(JobKind::Deploy, Mode::Cooking, plans, json!({}));
    job.source = Some(f.source("v2"));
    let handed = HandedOver::new(&f);
    let out = f.lc.run(&job, &mut handed.clone());
    assert_eq!(out.status, Status::Success, "{}", out.message);
    let taken = handed.taken();
    assert_eq!(taken.len(), 1);
    assert!(
        taken[0].journal_present,
        "the journal went before the result was kept"
    );
    assert_eq!(taken[0].live.as_deref(), Some(job.deploy_id.as_str()));
    assert_eq!(taken[0].release, out.release);
    assert!(!f.dir().join(".corpus/journal.json").exists());

    let back = f.job(
        JobKind::Rollback { to: None },
        Mode::Cooking,
        ProjectPlan::default(),
        json!({}),
    );
    let handed = HandedOver::new(&f);
    let out = f.lc.run(&back, &mut handed.clone());
    assert_eq!(out.status, Status::Success, "{}", out.message);
    let taken = handed.taken();
    assert_eq!(taken[0].live.as_deref(), Some(first.deploy_id.as_str()));
    assert!(taken[0].journal_present);
}

// ---- crash recovery -------------------------------------------------------------------------

const CHILD_ENV: &str = "CORPUS_LIFECYCLE_CHILD";

/// Not a test: the child process of the crash tests. It runs the job serialized in
/// `$CORPUS_LIFECYCLE_CHILD` and pauses where `CORPUS_TEST_PAUSE_AT` says, to be SIGKILLed.
#[test]
#[ignore = "child process of crash_at_each_step_boundary_recovers"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let s = |k: &str| spec[k].as_str().unwrap_or_default().to_string();
    let path = |k: &str| spec[k].as_str().map(PathBuf::from);
    let plans: ProjectPlan = serde_json::from_value(spec["plans"].clone()).unwrap();
    let job = Job {
        job_id: s("job_id"),
        kind: match s("kind").as_str() {
            "rollback" => JobKind::Rollback { to: None },
            _ => JobKind::Deploy,
        },
        env_uuid: s("env"),
        project: PROJECT.into(),
        mode: serde_json::from_value(spec["mode"].clone()).unwrap(),
        deploy_id: s("deploy_id"),
        plans,
        common: spec["common"].clone(),
        pillar: json!({}),
        grains: json!({}),
        source: path("source"),
        release: path("release"),
        commit: "c2".into(),
        requested_by: "alice".into(),
    };
    Lifecycle::new(PathBuf::from(s("root"))).run(&job, &mut NullReporter);
}

/// Runs `job` in a child process paused at `step`, SIGKILLs it there, and recovers. Checks
/// what holds after any crash: one outcome, for this job, handed over (to be kept) before the
/// journal went; no journal or pause marker left. Returns the outcome and what was handed over.
fn crash_at(f: &Fixture, job: &Job, step: &str) -> (JobOutcome, Handed) {
    let spec = json!({
        "job_id": job.job_id, "env": f.env, "deploy_id": job.deploy_id,
        "kind": if matches!(job.kind, JobKind::Rollback { .. }) { "rollback" } else { "deploy" },
        "mode": job.mode, "plans": job.plans, "common": job.common,
        "source": job.source, "release": job.release,
        "root": f.base.join("root"),
    });
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lifecycle::tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.to_string())
        .env("CORPUS_TEST_PAUSE_AT", step)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = f.dir().join(format!(".paused-{step}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "child never paused at {step}");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("child exited ({st}) before pausing at {step}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let handed = HandedOver::new(f);
    let mut outcomes = f.lc.recover(&mut |_| Box::new(handed.clone()));
    assert_eq!(outcomes.len(), 1, "{step}");
    let (job_id, out) = outcomes.remove(0);
    assert_eq!(job_id, job.job_id);
    assert!(!marker.exists());
    assert!(
        !f.dir().join(".corpus/journal.json").exists(),
        "{step}: journal left"
    );
    // The result is handed over (to be kept) before the journal goes, and says what is live.
    let mut handed = handed.taken();
    assert_eq!(handed.len(), 1, "{step}");
    let handed = handed.remove(0);
    assert!(handed.journal_present, "{step}: journal gone first");
    assert_eq!(handed.status, out.status, "{step}");
    (out, handed)
}

/// Runs a cooking deploy in a child process paused at `step`, SIGKILLs it there, recovers.
fn crash_and_recover(step: &str, failing_build: bool) {
    let f = Fixture::new();
    let (first, out) = f.cook("v1", &[], json!({}));
    assert_eq!(out.status, Status::Success);
    fs::write(f.dir().join("data/db"), "v1-data").unwrap();
    let before = run_tree(&f);
    let mut states = vec![
        ("build", "copy", "cp project/version run/version"),
        ("build", "scribble", "echo broken > data/db"),
    ];
    if failing_build {
        states.push(("build", "compile", "false"));
    }
    let mut job = f.job(JobKind::Deploy, Mode::Cooking, f.plans(&states), json!({}));
    job.source = Some(f.source("v2"));
    let (out, handed) = crash_at(&f, &job, step);
    let committed = ["rotate", "notify"].contains(&step);
    if committed {
        assert_eq!(out.status, Status::Success, "{step}: {}", out.message);
        assert_eq!(f.read("run/version"), "v2", "{step}");
        assert_eq!(f.read("data/db"), "broken\n", "{step}");
        assert_eq!(
            handed.live.as_deref(),
            Some(job.deploy_id.as_str()),
            "{step}"
        );
        let release = handed.release.as_ref().expect("the cooked release");
        assert_eq!(
            fs::metadata(&release.path).map(|m| m.len()).ok(),
            Some(release.size),
            "{step}: the recovered result carries the release bundled before the crash"
        );
    } else {
        assert_eq!(
            handed.live.as_deref(),
            Some(first.deploy_id.as_str()),
            "{step}"
        );
        assert!(handed.release.is_none(), "{step}");
        assert_eq!(out.status, Status::RolledBack, "{step}: {}", out.message);
        assert_eq!(run_tree(&f), before, "{step}: run/ back on the old tree");
        assert_eq!(f.read("data/db"), "v1-data", "{step}: data/ intact");
        let st = f.lc.status(&f.env, PROJECT);
        assert_eq!(st.live.as_deref(), Some(first.deploy_id.as_str()), "{step}");
    }
    // The project is usable again: lock free, next deploy runs.
    let (_, next) = f.cook("v3", &[], json!({}));
    assert_eq!(next.status, Status::Success, "{step}: {}", next.message);
}

#[test]
fn crash_at_each_step_boundary_recovers() {
    for step in COOKING_STEPS {
        crash_and_recover(step.as_str(), false);
    }
}

#[test]
fn crash_during_the_rollback_recovers() {
    for step in UNDO_STEPS {
        crash_and_recover(&format!("rollback_{step}"), true);
    }
}

/// Releases v1 and v2 cooked in a staging fixture (kept alive by the caller).
fn two_releases() -> (Fixture, PathBuf, PathBuf) {
    let staging = Fixture::new();
    let (_, one) = staging.cook("v1", &[], json!({}));
    let (_, two) = staging.cook("v2", &[], json!({}));
    let (one, two) = (one.release.unwrap().path, two.release.unwrap().path);
    (staging, one, two)
}

/// A final deploy of release v2 over v1, in a child paused at `step`, SIGKILLed, recovered.
fn crash_final_and_recover(step: &str, failing: bool) {
    let (_staging, v1, v2) = two_releases();
    let f = Fixture::new();
    fs::create_dir_all(f.dir().join("data")).unwrap();
    let mut first = f.job(
        JobKind::Deploy,
        Mode::Final,
        ProjectPlan::default(),
        json!({}),
    );
    first.release = Some(v1);
    let out = f.lc.run(&first, &mut NullReporter);
    assert_eq!(out.status, Status::Success, "{}", out.message);
    fs::write(f.dir().join("data/db"), "v1-data").unwrap();
    let before = run_tree(&f);
    let mut states = vec![("upgrade", "scribble", "echo broken > data/db")];
    if failing {
        states.push(("upgrade", "migrate", "false"));
    }
    let mut job = f.job(JobKind::Deploy, Mode::Final, f.plans(&states), json!({}));
    job.release = Some(v2.clone());
    let (out, handed) = crash_at(&f, &job, step);
    if ["rotate", "notify"].contains(&step) {
        assert_eq!(out.status, Status::Success, "{step}: {}", out.message);
        assert_eq!(f.read("run/version"), "v2", "{step}");
        assert_eq!(
            handed.live.as_deref(),
            Some(job.deploy_id.as_str()),
            "{step}"
        );
    } else {
        assert_eq!(out.status, Status::RolledBack, "{step}: {}", out.message);
        assert_eq!(run_tree(&f), before, "{step}: run/ back on the old tree");
        assert_eq!(f.read("data/db"), "v1-data", "{step}: data/ intact");
        assert_eq!(
            handed.live.as_deref(),
            Some(first.deploy_id.as_str()),
            "{step}"
        );
    }
    assert!(
        handed.release.is_none(),
        "{step}: final mode uploads nothing"
    );
    let mut next = f.job(
        JobKind::Deploy,
        Mode::Final,
        ProjectPlan::default(),
        json!({}),
    );
    next.release = Some(v2);
    let out = f.lc.run(&next, &mut NullReporter);
    assert_eq!(out.status, Status::Success, "{step}: {}", out.message);
}

#[test]
fn crash_at_each_step_of_a_final_deploy_recovers() {
    for step in FINAL_STEPS {
        crash_final_and_recover(step.as_str(), false);
    }
}

#[test]
fn crash_during_the_undo_of_a_final_deploy_recovers() {
    for step in UNDO_STEPS {
        crash_final_and_recover(&format!("rollback_{step}"), true);
    }
}

/// `corpus rollback` from v2 to v1 in a child paused at `step`, SIGKILLed, recovered. With
/// `v1_cannot_start`, start.sls fails on v1 and the rollback is undone.
fn crash_rollback_and_recover(step: &str, v1_cannot_start: bool) {
    let f = Fixture::new();
    let (first, _) = f.cook("v1", &[], json!({}));
    let (second, _) = f.cook("v2", &[], json!({}));
    fs::write(f.dir().join("data/db"), "v2-data").unwrap();
    let plans = if v1_cannot_start {
        f.plans(&[("start", "start_app", "test \"$(cat run/version)\" != v1")])
    } else {
        ProjectPlan::default()
    };
    let job = f.job(
        JobKind::Rollback { to: None },
        Mode::Cooking,
        plans,
        json!({}),
    );
    let (out, handed) = crash_at(&f, &job, step);
    if v1_cannot_start {
        assert_eq!(out.status, Status::Failed, "{step}: {}", out.message);
        assert!(out.message.contains("undone"), "{step}: {}", out.message);
        assert_eq!(f.read("run/version"), "v2", "{step}");
        assert_eq!(f.read("data/db"), "v2-data", "{step}: data/ back");
        assert_eq!(
            handed.live.as_deref(),
            Some(second.deploy_id.as_str()),
            "{step}"
        );
    } else {
        // A requested rollback is finished after a crash, not undone.
        assert_eq!(out.status, Status::Success, "{step}: {}", out.message);
        assert_eq!(f.read("run/version"), "v1", "{step}");
        assert_eq!(f.read("data/seen"), "v1\n", "{step}: v1's data with it");
        assert_eq!(
            handed.live.as_deref(),
            Some(first.deploy_id.as_str()),
            "{step}"
        );
    }
    let st = f.lc.status(&f.env, PROJECT);
    assert_eq!(st.live, handed.live, "{step}");
    // Usable again: a deploy runs.
    let (_, next) = f.cook("v3", &[], json!({}));
    assert_eq!(next.status, Status::Success, "{step}: {}", next.message);
}

#[test]
fn crash_at_each_step_of_a_requested_rollback_recovers() {
    for step in ROLLBACK_STEPS {
        crash_rollback_and_recover(step.as_str(), false);
    }
}

#[test]
fn crash_during_the_undo_of_a_failed_requested_rollback_recovers() {
    for step in UNDO_STEPS {
        crash_rollback_and_recover(&format!("rollback_{step}"), true);
    }
}

// ---- timing (not asserted: see bench/rollback/README.md) ------------------------------------

/// Makes `n` files in a cooked deploy and times requested rollbacks over it: (fastest, median).
fn rollback_time(n: usize) -> (Duration, Duration) {
    let f = Fixture::new();
    let (_, o1) = f.cook("v1", &[], json!({"backup_data": false}));
    assert_eq!(o1.status, Status::Success);
    let (_, o2) = f.cook("v2", &[], json!({"backup_data": false}));
    assert_eq!(o2.status, Status::Success, "{}", o2.message);
    // The tree of v2 gets n more files (written straight into the live tree).
    let live = fs::canonicalize(f.dir().join("run")).unwrap();
    for i in 0..n {
        let d = live.join(format!("t/d{}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
    }
    // A deployed tree is on disk long before anyone rolls back (unpack ends with syncfs):
    // flush it so the timing does not include writing back the files just made.
    layout::sync_filesystem(&live).unwrap();
    // Back and forth between the two deployments; each switch moves the big tree.
    let mut times = Vec::new();
    for i in 0..6 {
        let (to, want) = if i % 2 == 0 {
            (&o1.deploy_id, "v1")
        } else {
            (&o2.deploy_id, "v2")
        };
        let kind = JobKind::Rollback {
            to: Some(to.clone()),
        };
        let data = json!({"backup_data": false});
        let job = f.job(kind, Mode::Cooking, ProjectPlan::default(), data);
        let t = Instant::now();
        let out = f.lc.run(&job, &mut NullReporter);
        times.push(t.elapsed());
        assert_eq!(out.status, Status::Success, "{}", out.message);
        assert_eq!(f.read("run/version"), want);
    }
    times.sort();
    (times[0], times[times.len() / 2])
}

#[test]
#[ignore = "benchmark: cargo test -p corpus-agent --release lifecycle::tests::bench_rollback -- --ignored --nocapture"]
fn bench_rollback() {
    for n in [1_000, 10_000, 100_000] {
        let (min, median) = rollback_time(n);
        println!(
            "rollback over {n:>7} files: min {:>7.2} ms, median {:>7.2} ms",
            min.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0
        );
    }
}

#[test]
#[ignore = "benchmark: cargo test -p corpus-agent --release lifecycle::tests::bench_final_deploy -- --ignored --nocapture"]
fn bench_final_deploy() {
    // 10,000 files, 100 MB (10 kB each, half random so zstd has real work).
    let staging = Fixture::new();
    let tree = staging.base.join("tree");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..10_000u64 {
        let d = tree.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        let mut body = vec![b'a'; 10_000];
        for b in body.iter_mut().take(5_000) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        fs::write(d.join(format!("f{i}")), body).unwrap();
    }
    let out = staging.base.join("release.tar.zst");
    let t = Instant::now();
    let rel = archive::bundle(&tree, &out, json!({"project": PROJECT})).unwrap();
    println!(
        "bundle: {:.0} ms, {} bytes",
        t.elapsed().as_secs_f64() * 1000.0,
        rel.size
    );
    let mut best_raw = f64::MAX;
    let mut best_deploy = f64::MAX;
    for _ in 0..3 {
        let raw = staging.base.join(format!("raw-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&raw).unwrap();
        let t = Instant::now();
        let st = std::process::Command::new("tar")
            .args(["-I", "zstd", "-xf"])
            .arg(&out)
            .arg("-C")
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        fs::rename(
            raw.join("tree"),
            staging.base.join(format!("live-{}", uuid::Uuid::new_v4())),
        )
        .unwrap();
        best_raw = best_raw.min(t.elapsed().as_secs_f64());

        let prod = Fixture::new();
        let mut job = prod.job(
            JobKind::Deploy,
            Mode::Final,
            ProjectPlan::default(),
            json!({}),
        );
        job.release = Some(out.clone());
        let t = Instant::now();
        let o = prod.lc.run(&job, &mut NullReporter);
        best_deploy = best_deploy.min(t.elapsed().as_secs_f64());
        assert_eq!(o.status, Status::Success, "{}", o.message);
    }
    println!(
        "raw tar -I zstd -x + rename: {:.0} ms; final deploy: {:.0} ms; ratio {:.2}",
        best_raw * 1000.0,
        best_deploy * 1000.0,
        best_deploy / best_raw
    );
}

// ---- injected service controller and file sources -------------------------------------------

mod injected {
    use std::sync::{Arc, Mutex};

    use corpus_pillar::TemplateContext;

    use super::*;
    use crate::state::FileSources;
    use crate::state::testing::{FakeServices, chunk};

    /// Records which phases asked for file sources, then serves the project tree as production.
    #[derive(Default)]
    struct RecordingSources {
        asked: Mutex<Vec<PathBuf>>,
    }

    impl PhaseFileSources for RecordingSources {
        fn for_phase(&self, file_root: &Path, context: TemplateContext) -> Box<dyn FileSources> {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push(file_root.to_path_buf());
            }
            ProjectTreeSources.for_phase(file_root, context)
        }
    }

    fn with_services(services: Arc<FakeServices>) -> Fixture {
        let mut f = Fixture::new();
        f.lc = Lifecycle::new(f.base.join("root")).with_services(services);
        f
    }

    fn service_plans(start: &[(&str, &str)]) -> ProjectPlan {
        let mut plans = ProjectPlan::default();
        plans.phases.insert(
            Phase::Stop.as_str().into(),
            Plan {
                chunks: vec![chunk(
                    "service.dead",
                    "web-down",
                    json!({"name": "shop-web"}),
                )],
            },
        );
        plans.phases.insert(
            Phase::Start.as_str().into(),
            Plan {
                chunks: start
                    .iter()
                    .map(|(id, unit)| chunk("service.running", id, json!({"name": unit})))
                    .collect(),
            },
        );
        plans
    }

    fn deploy(f: &Fixture, version: &str, plans: ProjectPlan) -> (Recorder, JobOutcome) {
        let mut job = f.job(JobKind::Deploy, Mode::Cooking, plans, json!({}));
        job.source = Some(f.source(version));
        let mut rec = Recorder::default();
        let out = f.lc.run(&job, &mut rec);
        (rec, out)
    }

    #[test]
    fn service_states_drive_the_injected_controller() {
        let services = Arc::new(FakeServices::default());
        let f = with_services(services.clone());
        let (rec, out) = deploy(&f, "v1", service_plans(&[("web-up", "shop-web")]));
        assert_eq!(out.status, Status::Success, "{}", out.message);
        assert_eq!(
            services.calls(),
            ["start shop-web"],
            "stop.sls found it stopped"
        );
        assert!(
            rec.events
                .iter()
                .any(|e| e.0 == "start" && e.1 == "web-up" && e.2 == StepStatus::Success)
        );

        let (_, out) = deploy(&f, "v2", service_plans(&[("web-up", "shop-web")]));
        assert_eq!(out.status, Status::Success, "{}", out.message);
        assert_eq!(
            services.calls(),
            ["start shop-web", "stop shop-web", "start shop-web"]
        );
    }

    #[test]
    fn a_service_that_fails_to_start_rolls_the_deploy_back() {
        // It fails once: the undo's start.sls brings it up (see the next test otherwise).
        let services = Arc::new(FakeServices {
            flaky: std::sync::Mutex::new(["shop-worker".to_string()].into()),
            ..FakeServices::default()
        });
        let f = with_services(services.clone());
        let (_, first) = deploy(&f, "v1", service_plans(&[("web-up", "shop-web")]));
        assert_eq!(first.status, Status::Success, "{}", first.message);

        let plans = service_plans(&[("web-up", "shop-web"), ("worker-up", "shop-worker")]);
        let (rec, out) = deploy(&f, "v2", plans);
        assert_eq!(out.status, Status::RolledBack, "{}", out.message);
        assert_eq!(out.failed_step, "start");
        assert_eq!(out.failed_state, "worker-up");
        assert!(out.message.contains("shop-worker"), "{}", out.message);
        assert!(rec.has("rollback", StepStatus::Running));
        // Forward: stop, start web, start worker (fails). Undo: stop web, then start.sls again.
        assert_eq!(
            services.calls(),
            [
                "start shop-web",
                "stop shop-web",
                "start shop-web",
                "start shop-worker",
                "stop shop-web",
                "start shop-web",
                "start shop-worker",
            ]
        );
        assert_eq!(f.read("run/version"), "", "cooking builds nothing here");
        assert_eq!(f.lc.live(&f.env, PROJECT), Some(first.deploy_id));
    }

    #[test]
    fn a_service_still_down_after_the_undo_fails_the_job_instead_of_rolled_back() {
        let services = Arc::new(FakeServices {
            broken: ["shop-worker".to_string()].into(),
            ..FakeServices::default()
        });
        let f = with_services(services.clone());
        let (_, first) = deploy(&f, "v1", service_plans(&[("web-up", "shop-web")]));
        assert_eq!(first.status, Status::Success, "{}", first.message);
        let plans = service_plans(&[("web-up", "shop-web"), ("worker-up", "shop-worker")]);
        let (rec, out) = deploy(&f, "v2", plans);
        assert_eq!(out.status, Status::Failed, "{}", out.message);
        assert_eq!(out.failed_step, "start");
        assert!(
            out.message.contains("service may be down"),
            "{}",
            out.message
        );
        assert!(rec.has("rollback", StepStatus::Failed));
        assert_eq!(f.lc.live(&f.env, PROJECT), Some(first.deploy_id));
    }

    #[test]
    fn phases_get_their_file_sources_from_the_injected_factory_with_tpldir() {
        let sources = Arc::new(RecordingSources::default());
        let mut f = Fixture::new();
        f.lc = Lifecycle::new(f.base.join("root"))
            .with_services(Arc::new(FakeServices::default()))
            .with_file_sources(sources.clone());
        let conf = f.dir().join("data/app.conf");
        let mut plans = ProjectPlan::default();
        plans.phases.insert(
            Phase::Configure.as_str().into(),
            Plan {
                chunks: vec![chunk(
                    "file.managed",
                    "conf",
                    json!({
                        "name": conf.display().to_string(),
                        "source": "salt://.salt/files/app.conf",
                        "template": "jinja",
                    }),
                )],
            },
        );
        let mut job = f.job(JobKind::Deploy, Mode::Cooking, plans, json!({}));
        let src = f.base.join("src-tpl");
        fs::create_dir_all(src.join(".salt/files")).unwrap();
        fs::write(
            src.join(".salt/files/app.conf"),
            "dir={{ tpldir }} secret={{ pillar.secret }} env={{ common.env }}",
        )
        .unwrap();
        let tar_path = f.base.join("src-tpl.tar");
        let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
        b.append_dir_all(".", &src).unwrap();
        b.finish().unwrap();
        job.source = Some(tar_path);
        let out = f.lc.run(&job, &mut Recorder::default());
        assert_eq!(out.status, Status::Success, "{}", out.message);
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            "dir=.salt/files secret=s3cr3t env=staging"
        );
        let asked = sources.asked.lock().map(|a| a.clone()).unwrap_or_default();
        assert_eq!(asked, [f.dir().join("project")]);
    }

    #[test]
    fn a_step_that_cannot_write_names_the_path() {
        let f = Fixture::new();
        // archives/ is a file: pre_install cannot create the deploy's archive under it.
        let job_for_layout = f.job(
            JobKind::Init,
            Mode::Cooking,
            ProjectPlan::default(),
            json!({}),
        );
        assert_eq!(
            f.lc.run(&job_for_layout, &mut NullReporter).status,
            Status::Success
        );
        fs::remove_dir_all(f.dir().join("archives")).unwrap();
        fs::write(f.dir().join("archives"), "not a directory").unwrap();
        let (_, out) = f.cook("v1", &[], json!({}));
        assert_eq!(out.failed_step, "pre_install", "{}", out.message);
        let archives = f.dir().join("archives");
        let first = out
            .message
            .split("; rolled back")
            .next()
            .unwrap_or_default();
        assert!(
            first.contains(&format!("cannot create {}", archives.display())),
            "the step's own error names the path: {}",
            out.message
        );
    }

    #[test]
    fn a_misspelt_setting_is_refused_before_anything_is_touched() {
        let f = Fixture::new();
        let (_, out) = f.cook("v1", &[], json!({"healthcheck": {"comand": "true"}}));
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.failed_step, "validate");
        assert!(out.message.contains("`healthcheck`"), "{}", out.message);
        assert!(!f.dir().exists(), "nothing was created");
    }
}
