//! `corpus init ENDPOINT ENV_UUID PROJECT`: creates the project layout on the environment's agent.

use corpus_proto::ProjectRequest;

use crate::progress;
use crate::session::{Session, rpc_error};

pub async fn run(mut session: Session, env: &str, project: &str, json: bool) -> anyhow::Result<()> {
    let updates = session
        .client
        .init_project(ProjectRequest {
            env_uuid: env.to_owned(),
            project: project.to_owned(),
        })
        .await
        .map_err(|s| rpc_error(&session.endpoint, s))?
        .into_inner();
    progress::follow(session, env, &format!("init {project}"), updates, json).await
}
