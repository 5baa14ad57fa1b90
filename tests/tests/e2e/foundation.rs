//! The foundation's acceptance: TLS everywhere, enrollment, agent identity, login, the
//! console, and `corpus listhosts`, each driven through the real binaries.

use std::time::Duration;

use anyhow::{Context, bail};
use corpus_proto::agent_link_client::AgentLinkClient;
use corpus_proto::client_client::ClientClient;
use corpus_proto::{AgentMessage, Grains, Hello, LoginRequest, agent_message};
use corpus_tests::{Agent, Master, client_config, corpus, wait_until};
use tonic::Code;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    corpus_runtime::install_crypto_provider();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A CA and a client certificate for `cn` that the master has never seen.
fn foreign_identity(cn: &str) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "evil CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.distinguished_name.push(DnType::CommonName, cn);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Attaches with the given client identity and sends a Hello; returns the gRPC error code of
/// the refusal, or None when the master let the stream open.
async fn attach_as(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    id: &str,
) -> anyhow::Result<Option<Code>> {
    let channel = match corpus_runtime::tls::dial(url, ca_pem, identity).await {
        Ok(channel) => channel,
        // A handshake refused outright also counts as refused.
        Err(_) => return Ok(Some(Code::Unavailable)),
    };
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            grains: Some(Grains {
                id: id.to_owned(),
                ..Default::default()
            }),
            unacknowledged: vec![],
            running_jobs: vec![],
        })),
    };
    let result = AgentLinkClient::new(channel)
        .attach(tokio_stream::iter(vec![hello]))
        .await;
    match result {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(Some(_)) => Ok(None),
            Ok(None) => Ok(Some(Code::Cancelled)),
            Err(status) => Ok(Some(status.code())),
        },
        Err(status) => Ok(Some(status.code())),
    }
}

#[test]
fn a_new_user_sees_an_accepted_agent_in_listhosts() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("someone@foo.net", "s3cr3t-pass")?;
    let agent = Agent::start(&master, root.path(), "node1", None)?;

    master.wait_agent("node1", "pending", false)?;
    let out = master.console(&["agents", "accept", "node1"], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    master.wait_agent("node1", "accepted", true)?;

    let config = client_config(
        root.path(),
        "prod",
        &master.url(),
        "someone@foo.net",
        "s3cr3t-pass",
        &master.ca(),
    )?;
    let out = corpus(&config, &["listhosts", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let host = &hosts[0];
    assert_eq!(host["id"], "node1");
    assert_eq!(host["connected"], true);
    assert_eq!(host["slots_total"], 4);
    assert_eq!(host["slots_free"], 4);
    assert_eq!(host["guest_type"], "dir");
    // The agent runs as root, so it confines project states at least by uid (Landlock where
    // the kernel has it).
    let isolation = host["isolation"].as_str().unwrap_or_default().to_owned();
    assert!(["landlock", "uid"].contains(&isolation.as_str()), "{host}");

    let text = corpus(&config, &["listhosts", "prod"])?;
    let text = String::from_utf8(text.stdout)?;
    assert!(
        text.contains("node1")
            && text.contains("connected")
            && text.contains("ISOLATION")
            && text.contains(&isolation),
        "{text}"
    );
    drop(agent);
    Ok(())
}

#[test]
fn plaintext_clients_and_clients_not_trusting_the_ca_cannot_connect() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;

    // Plaintext HTTP/2 against the TLS port.
    let rt = runtime()?;
    let plaintext = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", master.addr))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await;
        match channel {
            Err(_) => anyhow::Ok(true),
            Ok(channel) => Ok(ClientClient::new(channel)
                .login(LoginRequest {
                    id: "alice".into(),
                    password: "correct horse".into(),
                })
                .await
                .is_err()),
        }
    })?;
    assert!(plaintext, "a plaintext client got an answer");

    // The `corpus` client refuses http:// outright.
    let config = client_config(
        root.path(),
        "p",
        &format!("http://{}", master.addr),
        "alice",
        "correct horse",
        &master.ca(),
    )?;
    let out = corpus(&config, &["listhosts"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use https://"));

    // A client trusting another CA refuses the master's certificate.
    let (other_ca, _, _) = foreign_identity("x")?;
    let other_ca_path = root.path().join("other-ca.crt");
    std::fs::write(&other_ca_path, other_ca)?;
    let config = client_config(
        root.path(),
        "p",
        &master.url(),
        "alice",
        "correct horse",
        &other_ca_path,
    )?;
    let out = corpus(&config, &["listhosts"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    Ok(())
}

#[test]
fn an_agent_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let token = master.token("10m")?;
    let mut agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;

    let (_, cert, key) = foreign_identity("node1")?;
    let rt = runtime()?;
    let refused = rt.block_on(attach_as(
        &master.url(),
        &master.ca_pem()?,
        Some((&cert, &key)),
        "node1",
    ))?;
    assert!(
        refused.is_some(),
        "a foreign certificate opened the agent stream"
    );

    // The genuine certificate still works (once the agent itself is gone: a second
    // connection of a connected agent is refused as a possible clone, see tenancy.rs).
    agent.proc.kill();
    master.wait_agent("node1", "accepted", false)?;
    let agent_dir = root.path().join("agent-node1");
    let (cert, key) = (
        std::fs::read_to_string(agent_dir.join("agent.crt"))?,
        std::fs::read_to_string(agent_dir.join("agent.key"))?,
    );
    let opened = rt.block_on(attach_as(
        &master.url(),
        &master.ca_pem()?,
        Some((&cert, &key)),
        "node1",
    ))?;
    assert_eq!(opened, None);
    Ok(())
}

#[test]
fn a_pending_agent_cannot_open_the_stream() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let agent = Agent::start(&master, root.path(), "node1", None)?;
    master.wait_agent("node1", "pending", false)?;
    assert!(!agent.state_dir.join("agent.crt").exists());

    let rt = runtime()?;
    let code = rt.block_on(attach_as(&master.url(), &master.ca_pem()?, None, "node1"))?;
    assert_eq!(code, Some(Code::Unauthenticated));
    // Still pending and never connected, however long it polls.
    assert_eq!(master.agent("node1")?.context("node1")?["connected"], false);
    Ok(())
}

#[test]
fn rejected_and_deleted_agents_are_refused_on_their_next_connect() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let rt = runtime()?;
    let ca = master.ca_pem()?;

    // Rejected: the link is closed and the certificate no longer opens the stream.
    let token = master.token("10m")?;
    let mut rejected = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    let (cert, key) = rejected.identity()?;
    let out = master.console(&["agents", "reject", "node1"], None)?;
    assert!(out.status.success());
    master.wait_agent("node1", "rejected", false)?;
    let code = rt.block_on(attach_as(&master.url(), &ca, Some((&cert, &key)), "node1"))?;
    assert_eq!(code, Some(Code::PermissionDenied));
    rejected.proc.kill();

    // Deleted: the link of the connected agent is closed; its old certificate is refused.
    let token = master.token("10m")?;
    let deleted = Agent::start(&master, root.path(), "node2", Some(&token))?;
    master.wait_agent("node2", "accepted", true)?;
    let (cert, key) = deleted.identity()?;
    let out = master.console(&["agents", "delete", "node2"], None)?;
    assert!(out.status.success());
    // Like a Salt minion whose key was deleted, the agent enrolls again and waits.
    master.wait_agent("node2", "pending", false)?;
    let code = rt.block_on(attach_as(&master.url(), &ca, Some((&cert, &key)), "node2"))?;
    assert_eq!(code, Some(Code::PermissionDenied));
    wait_until("the agent to log that it enrolls again", || {
        Ok(deleted.proc.log_text().contains("enrolling again"))
    })?;
    Ok(())
}

#[test]
fn an_enrollment_token_works_once_and_not_after_its_ttl() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;

    let token = master.token("10m")?;
    let _first = Agent::start(&master, root.path(), "first", Some(&token))?;
    master.wait_agent("first", "accepted", true)?;
    let _second = Agent::start(&master, root.path(), "second", Some(&token))?;
    master.wait_agent("second", "pending", false)?;

    let expiring = master.console_json(&["tokens", "create", "--ttl", "1s"])?;
    let token = expiring["token"].as_str().context("token")?.to_owned();
    let expires_at = expiring["expires_at"].as_i64().context("expires_at")?;
    wait_until("the token's expiry time to pass", || {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            > expires_at)
    })?;
    let late = Agent::start(&master, root.path(), "late", Some(&token))?;
    master.wait_agent("late", "pending", false)?;
    wait_until("the agent to report the refused token", || {
        Ok(late
            .proc
            .log_text()
            .contains("invalid, expired or already used"))
    })?;
    Ok(())
}

#[test]
fn wrong_passwords_get_a_clear_error_and_are_rate_limited() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;
    let wrong = client_config(
        root.path(),
        "m",
        &master.url(),
        "alice",
        "wrong password",
        &master.ca(),
    )?;
    let right = client_config(
        root.path(),
        "m",
        &master.url(),
        "alice",
        "correct horse",
        &master.ca(),
    )?;

    let out = corpus(&wrong, &["listhosts"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid id or password"), "{err}");
    assert!(
        !err.contains("wrong password"),
        "the password leaked: {err}"
    );

    let mut limited = false;
    for _ in 0..10 {
        let out = corpus(&wrong, &["listhosts"])?;
        if String::from_utf8_lossy(&out.stderr).contains("too many failed logins") {
            limited = true;
            break;
        }
    }
    assert!(limited, "repeated failures were never rate-limited");
    // Locked out even with the right password for now.
    let out = corpus(&right, &["listhosts"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many failed logins"));
    // The password never reaches the master's log.
    assert!(!master.proc.log_text().contains("wrong password"));
    Ok(())
}

#[test]
fn listhosts_names_the_config_file_and_its_problem() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let missing = root.path().join("nope.conf");
    let out = corpus(&missing, &["listhosts"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );

    // A directory cannot be read as a file (tests run as root, so modes do not stop reads).
    let unreadable = root.path().join("dir.conf");
    std::fs::create_dir(&unreadable)?;
    let err = String::from_utf8(corpus(&unreadable, &["listhosts"])?.stderr)?;
    assert!(
        err.contains(&unreadable.display().to_string()) && err.contains("cannot be read"),
        "{err}"
    );

    let malformed = root.path().join("bad.conf");
    std::fs::write(
        &malformed,
        "prod: {url: https://x, id: a, password: [sekrit\n",
    )?;
    let err = String::from_utf8(corpus(&malformed, &["listhosts"])?.stderr)?;
    assert!(
        err.contains(&malformed.display().to_string()) && err.contains("malformed"),
        "{err}"
    );
    assert!(err.contains("line"), "{err}");
    assert!(!err.contains("sekrit"), "{err}");
    Ok(())
}

#[test]
fn an_agent_survives_a_master_restart_without_operator_action() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut master = Master::start(root.path())?;
    let token = master.token("10m")?;
    let agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;

    let addr = master.addr.clone();
    let data_dir = master.data_dir.clone();
    master.proc.kill();
    wait_until("the agent to notice the master is gone", || {
        Ok(agent.proc.log_text().contains("reconnecting"))
    })?;
    let master = Master::serve(&data_dir, &addr)?;
    master.wait_agent("node1", "accepted", true)?;
    Ok(())
}

#[test]
fn sigterm_stops_the_master_gracefully_and_removes_its_socket() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut master = Master::start(root.path())?;
    let token = master.token("10m")?;
    let _agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    let socket = master.data_dir.join("admin.sock");
    assert!(socket.exists());

    master.proc.signal(libc::SIGTERM);
    let mut status = None;
    wait_until("the master to exit", || {
        status = master.proc.child.try_wait()?;
        Ok(status.is_some())
    })?;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    assert!(!socket.exists());
    Ok(())
}

#[test]
fn init_refuses_to_overwrite_a_ca_and_console_needs_a_running_master() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("m");
    let init = |force: bool| {
        let mut cmd = std::process::Command::new(corpus_tests::bin("corpus-master"));
        cmd.args(["init", "--data-dir"]).arg(&dir);
        if force {
            cmd.arg("--force");
        }
        cmd.output()
    };
    assert!(init(false)?.status.success());
    let ca = std::fs::read(dir.join("pki/ca.crt"))?;
    let out = init(false)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(dir.join("pki/ca.crt"))?, ca);

    let out = std::process::Command::new(corpus_tests::bin("corpus-master"))
        .args(["agents", "list", "--data-dir"])
        .arg(&dir)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("no master is running") {
        bail!("unexpected error: {err}");
    }
    Ok(())
}

#[test]
fn an_agent_rejected_while_its_hello_is_awaited_does_not_get_a_link() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let token = master.token("10m")?;
    let mut agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    let (cert, key) = agent.identity()?;
    agent.proc.kill();
    master.wait_agent("node1", "accepted", false)?;

    // Multi-threaded: the attach runs while this thread waits on the master's log.
    corpus_runtime::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ca = master.ca_pem()?;
    let log_before = master.proc.log_text();
    let code = rt.block_on(async {
        let channel = corpus_runtime::tls::dial(&master.url(), &ca, Some((&cert, &key))).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
        let attach = tokio::spawn(async move {
            AgentLinkClient::new(channel)
                .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // The master has authenticated the certificate and now waits for the Hello; the
        // operator rejects the agent in that window.
        let awaiting = |log: &str| log.matches("awaiting its hello").count();
        let before = awaiting(&log_before);
        wait_until("the master to await the hello", || {
            Ok(awaiting(&master.proc.log_text()) > before)
        })?;
        let out = master.console(&["agents", "reject", "node1"], None)?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(Hello {
                grains: Some(Grains {
                    id: "node1".into(),
                    ..Default::default()
                }),
                unacknowledged: vec![],
                running_jobs: vec![],
            })),
        };
        tx.send(hello).await?;
        let result = attach.await?;
        anyhow::Ok(match result {
            Err(status) => Some(status.code()),
            Ok(mut stream) => stream.get_mut().message().await.err().map(|s| s.code()),
        })
    })?;
    assert_eq!(code, Some(Code::PermissionDenied));
    assert_eq!(master.agent("node1")?.context("node1")?["connected"], false);
    assert_eq!(
        master.agent("node1")?.context("node1")?["status"],
        "rejected"
    );
    Ok(())
}

#[test]
fn a_token_holder_takes_over_an_id_a_squatter_left_pending() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    // Anyone may enroll any id without a token: it only ever waits.
    let squat_root = root.path().join("squatter");
    let _squatter = Agent::start(&master, &squat_root, "node1", None)?;
    master.wait_agent("node1", "pending", false)?;
    let squatter_fp = master.agent("node1")?.context("node1")?["fingerprint"].clone();

    let token = master.token("10m")?;
    let real = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    assert!(real.state_dir.join("agent.crt").exists());
    assert!(!squat_root.join("agent-node1/agent.crt").exists());
    assert_ne!(
        master.agent("node1")?.context("node1")?["fingerprint"],
        squatter_fp
    );
    Ok(())
}
