//! What the background purge removes, as whole records: a job with everything that hangs off
//! it, expired sessions. Which jobs go is decided in [`crate::retention`].

use super::{Store, StoreError, decode};
use crate::db::{Tree, Write};
use crate::records::{JobRecord, ReleaseRecord, SessionRecord};

impl Store {
    /// Removes a job and what only it needs: its summary, payload, index entry, events and
    /// the pillar revision it brought. One batch: a crash never leaves half a job.
    pub fn purge_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let mut writes = vec![
            Write::delete(Tree::Jobs, job.id.as_str()),
            Write::delete(Tree::JobPayloads, job.id.as_str()),
            Write::delete(
                Tree::JobsByProject,
                format!("{}/{}/{}", job.env_uuid, job.project, job.id),
            ),
            Write::delete(
                Tree::PillarRevisions,
                format!("{}/{}/{}", job.env_uuid, job.project, job.id),
            ),
        ];
        for (key, _) in self
            .db
            .scan(Tree::Events, format!("{}/", job.id).as_bytes())?
        {
            writes.push(Write::delete(Tree::Events, key));
        }
        Ok(self.db.batch(writes)?)
    }

    /// Removes the sessions expired at `now` (unix seconds); returns how many.
    pub fn purge_expired_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let mut writes = Vec::new();
        for (key, value) in self.db.scan(Tree::Sessions, b"")? {
            // The key is a token's hash: never quoted in an error.
            let session: SessionRecord = decode("session", "(hash)", &value)?;
            if session.expires_at <= now {
                writes.push(Write::delete(Tree::Sessions, key));
            }
        }
        let purged = writes.len();
        if purged > 0 {
            self.db.batch(writes)?;
        }
        Ok(purged)
    }

    /// Every release of every project.
    pub fn all_releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.all(Tree::Releases, "release")
    }
}
