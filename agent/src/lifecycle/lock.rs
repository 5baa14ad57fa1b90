//! One deploy per project at a time: an `flock(2)` on `.corpus/lock`, whose content names the
//! holder (user, job id, start time, pid) for the jobs it refuses. The kernel drops the lock with
//! the process, so no stale lock survives a crash.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a busy lock is retried before the job is refused.
const RELEASE_GRACE: Duration = Duration::from_millis(200);

/// Who holds a project's lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub user: String,
    pub job_id: String,
    /// RFC 3339 UTC.
    pub started: String,
    pub pid: u32,
}

/// A held project lock; dropping it releases the lock.
#[derive(Debug)]
pub struct ProjectLock {
    /// The open file carries the flock; closing it unlocks.
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another job holds it (its details, when already written).
    Busy(Option<LockHolder>),
    Io(io::Error),
}

impl ProjectLock {
    /// Takes the lock at `path` without waiting and records `holder` in it.
    pub fn acquire(path: &Path, holder: &LockHolder) -> Result<ProjectLock, LockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(LockError::Io)?;
        // A process forked by another thread holds a copy of a released lock's descriptor
        // until it execs (close-on-exec): a lock freed a moment ago may need a short retry.
        let deadline = Instant::now() + RELEASE_GRACE;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io(err));
            }
            if Instant::now() >= deadline {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Busy(serde_json::from_str(&text).ok()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = serde_json::to_vec(holder).map_err(|e| LockError::Io(io::Error::other(e)))?;
        file.set_len(0).map_err(LockError::Io)?;
        file.rewind().map_err(LockError::Io)?;
        file.write_all(&text).map_err(LockError::Io)?;
        Ok(ProjectLock { _file: file })
    }

    /// The current holder of the lock at `path`, if it is held.
    pub fn holder(path: &Path) -> Option<LockHolder> {
        let mut file = File::open(path).ok()?;
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }
}
