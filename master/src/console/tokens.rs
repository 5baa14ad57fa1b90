//! `corpus-master tokens create`: single-use enrollment tokens for agents.

use std::time::Duration;

use corpus_proto::CreateTokenRequest;
use serde_json::json;

use super::{Console, print_json, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a single-use enrollment token, printed alone on stdout.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = corpus_runtime::parse_duration)]
        ttl: Duration,
    },
}

pub async fn run(command: TokensCommand, console: &Console) -> anyhow::Result<()> {
    let TokensCommand::Create { ttl } = command;
    let token = console
        .admin()
        .await?
        .create_enrollment_token(CreateTokenRequest {
            // Zero asks the master for its default; a sub-second ttl means the shortest one.
            ttl_seconds: ttl.as_secs().max(1),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if console.json {
        print_json(&json!({"token": token.token, "expires_at": token.expires_at_unix}));
    } else {
        println!("{}", token.token);
    }
    Ok(())
}
