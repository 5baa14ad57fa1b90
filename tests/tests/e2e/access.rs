//! Network and access hardening (issue 10) at the boundary an attacker meets: idle TCP
//! connections that never start TLS, login floods and guessing from one source, and the
//! operator's access management. All on loopback, where every 127/8 address is local: the
//! attacker binds 127.0.0.2 (or .3), the real user connects from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use corpus_proto::LoginRequest;
use corpus_proto::client_client::ClientClient;
use corpus_tests::{Agent, Master, client_config, corpus};
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    corpus_runtime::install_crypto_provider();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A TLS channel to the master from the local address `source`.
async fn channel_from(master_url: &str, ca_pem: &str, source: IpAddr) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    Ok(Endpoint::from_shared(master_url.to_owned())?
        .tls_config(tls)?
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

async fn login(channel: Channel, id: &str, password: &str) -> Result<String, tonic::Status> {
    ClientClient::new(channel)
        .login(LoginRequest {
            id: id.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map(|r| r.into_inner().token)
}

/// A plain TCP connection from `source` that never says a word.
async fn idle_connection(
    source: IpAddr,
    master: SocketAddr,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket.connect(master).await?)
}

#[test]
fn idle_connections_that_never_start_tls_do_not_stop_logins_agents_or_the_console()
-> anyhow::Result<()> {
    const IDLE: usize = 1_100;
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;
    let addr: SocketAddr = master.addr.parse()?;
    let rt = runtime()?;

    // 1,100 connections from one source, opened before anyone else comes.
    let started = Instant::now();
    let closed_after = rt.block_on(async {
        let mut waits = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            let mut stream = idle_connection(ATTACKER, addr).await?;
            waits.push(tokio::spawn(async move {
                let mut byte = [0u8; 1];
                // EOF or reset: the master closed it. Bounded so a bug fails, not hangs.
                let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut byte)).await;
                started.elapsed()
            }));
        }
        anyhow::Ok(waits)
    })?;

    // While they are held: a real login, an agent's enrollment and attach, the console.
    let login_started = Instant::now();
    let config = client_config(
        root.path(),
        "m",
        &master.url(),
        "alice",
        "correct horse",
        &master.ca(),
    )?;
    let out = corpus(&config, &["listhosts"])?;
    anyhow::ensure!(
        out.status.success(),
        "login failed under the idle flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let login_took = login_started.elapsed();
    let token = master.token("10m")?;
    let attach_started = Instant::now();
    let _agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    let attach_took = attach_started.elapsed();
    let out = master.console(&["users", "list"], None)?;
    anyhow::ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("alice"),
        "console failed under the idle flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every idle connection is closed: the excess at once, the rest at the handshake timeout.
    let mut closed: Vec<Duration> = rt.block_on(async {
        let mut all = Vec::with_capacity(IDLE);
        for wait in closed_after {
            all.push(wait.await?);
        }
        anyhow::Ok(all)
    })?;
    closed.sort();
    let at_once = closed
        .iter()
        .filter(|d| **d < Duration::from_secs(5))
        .count();
    let last = closed.last().copied().unwrap_or_default();
    println!(
        "{IDLE} idle connections from one source: {at_once} closed at once, the rest by {:.1} s; \
         meanwhile a login (CLI process) took {:.2} s, an agent's enrollment and attach {:.2} s",
        last.as_secs_f64(),
        login_took.as_secs_f64(),
        attach_took.as_secs_f64()
    );
    assert!(
        last < Duration::from_secs(59),
        "an idle connection was still open after {last:?}"
    );
    assert!(
        at_once >= IDLE - 64,
        "only {at_once} of {IDLE} idle connections were closed at once"
    );
    assert!(
        closed
            .iter()
            .filter(|d| **d >= Duration::from_secs(9))
            .count()
            > 0,
        "no connection waited for the handshake timeout: the per-source limit let none in"
    );
    Ok(())
}

#[test]
fn a_login_flood_from_one_source_is_refused_and_does_not_stop_a_real_login() -> anyhow::Result<()> {
    const FLOOD: usize = 800;
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;
    let ca_pem = master.ca_pem()?;
    let url = master.url();
    let rt = runtime()?;

    let flood = rt.block_on(async {
        let mut calls = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            // 8 connections, 100 logins in flight on each.
            if i % 100 == 0 {
                calls.push(None);
            }
            calls.push(Some(i));
        }
        let mut handles = Vec::with_capacity(FLOOD);
        let mut channel = None;
        for call in calls {
            match call {
                None => channel = Some(channel_from(&url, &ca_pem, ATTACKER).await?),
                Some(i) => {
                    let channel = channel.clone().context("no channel")?;
                    handles.push(tokio::spawn(async move {
                        login(channel, &format!("random{i}"), "guessed password").await
                    }));
                }
            }
        }
        anyhow::Ok(handles)
    })?;

    // The real user, from 127.0.0.1, while the flood is in flight.
    let config = client_config(
        root.path(),
        "m",
        &url,
        "alice",
        "correct horse",
        &master.ca(),
    )?;
    let started = Instant::now();
    let out = corpus(&config, &["listhosts"])?;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "the real login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let results = rt.block_on(async {
        let mut all = Vec::with_capacity(FLOOD);
        for handle in flood {
            all.push(handle.await?);
        }
        anyhow::Ok(all)
    })?;
    let refused: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() == Code::ResourceExhausted)
        .collect();
    let verified = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    println!(
        "{FLOOD} bogus logins from one source: {} refused at once, {verified} verified and \
         wrong; a real login from another source took {:.2} s (CLI process included)",
        refused.len(),
        took.as_secs_f64()
    );
    assert!(
        results.iter().all(|r| r.is_err()),
        "a bogus login succeeded"
    );
    assert!(
        refused.len() >= FLOOD / 2,
        "only {} of {FLOOD} flood logins were refused",
        refused.len()
    );
    let message = refused.first().map(|s| s.message()).unwrap_or_default();
    assert!(
        message.starts_with("too many logins from 127.0.0.2") && message.contains("retry in"),
        "{message}"
    );
    Ok(())
}

#[test]
fn guessing_from_one_source_cannot_lock_the_user_out() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;
    let ca_pem = master.ca_pem()?;
    let url = master.url();
    let rt = runtime()?;

    let attacker_saw = rt.block_on(async {
        let channel = channel_from(&url, &ca_pem, ATTACKER).await?;
        let mut last = None;
        for _ in 0..12 {
            last = login(channel.clone(), "alice", "guess").await.err();
        }
        // Even the right password is throttled from the attacker's address...
        let right = login(channel, "alice", "correct horse").await.err();
        anyhow::Ok((last, right))
    })?;
    let (last, right) = attacker_saw;
    for status in [&last, &right] {
        let message = status.as_ref().map(|s| s.message()).unwrap_or_default();
        assert!(
            message.contains("too many failed logins for \"alice\" from 127.0.0.2"),
            "{message}"
        );
    }

    // ...but alice, from her own address, logs in at once.
    let config = client_config(
        root.path(),
        "m",
        &url,
        "alice",
        "correct horse",
        &master.ca(),
    )?;
    let out = corpus(&config, &["listhosts"])?;
    assert!(
        out.status.success(),
        "alice was locked out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a console command that must succeed; its standard output.
fn console_ok(master: &Master, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let out = master.console(args, stdin)?;
    anyhow::ensure!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn logins_of(master: &Master, user: &str) -> usize {
    master
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("user logged in") && l.contains(&format!("user={user}")))
        .count()
}

#[test]
fn the_cli_caches_its_session_and_logout_ends_it() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    master.add_user("alice", "correct horse")?;
    let config = client_config(
        root.path(),
        "m",
        &master.url(),
        "alice",
        "correct horse",
        &master.ca(),
    )?;
    let cache_dir = corpus_tests::session_cache_dir(&config);

    for _ in 0..3 {
        let out = corpus(&config, &["listhosts"])?;
        anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(logins_of(&master, "alice"), 1, "every command logged in");
    let files: Vec<_> = std::fs::read_dir(&cache_dir)?.collect::<Result<_, _>>()?;
    assert_eq!(files.len(), 1);
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&cache_dir)?, 0o700);
    assert_eq!(mode(&files[0].path())?, 0o600);
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(files[0].path())?)?;
    let token = cached["token"]
        .as_str()
        .context("no token cached")?
        .to_owned();

    // The console lists the session by a short id, never its token.
    let listed = console_ok(
        &master,
        &["sessions", "list", "--user", "alice", "--json"],
        None,
    )?;
    assert!(!listed.contains(&token), "the token was listed");
    let sessions: serde_json::Value = serde_json::from_str(&listed)?;
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    assert_eq!(sessions[0]["user"], "alice");
    assert_eq!(sessions[0]["source"], "127.0.0.1");
    let id = sessions[0]["id"]
        .as_str()
        .context("no session id")?
        .to_owned();
    assert_eq!(id.len(), 12);
    assert!(
        !master.proc.log_text().contains(&token),
        "the token was logged"
    );

    // Revoked on the master: the next command logs in again by itself.
    let out = console_ok(&master, &["sessions", "revoke", &id], None)?;
    assert!(out.contains("1 session(s)"), "{out}");
    let out = corpus(&config, &["listhosts"])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(logins_of(&master, "alice"), 2);

    // Logout ends the session on the master and removes the cache file.
    let out = corpus(&config, &["logout"])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged out of m"));
    assert_eq!(std::fs::read_dir(&cache_dir)?.count(), 0);
    let listed = console_ok(&master, &["sessions", "list", "--json"], None)?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed)?,
        serde_json::json!([])
    );
    let out = corpus(&config, &["logout"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("not logged in"));
    Ok(())
}

#[test]
fn operators_disable_delete_and_reset_users_and_revoke_grants() -> anyhow::Result<()> {
    let cluster = corpus_tests::Cluster::start()?;
    let master = &cluster.master;
    let root = cluster.root.path();
    master.add_user("bob", "bobs password")?;
    let bob = client_config(
        root,
        "local",
        &master.url(),
        "bob",
        "bobs password",
        &master.ca(),
    )?;
    let ok = |config: &std::path::Path, args: &[&str]| -> anyhow::Result<()> {
        let out = corpus(config, args)?;
        anyhow::ensure!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        Ok(())
    };

    // Grant, then revoke: bob loses the environment at once (his session stays).
    let env = cluster.init_env("dev")?;
    console_ok(master, &["envs", "grant", &env, "bob"], None)?;
    ok(&bob, &["status", "local", &env])?;
    let out = console_ok(master, &["envs", "revoke", &env, "bob"], None)?;
    assert!(out.contains("no longer shared with bob"), "{out}");
    let out = corpus(&bob, &["status", "local", &env])?;
    assert!(!out.status.success(), "bob still reaches the environment");
    let out = master.console(&["envs", "revoke", &env, "bob"], None)?;
    assert!(
        !out.status.success() && stderr(&out).contains("no grant"),
        "{}",
        stderr(&out)
    );

    // Disable: bob's session ends now and he cannot log in; enable gives access back.
    ok(&bob, &["listhosts"])?;
    console_ok(master, &["users", "disable", "bob"], None)?;
    let listed = console_ok(
        master,
        &["sessions", "list", "--user", "bob", "--json"],
        None,
    )?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed)?,
        serde_json::json!([])
    );
    let out = corpus(&bob, &["listhosts"])?;
    assert!(
        stderr(&out).contains("\"bob\" is disabled"),
        "{}",
        stderr(&out)
    );
    assert!(console_ok(master, &["users", "list"], None)?.contains("bob (disabled)"));
    console_ok(master, &["users", "enable", "bob"], None)?;
    ok(&bob, &["listhosts"])?;

    // A new password, read from standard input: the old one stops working.
    console_ok(
        master,
        &["users", "passwd", "bob"],
        Some("a new password\n"),
    )?;
    let out = corpus(&bob, &["listhosts"])?;
    assert!(
        stderr(&out).contains("invalid id or password"),
        "{}",
        stderr(&out)
    );
    let bob_new = client_config(
        root,
        "local",
        &master.url(),
        "bob",
        "a new password",
        &master.ca(),
    )?;
    ok(&bob_new, &["listhosts"])?;

    // Delete: bob's session ends; an owner of environments needs --force.
    console_ok(master, &["users", "delete", "bob"], None)?;
    let out = corpus(&bob_new, &["listhosts"])?;
    assert!(!out.status.success(), "a deleted user still works");
    let out = master.console(&["users", "delete", "dev@example.com"], None)?;
    assert!(
        !out.status.success() && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    console_ok(
        master,
        &["users", "delete", "dev@example.com", "--force"],
        None,
    )?;
    let out = cluster.corpus(&["listhosts"])?;
    assert!(!out.status.success(), "a deleted owner still works");

    // Revoking everyone's sessions.
    master.add_user("carol", "carols password")?;
    let carol = client_config(
        root,
        "local",
        &master.url(),
        "carol",
        "carols password",
        &master.ca(),
    )?;
    ok(&carol, &["listhosts"])?;
    let out = console_ok(master, &["sessions", "revoke", "--all"], None)?;
    assert!(out.contains("1 session(s) of every user ended"), "{out}");
    Ok(())
}
