//! The shards a node serves, as one set that changes while the node runs (a split adds a
//! shard on every node; a replica move adds one on its target and removes it from its source): each with its `Streams` service over its storage. Readers take the set of
//! the moment (an `Arc`), so a call sees one set from start to end; a shard is added whole
//! (its storage open, its service built) before any map routes a slot to it.

use std::sync::{Arc, RwLock};

use strata_proto::routing::ShardId;

use crate::backend::Backend;
use crate::service::StreamsService;

/// The shards of the moment, sorted by id.
pub type Served = Arc<[(ShardId, StreamsService)]>;

/// A node's shards (shared by its router, cluster service, mover and metrics).
#[derive(Debug, Clone)]
pub struct ShardSet(Arc<RwLock<Served>>);

impl ShardSet {
    /// A set of `shards` (sorted here); refused if an id repeats.
    pub fn new(mut shards: Vec<(ShardId, StreamsService)>) -> Result<ShardSet, String> {
        shards.sort_by_key(|(id, _)| *id);
        if let Some(w) = shards.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("{} is opened twice", w[0].0));
        }
        Ok(ShardSet(Arc::new(RwLock::new(shards.into()))))
    }

    /// The shards now.
    pub fn get(&self) -> Served {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The shards' storage now, by id.
    pub fn backends(&self) -> Vec<(ShardId, Backend)> {
        self.get()
            .iter()
            .map(|(id, s)| (*id, s.backend().clone()))
            .collect()
    }

    /// Shard `id`'s storage, if the node holds it.
    pub fn backend(&self, id: ShardId) -> Option<Backend> {
        let shards = self.get();
        let at = shards.binary_search_by_key(&id, |(s, _)| *s).ok()?;
        shards.get(at).map(|(_, s)| s.backend().clone())
    }

    /// The ids held now.
    pub fn ids(&self) -> Vec<ShardId> {
        self.get().iter().map(|(id, _)| *id).collect()
    }

    /// Adds shard `id` served by `service`; refused (the set unchanged) if it is held already.
    pub fn insert(&self, id: ShardId, service: StreamsService) -> Result<(), String> {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Err(at) = held.binary_search_by_key(&id, |(s, _)| *s) else {
            return Err(format!("{id} is held already"));
        };
        let mut next: Vec<(ShardId, StreamsService)> = held.to_vec();
        next.insert(at, (id, service));
        *held = next.into();
        debug_assert!(held.windows(2).all(|w| w[0].0 < w[1].0));
        Ok(())
    }

    /// Takes shard `id` out of the set (its replicas moved to other nodes), returning its
    /// service; `None` if it is not held.
    pub fn remove(&self, id: ShardId) -> Option<StreamsService> {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = held.binary_search_by_key(&id, |(s, _)| *s).ok()?;
        let mut next: Vec<(ShardId, StreamsService)> = held.to_vec();
        let (_, service) = next.remove(at);
        *held = next.into();
        Some(service)
    }
}
