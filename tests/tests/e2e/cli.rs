//! `corpus`'s exit codes and its argument checks: 2 for what stops a command before any job
//! (bad arguments, configuration, connection), without contacting the master when the
//! arguments alone are wrong. Exit 1 for a job that did not succeed is asserted by the
//! lifecycle tests of failed and rolled-back pushes.

use corpus_tests::{client_config, corpus};

/// A client config whose master would be on a loopback port nothing listens on.
fn unreachable_config(root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ca = root.join("ca.crt");
    std::fs::write(&ca, "not read before the arguments are checked")?;
    client_config(
        root,
        "local",
        &format!("https://127.0.0.1:{port}"),
        "dev@example.com",
        "a-long-password",
        &ca,
    )
}

#[test]
fn a_bad_uuid_exits_2_without_contacting_the_master() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let config = unreachable_config(root.path())?;
    let out = corpus(&config, &["status", "local", "not-a-uuid"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"not-a-uuid\" is not a UUID"), "{err}");
    assert!(
        !err.contains("127.0.0.1") && !err.contains("ca.crt"),
        "{err}"
    );

    let out = corpus(&config, &["trim", "local", &uuid(), "app", "lots"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("size \"lots\" is invalid"), "{err}");
    Ok(())
}

#[test]
fn usage_configuration_and_connection_errors_exit_2() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let config = unreachable_config(root.path())?;
    let out = corpus(&config, &["status"])?;
    assert_eq!(out.status.code(), Some(2), "clap's usage error");

    let out = corpus(&root.path().join("missing.conf"), &["listhosts"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // Valid arguments: now the config is read, and its CA is not a certificate.
    let out = corpus(&config, &["status", "local", &uuid()])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = corpus(&config, &["--help"])?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("Exit status") && help.contains("rolled back"),
        "{help}"
    );
    Ok(())
}

fn uuid() -> String {
    "6f1c1a52-33a1-4a8e-9b9e-2f4b7d0c8e11".to_owned()
}
