//! The built-in steps' filesystem and network work: layout, data backup, archive, switch, sync,
//! unpack, bundle, health check, rotation, webhooks and the undo's revert. The order they run
//! in, and what a failure does, is `engine.rs`'s business.
//!
//! Every move is idempotent ("if the source is still there, move it"), so a step can run again
//! after a crash at any instant. Every error names the path it was working on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use corpus_pillar::TemplateContext;
use serde_json::{Value, json};

use super::archive;
use super::checks;
use super::engine::Engine;
use super::error::{IoContext, StepError};
use super::history::{self, list_archives, list_releases, sort_newest_first};
use super::journal::JournalKind;
use super::layout::{
    RUN_TARGET, copy_tree, remove_tree, rename_durable, set_link, sync_dir, sync_filesystem,
    write_atomic,
};
use super::step::Step;
use super::{Mode, Status, StepStatus, now_rfc3339};

impl Engine<'_> {
    /// Where `salt://` sources and template imports resolve: the project's source tree.
    /// Editable and cooking modes have it synced in `project/`. Final mode never syncs, so the
    /// pushed source is unpacked once per deploy into scratch space under `build/`, with the
    /// same safety checks as a sync.
    pub(super) fn file_root(&self) -> Result<PathBuf, StepError> {
        let Some(src) = self
            .source
            .clone()
            .filter(|_| self.journal.mode == Mode::Final)
        else {
            return Ok(self.layout.project());
        };
        let build = self.layout.sub("build");
        let dir = build.join(format!(".source-{}", self.id()));
        if dir.is_dir() {
            return Ok(dir);
        }
        // Sources of earlier deploys are stale scratch: keep only this one.
        if let Ok(entries) = fs::read_dir(&build) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".source-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let partial = build.join(format!(".source-{}.partial", self.id()));
        let _ = fs::remove_dir_all(&partial);
        let reader = archive::open_source(&src).at("open", &src)?;
        archive::unpack(reader, &partial, None, self.limits).map_err(|source| {
            StepError::Archive {
                what: "source",
                path: src.clone(),
                source,
            }
        })?;
        fs::rename(&partial, &dir).at("move the source into", &dir)?;
        Ok(dir)
    }

    /// What templates see: the job's pillar, grains and `common`, and `common.env`.
    pub(super) fn template_context(&self) -> TemplateContext {
        let env = self.spec.common.get("env").cloned().unwrap_or(Value::Null);
        TemplateContext::new(
            self.spec.pillar.clone(),
            self.spec.grains.clone(),
            self.spec.common.clone(),
            env,
        )
    }

    pub(super) fn pre_install(&mut self) -> Result<String, StepError> {
        let l = &self.layout;
        l.create(self.journal.mode)?;
        // Space first: a project wedged by failed trees on a full disk deploys again.
        self.rotate_failed_trees();
        let l = &self.layout;
        super::layout::sweep_trash(&l.deploy());
        super::layout::sweep_trash(&l.archives());
        l.write_pillar(&self.spec.pillar)?;
        if self.journal.mode != Mode::Editable {
            let arch = self.archive_dir();
            fs::create_dir_all(&arch).at("create", &arch)?;
            history::write_status(self, Status::Running)?;
        }
        Ok(format!("layout ready at {}", self.layout.dir.display()))
    }

    pub(super) fn backup_data(&mut self) -> Result<Option<String>, StepError> {
        if !self.journal.backup_data {
            return Ok(None);
        }
        let arch = self.archive_dir();
        let done = arch.join("data");
        if done.is_dir() {
            return Ok(Some("data/ already backed up".into()));
        }
        let partial = arch.join("data.partial");
        let _ = fs::remove_dir_all(&partial);
        copy_tree(&self.layout.data(), &partial).at("back up data/ into", &partial)?;
        rename_durable(&partial, &done)?;
        Ok(Some(format!("data/ copied to {}", done.display())))
    }

    /// Moves the live tree into this job's archive (a rename).
    pub(super) fn archive_live(&mut self) -> Result<String, StepError> {
        let arch = self.archive_dir();
        fs::create_dir_all(&arch).at("create", &arch)?;
        let dest = arch.join("run");
        let l = self.layout.clone();
        let mut moved = String::from("no previous tree");
        if let Some(prev) = self.journal.previous_live.clone()
            && self.journal.target.as_deref() != Some(prev.as_str())
        {
            let tree = l.tree(&prev);
            if tree.is_dir() && !dest.exists() {
                // The tree's record travels with it, so a rollback to it can restore the
                // record even after rotation removed `archives/<prev>`.
                if let Ok(rec) = fs::read(l.archive(&prev).join("status.json")) {
                    let copy = arch.join("previous.json");
                    write_atomic(&copy, &rec, 0o600).at("write", &copy)?;
                }
                rename_durable(&tree, &dest)?;
            }
            moved = format!("deploy/{prev} archived as {}", dest.display());
        } else if self.journal.run_was_dir {
            let run = l.run();
            if fs::symlink_metadata(&run).is_ok_and(|m| m.is_dir()) && !dest.exists() {
                rename_durable(&run, &dest)?;
            }
            set_link(&run, Path::new(RUN_TARGET)).at("link", &run)?;
            moved = format!("run/ archived as {}", dest.display());
        }
        // A requested rollback keeps the live data with the tree it leaves.
        if self.journal.kind == JournalKind::Rollback
            && let Some(src) = &self.journal.source_archive
            && self.journal.backup_data
            && l.archive(src).join("data").is_dir()
            && l.data().exists()
            && !arch.join("data").exists()
        {
            rename_durable(&l.data(), &arch.join("data"))?;
        }
        Ok(moved)
    }

    pub(super) fn switch(&mut self) -> Result<String, StepError> {
        let l = self.layout.clone();
        let live = if self.journal.kind == JournalKind::Rollback {
            let target = self.journal.target.clone().unwrap_or_default();
            let src = l.archive(self.journal.source_archive.as_deref().unwrap_or_default());
            if src.join("run").is_dir() && !l.tree(&target).exists() {
                rename_durable(&src.join("run"), &l.tree(&target))?;
            }
            let record = l.archive(&target).join("status.json");
            if !record.exists()
                && let Ok(rec) = fs::read(src.join("previous.json"))
            {
                fs::create_dir_all(l.archive(&target)).at("create", l.archive(&target))?;
                write_atomic(&record, &rec, 0o600).at("write", &record)?;
            }
            if src.join("data").is_dir() && !l.data().exists() {
                rename_durable(&src.join("data"), &l.data())?;
            }
            target
        } else {
            let id = self.id().to_string();
            let tree = l.tree(&id);
            if self.journal.mode == Mode::Cooking && !tree.exists() {
                fs::create_dir_all(&tree).at("create", &tree)?;
                sync_dir(&l.deploy()).at("sync", l.deploy())?;
            }
            if !tree.is_dir() {
                return Err(StepError::Invalid(format!(
                    "{} is missing: nothing to switch to",
                    tree.display()
                )));
            }
            id
        };
        l.set_current(Some(&live))
            .at("point deploy/current at", l.tree(&live))?;
        set_link(&l.run(), Path::new(RUN_TARGET)).at("link", l.run())?;
        Ok(format!("run/ -> deploy/{live}"))
    }

    pub(super) fn sync_source(&mut self) -> Result<String, StepError> {
        let src = self.source.clone().ok_or_else(|| {
            StepError::Invalid(
                "no project source was given: editable and cooking modes need one".into(),
            )
        })?;
        let l = &self.layout;
        super::layout::restore_project(&l.dir).at("restore project/ in", &l.dir)?;
        let fresh = l.dir.join(".project.new");
        let _ = fs::remove_dir_all(&fresh);
        let reader = archive::open_source(&src).at("open", &src)?;
        let stats = archive::unpack(reader, &fresh, None, self.limits).map_err(|source| {
            StepError::Archive {
                what: "source",
                path: src.clone(),
                source,
            }
        })?;
        let old = l.dir.join(format!(".project.old-{}", uuid::Uuid::new_v4()));
        if l.project().exists() {
            fs::rename(l.project(), &old).at("move aside", l.project())?;
        }
        rename_durable(&fresh, &l.project())?;
        let _ = fs::remove_dir_all(&old);
        Ok(format!("{} entries into project/", stats.entries))
    }

    pub(super) fn link_run(&mut self) -> Result<String, StepError> {
        let run = self.layout.run();
        set_link(&run, Path::new("project")).at("link to project/", &run)?;
        Ok("run -> project".into())
    }

    pub(super) fn unpack_release(&mut self) -> Result<String, StepError> {
        let release = self.release.clone().ok_or_else(|| {
            StepError::Invalid(
                "no release archive was given: final mode deploys a cooked release".into(),
            )
        })?;
        let id = self.id().to_string();
        let l = &self.layout;
        let tree = l.tree(&id);
        if tree.is_dir() {
            return Ok(format!("deploy/{id} already unpacked"));
        }
        let manifest = archive::read_manifest(&release).at("read the manifest of", &release)?;
        check_manifest(&manifest, &self.journal.project, &release)?;
        let partial = l.deploy().join(format!(".{id}.partial"));
        let _ = fs::remove_dir_all(&partial);
        let reader = archive::open_tar(&release).at("open", &release)?;
        let stats = archive::unpack(reader, &partial, Some(archive::TREE_PREFIX), self.limits)
            .map_err(|source| StepError::Archive {
                what: "release",
                path: release.clone(),
                source,
            })?;
        // The tree is complete on disk before it can become live.
        sync_filesystem(&partial).at("sync", &partial)?;
        rename_durable(&partial, &tree)?;
        Ok(format!(
            "{} entries, {} bytes into deploy/{id}",
            stats.entries, stats.bytes
        ))
    }

    pub(super) fn bundle(&mut self) -> Result<String, StepError> {
        let id = self.id().to_string();
        let l = &self.layout;
        let out = l.releases().join(format!("{id}.tar.zst"));
        let manifest = json!({
            "project": self.journal.project,
            "commit": self.journal.commit,
            "build_id": id,
            "env": self.journal.env_uuid,
            "time": now_rfc3339(),
        });
        let release =
            archive::bundle(&l.tree(&id), &out, manifest).at("bundle a release into", &out)?;
        // Releases and their records are root-only: a build's secrets may be in the tree.
        fs::set_permissions(&out, fs::Permissions::from_mode(0o600)).at("set the mode of", &out)?;
        let side = l.releases().join(format!("{id}.json"));
        let text = serde_json::to_vec_pretty(&release.manifest)
            .map_err(std::io::Error::other)
            .at("write", &side)?;
        write_atomic(&side, &text, 0o600).at("write", &side)?;
        let msg = format!(
            "{} ({} bytes, sha256 {})",
            out.display(),
            release.size,
            release.sha256
        );
        self.release_out = Some(release);
        Ok(msg)
    }

    pub(super) fn healthcheck(&mut self) -> Result<Option<String>, StepError> {
        let Some(check) = self.settings.healthcheck.clone() else {
            return Ok(None);
        };
        if let corpus_states::HealthProbe::Http { url, .. } = &check.probe {
            self.outbound
                .check(url)
                .map_err(|reason| StepError::HealthCheck(checks::CheckError::NotAllowed(reason)))?;
        }
        let cwd = if self.layout.run().is_dir() {
            self.layout.run()
        } else {
            self.layout.dir.clone()
        };
        let run_as = crate::confine::Identity::from_common(&self.spec.common)
            .ok()
            .flatten()
            .map(|id| (id.uid, id.gid));
        checks::run_healthcheck(&check, &cwd, run_as)
            .map(Some)
            .map_err(StepError::HealthCheck)
    }

    /// Keeps the newest `keep_archives` archives, the live one and the last one holding a tree
    /// to roll back to; older releases beyond the same count go too.
    pub(super) fn rotate(&mut self) -> String {
        let keep = self.settings.keep_archives;
        let l = &self.layout;
        let live = l.live_id();
        let mut ids = list_archives(l);
        sort_newest_first(l, &mut ids);
        let last_good_tree = ids
            .iter()
            .find(|id| l.archive(id).join("run").is_dir())
            .cloned();
        let mut removed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let protected = i < keep
                || Some(id) == live.as_ref()
                || Some(id) == last_good_tree.as_ref()
                || id == self.id()
                || Some(id) == self.journal.target.as_ref();
            // Renamed away now, deleted after the job's result is out (`Lifecycle::sweep`).
            if !protected && super::layout::discard_tree(&l.archive(id)).is_ok() {
                removed.push(id.clone());
            }
        }
        let mut releases = list_releases(l);
        releases.sort_unstable_by(|a, b| b.cmp(a));
        for id in releases.iter().skip(keep) {
            if id != self.id() {
                let _ = fs::remove_file(l.releases().join(format!("{id}.tar.zst")));
                let _ = fs::remove_file(l.releases().join(format!("{id}.json")));
            }
        }
        if removed.is_empty() {
            format!("kept {} archives (keep_archives={keep})", ids.len())
        } else {
            format!("removed archives {}", removed.join(", "))
        }
    }

    /// POSTs the finished deploy to every webhook; failures are reported, never fatal.
    pub(super) fn notify(&mut self, status: Status) {
        let event = json!({
            "status": status,
            "env": self.journal.env_uuid,
            "project": self.journal.project,
            "commit": self.journal.commit,
            "deploy_id": self.journal.deploy_id,
            "job_id": self.journal.job_id,
            "mode": self.journal.mode,
            "kind": self.journal.kind,
            "failed_step": self.journal.failed_step.map_or("", Step::as_str),
            "failed_state": self.journal.failed_state,
            "duration": self.started.elapsed().as_secs_f64(),
        });
        for url in self.settings.notify.webhooks.clone() {
            let t = Instant::now();
            let allowed = self
                .outbound
                .check(&url)
                .map_err(|reason| checks::CheckError::NotAllowed(format!("webhook {reason}")));
            let (st, msg) = match allowed.and_then(|()| checks::post_webhook(&url, &event)) {
                Ok(()) => (StepStatus::Success, format!("POST {url}")),
                Err(e) => (StepStatus::Failed, e.to_string()),
            };
            self.reporter
                .step(Step::Webhook, &url, st, Value::Null, &msg, t.elapsed());
        }
    }

    /// The filesystem part of the undo; each move happens only if still needed.
    pub(super) fn revert(&mut self) -> Result<String, StepError> {
        if self.journal.kind == JournalKind::Rollback {
            return self.revert_rollback();
        }
        let l = self.layout.clone();
        let id = self.id().to_string();
        let arch = self.archive_dir();
        fs::create_dir_all(&arch).at("create", &arch)?;
        // The failed tree is kept for inspection, unless the disk is full: then it goes now.
        let disk_full = self.journal.disk_full;
        let new_tree = l.tree(&id);
        if disk_full {
            remove_tree(&new_tree).at("remove", &new_tree)?;
        } else if new_tree.exists() {
            let failed = arch.join("run.failed");
            remove_tree(&failed).at("remove", &failed)?;
            rename_durable(&new_tree, &failed)?;
        }
        let _ = fs::remove_dir_all(l.deploy().join(format!(".{id}.partial")));
        let _ = fs::remove_dir_all(l.dir.join(".project.new"));
        // A failed deploy's release must not be promoted.
        let _ = fs::remove_file(l.releases().join(format!("{id}.tar.zst")));
        let _ = fs::remove_file(l.releases().join(format!("{id}.json")));
        let _ = fs::remove_file(l.releases().join(format!("{id}.partial")));
        self.release_out = None;
        // The previous tree goes back.
        let saved = arch.join("run");
        let run_is_dir = fs::symlink_metadata(l.run()).is_ok_and(|m| m.is_dir());
        let back = match (&self.journal.previous_live, self.journal.run_was_dir) {
            (Some(prev), _) => {
                if saved.is_dir() && !l.tree(prev).exists() {
                    rename_durable(&saved, &l.tree(prev))?;
                }
                l.set_current(Some(prev))
                    .at("point deploy/current at", l.tree(prev))?;
                format!("deploy/{prev}")
            }
            (None, true) if run_is_dir => "run/ (never moved)".to_string(),
            (None, true) => {
                let name = format!("pre-{id}");
                if saved.is_dir() && !l.tree(&name).exists() {
                    rename_durable(&saved, &l.tree(&name))?;
                }
                l.set_current(Some(&name))
                    .at("point deploy/current at", l.tree(&name))?;
                format!("deploy/{name}")
            }
            (None, false) => {
                l.set_current(None).at("remove", l.current())?;
                "no tree (first deploy)".to_string()
            }
        };
        if !run_is_dir {
            set_link(&l.run(), Path::new(RUN_TARGET)).at("link", l.run())?;
        }
        // data/ comes back from the backup, by rename; the data the failed deploy saw is kept.
        let mut data_msg = "data/ untouched";
        if self.journal.backup_data {
            let backup = arch.join("data");
            if backup.is_dir() {
                if disk_full {
                    remove_tree(&l.data()).at("remove", l.data())?;
                } else if l.data().exists() {
                    let mut kept = arch.join("data.failed");
                    let mut n = 1;
                    while kept.exists() {
                        kept = arch.join(format!("data.failed.{n}"));
                        n += 1;
                    }
                    rename_durable(&l.data(), &kept)?;
                }
                rename_durable(&backup, &l.data())?;
                data_msg = "data/ restored from the backup";
            }
            let _ = fs::remove_dir_all(arch.join("data.partial"));
        }
        let mut msg = format!("run/ back on {back}; {data_msg}");
        if disk_full {
            msg.push_str("; the disk is full: the failed tree and data were removed, not kept");
        }
        let rotated = self.rotate_failed_trees();
        if !rotated.is_empty() {
            msg.push_str(&format!(
                "; failed trees beyond keep_archives removed from {}",
                rotated.join(", ")
            ));
        }
        Ok(msg)
    }

    /// Keeps the failed trees and data (`run.failed`, `data.failed*`) of the newest
    /// `keep_archives` failed deploys only, so failures alone cannot fill the disk. The rest
    /// are moved to `archives/.trash-*`, deleted after the job (`Lifecycle::sweep`).
    pub(super) fn rotate_failed_trees(&self) -> Vec<String> {
        let l = &self.layout;
        let mut ids = list_archives(l);
        sort_newest_first(l, &mut ids);
        let mut kept = 0;
        let mut rotated = Vec::new();
        for id in ids {
            let failed: Vec<PathBuf> = fs::read_dir(l.archive(&id))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            name == "run.failed" || name.starts_with("data.failed")
                        })
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            if failed.is_empty() {
                continue;
            }
            if kept < self.settings.keep_archives {
                kept += 1;
                continue;
            }
            for path in failed {
                let trash = l
                    .archives()
                    .join(format!(".trash-failed-{}", uuid::Uuid::new_v4()));
                if fs::rename(&path, &trash).is_err() {
                    let _ = remove_tree(&path);
                }
            }
            rotated.push(id);
        }
        rotated
    }
}

impl Engine<'_> {
    /// Undoes a requested rollback's moves: the target's tree and data go back to the archive
    /// they came from (so the rollback can be tried again), the tree and data that were live
    /// come back from this job's archive.
    fn revert_rollback(&mut self) -> Result<String, StepError> {
        let l = self.layout.clone();
        let arch = self.archive_dir();
        let source = l.archive(self.journal.source_archive.as_deref().unwrap_or_default());
        let Some(prev) = self.journal.previous_live.clone() else {
            return Err(StepError::Invalid(
                "the rollback's journal names no deployment that was live before it".into(),
            ));
        };
        if let Some(target) = self.journal.target.clone()
            && target != prev
            && l.tree(&target).is_dir()
            && !source.join("run").exists()
        {
            rename_durable(&l.tree(&target), &source.join("run"))?;
        }
        let mut data_msg = "data/ untouched";
        if arch.join("data").is_dir() {
            if l.data().exists() {
                let back = source.join("data");
                let to = if back.exists() {
                    arch.join("data.failed")
                } else {
                    back
                };
                remove_tree(&arch.join("data.failed")).at("remove", arch.join("data.failed"))?;
                rename_durable(&l.data(), &to)?;
            }
            rename_durable(&arch.join("data"), &l.data())?;
            data_msg = "data/ back";
        }
        if arch.join("run").is_dir() && !l.tree(&prev).exists() {
            rename_durable(&arch.join("run"), &l.tree(&prev))?;
        }
        l.set_current(Some(&prev))
            .at("point deploy/current at", l.tree(&prev))?;
        set_link(&l.run(), Path::new(RUN_TARGET)).at("link", l.run())?;
        Ok(format!("run/ back on deploy/{prev}; {data_msg}"))
    }
}

fn check_manifest(manifest: &Value, project: &str, path: &Path) -> Result<(), StepError> {
    let of = manifest
        .get("project")
        .and_then(Value::as_str)
        .unwrap_or("");
    if of != project {
        return Err(StepError::Invalid(format!(
            "release {} was cooked for project {of:?}, not {project:?}",
            path.display()
        )));
    }
    Ok(())
}

/// Validates a final-mode release before anything is touched.
pub fn check_release(release: Option<&Path>, project: &str) -> Result<Value, StepError> {
    let path = release.ok_or_else(|| {
        StepError::Invalid(
            "final mode deploys only a release cooked in staging, and none was given: push to \
             a staging (cooking) environment first"
                .into(),
        )
    })?;
    let manifest = archive::read_manifest(path).at("read release", path)?;
    check_manifest(&manifest, project, path)?;
    Ok(manifest)
}
