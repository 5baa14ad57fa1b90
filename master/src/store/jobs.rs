//! Jobs in storage: a small summary per job ([`Tree::Jobs`]), its plans and pillar apart
//! ([`Tree::JobPayloads`]), and an index `<env>/<project>/<job>` ([`Tree::JobsByProject`]) so
//! status, rollback and destroy read only the jobs of the project they are about.
//!
//! Databases written before this layout held the payload inside each job record and had no
//! index: [`Store::migrate_jobs`] rewrites them once, at open.

use serde_json::Value;

use super::{Store, StoreError, decode, encode, grant_write, pillar_revision_write, project_write};
use crate::db::{Tree, Write};
use crate::records::{JobPayload, JobRecord, PillarRevision, ProjectRecord};

/// The [`Tree::Meta`] key recording the jobs layout, and its current value.
const JOBS_LAYOUT_KEY: &[u8] = b"jobs_layout";
const JOBS_LAYOUT: &[u8] = b"2";

/// What a finished job does to its project's record, written in the same batch as the job.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectChange {
    /// Nothing (the project is gone, or nothing changed).
    None,
    /// The project's new usage or live deployment.
    Update(ProjectRecord),
    /// A successful destroy of the project.
    DeleteProject { env: String, name: String },
    /// A successful destroy of the whole environment.
    DeleteEnvironment(String),
}

fn index_key(job: &JobRecord) -> String {
    format!("{}/{}/{}", job.env_uuid, job.project, job.id)
}

/// The writes of a job's summary and its index entry (the index is idempotent to rewrite).
pub(super) fn summary_writes(job: &JobRecord) -> [Write; 2] {
    [
        Write::put(Tree::Jobs, job.id.as_str(), encode(job)),
        Write::put(Tree::JobsByProject, index_key(job), Vec::new()),
    ]
}

impl Store {
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.get(Tree::Jobs, "job", id)
    }

    /// The plans and pillar a job carried (empty for jobs that carried none).
    pub fn job_payload(&self, id: &str) -> Result<JobPayload, StoreError> {
        Ok(self
            .get(Tree::JobPayloads, "job payload", id)?
            .unwrap_or_default())
    }

    /// Records a new job with everything that must exist with it: its payload, the blobs its
    /// environment may now fetch, and the pillar revision a push brought. One batch.
    pub fn record_job(
        &self,
        job: &JobRecord,
        payload: &JobPayload,
        blob_grants: &[String],
        pillar: Option<&PillarRevision>,
    ) -> Result<(), StoreError> {
        let mut writes: Vec<Write> = summary_writes(job).into();
        writes.push(Write::put(
            Tree::JobPayloads,
            job.id.as_str(),
            encode(payload),
        ));
        writes.extend(blob_grants.iter().map(|d| grant_write(&job.env_uuid, d)));
        writes.extend(pillar.map(pillar_revision_write));
        Ok(self.db.batch(writes)?)
    }

    /// Updates a job's summary (its payload never changes).
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        Ok(self.db.batch(summary_writes(job).into())?)
    }

    /// Records a job's outcome and what it did to its project, in one batch.
    pub fn finish_job(&self, job: &JobRecord, change: ProjectChange) -> Result<(), StoreError> {
        let mut writes: Vec<Write> = summary_writes(job).into();
        match change {
            ProjectChange::None => {}
            ProjectChange::Update(project) => writes.push(project_write(&project)),
            ProjectChange::DeleteProject { env, name } => writes.push(Write::delete(
                Tree::Projects,
                crate::records::project_key(&env, &name),
            )),
            ProjectChange::DeleteEnvironment(env) => {
                writes.extend(self.environment_deletion_writes(&env)?)
            }
        }
        Ok(self.db.batch(writes)?)
    }

    /// Every job summary (the master's start-up and the console's full listing).
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.all(Tree::Jobs, "job")
    }

    /// The jobs of one project of an environment, through the index.
    pub fn project_jobs(&self, env: &str, project: &str) -> Result<Vec<JobRecord>, StoreError> {
        self.indexed_jobs(&format!("{env}/{project}/"))
    }

    /// The jobs of every project of an environment, and the environment's own, through the
    /// index.
    pub fn environment_jobs(&self, env: &str) -> Result<Vec<JobRecord>, StoreError> {
        self.indexed_jobs(&format!("{env}/"))
    }

    fn indexed_jobs(&self, prefix: &str) -> Result<Vec<JobRecord>, StoreError> {
        let mut jobs = Vec::new();
        for (key, _) in self.db.scan(Tree::JobsByProject, prefix.as_bytes())? {
            let key = String::from_utf8_lossy(&key);
            let Some(id) = key.rsplit('/').next() else {
                continue;
            };
            // An index entry without its job would be a bug; skipping it keeps status usable.
            if let Some(job) = self.job(id)? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Rewrites job records of the first layout (payload inline, no index) once: each job in
    /// one batch, so a crash half-way leaves every job readable and the next start finishes.
    pub(super) fn migrate_jobs(&self) -> Result<(), StoreError> {
        if self.db.get(Tree::Meta, JOBS_LAYOUT_KEY)?.as_deref() == Some(JOBS_LAYOUT) {
            return Ok(());
        }
        let mut migrated = 0usize;
        for (key, bytes) in self.db.scan(Tree::Jobs, b"")? {
            let name = String::from_utf8_lossy(&key).into_owned();
            let mut value: Value = decode("job", &name, &bytes)?;
            let mut writes = Vec::new();
            if let Value::Object(map) = &mut value {
                let inline: Vec<(String, Value)> = ["plan", "common", "pillar"]
                    .into_iter()
                    .filter_map(|field| map.remove(field).map(|v| (field.to_owned(), v)))
                    .collect();
                if !inline.is_empty() {
                    let payload: JobPayload =
                        serde_json::from_value(Value::Object(inline.into_iter().collect()))
                            .map_err(|source| StoreError::Corrupt {
                                what: "job payload",
                                key: name.clone(),
                                source,
                            })?;
                    writes.push(Write::put(Tree::JobPayloads, key.clone(), encode(&payload)));
                }
            }
            let job: JobRecord =
                serde_json::from_value(value).map_err(|source| StoreError::Corrupt {
                    what: "job",
                    key: name.clone(),
                    source,
                })?;
            writes.extend(summary_writes(&job));
            self.db.batch(writes)?;
            migrated += 1;
        }
        self.db.put(Tree::Meta, JOBS_LAYOUT_KEY, JOBS_LAYOUT)?;
        if migrated > 0 {
            tracing::info!(
                jobs = migrated,
                "job records migrated to the indexed layout"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SledDb;
    use crate::records::{JobKind, JobState, Mode};

    fn job(id: &str, env: &str, project: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind: JobKind::Deploy,
            env_uuid: env.into(),
            project: project.into(),
            mode: Mode::Cooking,
            deploy_id: format!("d-{id}"),
            requested_by: "alice".into(),
            agent: "node1".into(),
            commit: "abc".into(),
            created_at: 1,
            created_ms: 1000,
            state: JobState::Success,
            failed_step: String::new(),
            failed_state: String::new(),
            message: String::new(),
            finished_at: Some(2),
            source_blob: None,
            release_blob: None,
            target_deploy_id: None,
        }
    }

    #[test]
    fn the_index_returns_only_the_jobs_of_one_project() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(SledDb::open(dir.path())?)?;
        let payload = JobPayload {
            plan: serde_json::json!({"phases": {}}),
            ..Default::default()
        };
        store.record_job(&job("j1", "e1", "app"), &payload, &[], None)?;
        store.record_job(&job("j2", "e1", "app2"), &payload, &[], None)?;
        store.record_job(&job("j3", "e2", "app"), &payload, &[], None)?;
        store.record_job(&job("j4", "e1", ""), &payload, &[], None)?;
        let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(store.project_jobs("e1", "app")?), ["j1"]);
        assert_eq!(ids(store.project_jobs("e1", "")?), ["j4"]);
        let mut env_jobs = ids(store.environment_jobs("e1")?);
        env_jobs.sort();
        assert_eq!(env_jobs, ["j1", "j2", "j4"]);
        assert_eq!(store.job_payload("j1")?, payload);
        Ok(())
    }

    #[test]
    fn old_job_records_are_migrated_once_at_open() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // A job record as the first layout wrote it: payload inline, no index entry.
        let mut old = serde_json::to_value(job("j1", "e1", "app"))?;
        if let Value::Object(map) = &mut old {
            map.insert("plan".into(), serde_json::json!({"phases": {"start": 1}}));
            map.insert("common".into(), serde_json::json!({"name": "app"}));
            map.insert("pillar".into(), serde_json::json!({"port": 80}));
        }
        {
            let db = SledDb::open(dir.path())?;
            db.put(Tree::Jobs, b"j1", &serde_json::to_vec(&old)?)?;
        }
        let db = SledDb::open(dir.path())?;
        let store = Store::open(db.clone())?;
        assert_eq!(store.job("j1")?, Some(job("j1", "e1", "app")));
        assert_eq!(
            store.job_payload("j1")?,
            JobPayload {
                plan: serde_json::json!({"phases": {"start": 1}}),
                common: serde_json::json!({"name": "app"}),
                pillar: serde_json::json!({"port": 80}),
            }
        );
        assert_eq!(store.project_jobs("e1", "app")?.len(), 1);
        // The summary no longer carries the payload.
        let raw: Value = serde_json::from_slice(&db.get(Tree::Jobs, b"j1")?.unwrap_or_default())?;
        assert!(raw.get("plan").is_none(), "{raw}");
        // Marked done: a second open does not scan again (a record written in the old format
        // now would stay as it is).
        assert_eq!(
            db.get(Tree::Meta, JOBS_LAYOUT_KEY)?.as_deref(),
            Some(JOBS_LAYOUT)
        );
        Store::open(db)?;
        Ok(())
    }

    #[test]
    fn finishing_a_destroy_removes_the_environment_and_its_projects_with_the_job()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(SledDb::open(dir.path())?)?;
        let project = ProjectRecord {
            env_uuid: "e1".into(),
            name: "app".into(),
            created_at: 0,
            quota_bytes: 10,
            used_bytes: 0,
            live_deploy: None,
        };
        store.put_project(&project)?;
        let destroy = job("j1", "e1", "");
        store.finish_job(&destroy, ProjectChange::DeleteEnvironment("e1".into()))?;
        assert_eq!(store.project("e1", "app")?, None);
        assert_eq!(store.job("j1")?, Some(destroy));
        Ok(())
    }
}
