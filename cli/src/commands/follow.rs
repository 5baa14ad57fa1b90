//! `corpus follow ENDPOINT ENV_UUID PROJECT|JOB_ID`: attaches to a job (the project's latest,
//! or the one named) and follows it to its end like the push that started it: the events
//! already stored first, then the live ones, then the result.

use corpus_proto::FollowRequest;

use crate::progress;
use crate::session::Session;

pub async fn run(mut session: Session, env: &str, target: &str, json: bool) -> anyhow::Result<()> {
    let is_job = uuid::Uuid::try_parse(target).is_ok();
    let request = FollowRequest {
        env_uuid: env.to_owned(),
        job_id: if is_job {
            target.to_owned()
        } else {
            String::new()
        },
        project: if is_job {
            String::new()
        } else {
            target.to_owned()
        },
        from_sequence: 0,
    };
    let call = session.client.follow(request);
    let updates = progress::opened(&session.endpoint, "attaching to the job", call).await?;
    let what = if is_job {
        format!("job {target}")
    } else {
        format!("the latest job of {target}")
    };
    progress::follow(session, env, &what, updates, json).await
}
