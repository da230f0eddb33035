//! openraft's type configuration for a Strata shard.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::wire::{Command, Reply};

/// A member of a shard's Raft group: where clients reach it and where the other nodes send
/// Raft traffic (often the same address), and which incarnation of the node's replica it is.
///
/// The incarnation tells apart the replicas one node held of one group over time: a replica
/// moved away and later back is a new, empty replica, and must not be taken for the old one by
/// a member whose membership is stale (it would count the new replica's vote, or its ack, as
/// the old one's, which held entries the new one lacks). A group's founders are incarnation 0;
/// a replica move's target is the epoch of the map that began the move (see
/// `Shard::incarnation`). Every Raft message names the incarnation it is for, and a replica
/// refuses one for another.
///
/// Encoded as it was before incarnations existed, two strings, so that logs, snapshots and the
/// wire stay readable both ways: a nonzero incarnation travels as a `#N` suffix of the Raft
/// address (no `host:port` holds a `#`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NodeText", into = "NodeText")]
pub struct StrataNode {
    /// Client (gRPC `strata.v1`) address, `host:port`.
    pub addr: String,
    /// Raft (gRPC `strata.internal.v1`) address, `host:port`.
    pub raft_addr: String,
    /// Which of the node's replicas of the group this is: 0 for a founder.
    pub incarnation: u64,
}

impl StrataNode {
    /// A founder's node (incarnation 0) at these addresses.
    pub fn at(addr: impl Into<String>, raft_addr: impl Into<String>) -> StrataNode {
        StrataNode {
            addr: addr.into(),
            raft_addr: raft_addr.into(),
            incarnation: 0,
        }
    }

    /// This node as its replica of incarnation `incarnation`.
    pub fn incarnation(mut self, incarnation: u64) -> StrataNode {
        self.incarnation = incarnation;
        self
    }
}

/// [`StrataNode`] as it is encoded (see there).
#[derive(Serialize, Deserialize)]
struct NodeText {
    addr: String,
    raft_addr: String,
}

impl From<StrataNode> for NodeText {
    fn from(n: StrataNode) -> NodeText {
        let raft_addr = match n.incarnation {
            0 => n.raft_addr,
            i => format!("{}#{i}", n.raft_addr),
        };
        NodeText {
            addr: n.addr,
            raft_addr,
        }
    }
}

impl From<NodeText> for StrataNode {
    fn from(t: NodeText) -> StrataNode {
        let split = t
            .raft_addr
            .rsplit_once('#')
            .and_then(|(a, i)| Some((a.to_string(), i.parse::<u64>().ok()?)));
        let (raft_addr, incarnation) = split.unwrap_or((t.raft_addr, 0));
        StrataNode {
            addr: t.addr,
            raft_addr,
            incarnation,
        }
    }
}

impl std::fmt::Display for StrataNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.addr == self.raft_addr {
            f.write_str(&self.addr)?;
        } else {
            write!(f, "{} (raft {})", self.addr, self.raft_addr)?;
        }
        match self.incarnation {
            0 => Ok(()),
            i => write!(f, " [replica incarnation {i}]"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_founder_encodes_as_before_incarnations_and_a_later_replica_round_trips() {
        let founder = StrataNode::at("a:1", "r:2");
        let bytes = bincode::serialize(&founder).unwrap();
        #[derive(Serialize)]
        struct Before {
            addr: String,
            raft_addr: String,
        }
        let before = Before {
            addr: "a:1".into(),
            raft_addr: "r:2".into(),
        };
        assert_eq!(bytes, bincode::serialize(&before).unwrap());
        for node in [founder, StrataNode::at("a:1", "r:2").incarnation(17)] {
            let json = serde_json::to_vec(&node).unwrap();
            assert_eq!(serde_json::from_slice::<StrataNode>(&json).unwrap(), node);
            let bin = bincode::serialize(&node).unwrap();
            assert_eq!(bincode::deserialize::<StrataNode>(&bin).unwrap(), node);
        }
        assert_eq!(
            StrataNode::at("a:1", "a:1").incarnation(3).to_string(),
            "a:1 [replica incarnation 3]"
        );
    }
}
