//! Salt's `pkg` and `pkgrepo` state modules on Debian-family hosts (apt and dpkg):
//! `pkg.installed`, `pkg.latest`, `pkg.removed`, `pkg.purged`, `pkgrepo.managed`,
//! `pkgrepo.absent`. Operator modules: they change the whole machine.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

/// Where Salt writes a repository line without `file:`.
const DEFAULT_SOURCES_LIST: &str = "/etc/apt/sources.list";

/// Arguments of Salt's pkg states corpus refuses, with what to do instead.
const REFUSED_PKG_ARGS: &[(&str, &str)] = &[
    (
        "sources",
        "publish the packages in a repository and use pkgrepo.managed",
    ),
    ("hold", "hold packages with a cmd.run of apt-mark hold"),
    (
        "skip_verify",
        "configure the repository with [trusted=yes] instead",
    ),
];

/// Arguments of `pkgrepo.managed` corpus refuses, with what to do instead.
const REFUSED_REPO_ARGS: &[(&str, &str)] = &[
    (
        "key_url",
        "install the key with file.managed under /etc/apt/keyrings and name it in [signed-by=...]",
    ),
    (
        "keyid",
        "install the key with file.managed under /etc/apt/keyrings and name it in [signed-by=...]",
    ),
    (
        "keyserver",
        "install the key with file.managed under /etc/apt/keyrings and name it in [signed-by=...]",
    ),
    (
        "gpgkey",
        "install the key with file.managed under /etc/apt/keyrings and name it in [signed-by=...]",
    ),
    ("ppa", "write the repository's deb line as the name"),
    (
        "dist",
        "write the whole deb line (with the suite) as the name",
    ),
    (
        "comps",
        "write the whole deb line (with the components) as the name",
    ),
    ("architectures", "write [arch=...] in the deb line"),
];

fn refuse(chunk: &Chunk, refused: &[(&str, &str)]) -> Result<(), String> {
    for (arg, instead) in refused {
        if chunk.args.get(*arg).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "argument `{arg}` of {}.{} is not supported by corpus: {instead}",
                chunk.module, chunk.function
            ));
        }
    }
    Ok(())
}

/// Runs a command without a shell; `Err` carries its output when it fails.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (pkg states need apt and dpkg)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            stderr.trim().lines().last().unwrap_or(stdout.trim())
        ))
    }
}

/// The installed version of `name`, `None` when it is not installed.
fn installed_version(name: &str) -> Option<String> {
    let out = run(
        "dpkg-query",
        &["-W", "-f=${db:Status-Status}\t${Version}", name],
    )
    .ok()?;
    let (status, version) = out.split_once('\t')?;
    (status == "installed").then(|| version.to_string())
}

/// Whether dpkg still knows `name` (installed, or removed with its configuration kept).
fn known_to_dpkg(name: &str) -> bool {
    run("dpkg-query", &["-W", "-f=${db:Status-Status}", name])
        .is_ok_and(|status| !status.is_empty() && status != "not-installed")
}

/// The version apt would install, `None` when no repository has the package.
fn candidate_version(name: &str) -> Option<String> {
    let out = run("apt-cache", &["policy", name]).ok()?;
    out.lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// `name` or `pkgs` (each a name or `{name: version}`), with `version` for a single name.
fn targets(chunk: &Chunk, args: &Args) -> Result<Vec<(String, Option<String>)>, String> {
    let Some(pkgs) = args.raw("pkgs") else {
        return Ok(vec![(chunk.name.clone(), args.string("version")?)]);
    };
    let Value::Array(items) = pkgs else {
        return Err("argument `pkgs` must be a list of names or name: version".to_string());
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::String(name) => out.push((name.clone(), None)),
            Value::Object(map) => {
                for (name, version) in map {
                    let version = super::args::scalar_to_string(version).filter(|v| !v.is_empty());
                    out.push((name.clone(), version));
                }
            }
            other => return Err(format!("argument `pkgs`: {other} is not a package name")),
        }
    }
    Ok(out)
}

fn apt_get(verb: &str, extra: &[String], packages: &[String]) -> Result<(), String> {
    let mut args: Vec<&str> = vec![
        "-y",
        "-q",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
        "Dpkg::Options::=--force-confdef",
        verb,
    ];
    args.extend(extra.iter().map(String::as_str));
    args.extend(packages.iter().map(String::as_str));
    run("apt-get", &args).map(|_| ())
}

fn refresh_all(args: &Args) -> Result<(), String> {
    if args.bool("refresh", false)? {
        run("apt-get", &["-q", "update"])?;
    }
    Ok(())
}

fn change_map(names: &[String], before: &[Option<String>]) -> Map<String, Value> {
    names
        .iter()
        .zip(before)
        .filter_map(|(name, old)| {
            let new = installed_version(name);
            (new != *old).then(|| {
                (
                    name.clone(),
                    json!({"old": old.clone().unwrap_or_default(), "new": new.unwrap_or_default()}),
                )
            })
        })
        .collect()
}

/// `pkg.installed`: the packages are installed (at `version` when given).
pub fn installed(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk, REFUSED_PKG_ARGS)?;
    let args = Args(&chunk.args);
    let wanted: Vec<(String, Option<String>)> = targets(chunk, &args)?
        .into_iter()
        .filter(|(name, version)| match (installed_version(name), version) {
            (None, _) => true,
            (Some(have), Some(want)) => have != *want,
            (Some(_), None) => false,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Outcome::ok("All specified packages are already installed"));
    }
    let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "The following packages would be installed/updated: {}",
                names.join(", ")
            ),
            Map::new(),
        ));
    }
    refresh_all(&args)?;
    let specs: Vec<String> = wanted
        .iter()
        .map(|(name, version)| match version {
            Some(v) => format!("{name}={v}"),
            None => name.clone(),
        })
        .collect();
    let before: Vec<Option<String>> = names.iter().map(|n| installed_version(n)).collect();
    let mut extra = vec!["--allow-downgrades".to_string()];
    if let Some(repo) = args.string("fromrepo")? {
        extra.extend(["-t".to_string(), repo]);
    }
    apt_get("install", &extra, &specs)?;
    Ok(Outcome::changed(
        format!(
            "The following packages were installed/updated: {}",
            names.join(", ")
        ),
        change_map(&names, &before),
    ))
}

/// `pkg.latest`: the packages are installed at the newest version the repositories offer.
pub fn latest(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk, REFUSED_PKG_ARGS)?;
    let args = Args(&chunk.args);
    refresh_all(&args)?;
    let mut names = Vec::new();
    for (name, _) in targets(chunk, &args)? {
        let Some(candidate) = candidate_version(&name) else {
            return Ok(Outcome::fail(format!("No information found for '{name}'.")));
        };
        if installed_version(&name).as_deref() != Some(candidate.as_str()) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(Outcome::ok("All packages are up-to-date"));
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "The following packages would be installed/upgraded: {}",
                names.join(", ")
            ),
            Map::new(),
        ));
    }
    let before: Vec<Option<String>> = names.iter().map(|n| installed_version(n)).collect();
    apt_get("install", &[], &names)?;
    Ok(Outcome::changed(
        format!(
            "The following packages were successfully installed/upgraded: {}",
            names.join(", ")
        ),
        change_map(&names, &before),
    ))
}

/// `pkg.removed` (`purge` false) and `pkg.purged`: the packages are gone (purged: with their
/// configuration files).
pub fn removed(chunk: &Chunk, ctx: &StateContext, purge: bool) -> Result<Outcome, String> {
    refuse(chunk, REFUSED_PKG_ARGS)?;
    let args = Args(&chunk.args);
    let names: Vec<String> = targets(chunk, &args)?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            if purge {
                known_to_dpkg(name)
            } else {
                installed_version(name).is_some()
            }
        })
        .collect();
    let done = if purge { "purged" } else { "removed" };
    if names.is_empty() {
        return Ok(Outcome::ok("None of the targeted packages are installed"));
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "The following packages will be {done}: {}",
                names.join(", ")
            ),
            Map::new(),
        ));
    }
    let before: Vec<Option<String>> = names.iter().map(|n| installed_version(n)).collect();
    apt_get(if purge { "purge" } else { "remove" }, &[], &names)?;
    let mut changes = change_map(&names, &before);
    if purge {
        // A package removed earlier only loses its configuration: still a change.
        for name in &names {
            changes
                .entry(name.clone())
                .or_insert_with(|| json!({"old": "", "new": ""}));
        }
    }
    Ok(Outcome::changed(
        format!("All targeted packages were {done}."),
        changes,
    ))
}

/// Lines of a sources file, compared with runs of whitespace folded.
fn normalized(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sources_file(args: &Args) -> Result<String, String> {
    Ok(args
        .string("file")?
        .unwrap_or_else(|| DEFAULT_SOURCES_LIST.to_string()))
}

/// Re-reads the indexes of the one sources file `file`, leaving the other sources alone (fast,
/// and no network for a local repository).
fn refresh_one(file: &str) -> Result<(), String> {
    run(
        "apt-get",
        &[
            "-q",
            "update",
            "-o",
            &format!("Dir::Etc::sourcelist={file}"),
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
        ],
    )
    .map(|_| ())
}

/// `pkgrepo.managed`: the deb line `name` is in `file` (default `/etc/apt/sources.list`), and
/// apt has read it (`refresh`, default true).
pub fn repo_managed(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk, REFUSED_REPO_ARGS)?;
    let args = Args(&chunk.args);
    let name = &chunk.name;
    if !name.trim_start().starts_with("deb") {
        return Err(format!(
            "pkgrepo.managed name {name:?} is not a deb line: write `deb [options] URI suite [components]`"
        ));
    }
    let file = sources_file(&args)?;
    let existing = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {file}: {e}")),
    };
    let wanted = normalized(name);
    if existing.lines().any(|line| normalized(line) == wanted) {
        return Ok(Outcome::ok(format!(
            "Package repo '{name}' already configured"
        )));
    }
    let changes = Map::from_iter([("repo".to_string(), json!(name))]);
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "Package repo '{name}' would be configured. This may cause pkg states to behave differently than stated if this action is repeated without test=True, due to the differences in the configured repositories."
            ),
            changes,
        ));
    }
    if let Some(parent) = Path::new(&file).parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(name.trim());
    text.push('\n');
    fs::write(&file, text).map_err(|e| format!("cannot write {file}: {e}"))?;
    if args.bool("refresh", true)? && args.bool("refresh_db", true)? {
        refresh_one(&file)?;
    }
    Ok(Outcome::changed(
        format!("Configured package repo '{name}'"),
        changes,
    ))
}

/// `pkgrepo.absent`: the deb line `name` is in no line of `file`; a file left empty is removed.
pub fn repo_absent(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let file = sources_file(&args)?;
    let Ok(existing) = fs::read_to_string(&file) else {
        return Ok(Outcome::ok(format!("Package repo {name} is absent")));
    };
    let wanted = normalized(name);
    let kept: Vec<&str> = existing
        .lines()
        .filter(|line| normalized(line) != wanted)
        .collect();
    if kept.len() == existing.lines().count() {
        return Ok(Outcome::ok(format!("Package repo {name} is absent")));
    }
    let changes = Map::from_iter([("repo".to_string(), json!(name))]);
    if ctx.test {
        return Ok(Outcome::would_change(
            format!("Package repo '{name}' will be removed."),
            changes,
        ));
    }
    if kept.iter().all(|l| l.trim().is_empty()) && file != DEFAULT_SOURCES_LIST {
        fs::remove_file(&file).map_err(|e| format!("cannot remove {file}: {e}"))?;
    } else {
        let mut text = kept.join("\n");
        text.push('\n');
        fs::write(&file, text).map_err(|e| format!("cannot write {file}: {e}"))?;
    }
    Ok(Outcome::changed(format!("Removed repo {name}"), changes))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    /// A throwaway package published in a local apt repository; everything it put on the
    /// machine is removed on drop, also when the test fails.
    struct LocalRepo {
        package: String,
        dir: tempfile::TempDir,
        list_file: PathBuf,
    }

    impl LocalRepo {
        fn new() -> LocalRepo {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let suffix = format!("{:x}{:x}", std::process::id(), nanos);
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("repo")).unwrap();
            LocalRepo {
                package: format!("corpus-test-pkg-{suffix}"),
                list_file: PathBuf::from(format!(
                    "/etc/apt/sources.list.d/corpus-test-{suffix}.list"
                )),
                dir,
            }
        }

        fn repo(&self) -> PathBuf {
            self.dir.path().join("repo")
        }

        fn deb_line(&self) -> String {
            format!("deb [trusted=yes] file:{} ./", self.repo().display())
        }

        /// Builds `version` with `dpkg-deb` (a data file and a conffile) and rewrites the
        /// repository index to offer it.
        fn publish(&self, version: &str) {
            let root = self.dir.path().join(format!("build-{version}"));
            let conf = format!("etc/{}.conf", self.package);
            fs::create_dir_all(root.join("DEBIAN")).unwrap();
            fs::create_dir_all(root.join("etc")).unwrap();
            fs::write(root.join(&conf), format!("version={version}\n")).unwrap();
            fs::write(root.join("DEBIAN/conffiles"), format!("/{conf}\n")).unwrap();
            fs::write(
                root.join("DEBIAN/control"),
                format!(
                    "Package: {}\nVersion: {version}\nArchitecture: all\nMaintainer: corpus tests <root@localhost>\nDescription: corpus test package\n",
                    self.package
                ),
            )
            .unwrap();
            let deb_name = format!("{}_{version}_all.deb", self.package);
            let deb = self.repo().join(&deb_name);
            let built = Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&root)
                .arg(&deb)
                .output()
                .unwrap();
            assert!(built.status.success(), "{built:?}");
            let control = run("dpkg-deb", &["-f", &deb.display().to_string()]).unwrap();
            let bytes = fs::read(&deb).unwrap();
            let sha = run("sha256sum", &[&deb.display().to_string()]).unwrap();
            let sha = sha.split_whitespace().next().unwrap_or_default();
            // Only the newest version is offered, as a repository that upgraded would.
            let index = format!(
                "{}Filename: ./{deb_name}\nSize: {}\nSHA256: {sha}\n\n",
                control.trim_end().to_string() + "\n",
                bytes.len()
            );
            fs::write(self.repo().join("Packages"), index).unwrap();
        }
    }

    impl Drop for LocalRepo {
        fn drop(&mut self) {
            let _ = Command::new("dpkg")
                .args(["--purge", &self.package])
                .output();
            let _ = fs::remove_file(&self.list_file);
            // apt's cached index of the repository, named after its path.
            let mangled = self.repo().display().to_string().replace('/', "_");
            if let Ok(entries) = fs::read_dir("/var/lib/apt/lists") {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().contains(&mangled) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
    }

    fn apply(function: &str, name: &str, args: Value, test: bool) -> Outcome {
        let (src, svc) = (
            sources(Path::new("/"), Value::Null),
            FakeServices::default(),
        );
        let mut args = args;
        if let Some(map) = args.as_object_mut() {
            map.insert("name".into(), json!(name));
        }
        let c = chunk(function, "p", args);
        let ctx = ctx(test, &src, &svc);
        let result = match function {
            "pkg.installed" => installed(&c, &ctx),
            "pkg.latest" => latest(&c, &ctx),
            "pkg.removed" => removed(&c, &ctx, false),
            "pkg.purged" => removed(&c, &ctx, true),
            "pkgrepo.managed" => repo_managed(&c, &ctx),
            "pkgrepo.absent" => repo_absent(&c, &ctx),
            other => panic!("no {other}"),
        };
        result.unwrap_or_else(Outcome::fail)
    }

    #[test]
    fn a_real_package_is_installed_upgraded_removed_and_purged_from_a_local_repository() {
        // Debian's dpkg-deb: a host without it fails here rather than skipping.
        Command::new("dpkg-deb")
            .arg("--version")
            .output()
            .expect("dpkg-deb is required by this test (a Debian host)");
        let fx = LocalRepo::new();
        let pkg = fx.package.clone();
        let list = json!({"file": fx.list_file.display().to_string()});
        fx.publish("1.0");

        let repo = apply("pkgrepo.managed", &fx.deb_line(), list.clone(), true);
        assert_eq!(repo.result, None, "{}", repo.comment);
        assert!(!fx.list_file.exists());
        let repo = apply("pkgrepo.managed", &fx.deb_line(), list.clone(), false);
        assert_eq!(repo.result, Some(true), "{}", repo.comment);
        assert_eq!(repo.changes["repo"], json!(fx.deb_line()));
        let again = apply("pkgrepo.managed", &fx.deb_line(), list.clone(), false);
        assert!(again.changes.is_empty(), "{}", again.comment);

        let would = apply("pkg.installed", &pkg, json!({}), true);
        assert_eq!(would.result, None);
        assert_eq!(installed_version(&pkg), None);
        let install = apply("pkg.installed", &pkg, json!({}), false);
        assert_eq!(install.result, Some(true), "{}", install.comment);
        assert_eq!(install.changes[&pkg], json!({"old": "", "new": "1.0"}));
        let again = apply("pkg.installed", &pkg, json!({}), false);
        assert_eq!(
            again.comment,
            "All specified packages are already installed"
        );
        assert!(again.changes.is_empty());

        // A new version is published: pkg.latest upgrades to it.
        assert_eq!(
            apply("pkg.latest", &pkg, json!({}), false).comment,
            "All packages are up-to-date"
        );
        fx.publish("2.0");
        refresh_one(&fx.list_file.display().to_string()).unwrap();
        let upgrade = apply("pkg.latest", &pkg, json!({}), false);
        assert_eq!(upgrade.result, Some(true), "{}", upgrade.comment);
        assert_eq!(upgrade.changes[&pkg], json!({"old": "1.0", "new": "2.0"}));
        let pinned = apply("pkg.installed", &pkg, json!({"version": "2.0"}), false);
        assert!(pinned.changes.is_empty(), "{}", pinned.comment);

        // Removed keeps the configuration file; purged removes it too.
        let conf = PathBuf::from(format!("/etc/{pkg}.conf"));
        let remove = apply("pkg.removed", &pkg, json!({}), false);
        assert_eq!(
            remove.changes[&pkg],
            json!({"old": "2.0", "new": ""}),
            "{}",
            remove.comment
        );
        assert!(conf.exists());
        let again = apply("pkg.removed", &pkg, json!({}), false);
        assert!(again.changes.is_empty(), "{}", again.comment);
        let purge = apply("pkg.purged", &pkg, json!({}), false);
        assert_eq!(purge.result, Some(true), "{}", purge.comment);
        assert!(purge.changes.contains_key(&pkg));
        assert!(!conf.exists());
        assert!(
            apply("pkg.purged", &pkg, json!({}), false)
                .changes
                .is_empty()
        );

        let absent = apply("pkgrepo.absent", &fx.deb_line(), list, false);
        assert!(absent.changes.contains_key("repo"), "{}", absent.comment);
        assert!(!fx.list_file.exists());
    }

    #[test]
    fn unsupported_arguments_and_non_deb_lines_are_refused_by_name() {
        let out = apply("pkg.installed", "x", json!({"hold": true}), true);
        assert!(
            out.comment
                .starts_with("argument `hold` of pkg.installed is not supported"),
            "{}",
            out.comment
        );
        let out = apply(
            "pkgrepo.managed",
            "deb http://x ./",
            json!({"key_url": "http://k"}),
            true,
        );
        assert!(
            out.comment
                .starts_with("argument `key_url` of pkgrepo.managed"),
            "{}",
            out.comment
        );
        let out = apply("pkgrepo.managed", "ppa:x/y", json!({}), true);
        assert!(out.comment.contains("is not a deb line"), "{}", out.comment);
        let out = apply("pkg.latest", "corpus-no-such-package-xyz", json!({}), true);
        assert_eq!(out.result, Some(false));
        assert_eq!(
            out.comment,
            "No information found for 'corpus-no-such-package-xyz'."
        );
    }
}
