//! `corpus-master envs list|grant|revoke|defaults`: environments seen from the operator's side.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use corpus_proto::{DefaultsRequest, Empty, Environment, GrantRequest};
use serde_json::{Value, json};

use super::{Console, Table, print_json, printable, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum EnvsCommand {
    /// List environments.
    List,
    /// Let another user act on an environment.
    Grant { env: String, user: String },
    /// Take back a grant: the user can no longer act on the environment.
    Revoke { env: String, user: String },
    /// Set the environment's default project settings from YAML on standard input (between
    /// `.salt/PILLAR.sample` and the pushed pillar).
    Defaults { env: String },
}

pub async fn run(command: EnvsCommand, console: &Console) -> anyhow::Result<()> {
    match command {
        EnvsCommand::List => list(console).await,
        EnvsCommand::Grant { env, user } => set_grant(console, env, user, false).await,
        EnvsCommand::Revoke { env, user } => set_grant(console, env, user, true).await,
        EnvsCommand::Defaults { env } => defaults(console, env).await,
    }
}

fn env_json(e: &Environment) -> Value {
    json!({
        "uuid": e.uuid,
        "platform": e.platform,
        "agent": e.agent_id,
        "owner": e.owner,
        "created_at": e.created_at_unix,
    })
}

async fn list(console: &Console) -> anyhow::Result<()> {
    let envs = console
        .admin()
        .await?
        .list_environments(Empty {})
        .await
        .map_err(rpc)?
        .into_inner()
        .environments;
    if console.json {
        print_json(&Value::Array(envs.iter().map(env_json).collect()));
        return Ok(());
    }
    let mut table = Table::new(&["UUID", "PLATFORM", "AGENT", "OWNER"]);
    for e in &envs {
        table.row([&e.uuid, &e.platform, &e.agent_id, &e.owner]);
    }
    table.print();
    Ok(())
}

/// `envs grant` (`revoke` false) or `envs revoke`: one grant added or removed.
async fn set_grant(
    console: &Console,
    env: String,
    user: String,
    revoke: bool,
) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&user)?;
    let request = GrantRequest {
        env_uuid: env,
        user: user.clone(),
    };
    let mut admin = console.admin().await?;
    let e = if revoke {
        admin.revoke_environment(request).await
    } else {
        admin.grant_environment(request).await
    }
    .map_err(rpc)?
    .into_inner();
    if console.json {
        print_json(&env_json(&e));
    } else {
        let how = if revoke { "no longer shared" } else { "shared" };
        println!(
            "environment {} {how} with {}",
            printable(&e.uuid),
            printable(&user)
        );
    }
    Ok(())
}

/// Reads the defaults YAML from standard input.
async fn defaults(console: &Console, env: String) -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        eprintln!(
            "reading the environment's default project settings (YAML) from standard input; end with Ctrl-D"
        );
    }
    let mut yaml = String::new();
    std::io::stdin()
        .read_to_string(&mut yaml)
        .context("cannot read the defaults (YAML) from standard input")?;
    let e = console
        .admin()
        .await?
        .set_environment_defaults(DefaultsRequest {
            env_uuid: env,
            yaml,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&env_json(&e));
    } else {
        println!("defaults of environment {} set", printable(&e.uuid));
    }
    Ok(())
}
