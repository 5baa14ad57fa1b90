//! `corpus-agent apply --local` on the Salt-syntax fixture tree in `tests/fixtures/apply`: the
//! first apply changes things, the second changes nothing, `--test` writes nothing, and a
//! failing state fails the run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::Context;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apply")
}

/// A temporary pillar tree: the fixture's pillar plus `paths.sls` pointing `root` at `out`.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir()?;
        let pillar = dir.path().join("pillar");
        fs::create_dir(&pillar)?;
        for entry in fs::read_dir(fixture().join("pillar"))? {
            let entry = entry?;
            fs::copy(entry.path(), pillar.join(entry.file_name()))?;
        }
        let out = dir.path().join("out");
        fs::write(
            pillar.join("paths.sls"),
            format!("root: {}\n", out.display()),
        )?;
        Ok(Sandbox { dir })
    }

    fn out(&self, rel: &str) -> PathBuf {
        self.dir.path().join("out").join(rel)
    }

    fn apply(&self, file_root: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let pillar = self.dir.path().join("pillar");
        let mut args = vec![
            "apply".to_string(),
            "--local".to_string(),
            "--file-root".to_string(),
            file_root.display().to_string(),
            "--pillar-root".to_string(),
            pillar.display().to_string(),
            "--id".to_string(),
            "web1".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(corpus_tests::bin("corpus-agent"))
            .args(&args)
            .output()
            .context("cannot run corpus-agent")
    }

    /// Applies with `--out json` and returns the exit code and the results by state key.
    fn apply_json(&self, file_root: &Path, extra: &[&str]) -> anyhow::Result<(i32, Value)> {
        let mut args = vec!["--out", "json"];
        args.extend_from_slice(extra);
        let out = self.apply(file_root, &args)?;
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code().unwrap_or(-1), json["local"].clone()))
    }
}

fn by_id<'a>(results: &'a Value, id: &str) -> &'a Value {
    results
        .as_object()
        .and_then(|m| m.values().find(|r| r["__id__"] == id))
        .unwrap_or(&Value::Null)
}

fn changed_ids(results: &Value) -> Vec<String> {
    let mut ids: Vec<String> = results
        .as_object()
        .map(|m| {
            m.values()
                .filter(|r| r["changes"].as_object().is_some_and(|c| !c.is_empty()))
                .filter_map(|r| r["__id__"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn apply_local_changes_then_reports_no_changes() -> anyhow::Result<()> {
    let sandbox = Sandbox::new()?;
    let root = fixture().join("salt");

    let (code, first) = sandbox.apply_json(&root, &[])?;
    assert_eq!(code, 0, "{first:#}");
    assert_eq!(first.as_object().map(|m| m.len()), Some(8), "{first:#}");
    assert_eq!(
        changed_ids(&first),
        [
            "app_conf",
            "build",
            "current",
            "index",
            "reload_on_change",
            "web_root"
        ]
    );
    assert!(
        first
            .as_object()
            .is_some_and(|m| m.values().all(|r| r["result"] == true))
    );
    assert_eq!(
        by_id(&first, "app_conf")["__run_num__"],
        0,
        "includes run first"
    );
    assert_eq!(by_id(&first, "index")["changes"]["diff"], "New file");
    assert_eq!(
        by_id(&first, "rollback")["comment"],
        "State was not run because onfail req did not change"
    );

    // The files Salt writes for this tree, byte for byte.
    assert_eq!(
        fs::read_to_string(sandbox.out("srv/web/index.html"))?,
        "<h1>Welcome to shop</h1>\n<ul>\n  <li>search</li>\n  <li>cart</li>\n</ul>\n"
    );
    assert_eq!(
        fs::read_to_string(sandbox.out("etc/app.conf"))?,
        "# managed by salt\nname = shop\nport = 8080\nhost = web1\n"
    );
    let mode = |rel: &str| -> anyhow::Result<u32> {
        Ok(fs::metadata(sandbox.out(rel))?.permissions().mode() & 0o7777)
    };
    assert_eq!(mode("etc/app.conf")?, 0o640);
    assert_eq!(mode("etc")?, 0o750);
    assert_eq!(mode("srv/web")?, 0o755);
    assert_eq!(
        fs::read_link(sandbox.out("srv/web/current"))?,
        sandbox.out("srv/web/index.html")
    );
    assert_eq!(fs::read_to_string(sandbox.out("reload.log"))?, "reloaded\n");
    assert!(!sandbox.out("rolled-back").exists());

    let (code, second) = sandbox.apply_json(&root, &[])?;
    assert_eq!(code, 0, "{second:#}");
    assert_eq!(changed_ids(&second), Vec::<String>::new(), "{second:#}");
    assert_eq!(fs::read_to_string(sandbox.out("reload.log"))?, "reloaded\n");

    // Drift is repaired and only the drifted file (and its onchanges hook) change.
    fs::write(sandbox.out("etc/app.conf"), "port = 1\n")?;
    let (code, third) = sandbox.apply_json(&root, &[])?;
    assert_eq!(code, 0);
    assert_eq!(changed_ids(&third), ["app_conf", "reload_on_change"]);
    let diff = by_id(&third, "app_conf")["changes"]["diff"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(diff.starts_with("--- \n+++ \n@@ "), "{diff}");
    assert!(diff.contains("-port = 1\n+# managed by salt\n"), "{diff}");

    // The text output ends with Salt's summary.
    let text = sandbox.apply(&root, &[])?;
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.starts_with("local:\n----------\n          ID: app_conf\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nSucceeded: 8 (changed=0)\nFailed:    0\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Total states run:     8\n"), "{stdout}");
    Ok(())
}

#[test]
fn apply_local_test_mode_writes_nothing() -> anyhow::Result<()> {
    let sandbox = Sandbox::new()?;
    let root = fixture().join("salt");
    let (code, results) = sandbox.apply_json(&root, &["--test"])?;
    assert_eq!(code, 0, "{results:#}");
    assert!(
        !sandbox.out("").exists(),
        "test mode created {}",
        sandbox.out("").display()
    );
    assert_eq!(by_id(&results, "index")["result"], Value::Null);
    assert_eq!(by_id(&results, "app_conf")["result"], Value::Null);
    assert_eq!(by_id(&results, "build")["result"], Value::Null);
    assert_eq!(
        by_id(&results, "build")["comment"],
        format!(
            "Command \"echo built > {}\" would have been executed",
            sandbox.out("srv/web/.built").display()
        )
    );
    let text = sandbox.apply(&root, &["--test"])?;
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("Succeeded: 8 (unchanged="), "{stdout}");
    assert!(!sandbox.out("").exists());

    // After a real apply, test mode finds nothing to do.
    sandbox.apply_json(&root, &[])?;
    let (code, after) = sandbox.apply_json(&root, &["--test"])?;
    assert_eq!(code, 0);
    assert!(
        after
            .as_object()
            .is_some_and(|m| m.values().all(|r| r["result"] == true)),
        "{after:#}"
    );
    Ok(())
}

#[test]
fn apply_local_fails_when_a_state_fails_and_names_the_requisite() -> anyhow::Result<()> {
    let sandbox = Sandbox::new()?;
    let tree = tempfile::tempdir()?;
    fs::write(tree.path().join("top.sls"), "base:\n  '*':\n    - broken\n")?;
    fs::write(
        tree.path().join("broken.sls"),
        "fails:\n  cmd.run:\n    - name: exit 4\n\n\
         after:\n  cmd.run:\n    - name: 'true'\n    - require:\n      - cmd: fails\n\n\
         cleanup:\n  cmd.run:\n    - name: echo cleaning\n    - onfail:\n      - cmd: fails\n",
    )?;
    let (code, results) = sandbox.apply_json(tree.path(), &[])?;
    assert_eq!(code, 2, "{results:#}");
    assert_eq!(by_id(&results, "fails")["changes"]["retcode"], 4);
    assert_eq!(by_id(&results, "after")["result"], false);
    assert_eq!(
        by_id(&results, "after")["comment"],
        "One or more requisite failed: broken.fails"
    );
    assert_eq!(by_id(&results, "cleanup")["result"], true);
    assert_eq!(by_id(&results, "cleanup")["changes"]["stdout"], "cleaning");

    // Render errors exit 1 and name the file.
    fs::write(
        tree.path().join("broken.sls"),
        "x:\n  cmd.run:\n    - name: {{ nope.missing }}\n",
    )?;
    let out = sandbox.apply(tree.path(), &[])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.sls"), "{stderr}");

    // Without --local the command explains where master-driven applies go.
    let out = std::process::Command::new(corpus_tests::bin("corpus-agent"))
        .args(["apply", "--file-root", "/nonexistent"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corpus push"));
    Ok(())
}

/// Every file, directory and link under `root`: relative path, mode, and content or target.
fn snapshot(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root)?.display().to_string();
            let meta = fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?.display().to_string();
                out.push(format!(
                    "{rel} -> {}",
                    target.replace(&root.display().to_string(), "ROOT")
                ));
            } else if meta.is_dir() {
                out.push(format!("{rel}/ {mode:o}"));
                stack.push(path);
            } else {
                out.push(format!("{rel} {mode:o} {:?}", fs::read_to_string(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parity check against Salt itself, with the parity suite (`parity.rs`): runs when the tests
/// were built with `CORPUS_SALT_CALL` naming a `salt-call` (`.ci/run` installs one); the fixture
/// is applied by both and the trees they write must be identical.
#[test]
#[cfg_attr(
    not(salt_parity),
    ignore = "needs Salt 3008.3: set CORPUS_SALT_CALL to a salt-call when building the tests (.ci/run does)"
)]
fn apply_local_writes_what_salt_writes() -> anyhow::Result<()> {
    let salt_call = std::env::var_os("CORPUS_SALT_CALL").context(
        "CORPUS_SALT_CALL is not set: point it at a salt-call (bench/apply/run.sh installs one)",
    )?;
    let corpus = Sandbox::new()?;
    let root = fixture().join("salt");
    let (code, results) = corpus.apply_json(&root, &[])?;
    assert_eq!(code, 0, "{results:#}");

    let salt = Sandbox::new()?;
    let conf = salt.dir.path().join("conf");
    fs::create_dir(&conf)?;
    fs::write(
        conf.join("minion"),
        format!(
            "id: web1\nfile_client: local\nroot_dir: {}\nfile_roots:\n  base:\n    - {}\npillar_roots:\n  base:\n    - {}\n",
            salt.dir.path().join("salt-root").display(),
            root.display(),
            salt.dir.path().join("pillar").display(),
        ),
    )?;
    let out = std::process::Command::new(salt_call)
        .arg("--local")
        .arg("-c")
        .arg(&conf)
        .args(["state.apply", "--out", "json"])
        .output()?;
    assert!(
        out.status.success(),
        "salt-call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&corpus.out(""))?, snapshot(&salt.out(""))?);
    Ok(())
}
