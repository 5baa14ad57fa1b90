//! The RFC project layout on disk, and the durable filesystem moves the lifecycle is built
//! from: atomic writes, renames followed by a directory fsync, and atomic symlink swaps.
//!
//! `run/` is a symlink. In editable mode it points at `project/`; in cooking and final modes at
//! `deploy/current`, itself a symlink to `deploy/<deploy id>`, the live tree. Switching the live
//! tree is one `rename(2)` of a fresh symlink over `deploy/current`, whatever the tree's size.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::Mode;
use super::error::{IoContext, StepError};

/// The directories of one project, `ROOT/<env>/srv/projects/<project>/`.
#[derive(Debug, Clone)]
pub struct ProjectLayout {
    pub dir: PathBuf,
}

/// The layout's directories, created by pre_install.
pub const DIRS: &[&str] = &[
    "project", "pillar", "data", "build", "deploy", "releases", "archives",
];

/// The symlink target of `run` in cooking and final modes.
pub const RUN_TARGET: &str = "deploy/current";

impl ProjectLayout {
    pub fn new(dir: PathBuf) -> Self {
        ProjectLayout { dir }
    }
    pub fn sub(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn project(&self) -> PathBuf {
        self.sub("project")
    }
    pub fn pillar(&self) -> PathBuf {
        self.sub("pillar")
    }
    pub fn data(&self) -> PathBuf {
        self.sub("data")
    }
    pub fn run(&self) -> PathBuf {
        self.sub("run")
    }
    pub fn deploy(&self) -> PathBuf {
        self.sub("deploy")
    }
    pub fn releases(&self) -> PathBuf {
        self.sub("releases")
    }
    pub fn archives(&self) -> PathBuf {
        self.sub("archives")
    }
    /// A deployment's tree while it is live (or being built/unpacked).
    pub fn tree(&self, id: &str) -> PathBuf {
        self.deploy().join(id)
    }
    /// `deploy/current`, the symlink naming the live tree.
    pub fn current(&self) -> PathBuf {
        self.deploy().join("current")
    }
    pub fn archive(&self, id: &str) -> PathBuf {
        self.archives().join(id)
    }
    /// Where the lock file, the journal and the job of a running deploy live.
    pub fn state_dir(&self) -> PathBuf {
        self.sub(".corpus")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("lock")
    }
    pub fn journal_file(&self) -> PathBuf {
        self.state_dir().join("journal.json")
    }
    pub fn job_file(&self) -> PathBuf {
        self.state_dir().join("job.json")
    }

    /// The id of the live tree (`deploy/current`'s target), if any.
    pub fn live_id(&self) -> Option<String> {
        let target = fs::read_link(self.current()).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        self.tree(&name).is_dir().then_some(name)
    }

    /// pre_install: creates the layout (idempotent) and points `run` for `mode`. The error
    /// names the directory or link that could not be made.
    pub fn create(&self, mode: Mode) -> Result<(), StepError> {
        for dir in [self.dir.clone(), self.state_dir()] {
            fs::create_dir_all(&dir).at("create", &dir)?;
        }
        for d in DIRS {
            let p = self.sub(d);
            if !p.is_dir() {
                fs::create_dir_all(&p).at("create", &p)?;
            }
        }
        for (dir, mode) in [
            (self.pillar(), 0o750),
            (self.state_dir(), 0o700),
            (self.releases(), 0o700),
            (self.archives(), 0o700),
        ] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .at("set the mode of", &dir)?;
        }
        self.restrict_roots()?;
        let run = self.run();
        match fs::symlink_metadata(&run) {
            // A real directory stays until the archive step moves it away (cooking/final).
            Ok(m) if m.is_dir() => {}
            _ => {
                let target = match mode {
                    Mode::Editable => "project",
                    Mode::Cooking | Mode::Final => RUN_TARGET,
                };
                set_link(&run, Path::new(target)).at("link", &run)?;
            }
        }
        sync_dir(&self.dir).at("sync", &self.dir)
    }

    /// `ROOT/<env>`, when this layout sits at its usual place `ROOT/<env>/srv/projects/<name>`.
    fn env_root(&self) -> Option<PathBuf> {
        let projects = self.dir.parent()?;
        let srv = projects.parent()?;
        (projects.file_name()? == "projects" && srv.file_name()? == "srv")
            .then(|| srv.parent().map(Path::to_path_buf))
            .flatten()
    }

    /// Modes of the directories above and around the project, whatever the umask or an older
    /// agent left: the environment root, `srv/` and `srv/projects/` at most 0711 (others may
    /// pass, never list). An unconfined environment (no identity recorded in its root: the
    /// project runs as root) also gets its project directory at most 0711 and `data/` 0700; a
    /// confined one gets its own modes from `confine::secure_project` right after.
    fn restrict_roots(&self) -> Result<(), StepError> {
        let Some(env_root) = self.env_root() else {
            return Ok(());
        };
        let srv = env_root.join("srv");
        for dir in [env_root.clone(), srv.clone(), srv.join("projects")] {
            narrow_mode(&dir, MAX_ROOT_MODE)?;
        }
        if crate::confine::recorded_identity(&env_root).is_none() {
            narrow_mode(&self.dir, MAX_ROOT_MODE)?;
            let data = self.data();
            fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
                .at("set the mode of", data)?;
        }
        Ok(())
    }

    /// Points `deploy/current` at `deploy/<id>` (atomically), or removes it.
    pub fn set_current(&self, id: Option<&str>) -> io::Result<()> {
        match id {
            Some(id) => set_link(&self.current(), Path::new(id)),
            None => match fs::remove_file(self.current()) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => sync_dir(&self.deploy()),
            },
        }
    }

    /// Writes the rendered pillar to `pillar/pillar.json`, read-only (0440).
    pub fn write_pillar(&self, pillar: &serde_json::Value) -> Result<(), StepError> {
        let path = self.pillar().join("pillar.json");
        let text = serde_json::to_vec_pretty(pillar)
            .map_err(io::Error::other)
            .at("write", &path)?;
        write_atomic(&path, &text, 0o440).at("write", &path)
    }
}

/// Makes the agent's state dir (its key, certificate, results and downloaded sources) private
/// whatever the umask or an older agent left: 0700, or 0711 when the environments' `root` lies
/// beneath it (their users must pass through; they still cannot list it). Files in it are
/// written 0600 ([`write_atomic`], the key).
pub fn secure_state_dir(state_dir: &Path, root: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)?;
    let mode = if root.starts_with(state_dir) {
        MAX_ROOT_MODE
    } else {
        0o700
    };
    fs::set_permissions(state_dir, fs::Permissions::from_mode(mode))
}

/// The loosest mode of an environment root and the directories above its projects.
pub const MAX_ROOT_MODE: u32 = 0o711;

/// Clears the bits of `dir`'s mode that `max` does not allow (a stricter mode stays as it is).
fn narrow_mode(dir: &Path, max: u32) -> Result<(), StepError> {
    let mode = fs::metadata(dir)
        .at("read the mode of", dir)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & !max != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & max))
            .at("set the mode of", dir)?;
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, atomically replacing a previous symlink (never a
/// directory), then fsyncs the parent.
pub fn set_link(link: &Path, target: &Path) -> io::Result<()> {
    if fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let parent = parent_of(link)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("link"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    fs::rename(&tmp, link)?;
    sync_dir(parent)
}

/// `rename(2)` then fsync of both parents, so the move survives a crash. The error names both
/// paths.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), StepError> {
    let moved = || -> io::Result<()> {
        fs::rename(from, to)?;
        sync_dir(parent_of(to)?)?;
        let from_parent = parent_of(from)?;
        if Some(from_parent) != to.parent() {
            sync_dir(from_parent)?;
        }
        Ok(())
    };
    moved().map_err(|source| StepError::Move {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename. The file has `mode` from
/// its creation on (never readable by others in between, whatever the umask).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let parent = parent_of(path)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask only narrows the mode `open` was given; this sets it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(parent)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent().ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} has no parent directory", path.display()),
        )
    })
}

/// Removes a tree without ever leaving it half-deleted under its own name: rename to a hidden
/// sibling first, then delete.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match discard_tree(path)? {
        Some(trash) => fs::remove_dir_all(trash),
        None => Ok(()),
    }
}

/// Moves a tree out of the way (a durable rename to a hidden `.trash-*` sibling) and leaves the
/// deletion, which is as slow as the tree is large, to a later [`sweep_trash`]. Returns where
/// it went, or None when there was nothing.
pub fn discard_tree(path: &Path) -> io::Result<Option<PathBuf>> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let parent = parent_of(path)?;
    let trash = parent.join(format!(
        ".trash-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tree"),
        uuid::Uuid::new_v4()
    ));
    fs::rename(path, &trash)?;
    sync_dir(parent)?;
    Ok(Some(trash))
}

/// Undoes a sync a crash cut between its two renames (`project/` moved to `.project.old-*`,
/// the new tree not yet in place): puts the old `project/` back. When `project/` exists, the
/// leftovers of an earlier sync are removed instead.
pub fn restore_project(dir: &Path) -> io::Result<()> {
    let project = dir.join("project");
    let mut old: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".project.old-"))
        .map(|e| e.path())
        .collect();
    if !project.exists()
        && let Some(previous) = old.pop()
    {
        fs::rename(&previous, &project)?;
        sync_dir(dir)?;
    }
    for leftover in old {
        let _ = fs::remove_dir_all(leftover);
    }
    let _ = fs::remove_dir_all(dir.join(".project.new"));
    Ok(())
}

/// Deletes leftovers of [`remove_tree`] interrupted by a crash.
pub fn sweep_trash(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".trash-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Bytes used by files under `path` (allocated blocks, links not followed).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

/// Copies `from` into the new directory `to` with `cp -a` (modes, owners, links, times;
/// reflinks where the filesystem has them).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(&src)
        .arg(to)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "cannot copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // The copy must be on disk before the deploy relies on it.
    sync_filesystem(to)
}

/// `syncfs(2)`: flushes the filesystem holding `path`, so a tree written with plain writes is
/// on disk before a rename makes it live.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: syncfs takes a valid open descriptor and touches no memory of ours.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn a_sync_cut_between_its_renames_gets_its_old_project_back() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        fs::create_dir_all(dir.join(".project.old-1234"))?;
        fs::write(dir.join(".project.old-1234/app.py"), "old")?;
        fs::create_dir_all(dir.join(".project.new"))?;
        restore_project(dir)?;
        assert_eq!(fs::read_to_string(dir.join("project/app.py"))?, "old");
        assert!(!dir.join(".project.new").exists());

        // With project/ in place, leftovers just go.
        fs::create_dir_all(dir.join(".project.old-5678"))?;
        restore_project(dir)?;
        assert!(!dir.join(".project.old-5678").exists());
        assert_eq!(fs::read_to_string(dir.join("project/app.py"))?, "old");
        Ok(())
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use crate::lifecycle::Mode;
    use std::os::unix::process::CommandExt;

    /// Set in the copy of this test that runs under umask 000: the directory to lay out in.
    const UMASK_CHILD: &str = "CORPUS_LAYOUT_UMASK_CHILD";

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    /// The layout of an unconfined project (no identity recorded), made by a process with
    /// umask 000 over an environment root an older agent left 0777.
    fn lay_out(base: &Path) -> io::Result<()> {
        let env_root = base.join("root/env-1");
        fs::create_dir_all(&env_root)?;
        fs::set_permissions(&env_root, fs::Permissions::from_mode(0o777))?;
        let layout = ProjectLayout::new(env_root.join("srv/projects/app"));
        layout.create(Mode::Editable).map_err(io::Error::other)?;
        layout
            .write_pillar(&serde_json::json!({"secret": "s"}))
            .map_err(io::Error::other)?;
        write_atomic(&layout.journal_file(), b"{}", 0o600)?;
        secure_state_dir(&base.join("state"), &base.join("root"))?;
        secure_state_dir(
            &base.join("state-above-root"),
            &base.join("state-above-root/root"),
        )
    }

    #[test]
    fn an_unconfined_layout_is_private_whatever_the_umask() {
        if let Some(base) = std::env::var_os(UMASK_CHILD) {
            lay_out(Path::new(&base)).expect("lay out under umask 000");
            return;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = std::process::Command::new(exe);
        child
            .args([
                "--exact",
                "lifecycle::layout::mode_tests::an_unconfined_layout_is_private_whatever_the_umask",
                "--test-threads=1",
            ])
            .env(UMASK_CHILD, tmp.path());
        // SAFETY: umask(2) is async-signal-safe and touches no memory of ours.
        unsafe {
            child.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = child.output().expect("run the test under umask 000");
        assert!(
            out.status.success(),
            "the umask 000 run failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let env_root = tmp.path().join("root/env-1");
        let project = env_root.join("srv/projects/app");
        for dir in [
            env_root.clone(),
            env_root.join("srv"),
            env_root.join("srv/projects"),
            project.clone(),
        ] {
            assert_eq!(mode(&dir), MAX_ROOT_MODE, "{}", dir.display());
        }
        for (rel, expected) in [
            ("data", 0o700),
            (".corpus", 0o700),
            ("releases", 0o700),
            ("archives", 0o700),
            ("pillar", 0o750),
            ("pillar/pillar.json", 0o440),
            (".corpus/journal.json", 0o600),
        ] {
            let path = project.join(rel);
            assert_eq!(mode(&path), expected, "{}", path.display());
        }
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        assert_eq!(mode(&tmp.path().join("state-above-root")), MAX_ROOT_MODE);
    }

    #[test]
    fn a_stricter_root_stays_as_it_is() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let env_root = tmp.path().join("env-2");
        fs::create_dir_all(env_root.join("srv/projects"))?;
        fs::set_permissions(&env_root, fs::Permissions::from_mode(0o700))?;
        let layout = ProjectLayout::new(env_root.join("srv/projects/app"));
        layout.create(Mode::Editable).map_err(io::Error::other)?;
        assert_eq!(mode(&env_root), 0o700);
        Ok(())
    }
}
