//! Compute nodes attached over SSH by `corpus-master nodes attach` ([`Tree::Nodes`], keyed by
//! agent id): where the node is and how its agent was installed, so `nodes detach` can undo it.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::db::Tree;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The agent id installed on the node (the key).
    pub id: String,
    /// The SSH login and address the console used.
    pub user: String,
    pub host: String,
    pub port: u16,
    /// SHA256 fingerprint of the node's host key when it was attached.
    pub host_key_fingerprint: String,
    pub attached_at: i64,
    /// Every remote path is under this prefix (`/` in production, a temp dir in tests).
    pub remote_prefix: String,
    /// Whether the agent runs as `corpus-agent.service` (or was started detached).
    pub systemd: bool,
    /// The agent's environment root and state dir on the node: `detach --purge` removes them.
    pub root: String,
    pub state_dir: String,
    /// The private key file used to attach (its path, never its content), detach's default.
    pub key_file: String,
}

impl Store {
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.get(Tree::Nodes, "node", id)
    }

    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.put(Tree::Nodes, &node.id, node)
    }

    pub fn delete_node(&self, id: &str) -> Result<(), StoreError> {
        self.db.delete(Tree::Nodes, id.as_bytes())?;
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all(Tree::Nodes, "node")
    }
}
