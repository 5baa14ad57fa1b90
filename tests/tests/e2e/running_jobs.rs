//! End-to-end: `corpus status` lists the running jobs of every kind (rollback and destroy, not
//! only deploys), and a client following a job gives up on a frozen (SIGSTOPped) master at its
//! idle deadline, saying how to resume, while the master's keepalives carry a quiet job.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corpus_tests::{Cluster, bin, sample_project, wait_until};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `corpus ARGS` with extra environment variables, killed (and the test failed) when it has
/// not ended within `limit`: a client must never wait forever.
fn corpus_within(
    cluster: &Cluster,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> anyhow::Result<(Output, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(bin("corpus"))
        .args(args)
        .env("CORPUS_CONFIG", &cluster.config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    while child.try_wait()?.is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "corpus {args:?} still waiting after {limit:?}: {}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child.wait_with_output()?, started.elapsed()))
}

/// The running jobs `corpus status --json` lists for the environment.
fn running_jobs(cluster: &Cluster, env: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = cluster.corpus(&["status", "local", env, "--json"])?;
    anyhow::ensure!(out.status.success(), "status failed: {}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["running_jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Spawns `corpus ARGS` in the background, its output kept for the end.
fn spawn(
    cluster: &Cluster,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(bin("corpus"))
        .args(args)
        .env("CORPUS_CONFIG", &cluster.config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits for `marker` to appear, then removes it.
fn wait_marker(marker: &Path) -> anyhow::Result<()> {
    wait_until(&format!("{} to appear", marker.display()), || {
        Ok(marker.exists())
    })?;
    std::fs::remove_file(marker)?;
    Ok(())
}

#[test]
fn status_lists_a_running_rollback_and_destroy_with_kind_user_and_start() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    // Every stop (of a push, a rollback, a destroy) leaves a marker and lasts 8 s.
    let stopping = cluster.project_dir(&env, "app").join("data/stopping");
    let stop = format!(
        "stop_app:\n  cmd.run:\n    - name: touch {} && sleep 8\n",
        stopping.display()
    );
    for version in ["v1", "v2"] {
        sample_project(&source, version, &[("stop.sls", &stop)])?;
        let out = cluster.push(&env, "app", &source, &[])?;
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(running_jobs(&cluster, &env)?.is_empty());

    let before = now_unix();
    // A whole-environment destroy stops each project with its latest plans.
    for (kind, target, args) in [
        (
            "rollback",
            "app",
            vec!["rollback", "local", env.as_str(), "app"],
        ),
        (
            "destroy",
            "the environment",
            vec!["destroy", "local", env.as_str()],
        ),
    ] {
        // A rollback may stop more than once (the current deployment, then its undo plan).
        let _ = std::fs::remove_file(&stopping);
        let job = spawn(&cluster, &args, &[])?;
        wait_marker(&stopping)?;
        let running = running_jobs(&cluster, &env)?;
        assert_eq!(running.len(), 1, "{kind}: {running:?}");
        let shown = &running[0];
        assert_eq!(shown["kind"], kind, "{shown}");
        let project = if kind == "rollback" { "app" } else { "" };
        assert_eq!(shown["project"], project, "{shown}");
        assert_eq!(shown["user"], "dev@example.com", "{shown}");
        assert!(shown["started"].as_i64().unwrap_or(0) >= before, "{shown}");
        let job_id = shown["job_id"].as_str().unwrap_or_default().to_owned();
        assert!(!job_id.is_empty(), "{shown}");
        // The text says the same, and how to follow it.
        let out = cluster.corpus(&["status", "local", &env])?;
        let said = text(&out);
        assert!(
            said.contains(&format!(
                "running: job {job_id} ({kind} of {target} by dev@example.com, started"
            )),
            "{said}"
        );
        assert!(
            said.contains(&format!("corpus follow local {env} {job_id}")),
            "{said}"
        );
        let out = job.wait_with_output()?;
        assert!(out.status.success(), "{kind}: {}", text(&out));
        if kind == "rollback" {
            assert!(running_jobs(&cluster, &env)?.is_empty(), "{kind} ended");
        }
    }
    // The environment is gone with its jobs' index: status says so.
    let out = cluster.corpus(&["status", "local", &env])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    Ok(())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[test]
fn a_frozen_master_ends_push_status_and_follow_at_their_deadlines() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    let started = cluster.project_dir(&env, "app").join("data/started");
    let quiet_build = |seconds: u32| {
        format!(
            "quiet:\n  cmd.run:\n    - name: touch {} && sleep {seconds}\ncopy_app:\n  cmd.run:\n    - name: cp -a {{{{ common.project_dir }}}}/app/. {{{{ common.run_dir }}}}/\n",
            started.display()
        )
    };
    // A build silent for longer than the idle deadline: the master's keepalives carry it.
    sample_project(&source, "v1", &[("build.sls", &quiet_build(16))])?;
    let path = source.display().to_string();
    let push = ["push", "local", &env, "app", "--path", &path];
    let (out, _) = corpus_within(
        &cluster,
        &push,
        &[("CORPUS_IDLE_SECONDS", "12")],
        Duration::from_secs(90),
    )?;
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(&started)?;

    // Frozen under a running job: the push gives up at its idle deadline, naming it and the
    // command that resumes.
    sample_project(&source, "v2", &[("build.sls", &quiet_build(10))])?;
    let client = spawn(&cluster, &push, &[("CORPUS_IDLE_SECONDS", "12")])?;
    wait_until("the build to start", || Ok(started.exists()))?;
    cluster.master.proc.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let resume = thaw_on_drop(&cluster);
    let out = {
        let mut client = client;
        loop {
            if client.try_wait()?.is_some() {
                break client.wait_with_output()?;
            }
            if frozen_at.elapsed() > Duration::from_secs(60) {
                let _ = client.kill();
                anyhow::bail!("the push still waits on a frozen master");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("sent nothing for 12 s"), "{said}");
    assert!(said.contains("--idle-seconds"), "{said}");
    let hint = format!("corpus follow local {env} ");
    let job_id = said
        .split(&hint)
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_default()
        .to_owned();
    assert!(uuid_like(&job_id), "{said}");

    // Commands without a job stream: the connect and answer deadline.
    for args in [
        vec!["status", "local", env.as_str()],
        vec!["follow", "local", env.as_str(), job_id.as_str()],
    ] {
        let (out, took) = corpus_within(
            &cluster,
            &args,
            &[("CORPUS_DEADLINE_SECONDS", "3")],
            Duration::from_secs(30),
        )?;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("did not answer within 3 s"), "{said}");
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }

    // Thawed: the job was never lost; following it by the id the push printed shows its end.
    drop(resume);
    let (out, _) = corpus_within(
        &cluster,
        &["follow", "local", &env, &job_id],
        &[],
        Duration::from_secs(90),
    )?;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("succeeded"), "{said}");
    Ok(())
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Sends SIGCONT to the master when dropped, so a failing test does not leave it frozen.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the test's own child's pid.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn thaw_on_drop(cluster: &Cluster) -> Thaw {
    Thaw(cluster.master.proc.child.id() as i32)
}
