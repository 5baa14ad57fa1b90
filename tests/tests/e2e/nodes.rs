//! `corpus-master nodes` against a real OpenSSH server on loopback (the "node" is this
//! machine, every installed file under a temporary remote prefix), and the agent's config file
//! re-read on SIGHUP, and agent certificate renewal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use corpus_tests::{Agent, Master, Sshd, client_config, corpus, ssh_keygen, wait_until};

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Kills the detached agent a test started on the "node", whatever the test's outcome.
struct DetachedAgent {
    pid_file: PathBuf,
}

impl DetachedAgent {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }
}

impl Drop for DetachedAgent {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid our attach wrote; it is gone or our agent.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nodes attach` of the sshd's loopback node as `node1`, detached, under `prefix`.
fn attach(
    master: &Master,
    sshd: &Sshd,
    key: &Path,
    prefix: &Path,
    extra: &[&str],
) -> anyhow::Result<Output> {
    let key = key.display().to_string();
    let prefix = prefix.display().to_string();
    let url = master.url();
    let target = sshd.target();
    let mut args = vec![
        "nodes",
        "attach",
        target.as_str(),
        "--key",
        key.as_str(),
        "--id",
        "node1",
        "--slots",
        "3",
        "--no-systemd",
        "--remote-prefix",
        prefix.as_str(),
        "--master-url",
        url.as_str(),
        "--wait",
        "30s",
    ];
    args.extend_from_slice(extra);
    master.console(&args, None)
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn attach_starts_a_connected_agent_and_detach_removes_it() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let sshd = Sshd::start(&root.path().join("sshd"))?;
    let prefix = root.path().join("node");
    let agent = DetachedAgent {
        pid_file: prefix.join("run/corpus-agent.pid"),
    };
    let fingerprint = sshd.host_key_fingerprint()?;

    // An unknown host key is refused without --accept-new-host-key, and nothing is recorded.
    let out = attach(&master, &sshd, &sshd.client_key, &prefix, &[])?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("step `connect` failed")
            && stderr.contains(&fingerprint)
            && stderr.contains("--accept-new-host-key"),
        "{stderr}"
    );
    assert!(!prefix.join("etc/corpus").exists());

    // A key the node does not authorize fails at the login step, before any token exists.
    let wrong_key = root.path().join("wrong_key");
    ssh_keygen(&wrong_key)?;
    let out = attach(
        &master,
        &sshd,
        &wrong_key,
        &prefix,
        &["--accept-new-host-key"],
    )?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("==> connect") && stdout.contains("==> login"),
        "{stdout}"
    );
    assert!(!stdout.contains("==> enrollment token"), "{stdout}");
    assert!(stderr.contains("step `login` failed"), "{stderr}");

    // A remote command failing after the token was made: the step, the exit status and the
    // remote stderr are reported, and the token is revoked.
    let not_a_dir = root.path().join("not-a-dir");
    std::fs::write(&not_a_dir, "")?;
    let out = attach(&master, &sshd, &sshd.client_key, &not_a_dir, &[])?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("==> enrollment token"), "{stdout}");
    assert!(
        stderr.contains("step `prepare directories` failed")
            && stderr.contains("exited with status 1")
            && stderr.contains("Not a directory"),
        "{stderr}"
    );
    wait_until("the failed attach's token to be revoked", || {
        Ok(master.proc.log_text().contains("enrollment token revoked"))
    })?;

    let out = attach(&master, &sshd, &sshd.client_key, &prefix, &[])?;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\nsshd: {}",
        sshd.log_text()
    );
    for line in [
        "==> copy agent binary",
        "started the agent detached",
        "attached node node1: agent connected",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
    assert!(stdout.contains("slots         3"), "{stdout}");
    // Accepted without an operator: the single-use token admitted it (and was spent); its
    // file is gone from the node.
    master.wait_agent("node1", "accepted", true)?;
    assert!(
        master
            .proc
            .log_text()
            .contains("agent accepted with an enrollment token")
    );
    assert!(!prefix.join("etc/corpus/enroll.token").exists());
    let config = prefix.join("etc/corpus/agent.yaml");
    let config_text = std::fs::read_to_string(&config)?;
    assert!(
        config_text.contains("id: node1") && config_text.contains("slots: 3"),
        "{config_text}"
    );
    assert_eq!(mode(&config)?, 0o600);
    assert_eq!(mode(&prefix.join("etc/corpus/ca.crt"))?, 0o600);
    assert_eq!(mode(&prefix.join("usr/local/bin/corpus-agent"))?, 0o700);
    let pid = agent.pid().ok_or_else(|| anyhow::anyhow!("no pid file"))?;
    assert!(alive(pid), "agent pid {pid} is not running");

    let nodes = master.console_json(&["nodes", "list"])?;
    let node = &nodes[0];
    assert_eq!(node["id"], "node1");
    assert_eq!(node["host"], "127.0.0.1");
    assert_eq!(node["port"], sshd.port);
    assert_eq!(node["host_key_fingerprint"], fingerprint.as_str());
    assert_eq!(node["connected"], true);
    let out = master.console(&["nodes", "list"], None)?;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&fingerprint) && stdout.contains("accepted, connected"),
        "{stdout}"
    );

    // The same attach again is refused: the node is attached.
    let out = attach(&master, &sshd, &sshd.client_key, &prefix, &[])?;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("already attached"), "{stderr}");
    assert!(alive(pid));

    let out = master.console(&["nodes", "detach", "node1", "--purge"], None)?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("==> stop agent") && stdout.contains("detached node node1"));
    wait_until("the detached agent to exit", || Ok(!alive(pid)))?;
    assert!(!prefix.join("usr/local/bin/corpus-agent").exists());
    assert!(!config.exists());
    assert!(!prefix.join("var/lib/corpus-agent").exists());
    assert!(master.agent("node1")?.is_none());
    assert_eq!(
        master.console_json(&["nodes", "list"])?,
        serde_json::json!([])
    );
    Ok(())
}

#[test]
fn a_changed_host_key_is_refused_naming_both_fingerprints() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let mut sshd = Sshd::start(&root.path().join("sshd"))?;
    let prefix = root.path().join("node");
    let _agent = DetachedAgent {
        pid_file: prefix.join("run/corpus-agent.pid"),
    };
    // A refused login still records the host key it accepted.
    let wrong_key = root.path().join("wrong_key");
    ssh_keygen(&wrong_key)?;
    let out = attach(
        &master,
        &sshd,
        &wrong_key,
        &prefix,
        &["--accept-new-host-key"],
    )?;
    assert!(!out.status.success());
    let known = std::fs::read_to_string(master.data_dir.join("known_hosts"))?;
    assert!(
        known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{known}"
    );
    let old = sshd.host_key_fingerprint()?;

    sshd.restart_with_new_host_key()?;
    let new = sshd.host_key_fingerprint()?;
    assert_ne!(old, new);
    let out = attach(
        &master,
        &sshd,
        &sshd.client_key,
        &prefix,
        &["--accept-new-host-key"],
    )?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("changed") && stderr.contains(&old) && stderr.contains(&new),
        "{stderr}"
    );
    assert!(!stdout.contains("==> login"), "{stdout}");
    assert!(!prefix.join("etc/corpus").exists());
    Ok(())
}

#[test]
fn agent_config_sighup_changes_slots_and_an_invalid_file_keeps_them() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("ops@example.com", "a-long-password")?;
    let token_file = root.path().join("enroll.token");
    std::fs::write(&token_file, format!("{}\n", master.token("10m")?))?;
    let state_dir = root.path().join("agent-cfg1");
    let config = root.path().join("agent.yaml");
    let write_config = |slots: &str| {
        std::fs::write(
            &config,
            format!(
                "master: {}\nca: {}\nid: cfg1\nstate_dir: {}\nroot: {}\nslots: {slots}\n\
                 token_file: {}\nlog_level: info\n",
                master.url(),
                master.ca().display(),
                state_dir.display(),
                state_dir.join("root").display(),
                token_file.display()
            ),
        )
    };
    write_config("2")?;
    let agent = Agent::spawn_with_config(root.path(), "cfg1", &config)?;
    master.wait_agent("cfg1", "accepted", true)?;

    let client = client_config(
        root.path(),
        "ops",
        &master.url(),
        "ops@example.com",
        "a-long-password",
        &master.ca(),
    )?;
    let slots = || -> anyhow::Result<serde_json::Value> {
        let out = corpus(&client, &["listhosts", "--json"])?;
        let hosts: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(hosts[0]["slots_total"].clone())
    };
    assert_eq!(slots()?, 2);

    write_config("5")?;
    agent.proc.signal(libc::SIGHUP);
    wait_until("listhosts to show 5 slots", || Ok(slots()? == 5))?;

    write_config("[not a number")?;
    agent.proc.signal(libc::SIGHUP);
    wait_until("the agent to refuse the invalid config", || {
        let log = agent.proc.log_text();
        Ok(log.contains("keeping the running settings") && log.contains("agent.yaml"))
    })?;
    assert_eq!(slots()?, 5);
    master.wait_agent("cfg1", "accepted", true)?;
    Ok(())
}

/// sha256 of the certificate in a PEM file, hex: what the master pins.
fn certificate_fingerprint(path: &Path) -> anyhow::Result<String> {
    certificate_fingerprint_of(&std::fs::read_to_string(path)?)
}

/// The fingerprint the master pins for `id`.
fn pinned(master: &Master, id: &str) -> anyhow::Result<String> {
    Ok(master
        .agent(id)?
        .and_then(|a| a["fingerprint"].as_str().map(str::to_owned))
        .unwrap_or_default())
}

#[test]
fn an_agent_renews_its_short_lived_certificate_and_keeps_its_link() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start_with(root.path(), &["--agent-cert-lifetime", "6s"])?;
    let token = master.token("10m")?;
    let agent = Agent::start(&master, root.path(), "renew1", Some(&token))?;
    master.wait_agent("renew1", "accepted", true)?;
    let first = pinned(&master, "renew1")?;
    assert!(!first.is_empty());

    // Two renewals: the second authenticated by the certificate the first issued, and by then
    // the enrollment certificate (6 s) has expired under the still-open link.
    let mut seen = vec![first.clone()];
    for round in 1..=2 {
        wait_until(&format!("renewal {round} to pin a new fingerprint"), || {
            let now = pinned(&master, "renew1")?;
            if !seen.contains(&now) {
                seen.push(now);
                return Ok(true);
            }
            Ok(false)
        })?;
    }
    // The new key and certificate are on disk, private, and are what the master pins.
    let cert = agent.state_dir.join("agent.crt");
    wait_until(
        "the agent's certificate on disk to be the pinned one",
        || Ok(certificate_fingerprint(&cert)? == pinned(&master, "renew1")?),
    )?;
    assert_eq!(mode(&cert)?, 0o600);
    assert_eq!(mode(&agent.state_dir.join("agent.key"))?, 0o600);
    assert!(!agent.state_dir.join("agent.renewed").exists());

    // Same link all along: attached once, never refused, still connected.
    let log = agent.proc.log_text();
    assert_eq!(log.matches("attached to the master").count(), 1, "{log}");
    assert!(log.contains("certificate renewed"), "{log}");
    assert!(!log.contains("enrolling again"), "{log}");
    master.wait_agent("renew1", "accepted", true)?;
    assert!(master.proc.log_text().contains("agent certificate renewed"));
    Ok(())
}

/// Calls `AgentLink.Renew` as the holder of `identity` (certificate, key PEM).
fn renew_as(
    master: &Master,
    id: &str,
    identity: &(String, String),
) -> anyhow::Result<tonic::Status> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let ca = master.ca_pem()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let channel = corpus_runtime::tls::dial(
            &master.url(),
            &ca,
            Some((identity.0.as_str(), identity.1.as_str())),
        )
        .await?;
        let answer = corpus_proto::agent_link_client::AgentLinkClient::new(channel)
            .renew(corpus_proto::RenewRequest { csr_pem })
            .await;
        match answer {
            Ok(_) => anyhow::bail!("the master renewed the certificate of agent {id:?}"),
            Err(status) => Ok(status),
        }
    })
}

#[test]
fn a_deleted_or_rejected_agent_cannot_renew_its_certificate() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let mut identities = Vec::new();
    for id in ["gone1", "bad1"] {
        let token = master.token("10m")?;
        let mut agent = Agent::start(&master, root.path(), id, Some(&token))?;
        master.wait_agent(id, "accepted", true)?;
        identities.push(agent.identity()?);
        // The test holds the certificate now; the agent would only enroll again.
        agent.proc.kill();
    }
    let out = master.console(&["agents", "delete", "gone1"], None)?;
    assert!(out.status.success(), "{:?}", text(&out));
    let out = master.console(&["agents", "reject", "bad1"], None)?;
    assert!(out.status.success(), "{:?}", text(&out));

    let status = renew_as(&master, "gone1", &identities[0])?;
    assert!(
        status.message().contains("renewal refused")
            && status.message().contains("\"gone1\" is not known"),
        "{status:?}"
    );
    let status = renew_as(&master, "bad1", &identities[1])?;
    assert!(
        status.message().contains("renewal refused")
            && status.message().contains("\"bad1\" was rejected"),
        "{status:?}"
    );
    // Nothing was issued: rejecting unpinned the agent's certificate, and the refused renewal
    // pinned none.
    assert_eq!(pinned(&master, "bad1")?, "");
    assert!(!certificate_fingerprint_of(&identities[1].0)?.is_empty());
    assert!(master.proc.log_text().contains("renewal refused"));
    Ok(())
}

fn certificate_fingerprint_of(pem: &str) -> anyhow::Result<String> {
    use sha2::Digest;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
    Ok(hex::encode(sha2::Sha256::digest(&block.contents)))
}
