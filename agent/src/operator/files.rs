//! The `salt://` files the master shipped with an operator call, written to a root-only
//! temporary directory in the agent's state dir for the call's `salt://` sources, and removed
//! with it when the call ends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use corpus_proto::OperatorFile;
use tempfile::TempDir;

/// Prefix of the per-call directories in the state dir.
const DIR_PREFIX: &str = "operator-files-";

/// Removes the call directories an earlier agent process left (a crash or a kill during a
/// call); done once, before this process's first call makes its own.
fn remove_stale(state_dir: &Path) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(state_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Writes `files` under a new directory (mode 0700) in `state_dir`. A path that is not plainly
/// relative (`..`, absolute, empty) is refused, whatever the master sent.
pub fn write(state_dir: &Path, files: &[OperatorFile]) -> Result<TempDir, String> {
    remove_stale(state_dir);
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(state_dir)
        .map_err(|e| {
            format!(
                "cannot make a directory for the call's files in {}: {e}",
                state_dir.display()
            )
        })?;
    for file in files {
        let rel = Path::new(&file.path);
        if file.path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!(
                "the master sent a file with the invalid path {}: expected a path inside file_root",
                corpus_proto::names::quote_input(&file.path)
            ));
        }
        let path = dir.path().join(rel);
        let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        std::fs::write(&path, &file.content).map_err(failed)?;
        // Permission bits only: no set-id bit reaches the agent's disk from the master's tree.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o777))
            .map_err(failed)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str, mode: u32) -> OperatorFile {
        OperatorFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn shipped_files_land_with_their_modes_and_go_with_the_call() -> anyhow::Result<()> {
        let state = tempfile::tempdir()?;
        // What a crashed agent left: gone before the first call (the only one of this test
        // binary) writes its own.
        let stale = state.path().join(format!("{DIR_PREFIX}crashed"));
        std::fs::create_dir_all(stale.join("web"))?;
        let dir = write(
            state.path(),
            &[
                file("web/conf.d/a.conf", "a", 0o640),
                file("bin/run.sh", "#!/bin/sh", 0o4755),
            ],
        )
        .map_err(anyhow::Error::msg)?;
        let root = dir.path().to_owned();
        assert!(!stale.exists());
        assert_eq!(
            std::fs::read_to_string(root.join("web/conf.d/a.conf"))?,
            "a"
        );
        let mode = |p: &str| std::fs::metadata(root.join(p)).map(|m| m.permissions().mode());
        assert_eq!(mode("web/conf.d/a.conf")? & 0o7777, 0o640);
        assert_eq!(mode("bin/run.sh")? & 0o7777, 0o755);
        assert_eq!(
            std::fs::metadata(&root)?.permissions().mode() & 0o777,
            0o700
        );
        drop(dir);
        assert!(!root.exists());

        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let err = write(state.path(), &[file(bad, "x", 0o644)]).err();
            assert!(err.is_some_and(|e| e.contains("invalid path")), "{bad}");
        }
        assert_eq!(std::fs::read_dir(state.path())?.count(), 0);
        Ok(())
    }
}
