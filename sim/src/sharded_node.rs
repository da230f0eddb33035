//! A running node of a sharded run (see [`crate::sharded`]): the node's router, map,
//! metadata replica and movers, held by [`crate::cluster`] beside its replicas.

use strata_shard::map_cell::MapCell;
use strata_shard::meta::Meta;
use strata_shard::mover::Mover;
use strata_shard::replica_move::ReplicaMover;
use strata_shard::router::Router;
use strata_shard::shard_set::ShardSet;
use tokio::sync::watch;

/// A running node of a sharded run: what the clients, the mover driver and the checks use.
#[derive(Clone)]
pub struct ShardedNode {
    /// The node's `Streams` service over its shards.
    pub router: Router,
    /// Its shards.
    pub set: ShardSet,
    /// The map it routes by.
    pub map: MapCell,
    /// Its replica of the metadata group.
    pub meta: Meta,
    /// Its slot-range mover.
    pub mover: Mover,
    /// Its replica mover.
    pub replicas: ReplicaMover,
    /// Set when the node goes down.
    pub stopped: watch::Receiver<bool>,
}
