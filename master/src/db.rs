//! The narrow storage trait the master's logic is written against, and its sled backend.
//!
//! Every write the master acknowledges is flushed to disk before the call returns, so a crash
//! loses nothing that a caller was told is stored. A second backend (PostgreSQL for several
//! masters, or redb) is a new implementation of [`Db`], not a rewrite.

use std::path::Path;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// The keyspaces the master uses. Each maps to one sled tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree {
    Agents,
    Users,
    Sessions,
    EnrollmentTokens,
    Environments,
    Projects,
    Jobs,
    /// Job events, keyed `<job id>/<sequence, zero-padded>` so a prefix scan returns them in order.
    Events,
    Releases,
    /// Which environment may read which blob: `<env uuid>/<digest>`.
    BlobGrants,
    PillarRevisions,
    /// The plans, `common` and pillar a job carried, keyed by job id: large, and read only by a
    /// rollback or destroy that replays them, so the job summaries in [`Tree::Jobs`] stay small.
    JobPayloads,
    /// `<env uuid>/<project>/<job id>` -> empty: a project's (or environment's) jobs without
    /// reading every job. An environment's own jobs (destroy) have an empty project.
    JobsByProject,
    /// Format markers of the database (which migrations ran).
    Meta,
    /// Compute nodes attached over SSH, keyed by agent id (`store/nodes.rs`).
    Nodes,
    /// Operator runs (`store/runs.rs`): `h/<run id>` the run, `r/<run id>/<agent>` a return.
    Runs,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Agents => "agents",
            Tree::Users => "users",
            Tree::Sessions => "sessions",
            Tree::EnrollmentTokens => "enrollment_tokens",
            Tree::Environments => "environments",
            Tree::Projects => "projects",
            Tree::Jobs => "jobs",
            Tree::Events => "events",
            Tree::Releases => "releases",
            Tree::BlobGrants => "blob_grants",
            Tree::PillarRevisions => "pillar_revisions",
            Tree::JobPayloads => "job_payloads",
            Tree::JobsByProject => "jobs_by_project",
            Tree::Meta => "meta",
            Tree::Nodes => "nodes",
            Tree::Runs => "runs",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database at {path} cannot be opened: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("database error: {0}")]
    Backend(String),
}

impl From<sled::Error> for DbError {
    fn from(e: sled::Error) -> Self {
        DbError::Backend(e.to_string())
    }
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write of a [`Db::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        tree: Tree,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        tree: Tree,
        key: Vec<u8>,
    },
}

impl Write {
    pub fn put(tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Write {
        Write::Put {
            tree,
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(tree: Tree, key: impl Into<Vec<u8>>) -> Write {
        Write::Delete {
            tree,
            key: key.into(),
        }
    }

    fn tree(&self) -> Tree {
        match self {
            Write::Put { tree, .. } | Write::Delete { tree, .. } => *tree,
        }
    }
}

/// Key-value storage with durable writes.
pub trait Db: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    /// Stores `value` durably (flushed before returning).
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), DbError>;
    /// Removes `key` durably; returns the old value.
    fn delete(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    /// Atomically replaces `expected` by `new` (None: absent / remove); false when the current
    /// value was not `expected`. Durable when it succeeds.
    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, DbError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, DbError>;
    /// Applies every write or none, across trees, durably (one flush). A logical operation that
    /// writes several records (a job and its index entry, a project and its environment) goes
    /// through here so a crash never leaves half of it.
    fn batch(&self, writes: Vec<Write>) -> Result<(), DbError>;
    /// As [`Db::batch`] (all or nothing, seen by every read at once) but not flushed: durable
    /// at the backend's next flush (sled's background flush within half a second, or any
    /// later durable write). Only for what a crash may lose because it is written again, such
    /// as an agent's grains, which every attach sends.
    fn batch_unflushed(&self, writes: Vec<Write>) -> Result<(), DbError>;
}

/// How long [`SledDb::open`] waits for a lock a just-closed database still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled 0.34, the embedded default.
pub struct SledDb {
    db: sled::Db,
}

impl SledDb {
    pub fn open(path: &Path) -> Result<Arc<dyn Db>, DbError> {
        // sled's lock file outlives a dropped `Db` for a moment (its flusher thread holds the
        // last reference until it wakes), so a reopen right after a close, as a restart or a
        // test does, can find it still locked. Retrying for a bounded time tells that apart
        // from another process really holding the database.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => return Ok(Arc::new(SledDb { db })),
                Err(source)
                    if source.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(DbError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
    }

    fn tree(&self, tree: Tree) -> Result<sled::Tree, DbError> {
        Ok(self.db.open_tree(tree.name())?)
    }

    fn flush(&self) -> Result<(), DbError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Db for SledDb {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.tree(tree)?.insert(key, value)?;
        self.flush()
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let old = self.tree(tree)?.remove(key)?.map(|v| v.to_vec());
        self.flush()?;
        Ok(old)
    }

    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, DbError> {
        let swapped = self
            .tree(tree)?
            .compare_and_swap(key, expected, new)?
            .is_ok();
        if swapped {
            self.flush()?;
        }
        Ok(swapped)
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, DbError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn batch(&self, writes: Vec<Write>) -> Result<(), DbError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.apply(writes)?;
        self.flush()
    }

    fn batch_unflushed(&self, writes: Vec<Write>) -> Result<(), DbError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.apply(writes)
    }
}

impl SledDb {
    /// Applies `writes` atomically, unflushed, in one sled transaction.
    fn apply(&self, writes: Vec<Write>) -> Result<(), DbError> {
        // A sled transaction takes each tree once; writes refer to theirs by position.
        let mut names: Vec<Tree> = Vec::new();
        for write in &writes {
            if !names.contains(&write.tree()) {
                names.push(write.tree());
            }
        }
        let trees = names
            .iter()
            .map(|t| self.tree(*t))
            .collect::<Result<Vec<_>, _>>()?;
        let position = |tree: Tree| names.iter().position(|t| *t == tree).unwrap_or(0);
        trees[..]
            .transaction(|views| {
                for write in &writes {
                    let view = &views[position(write.tree())];
                    match write {
                        Write::Put { key, value, .. } => {
                            view.insert(key.as_slice(), value.as_slice())?;
                        }
                        Write::Delete { key, .. } => {
                            view.remove(key.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Storage(e) => DbError::from(e),
                TransactionError::Abort(()) => DbError::Backend("batch aborted".to_owned()),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen_and_cas_is_atomic() -> Result<(), DbError> {
        let dir = tempfile::tempdir().map_err(|e| DbError::Backend(e.to_string()))?;
        {
            let db = SledDb::open(dir.path())?;
            db.put(Tree::Users, b"alice", b"1")?;
            db.put(Tree::Users, b"bob", b"2")?;
            assert!(db.compare_and_swap(Tree::Sessions, b"t", None, Some(b"x"))?);
            assert!(!db.compare_and_swap(Tree::Sessions, b"t", None, Some(b"y"))?);
            assert!(db.compare_and_swap(Tree::Sessions, b"t", Some(b"x"), None)?);
            assert_eq!(db.delete(Tree::Users, b"bob")?, Some(b"2".to_vec()));
        }
        let db = SledDb::open(dir.path())?;
        assert_eq!(db.get(Tree::Users, b"alice")?, Some(b"1".to_vec()));
        assert_eq!(db.get(Tree::Users, b"bob")?, None);
        assert_eq!(db.get(Tree::Sessions, b"t")?, None);
        assert_eq!(db.scan(Tree::Users, b"")?.len(), 1);
        Ok(())
    }

    #[test]
    fn a_batch_writes_across_trees_and_survives_reopen() -> Result<(), DbError> {
        let dir = tempfile::tempdir().map_err(|e| DbError::Backend(e.to_string()))?;
        {
            let db = SledDb::open(dir.path())?;
            db.put(Tree::Projects, b"e/old", b"x")?;
            db.batch(vec![
                Write::put(Tree::Jobs, "j1", "summary"),
                Write::put(Tree::JobPayloads, "j1", "plan"),
                Write::put(Tree::JobsByProject, "e/app/j1", ""),
                Write::delete(Tree::Projects, "e/old"),
                Write::put(Tree::Jobs, "j2", "second"),
            ])?;
        }
        let db = SledDb::open(dir.path())?;
        assert_eq!(db.get(Tree::Jobs, b"j1")?, Some(b"summary".to_vec()));
        assert_eq!(db.get(Tree::Jobs, b"j2")?, Some(b"second".to_vec()));
        assert_eq!(db.get(Tree::JobPayloads, b"j1")?, Some(b"plan".to_vec()));
        assert_eq!(db.scan(Tree::JobsByProject, b"e/app/")?.len(), 1);
        assert_eq!(db.get(Tree::Projects, b"e/old")?, None);
        Ok(())
    }

    /// An unflushed batch is read back at once, and a later durable write takes it to disk
    /// with itself (sled recovers a prefix of its log: never the later write without it).
    #[test]
    fn an_unflushed_batch_is_seen_at_once_and_made_durable_by_the_next_flush() -> Result<(), DbError>
    {
        let dir = tempfile::tempdir().map_err(|e| DbError::Backend(e.to_string()))?;
        {
            let db = SledDb::open(dir.path())?;
            db.batch_unflushed(vec![
                Write::put(Tree::Agents, "a1", "grains 1"),
                Write::put(Tree::Agents, "a2", "grains 2"),
            ])?;
            assert_eq!(db.get(Tree::Agents, b"a2")?, Some(b"grains 2".to_vec()));
            db.put(Tree::Users, b"alice", b"1")?;
        }
        let db = SledDb::open(dir.path())?;
        assert_eq!(db.get(Tree::Agents, b"a1")?, Some(b"grains 1".to_vec()));
        assert_eq!(db.get(Tree::Agents, b"a2")?, Some(b"grains 2".to_vec()));
        assert_eq!(db.get(Tree::Users, b"alice")?, Some(b"1".to_vec()));
        Ok(())
    }
}
