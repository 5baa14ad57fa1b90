//! `corpus-master render --agent ID [SLS...]`: Salt's `state.show_sls` for one agent, rendered
//! by the master from its own state and pillar trees with the agent's grains, never applied.

use super::{Console, rpc};

pub async fn run(console: &Console, agent: String, sls: Vec<String>) -> anyhow::Result<()> {
    corpus_proto::names::validate_agent_id(&agent)?;
    let response = console
        .admin()
        .await?
        .render(corpus_proto::RenderRequest {
            agent_id: agent,
            sls,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let plan: corpus_states::Plan = serde_json::from_slice(&response.plan_json)
        .map_err(|e| anyhow::anyhow!("the master sent an unreadable plan: {e}"))?;
    if console.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", corpus_states::show_sls(&plan));
    }
    Ok(())
}
