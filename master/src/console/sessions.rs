//! `corpus-master sessions list|revoke`: who is logged in, and ending their sessions. A session
//! is named by a short hash; its token never leaves the master (nor is it stored there).

use corpus_proto::{RevokeSessionsRequest, SessionsRequest};
use serde_json::{Value, json};

use super::{Console, Table, print_json, printable, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum SessionsCommand {
    /// List open sessions: id, user, source address, created, expires.
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
    },
    /// End sessions now: one (by the id `sessions list` shows), a user's, or all.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["user", "all", "id"])))]
    Revoke {
        /// Every session of this user.
        #[arg(long)]
        user: Option<String>,
        /// Every session of every user.
        #[arg(long)]
        all: bool,
        /// The session with this id.
        id: Option<String>,
    },
}

pub async fn run(command: SessionsCommand, console: &Console) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List { user } => list(console, user).await,
        SessionsCommand::Revoke { user, all, id } => revoke(console, user, all, id).await,
    }
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS` ("-" when unknown).
fn when(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    if unix <= 0 {
        return "-".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix.to_string())
}

async fn list(console: &Console, user: Option<String>) -> anyhow::Result<()> {
    if let Some(user) = &user {
        corpus_proto::names::validate_user_id(user)?;
    }
    let sessions = console
        .admin()
        .await?
        .list_sessions(SessionsRequest {
            user: user.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .sessions;
    if console.json {
        let list = sessions
            .iter()
            .map(|s| {
                json!({"id": s.id, "user": s.user, "source": s.source,
                       "created_at": s.created_at_unix, "expires_at": s.expires_at_unix})
            })
            .collect();
        print_json(&Value::Array(list));
        return Ok(());
    }
    let mut table = Table::new(&["ID", "USER", "SOURCE", "CREATED (UTC)", "EXPIRES (UTC)"]);
    for s in &sessions {
        table.row([
            s.id.clone(),
            s.user.clone(),
            s.source.clone(),
            when(s.created_at_unix),
            when(s.expires_at_unix),
        ]);
    }
    table.print();
    Ok(())
}

async fn revoke(
    console: &Console,
    user: Option<String>,
    all: bool,
    id: Option<String>,
) -> anyhow::Result<()> {
    if let Some(user) = &user {
        corpus_proto::names::validate_user_id(user)?;
    }
    let what = match (&user, all, &id) {
        (Some(user), _, _) => format!("of user {}", printable(user)),
        (_, true, _) => "of every user".to_owned(),
        (_, _, Some(id)) => format!("with id {}", printable(id)),
        _ => String::new(),
    };
    let revoked = console
        .admin()
        .await?
        .revoke_sessions(RevokeSessionsRequest {
            user: user.unwrap_or_default(),
            all,
            session_id: id.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .revoked;
    if console.json {
        print_json(&json!({"revoked": revoked}));
    } else {
        println!("{revoked} session(s) {what} ended");
    }
    Ok(())
}
