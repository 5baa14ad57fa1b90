//! The master's two listening sockets: the TLS port agents and clients dial, and the console's
//! admin socket. Taken from systemd socket activation when the master was started with
//! descriptors for it (`LISTEN_PID` is this process, `LISTEN_FDS` counts them from fd 3,
//! `LISTEN_FDNAMES` names them `tls` and `admin` after the socket unit's `FileDescriptorName=`),
//! else bound here: TLS with a listen backlog of [`LISTEN_BACKLOG`] (a fleet reconnecting after
//! a master restart must not find the queue full), the admin socket as `bind_admin_socket`
//! does. A descriptor passed by systemd is never re-bound, so the master needs no privilege to
//! listen on a low port.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

/// The TLS socket's listen backlog when the master binds it itself (the kernel caps it at
/// `net.core.somaxconn`). Under socket activation the unit's `Backlog=` applies.
pub const LISTEN_BACKLOG: i32 = 4096;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: RawFd = 3;

/// The sockets the master serves on, and where each came from (for the log).
pub struct Listeners {
    pub tls: TcpListener,
    pub admin: UnixListener,
    pub tls_from_systemd: bool,
    pub admin_from_systemd: bool,
}

/// Descriptors systemd passed to this process, by name.
#[derive(Debug, Default, PartialEq)]
struct Passed {
    tls: Option<RawFd>,
    admin: Option<RawFd>,
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (as given, for tests) for process
/// `pid`. Unnamed descriptors are taken in order: the first is `tls`, the second `admin`.
fn passed_descriptors(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> anyhow::Result<Passed> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Passed::default());
    };
    // Meant for another process (inherited from a parent that was activated): not ours.
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(Passed::default());
    }
    let count: RawFd = listen_fds.trim().parse().with_context(|| {
        format!("LISTEN_FDS {listen_fds:?} is not a number: check the socket unit")
    })?;
    let names: Vec<&str> = listen_fdnames.map_or_else(Vec::new, |n| n.split(':').collect());
    let mut passed = Passed::default();
    for index in 0..count.max(0) {
        let fd = FIRST_PASSED_FD + index;
        let name = match names.get(index as usize).copied() {
            Some(name) if !name.is_empty() && name != "unknown" => name,
            _ if index == 0 => "tls",
            _ if index == 1 => "admin",
            _ => "",
        };
        match name {
            "tls" if passed.tls.is_none() => passed.tls = Some(fd),
            "admin" if passed.admin.is_none() => passed.admin = Some(fd),
            other => anyhow::bail!(
                "systemd passed descriptor {fd} named {other:?}: the master takes one `tls` and one `admin` socket (FileDescriptorName= in corpus-master.socket)"
            ),
        }
    }
    Ok(passed)
}

/// Keeps a passed descriptor from leaking into the processes the master starts.
fn close_on_exec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor systemd handed to this process; no memory is involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

fn passed_tls(fd: RawFd) -> anyhow::Result<TcpListener> {
    close_on_exec(fd);
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID) for the master to
    // own; nothing else in the process uses it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .with_context(|| format!("descriptor {fd} passed as `tls` is not a TCP socket"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot make descriptor {fd} non-blocking"))?;
    Ok(TcpListener::from_std(listener)?)
}

fn passed_admin(fd: RawFd) -> anyhow::Result<UnixListener> {
    close_on_exec(fd);
    // SAFETY: as in `passed_tls`.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .with_context(|| format!("descriptor {fd} passed as `admin` is not a unix socket"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot make descriptor {fd} non-blocking"))?;
    Ok(UnixListener::from_std(listener)?)
}

/// Binds the TLS listener on `listen` with a backlog of [`LISTEN_BACKLOG`].
pub fn bind_tls(listen: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve listen address {listen:?}"))?
        .next()
        .with_context(|| format!("listen address {listen:?} resolves to nothing"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("cannot create a socket for {addr}"))?;
    // A restarted master rebinds at once, whatever connections of its predecessor linger.
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {listen}"))?;
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {listen}"))?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// The master's sockets: systemd's when it passed them, else bound on `listen` and in
/// `data_dir`.
pub fn acquire(listen: &str, data_dir: &Path) -> anyhow::Result<Listeners> {
    let env = |name| std::env::var(name).ok();
    let passed = passed_descriptors(
        env("LISTEN_PID").as_deref(),
        env("LISTEN_FDS").as_deref(),
        env("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let tls = match passed.tls {
        Some(fd) => passed_tls(fd)?,
        None => bind_tls(listen)?,
    };
    let admin = match passed.admin {
        Some(fd) => passed_admin(fd)?,
        None => crate::bind_admin_socket(data_dir)?,
    };
    Ok(Listeners {
        tls,
        admin,
        tls_from_systemd: passed.tls.is_some(),
        admin_from_systemd: passed.admin.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_taken_by_name_only_for_this_process() -> anyhow::Result<()> {
        let named = passed_descriptors(Some("42"), Some("2"), Some("admin:tls"), 42)?;
        assert_eq!(
            named,
            Passed {
                tls: Some(4),
                admin: Some(3)
            }
        );
        // Unnamed: TLS first, then admin.
        let unnamed = passed_descriptors(Some("42"), Some("1"), None, 42)?;
        assert_eq!(
            unnamed,
            Passed {
                tls: Some(3),
                admin: None
            }
        );
        // Another process's descriptors, or none at all.
        assert_eq!(
            passed_descriptors(Some("7"), Some("2"), None, 42)?,
            Passed::default()
        );
        assert_eq!(passed_descriptors(None, None, None, 42)?, Passed::default());
        let odd = passed_descriptors(Some("42"), Some("1"), Some("metrics"), 42);
        assert!(
            odd.is_err_and(|e| e.to_string().contains("\"metrics\"")),
            "an unknown name is refused, naming it"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_tls_socket_is_bound_with_the_large_backlog() -> anyhow::Result<()> {
        let listener = bind_tls("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let _client = tokio::net::TcpStream::connect(addr).await?;
        assert!(bind_tls("not an address").is_err());
        Ok(())
    }
}
