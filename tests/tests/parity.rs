//! Parity with Salt itself: every tree under `tests/fixtures/parity/` is run by the real
//! `salt-call --local` (Salt 3008.3, from `CORPUS_SALT_CALL`) and by `corpus-agent apply --local`,
//! and the two must agree on the plan (state keys in run order), on test-mode results (result and
//! whether there are changes) and, unless the fixture has a `test-only` marker, on a real apply
//! (results, and every file left under the output root with its content, mode and owner).
//!
//! Layout of a fixture: `salt/` (file root, with its own `top.sls`), `pillar/` (optional `.sls`
//! files without a top: the harness writes one that includes them all plus `paths`, which sets
//! `root` to the output directory), `seed/` (optional files copied into the output root before each
//! run), `setup` (optional shell script run after the seeding, with `OUT` naming the output root
//! and `SRC` an emptied sources directory beside it, given to the states as pillar `src`: it
//! makes the git repositories, archives and wheels that `git.latest`, `archive.extracted` and
//! `pip.installed` take, offline), `observe` (optional script whose output after a real apply is
//! compared too, for what lies outside the root such as a crontab), `teardown` (optional script
//! run once the fixture is compared, even when it failed, removing what `setup` made outside
//! the sandbox) and `test-only` (optional marker: states that change the host,
//! e.g. `pkg` or `user`, are compared in test mode only). A git work tree under the output root
//! is compared by its files, its `HEAD` commit and branch, not by the contents of `.git`.
//!
//! Without Salt the suite is ignored with the reason (see `tests/build.rs`); under `CI=true` a
//! missing `CORPUS_SALT_CALL` fails `parity_suite_is_enabled_in_ci` instead of skipping.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Fixtures run on this many threads to keep the suite short (about a minute on two cores).
const THREADS: usize = 4;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/parity")
}

/// CI must run the parity suite: a missing `CORPUS_SALT_CALL` under `CI=true` is a failure.
#[test]
fn parity_suite_is_enabled_in_ci() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let enabled = cfg!(salt_parity);
    assert!(
        !in_ci || enabled,
        "CI=true but CORPUS_SALT_CALL was not set when the tests were built: .ci/run installs \
         Salt 3008.3 and exports it; run it through .ci/run"
    );
}

/// The fixture set is large enough to cover every item of issue 11.
#[test]
fn parity_fixture_set_has_at_least_25_trees() -> anyhow::Result<()> {
    let fixtures = list_fixtures()?;
    assert!(fixtures.len() >= 25, "{} fixtures", fixtures.len());
    for dir in &fixtures {
        assert!(
            dir.join("salt/top.sls").is_file(),
            "{} has no salt/top.sls",
            dir.display()
        );
    }
    Ok(())
}

#[test]
#[cfg_attr(
    not(salt_parity),
    ignore = "needs Salt 3008.3: set CORPUS_SALT_CALL to a salt-call when building the tests (.ci/run does)"
)]
fn corpus_matches_salt_call_on_every_parity_fixture() -> anyhow::Result<()> {
    let salt_call = PathBuf::from(
        std::env::var_os("CORPUS_SALT_CALL")
            .context("CORPUS_SALT_CALL is not set: point it at a salt-call 3008.3")?,
    );
    // `CORPUS_PARITY_ONLY=a,b` runs only those fixtures (while working on them).
    let only = std::env::var("CORPUS_PARITY_ONLY").unwrap_or_default();
    let fixtures: Vec<PathBuf> = list_fixtures()?
        .into_iter()
        .filter(|dir| {
            only.is_empty()
                || dir
                    .file_name()
                    .is_some_and(|name| only.split(',').any(|o| name == o))
        })
        .collect();
    // Threads take the next fixture from a shared queue, so a slow one (the virtualenvs)
    // does not hold back a fixed share of the others; fixtures with a `setup` (the slowest:
    // they build their sources) go first.
    let mut fixtures = fixtures;
    fixtures.sort_by_key(|dir| !dir.join("setup").is_file());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut report = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (salt_call, fixtures, next) = (&salt_call, &fixtures, &next);
                scope.spawn(move || {
                    let mut results = Vec::new();
                    while let Some(dir) =
                        fixtures.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                        let name = name.unwrap_or_default();
                        results.push(match compare_fixture(salt_call, dir) {
                            Ok(diffs) => (name, diffs),
                            Err(err) => (name, vec![format!("harness error: {err:#}")]),
                        });
                    }
                    results
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(results) => report.extend(results),
                Err(_) => report.push(("?".to_string(), vec!["thread panicked".to_string()])),
            }
        }
    });
    report.sort();
    let failures: Vec<String> = report
        .iter()
        .filter(|(_, diffs)| !diffs.is_empty())
        .map(|(name, diffs)| format!("{name}:\n  {}", diffs.join("\n  ")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from Salt:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n")
    );
    Ok(())
}

fn list_fixtures() -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(fixtures_dir()).context("cannot read tests/fixtures/parity")? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// One fixture's sandbox: a pillar tree (shared by both tools), an output root (emptied and
/// seeded before each run) and Salt's config and cache dirs.
struct Sandbox {
    dir: tempfile::TempDir,
    fixture: PathBuf,
}

impl Sandbox {
    fn new(fixture: &Path) -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir()?;
        let pillar = dir.path().join("pillar");
        fs::create_dir(&pillar)?;
        let mut top = String::from("base:\n  '*':\n    - paths\n");
        let fixture_pillar = fixture.join("pillar");
        if fixture_pillar.is_dir() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&fixture_pillar)? {
                let entry = entry?;
                fs::copy(entry.path(), pillar.join(entry.file_name()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(".sls") {
                    names.push(stem.to_string());
                }
            }
            names.sort();
            for name in names {
                top.push_str(&format!("    - {name}\n"));
            }
        }
        fs::write(pillar.join("top.sls"), top)?;
        let out = dir.path().join("out");
        let src = dir.path().join("src");
        fs::write(
            pillar.join("paths.sls"),
            format!("root: {}\nsrc: {}\n", out.display(), src.display()),
        )?;
        let conf = dir.path().join("conf");
        fs::create_dir(&conf)?;
        let salt_root = dir.path().join("salt-root");
        fs::write(
            conf.join("minion"),
            format!(
                "id: web1\nfile_client: local\nroot_dir: {root}\ncachedir: {root}/cache\n\
                 log_file: {root}/minion.log\nlog_level_logfile: warning\n\
                 file_roots:\n  base:\n    - {salt}\npillar_roots:\n  base:\n    - {pillar}\n",
                root = salt_root.display(),
                salt = fixture.join("salt").display(),
                pillar = pillar.display(),
            ),
        )?;
        Ok(Sandbox {
            dir,
            fixture: fixture.to_path_buf(),
        })
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Empties the output root and the sources directory, copies the fixture's `seed/` into
    /// the root and runs its `setup`.
    fn reset_out(&self) -> anyhow::Result<()> {
        let (out, src) = (self.out(), self.dir.path().join("src"));
        for dir in [&out, &src] {
            if dir.exists() {
                fs::remove_dir_all(dir)?;
            }
            fs::create_dir(dir)?;
        }
        let seed = self.fixture.join("seed");
        if seed.is_dir() {
            copy_tree(&seed, &out)?;
        }
        self.script("setup")?;
        Ok(())
    }

    /// Runs the fixture's `script` (`setup`, `observe` or `teardown`) if it has one: its output.
    fn script(&self, script: &str) -> anyhow::Result<String> {
        let path = self.fixture.join(script);
        if !path.is_file() {
            return Ok(String::new());
        }
        fs::create_dir_all(self.dir.path().join("src"))?;
        let run = Command::new("sh")
            .arg("-eu")
            .arg(&path)
            .env("OUT", self.out())
            .env("SRC", self.dir.path().join("src"))
            .current_dir(self.dir.path().join("src"))
            .output()
            .context("cannot run sh")?;
        if !run.status.success() {
            bail!(
                "{} failed: {}",
                path.display(),
                String::from_utf8_lossy(&run.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&run.stdout).into_owned())
    }

    /// The files left under the output root and what the fixture's `observe` prints.
    fn observed(&self) -> anyhow::Result<Vec<String>> {
        let mut seen = snapshot(&self.out())?;
        seen.extend(
            self.script("observe")?
                .lines()
                .map(|line| format!("observe: {line}")),
        );
        Ok(seen)
    }

    fn salt(&self, salt_call: &Path, test: bool) -> anyhow::Result<Value> {
        self.reset_out()?;
        let mut cmd = Command::new(salt_call);
        cmd.arg("--local")
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .args(["state.apply", "--out", "json"]);
        if test {
            cmd.arg("test=True");
        }
        let out = cmd.output().context("cannot run salt-call")?;
        parse_results("salt-call", &out.stdout, &out.stderr)
    }

    fn corpus(&self, test: bool) -> anyhow::Result<Value> {
        self.reset_out()?;
        let mut cmd = Command::new(corpus_tests::bin("corpus-agent"));
        cmd.arg("apply")
            .arg("--local")
            .arg("--file-root")
            .arg(self.fixture.join("salt"))
            .arg("--pillar-root")
            .arg(self.dir.path().join("pillar"))
            .args(["--id", "web1", "--out", "json"]);
        if test {
            cmd.arg("--test");
        }
        let out = cmd.output().context("cannot run corpus-agent")?;
        parse_results("corpus-agent", &out.stdout, &out.stderr)
    }
}

/// The `local` results of a JSON run; a render failure (Salt prints a list of errors) becomes
/// the string `render error` so that both tools failing to render compares equal.
fn parse_results(tool: &str, stdout: &[u8], stderr: &[u8]) -> anyhow::Result<Value> {
    let Ok(json) = serde_json::from_slice::<Value>(stdout) else {
        return Ok(Value::String(format!(
            "render error (no JSON from {tool}): {}",
            String::from_utf8_lossy(stderr).lines().last().unwrap_or("")
        )));
    };
    match &json["local"] {
        Value::Object(_) => Ok(json["local"].clone()),
        Value::Null => bail!("{tool} printed JSON without `local`: {json}"),
        other => Ok(Value::String(format!("render error: {other}"))),
    }
}

/// What is compared of a run: state keys in run order, each with its result and whether it
/// changed anything.
fn outcome(results: &Value) -> Vec<String> {
    // Both tools refusing the tree (render or compile error) is parity, whatever they print.
    let Some(map) = results.as_object() else {
        return vec!["render error".to_string()];
    };
    let mut states: Vec<(i64, String)> = map
        .iter()
        .map(|(key, r)| {
            let changed = r["changes"].as_object().is_some_and(|c| !c.is_empty());
            (
                r["__run_num__"].as_i64().unwrap_or(-1),
                format!("{key} result={} changed={changed}", r["result"]),
            )
        })
        .collect();
    states.sort();
    states.into_iter().map(|(_, s)| s).collect()
}

/// Runs a fixture's `teardown` when its comparison ends, however it ends.
struct Teardown<'a>(&'a Sandbox);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.script("teardown") {
            eprintln!("{err:#}");
        }
    }
}

fn compare_fixture(salt_call: &Path, fixture: &Path) -> anyhow::Result<Vec<String>> {
    let sandbox = Sandbox::new(fixture)?;
    let _teardown = Teardown(&sandbox);
    let mut diffs = Vec::new();
    let salt_test = sandbox.salt(salt_call, true)?;
    let corpus_test = sandbox.corpus(true)?;
    diff_lists(
        "test mode",
        &outcome(&salt_test),
        &outcome(&corpus_test),
        &mut diffs,
    );
    if !fixture.join("test-only").exists() {
        let salt_real = sandbox.salt(salt_call, false)?;
        let salt_files = sandbox.observed()?;
        let corpus_real = sandbox.corpus(false)?;
        let corpus_files = sandbox.observed()?;
        diff_lists(
            "apply",
            &outcome(&salt_real),
            &outcome(&corpus_real),
            &mut diffs,
        );
        diff_lists("files", &salt_files, &corpus_files, &mut diffs);
    }
    Ok(diffs)
}

fn diff_lists(what: &str, salt: &[String], corpus: &[String], diffs: &mut Vec<String>) {
    if salt != corpus {
        diffs.push(format!(
            "{what}: salt vs corpus\n    salt:   {}\n    corpus: {}",
            salt.join("\n            "),
            corpus.join("\n            ")
        ));
    }
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Every path under `root`, sorted: relative path, mode, owner and (for files) the content,
/// (for links) the target with `root` written as `ROOT`; a `.git` directory is written as its
/// work tree's `HEAD` commit and branch (its other files hold times and fetch records).
fn snapshot(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.display().to_string();
            let mode = meta.mode() & 0o7777;
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?.display().to_string();
                out.push(format!(
                    "{rel} -> {}",
                    target.replace(&root.display().to_string(), "ROOT")
                ));
            } else if meta.is_dir() && path.file_name().is_some_and(|n| n == ".git") {
                out.push(format!("{rel} {}", git_head(&dir)?));
            } else if meta.is_dir() {
                out.push(format!("{rel}/ {mode:o} {owner}"));
                stack.push(path);
            } else {
                let content = fs::read_to_string(&path)?;
                out.push(format!("{rel} {mode:o} {owner} {content:?}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The commit a work tree is at, its branch (`detached` when none) and the branch it tracks.
fn git_head(work_tree: &Path) -> anyhow::Result<String> {
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(work_tree)
            .args(args)
            .output()
            .context("cannot run git")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "--short", "HEAD"])?;
    let branch = if branch.is_empty() {
        "detached".to_string()
    } else {
        branch
    };
    let upstream = git(&[
        "for-each-ref",
        "--format=%(upstream:short)",
        &format!("refs/heads/{branch}"),
    ])?;
    Ok(format!("HEAD={head} branch={branch} upstream={upstream}"))
}
