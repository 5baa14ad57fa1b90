//! The `corpus` command line: its flags and commands, and the checks every argument passes
//! before the config file's password is read or the master contacted.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::commands::quota::parse_size;

/// What `corpus --help` says about exit codes (README's "Exit status" says the same).
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  the job ran and did not succeed: it failed, was rolled back, or was refused by the agent
  2  the command could not run: invalid arguments, configuration, connection or login, or the
     master refused the request
  130  interrupted (Ctrl-C, SIGTERM): the job goes on; `corpus follow` shows it";

#[derive(Parser)]
#[command(
    name = "corpus",
    version,
    about = "deploy projects into corpus environments",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Config file (default: $CORPUS_CONFIG, else ~/.makinastates.conf).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long a command following a job (push, rollback, destroy, follow) waits for any
    /// word from the master (the master sends a keepalive every 10 s) before giving up.
    #[arg(long, global = true, env = "CORPUS_IDLE_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_seconds: u64,
    /// How long a command following a job tries to reattach to it when its stream breaks
    /// (the master restarted, the network blinked) before giving up.
    #[arg(long, global = true, env = "CORPUS_REATTACH_SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reattach_seconds: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the hosts projects can be installed onto.
    Listhosts {
        /// Endpoint name from the config file; optional when it defines only one.
        endpoint: Option<String>,
    },
    /// Create an environment and print its UUID.
    #[command(name = "init_env", alias = "init-env")]
    InitEnv {
        endpoint: String,
        /// dev, staging or prod.
        platform: String,
        /// The host (agent id) to create it on; default: one with a free slot.
        host: Option<String>,
        /// Override the platform's mode: editable, cooking or final.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Create a project's layout in an environment.
    Init {
        endpoint: String,
        env: String,
        project: String,
    },
    /// Deploy the git tree at HEAD of --path into an environment.
    Push {
        endpoint: String,
        env: String,
        project: String,
        /// The project's git checkout (must contain .salt/).
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// Pillar: a YAML file, or a directory of .sls files (with an optional top.sls).
        #[arg(long)]
        pillar: Option<PathBuf>,
        /// Final mode: the release to deploy (default: the latest cooked one).
        #[arg(long)]
        release: Option<String>,
        /// Final mode: take the release from this staging environment (UUID) of the prod
        /// environment's owner, when they cooked it in several.
        #[arg(long, value_name = "ENV")]
        from: Option<String>,
    },
    /// Return to the previous deployment, or to --to DEPLOY_ID.
    Rollback {
        endpoint: String,
        env: String,
        project: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Show deployments, releases and storage.
    Status {
        endpoint: String,
        env: String,
        project: Option<String>,
    },
    /// Free a project, or the whole environment.
    Destroy {
        endpoint: String,
        env: String,
        project: Option<String>,
    },
    /// Follow a job to its end: the latest job of PROJECT, or the job JOB_ID (e.g. after
    /// Ctrl-C during a push).
    Follow {
        endpoint: String,
        env: String,
        /// A project name, or a job id.
        target: String,
    },
    /// Shrink a project's storage quota by SIZE.
    Trim {
        endpoint: String,
        env: String,
        project: String,
        size: String,
    },
    /// Grow a project's storage quota by SIZE.
    Enlarge {
        endpoint: String,
        env: String,
        project: String,
        size: String,
    },
    /// Log in (asking nothing: the password is in the config file) and cache the session, so
    /// the next commands do not log in again.
    Login {
        /// Endpoint name from the config file; optional when it defines only one.
        endpoint: Option<String>,
    },
    /// End the cached session on the master and delete it from the cache.
    Logout {
        /// Endpoint name from the config file; optional when it defines only one.
        endpoint: Option<String>,
    },
}

impl Command {
    /// The endpoint named on the command line, if any.
    /// Whether the command follows a job to its end (no answer deadline applies).
    pub fn follows_a_job(&self) -> bool {
        matches!(
            self,
            Command::Init { .. }
                | Command::Push { .. }
                | Command::Rollback { .. }
                | Command::Destroy { .. }
                | Command::Follow { .. }
        )
    }

    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Command::Listhosts { endpoint }
            | Command::Login { endpoint }
            | Command::Logout { endpoint } => endpoint.as_deref(),
            Command::InitEnv { endpoint, .. }
            | Command::Init { endpoint, .. }
            | Command::Push { endpoint, .. }
            | Command::Rollback { endpoint, .. }
            | Command::Status { endpoint, .. }
            | Command::Destroy { endpoint, .. }
            | Command::Follow { endpoint, .. }
            | Command::Trim { endpoint, .. }
            | Command::Enlarge { endpoint, .. } => Some(endpoint),
        }
    }
}

impl Command {
    /// Checks every argument that can be checked without the master: names, UUIDs, platform,
    /// mode and sizes. Runs before the config is read, so a typo never costs a login.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            Command::Listhosts { .. } | Command::Login { .. } | Command::Logout { .. } => {}
            Command::InitEnv {
                platform,
                host,
                mode,
                ..
            } => {
                if !matches!(platform.as_str(), "dev" | "staging" | "prod") {
                    bail!(
                        "platform type {} is invalid: use dev, staging or prod",
                        corpus_proto::names::quote_input(platform)
                    );
                }
                if let Some(host) = host {
                    corpus_proto::names::validate_agent_id(host)?;
                }
                let mode = mode.as_deref().unwrap_or("editable");
                if !matches!(mode, "editable" | "cooking" | "final") {
                    bail!(
                        "mode {} is invalid: use editable, cooking or final",
                        corpus_proto::names::quote_input(mode)
                    );
                }
            }
            Command::Push {
                env, project, from, ..
            } => {
                env_uuid(env)?;
                corpus_proto::names::validate_project_name(project)?;
                if let Some(from) = from {
                    env_uuid(from)?;
                }
            }
            Command::Init { env, project, .. } | Command::Rollback { env, project, .. } => {
                env_uuid(env)?;
                corpus_proto::names::validate_project_name(project)?;
            }
            Command::Status { env, project, .. } | Command::Destroy { env, project, .. } => {
                env_uuid(env)?;
                if let Some(project) = project {
                    corpus_proto::names::validate_project_name(project)?;
                }
            }
            Command::Follow { env, target, .. } => {
                env_uuid(env)?;
                if uuid::Uuid::try_parse(target).is_err() {
                    corpus_proto::names::validate_project_name(target).map_err(|e| {
                        anyhow::anyhow!("{target:?} is neither a job id nor a project name: {e}")
                    })?;
                }
            }
            Command::Trim {
                env, project, size, ..
            }
            | Command::Enlarge {
                env, project, size, ..
            } => {
                env_uuid(env)?;
                corpus_proto::names::validate_project_name(project)?;
                parse_size(size)?;
            }
        }
        Ok(())
    }
}

/// An environment is named by the UUID `corpus init_env` printed.
fn env_uuid(env: &str) -> anyhow::Result<()> {
    if uuid::Uuid::try_parse(env).is_err() {
        bail!(
            "environment {env:?} is not a UUID: use the one `corpus init_env` printed (see \
             `corpus status` or ask an operator for `corpus-master envs list`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "6f1c1a52-33a1-4a8e-9b9e-2f4b7d0c8e11";

    fn check(args: &[&str]) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(std::iter::once("corpus").chain(args.iter().copied()))?;
        cli.command.validate()
    }

    fn error(args: &[&str]) -> String {
        check(args).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn valid_arguments_pass() -> anyhow::Result<()> {
        check(&["listhosts"])?;
        check(&["init_env", "local", "staging", "node1", "--mode", "final"])?;
        check(&["push", "local", ENV, "app", "--path", "."])?;
        check(&["status", "local", ENV])?;
        check(&["destroy", "local", ENV, "app"])?;
        check(&["trim", "local", ENV, "app", "500M"])?;
        Ok(())
    }

    #[test]
    fn each_kind_of_bad_argument_is_named() {
        assert!(error(&["push", "local", "not-a-uuid", "app"]).contains("not a UUID"));
        assert!(error(&["status", "local", ENV, "../x"]).contains("\"../x\""));
        assert!(error(&["init_env", "local", "qa"]).contains("dev, staging or prod"));
        assert!(
            error(&["init_env", "local", "dev", "--mode", "fast"]).contains("editable, cooking")
        );
        assert!(error(&["init_env", "local", "dev", "bad host!"]).contains("bad host!"));
        assert!(error(&["enlarge", "local", ENV, "app", "lots"]).contains("\"lots\""));
        assert!(error(&["rollback", "local", "1234", "app"]).contains("\"1234\""));
    }
}
