//! Salt's `pip.installed` and `virtualenv.managed` (Python's own `venv`). What pip would change
//! is asked of pip itself (`pip install --dry-run`), so version specifiers, requirement files
//! and indexes mean exactly what they mean to pip.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use corpus_states::Chunk;
use serde_json::{Map, Value, json};

use super::StateContext;
use super::accounts::{User, user_by_name};
use super::args::Args;
use super::result::Outcome;

/// Arguments of Salt's pip states corpus refuses, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    ("editable", "install the checkout with cmd.run"),
    ("env_vars", "use a cmd.run with env"),
    ("use_wheel", "pip decides by itself"),
    ("clear", "remove the virtualenv with file.absent first"),
];

fn refuse(chunk: &Chunk) -> Result<(), String> {
    for (arg, instead) in REFUSED {
        if chunk.args.get(*arg).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "argument `{arg}` of {}.{} is not supported by corpus: {instead}",
                chunk.module, chunk.function
            ));
        }
    }
    Ok(())
}

fn run(program: &Path, args: &[String], user: Option<&User>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid).env("HOME", &user.home);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("ERROR"))
            .unwrap_or_else(|| stderr.trim());
        Err(format!("{} failed: {reason}", program.display()))
    }
}

/// The pip to use: `bin_env` is a virtualenv directory or a pip executable; default `pip3`.
fn pip_binary(bin_env: Option<&str>) -> PathBuf {
    match bin_env {
        Some(env) if Path::new(env).is_dir() => Path::new(env).join("bin/pip"),
        Some(pip) => PathBuf::from(pip),
        None => PathBuf::from("pip3"),
    }
}

/// What `pip.installed` asks pip: specs plus index and requirement options.
struct PipRequest {
    pip: PathBuf,
    user: Option<User>,
    /// Options and specs after `pip install`.
    install_args: Vec<String>,
    /// Keeps a fetched requirements file alive while pip reads it.
    _requirements: Option<tempfile::NamedTempFile>,
}

impl PipRequest {
    fn from_args(
        args: &Args,
        specs: Vec<String>,
        bin_env: Option<&str>,
        ctx: &StateContext,
    ) -> Result<PipRequest, String> {
        let mut install_args: Vec<String> = Vec::new();
        for flag in ["no_index", "upgrade", "pre_releases"] {
            if args.bool(flag, false)? {
                install_args.push(format!(
                    "--{}",
                    flag.replace("pre_releases", "pre").replace('_', "-")
                ));
            }
        }
        for (key, option) in [
            ("index_url", "--index-url"),
            ("extra_index_url", "--extra-index-url"),
            ("find_links", "--find-links"),
        ] {
            for value in args.string_list(key)? {
                install_args.extend([option.to_string(), value]);
            }
        }
        let mut requirements = None;
        if let Some(source) = args.string("requirements")? {
            let bytes = ctx
                .sources
                .read(&source)?
                .ok_or_else(|| format!("requirements file {source} not found"))?;
            let mut file = tempfile::Builder::new()
                .prefix("corpus-requirements-")
                .suffix(".txt")
                .tempfile()
                .map_err(|e| format!("cannot create a temporary file: {e}"))?;
            file.write_all(&bytes)
                .map_err(|e| format!("cannot write a temporary file: {e}"))?;
            install_args.extend(["-r".to_string(), file.path().display().to_string()]);
            requirements = Some(file);
        }
        install_args.extend(specs);
        let user = args.string("user")?.map(|u| user_by_name(&u)).transpose()?;
        Ok(PipRequest {
            pip: pip_binary(bin_env),
            user,
            install_args,
            _requirements: requirements,
        })
    }

    /// What pip would install (`name-version` each); empty when everything is satisfied.
    fn would_install(&self) -> Result<Vec<String>, String> {
        let mut args = vec!["install".to_string(), "--dry-run".to_string()];
        args.extend(self.install_args.iter().cloned());
        let out = run(&self.pip, &args, self.user.as_ref())?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("Would install "))
            .flat_map(|l| l.split_whitespace().map(str::to_string))
            .collect())
    }

    fn install(&self) -> Result<(), String> {
        let mut args = vec!["install".to_string()];
        args.extend(self.install_args.iter().cloned());
        run(&self.pip, &args, self.user.as_ref()).map(|_| ())
    }
}

/// `pip.installed`: `name` (or `pkgs`, or `requirements`) is installed for `bin_env`.
pub fn installed(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk)?;
    let args = Args(&chunk.args);
    let specs = if args.raw("pkgs").is_some() {
        args.string_list("pkgs")?
    } else if args.raw("requirements").is_some() {
        Vec::new()
    } else {
        vec![chunk.name.clone()]
    };
    // Salt's older name for `bin_env`, used when `bin_env` is not given.
    let bin_env = match args.string("bin_env")? {
        Some(env) => Some(env),
        None => args.string("pip_bin")?,
    };
    let request = PipRequest::from_args(&args, specs, bin_env.as_deref(), ctx)?;
    let wanted = request.would_install()?;
    if wanted.is_empty() {
        return Ok(Outcome::ok(
            if args.raw("pkgs").is_none() && args.raw("requirements").is_none() {
                format!("Python package {} was already installed", chunk.name)
            } else {
                "All specified packages are already installed".to_string()
            },
        ));
    }
    if ctx.test {
        return Ok(Outcome::would_change(
            format!(
                "Python package(s) set to be installed: {}",
                wanted.join(", ")
            ),
            Map::new(),
        ));
    }
    request.install()?;
    let changes: Map<String, Value> = wanted
        .into_iter()
        .map(|p| (p, json!("Installed")))
        .collect();
    Ok(Outcome::changed(
        "All packages were successfully installed",
        changes,
    ))
}

/// `virtualenv.managed`: a virtualenv in `name` (created with `python -m venv`), with
/// `pip_pkgs` and `requirements` installed in it.
pub fn virtualenv_managed(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    refuse(chunk)?;
    let args = Args(&chunk.args);
    let name = &chunk.name;
    let venv = Path::new(name);
    if !venv.is_absolute() {
        return Err(format!("virtualenv {name} is not an absolute path"));
    }
    let exists = venv.join("bin/python").exists();
    let user = args.string("user")?.map(|u| user_by_name(&u)).transpose()?;
    let mut changes = Map::new();
    if !exists {
        if ctx.test {
            return Ok(Outcome::would_change(
                format!("Virtualenv {name} is set to be created"),
                Map::new(),
            ));
        }
        let (program, create) = venv_command(&args, name)?;
        run(Path::new(&program), &create, user.as_ref())?;
        let version = Command::new(venv.join("bin/python"))
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        changes.insert("new".into(), json!(version));
    }
    let specs = args.string_list("pip_pkgs")?;
    if !specs.is_empty() || args.raw("requirements").is_some() {
        let request = PipRequest::from_args(&args, specs, Some(name), ctx)?;
        // A virtualenv about to be created in test mode returned above.
        let wanted = request.would_install()?;
        if !wanted.is_empty() {
            if ctx.test {
                return Ok(Outcome::would_change(
                    format!(
                        "Python package(s) set to be installed: {}",
                        wanted.join(", ")
                    ),
                    Map::new(),
                ));
            }
            request.install()?;
            changes.insert("packages".into(), json!({"new": wanted, "old": []}));
        }
    }
    if changes.is_empty() {
        return Ok(Outcome::ok("virtualenv exists"));
    }
    let comment = if exists {
        "virtualenv updated"
    } else {
        "Created new virtualenv"
    };
    Ok(Outcome::changed(comment, changes))
}

/// Whether `program` names a Python interpreter (`python`, `python3`, `/usr/bin/python3.11`).
fn is_python(program: &str) -> bool {
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.strip_prefix("python")
        .is_some_and(|version| version.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The command that creates the virtualenv `name`, chosen by `venv_bin` as Salt chooses it:
/// `venv` or an interpreter runs Python's venv module, anything else is a `virtualenv`
/// command. Without `venv_bin` corpus uses `python -m venv` (Salt would run `virtualenv`,
/// which a host often lacks).
fn venv_command(args: &Args, name: &str) -> Result<(String, Vec<String>), String> {
    let python = args.string("python")?.filter(|p| !p.trim().is_empty());
    let venv_bin = args.string("venv_bin")?;
    let system_site = args.bool("system_site_packages", false)?;
    let (program, mut create) = match venv_bin.as_deref() {
        None | Some("venv") => (
            python.unwrap_or_else(|| "python3".to_string()),
            vec!["-m".to_string(), "venv".to_string()],
        ),
        Some(interpreter) if is_python(interpreter) => {
            if python.is_some() {
                return Err(
                    "Pass the target interpreter either as `venv_bin` or as `python`, not both."
                        .to_string(),
                );
            }
            (
                interpreter.to_string(),
                vec!["-m".to_string(), "venv".to_string()],
            )
        }
        Some(virtualenv) => (
            virtualenv.to_string(),
            python
                .map(|p| format!("--python={p}"))
                .into_iter()
                .collect(),
        ),
    };
    if system_site {
        create.push("--system-site-packages".to_string());
    }
    create.push(name.to_string());
    Ok((program, create))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{FakeServices, chunk, ctx, sources};

    /// Writes a minimal wheel of `corpus-test-pip` 1.0 into `dir` with Python's zipfile (no
    /// index, no network, no build tools).
    fn build_wheel(dir: &Path) -> bool {
        let script = format!(
            "import zipfile\n\
             w = zipfile.ZipFile('{}/corpus_test_pip-1.0-py3-none-any.whl', 'w')\n\
             d = 'corpus_test_pip-1.0.dist-info/'\n\
             w.writestr('corpus_test_pip.py', 'X = 1\\n')\n\
             w.writestr(d + 'METADATA', 'Metadata-Version: 2.1\\nName: corpus-test-pip\\nVersion: 1.0\\n')\n\
             w.writestr(d + 'WHEEL', 'Wheel-Version: 1.0\\nGenerator: corpus\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n\
             w.writestr(d + 'RECORD', '')\n\
             w.close()\n",
            dir.display()
        );
        Command::new("python3")
            .args(["-c", &script])
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn a_virtualenv_is_created_and_a_package_installed_into_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let wheels = dir.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        // `.ci/run` installs python3: a host without it fails here rather than skipping.
        assert!(
            build_wheel(&wheels),
            "python3 is required by this test (apt install python3)"
        );
        let venv = dir.path().join("venv").display().to_string();
        let (src, svc) = (sources(dir.path(), Value::Null), FakeServices::default());
        let offline = json!({"no_index": true, "find_links": wheels.display().to_string()});
        let apply = |function: &str, name: &str, extra: Value, test: bool| {
            let mut args = offline.clone();
            if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
                a.extend(e.clone());
            }
            if let Some(a) = args.as_object_mut() {
                a.insert("name".into(), json!(name));
            }
            let c = chunk(function, "py", args);
            let ctx = ctx(test, &src, &svc);
            match function {
                "virtualenv.managed" => virtualenv_managed(&c, &ctx),
                _ => installed(&c, &ctx),
            }
            .unwrap_or_else(Outcome::fail)
        };
        assert_eq!(
            apply("virtualenv.managed", &venv, json!({}), true).result,
            None
        );
        let made = apply("virtualenv.managed", &venv, json!({}), false);
        assert_eq!(made.comment, "Created new virtualenv", "{:?}", made);
        assert!(
            made.changes["new"]
                .as_str()
                .is_some_and(|v| v.starts_with("Python 3"))
        );
        assert_eq!(
            apply("virtualenv.managed", &venv, json!({}), false).comment,
            "virtualenv exists"
        );

        let pkg = json!({"bin_env": venv});
        let would = apply("pip.installed", "corpus-test-pip==1.0", pkg.clone(), true);
        assert_eq!(would.result, None, "{}", would.comment);
        let done = apply("pip.installed", "corpus-test-pip==1.0", pkg.clone(), false);
        assert_eq!(
            done.changes["corpus-test-pip-1.0"],
            json!("Installed"),
            "{}",
            done.comment
        );
        let again = apply("pip.installed", "corpus-test-pip==1.0", pkg, false);
        assert_eq!(
            again.comment,
            "Python package corpus-test-pip==1.0 was already installed"
        );
        let refused = apply("pip.installed", "x", json!({"editable": "/src"}), false);
        assert!(
            refused
                .comment
                .starts_with("argument `editable` of pip.installed")
        );
    }

    #[test]
    fn venv_bin_chooses_the_command_as_salt_does() {
        let command = |args: Value| {
            let map = args.as_object().cloned().unwrap_or_default();
            venv_command(&Args(&map), "/srv/venv")
        };
        let module = |program: &str| {
            Ok((
                program.to_string(),
                vec!["-m".into(), "venv".into(), "/srv/venv".into()],
            ))
        };
        assert_eq!(command(json!({})), module("python3"));
        assert_eq!(command(json!({"venv_bin": "venv"})), module("python3"));
        assert_eq!(
            command(json!({"venv_bin": "venv", "python": "/usr/bin/python3.11"})),
            module("/usr/bin/python3.11")
        );
        assert_eq!(
            command(json!({"venv_bin": "/usr/bin/python3"})),
            module("/usr/bin/python3")
        );
        assert!(command(json!({"venv_bin": "python3", "python": "python3"})).is_err());
        assert_eq!(
            command(json!({"venv_bin": "/usr/bin/virtualenv", "python": "python3"})),
            Ok((
                "/usr/bin/virtualenv".to_string(),
                vec!["--python=python3".into(), "/srv/venv".into()]
            ))
        );
    }
}
