//! Tenant isolation, the master's half (issue 8): two users, alice and bob, with environments
//! on one agent (or, when the agent does not report that it isolates environments, refused
//! there and placed on a second agent). Each attack is refused at push, naming the file, line
//! and state id, and changes nothing; prod pushes deploy only the owner's releases; a copy of
//! an agent's certificate cannot attach while the agent is connected; identities are as the
//! contract says and survive a master restart; the per-user environment limit holds.
//!
//! The master runs on the test-only sheet `test-a` (sheet number 4: uids 4xxxx, which no
//! account here uses). Every account an isolating agent creates for these environments is
//! removed when the test ends, failed or not ([`Accounts`]).

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::Context;
use corpus_tests::{Agent, Master, client_config, corpus, sample_project, wait_until};
use serde_json::Value;

const SHEET_CONFIG: &str = "sheet: test-a\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Removes the `corpus-<smep>` users and groups of the environments a test created, if an
/// agent created them, when dropped (the agents are stopped before: fields drop in order).
#[derive(Default)]
struct Accounts(Vec<u64>);

impl Drop for Accounts {
    fn drop(&mut self) {
        for smep in &self.0 {
            let name = format!("corpus-{smep}");
            for (lookup, remove) in [("passwd", "userdel"), ("group", "groupdel")] {
                let exists = std::process::Command::new("getent")
                    .args([lookup, &name])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if exists {
                    let _ = std::process::Command::new(remove).arg(&name).status();
                }
            }
        }
    }
}

/// A master on the test sheet, agent node1, users alice and bob and the admin ops, each with
/// a client config.
struct Tenants {
    root: tempfile::TempDir,
    master: Master,
    node1: Agent,
    node2: Option<Agent>,
    alice: PathBuf,
    bob: PathBuf,
    ops: PathBuf,
    accounts: Accounts,
}

impl Tenants {
    /// The SMEP of the first staging environment on node1: sheet test-a (4), the first
    /// environment number of this master's range, staging (3).
    fn first_staging_smep(&self) -> u32 {
        40_000 + self.master.identities.first * 100 + 30
    }

    fn start() -> anyhow::Result<Tenants> {
        let root = tempfile::tempdir()?;
        let config = root.path().join("master.yaml");
        std::fs::write(&config, SHEET_CONFIG)?;
        let config_arg = config.display().to_string();
        let master = Master::start_with(root.path(), &["--config", &config_arg])?;
        let token = master.token("10m")?;
        let node1 = Agent::start(&master, root.path(), "node1", Some(&token))?;
        master.wait_agent("node1", "accepted", true)?;
        let mut configs = Vec::new();
        for (user, admin) in [("alice", false), ("bob", false), ("ops", true)] {
            let mut args = vec!["users", "add", user];
            if admin {
                args.push("--admin");
            }
            let out = master.console(&args, Some("a-long-password\n"))?;
            anyhow::ensure!(out.status.success(), "users add {user}: {}", stderr(&out));
            let dir = root.path().join(format!("client-{user}"));
            std::fs::create_dir_all(&dir)?;
            configs.push(client_config(
                &dir,
                "local",
                &master.url(),
                user,
                "a-long-password",
                &master.ca(),
            )?);
        }
        let [alice, bob, ops] = <[PathBuf; 3]>::try_from(configs)
            .map_err(|_| anyhow::anyhow!("three client configs expected"))?;
        Ok(Tenants {
            root,
            master,
            node1,
            node2: None,
            alice,
            bob,
            ops,
            accounts: Accounts::default(),
        })
    }

    /// `corpus init_env local PLATFORM HOST --json` as `user`; the environment's JSON.
    fn init_env(&mut self, user: &Path, platform: &str, host: &str) -> anyhow::Result<Value> {
        let out = corpus(user, &["init_env", "local", platform, host, "--json"])?;
        anyhow::ensure!(out.status.success(), "init_env: {}", stderr(&out));
        let env: Value = serde_json::from_slice(&out.stdout)?;
        if let Some(smep) = env["smep"].as_u64() {
            self.accounts.0.push(smep);
        }
        Ok(env)
    }

    /// An environment of bob: on node1 when the agent isolates environments, else (refused
    /// there, as it must be: alice's environment is on it) on a second agent.
    fn bob_env(&mut self, platform: &str) -> anyhow::Result<(String, PathBuf)> {
        let bob = self.bob.clone();
        let out = corpus(&bob, &["init_env", "local", platform, "node1", "--json"])?;
        if out.status.success() {
            // The agent isolates environments (landlock or uid): bob shares it with alice.
            let env: Value = serde_json::from_slice(&out.stdout)?;
            if let Some(smep) = env["smep"].as_u64() {
                self.accounts.0.push(smep);
            }
            return Ok((uuid(&env)?, self.node1.root()));
        }
        assert!(
            stderr(&out).contains("hosts environments of other users"),
            "{}",
            stderr(&out)
        );
        if self.node2.is_none() {
            let token = self.master.token("10m")?;
            let node2 = Agent::start(&self.master, self.root.path(), "node2", Some(&token))?;
            self.master.wait_agent("node2", "accepted", true)?;
            self.node2 = Some(node2);
        }
        let env = self.init_env(&bob, platform, "node2")?;
        let root = self.node2.as_ref().map(Agent::root).context("node2")?;
        Ok((uuid(&env)?, root))
    }
}

fn uuid(env: &Value) -> anyhow::Result<String> {
    Ok(env["uuid"].as_str().context("no uuid")?.to_owned())
}

fn push(config: &Path, env: &str, source: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    let path = source.display().to_string();
    let mut args = vec!["push", "local", env, "app", "--path", &path];
    args.extend_from_slice(extra);
    corpus(config, &args)
}

fn pushed(config: &Path, env: &str, source: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let out = push(config, env, source, extra)?;
    anyhow::ensure!(
        out.status.success(),
        "push failed: {}\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn states_that_leave_their_environment_are_refused_at_push_and_change_nothing() -> anyhow::Result<()>
{
    let mut t = Tenants::start()?;
    let alice_env = t.init_env(&t.alice.clone(), "staging", "node1")?;
    // Sheet test-a is 4, alice's is node1's first environment (the first number of the
    // harness's range for this master), staging is 3.
    let smep = t.first_staging_smep();
    assert_eq!(alice_env["smep"], smep);
    assert_eq!(alice_env["uid"], smep);
    assert_eq!(
        alice_env["ports"],
        Value::from((smep..smep + 10).collect::<Vec<u32>>())
    );
    let (bob_env, bob_root) = t.bob_env("staging")?;
    let agent_key = t.node1.state_dir.join("agent.key").display().to_string();
    let first = "ok:\n  cmd.run:\n    - name: true\n";
    let attacks = [
        (
            "read_pillars",
            format!(
                "read_pillars:\n  cmd.run:\n    - name: cat {}/*/srv/projects/*/pillar/*\n    - runas: root\n",
                t.node1.root().display()
            ),
            "runas \"root\"",
        ),
        (
            "steal_key",
            format!(
                "steal_key:\n  file.managed:\n    - name: {{{{ common.project_root }}}}/stolen\n    - source: {agent_key}\n"
            ),
            "source",
        ),
        (
            "drop_cron",
            "drop_cron:\n  file.managed:\n    - name: /etc/cron.d/corpus-tenancy-test\n    - contents: x\n".to_owned(),
            "name \"/etc/cron.d/corpus-tenancy-test\"",
        ),
        (
            "link_out",
            "link_out:\n  file.symlink:\n    - name: {{ common.project_root }}/shadow\n    - target: /etc/shadow\n".to_owned(),
            "symlink target \"/etc/shadow\"",
        ),
        (
            "stop_ssh",
            "stop_ssh:\n  service.running:\n    - name: ssh.service\n".to_owned(),
            "on unit \"ssh.service\"",
        ),
    ];
    let source = t.root.path().join("bob-src");
    for (id, state, reason) in &attacks {
        sample_project(&source, id, &[("build.sls", &format!("{first}{state}"))])?;
        let out = push(&t.bob, &bob_env, &source, &[])?;
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{id}: {message}");
        assert!(
            message.contains(&format!(".salt/build.sls, line 4, state \"{id}\"")),
            "{id}: {message}"
        );
        assert!(message.contains(reason), "{id}: {message}");
        assert!(message.contains("nothing was changed"), "{id}: {message}");
    }
    // Nothing reached the agent, nothing was recorded.
    assert!(!bob_root.join(&bob_env).join("srv/projects/app").exists());
    assert!(!Path::new("/etc/cron.d/corpus-tenancy-test").exists());
    let status = corpus(&t.bob, &["status", "local", &bob_env, "--json"])?;
    let status: Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["projects"], Value::Array(vec![]), "{status}");

    // A project that stays in its environment deploys.
    sample_project(&source, "fine", &[])?;
    pushed(&t.bob, &bob_env, &source, &[])?;

    // The per-user limit: bob may own 2 now; he has 1.
    let out = t
        .master
        .console(&["users", "set", "bob", "--max-envs", "2"], None)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.master.console(
        &["users", "add", "carol", "--max-envs", "1"],
        Some("a-long-password\n"),
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let users = t.master.console_json(&["users", "list"])?;
    let limit = |id: &str| {
        users
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["id"] == id)
            .map(|u| u["max_envs"].clone())
    };
    assert_eq!(limit("alice"), Some(4.into()));
    assert_eq!(limit("bob"), Some(2.into()));
    assert_eq!(limit("carol"), Some(1.into()));
    let host = if t.node2.is_some() { "node2" } else { "node1" };
    t.init_env(&t.bob.clone(), "dev", host)?;
    let out = corpus(&t.bob, &["init_env", "local", "dev", host])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("owns 2 environments, the most allowed (2)"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_neighbours_commands_cannot_read_another_environments_pillar_or_data() -> anyhow::Result<()> {
    let mut t = Tenants::start()?;
    let alice = t.alice.clone();
    let alice_env = t.init_env(&alice, "staging", "node1")?;
    let alice_staging = uuid(&alice_env)?;
    let secret = "alice-secret-8d1f27";
    let pillar = t.root.path().join("alice-pillar.sls");
    std::fs::write(&pillar, format!("db_password: {secret}\n"))?;
    let pillar_arg = pillar.display().to_string();
    let source = t.root.path().join("alice-src");
    let keep = "keep:\n  cmd.run:\n    - name: echo {{ pillar.db_password }} > {{ common.data_dir }}/secret.txt\n";
    sample_project(&source, "v1", &[("build.sls", keep)])?;
    pushed(&alice, &alice_staging, &source, &["--pillar", &pillar_arg])?;
    let alice_project = t.node1.project_dir(&alice_staging, "app");
    let alice_pillar = alice_project.join("pillar/pillar.json");
    let alice_data = alice_project.join("data/secret.txt");
    assert!(std::fs::read_to_string(&alice_pillar)?.contains(secret));
    assert!(std::fs::read_to_string(&alice_data)?.contains(secret));

    // Bob shares node1 only because it isolates environments; his commands try both files.
    let (bob_staging, bob_root) = t.bob_env("staging")?;
    anyhow::ensure!(
        bob_root == t.node1.root(),
        "bob was placed on another agent: node1 does not report isolation"
    );
    for target in [&alice_pillar, &alice_data] {
        let source = t
            .root
            .path()
            .join(format!("bob-src-{}", unique_suffix(target)));
        let steal = format!(
            "steal:\n  cmd.run:\n    - name: cat {} > {{{{ common.data_dir }}}}/stolen.txt\n",
            target.display()
        );
        sample_project(&source, "v1", &[("build.sls", steal.as_str())])?;
        let out = push(&t.bob, &bob_staging, &source, &["--json"])?;
        let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains("Permission denied"), "{shown}");
        assert!(
            !shown.contains(secret),
            "alice's secret reached bob: {shown}"
        );
        let stolen = t
            .node1
            .project_dir(&bob_staging, "app")
            .join("data/stolen.txt");
        let stolen = std::fs::read_to_string(&stolen).unwrap_or_default();
        assert!(!stolen.contains(secret), "{stolen}");
    }
    // Alice's files are as she left them.
    assert!(std::fs::read_to_string(&alice_data)?.contains(secret));
    Ok(())
}

/// A short name for a path, to keep two sources apart.
fn unique_suffix(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().replace('.', "-"))
        .unwrap_or_default()
}

#[test]
fn a_prod_push_deploys_only_its_owners_staging_releases() -> anyhow::Result<()> {
    let mut t = Tenants::start()?;
    let (alice, ops) = (t.alice.clone(), t.ops.clone());
    let alice_staging = uuid(&t.init_env(&alice, "staging", "node1")?)?;
    let alice_src = t.root.path().join("alice-src");
    sample_project(&alice_src, "alice-v1", &[])?;
    pushed(&alice, &alice_staging, &alice_src, &[])?;

    // Bob cooks a newer release of a project of the same name.
    let (bob_staging, _) = t.bob_env("staging")?;
    let bob_src = t.root.path().join("bob-src");
    sample_project(&bob_src, "bob-v1", &[])?;
    pushed(&t.bob, &bob_staging, &bob_src, &[])?;
    let bob_status = corpus(&t.bob, &["status", "local", &bob_staging, "app", "--json"])?;
    let bob_status: Value = serde_json::from_slice(&bob_status.stdout)?;
    let bob_release = bob_status["releases"][0]["id"]
        .as_str()
        .context("bob's release")?
        .to_owned();

    let prod = uuid(&t.init_env(&alice, "prod", "node1")?)?;
    let run = t.node1.project_dir(&prod, "app").join("run/index.html");
    pushed(&alice, &prod, &alice_src, &[])?;
    assert_eq!(std::fs::read_to_string(&run)?, "hello alice-v1\n");
    // An admin deploying alice's prod gets alice's release, not the newest one of any user.
    pushed(&ops, &prod, &alice_src, &[])?;
    assert_eq!(std::fs::read_to_string(&run)?, "hello alice-v1\n");
    // Bob's release, named, is not one alice's prod may deploy.
    for config in [&alice, &ops] {
        let out = push(config, &prod, &alice_src, &["--release", &bob_release])?;
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no release"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&run)?, "hello alice-v1\n");

    // Two staging environments of alice cooked it: the push must say which.
    let second = uuid(&t.init_env(&alice, "staging", "node1")?)?;
    sample_project(&alice_src, "alice-v2", &[])?;
    pushed(&alice, &second, &alice_src, &[])?;
    let out = push(&alice, &prod, &alice_src, &[])?;
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains(&alice_staging) && message.contains(&second) && message.contains("--from"),
        "{message}"
    );
    pushed(&alice, &prod, &alice_src, &["--from", &second])?;
    assert_eq!(std::fs::read_to_string(&run)?, "hello alice-v2\n");
    pushed(&alice, &prod, &alice_src, &["--from", &alice_staging])?;
    assert_eq!(std::fs::read_to_string(&run)?, "hello alice-v1\n");
    Ok(())
}

#[test]
fn a_copy_of_a_connected_agents_certificate_cannot_attach_or_take_its_jobs() -> anyhow::Result<()> {
    let mut t = Tenants::start()?;
    let alice = t.alice.clone();
    let staging = uuid(&t.init_env(&alice, "staging", "node1")?)?;
    // Bob's copy of node1's state dir (certificate and key) on another "machine".
    let clone_root = t.root.path().join("clone");
    let clone_state = clone_root.join("agent-node1");
    std::fs::create_dir_all(&clone_state)?;
    for file in ["agent.crt", "agent.key"] {
        std::fs::copy(t.node1.state_dir.join(file), clone_state.join(file))?;
    }
    let clone = Agent::start(&t.master, &clone_root, "node1", None)?;
    wait_until("the master to refuse the cloned certificate", || {
        Ok(t.master
            .proc
            .log_text()
            .contains("possibly a cloned agent certificate"))
    })?;
    wait_until("the clone to be told", || {
        Ok(clone.proc.log_text().contains("already connected"))
    })?;
    t.master.wait_agent("node1", "accepted", true)?;
    // Alice's next job goes to the real agent.
    let source = t.root.path().join("src");
    sample_project(&source, "v1", &[])?;
    let out = push(&alice, &staging, &source, &[])?;
    anyhow::ensure!(
        out.status.success(),
        "push failed: {}\njobs: {}\nmaster: {}\nnode1: {}\nclone: {}",
        stderr(&out),
        t.master.console_json(&["jobs", "list"])?,
        t.master.proc.log_text(),
        t.node1.proc.log_text(),
        clone.proc.log_text()
    );
    assert!(
        t.node1
            .project_dir(&staging, "app")
            .join("run/index.html")
            .exists()
    );
    assert!(!clone_root.join("agent-node1/root").join(&staging).exists());
    Ok(())
}

#[test]
fn identities_reach_the_job_and_survive_a_master_restart() -> anyhow::Result<()> {
    let mut t = Tenants::start()?;
    let alice = t.alice.clone();
    let env = t.init_env(&alice, "staging", "node1")?;
    let staging = uuid(&env)?;
    let source = t.root.path().join("src");
    let build = "identity:\n  cmd.run:\n    - name: echo {{ common.uid }} {{ common.gid }} {{ common.user }} {{ common.ports | join(',') }} > {{ common.data_dir }}/identity.txt\n";
    sample_project(&source, "v1", &[("build.sls", build)])?;
    pushed(&alice, &staging, &source, &[])?;
    let identity = t
        .node1
        .project_dir(&staging, "app")
        .join("data/identity.txt");
    let smep = t.first_staging_smep();
    let expected = format!(
        "{smep} {smep} corpus-{smep} {}\n",
        (smep..smep + 10)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(std::fs::read_to_string(&identity)?, expected);
    let status = |t: &Tenants| -> anyhow::Result<Value> {
        let out = corpus(&t.alice, &["status", "local", &staging, "--json"])?;
        anyhow::ensure!(out.status.success(), "status: {}", stderr(&out));
        Ok(serde_json::from_slice::<Value>(&out.stdout)?["environment"].clone())
    };
    let before = status(&t)?;
    assert_eq!(
        (before["uid"].clone(), before["smep"].clone()),
        (smep.into(), smep.into())
    );

    // Restart the master on the same data dir and port.
    t.master.proc.kill();
    let config = t.root.path().join("master.yaml").display().to_string();
    let addr = t.master.addr.clone();
    t.master = Master::serve_with(&t.master.data_dir.clone(), &addr, &["--config", &config])?;
    t.master.wait_agent("node1", "accepted", true)?;
    assert_eq!(status(&t)?, before);
    std::fs::remove_file(&identity)?;
    sample_project(&source, "v2", &[("build.sls", build)])?;
    pushed(&alice, &staging, &source, &[])?;
    assert_eq!(std::fs::read_to_string(&identity)?, expected);
    Ok(())
}
