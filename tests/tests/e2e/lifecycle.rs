//! The project lifecycle end to end: real master, agent and `corpus` processes, a real git
//! project, the editable / cooking / final modes, rollbacks, archives, locks and crashes.

use std::path::Path;

use anyhow::Context;
use corpus_tests::{Cluster, sample_project, snapshot, wait_until};
use serde_json::Value;

const FAILING_BUILD: &str = "corrupt_data:\n  cmd.run:\n    - name: echo corrupted > {{ common.data_dir }}/state.db && echo partial > {{ common.run_dir }}/partial.html\nfail_here:\n  cmd.run:\n    - name: exit 3\n    - require:\n      - cmd: corrupt_data\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn deployments(status: &Value) -> Vec<Value> {
    status["deployments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn live(status: &Value) -> Option<String> {
    deployments(status)
        .into_iter()
        .find(|d| d["live"] == true)
        .and_then(|d| d["id"].as_str().map(str::to_owned))
}

/// A staging environment with one successful cooking deploy of `app` (version v1).
fn cooked(cluster: &Cluster, source: &Path) -> anyhow::Result<String> {
    sample_project(source, "v1", &[])?;
    let staging = cluster.init_env("staging")?;
    let out = cluster.push(&staging, "app", source, &[])?;
    anyhow::ensure!(
        out.status.success(),
        "staging push failed: {}",
        stderr(&out)
    );
    Ok(staging)
}

#[test]
fn staging_push_builds_into_run_and_records_a_release_then_prod_deploys_it_without_building()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;

    // 1. staging: build output in run/, a release recorded on the master.
    let dir = cluster.project_dir(&staging, "app");
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v1\n"
    );
    let status = cluster.status(&staging, "app")?;
    assert_eq!(deployments(&status)[0]["result"], "success");
    assert!(live(&status).is_some());
    let releases = status["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(releases.len(), 1, "{status}");

    // 2. prod: the release is deployed, build.sls never runs, data/ is untouched.
    let prod = cluster.init_env("prod")?;
    let init = cluster.corpus(&["init", "local", &prod, "app"])?;
    assert!(init.status.success(), "{}", stderr(&init));
    let prod_dir = cluster.project_dir(&prod, "app");
    std::fs::write(prod_dir.join("data/state.db"), "precious")?;
    let out = cluster.push(&prod, "app", &source, &[])?;
    assert!(out.status.success(), "prod push failed: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(prod_dir.join("run/index.html"))?,
        "hello v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(prod_dir.join("data/state.db"))?,
        "precious"
    );
    assert!(
        !prod_dir.join("builds.log").exists(),
        "build.sls ran in final mode"
    );
    let events = std::fs::read_to_string(prod_dir.join("events.log"))?;
    assert!(events.contains("start"), "{events}");
    Ok(())
}

#[test]
fn a_failing_build_in_staging_rolls_back_run_and_data_and_names_the_step() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    let dir = cluster.project_dir(&staging, "app");
    std::fs::write(dir.join("data/state.db"), "good data")?;
    let run_before = snapshot(&dir.join("run"))?;
    let live_before = live(&cluster.status(&staging, "app")?);

    sample_project(&source, "v2", &[("build.sls", FAILING_BUILD)])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rolled-back deploy exits 1: {}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rolled back") && text.contains("fail_here"),
        "{text}"
    );

    assert_eq!(snapshot(&dir.join("run"))?, run_before, "run/ changed");
    assert_eq!(
        std::fs::read_to_string(dir.join("data/state.db"))?,
        "good data"
    );
    let events = std::fs::read_to_string(dir.join("events.log"))?;
    assert!(
        events.contains("restore"),
        "restore.sls did not run: {events}"
    );
    let status = cluster.status(&staging, "app")?;
    let last = deployments(&status)
        .last()
        .cloned()
        .context("no deployment")?;
    assert_eq!(last["result"], "rolled_back");
    assert_eq!(last["failed_step"], "build");
    assert_eq!(last["failed_state"], "fail_here");
    assert_eq!(live(&status), live_before);
    Ok(())
}

#[test]
fn a_failing_health_check_in_prod_rolls_back() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let _staging = cooked(&cluster, &source)?;
    let prod = cluster.init_env("prod")?;
    let out = cluster.push(&prod, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = cluster.project_dir(&prod, "app");
    std::fs::write(dir.join("data/state.db"), "good data")?;
    let run_before = snapshot(&dir.join("run"))?;

    let pillar = cluster.root.path().join("unhealthy.sls");
    std::fs::write(
        &pillar,
        "healthcheck:\n  command: \"false\"\n  retries: 2\n  interval: 0\n",
    )?;
    let pillar_arg = pillar.display().to_string();
    let out = cluster.push(&prod, "app", &source, &["--pillar", &pillar_arg])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(snapshot(&dir.join("run"))?, run_before);
    assert_eq!(
        std::fs::read_to_string(dir.join("data/state.db"))?,
        "good data"
    );
    let status = cluster.status(&prod, "app")?;
    let last = deployments(&status)
        .last()
        .cloned()
        .context("no deployment")?;
    assert_eq!(last["result"], "rolled_back");
    assert_eq!(last["failed_step"], "healthcheck");
    Ok(())
}

#[test]
fn rollback_returns_to_the_previous_deployment_then_to_an_older_one() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    for version in ["v2", "v3"] {
        sample_project(&source, version, &[])?;
        let out = cluster.push(&staging, "app", &source, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let dir = cluster.project_dir(&staging, "app");
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v3\n"
    );
    let ids: Vec<String> = deployments(&cluster.status(&staging, "app")?)
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 3);

    let out = cluster.corpus(&["rollback", "local", &staging, "app"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v2\n"
    );
    assert_eq!(
        live(&cluster.status(&staging, "app")?).as_deref(),
        Some(ids[1].as_str())
    );

    let out = cluster.corpus(&["rollback", "local", &staging, "app", "--to", &ids[0]])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v1\n"
    );
    assert_eq!(
        live(&cluster.status(&staging, "app")?).as_deref(),
        Some(ids[0].as_str())
    );

    // And forward again, to the newest deployment rolled away from.
    let out = cluster.corpus(&["rollback", "local", &staging, "app", "--to", &ids[2]])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v3\n"
    );
    assert_eq!(
        live(&cluster.status(&staging, "app")?).as_deref(),
        Some(ids[2].as_str())
    );
    Ok(())
}

#[test]
fn archive_rotation_keeps_keep_archives_and_never_the_live_deployment() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cluster.init_env("staging")?;
    for version in ["v1", "v2", "v3", "v4", "v5"] {
        sample_project(&source, version, &[("PILLAR.sample", "keep_archives: 2\n")])?;
        let out = cluster.push(&staging, "app", &source, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let dir = cluster.project_dir(&staging, "app");
    // The agent sweeps discarded archives (renamed to `.trash-*`) after it reports the result.
    wait_until("the discarded archives to be swept", || {
        Ok(!std::fs::read_dir(dir.join("archives"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".trash-")))
    })?;
    let archives: Vec<String> = std::fs::read_dir(dir.join("archives"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(archives.len() <= 2, "{archives:?}");
    assert!(!archives.is_empty());
    // The live deployment still serves, and rollback to the previous one still works.
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v5\n"
    );
    let out = cluster.corpus(&["rollback", "local", &staging, "app"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v4\n"
    );
    Ok(())
}

#[test]
fn a_concurrent_push_is_refused_with_the_holders_details() -> anyhow::Result<()> {
    let cluster = Cluster::start_with_agent_env(&[("CORPUS_TEST_PAUSE_AT", "build")])?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    let staging = cluster.init_env("staging")?;
    let path = source.display().to_string();
    let mut first = cluster.corpus_spawn(&["push", "local", &staging, "app", "--path", &path])?;
    let dir = cluster.project_dir(&staging, "app");
    wait_until("the first push to hold the project", || {
        Ok(dir.join(".paused-build").exists())
    })?;

    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("locked") && err.contains("dev@example.com") && err.contains("job"),
        "{err}"
    );
    first.kill();
    Ok(())
}

/// The built-in and SLS steps of a cooking deploy, in order: the agent is killed at each.
const COOKING_STEPS: &[&str] = &[
    "pre_install",
    "stop",
    "backup_data",
    "archive",
    "sync",
    "build",
    "bundle",
    "start",
    "healthcheck",
    "rotate",
];

#[test]
fn an_agent_killed_at_each_step_boundary_recovers_to_a_complete_tree() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    let dir = cluster.project_dir(&staging, "app");
    std::fs::write(dir.join("data/state.db"), "good data")?;
    let path = source.display().to_string();

    for (n, step) in COOKING_STEPS.iter().enumerate() {
        cluster.restart_agent(&[("CORPUS_TEST_PAUSE_AT", step)])?;
        cluster.master.wait_agent("node1", "accepted", true)?;
        sample_project(&source, &format!("crash{n}"), &[])?;
        let mut push =
            cluster.corpus_spawn(&["push", "local", &staging, "app", "--path", &path])?;
        let marker = dir.join(format!(".paused-{step}"));
        wait_until(&format!("the deploy to pause at {step}"), || {
            Ok(marker.exists())
        })?;
        cluster.agent.proc.signal(libc::SIGKILL);
        push.kill();

        cluster.restart_agent(&[])?;
        wait_until(
            &format!("the master to learn how the deploy killed at {step} ended"),
            || {
                let status = cluster.status(&staging, "app")?;
                Ok(deployments(&status)
                    .last()
                    .is_some_and(|d| d["result"] != "running"))
            },
        )?;
        let index = std::fs::read_to_string(dir.join("run/index.html"))
            .with_context(|| format!("run/ is not a complete tree after a crash at {step}"))?;
        assert!(index.starts_with("hello "), "{step}: {index}");
        assert_eq!(
            std::fs::read_to_string(dir.join("data/state.db"))?,
            "good data",
            "{step}"
        );
        assert!(!marker.exists() || std::fs::remove_file(&marker).is_ok());
    }
    Ok(())
}

#[test]
fn a_graceful_stop_mid_deploy_finishes_the_job_and_its_result_reaches_the_master()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    let first = live(&cluster.status(&staging, "app")?).context("no live deployment")?;
    // Inside the project's root: a confined build cannot write anywhere else.
    let building = cluster.project_dir(&staging, "app").join("building");
    let slow_build = format!(
        "copy_app:\n  cmd.run:\n    - name: touch {} && sleep 3 && cp -a {{{{ common.project_dir }}}}/app/. {{{{ common.run_dir }}}}/\n",
        building.display()
    );
    sample_project(&source, "v2", &[("build.sls", &slow_build)])?;
    let path = source.display().to_string();
    let mut push = cluster.corpus_spawn(&["push", "local", &staging, "app", "--path", &path])?;
    wait_until("the build to start", || Ok(building.exists()))?;
    cluster.agent.proc.signal(libc::SIGTERM);
    wait_until("the agent to stop", || {
        Ok(cluster.agent.proc.child.try_wait()?.is_some())
    })?;
    push.kill();
    // The deploy ran to its end before the agent exited.
    let dir = cluster.project_dir(&staging, "app");
    assert_eq!(
        std::fs::read_to_string(dir.join("run/index.html"))?,
        "hello v2\n"
    );

    cluster.restart_agent(&[])?;
    wait_until("the master to learn how the deploy ended", || {
        let status = cluster.status(&staging, "app")?;
        let all = deployments(&status);
        Ok(all.len() == 2 && all.iter().all(|d| d["result"] != "running"))
    })?;
    let status = cluster.status(&staging, "app")?;
    let newest = deployments(&status)[1].clone();
    assert_eq!(newest["result"], "success", "{status}");
    let now_live = live(&status).context("no live deployment")?;
    assert_ne!(now_live, first, "{status}");
    assert_eq!(Some(now_live.as_str()), newest["id"].as_str(), "{status}");
    let releases = status["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        releases.len(),
        2,
        "the cooked release is recorded: {status}"
    );
    Ok(())
}

#[test]
fn a_master_down_when_a_build_ends_gets_the_release_once_it_is_back() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    // Inside the project's root: a confined build cannot write anywhere else.
    let building = cluster.project_dir(&staging, "app").join("building");
    let slow_build = format!(
        "copy_app:\n  cmd.run:\n    - name: touch {} && sleep 1 && cp -a {{{{ common.project_dir }}}}/app/. {{{{ common.run_dir }}}}/\n",
        building.display()
    );
    sample_project(&source, "v2", &[("build.sls", &slow_build)])?;
    let path = source.display().to_string();
    let mut push = cluster.corpus_spawn(&["push", "local", &staging, "app", "--path", &path])?;
    wait_until("the build to start", || Ok(building.exists()))?;
    let (addr, data_dir) = (cluster.master.addr.clone(), cluster.master.data_dir.clone());
    cluster.master.proc.kill();
    push.kill();
    wait_until("the agent to retry the release upload", || {
        Ok(cluster
            .agent
            .proc
            .log_text()
            .contains("cannot take the release now"))
    })?;
    cluster.master = corpus_tests::Master::serve(&data_dir, &addr)?;
    wait_until("the master to record the deploy", || {
        let status = cluster.status(&staging, "app")?;
        let all = deployments(&status);
        Ok(all.len() == 2 && all.iter().all(|d| d["result"] != "running"))
    })?;
    let status = cluster.status(&staging, "app")?;
    assert_eq!(deployments(&status)[1]["result"], "success", "{status}");
    let releases = status["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        releases.len(),
        2,
        "the cooked release is recorded: {status}"
    );
    Ok(())
}

#[test]
fn bad_pushes_fail_clearly_and_change_nothing_on_the_agent() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;

    // A final push with no cooked release.
    let prod = cluster.init_env("prod")?;
    let out = cluster.push(&prod, "app", &source, &[])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no release"), "{}", stderr(&out));
    assert!(!cluster.project_dir(&prod, "app").exists());

    let staging = cluster.init_env("staging")?;
    // A project without .salt/.
    let bare = cluster.root.path().join("bare");
    std::fs::create_dir_all(&bare)?;
    std::fs::write(bare.join("README"), "no salt here")?;
    corpus_tests::git(&bare, &["init", "-q"])?;
    corpus_tests::git(&bare, &["add", "-A"])?;
    corpus_tests::git(&bare, &["commit", "-q", "-m", "bare"])?;
    let out = cluster.push(&staging, "app", &bare, &[])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".salt"), "{}", stderr(&out));

    // An invalid project name.
    let out = cluster.push(&staging, "../app", &source, &[])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("project name \"../app\" is invalid"),
        "{}",
        stderr(&out)
    );

    // A pillar with a YAML error.
    let pillar = cluster.root.path().join("broken.sls");
    std::fs::write(&pillar, "port: [8080\n")?;
    let pillar_arg = pillar.display().to_string();
    let out = cluster.push(&staging, "app", &source, &["--pillar", &pillar_arg])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("init.sls"), "{}", stderr(&out));

    assert!(
        !cluster.project_dir(&staging, "app").exists(),
        "a failed validation touched the agent"
    );
    Ok(())
}

#[test]
fn editable_mode_runs_from_the_project_and_leaves_failures_for_the_developer() -> anyhow::Result<()>
{
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    let dev = cluster.init_env("dev")?;
    let out = cluster.push(&dev, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = cluster.project_dir(&dev, "app");
    assert_eq!(
        std::fs::canonicalize(dir.join("run"))?,
        std::fs::canonicalize(dir.join("project"))?
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("run/app/index.html"))?,
        "hello v1\n"
    );

    sample_project(&source, "v2", &[("build.sls", FAILING_BUILD)])?;
    let out = cluster.push(&dev, "app", &source, &[])?;
    assert!(!out.status.success());
    // Not rolled back: the developer's tree keeps the new source and what the build did.
    assert_eq!(
        std::fs::read_to_string(dir.join("run/app/index.html"))?,
        "hello v2\n"
    );
    let status = cluster.status(&dev, "app")?;
    assert_eq!(
        deployments(&status).last().map(|d| d["result"].clone()),
        Some(Value::from("failed"))
    );
    Ok(())
}

#[test]
fn an_agent_cannot_fetch_the_blobs_of_an_environment_that_is_not_its_own() -> anyhow::Result<()> {
    use corpus_proto::FetchBlobRequest;
    use corpus_proto::agent_link_client::AgentLinkClient;

    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    let releases = cluster.status(&staging, "app")?["releases"].clone();
    let digest = releases[0]["digest"]
        .as_str()
        .context("release digest")?
        .to_owned();

    let token = cluster.master.token("10m")?;
    let other = corpus_tests::Agent::spawn(
        &cluster.master.url(),
        &cluster.master.ca(),
        cluster.root.path(),
        "node2",
        Some(&token),
        &[],
    )?;
    cluster.master.wait_agent("node2", "accepted", true)?;
    let out = cluster.corpus(&["init_env", "local", "staging", "node2"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let own_env = String::from_utf8(out.stdout)?.trim().to_owned();

    // Plans and pillar only ever travel on the hosting agent's own link; blobs are the one
    // thing an agent asks for, so that is what must be refused.
    corpus_runtime::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cert, key) = other.identity()?;
    let ca = cluster.master.ca_pem()?;
    for env in [staging.as_str(), own_env.as_str()] {
        let code = rt.block_on(async {
            let channel =
                corpus_runtime::tls::dial(&cluster.master.url(), &ca, Some((&cert, &key))).await?;
            let result = AgentLinkClient::new(channel)
                .fetch_blob(FetchBlobRequest {
                    digest: digest.clone(),
                    env_uuid: env.to_owned(),
                })
                .await;
            anyhow::Ok(match result {
                Err(status) => Some(status.code()),
                Ok(mut stream) => stream.get_mut().message().await.err().map(|s| s.code()),
            })
        })?;
        assert_eq!(code, Some(tonic::Code::PermissionDenied), "env {env}");
    }

    // The hosting agent itself may fetch it.
    let (cert, key) = cluster.agent.identity()?;
    let fetched = rt.block_on(async {
        let channel =
            corpus_runtime::tls::dial(&cluster.master.url(), &ca, Some((&cert, &key))).await?;
        let mut stream = AgentLinkClient::new(channel)
            .fetch_blob(FetchBlobRequest {
                digest: digest.clone(),
                env_uuid: staging.clone(),
            })
            .await?
            .into_inner();
        let mut bytes = 0usize;
        while let Some(chunk) = stream.message().await? {
            bytes += chunk.data.len();
        }
        anyhow::Ok(bytes)
    })?;
    assert!(fetched > 0);
    Ok(())
}

#[test]
fn a_push_over_the_quota_fails_before_touching_anything_and_enlarge_lifts_it() -> anyhow::Result<()>
{
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    // Disk use is measured after the job's result, and reported right behind it.
    let mut status = Value::Null;
    wait_until("the agent to report the project's disk use", || {
        status = cluster.status(&staging, "app")?;
        Ok(status["projects"][0]["used_bytes"]
            .as_u64()
            .is_some_and(|u| u > 0))
    })?;
    let quota = status["projects"][0]["quota_bytes"]
        .as_u64()
        .context("quota")?;
    let used = status["projects"][0]["used_bytes"]
        .as_u64()
        .context("used")?;
    assert_eq!(quota, 5_000_000_000, "the RFC's default quota is 5 GB");
    assert!(used > 0);

    // Leave 100 bytes of room: the next source upload cannot fit.
    let trim = (quota - used - 100).to_string();
    let out = cluster.corpus(&["trim", "local", &staging, "app", &trim])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = cluster.project_dir(&staging, "app");
    let run_before = snapshot(&dir.join("run"))?;
    let deployments_before = deployments(&cluster.status(&staging, "app")?).len();

    sample_project(&source, "v2", &[])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("quota"), "{}", stderr(&out));
    assert_eq!(snapshot(&dir.join("run"))?, run_before);
    assert_eq!(
        deployments(&cluster.status(&staging, "app")?).len(),
        deployments_before
    );

    // Trimming below what is used is refused; enlarging makes room again.
    let out = cluster.corpus(&["trim", "local", &staging, "app", "1G"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("uses"), "{}", stderr(&out));
    let out = cluster.corpus(&["enlarge", "local", &staging, "app", "1G"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn destroy_frees_a_project_then_the_whole_environment() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let staging = cooked(&cluster, &source)?;
    let dir = cluster.project_dir(&staging, "app");
    assert!(dir.exists());

    let out = cluster.corpus(&["destroy", "local", &staging, "app"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.exists(), "the project directory survived destroy");
    let out = cluster.corpus(&["status", "local", &staging, "app"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no project"), "{}", stderr(&out));

    let out = cluster.corpus(&["destroy", "local", &staging])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!cluster.agent.root().join(&staging).exists());
    let out = cluster.corpus(&["status", "local", &staging])?;
    assert!(stderr(&out).contains("no environment"), "{}", stderr(&out));
    // The slot is free again.
    let hosts = cluster.corpus(&["listhosts", "--json"])?;
    let hosts: Value = serde_json::from_slice(&hosts.stdout)?;
    assert_eq!(hosts[0]["slots_free"], hosts[0]["slots_total"]);
    Ok(())
}

/// Accepts one HTTP request on `listener`, answers 200, and returns its body.
fn receive_webhook(listener: std::net::TcpListener) -> anyhow::Result<Value> {
    use std::io::{BufRead, BufReader, Read, Write};
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    anyhow::ensure!(request_line.starts_with("POST /hook"), "{request_line}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
    Ok(serde_json::from_slice(&body)?)
}

#[test]
fn webhooks_receive_a_json_event_per_finished_deploy() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let receiver = std::thread::spawn(move || receive_webhook(listener));

    let source = cluster.root.path().join("src");
    sample_project(
        &source,
        "v1",
        &[(
            "PILLAR.sample",
            &format!("notify:\n  webhooks:\n    - {url}\n"),
        )],
    )?;
    let staging = cluster.init_env("staging")?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));

    let event = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("webhook thread panicked"))??;
    assert_eq!(event["status"], "success", "{event}");
    assert_eq!(event["project"], "app");
    assert_eq!(event["env"], staging.as_str());
    assert!(
        event["commit"].as_str().is_some_and(|c| c.len() == 40),
        "{event}"
    );
    assert!(
        event.get("failed_step").is_some() && event.get("duration").is_some(),
        "{event}"
    );
    Ok(())
}

#[test]
fn final_mode_renders_salt_sources_from_the_pushed_source_on_a_fresh_environment()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let source = cluster.root.path().join("src");
    let start = "config:\n  file.managed:\n    - name: {{ common.data_dir }}/app.conf\n    - source: salt://app/app.conf.j2\n    - template: jinja\n";
    std::fs::create_dir_all(source.join("app"))?;
    std::fs::write(
        source.join("app/app.conf.j2"),
        "mode={{ common.mode }} port={{ salt['pillar.get']('port', 80) }}\n",
    )?;
    sample_project(&source, "v1", &[("start.sls", start)])?;
    let staging = cluster.init_env("staging")?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // prod has never had project/ synced: the template comes from the pushed source.
    let prod = cluster.init_env("prod")?;
    let out = cluster.push(&prod, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = cluster.project_dir(&prod, "app");
    assert_eq!(
        std::fs::read_to_string(dir.join("data/app.conf"))?,
        "mode=final port=80\n"
    );
    assert!(
        !dir.join("project/app").exists(),
        "final mode synced the source into project/"
    );
    Ok(())
}
