//! Hostile pushes (issue 10): a source whose templates or YAML ask for unbounded memory or time
//! is refused with a message naming the limit and the file, and the master keeps serving.

use corpus_tests::{Cluster, sample_project};

#[test]
fn bombs_in_a_source_are_refused_naming_the_limit_and_the_master_keeps_serving()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let staging = cluster.init_env("staging")?;
    let doubling = format!(
        "{{% set s = 'x' * 1000000 %}}\n{}ok:\n  cmd.run:\n    - name: echo {{{{ s|length }}}}\n",
        "{% set s = s ~ s %}\n".repeat(40)
    );
    let fan_out = format!(
        "a: &a [{}]\nb: [{}]\n",
        vec!["x"; 20_000].join(", "),
        vec!["*a"; 20_000].join(", ")
    );
    let deep = format!("a: {}{}\n", "[".repeat(5_000), "]".repeat(5_000));
    let cases = [
        (doubling.as_str(), "over the limit of 16777216 bytes"),
        (fan_out.as_str(), "more than 1000000 nodes"),
        (deep.as_str(), "over the limit of 64 levels"),
    ];
    for (n, (build, limit)) in cases.iter().enumerate() {
        let source = cluster.root.path().join(format!("src{n}"));
        sample_project(&source, "v1", &[("build.sls", build)])?;
        let started = std::time::Instant::now();
        let out = cluster.push(&staging, "app", &source, &[])?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "case {n} was accepted");
        assert!(stderr.contains(limit), "case {n}: {stderr}");
        assert!(stderr.contains("build.sls"), "case {n}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "case {n} took {:?}",
            started.elapsed()
        );
    }
    assert!(!cluster.project_dir(&staging, "app").exists());
    // The master survived all of it: an ordinary push deploys.
    let source = cluster.root.path().join("sane");
    sample_project(&source, "v1", &[])?;
    let out = cluster.push(&staging, "app", &source, &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
