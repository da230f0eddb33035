//! strata-shard: a Strata node. Today one node serves one shard (one engine) over gRPC; the
//! multi-shard node, routing and Raft arrive in later layers.

pub mod clock;
pub mod convert;
pub mod metrics;
pub mod node;
pub mod service;
pub mod status;
pub mod subscription;

pub use node::{termination_signal, Node, NodeConfig, NodeError};
pub use service::{ServiceConfig, StreamsService};
