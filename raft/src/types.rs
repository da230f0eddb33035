//! openraft's type configuration for a Strata shard.

use std::io::Cursor;

use crate::wire::{Command, Reply};

openraft::declare_raft_types!(
    /// A Strata shard's Raft types: entries carry [`Command`]s, applying one yields a [`Reply`],
    /// and a snapshot is a small manifest of log ranges (see [`crate::snapshot`]).
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
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
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
/// A membership and the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
