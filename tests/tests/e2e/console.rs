//! The operator console beyond agents: environments (list, share, default settings), jobs (list,
//! show, fail) and the pushed pillar, against a real cluster.

use anyhow::Context;
use corpus_tests::{Cluster, client_config, corpus, sample_project, wait_until};

#[test]
fn operators_share_environments_set_defaults_and_inspect_jobs_and_pillar() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let master = &cluster.master;
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
    let staging = cluster.init_env("staging")?;

    let envs = master.console_json(&["envs", "list"])?;
    assert_eq!(envs[0]["uuid"], staging.as_str());
    assert_eq!(envs[0]["owner"], "dev@example.com");

    // Environment defaults sit between PILLAR.sample and the pushed pillar.
    let out = master.console(
        &["envs", "defaults", &staging],
        Some("greeting: from the environment\n"),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = master.console(
        &["envs", "defaults", &staging],
        Some("- not\n- a mapping\n"),
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mapping"));
    let pillar = cluster.root.path().join("pillar.sls");
    std::fs::write(&pillar, "port: 8080\n")?;
    let pillar_arg = pillar.display().to_string();
    let out = cluster.push(&staging, "app", &source, &["--pillar", &pillar_arg])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = cluster.project_dir(&staging, "app").join("run");
    assert_eq!(
        std::fs::read_to_string(run.join("greeting.txt"))?,
        "from the environment\n"
    );

    // The pushed pillar, as the operator can read it back.
    let shown = master.console_json(&["pillar", "show", &staging, "app"])?;
    assert_eq!(shown["files"]["init.sls"], "port: 8080\n");

    // Jobs and their events.
    let jobs = master.console_json(&["jobs", "list", "--env", &staging])?;
    let job = jobs
        .as_array()
        .and_then(|j| j.last())
        .context("no job")?
        .clone();
    assert_eq!(job["status"], "success");
    let id = job["id"].as_str().context("job id")?.to_owned();
    let detail = master.console_json(&["jobs", "show", &id])?;
    let steps: Vec<_> = detail["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert!(
        steps.contains(&"build") && steps.contains(&"bundle"),
        "{steps:?}"
    );
    let out = master.console(&["jobs", "fail", &id], None)?;
    assert!(!out.status.success(), "a finished job cannot be failed");

    // Another user sees the environment only once it is shared.
    master.add_user("ops@example.com", "another-long-password")?;
    let other = client_config(
        cluster.root.path(),
        "local",
        &master.url(),
        "ops@example.com",
        "another-long-password",
        &master.ca(),
    )?;
    let out = corpus(&other, &["status", "local", &staging])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another user"));
    let out = master.console(&["envs", "grant", &staging, "ops@example.com"], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = corpus(&other, &["status", "local", &staging])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn an_operator_fails_a_job_whose_agent_is_gone_and_the_project_is_free_again() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start_with_agent_env(&[("CORPUS_TEST_PAUSE_AT", "build")])?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    let staging = cluster.init_env("staging")?;
    let path = source.display().to_string();
    let mut push = cluster.corpus_spawn(&["push", "local", &staging, "app", "--path", &path])?;
    let marker = cluster.project_dir(&staging, "app").join(".paused-build");
    wait_until("the deploy to hold the project", || Ok(marker.exists()))?;
    cluster.agent.proc.kill();
    push.kill();

    let jobs = cluster.master.console_json(&["jobs", "list"])?;
    let id = jobs[0]["id"].as_str().context("job id")?.to_owned();
    assert_eq!(jobs[0]["status"], "running");
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"));

    let failed = cluster.master.console_json(&["jobs", "fail", &id])?;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failed_step"], "operator");
    // The master no longer holds the project: with the agent back, a push goes through.
    cluster.restart_agent(&[])?;
    cluster.master.wait_agent("node1", "accepted", true)?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
