//! Owners and modes of a confined environment, enforced before every confined phase whatever
//! existed before: the environment root and the directories above projects are root's and
//! 0711 (other environments' users can pass, never list); the project directory is
//! root:group 1770; `project/ data/ build/ deploy/` (and `run/` while it is a directory)
//! belong to the environment user; `pillar/` is root's and readable by the environment's
//! group only; `.corpus/`, `releases/` and `archives/` are root-only.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;

use super::{ConfineError, Identity, identity_file, io_at};

fn set_mode(path: &Path, mode: u32) -> Result<(), ConfineError> {
    io_at(
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
        "set the mode of",
        path,
    )
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), ConfineError> {
    io_at(
        lchown(path, Some(uid), Some(gid)),
        "change the owner of",
        path,
    )
}

/// A root-owned directory with `mode`, created if missing.
fn root_dir(path: &Path, mode: u32) -> Result<(), ConfineError> {
    io_at(fs::create_dir_all(path), "create", path)?;
    set_owner(path, 0, 0)?;
    set_mode(path, mode)
}

/// Gives a whole tree to `uid:gid`, never following links. A regular file with several links
/// that the user does not own yet is skipped: it could be a hard link the user made to a
/// root file elsewhere (`/etc/shadow`), which a recursive chown would hand over.
fn give_tree(path: &Path, uid: u32, gid: u32) -> Result<(), ConfineError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let foreign_hard_link = meta.is_file() && meta.nlink() > 1 && meta.uid() != uid;
    if (meta.uid() != uid || meta.gid() != gid) && !foreign_hard_link {
        set_owner(path, uid, gid)?;
    }
    if meta.is_dir() {
        for entry in io_at(fs::read_dir(path), "list", path)?.flatten() {
            give_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn write_identity(record: &Path, id: &Identity) -> Result<(), ConfineError> {
    let text = serde_json::to_vec_pretty(id).map_err(|e| ConfineError::Io {
        op: "write",
        path: record.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    io_at(
        crate::lifecycle::write_atomic(record, &text, 0o600),
        "write",
        record,
    )
}

/// Every existing directory above the environment root must let others pass (`o+x`), or the
/// environment's user could never reach its root: refused with what to change.
fn check_reachable(env_root: &Path, id: &Identity) -> Result<(), ConfineError> {
    for dir in env_root.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(ConfineError::Unreachable {
                user: id.user.clone(),
                dir: dir.to_path_buf(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// The environment root (0711, root's), its private tmp (the user's, 0700), `.corpus/` (0700)
/// with the identity record (0600), and `srv/projects/` (0711).
pub fn secure_environment(env_root: &Path, id: &Identity) -> Result<(), ConfineError> {
    check_reachable(env_root, id)?;
    root_dir(env_root, 0o711)?;
    root_dir(&env_root.join(".corpus"), 0o700)?;
    let record = identity_file(env_root);
    // Written (and fsynced) once: every later job finds it unchanged.
    if super::recorded_identity(env_root).as_ref() != Some(id) {
        write_identity(&record, id)?;
    }
    let tmp = env_root.join("tmp");
    io_at(fs::create_dir_all(&tmp), "create", &tmp)?;
    set_owner(&tmp, id.uid, id.gid)?;
    set_mode(&tmp, 0o700)?;
    root_dir(&env_root.join("srv"), 0o711)?;
    root_dir(&env_root.join("srv").join("projects"), 0o711)
}

/// A project's directories, as the module doc says. Idempotent; cheap when nothing changed
/// (one `lstat` per entry of the user's trees).
pub fn secure_project(project_dir: &Path, id: &Identity) -> Result<(), ConfineError> {
    // `common.project_root`: the project may write its own files here (group, 0770), and the
    // sticky bit keeps it from renaming or removing what it does not own (`.corpus/`, the
    // `run` link, `releases/`...).
    io_at(fs::create_dir_all(project_dir), "create", project_dir)?;
    set_owner(project_dir, 0, id.gid)?;
    set_mode(project_dir, 0o1770)?;
    for name in ["project", "data", "build", "deploy"] {
        let path = project_dir.join(name);
        give_tree(&path, id.uid, id.gid)?;
        if path.is_dir() {
            set_mode(&path, 0o750)?;
        }
    }
    // `run` is the agent's link (root's); only a real directory there (before the first
    // switch) is the user's tree.
    let run = project_dir.join("run");
    if fs::symlink_metadata(&run).is_ok_and(|m| m.is_dir()) {
        give_tree(&run, id.uid, id.gid)?;
    } else if fs::symlink_metadata(&run).is_ok() {
        set_owner(&run, 0, 0)?;
    }
    let pillar = project_dir.join("pillar");
    if pillar.is_dir() {
        set_owner(&pillar, 0, id.gid)?;
        set_mode(&pillar, 0o750)?;
        for entry in io_at(fs::read_dir(&pillar), "list", &pillar)?.flatten() {
            set_owner(&entry.path(), 0, id.gid)?;
            set_mode(&entry.path(), 0o440)?;
        }
    }
    for name in [".corpus", "releases", "archives"] {
        let path = project_dir.join(name);
        if path.is_dir() {
            set_owner(&path, 0, 0)?;
            set_mode(&path, 0o700)?;
        }
    }
    Ok(())
}
