//! `corpus logout [ENDPOINT]`: ends the cached session on the master (so a copy of the token
//! is worthless too) and deletes it from the cache.

use corpus_proto::Empty;
use serde_json::json;
use tonic::Code;

use crate::config::Endpoint;
use crate::session::{self, cache};

pub async fn run(endpoint: &Endpoint, json: bool) -> anyhow::Result<()> {
    let Some(token) = cache::load(endpoint) else {
        // An expired or unreadable cache entry is removed all the same.
        cache::remove(endpoint);
        report(endpoint, false, json);
        return Ok(());
    };
    let channel = session::connect(endpoint).await?;
    let mut client = session::client_with_token(channel, &token)?;
    let limit = session::deadline(session::ANSWER_DEADLINE);
    let answer = tokio::time::timeout(limit, client.logout(Empty {}))
        .await
        .map_err(|_| session::silent_master(endpoint, "logging out", limit))?;
    match answer {
        // Already ended on the master (expired, revoked): only the cache is left to clean.
        Ok(_) => {}
        Err(status) if status.code() == Code::Unauthenticated => {}
        Err(status) => return Err(session::rpc_error(endpoint, status)),
    }
    cache::remove(endpoint);
    report(endpoint, true, json);
    Ok(())
}

fn report(endpoint: &Endpoint, ended: bool, json: bool) {
    if json {
        println!(
            "{}",
            json!({"endpoint": endpoint.name, "session_ended": ended})
        );
    } else if ended {
        println!("logged out of {}", endpoint.name);
    } else {
        println!("not logged in to {}: nothing to do", endpoint.name);
    }
}
