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
