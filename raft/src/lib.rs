//! strata-raft: one shard as a Raft group on openraft 0.9. The engine's event log is the Raft
//! log — an entry is one record, its index the record's sequence number — so nothing is stored
//! twice; the state machine is the engine's index, and a snapshot is a list of log ranges.
//!
//! - [`storage`]: openraft's `RaftLogStorage` and `RaftStateMachine` over the engine.
//! - [`hard_state`]: vote, committed log id and purge mark, synced on every save.
//! - [`snapshot`]: snapshot manifests, and staging a snapshot by fetching segments.
//! - [`wire`]: what entries carry and what applying them answers.
//! - [`network`]: Raft traffic over tonic, behind the [`RaftTransport`] seam.
//! - [`replica`]: the Raft node and the operations the server needs.
//! - [`runtime`]: openraft's async runtime, with seedable randomness and per-node timer pace.

pub mod fence;
pub mod hard_state;
pub mod network;
pub mod pacing;
pub mod replica;
pub mod runtime;
pub mod snapshot;
pub mod storage;
pub mod types;
pub mod wire;

pub use fence::Fence;
pub use network::{GrpcTransport, RaftService, RaftTransport};
pub use pacing::CatchUpPacer;
pub use replica::{RaftSettings, Replica, ReplicaError};
pub use storage::{LogStore, LogSync, Shard, ShardGone, ShardOptions, StateMachine};
pub use types::{NodeId, Raft, StrataNode, TypeConfig};
