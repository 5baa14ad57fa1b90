//! The `salt://` files an operator call carries: every `salt://` path in one agent's rendered
//! plan (`file.managed`/`file.recurse` sources, `cmd.script`, ...), read from the master's
//! `file_root` and shipped with that agent's `OperatorCall`, so an agent receives the files its
//! own plan references and nothing else of the tree. A path that leaves `file_root` (`..`, a
//! link out) fails the agent's call naming the state; a missing one is not shipped (the state
//! then fails on the agent as Salt's does, or the next source of a list is tried). What a
//! shipped template includes or imports (`{% from "map.jinja" import ... %}`) is shipped too,
//! when it exists inside `file_root`. Blocking.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use corpus_states::Plan;
use serde_json::Value as Json;

/// The most bytes of files one call may carry (the link's messages hold at most 16 MiB, plan
/// and pillar included).
pub const MAX_SHIPPED_BYTES: u64 = 8 * 1024 * 1024;
/// The most files one call may carry (a `file.recurse` of a large tree).
pub const MAX_SHIPPED_FILES: usize = 4096;
/// How deep a recursed source directory may go.
const MAX_DEPTH: usize = 32;

/// One file of `file_root`, as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedFile {
    /// `salt://` path without the scheme, normalised.
    pub path: String,
    pub content: Vec<u8>,
    /// Permission bits in `file_root`.
    pub mode: u32,
}

/// Every `salt://` reference in the plan's state arguments (keys of mappings included, as in
/// `source: [{salt://a: hash}]`) and at the start of a state's name (`cmd.script`'s default
/// source), with the id of the state that holds it.
pub fn references(plan: &Plan) -> Vec<(String, String)> {
    fn walk(value: &Json, id: &str, out: &mut Vec<(String, String)>) {
        match value {
            Json::String(s) if s.starts_with("salt://") => out.push((id.to_owned(), s.clone())),
            Json::Array(items) => items.iter().for_each(|v| walk(v, id, out)),
            Json::Object(map) => {
                for (key, v) in map {
                    if key.starts_with("salt://") {
                        out.push((id.to_owned(), key.clone()));
                    }
                    walk(v, id, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for chunk in &plan.chunks {
        if let Some(first) = chunk.name.split_whitespace().next()
            && first.starts_with("salt://")
        {
            out.push((chunk.id.clone(), first.to_owned()));
        }
        for value in chunk.args.values() {
            walk(value, &chunk.id, &mut out);
        }
    }
    out
}

/// What is being collected, with the limits enforced as it grows.
struct Collected {
    root: PathBuf,
    files: BTreeMap<String, ShippedFile>,
    bytes: u64,
    /// Files the shipped templates include or import, still to add.
    imports: Vec<String>,
}

impl Collected {
    /// The canonical path of `rel` under the root, `None` when it does not exist; an error when
    /// it resolves outside the root.
    fn resolve(&self, rel: &str, state: &str, source: &str) -> Result<Option<PathBuf>, String> {
        match self.root.join(rel).canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(Some(real)),
            Ok(_) => Err(format!(
                "state {state:?}: source {source} is refused: {rel} is a link that leaves the master's file_root {}",
                self.root.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "state {state:?}: source {source} cannot be read from file_root {}: {e}",
                self.root.display()
            )),
        }
    }

    fn add_file(&mut self, rel: String, real: &Path, source: &str) -> Result<(), String> {
        if self.files.contains_key(&rel) {
            return Ok(());
        }
        let unreadable = |e: std::io::Error| format!("source {source}: cannot read {rel}: {e}");
        let meta = std::fs::metadata(real).map_err(unreadable)?;
        self.bytes += meta.len();
        if self.files.len() >= MAX_SHIPPED_FILES || self.bytes > MAX_SHIPPED_BYTES {
            return Err(format!(
                "the salt:// files of this agent's plan are over the limit of {MAX_SHIPPED_FILES} files or {} MiB per operator call (at source {source}): ship large files another way (a package, archive.extracted from a URL)",
                MAX_SHIPPED_BYTES / (1024 * 1024)
            ));
        }
        let content = std::fs::read(real).map_err(unreadable)?;
        if let Ok(text) = std::str::from_utf8(&content) {
            self.imports.extend(template_imports(&rel, text));
        }
        let mode = meta.permissions().mode() & 0o7777;
        self.files.insert(
            rel.clone(),
            ShippedFile {
                path: rel,
                content,
                mode,
            },
        );
        Ok(())
    }

    /// Adds the directory `real` (`rel` under the root) and everything under it.
    fn add_dir(
        &mut self,
        rel: &str,
        real: &Path,
        state: &str,
        source: &str,
        seen: &mut HashSet<PathBuf>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH || !seen.insert(real.to_owned()) {
            return Ok(());
        }
        let unreadable = |e: std::io::Error| format!("source {source}: cannot list {rel}: {e}");
        let mut names: Vec<String> = std::fs::read_dir(real)
            .map_err(unreadable)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(unreadable)?;
        names.sort();
        for name in names {
            let child = format!("{rel}/{name}");
            let Some(real_child) = self.resolve(&child, state, source)? else {
                continue;
            };
            if real_child.is_dir() {
                self.add_dir(&child, &real_child, state, source, seen, depth + 1)?;
            } else if real_child.is_file() {
                self.add_file(child, &real_child, source)?;
            }
        }
        Ok(())
    }
}

/// The files `plan` references under `file_root`: a file as itself, a directory with
/// everything under it (`file.recurse`). The error names the state and the source.
pub fn collect(file_root: &Path, plan: &Plan) -> Result<Vec<ShippedFile>, String> {
    let refs = references(plan);
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let root = file_root.canonicalize().map_err(|e| {
        format!(
            "the master's file_root {} cannot be read: {e}",
            file_root.display()
        )
    })?;
    let mut collected = Collected {
        root,
        files: BTreeMap::new(),
        bytes: 0,
        imports: Vec::new(),
    };
    for (state, source) in refs {
        let path = source.split('?').next().unwrap_or(&source);
        let rel = corpus_pillar::tree::normalize_path(path)
            .map_err(|e| format!("state {state:?}: source {source} is refused: {e}"))?;
        let Some(real) = collected.resolve(&rel, &state, &source)? else {
            continue;
        };
        if real.is_dir() {
            collected.add_dir(&rel, &real, &state, &source, &mut HashSet::new(), 0)?;
        } else {
            collected.add_file(rel, &real, &source)?;
        }
    }
    // A template's own references that are not in the tree (or leave it) are not shipped: the
    // agent's template engine then reports the name, as it would for a missing file.
    while let Some(rel) = collected.imports.pop() {
        if collected.files.contains_key(&rel) {
            continue;
        }
        if let Ok(Some(real)) = collected.resolve(&rel, "", "")
            && real.is_file()
        {
            collected.add_file(rel.clone(), &real, &format!("salt://{rel}"))?;
        }
    }
    Ok(collected.files.into_values().collect())
}

/// The files a Jinja template names in `include`, `import`, `from`, `extends` and Salt's
/// `import_yaml|json|text` statements, as paths from the root (`./x` and `../x` from the
/// template's own directory, as Salt resolves them).
fn template_imports(template: &str, text: &str) -> Vec<String> {
    const STATEMENTS: [&str; 7] = [
        "include",
        "import",
        "from",
        "extends",
        "import_yaml",
        "import_json",
        "import_text",
    ];
    let dir = template.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{%") {
        let block = &rest[start + 2..];
        let end = block.find("%}").unwrap_or(block.len());
        let inner = block[..end].trim_start_matches(['-', '+']).trim();
        let keyword = inner.split_whitespace().next().unwrap_or_default();
        if STATEMENTS.contains(&keyword)
            && let Some(open) = inner.find(['"', '\''])
        {
            let quote = &inner[open..open + 1];
            let after = &inner[open + 1..];
            if let Some(close) = after.find(quote) {
                let name = &after[..close];
                let joined = if name.starts_with("./") || name.starts_with("../") {
                    format!("{dir}/{name}")
                } else {
                    name.to_owned()
                };
                if let Some(rel) = normalize_relative(&joined) {
                    out.push(rel);
                }
            }
        }
        rest = &block[end..];
    }
    out
}

/// `a/./b/../c` as `a/c`; `None` when it climbs above the root.
fn normalize_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(args: &[Json]) -> anyhow::Result<Plan> {
        let chunks: Vec<Json> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({"id": format!("s{i}"), "name": "/x", "sls": "t", "module": "file",
                       "function": "managed", "args": a, "requisites": []})
            })
            .collect();
        Ok(serde_json::from_value(json!({ "chunks": chunks }))?)
    }

    #[test]
    fn only_referenced_files_are_shipped_with_directories_in_full() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("web/conf.d/sub"))?;
        std::fs::write(
            root.join("web/nginx.conf.j2"),
            "{% from 'web/map.jinja' import port %}{% include './part.j2' %}{{ grains.id }}",
        )?;
        std::fs::write(root.join("web/map.jinja"), "{% set port = 80 %}")?;
        std::fs::write(root.join("web/part.j2"), "part")?;
        std::fs::write(root.join("web/conf.d/a.conf"), "a")?;
        std::fs::write(root.join("web/conf.d/sub/b.conf"), "b")?;
        std::fs::write(root.join("secret.txt"), "not referenced")?;
        let plan = plan(&[
            json!({"source": "salt://web/nginx.conf.j2?saltenv=base", "template": "jinja"}),
            json!({"source": "salt://web/conf.d"}),
            json!({"source": [{"salt://missing": "sha256=0"}, "salt://web/conf.d/a.conf"]}),
        ])?;
        let mut plan = plan;
        plan.chunks[0].name = "salt://run.sh --fast".into();
        std::fs::write(root.join("run.sh"), "#!/bin/sh")?;
        let files = collect(root, &plan).map_err(anyhow::Error::msg)?;
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "run.sh",
                "web/conf.d/a.conf",
                "web/conf.d/sub/b.conf",
                "web/map.jinja",
                "web/nginx.conf.j2",
                "web/part.j2"
            ]
        );
        assert_eq!(files[3].content, b"{% set port = 80 %}");
        assert_eq!(
            collect(root, &self::plan(&[json!({"name": "/x"})])?),
            Ok(vec![])
        );
        Ok(())
    }

    #[test]
    fn sources_leaving_file_root_are_refused_naming_the_state() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("states");
        std::fs::create_dir_all(root.join("d"))?;
        std::fs::write(dir.path().join("outside"), "secret")?;
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("leak"))?;
        std::os::unix::fs::symlink(dir.path(), root.join("d/up"))?;
        for source in ["salt://../outside", "salt://leak", "salt://d"] {
            let err = collect(&root, &plan(&[json!({ "source": source })])?).err();
            let err = err.unwrap_or_default();
            assert!(
                err.contains("\"s0\"") && err.contains(source) && err.contains("refused"),
                "{source}: {err}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_plan_over_the_size_limit_is_refused_naming_the_limit() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let big = vec![0u8; (MAX_SHIPPED_BYTES / 2 + 1) as usize];
        std::fs::write(dir.path().join("a"), &big)?;
        std::fs::write(dir.path().join("b"), &big)?;
        let plan = plan(&[json!({"source": "salt://a"}), json!({"source": "salt://b"})])?;
        let err = collect(dir.path(), &plan).err().unwrap_or_default();
        assert!(err.contains("8 MiB") && err.contains("salt://b"), "{err}");
        Ok(())
    }
}
