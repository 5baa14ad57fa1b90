//! Checks on a job before anything is touched (names, deploy id, what the mode needs, the
//! project's settings), and the deploy id's shape.

use corpus_states::ProjectSettings;

use super::error::InvalidJob;
use super::steps::check_release;
use super::{Job, JobKind, Mode};

/// Checks a job before anything is touched, and returns the project settings it carries.
pub(super) fn validate_job(job: &Job) -> Result<ProjectSettings, InvalidJob> {
    corpus_proto::names::validate_project_name(&job.project)?;
    let env_ok = !job.env_uuid.is_empty()
        && job.env_uuid.len() <= 64
        && job
            .env_uuid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !job.env_uuid.starts_with('-');
    if !env_ok {
        return Err(InvalidJob::Environment(job.env_uuid.clone()));
    }
    match &job.kind {
        JobKind::Deploy => {
            validate_deploy_id(&job.deploy_id)?;
            match job.mode {
                Mode::Final => {
                    check_release(job.release.as_deref(), &job.project)
                        .map_err(InvalidJob::Release)?;
                }
                Mode::Editable | Mode::Cooking => {
                    let src = job.source.as_ref().ok_or(InvalidJob::NoSource)?;
                    if !src.is_file() {
                        return Err(InvalidJob::SourceMissing(src.clone()));
                    }
                }
            }
        }
        JobKind::Rollback { to } => {
            validate_deploy_id(&job.deploy_id)?;
            if job.mode == Mode::Editable {
                return Err(InvalidJob::EditableRollback);
            }
            if let Some(to) = to {
                validate_deploy_id(to)?;
            }
        }
        JobKind::Init | JobKind::Destroy => {}
    }
    Ok(ProjectSettings::from_common(&job.common)?)
}

/// Checks the `<UTC DATETIME>-<UUID>` shape of a deploy id: `YYYYMMDDTHHMMSSZ-` then a
/// lowercase hyphenated UUID, e.g. `20250102T030405Z-0f8fad5b-d9cb-469f-a165-70867728950e`.
pub fn validate_deploy_id(id: &str) -> Result<(), InvalidJob> {
    let bad = || InvalidJob::DeployId(id.to_string());
    let (time, uuid) = id.split_at_checked(16).ok_or_else(bad)?;
    let tb = time.as_bytes();
    let time_ok = tb.len() == 16
        && tb[..8].iter().all(u8::is_ascii_digit)
        && tb[8] == b'T'
        && tb[9..15].iter().all(u8::is_ascii_digit)
        && tb[15] == b'Z';
    let uuid = uuid.strip_prefix('-').ok_or_else(bad)?;
    let ub = uuid.as_bytes();
    let uuid_ok = ub.len() == 36
        && ub.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        });
    if time_ok && uuid_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A fresh deploy id for now, in the shape [`validate_deploy_id`] accepts.
pub fn new_deploy_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        uuid::Uuid::new_v4()
    )
}
