//! The daemons as seed 004 describes them: SIGUSR2 writes a state summary to the log, the
//! master takes its sockets from systemd socket activation and needs no root, and the shipped
//! units pass `systemd-analyze verify`.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use corpus_tests::{Agent, Master, Proc, bin, wait_until};

/// A uid and gid no account uses: the master runs as "nobody in particular", so nothing is
/// created on the machine and nothing needs removing.
fn unused_id() -> anyhow::Result<u32> {
    for id in (61_000u32..62_000).map(|n| n + std::process::id() % 500) {
        let taken = |db: &str| {
            Command::new("getent")
                .args([db, &id.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !taken("passwd") && !taken("group") {
            return Ok(id);
        }
    }
    anyhow::bail!("no free uid in 61000-62499")
}

/// A copy of `fd` numbered 100 or above (close-on-exec), so placing the copies at 3 and 4 in
/// the child cannot overwrite one another.
fn high_copy(fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor this test owns; the new one is ours.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `copy` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

fn owner(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.uid())
}

#[test]
fn an_unprivileged_master_serves_on_passed_sockets_and_both_daemons_dump_state_on_sigusr2()
-> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let data_dir = root.path().join("master");
    let out = Command::new(bin("corpus-master"))
        .args(["init", "--data-dir"])
        .arg(&data_dir)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let id = unused_id()?;
    let chown = Command::new("chown")
        .arg("-R")
        .arg(format!("{id}:{id}"))
        .arg(&data_dir)
        .status()?;
    assert!(chown.success());

    // What systemd would do: listen, then hand the sockets over as fds 3 (tls) and 4 (admin).
    let tls = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = tls.local_addr()?.to_string();
    let admin = std::os::unix::net::UnixListener::bind(data_dir.join("admin.sock"))?;
    let (tls_fd, admin_fd) = (high_copy(tls.as_raw_fd())?, high_copy(admin.as_raw_fd())?);
    let (tls_raw, admin_raw) = (tls_fd.as_raw_fd(), admin_fd.as_raw_fd());
    // Outside the data dir: the master restricts every file there, and this one is root's.
    let log = root.path().join("serve.log");
    let mut command = Command::new("sh");
    command
        // LISTEN_PID must be the master's own pid: the shell's, which exec keeps.
        .args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh"])
        .arg(bin("corpus-master"))
        // Port 9 needs privilege the master lacks: it must not bind, it must use fd 3.
        .args(["serve", "--heartbeat", "1s", "--listen", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "tls:admin")
        .env("RUST_LOG", "info")
        .uid(id)
        .gid(id)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log)?));
    // SAFETY: only dup2, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(tls_raw, 3), (admin_raw, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop((tls_fd, admin_fd, tls, admin));
    let stdout = child.stdout.take().context("no stdout")?;
    let proc = Proc { child, log };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("master did not start: {}", proc.log_text()))?;
    assert_eq!(line, format!("corpus-master listening on {addr}"));
    let master = Master::adopt(&data_dir, addr, proc);
    assert!(
        master.proc.log_text().contains("sockets passed by systemd"),
        "{}",
        master.proc.log_text()
    );

    // Not root: the process runs as the throwaway id, and what it creates is that id's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", master.proc.child.id()))?;
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![id.to_string(); 4],
        "{uids}"
    );
    assert_eq!(owner(&data_dir.join("blobs"))?, id);

    // The console reaches the passed admin socket, an agent the passed TLS socket.
    let token = master.token("10m")?;
    let agent = Agent::start(&master, root.path(), "daemon1", Some(&token))?;
    master.wait_agent("daemon1", "accepted", true)?;

    master.proc.signal(libc::SIGUSR2);
    wait_until("the master's state summary", || {
        Ok(master
            .proc
            .log_text()
            .contains("SIGUSR2: state summary: links=1 "))
    })?;
    let log = master.proc.log_text();
    for part in ["jobs in flight=0", "sessions=", "memory RSS="] {
        assert!(log.contains(part), "{part:?} missing from {log}");
    }
    agent.proc.signal(libc::SIGUSR2);
    wait_until("the agent's state summary", || {
        Ok(agent
            .proc
            .log_text()
            .contains("SIGUSR2: state summary: link=attached"))
    })?;
    let log = agent.proc.log_text();
    for part in [
        "jobs in flight=0",
        "results awaiting the master's ack=0",
        "memory RSS=",
    ] {
        assert!(log.contains(part), "{part:?} missing from {log}");
    }
    // Still serving after the signals.
    master.wait_agent("daemon1", "accepted", true)?;
    Ok(())
}

#[test]
fn the_shipped_units_verify_and_run_the_master_unprivileged_and_hardened() -> anyhow::Result<()> {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    let dir = tempfile::tempdir()?;
    let master = bin("corpus-master").display().to_string();
    for name in [
        "corpus-master.service",
        "corpus-master.socket",
        "corpus-agent.service",
    ] {
        let text = std::fs::read_to_string(units.join(name))?;
        let text = text
            .replace("/usr/local/bin/corpus-master", &master)
            .replace(
                "/usr/local/bin/corpus-agent",
                &bin("corpus-agent").display().to_string(),
            );
        std::fs::write(dir.path().join(name), text)?;
    }
    let service = std::fs::read_to_string(units.join("corpus-master.service"))?;
    for line in [
        "DynamicUser=yes",
        "StateDirectory=corpus-master",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=65536",
    ] {
        assert!(
            service.contains(line),
            "{line:?} missing from the master's unit"
        );
    }
    let socket = std::fs::read_to_string(units.join("corpus-master.socket"))?;
    assert!(socket.contains("FileDescriptorName=tls"), "{socket}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(
            [
                "corpus-master.socket",
                "corpus-master.service",
                "corpus-agent.service",
            ]
            .map(|n| dir.path().join(n)),
        )
        .output()
        .context("systemd-analyze is needed to verify the units (Debian: apt install systemd)")?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
