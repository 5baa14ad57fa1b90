//! Source trees: where sls files and templates come from. A narrow trait so that the pillar
//! compiler and the state compiler can be driven from a directory in production and from memory in
//! tests, and so that templates can never read outside their root.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A file could not be read from a source tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The path is absolute, climbs out of the root, or is otherwise unusable.
    #[error("path \"{path}\" is invalid: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The file exists but reading it failed.
    #[error("cannot read \"{path}\": {message}")]
    Read { path: String, message: String },
}

/// A read-only tree of text files addressed by `/`-separated paths relative to its root (Salt's
/// `salt://` paths without the scheme).
pub trait SourceTree: Send + Sync {
    /// Reads `rel`; `Ok(None)` when there is no such file.
    fn read(&self, rel: &str) -> Result<Option<String>, TreeError>;
}

/// Checks and normalises a tree-relative path: strips `salt://` and leading `/`-free `./`, refuses
/// absolute paths, `..` and NUL bytes. Returns the normalised path.
pub fn normalize_path(rel: &str) -> Result<String, TreeError> {
    let invalid = |reason| TreeError::InvalidPath {
        path: rel.to_string(),
        reason,
    };
    let stripped = rel.strip_prefix("salt://").unwrap_or(rel);
    if stripped.is_empty() {
        return Err(invalid("it is empty"));
    }
    if stripped.contains('\0') || stripped.contains('\\') {
        return Err(invalid("it contains a NUL byte or a backslash"));
    }
    if stripped.starts_with('/') {
        return Err(invalid(
            "it is absolute: use a path relative to the root (salt://dir/file)",
        ));
    }
    let mut parts = Vec::new();
    for part in stripped.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("it leaves the root with \"..\"")),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(invalid("it names no file"));
    }
    Ok(parts.join("/"))
}

/// A tree backed by a directory on disk. Symbolic links that resolve outside the directory are
/// refused, so templates stay sandboxed in their root.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> DirTree {
        DirTree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl SourceTree for DirTree {
    fn read(&self, rel: &str) -> Result<Option<String>, TreeError> {
        let rel = normalize_path(rel)?;
        let path = self.root.join(&rel);
        debug_assert!(path.components().all(|c| c != Component::ParentDir));
        let read_error = |e: std::io::Error| TreeError::Read {
            path: rel.clone(),
            message: e.to_string(),
        };
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let root = self.root.canonicalize().map_err(read_error)?;
        if !real.starts_with(&root) {
            return Err(TreeError::InvalidPath {
                path: rel,
                reason: "it is a link that leaves the root",
            });
        }
        if real.is_dir() {
            return Ok(None);
        }
        match std::fs::read_to_string(&real) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_error(e)),
        }
    }
}

/// A tree held in memory, for tests and for trees shipped inside a job.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    files: BTreeMap<String, String>,
}

impl MemoryTree {
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    /// Adds (or replaces) a file, builder style.
    pub fn with(mut self, rel: &str, text: &str) -> MemoryTree {
        self.insert(rel, text);
        self
    }

    pub fn insert(&mut self, rel: &str, text: &str) {
        let key = normalize_path(rel).unwrap_or_else(|_| rel.to_string());
        self.files.insert(key, text.to_string());
    }
}

impl SourceTree for MemoryTree {
    fn read(&self, rel: &str) -> Result<Option<String>, TreeError> {
        let rel = normalize_path(rel)?;
        Ok(self.files.get(&rel).cloned())
    }
}

/// Checks a dotted sls name (`web.nginx`) and returns it; sls names map onto paths, so they must
/// not contain `/`, empty segments or `..`.
pub fn validate_sls_name(name: &str) -> Result<(), TreeError> {
    let invalid = |reason| TreeError::InvalidPath {
        path: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("an sls name cannot be empty"));
    }
    if name.contains('/') || name.contains('\\') || name.contains('\0') {
        return Err(invalid("an sls name is dotted (web.nginx), not a path"));
    }
    if name.split('.').any(|segment| segment.is_empty()) {
        return Err(invalid("an sls name cannot have empty segments"));
    }
    Ok(())
}

/// Finds the file of sls `name`: `a/b.sls`, else `a/b/init.sls`. Returns the path and the text,
/// or `None` when neither exists.
pub fn read_sls(tree: &dyn SourceTree, name: &str) -> Result<Option<(String, String)>, TreeError> {
    validate_sls_name(name)?;
    let base = name.replace('.', "/");
    for candidate in [format!("{base}.sls"), format!("{base}/init.sls")] {
        if let Some(text) = tree.read(&candidate)? {
            return Ok(Some((candidate, text)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_path_accepts_salt_urls_and_refuses_escapes() {
        assert_eq!(normalize_path("salt://a/./b.txt").as_deref(), Ok("a/b.txt"));
        assert_eq!(normalize_path("a//b").as_deref(), Ok("a/b"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "salt://", "a\\b"] {
            assert!(normalize_path(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn read_sls_prefers_file_over_init() {
        let tree = MemoryTree::new()
            .with("web/init.sls", "init")
            .with("web.sls", "file")
            .with("db/init.sls", "db");
        assert_eq!(
            read_sls(&tree, "web").ok().flatten().map(|(p, _)| p),
            Some("web.sls".to_string())
        );
        assert_eq!(
            read_sls(&tree, "db").ok().flatten().map(|(p, _)| p),
            Some("db/init.sls".to_string())
        );
        assert_eq!(read_sls(&tree, "nope"), Ok(None));
        assert!(read_sls(&tree, "a/b").is_err());
        assert!(read_sls(&tree, "a..b").is_err());
    }

    #[test]
    fn dir_tree_refuses_links_out_of_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let base = std::env::temp_dir().join(format!("corpus-pillar-tree-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub"))?;
        std::fs::write(root.join("sub/a.sls"), "a: 1\n")?;
        std::fs::write(base.join("secret"), "s")?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(base.join("secret"), root.join("leak"))?;
        let tree = DirTree::new(&root);
        assert_eq!(tree.read("sub/a.sls"), Ok(Some("a: 1\n".to_string())));
        assert_eq!(tree.read("sub/missing.sls"), Ok(None));
        assert_eq!(tree.read("sub"), Ok(None));
        #[cfg(unix)]
        assert!(matches!(
            tree.read("leak"),
            Err(TreeError::InvalidPath { .. })
        ));
        std::fs::remove_dir_all(&base)?;
        Ok(())
    }
}

/// Resolves an `include:` entry relative to the including sls: `.x` is a sibling (or, from an
/// `init.sls`, a child), each further leading dot climbs one package, as in Salt. Absolute names
/// are returned unchanged.
pub fn resolve_include(
    including_sls: &str,
    including_path: &str,
    include: &str,
) -> Result<String, String> {
    let levels = include.chars().take_while(|&c| c == '.').count();
    if levels == 0 {
        return Ok(include.to_string());
    }
    let rest = &include[levels..];
    let mut parts: Vec<&str> = including_sls.split('.').collect();
    if including_path.ends_with("/init.sls") || including_path == "init.sls" {
        parts.push("init");
    }
    if levels > parts.len() {
        return Err(format!(
            "relative include '{include}' in sls '{including_sls}' goes above the top of the tree"
        ));
    }
    parts.truncate(parts.len() - levels);
    if !rest.is_empty() {
        parts.push(rest);
    }
    if parts.is_empty() {
        return Err(format!(
            "relative include '{include}' in sls '{including_sls}' names no sls"
        ));
    }
    Ok(parts.join("."))
}

#[cfg(test)]
mod include_tests {
    use super::resolve_include;

    #[test]
    fn relative_includes_follow_salt() {
        let cases = [
            ("web.nginx", "web/nginx.sls", "common", Ok("common")),
            ("web.nginx", "web/nginx.sls", ".conf", Ok("web.conf")),
            ("web", "web/init.sls", ".conf", Ok("web.conf")),
            (
                "web.nginx",
                "web/nginx/init.sls",
                ".conf",
                Ok("web.nginx.conf"),
            ),
            ("web.nginx", "web/nginx.sls", "..base", Ok("base")),
            ("web", "web.sls", "..x", Err(())),
        ];
        for (sls, path, include, expected) in cases {
            let got = resolve_include(sls, path, include);
            assert_eq!(got.as_deref().map_err(|_| ()), expected, "{sls} {include}");
        }
    }
}
