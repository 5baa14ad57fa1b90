//! The confined child's way in: Landlock ruleset (where the kernel has it), `no_new_privs`,
//! then the drop to the environment's user and group (supplementary groups: its own only).
//! Read-write is allowed beneath the environment root; read and execute on the system's
//! read-only trees; nothing else (not the agent's state dir, not other environments).

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};

use super::{ConfineError, Identity};

/// How this agent isolates environments: the `isolation` grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Own UID plus a Landlock ruleset.
    Landlock,
    /// Own UID only (a kernel without Landlock).
    Uid,
    /// None: the agent cannot drop privileges (not root).
    None,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Landlock => "landlock",
            Isolation::Uid => "uid",
            Isolation::None => "none",
        }
    }
}

/// The ABI version the kernel's Landlock offers (0 when it has none or it is disabled).
fn landlock_abi_version() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0, the version query reads and writes no memory.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
    .max(0)
}

/// What this agent can do, checked once at start.
pub fn detect_isolation() -> Isolation {
    // SAFETY: geteuid has no failure mode and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Isolation::None;
    }
    if landlock_abi_version() >= 1 {
        Isolation::Landlock
    } else {
        Isolation::Uid
    }
}

/// The system trees a phase reads and executes from. `/etc` is read-only like the others.
const READ_ONLY_TREES: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/run/systemd/resolve",
];

/// Devices every shell expects to write to.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

fn sandbox_error(what: &str, e: impl std::fmt::Display) -> ConfineError {
    ConfineError::Sandbox(format!("{what}: {e}"))
}

/// Applies the Landlock ruleset. `Ok(false)` when the kernel has no Landlock (the UID drop
/// still confines the phase).
fn restrict_paths(env_root: &Path) -> Result<bool, ConfineError> {
    let abi = ABI::V3;
    let existing = |paths: &[&str]| -> Vec<String> {
        paths
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| (*p).to_owned())
            .collect()
    };
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                existing(READ_ONLY_TREES),
                AccessFs::from_read(abi),
            ))
        })
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                existing(DEVICES),
                AccessFs::from_read(abi) | AccessFs::WriteFile,
            ))
        })
        .and_then(|r| r.add_rules(path_beneath_rules([env_root], AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| sandbox_error("landlock", e))?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}

/// Confines the calling process for good: paths, then `no_new_privs`, then the identity.
/// Returns whether Landlock is in force.
pub fn enter(id: &Identity, env_root: &Path) -> Result<bool, ConfineError> {
    let landlocked = restrict_paths(env_root)?;
    let groups = [id.gid as libc::gid_t];
    // SAFETY: plain syscalls on values owned here; their results are checked.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(sandbox_error(
                "no_new_privs",
                std::io::Error::last_os_error(),
            ));
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(id.gid) != 0
            || libc::setuid(id.uid) != 0
        {
            return Err(sandbox_error(
                &format!("switch to {} ({})", id.user, id.uid),
                std::io::Error::last_os_error(),
            ));
        }
        // A setuid that left any root ID behind would be no drop at all.
        if libc::getuid() != id.uid || libc::geteuid() != id.uid || libc::setuid(0) == 0 {
            return Err(ConfineError::Sandbox(format!(
                "the switch to {} did not drop root",
                id.user
            )));
        }
    }
    Ok(landlocked)
}
