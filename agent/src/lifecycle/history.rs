//! Deployment history on disk: each deployment's record (`archives/<id>/status.json`), the
//! archives and releases kept, their order, the trees a rollback can return to, and the
//! project's state as `corpus status` shows it.

use std::fs;

use serde_json::{Value, json};

use super::engine::Engine;
use super::error::{IoContext, StepError};
use super::journal::JournalKind;
use super::layout::{self, ProjectLayout, write_atomic};
use super::lock::ProjectLock;
use super::step::Step;
use super::{DeploymentInfo, Mode, ProjectState, ReleaseArchive, Status, validate_deploy_id};

/// Writes the job's record as `archives/<id>/status.json`, with `result` the job's status
/// (`running` while it runs). Editable deploys keep no archive, so no record.
pub(super) fn write_status(engine: &Engine<'_>, result: Status) -> Result<(), StepError> {
    let journal = &engine.journal;
    if journal.mode == Mode::Editable && journal.kind == JournalKind::Deploy {
        return Ok(());
    }
    let arch = engine.archive_dir();
    if !arch.is_dir() {
        return Ok(());
    }
    let commit = match (journal.kind, &journal.target) {
        (JournalKind::Rollback, Some(t)) => read_status(&engine.layout, t)
            .and_then(|s| s.get("commit").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default(),
        _ => journal.commit.clone(),
    };
    // A job's record never says refused: a refused job touched nothing.
    let result = if result == Status::Refused {
        Status::Failed
    } else {
        result
    };
    let status = json!({
        "id": journal.deploy_id,
        "time": journal.started,
        "commit": commit,
        "mode": journal.mode,
        "kind": journal.kind,
        "result": result,
        "failed_step": journal.failed_step.map_or("", Step::as_str),
        "failed_state": journal.failed_state,
        "message": journal.message,
        "previous": journal.previous_live,
        "target": journal.target,
        "job_id": journal.job_id,
        "requested_by": journal.requested_by,
        "duration": engine.started.elapsed().as_secs_f64(),
    });
    let path = arch.join("status.json");
    let text = serde_json::to_vec_pretty(&status)
        .map_err(std::io::Error::other)
        .at("write", &path)?;
    write_atomic(&path, &text, 0o600).at("write", &path)
}

/// The release bundled by deploy `id`, from its side file `releases/<id>.json` (the manifest
/// completed with the archive's sha256 and size), if the archive is there with that size.
pub fn kept_release(l: &ProjectLayout, id: &str) -> Option<ReleaseArchive> {
    let path = l.releases().join(format!("{id}.tar.zst"));
    let manifest: Value =
        serde_json::from_slice(&fs::read(l.releases().join(format!("{id}.json"))).ok()?).ok()?;
    let sha256 = manifest.get("sha256")?.as_str()?.to_string();
    let size = manifest.get("size")?.as_u64()?;
    if fs::metadata(&path).ok()?.len() != size {
        return None;
    }
    Some(ReleaseArchive {
        path,
        sha256,
        size,
        manifest,
    })
}

/// The archive ids under `archives/` (hidden entries skipped).
pub fn list_archives(l: &ProjectLayout) -> Vec<String> {
    fs::read_dir(l.archives())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The release ids under `releases/`.
pub fn list_releases(l: &ProjectLayout) -> Vec<String> {
    fs::read_dir(l.releases())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".tar.zst"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sorts deployment ids newest first by their recorded start time (ids made in the same second
/// do not sort by time), falling back on the id's own date.
pub fn sort_newest_first(l: &ProjectLayout, ids: &mut [String]) {
    let mut keyed: Vec<(String, String)> =
        ids.iter().map(|id| (time_key(l, id), id.clone())).collect();
    keyed.sort_unstable_by(|a, b| b.cmp(a));
    for (slot, (_, id)) in ids.iter_mut().zip(keyed) {
        *slot = id;
    }
}

/// A sortable `YYYYMMDDhhmmss` + nanoseconds key for a deployment.
pub fn time_key(l: &ProjectLayout, id: &str) -> String {
    let from_status = read_status(l, id)
        .and_then(|s| s.get("time").and_then(Value::as_str).map(str::to_string))
        .and_then(|t| {
            let t = time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .ok()?;
            Some(t.unix_timestamp_nanos())
        });
    let nanos = from_status.or_else(|| {
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let t = time::PrimitiveDateTime::parse(id.get(..16)?, &fmt).ok()?;
        Some(t.assume_utc().unix_timestamp_nanos())
    });
    format!("{:030}", nanos.unwrap_or(0).max(0))
}

/// `archives/<id>/status.json`.
pub fn read_status(l: &ProjectLayout, id: &str) -> Option<Value> {
    let bytes = fs::read(l.archive(id).join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Deployments whose tree is still kept, mapped to the archive holding it:
/// `archives/<A>/run` holds the tree of `A`'s `previous`.
pub fn available_trees(l: &ProjectLayout) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in list_archives(l) {
        if !l.archive(&a).join("run").is_dir() {
            continue;
        }
        if let Some(prev) = read_status(l, &a).and_then(|s| {
            s.get("previous")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) && validate_deploy_id(&prev).is_ok()
        {
            out.push((prev, a));
        }
    }
    out.sort();
    out
}

/// The project's deployments (newest first), releases and disk use.
pub fn project_state(layout: &ProjectLayout) -> ProjectState {
    if !layout.dir.is_dir() {
        return ProjectState::default();
    }
    let live = layout.live_id();
    let mut deployments: Vec<DeploymentInfo> = list_archives(layout)
        .into_iter()
        .filter_map(|id| {
            let s = read_status(layout, &id)?;
            let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let field = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
            Some(DeploymentInfo {
                live: live.as_deref() == Some(id.as_str()),
                time: text("time"),
                commit: text("commit"),
                mode: serde_json::from_value(field("mode")).unwrap_or(Mode::Cooking),
                // A record cut short by a crash before its first write reads as failed.
                result: serde_json::from_value(field("result")).unwrap_or(Status::Failed),
                failed_step: text("failed_step"),
                failed_state: text("failed_state"),
                kind: serde_json::from_value(field("kind")).unwrap_or(JournalKind::Deploy),
                id,
            })
        })
        .collect();
    let mut order: Vec<String> = deployments.iter().map(|d| d.id.clone()).collect();
    sort_newest_first(layout, &mut order);
    deployments.sort_by_key(|d| order.iter().position(|id| *id == d.id));
    let mut releases = list_releases(layout);
    releases.sort_by(|a, b| b.cmp(a));
    ProjectState {
        exists: true,
        locked_by: ProjectLock::holder(&layout.lock_file()).map(|h| (h.user, h.job_id, h.started)),
        live,
        deployments,
        releases,
        disk_used: layout::disk_usage(&layout.dir),
    }
}
