//! `corpus rollback ENDPOINT ENV_UUID PROJECT [--to DEPLOY_ID]`: returns to the previous
//! deployment, or to the named one.

use corpus_proto::RollbackRequest;

use crate::progress;
use crate::session::Session;

pub async fn run(
    mut session: Session,
    env: &str,
    project: &str,
    to: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let call = session.client.rollback(RollbackRequest {
        env_uuid: env.to_owned(),
        project: project.to_owned(),
        to_deploy_id: to.unwrap_or_default().to_owned(),
    });
    let updates = progress::opened(&session.endpoint, "starting the rollback", call).await?;
    progress::follow(
        session,
        env,
        &format!("rollback of {project}"),
        updates,
        json,
    )
    .await
}
