//! Reliability of the master end to end (issue 9): pushes it must refuse rather than deploy
//! half, and the retention purge running in the real process.

use anyhow::Context;
use corpus_tests::{Agent, Cluster, Master, client_config, sample_project, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_push_with_a_non_utf8_sls_is_refused_naming_the_file() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    // Latin-1, as an old editor saves it: the build phase would be silently skipped.
    std::fs::write(
        source.join(".salt/build.sls"),
        b"caf\xe9:\n  cmd.run:\n    - name: echo built\n",
    )?;
    corpus_tests::git(&source, &["commit", "-q", "-am", "latin-1 build"])?;
    let staging = cluster.init_env("staging")?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(!out.status.success(), "the push was accepted");
    assert!(
        stderr(&out).contains(".salt/build.sls is not UTF-8"),
        "{}",
        stderr(&out)
    );
    assert!(
        !cluster.project_dir(&staging, "app").exists(),
        "a refused push touched the agent"
    );
    Ok(())
}

#[test]
fn the_retention_purge_removes_old_jobs_but_keeps_the_live_deployments() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let config = root.path().join("master.yaml");
    // Everything older than now is old, one job kept per project, a purge every second.
    std::fs::write(
        &config,
        "retention:\n  jobs_for: 0s\n  jobs_per_project: 1\n  purge_every: 1s\n",
    )?;
    let config_arg = config.display().to_string();
    let master = Master::start_with(root.path(), &["--config", &config_arg])?;
    master.add_user("dev@example.com", "a-long-password")?;
    let token = master.token("10m")?;
    let agent = Agent::spawn(
        &master.url(),
        &master.ca(),
        root.path(),
        "node1",
        Some(&token),
        &[],
    )?;
    master.wait_agent("node1", "accepted", true)?;
    let client = client_config(
        root.path(),
        "local",
        &master.url(),
        "dev@example.com",
        "a-long-password",
        &master.ca(),
    )?;
    let cluster = Cluster {
        root,
        master,
        agent,
        config: client,
    };

    let source = cluster.root.path().join("src");
    let dev = cluster.init_env("dev")?;
    for version in ["v1", "v2", "v3"] {
        sample_project(&source, version, &[])?;
        let out = cluster.push(&dev, "app", &source, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let newest = cluster
        .master
        .console_json(&["jobs", "list", "--env", &dev])?
        .as_array()
        .and_then(|jobs| jobs.last().cloned())
        .context("no job")?;
    wait_until("the purge of the two older deploys", || {
        let jobs = cluster
            .master
            .console_json(&["jobs", "list", "--env", &dev])?;
        Ok(jobs.as_array().map(Vec::len) == Some(1))
    })?;
    let left = cluster
        .master
        .console_json(&["jobs", "list", "--env", &dev])?;
    assert_eq!(
        left[0]["id"], newest["id"],
        "the newest deployment was purged"
    );
    // What remains still works: status lists it, and the project deploys again.
    let status = cluster.status(&dev, "app")?;
    assert!(
        status
            .to_string()
            .contains(newest["deploy_id"].as_str().unwrap_or("-"))
    );
    let out = cluster.push(&dev, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn a_client_too_slow_for_a_large_plan_still_gets_the_result_and_what_it_missed()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    // Over a thousand states, each with 16 KiB of output in its changes: more event bytes
    // than the relay queue and the HTTP/2 and socket buffers between the master and a client
    // that reads none of them.
    let build = "{% for i in range(1200) %}out_{{ i }}:\n  cmd.run:\n    - name: yes x | head -c 16384\n{% endfor %}\n";
    sample_project(&source, "v1", &[("build.sls", build)])?;
    let dev = cluster.init_env("dev")?;
    let output = cluster.root.path().join("push.jsonl");
    let log = cluster.root.path().join("push.log");
    let child = std::process::Command::new(corpus_tests::bin("corpus"))
        .args(["push", "local", &dev, "app", "--json", "--path"])
        .arg(&source)
        .env("CORPUS_CONFIG", &cluster.config)
        .env(
            "CORPUS_CACHE_DIR",
            corpus_tests::session_cache_dir(&cluster.config),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&output)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut push = corpus_tests::Proc { child, log };
    let job_state = || -> anyhow::Result<Option<String>> {
        let jobs = cluster
            .master
            .console_json(&["jobs", "list", "--env", &dev])?;
        Ok(jobs
            .as_array()
            .and_then(|j| j.last())
            .and_then(|j| j["status"].as_str())
            .map(str::to_owned))
    };
    wait_until("the push's job to start", || Ok(job_state()?.is_some()))?;
    // The client stops reading while the job runs to its end.
    push.signal(libc::SIGSTOP);
    let finished = wait_until("the job to finish", || {
        Ok(job_state()?.is_some_and(|s| s != "running"))
    });
    push.signal(libc::SIGCONT);
    finished?;
    let jobs = cluster
        .master
        .console_json(&["jobs", "list", "--env", &dev])?;
    assert_eq!(
        job_state()?.as_deref(),
        Some("success"),
        "{jobs}\n{}",
        cluster.agent.proc.log_text()
    );

    let mut status = None;
    wait_until("the push to exit", || {
        status = push.child.try_wait()?;
        Ok(status.is_some())
    })?;
    let text = std::fs::read_to_string(&output)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = lines.last().context("no output")?;
    assert_eq!(last["event"], "finished", "{}", push.log_text());
    assert_eq!(last["status"], "success");
    assert!(status.is_some_and(|s| s.success()), "{}", push.log_text());
    let missed = lines
        .iter()
        .find(|l| l["event"] == "missed")
        .with_context(|| format!("no notice of missed updates among {} lines", lines.len()))?;
    assert!(missed["count"].as_u64().is_some_and(|n| n > 0));
    assert!(
        missed["hint"]
            .as_str()
            .is_some_and(|h| h.contains("jobs show")),
        "{missed}"
    );
    Ok(())
}
