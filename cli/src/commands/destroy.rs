//! `corpus destroy ENDPOINT ENV_UUID [PROJECT]`: frees the project, or the whole environment.

use corpus_proto::DestroyRequest;

use crate::progress;
use crate::session::Session;

pub async fn run(
    mut session: Session,
    env: &str,
    project: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let call = session.client.destroy(DestroyRequest {
        env_uuid: env.to_owned(),
        project: project.unwrap_or_default().to_owned(),
    });
    let updates = progress::opened(&session.endpoint, "starting the destroy", call).await?;
    let what = match project {
        Some(p) => format!("destroy of {p}"),
        None => format!("destroy of environment {env}"),
    };
    progress::follow(session, env, &what, updates, json).await
}
