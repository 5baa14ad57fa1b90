//! Issue 10, round 5: what a client leaves behind or loses when its access ends, with the real
//! binaries. A job stream (`corpus follow`, a push's updates) is cut when its session is
//! revoked or its user disabled or deleted, with a message saying which; and a push whose
//! client went away stops rendering soon, freeing the master's core.

use std::time::{Duration, Instant};

use anyhow::Context;
use corpus_proto::FollowRequest;
use corpus_proto::client_client::ClientClient;
use corpus_tests::{Cluster, sample_project, wait_until};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    corpus_runtime::install_crypto_provider();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn channel(cluster: &Cluster) -> anyhow::Result<Channel> {
    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cluster.master.ca_pem()?));
    Ok(Endpoint::from_shared(cluster.master.url())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// A `Follow` stream of the project's latest job, opened by `user` with a session of its own.
async fn follow(
    cluster: &Cluster,
    user: &str,
    password: &str,
    env: &str,
) -> anyhow::Result<tonic::Streaming<corpus_proto::JobUpdate>> {
    let mut client = ClientClient::new(channel(cluster).await?);
    let token = client
        .login(corpus_proto::LoginRequest {
            id: user.to_owned(),
            password: password.to_owned(),
        })
        .await?
        .into_inner()
        .token;
    let mut request = tonic::Request::new(FollowRequest {
        env_uuid: env.to_owned(),
        job_id: String::new(),
        project: "app".to_owned(),
        from_sequence: 0,
    });
    request.metadata_mut().insert(
        corpus_proto::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let mut stream = client.follow(request).await?.into_inner();
    // The stream is live: the job's first update arrives.
    stream
        .message()
        .await?
        .context("the follow stream ended at once")?;
    Ok(stream)
}

/// Reads `stream` until it fails (within 30 s); the status it failed with.
async fn cut_status(
    stream: &mut tonic::Streaming<corpus_proto::JobUpdate>,
) -> anyhow::Result<tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => anyhow::bail!("the stream was not cut within 30 s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => anyhow::bail!("the stream ended without an error"),
            Ok(Err(status)) => return Ok(status),
        }
    }
}

/// True when `stream` is still open after a short wait (no error, no end).
async fn still_open(stream: &mut tonic::Streaming<corpus_proto::JobUpdate>) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
            Err(_) => return true,
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return false,
        }
    }
}

fn console_ok(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = cluster.master.console(args, None)?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn open_job_streams_are_cut_when_their_session_or_user_ends() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    for user in ["bob", "carol", "dave"] {
        cluster.master.add_user(user, "a-long-password")?;
        console_ok(&cluster, &["envs", "grant", &env, user])?;
    }
    // A build that runs for a while, so the job's stream stays open.
    let source = cluster.root.path().join("src");
    let started = cluster.project_dir(&env, "app").join("data/started");
    let build = format!(
        "slow:\n  cmd.run:\n    - name: touch {} && sleep 120\n",
        started.display()
    );
    sample_project(&source, "v1", &[("build.sls", &build)])?;
    let path = source.display().to_string();
    let push = cluster.corpus_spawn(&["push", "local", &env, "app", "--path", &path])?;
    wait_until("the build to start", || Ok(started.exists())).with_context(|| {
        format!(
            "the push said: {}\nagent: {}",
            push.log_text(),
            cluster.agent.proc.log_text()
        )
    })?;

    let rt = runtime()?;
    rt.block_on(async {
        let mut dev = follow(&cluster, "dev@example.com", "a-long-password", &env).await?;
        let mut bob = follow(&cluster, "bob", "a-long-password", &env).await?;
        let mut carol = follow(&cluster, "carol", "a-long-password", &env).await?;
        let mut dave = follow(&cluster, "dave", "a-long-password", &env).await?;

        // `sessions revoke --user`: that user's stream ends, saying so; the others go on.
        console_ok(
            &cluster,
            &["sessions", "revoke", "--user", "dev@example.com"],
        )?;
        let status = cut_status(&mut dev).await?;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("session was revoked"),
            "{status:?}"
        );
        assert!(
            still_open(&mut bob).await,
            "bob's stream ended with dev's session"
        );
        assert!(
            still_open(&mut carol).await,
            "carol's stream ended with dev's session"
        );

        // `envs revoke ENV dave`: dave's session holds, but his stream of the environment ends,
        // saying so; the users still granted keep theirs.
        console_ok(&cluster, &["envs", "revoke", &env, "dave"])?;
        let status = cut_status(&mut dave).await?;
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status
                .message()
                .contains(&format!("access to environment {env} was revoked")),
            "{status:?}"
        );
        assert!(
            still_open(&mut bob).await,
            "bob's stream ended with dave's grant"
        );

        // A disabled user's stream ends, naming why.
        console_ok(&cluster, &["users", "disable", "bob"])?;
        let status = cut_status(&mut bob).await?;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("\"bob\" was disabled"),
            "{status:?}"
        );
        assert!(
            still_open(&mut carol).await,
            "carol's stream ended with bob's"
        );

        // And a deleted user's.
        console_ok(&cluster, &["users", "delete", "carol"])?;
        let status = cut_status(&mut carol).await?;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("\"carol\" was deleted"),
            "{status:?}"
        );
        anyhow::Ok(())
    })?;
    let log = cluster.master.proc.log_text();
    assert!(
        log.contains("job stream closed"),
        "the master did not log the cuts"
    );
    Ok(())
}

/// Renders for hours unless cancelled: a million iterations that each build a 4 MB string,
/// within the template's fuel and memory limits. The size depends on the loop variable, so the
/// template compiler cannot fold the string into one constant built once (it did: the render
/// then took 0.3 s and ended before its client was killed).
const ENDLESS_RENDER: &str = "{% for i in range(1000) %}{% for j in range(1000) %}{% set s = 'x' * (4000000 + j) %}{% endfor %}{% endfor %}\nnoop:\n  test.nop: []\n";

#[test]
fn a_push_whose_client_goes_away_mid_render_frees_the_master_soon() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let env = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[("build.sls", ENDLESS_RENDER)])?;
    let path = source.display().to_string();
    let mut push = cluster.corpus_spawn(&["push", "local", &env, "app", "--path", &path])?;
    wait_until("the master to start rendering the push", || {
        Ok(cluster.master.proc.log_text().contains("push received"))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    push.kill();
    let gone = Instant::now();

    // The bound: the render ends within 60 s of its client going away (it would otherwise run
    // for hours). How soon it did is printed, not asserted.
    let bound = Duration::from_secs(60);
    let ended = loop {
        let log = cluster.master.proc.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("push render ended")) {
            break line.to_owned();
        }
        anyhow::ensure!(
            gone.elapsed() < bound,
            "the render still runs {bound:?} after its client went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "the render ended {} ms after its client went away: {ended}",
        gone.elapsed().as_millis()
    );
    assert!(ended.contains("cancelled=true"), "{ended}");
    // Nothing was recorded: the project does not exist.
    let out = cluster.corpus(&["status", "local", &env, "app", "--json"])?;
    assert!(
        !out.status.success(),
        "a cancelled push left a project behind"
    );
    Ok(())
}
