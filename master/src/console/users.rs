//! `corpus-master users add|set|list|disable|enable|delete|passwd`: the people who may log in
//! with `corpus`, their limits and their access.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use corpus_proto::{
    AddUserRequest, DeleteUserRequest, Empty, SetPasswordRequest, User, UserDisabledRequest,
    UserLimitsRequest,
};
use serde_json::json;

use super::{Console, print_json, printable, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum UsersCommand {
    /// Add a user; the password is read from standard input.
    Add {
        id: String,
        /// The user may act on every environment.
        #[arg(long)]
        admin: bool,
        /// How many environments the user may own (default 4; admins are not limited).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_envs: Option<u32>,
    },
    /// Change a user's limits.
    Set {
        id: String,
        /// How many environments the user may own; existing ones are kept if it is lower.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..), required_unless_present = "max_storage")]
        max_envs: Option<u32>,
        /// Bytes of archives the master may store for the user's environments (default 20 GB);
        /// project quotas cannot be raised past it.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_storage: Option<u64>,
    },
    /// List users.
    List,
    /// Stop a user from logging in; the user's sessions end at once.
    Disable { id: String },
    /// Let a disabled user log in again.
    Enable { id: String },
    /// Delete a user: its sessions end and its grants go. Refused while the user owns
    /// environments, unless --force (they stay, owned by the deleted id).
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Set a user's password, read from the terminal or standard input (never the command
    /// line); the user's sessions end.
    Passwd { id: String },
}

pub async fn run(command: UsersCommand, console: &Console) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            id,
            admin,
            max_envs,
        } => add(console, id, admin, max_envs.unwrap_or(0)).await,
        UsersCommand::Set {
            id,
            max_envs,
            max_storage,
        } => set(console, id, max_envs.unwrap_or(0), max_storage.unwrap_or(0)).await,
        UsersCommand::List => list(console).await,
        UsersCommand::Disable { id } => set_disabled(console, id, true).await,
        UsersCommand::Enable { id } => set_disabled(console, id, false).await,
        UsersCommand::Delete { id, force } => delete(console, id, force).await,
        UsersCommand::Passwd { id } => passwd(console, id).await,
    }
}

/// The password from the terminal (not echoed) or the first line of standard input.
fn read_password(id: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {id}: "))
            .context("cannot read the password")?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the password from standard input")?;
        input.lines().next().unwrap_or_default().to_owned()
    };
    if password.is_empty() {
        anyhow::bail!("no password given on standard input for user {id:?}");
    }
    Ok(password)
}

async fn add(console: &Console, id: String, admin: bool, max_envs: u32) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&id)?;
    let mut client = console.admin().await?;
    let password = read_password(&id)?;
    let user = client
        .add_user(AddUserRequest {
            id,
            password,
            admin,
            max_envs,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&json!({"id": user.id, "admin": user.admin, "max_envs": user.max_envs}));
    } else {
        println!(
            "added user {}{}",
            printable(&user.id),
            if user.admin { " (admin)" } else { "" }
        );
    }
    Ok(())
}

async fn set(
    console: &Console,
    id: String,
    max_envs: u32,
    max_storage_bytes: u64,
) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&id)?;
    let user = console
        .admin()
        .await?
        .set_user_limits(UserLimitsRequest {
            id,
            max_envs,
            max_storage_bytes,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(
            &json!({"id": user.id, "admin": user.admin, "max_envs": user.max_envs, "max_storage_bytes": user.max_storage_bytes}),
        );
    } else {
        println!(
            "user {} may own {} environments and store {} bytes",
            printable(&user.id),
            user.max_envs,
            user.max_storage_bytes
        );
    }
    Ok(())
}

async fn list(console: &Console) -> anyhow::Result<()> {
    let users = console
        .admin()
        .await?
        .list_users(Empty {})
        .await
        .map_err(rpc)?
        .into_inner()
        .users;
    if console.json {
        let list: Vec<_> = users
            .iter()
            .map(|u| json!({"id": u.id, "admin": u.admin, "max_envs": u.max_envs, "created_at": u.created_at_unix, "disabled": u.disabled}))
            .collect();
        print_json(&serde_json::Value::Array(list));
    } else {
        for u in users {
            println!(
                "{}{}{}",
                printable(&u.id),
                if u.admin { " (admin)" } else { "" },
                if u.disabled { " (disabled)" } else { "" }
            );
        }
    }
    Ok(())
}

fn user_json(user: &User) -> serde_json::Value {
    json!({"id": user.id, "admin": user.admin, "max_envs": user.max_envs, "disabled": user.disabled})
}

async fn set_disabled(console: &Console, id: String, disabled: bool) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&id)?;
    let user = console
        .admin()
        .await?
        .set_user_disabled(UserDisabledRequest { id, disabled })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&user_json(&user));
    } else if disabled {
        println!("user {} disabled; its sessions ended", printable(&user.id));
    } else {
        println!("user {} enabled", printable(&user.id));
    }
    Ok(())
}

async fn delete(console: &Console, id: String, force: bool) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&id)?;
    let user = console
        .admin()
        .await?
        .delete_user(DeleteUserRequest { id, force })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&user_json(&user));
    } else {
        println!("user {} deleted; its sessions ended", printable(&user.id));
    }
    Ok(())
}

async fn passwd(console: &Console, id: String) -> anyhow::Result<()> {
    corpus_proto::names::validate_user_id(&id)?;
    let mut client = console.admin().await?;
    let password = read_password(&id)?;
    let user = client
        .set_password(SetPasswordRequest { id, password })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&user_json(&user));
    } else {
        println!(
            "password of {} changed; its sessions ended",
            printable(&user.id)
        );
    }
    Ok(())
}
