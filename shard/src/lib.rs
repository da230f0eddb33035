//! strata-shard: a Strata node. A node serves over gRPC one engine on its own, several engines
//! as the shards of one map (`router.rs`), or a replica of a Raft-replicated shard
//! (strata-raft). Replicated shards by the map arrive in later layers.

pub mod all_subscription;
pub mod append_stream;
pub mod backend;
pub mod balance;
pub mod blocking;
pub mod clock;
pub mod cluster;
pub mod convert;
pub mod forward;
pub mod groups;
pub mod history;
pub mod host;
pub mod ids;
pub mod limits;
pub mod map_cell;
pub mod merge;
pub mod meta;
pub mod metrics;
pub mod mover;
pub mod node;
pub mod placement;
pub mod remote_appends;
pub mod remote_shard;
pub mod replica_move;
pub mod retention;
pub mod router;
pub mod service;
pub mod shard_set;
pub mod shards;
pub mod stats;
pub mod status;
pub mod subscription;
pub mod throttle;

pub use backend::Backend;
pub use node::{termination_signal, ClusterConfig, Node, NodeConfig, NodeError};
pub use service::{ServiceConfig, StreamsService};
