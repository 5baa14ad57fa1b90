//! `corpus init_env ENDPOINT dev|staging|prod [HOST]`: creates an environment on an agent with a
//! free slot (or HOST) and prints its UUID, alone on stdout; with `--json`, also its SMEP
//! identity there (`smep`, `uid`, `ports`).

use corpus_proto::InitEnvRequest;

use crate::session::{Session, rpc_error};

pub async fn run(
    mut session: Session,
    platform: &str,
    host: Option<&str>,
    mode: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let env = session
        .client
        .init_env(InitEnvRequest {
            platform: platform.to_owned(),
            host: host.unwrap_or_default().to_owned(),
            mode: mode.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"uuid": env.uuid, "platform": env.platform, "agent": env.agent_id, "owner": env.owner, "smep": env.smep, "uid": env.uid, "ports": env.ports})
        );
    } else {
        println!("{}", env.uuid);
    }
    Ok(())
}
