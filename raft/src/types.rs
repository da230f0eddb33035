//! openraft's type configuration for a Strata shard.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::wire::{Command, Reply};

/// A member of a shard's Raft group: where clients reach it and where the other nodes send
/// Raft traffic (often the same address).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrataNode {
    /// Client (gRPC `strata.v1`) address, `host:port`.
    pub addr: String,
    /// Raft (gRPC `strata.internal.v1`) address, `host:port`.
    pub raft_addr: String,
}

impl std::fmt::Display for StrataNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.addr == self.raft_addr {
            f.write_str(&self.addr)
        } else {
            write!(f, "{} (raft {})", self.addr, self.raft_addr)
        }
    }
}

openraft::declare_raft_types!(
    /// A Strata shard's Raft types: entries carry [`Command`]s, applying one yields a [`Reply`],
    /// and a snapshot is a small manifest of log ranges (see [`crate::snapshot`]).
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = StrataNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::StrataRuntime,
);

/// A node's id in its Raft group.
pub type NodeId = u64;
/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// A membership with node addresses.
pub type Membership = openraft::Membership<NodeId, StrataNode>;
/// A membership and the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, StrataNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, StrataNode>;
