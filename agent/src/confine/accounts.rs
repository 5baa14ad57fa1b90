//! The environment's system user and group (`corpus-<smep>`), made with the shadow tools
//! (`groupadd`/`useradd --system`, no login shell, home = the environment root) and removed
//! with the environment. Every lookup goes through NSS, so an LDAP account holding the UID is
//! seen too.

use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Group, Uid, User};

use super::{ConfineError, Identity};

/// What an account or group lookup found, named for a conflict message.
fn holder_of_uid(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| format!("user {:?}", u.name))
}

fn holder_of_gid(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| format!("group {:?}", g.name))
}

/// Checks every way the identity could collide with an unrelated account before anything is
/// created, so a refusal changes nothing. Returns which of (group, user) already exist as ours.
fn check_conflicts(id: &Identity) -> Result<(bool, bool), ConfineError> {
    let conflict = |what: &'static str, value: String, holder: String| ConfineError::Conflict {
        what,
        value,
        holder,
    };
    let group_by_gid = Group::from_gid(Gid::from_raw(id.gid)).ok().flatten();
    let group_by_name = Group::from_name(&id.group).ok().flatten();
    if let Some(g) = &group_by_gid
        && g.name != id.group
    {
        return Err(conflict(
            "GID",
            id.gid.to_string(),
            format!("group {:?}", g.name),
        ));
    }
    if let Some(g) = &group_by_name
        && g.gid.as_raw() != id.gid
    {
        return Err(conflict(
            "group name",
            format!("{:?}", id.group),
            format!("GID {}", g.gid),
        ));
    }
    let user_by_uid = User::from_uid(Uid::from_raw(id.uid)).ok().flatten();
    let user_by_name = User::from_name(&id.user).ok().flatten();
    if let Some(u) = &user_by_uid
        && u.name != id.user
    {
        return Err(conflict(
            "UID",
            id.uid.to_string(),
            format!("user {:?}", u.name),
        ));
    }
    if let Some(u) = &user_by_name
        && (u.uid.as_raw() != id.uid || u.gid.as_raw() != id.gid)
    {
        return Err(conflict(
            "user name",
            format!("{:?}", id.user),
            format!("UID {} (GID {})", u.uid, u.gid),
        ));
    }
    Ok((group_by_gid.is_some(), user_by_uid.is_some()))
}

/// How long a shadow tool is retried while another one holds `/etc/passwd` or `/etc/group`.
const ACCOUNT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a shadow tool. While another process (another `useradd`, an operator's `vipw`) holds
/// the account files' lock, the tools fail at once ("cannot lock /etc/passwd; try again
/// later"): that is retried for up to [`ACCOUNT_LOCK_WAIT`], any other failure is not.
fn run(program: &str, args: &[&str]) -> Result<(), ConfineError> {
    let command = format!("{program} {}", args.join(" "));
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| ConfineError::Command {
                command: command.clone(),
                message: format!("{e} (install the shadow tools: passwd)"),
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let locked = stderr.contains("lock") || stderr.contains("try again");
        if !locked || started.elapsed() >= ACCOUNT_LOCK_WAIT {
            let waited = if locked {
                format!(" (the account files stayed locked for {ACCOUNT_LOCK_WAIT:?})")
            } else {
                String::new()
            };
            return Err(ConfineError::Command {
                command,
                message: format!("{}: {}{waited}", out.status, stderr.trim()),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
}

/// The shell that refuses logins, wherever this distribution keeps it.
fn nologin() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("/bin/false")
}

/// Creates the environment's group and user if they do not exist yet. A UID, GID or name held
/// by an unrelated account fails, naming it, before anything changes.
pub fn ensure_account(id: &Identity, home: &Path) -> Result<(), ConfineError> {
    let (group_exists, user_exists) = check_conflicts(id)?;
    let gid = id.gid.to_string();
    let uid = id.uid.to_string();
    if !group_exists {
        run("groupadd", &["--system", "--gid", &gid, &id.group])?;
    }
    if !user_exists {
        let home = home.to_string_lossy();
        run(
            "useradd",
            &[
                "--system",
                "--uid",
                &uid,
                "--gid",
                &gid,
                "--home-dir",
                &home,
                "--no-create-home",
                "--shell",
                nologin(),
                &id.user,
            ],
        )?;
    }
    Ok(())
}

/// Removes the environment's user and group, only if they are still the ones it created
/// (same name and number): an account that changed hands is not ours to delete.
pub fn remove_account(id: &Identity) -> Result<(), ConfineError> {
    if holder_of_uid(id.uid).as_deref() == Some(&format!("user {:?}", id.user)) {
        run("userdel", &[&id.user])?;
    }
    if holder_of_gid(id.gid).as_deref() == Some(&format!("group {:?}", id.group)) {
        run("groupdel", &[&id.group])?;
    }
    Ok(())
}
