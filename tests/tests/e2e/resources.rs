//! Resources and enrollment under attack (issue 10): refused pushes leave no upload, storage
//! ceilings only operators raise, squatted agent ids flagged and accepted only by key, new
//! pending agents limited per source address. Real master, agents and CLI.

use std::path::Path;

use anyhow::Context;
use corpus_tests::{Agent, Cluster, Master, bin, sample_project};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The complete blobs the master stores (uploads in progress excluded).
fn stored_blobs(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(data_dir.join("blobs"))? {
        let shard = shard?;
        if shard.file_name() == "tmp" || !shard.path().is_dir() {
            continue;
        }
        for blob in std::fs::read_dir(shard.path())? {
            found.push(blob?.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(found)
}

#[test]
fn a_refused_push_leaves_no_upload_and_only_operators_raise_the_storage_ceiling()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let staging = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    sample_project(&source, "v1", &[("build.sls", "broken: [yaml\n")])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(!out.status.success(), "a broken source was accepted");
    assert_eq!(
        stored_blobs(&cluster.master.data_dir)?,
        Vec::<String>::new()
    );

    sample_project(&source, "v2", &[])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    // Its source, and the release the cooking deploy uploaded.
    let stored = stored_blobs(&cluster.master.data_dir)?;
    assert!(!stored.is_empty());

    // Users may lower their quota, not raise it past the ceiling an operator set.
    let out = cluster.corpus(&["trim", "local", &staging, "app", "1G"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.corpus(&["enlarge", "local", &staging, "app", "100G"])?;
    assert!(
        !out.status.success(),
        "a quota past the ceiling was granted"
    );
    assert!(
        stderr(&out).contains("ceiling of dev@example.com is 20000000000 bytes"),
        "{}",
        stderr(&out)
    );

    // An operator lowers the user's ceiling below what is stored: the next push is refused
    // with the figures, and leaves nothing behind.
    let out = cluster.master.console(
        &["users", "set", "dev@example.com", "--max-storage", "100"],
        None,
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    sample_project(&source, "v3", &[])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(
        !out.status.success(),
        "a push past the ceiling was accepted"
    );
    assert!(
        stderr(&out).contains("storage ceiling of 100 bytes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stored_blobs(&cluster.master.data_dir)?.len(), stored.len());
    Ok(())
}

fn agent_fingerprint(state_dir: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin("corpus-agent"))
        .arg("fingerprint")
        .arg("--state-dir")
        .arg(state_dir)
        .output()?;
    anyhow::ensure!(out.status.success(), "fingerprint: {}", stderr(&out));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn a_squatted_id_is_flagged_and_accepted_only_by_the_key_the_operator_checked() -> anyhow::Result<()>
{
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let squat_root = root.path().join("squatter");
    let mut squatter = Agent::start(&master, &squat_root, "node1", None)?;
    master.wait_agent("node1", "pending", false)?;
    let squatter_fp = agent_fingerprint(&squatter.state_dir)?;
    let listed = master.agent("node1")?.context("node1")?;
    assert_eq!(listed["key_fingerprint"], squatter_fp.as_str());
    assert_eq!(listed["address"], "127.0.0.1");

    // The real machine enrolls the same id with its own key: refused, and the id is flagged.
    let real = Agent::start(&master, root.path(), "node1", None)?;
    corpus_tests::wait_until("the real agent's key", || {
        Ok(real.state_dir.join("agent.csr").exists())
    })?;
    let real_fp = agent_fingerprint(&real.state_dir)?;
    assert_ne!(real_fp, squatter_fp);
    corpus_tests::wait_until("the id to be flagged", || {
        Ok(master.agent("node1")?.is_some_and(|a| {
            a["conflicting_keys"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k == real_fp.as_str()))
        }))
    })?;
    let out = master.console(&["agents", "list"], None)?;
    assert!(
        stderr(&out).contains("warning: agent id node1 was tried by 1 other key"),
        "{}",
        stderr(&out)
    );

    // Accepting it blind is refused; so is the other key's fingerprint.
    let out = master.console(&["agents", "accept", "node1"], None)?;
    assert!(!out.status.success(), "a flagged id was accepted blind");
    assert!(stderr(&out).contains("tried by 2 keys"), "{}", stderr(&out));
    let out = master.console(
        &["agents", "accept", "node1", "--fingerprint", &real_fp],
        None,
    )?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("agents delete node1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        master.agent("node1")?.context("node1")?["status"],
        "pending"
    );

    // The operator deletes the squatter's record; the real agent enrolls again and is accepted
    // by the fingerprint read on its machine.
    squatter.proc.kill();
    let out = master.console(&["agents", "delete", "node1"], None)?;
    assert!(out.status.success(), "{}", stderr(&out));
    corpus_tests::wait_until("the real agent to enroll again", || {
        Ok(master
            .agent("node1")?
            .is_some_and(|a| a["key_fingerprint"] == real_fp.as_str()))
    })?;
    let out = master.console(
        &["agents", "accept", "node1", "--fingerprint", &real_fp[..16]],
        None,
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    master.wait_agent("node1", "accepted", true)?;
    assert!(real.state_dir.join("agent.crt").exists());
    Ok(())
}

async fn enroll(
    master: &Master,
    id: &str,
    token: &str,
) -> anyhow::Result<Result<corpus_proto::EnrollResponse, tonic::Status>> {
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut params = params;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    let csr = params.serialize_request(&key)?.pem()?;
    let channel = corpus_runtime::tls::dial(&master.url(), &master.ca_pem()?, None).await?;
    let mut client = corpus_proto::enrollment_client::EnrollmentClient::new(channel);
    Ok(client
        .enroll(corpus_proto::EnrollRequest {
            agent_id: id.to_owned(),
            csr_pem: csr,
            token: token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner))
}

#[test]
fn new_pending_agents_are_limited_per_source_address_but_tokens_pass() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let master = Master::start(root.path())?;
    let token = master.token("10m")?;
    corpus_runtime::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for n in 0..10 {
            let response = enroll(&master, &format!("junk{n}"), "").await??;
            assert_eq!(response.status, corpus_proto::AgentStatus::Pending as i32);
        }
        let refused = match enroll(&master, "junk10", "").await? {
            Err(status) => status,
            Ok(_) => anyhow::bail!("an 11th new pending agent within a minute was recorded"),
        };
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("enrolled 10 new agents within a minute"),
            "{}",
            refused.message()
        );
        // A token-carrying enrollment proves itself: never refused by the flood.
        let accepted = enroll(&master, "real", &token).await??;
        assert_eq!(accepted.status, corpus_proto::AgentStatus::Accepted as i32);
        anyhow::Ok(())
    })?;
    assert!(master.agent("junk10")?.is_none());
    assert_eq!(master.agent("real")?.context("real")?["status"], "accepted");
    Ok(())
}

#[test]
fn escape_sequences_from_a_source_reach_the_terminal_escaped() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let staging = cluster.init_env("staging")?;
    let source = cluster.root.path().join("src");
    // A state id that would set the terminal's title and colour, and fails.
    let build = "\"boom\\e]0;owned\\a\\e[31m\":\n  cmd.run:\n    - name: \"false\"\n";
    sample_project(&source, "v1", &[("build.sls", build)])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(!out.status.success(), "a failing deploy succeeded");
    let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(
        !all.contains(&0x1b) && !all.contains(&0x07),
        "raw control characters reached the terminal: {}",
        String::from_utf8_lossy(&all)
    );
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("boom\\u{1b}]0;owned"), "{text}");
    Ok(())
}
