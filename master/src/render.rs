//! Turning a push into plans: read `.salt/` out of the source archive, compile the pushed
//! pillar for the environment's agent, build the project's `common` mapping, and render every
//! lifecycle phase. Everything here fails before any job exists, naming the file and line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use corpus_pillar::{MemoryTree, PillarTree, defaults_chain};
use corpus_states::{Phase, ProjectPlan, ProjectSettings, StateTree, TemplateContext};
use serde_json::{Value, json};

use crate::store::{EnvironmentRecord, Grains, Mode};

/// Largest single file read out of `.salt/`.
const MAX_SALT_FILE: u64 = 4 * 1024 * 1024;
/// Largest `.salt/` read into the master's memory, in bytes and in files.
const MAX_SALT_BYTES: u64 = 64 * 1024 * 1024;
const MAX_SALT_FILES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "the project source has no .salt/ directory: corpus deploys need .salt/ with the lifecycle's SLS files (stop.sls, build.sls, start.sls, ...)"
    )]
    NoSalt,
    #[error("the project source is not a readable tar archive: {0}")]
    BadArchive(String),
    /// A file the renderer reads as text is not UTF-8: refused rather than skipped, since a
    /// skipped phase would deploy without it and report success.
    #[error(
        "{file} is not UTF-8 text (invalid byte at offset {offset}): save it as UTF-8 and push again; nothing was changed"
    )]
    NotUtf8 { file: String, offset: usize },
    #[error("{0}")]
    Pillar(String),
    /// The pushed pillar does not compile; the source says which file and line.
    #[error("pillar: {0}")]
    PushedPillar(#[source] Box<corpus_pillar::PillarError>),
    #[error(".salt/PILLAR.sample is invalid: {0}")]
    Sample(String),
    #[error("{0}")]
    State(String),
    /// A lifecycle phase (`.salt/<phase>.sls`) does not render or plan.
    #[error(".salt/{phase}.sls: {source}")]
    Phase {
        phase: String,
        #[source]
        source: Box<corpus_states::StateError>,
    },
}

/// Where in the pushed tree a render error is, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorLocation {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub state_id: Option<String>,
}

impl RenderError {
    /// The file, line and state id the error is about, for callers that show them apart from
    /// the message.
    pub fn location(&self) -> ErrorLocation {
        use corpus_pillar::PillarError;
        use corpus_states::StateError;
        let at = |file: &str, line: Option<usize>, state_id: Option<String>| ErrorLocation {
            file: Some(file.to_owned()),
            line,
            state_id,
        };
        match self {
            RenderError::NoSalt => at(".salt", None, None),
            RenderError::NotUtf8 { file, .. } => at(file, None, None),
            RenderError::Sample(_) => at(".salt/PILLAR.sample", None, None),
            RenderError::PushedPillar(e) => match e.as_ref() {
                PillarError::Render(r) => at(&r.file, r.line, None),
                PillarError::Yaml(y) => at(&y.file, y.line, None),
                PillarError::Invalid { file, .. } => at(file, None, None),
                _ => ErrorLocation::default(),
            },
            RenderError::Phase { phase, source } => {
                let location = match source.as_ref() {
                    StateError::Render { at, .. }
                    | StateError::Yaml { at, .. }
                    | StateError::Invalid { at, .. }
                    | StateError::UnknownModule { at, .. }
                    | StateError::UnknownFunction { at, .. }
                    | StateError::Dangling { at, .. } => Some(at),
                    _ => None,
                };
                match location {
                    Some(l) => at(&format!(".salt/{}", l.file), l.line, l.state.clone()),
                    None => at(&format!(".salt/{phase}.sls"), None, None),
                }
            }
            RenderError::BadArchive(_) | RenderError::Pillar(_) | RenderError::State(_) => {
                ErrorLocation::default()
            }
        }
    }
}

/// The files of the project's `.salt/` directory, paths relative to it.
pub fn read_salt_tree(archive: &Path) -> Result<BTreeMap<String, String>, RenderError> {
    let bad = |e: std::io::Error| RenderError::BadArchive(e.to_string());
    let mut file = std::fs::File::open(archive).map_err(bad)?;
    // The agent unpacks sources as plain tar only and refuses one that starts like a zstd
    // frame; refusing it here too keeps a tar/zstd polyglot from being checked as one thing and
    // unpacked as another.
    let mut magic = [0u8; 4];
    let read = std::io::Read::read(&mut file, &mut magic).map_err(bad)?;
    if read == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(RenderError::BadArchive(
            "the source starts like a zstd stream: push a plain tar".into(),
        ));
    }
    std::io::Seek::rewind(&mut file).map_err(bad)?;
    let mut tar = tar::Archive::new(file);
    let mut files = BTreeMap::new();
    let mut has_salt = false;
    let mut total = 0u64;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        let Some(rel) = path.strip_prefix(".salt/") else {
            has_salt |= path == ".salt";
            continue;
        };
        has_salt = true;
        if !entry.header().entry_type().is_file() || rel.is_empty() {
            continue;
        }
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(RenderError::BadArchive(format!("unsafe path .salt/{rel}")));
        }
        if entry.size() > MAX_SALT_FILE {
            return Err(RenderError::BadArchive(format!(
                ".salt/{rel} is larger than {MAX_SALT_FILE} bytes"
            )));
        }
        total += entry.size();
        if total > MAX_SALT_BYTES || files.len() >= MAX_SALT_FILES {
            return Err(RenderError::BadArchive(format!(
                ".salt/ is larger than {MAX_SALT_BYTES} bytes or {MAX_SALT_FILES} files"
            )));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad)?;
        match String::from_utf8(bytes) {
            Ok(text) => {
                files.insert(rel.to_owned(), text);
            }
            Err(e) if is_template(rel) => {
                return Err(RenderError::NotUtf8 {
                    file: format!(".salt/{rel}"),
                    offset: e.utf8_error().valid_up_to(),
                });
            }
            // Other files (images, archives a state ships) are never rendered: not needed here.
            Err(_) => {}
        }
    }
    if !has_salt {
        return Err(RenderError::NoSalt);
    }
    Ok(files)
}

/// Files the renderer reads as text: SLS, Jinja includes, YAML and the pillar sample.
fn is_template(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name == "PILLAR.sample"
        || [".sls", ".jinja", ".j2", ".yml", ".yaml"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

fn tree(files: &BTreeMap<String, String>) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for (path, text) in files {
        tree.insert(path, text);
    }
    tree
}

/// Compiles the pushed pillar for `agent`: a tree with `top.sls` is targeted like Salt's
/// pillar_roots; without one, every file applies, merged in name order.
pub fn compile_pillar(
    files: &BTreeMap<String, String>,
    agent: &str,
    grains: &Value,
    env: &Value,
) -> Result<Value, RenderError> {
    if files.is_empty() {
        return Ok(json!({}));
    }
    let mut files = files.clone();
    if !files.contains_key("top.sls") {
        let names: Vec<String> = files
            .keys()
            .filter_map(|f| f.strip_suffix(".sls").map(|n| n.replace('/', ".")))
            .collect();
        if names.len() != files.len() {
            return Err(RenderError::Pillar(
                "pillar files must end in .sls (or pass a directory with a top.sls)".into(),
            ));
        }
        let top = json!({"base": {"*": names}});
        files.insert(
            "top.sls".into(),
            serde_json::to_string(&top).unwrap_or_default(),
        );
    }
    PillarTree::new(Arc::new(tree(&files)))
        .compile(agent, grains, env)
        .map(|p| p.data)
        .map_err(|e| RenderError::PushedPillar(Box::new(e)))
}

/// What a deploy needs to know to build `common`.
pub struct DeployContext<'a> {
    pub project: &'a str,
    pub env: &'a EnvironmentRecord,
    pub mode: Mode,
    pub deploy_id: &'a str,
    pub commit: &'a str,
    pub grains: &'a Grains,
}

/// The rendered deploy: plans per phase, `common`, and the pillar templates see.
#[derive(Default)]
pub struct Rendered {
    pub plan: ProjectPlan,
    pub common: Value,
}

/// The project's settings from the pillar: `makina-projects.<name>` when present (the
/// makina-states convention, nested or as one flat key `makina-projects.<name>:` as
/// makina-states writes it), else the whole pillar.
fn project_settings(pillar: &Value, project: &str) -> Value {
    pillar
        .get("makina-projects")
        .and_then(|p| p.get(project))
        .or_else(|| pillar.get(format!("makina-projects.{project}")))
        .cloned()
        .unwrap_or_else(|| pillar.clone())
}

/// A YAML document that must be a mapping (or empty), as JSON.
pub fn yaml_mapping(text: &str) -> Result<Value, String> {
    let value = yaml_to_json(text)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err("expected a mapping of settings".to_owned())
    }
}

fn yaml_to_json(text: &str) -> Result<Value, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        e.location()
            .map(|l| format!("invalid YAML at line {}, column {}", l.line(), l.column()))
            .unwrap_or_else(|| "invalid YAML".to_owned())
    })?;
    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    Ok(if json.is_null() { json!({}) } else { json })
}

/// The environment's root on its agent: every path a project's states may touch is beneath it.
pub fn environment_root(env: &EnvironmentRecord, grains: &Grains) -> String {
    let root = if grains.root.is_empty() {
        "/srv/corpus"
    } else {
        grains.root.as_str()
    };
    format!("{root}/{}", env.uuid)
}

/// Builds `common` (PRODUCT.md's list) and renders every `.salt/<phase>.sls` there is.
pub fn render_project(
    salt: &BTreeMap<String, String>,
    pillar: &Value,
    ctx: &DeployContext<'_>,
) -> Result<Rendered, RenderError> {
    render_project_until(salt, pillar, ctx, &|| false).map(|rendered| rendered.unwrap_or_default())
}

/// [`render_project`], stopped between phases once `cancelled` says so (the push's client
/// went away): None then.
pub fn render_project_until(
    salt: &BTreeMap<String, String>,
    pillar: &Value,
    ctx: &DeployContext<'_>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Rendered>, RenderError> {
    let sample = match salt
        .get("PILLAR.sample")
        .or_else(|| salt.get("PILLAR.sample.sls"))
    {
        Some(text) => yaml_to_json(text).map_err(RenderError::Sample)?,
        None => json!({}),
    };
    let data = defaults_chain(
        sample,
        ctx.env.defaults.clone(),
        project_settings(pillar, ctx.project),
    );
    // A typo in a setting the agent acts on fails the push here, before any job exists.
    ProjectSettings::from_data(&data).map_err(|e| RenderError::Pillar(e.to_string()))?;
    let base = format!(
        "{}/srv/projects/{}",
        environment_root(ctx.env, ctx.grains),
        ctx.project
    );
    let user = data
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("root")
        .to_owned();
    let group = data
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or(&user)
        .to_owned();
    let mut common = json!({
        "name": ctx.project,
        "env": ctx.env.platform.as_str(),
        "env_uuid": ctx.env.uuid,
        "mode": ctx.mode.as_str(),
        "deploy_id": ctx.deploy_id,
        "commit": ctx.commit,
        "user": user,
        "group": group,
        "project_root": base,
        "project_dir": format!("{base}/project"),
        "pillar_dir": format!("{base}/pillar"),
        "data_dir": format!("{base}/data"),
        "build_dir": format!("{base}/build"),
        "run_dir": format!("{base}/run"),
        "deploy_dir": format!("{base}/deploy"),
        "releases_dir": format!("{base}/releases"),
        "archives_dir": format!("{base}/archives"),
        "data": data,
    });
    // The environment's identity on its agent (contract: uid, gid, user, group, ports, smep);
    // it replaces any `user`/`group` the settings name, since the states run as it.
    if let (Some(identity), Value::Object(map)) =
        (crate::environments::identity(ctx.env), &mut common)
    {
        map.extend(identity.common_fields());
    }
    let grains = ctx.grains.template_json();
    let context = TemplateContext::new(
        pillar.clone(),
        grains,
        common.clone(),
        json!(ctx.env.platform.as_str()),
    );
    let states = StateTree::new(Arc::new(tree(salt)));
    let mut plan = ProjectPlan::default();
    for phase in Phase::ALL {
        if !salt.contains_key(&phase.sls_file()) {
            continue;
        }
        if cancelled() {
            return Ok(None);
        }
        let rendered = states
            .render_sls(&[phase.as_str()], &context)
            .map_err(|source| RenderError::Phase {
                phase: phase.as_str().to_owned(),
                source: Box::new(source),
            })?;
        plan.phases.insert(phase.as_str().to_owned(), rendered.plan);
    }
    Ok(Some(Rendered { plan, common }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Platform;

    fn env() -> EnvironmentRecord {
        EnvironmentRecord {
            uuid: "e1".into(),
            platform: Platform::Staging,
            mode: Mode::Cooking,
            agent: "node1".into(),
            owner: "alice".into(),
            grants: vec![],
            defaults: json!({"keep_archives": 5, "workers": 2}),
            created_at: 0,
            smep: None,
        }
    }

    #[test]
    fn common_merges_sample_env_defaults_and_pillar_and_phases_render() -> anyhow::Result<()> {
        let mut salt = BTreeMap::new();
        salt.insert(
            "PILLAR.sample".into(),
            "workers: 1\nport: 8080\nkeep_archives: 3\n".into(),
        );
        salt.insert(
            "build.sls".into(),
            "compile:\n  cmd.run:\n    - name: make -C {{ common.project_dir }} PORT={{ common.data.port }}\n".into(),
        );
        let pillar = json!({"makina-projects": {"web": {"port": 9000}}});
        let grains = Grains {
            id: "node1".into(),
            root: "/srv/c".into(),
            ..Default::default()
        };
        let env = env();
        let ctx = DeployContext {
            project: "web",
            env: &env,
            mode: Mode::Cooking,
            deploy_id: "d1",
            commit: "abc",
            grains: &grains,
        };
        let rendered = render_project(&salt, &pillar, &ctx)?;
        assert_eq!(rendered.common["data"]["port"], 9000);
        assert_eq!(rendered.common["data"]["workers"], 2);
        assert_eq!(rendered.common["data"]["keep_archives"], 5);
        assert_eq!(rendered.common["run_dir"], "/srv/c/e1/srv/projects/web/run");
        let build = rendered.plan.phase("build");
        assert_eq!(build.chunks.len(), 1);
        assert_eq!(
            build.chunks[0].name,
            "make -C /srv/c/e1/srv/projects/web/project PORT=9000"
        );
        assert!(rendered.plan.phase("stop").chunks.is_empty());
        Ok(())
    }

    #[test]
    fn common_carries_the_environments_identity_over_the_settings_user() -> anyhow::Result<()> {
        let mut env = env();
        env.smep = Some(20130);
        let grains = Grains::default();
        let ctx = DeployContext {
            project: "web",
            env: &env,
            mode: Mode::Cooking,
            deploy_id: "d1",
            commit: "abc",
            grains: &grains,
        };
        let pillar = json!({"user": "root"});
        let rendered = render_project(&BTreeMap::new(), &pillar, &ctx)?;
        let common = &rendered.common;
        assert_eq!(common["uid"], 20130);
        assert_eq!(common["gid"], 20130);
        assert_eq!(common["smep"], 20130);
        assert_eq!(common["user"], "corpus-20130");
        assert_eq!(common["group"], "corpus-20130");
        assert_eq!(common["ports"], json!((20130..20140).collect::<Vec<_>>()));
        assert_eq!(environment_root(&env, &grains), "/srv/corpus/e1");
        Ok(())
    }

    #[test]
    fn render_errors_name_the_phase_file() {
        let mut salt = BTreeMap::new();
        salt.insert(
            "start.sls".into(),
            "x:\n  cmd.run:\n    - name: {{ nope(\n".into(),
        );
        let env = env();
        let grains = Grains::default();
        let ctx = DeployContext {
            project: "web",
            env: &env,
            mode: Mode::Cooking,
            deploy_id: "d1",
            commit: "abc",
            grains: &grains,
        };
        let err = render_project(&salt, &json!({}), &ctx)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains(".salt/start.sls")));
    }

    #[test]
    fn a_misspelt_project_setting_fails_the_push_naming_the_key() {
        let env = env();
        let grains = Grains::default();
        let ctx = DeployContext {
            project: "web",
            env: &env,
            mode: Mode::Cooking,
            deploy_id: "d1",
            commit: "abc",
            grains: &grains,
        };
        let mut salt = BTreeMap::new();
        salt.insert(
            "PILLAR.sample".into(),
            "healthcheck:\n  comand: true\n".into(),
        );
        let err = render_project(&salt, &json!({}), &ctx)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`healthcheck`") && e.contains("comand")));
        let pillar = json!({"makina-projects": {"web": {"keep_archives": "x"}}});
        let err = render_project(&BTreeMap::new(), &pillar, &ctx)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`keep_archives`")));
    }

    #[test]
    fn pillar_yaml_errors_name_the_file() {
        let mut files = BTreeMap::new();
        files.insert("init.sls".into(), "a: [unclosed\n".into());
        let err = compile_pillar(&files, "node1", &json!({}), &json!("prod"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("init.sls"), "{err}");
    }

    fn tar_with(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join("source.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path)?);
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *body)?;
        }
        builder.finish()?;
        Ok(path)
    }

    #[test]
    fn a_push_with_a_non_utf8_sls_is_refused_naming_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let archive = tar_with(
            dir.path(),
            &[
                (".salt/start.sls", b"ok:\n  cmd.run:\n    - name: true\n"),
                (
                    ".salt/build.sls",
                    b"caf\xe9:\n  cmd.run:\n    - name: true\n",
                ),
            ],
        )?;
        let err = match read_salt_tree(&archive) {
            Err(e) => e,
            Ok(files) => anyhow::bail!("accepted, with files {:?}", files.keys()),
        };
        assert!(
            matches!(&err, RenderError::NotUtf8 { file, offset: 3 } if file == ".salt/build.sls"),
            "{err}"
        );
        assert!(
            err.to_string().contains(".salt/build.sls is not UTF-8"),
            "{err}"
        );
        assert_eq!(err.location().file.as_deref(), Some(".salt/build.sls"));

        // A binary file a state ships is not rendered: it does not refuse the push.
        let archive = tar_with(
            dir.path(),
            &[
                (".salt/start.sls", b"ok:\n  cmd.run:\n    - name: true\n"),
                (".salt/files/logo.png", b"\x89PNG\xff\xfe"),
            ],
        )?;
        let files = read_salt_tree(&archive)?;
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["start.sls"]);
        Ok(())
    }

    #[test]
    fn a_source_that_starts_like_zstd_is_refused() -> anyhow::Result<()> {
        // A valid tar whose first entry's name begins with the zstd magic: the tar crate reads
        // it, the agent would have decompressed it instead.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("polyglot.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path)?);
        let body: &[u8] = b"ok:\n  cmd.run:\n    - name: true\n";
        let mut header = tar::Header::new_old();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.as_old_mut().name[..5].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, b'x']);
        header.set_cksum();
        builder.append(&header, body)?;
        let mut salt = tar::Header::new_gnu();
        salt.set_size(body.len() as u64);
        salt.set_mode(0o644);
        salt.set_cksum();
        builder.append_data(&mut salt, ".salt/start.sls", body)?;
        builder.finish()?;
        drop(builder);
        let err = match read_salt_tree(&path) {
            Err(e) => e,
            Ok(files) => anyhow::bail!("accepted, with files {:?}", files.keys()),
        };
        assert!(
            err.to_string().contains("starts like a zstd stream"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_flat_makina_projects_key_holds_the_project_settings() {
        let pillar = json!({"makina-projects.web": {"port": 9000}, "other": 1});
        assert_eq!(project_settings(&pillar, "web"), json!({"port": 9000}));
        let nested = json!({"makina-projects": {"web": {"port": 9001}}});
        assert_eq!(project_settings(&nested, "web"), json!({"port": 9001}));
    }
}
