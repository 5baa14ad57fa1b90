//! One SSH session to a node (libssh2 through the `ssh2` crate, blocking): connect, check the
//! host key against the master's known_hosts, log in with a key file, run commands and copy
//! files by SCP. Errors carry what a failed step needs to be acted on: the remote exit status
//! and stderr.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2::Session;

use super::known_hosts::{KnownHosts, KnownHostsError};

/// How long connecting, and any single SSH operation, may take.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{target} is not USER@HOST:PORT: {why}")]
    BadTarget { target: String, why: &'static str },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh {what} with {address} failed: {source}")]
    Protocol {
        address: String,
        what: &'static str,
        #[source]
        source: ssh2::Error,
    },
    #[error(transparent)]
    HostKey(#[from] KnownHostsError),
    #[error(
        "{user}@{address} refused the key {key}: {reason} (is its public half in the node's \
         ~{user}/.ssh/authorized_keys?)"
    )]
    Login {
        user: String,
        address: String,
        key: PathBuf,
        reason: String,
    },
    #[error("remote command `{command}` exited with status {status}: {stderr}")]
    Remote {
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("{what} on {address}: {source}")]
    Io {
        what: String,
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where to log in: `[USER@]HOST[:PORT]` (an IPv6 host in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, SshError> {
        let bad = |why| SshError::BadTarget {
            target: text.to_owned(),
            why,
        };
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => (user, rest),
            None => ("root", text),
        };
        if user.is_empty() {
            return Err(bad("the user is empty"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("a '[' host has no ']'"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            None => 22,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        };
        Ok(Target {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What a remote command printed and returned.
pub struct Output {
    pub stdout: String,
}

/// An SSH session whose host key was checked.
pub struct Node {
    session: Session,
    target: Target,
    /// The host key's fingerprint, for the operator and the node record.
    pub fingerprint: String,
    /// Whether this connection recorded the key in known_hosts.
    pub newly_trusted: bool,
}

impl Node {
    /// Connects and checks the host key; does not log in yet.
    pub fn connect(
        target: &Target,
        known_hosts: &KnownHosts,
        accept_new: bool,
    ) -> Result<Node, SshError> {
        let address = target.address();
        let connect_err = |source| SshError::Connect {
            address: address.clone(),
            source,
        };
        let socket = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the host name resolves to no address",
                ))
            })?;
        let tcp = TcpStream::connect_timeout(&socket, TIMEOUT).map_err(connect_err)?;
        let protocol = |what| {
            let address = address.clone();
            move |source| SshError::Protocol {
                address,
                what,
                source,
            }
        };
        let mut session = Session::new().map_err(protocol("session setup"))?;
        session.set_timeout(TIMEOUT.as_millis() as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(protocol("handshake"))?;
        let (blob, _) = session
            .host_key()
            .ok_or_else(|| KnownHostsError::Malformed {
                host: address.clone(),
            })?;
        let (fingerprint, newly_trusted) =
            known_hosts.verify(&target.host, target.port, blob, accept_new)?;
        Ok(Node {
            session,
            target: target.clone(),
            fingerprint,
            newly_trusted,
        })
    }

    /// Logs in as the target's user with the private key in `key_file`.
    pub fn login(&self, key_file: &Path) -> Result<(), SshError> {
        let refused = |reason: String| SshError::Login {
            user: self.target.user.clone(),
            address: self.target.address(),
            key: key_file.to_owned(),
            reason,
        };
        self.session
            .userauth_pubkey_file(&self.target.user, None, key_file, None)
            .map_err(|e| refused(e.message().to_owned()))?;
        if !self.session.authenticated() {
            return Err(refused("not authenticated".into()));
        }
        Ok(())
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SshError {
        let what = what.into();
        let address = self.target.address();
        move |source| SshError::Io {
            what,
            address,
            source,
        }
    }

    fn ssh(&self, what: &'static str) -> impl FnOnce(ssh2::Error) -> SshError {
        let address = self.target.address();
        move |source| SshError::Protocol {
            address,
            what,
            source,
        }
    }

    /// Runs `command` with `sh -c` semantics; a non-zero exit is an error carrying `what`
    /// (a short description safe to print), the status and stderr.
    pub fn run(&self, what: &str, command: &str) -> Result<Output, SshError> {
        let mut channel = self
            .session
            .channel_session()
            .map_err(self.ssh("channel"))?;
        channel.exec(command).map_err(self.ssh("exec"))?;
        let mut stdout = String::new();
        channel
            .read_to_string(&mut stdout)
            .map_err(self.io(format!("reading the output of `{what}`")))?;
        let mut stderr = String::new();
        channel
            .stderr()
            .read_to_string(&mut stderr)
            .map_err(self.io(format!("reading the errors of `{what}`")))?;
        channel.wait_close().map_err(self.ssh("channel close"))?;
        let status = channel.exit_status().map_err(self.ssh("exit status"))?;
        if status != 0 {
            return Err(SshError::Remote {
                command: what.to_owned(),
                status,
                stderr: stderr.trim().to_owned(),
            });
        }
        Ok(Output { stdout })
    }

    /// Copies `size` bytes from `source` to `remote_path` (created with `mode`) by SCP.
    pub fn upload(
        &self,
        remote_path: &str,
        mode: i32,
        size: u64,
        source: &mut dyn Read,
    ) -> Result<(), SshError> {
        let mut channel = self
            .session
            .scp_send(Path::new(remote_path), mode, size, None)
            .map_err(self.ssh("scp"))?;
        std::io::copy(source, &mut channel).map_err(self.io(format!("copying {remote_path}")))?;
        channel.send_eof().map_err(self.ssh("scp end"))?;
        channel.wait_eof().map_err(self.ssh("scp end"))?;
        channel.close().map_err(self.ssh("scp close"))?;
        channel.wait_close().map_err(self.ssh("scp close"))?;
        Ok(())
    }
}

/// `text` quoted for a POSIX shell.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_to_root_and_port_22() -> anyhow::Result<()> {
        let t = Target::parse("node1")?;
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("root", "node1", 22)
        );
        let t = Target::parse("ops@10.0.0.5:2222")?;
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("ops", "10.0.0.5", 2222)
        );
        let t = Target::parse("[::1]:2200")?;
        assert_eq!(
            (t.host.as_str(), t.port, t.address()),
            ("::1", 2200, "[::1]:2200".into())
        );
        assert!(Target::parse("node:0").is_err());
        assert!(Target::parse("@node").is_err());
        assert_eq!(quote("a'b"), r"'a'\''b'");
        Ok(())
    }
}
