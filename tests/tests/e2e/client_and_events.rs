//! End-to-end: what survives a master killed or frozen under a job (events, the client's
//! deadlines) and what a user sees of a failure (exit code, stderr, the agent down).

use std::process::Command;

use corpus_tests::{Cluster, bin, sample_project, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The job id of the project's only deployment, once it is no longer running.
fn finished_job(cluster: &Cluster, env: &str) -> anyhow::Result<String> {
    let mut job = String::new();
    wait_until("the job to be recorded as finished", || {
        let status = cluster.status(env, "app")?;
        let deployments = status["deployments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(match deployments.last() {
            Some(d) if d["result"] != "running" => {
                job = d["job_id"].as_str().unwrap_or_default().to_owned();
                true
            }
            _ => false,
        })
    })?;
    Ok(job)
}

#[test]
fn a_master_killed_as_the_agent_finishes_gets_every_event_afterwards() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    // Inside the environment: a confined build can write nowhere else.
    let started = cluster.project_dir(&env, "app").join("data/started");
    let mut build = format!(
        "first:\n  cmd.run:\n    - name: touch {} && sleep 1\n",
        started.display()
    );
    for n in 0..12 {
        build.push_str(&format!("step_{n}:\n  cmd.run:\n    - name: echo {n}\n"));
    }
    build.push_str("copy_app:\n  cmd.run:\n    - name: cp -a {{ common.project_dir }}/app/. {{ common.run_dir }}/\n");
    sample_project(&source, "v1", &[("build.sls", &build)])?;
    let path = source.display().to_string();
    let _push = cluster.corpus_spawn(&["push", "local", &env, "app", "--path", &path])?;
    wait_until("the build to start", || Ok(started.exists()))?;
    // Frozen, the master takes in nothing more; killed, it loses what its socket held.
    cluster.master.proc.signal(libc::SIGSTOP);
    let results = cluster.agent.state_dir.join("results");
    let mut kept_events = 0;
    wait_until("the agent to finish and keep its result", || {
        let Ok(entries) = std::fs::read_dir(&results) else {
            return Ok(false);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(job) = name.strip_suffix(".json") {
                let events = std::fs::read_to_string(results.join(format!("{job}.events")))?;
                kept_events = events.lines().count();
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    assert!(kept_events > 14, "{kept_events} events kept");
    let (addr, data_dir) = (cluster.master.addr.clone(), cluster.master.data_dir.clone());
    cluster.master.proc.kill();
    cluster.master = corpus_tests::Master::serve(&data_dir, &addr)?;
    let job = finished_job(&cluster, &env)?;
    let mut sequences = Vec::new();
    wait_until("every event to reach the master", || {
        let shown = cluster.master.console_json(&["jobs", "show", &job])?;
        sequences = shown["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["sequence"].as_u64())
            .collect();
        Ok(sequences.len() == kept_events)
    })?;
    assert_eq!(sequences, (1..=kept_events as u64).collect::<Vec<_>>());
    wait_until("the agent to forget the acknowledged job", || {
        Ok(std::fs::read_dir(&results)?.next().is_none())
    })?;
    Ok(())
}

#[test]
fn a_frozen_master_fails_the_client_within_its_deadline_saying_so() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    cluster.master.proc.signal(libc::SIGSTOP);
    let started = std::time::Instant::now();
    let out = Command::new(bin("corpus"))
        .args(["status", "local", &env])
        .env("CORPUS_CONFIG", &cluster.config)
        .env(
            "CORPUS_CACHE_DIR",
            corpus_tests::session_cache_dir(&cluster.config),
        )
        .env("CORPUS_DEADLINE_SECONDS", "2")
        .output()?;
    cluster.master.proc.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        stderr(&out).contains("did not answer within 2 s"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_failed_command_shows_its_exit_code_and_stderr_in_push_and_jobs_show() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    let build = "broken:\n  cmd.run:\n    - name: echo the-cause-is-here >&2; exit 7\n";
    sample_project(&source, "v1", &[("build.sls", build)])?;
    std::fs::write(source.join("uncommitted.txt"), "not pushed")?;
    let out = cluster.push(&env, "app", &source, &[])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("exit code 7"), "{shown}");
    assert!(shown.contains("the-cause-is-here"), "{shown}");
    assert!(
        stderr(&out).contains("warning: 1 file in "),
        "{}",
        stderr(&out)
    );
    let job = finished_job(&cluster, &env)?;
    let out = cluster.master.console(&["jobs", "show", &job], None)?;
    let shown = stdout(&out);
    assert!(shown.contains("exit code 7"), "{shown}");
    assert!(shown.contains("the-cause-is-here"), "{shown}");
    Ok(())
}

#[test]
fn an_agent_down_is_named_as_such_not_as_the_master_unreachable() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    cluster.agent.proc.kill();
    cluster.master.wait_agent("node1", "accepted", false)?;
    let out = cluster.push(&env, "app", &source, &[])?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("\"node1\""), "{text}");
    assert!(text.contains("is not connected"), "{text}");
    assert!(!text.contains("the master at"), "{text}");
    Ok(())
}

#[test]
fn a_push_reattaches_after_a_master_restart_and_follow_replays_the_job() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    // Inside the environment: a confined build can write nowhere else.
    let started = cluster.project_dir(&env, "app").join("data/started");
    let build = format!(
        "slow:\n  cmd.run:\n    - name: touch {} && sleep 3\ncopy_app:\n  cmd.run:\n    - name: cp -a {{{{ common.project_dir }}}}/app/. {{{{ common.run_dir }}}}/\n",
        started.display()
    );
    sample_project(&source, "v1", &[("build.sls", &build)])?;
    let push = Command::new(bin("corpus"))
        .args(["push", "local", &env, "app", "--path"])
        .arg(&source)
        .env("CORPUS_CONFIG", &cluster.config)
        .env(
            "CORPUS_CACHE_DIR",
            corpus_tests::session_cache_dir(&cluster.config),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the build to start", || Ok(started.exists()))?;
    let out = cluster.corpus(&["status", "local", &env, "app"])?;
    assert!(
        stdout(&out).contains("running: job "),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let (addr, data_dir) = (cluster.master.addr.clone(), cluster.master.data_dir.clone());
    cluster.master.proc.kill();
    cluster.master = corpus_tests::Master::serve(&data_dir, &addr)?;
    let out = push.wait_with_output()?;
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", stderr(&out));
    assert!(shown.contains("reattaching to job"), "{shown}");
    assert!(shown.contains("succeeded"), "{shown}");
    // Each step once, though the stream was replayed from the master's store.
    assert_eq!(shown.matches("copy_app").count(), 1, "{shown}");

    let out = cluster.corpus(&["follow", "local", &env, "app"])?;
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", stderr(&out));
    assert!(shown.contains("copy_app"), "{shown}");
    assert!(shown.contains("succeeded"), "{shown}");
    Ok(())
}

#[test]
fn ctrl_c_during_a_push_says_the_job_goes_on_and_leaves_no_tarball() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    // Inside the environment: a confined build can write nowhere else.
    let started = cluster.project_dir(&env, "app").join("data/started");
    let build = format!(
        "slow:\n  cmd.run:\n    - name: touch {} && sleep 2\ncopy_app:\n  cmd.run:\n    - name: cp -a {{{{ common.project_dir }}}}/app/. {{{{ common.run_dir }}}}/\n",
        started.display()
    );
    sample_project(&source, "v1", &[("build.sls", &build)])?;
    let tmp = cluster.root.path().join("client-tmp");
    std::fs::create_dir_all(&tmp)?;
    let push = Command::new(bin("corpus"))
        .args(["push", "local", &env, "app", "--path"])
        .arg(&source)
        .env("CORPUS_CONFIG", &cluster.config)
        .env(
            "CORPUS_CACHE_DIR",
            corpus_tests::session_cache_dir(&cluster.config),
        )
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the build to start", || Ok(started.exists()))?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(push.id() as i32, libc::SIGINT) };
    let out = push.wait_with_output()?;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("goes on without this client"), "{text}");
    assert!(
        text.contains(&format!("corpus follow local {env} ")),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(&tmp)?.count(), 0, "no tarball is left");
    wait_until("the job to succeed without its client", || {
        let status = cluster.status(&env, "app")?;
        Ok(status["deployments"][0]["result"] == "success")
    })?;
    Ok(())
}

#[test]
fn a_rollback_names_the_deployment_it_returned_to_as_status_shows_it() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    for version in ["v1", "v2"] {
        sample_project(&source, version, &[])?;
        let out = cluster.push(&env, "app", &source, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let first = cluster.status(&env, "app")?["deployments"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| d["id"].as_str())
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(!first.is_empty(), "no first deployment in status");

    let out = cluster.corpus(&["rollback", "local", &env, "app"])?;
    let shown = stdout(&out);
    assert!(out.status.success(), "{shown}\n{}", stderr(&out));
    // The id printed is the deployment now live, as `corpus status` names it: the one
    // returned to, not the rollback job's own.
    assert!(
        shown.contains(&format!("(deployment {first} is live)")),
        "{shown}"
    );
    let status = cluster.status(&env, "app")?;
    let live: Vec<&str> = status["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["live"] == true)
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(live, vec![first.as_str()], "{status}");
    Ok(())
}

#[test]
fn a_flat_makina_projects_pillar_key_sets_the_project_settings() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    let build = "greet:\n  cmd.run:\n    - name: echo '{{ common.data.greeting }}' > {{ common.run_dir }}/greeting.txt\n";
    sample_project(
        &source,
        "v1",
        &[
            ("build.sls", build),
            ("PILLAR.sample", "greeting: from the sample\n"),
        ],
    )?;
    // As README and makina-states write it: one key with a dot, not a nested mapping.
    let pillar = cluster.root.path().join("pillar.sls");
    std::fs::write(
        &pillar,
        "makina-projects.app:\n  greeting: from the flat key\n",
    )?;
    let pillar_arg = pillar.display().to_string();
    let out = cluster.push(&env, "app", &source, &["--pillar", &pillar_arg])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let run = cluster.project_dir(&env, "app").join("run");
    assert_eq!(
        std::fs::read_to_string(run.join("greeting.txt"))?,
        "from the flat key\n"
    );
    Ok(())
}
