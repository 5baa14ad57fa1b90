//! No stray processes: what runs under an environment's UID, found in `/proc`, and stopped
//! (TERM, then KILL after a grace period). Processes inside one of the environment's own
//! systemd units (`corpus-<smep>-*.service`) are systemd's to manage and are left alone.

use std::fs;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Identity;

/// (real, effective) UIDs of a live process, from `/proc/<pid>/status`. A zombie is already
/// dead (only its parent's wait is missing) and counts as none.
fn uids_of(pid: i32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
    {
        return None;
    }
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Whether the process lives in one of the environment's own service units.
fn in_own_unit(pid: i32, id: &Identity) -> bool {
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let prefix = format!("/{}", id.service_prefix());
    cgroup
        .lines()
        .any(|l| l.contains(&prefix) && l.contains(".service"))
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The session of a process (field 6 of `/proc/<pid>/stat`, after the parenthesised name).
fn session_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(3)?.parse().ok()
}

/// Processes running (real or effective) as the environment's UID, outside its service units.
pub fn processes_of(id: &Identity) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| uids_of(pid).is_some_and(|(r, e)| r == id.uid || e == id.uid))
        .filter(|&pid| !in_own_unit(pid, id))
        .collect()
}

/// Every process of `session` (a confined phase's child made its own session; commands it
/// started in their own process groups stay in it).
pub fn processes_in_session(session: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| session_of(pid) == Some(session))
        .collect()
}

fn signal(pids: &[i32], sig: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill has no memory effects; a pid gone meanwhile just fails with ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Sends TERM to what `find` returns, waits up to `grace` for it to go, then KILLs what is
/// left. Returns how many processes were found at first.
pub fn stop_processes(find: impl Fn() -> Vec<i32>, grace: Duration) -> usize {
    let first = find();
    if first.is_empty() {
        return 0;
    }
    signal(&first, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if find().is_empty() {
            return first.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill until nothing is left: a process may fork between a scan and the signal.
    for _ in 0..50 {
        let left = find();
        if left.is_empty() {
            break;
        }
        signal(&left, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
    }
    first.len()
}

/// Stops every process still running under the environment's UID (agent start, before
/// recovery; environment destroy), logging what it found.
pub fn stop_environment_processes(id: &Identity, grace: Duration) -> usize {
    let found = processes_of(id);
    if !found.is_empty() {
        warn!(user = %id.user, uid = id.uid, pids = ?found, "stopping processes left running under the environment's user");
    }
    stop_processes(|| processes_of(id), grace)
}
