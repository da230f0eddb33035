//! A node's assembly of shards: opens each shard's storage (an engine, or this node's replica
//! of the shard's Raft group) over the node's one sync round and one index block cache, builds
//! its `Streams` service, and adds it to the node's [`ShardSet`] — at start for the shards the
//! data directory holds, and while the node runs for a shard a split adds (see
//! [`Host::add`]). The metadata group's replica is opened here too, but is not a shard.
//!
//! A shard added at run time lives where the ones made at creation do
//! (`DIR/shards/<id>/`, see [`crate::shards`]); on a replicated node its group's members are
//! the metadata group's voters of the moment, and the node that added it to the map forms
//! the group ([`strata_raft::Replica::init`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_engine::clock::MonotonicClock;
use strata_engine::index_store::{IndexCache, RocksIndexStore};
use strata_engine::sync_round::RoundFs;
use strata_engine::{Engine, EngineConfig};
use strata_proto::routing::ShardId;
use strata_raft::{
    GrpcTransport, RaftService, RaftSettings, Replica, Shard, ShardOptions, StrataNode,
};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::clock::SystemWallClock;
use crate::ids::RandomIds;
use crate::service::{ServiceConfig, StreamsService};
use crate::shard_set::ShardSet;
use crate::stats::ServiceStats;

/// How long removing a shard waits for everything holding it to let go.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a shard's storage could not be opened: the directory and the engine's error.
pub type OpenError = (PathBuf, strata_engine::Error);

/// What a replicated node opens its groups with.
#[derive(Debug, Clone)]
pub struct RaftHost {
    /// This node's id.
    pub node_id: u64,
    /// This node as peers reach it.
    pub me: StrataNode,
    /// The members groups formed at start are configured with (this node included).
    pub members: BTreeMap<u64, StrataNode>,
    /// Raft timing and housekeeping.
    pub settings: RaftSettings,
    /// The one transport every group's messages go over.
    pub transport: Arc<GrpcTransport>,
    /// The server side of the transport: a group added is served from then on.
    pub service: RaftService<GrpcTransport>,
}

/// A node's shard assembly (cheap to clone: shared).
#[derive(Debug, Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    engine: EngineConfig,
    service: ServiceConfig,
    round: RoundFs,
    cache: IndexCache,
    stats: Arc<ServiceStats>,
    stop: watch::Receiver<bool>,
    raft: Option<RaftHost>,
    set: ShardSet,
    /// Held while a shard is added or removed (one at a time), and while the node starts its
    /// shards' background work; `true` once it has (shards added later start theirs
    /// themselves).
    adding: tokio::sync::Mutex<bool>,
    /// Each shard's stop (set when the node stops, or when the shard is removed): its
    /// subscriptions and background work end with it.
    stops: std::sync::Mutex<HashMap<ShardId, Arc<watch::Sender<bool>>>>,
    /// Shards removed whose directories are not deleted yet.
    closing: std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
}

/// The parts a [`Host`] is made of.
#[derive(Debug)]
pub struct HostParts {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Storage settings of every shard.
    pub engine: EngineConfig,
    /// Service settings of every shard.
    pub service: ServiceConfig,
    /// The sync round the shards' logs share.
    pub round: RoundFs,
    /// The index block cache the shards share.
    pub cache: IndexCache,
    /// The node's service counters.
    pub stats: Arc<ServiceStats>,
    /// Set when the node stops.
    pub stop: watch::Receiver<bool>,
    /// Replication; `None` runs engines on their own.
    pub raft: Option<RaftHost>,
}

impl Host {
    /// An assembly holding no shard yet.
    pub fn new(parts: HostParts) -> Result<Host, String> {
        Ok(Host {
            inner: Arc::new(Inner {
                data_dir: parts.data_dir,
                engine: parts.engine,
                service: parts.service,
                round: parts.round,
                cache: parts.cache,
                stats: parts.stats,
                stop: parts.stop,
                raft: parts.raft,
                set: ShardSet::new(Vec::new())?,
                adding: tokio::sync::Mutex::new(false),
                stops: Default::default(),
                closing: Default::default(),
            }),
        })
    }

    /// The shards held.
    pub fn set(&self) -> &ShardSet {
        &self.inner.set
    }

    /// The sync round the shards' logs share.
    pub fn round(&self) -> &RoundFs {
        &self.inner.round
    }

    /// The replication settings, on a replicated node.
    pub fn raft(&self) -> Option<&RaftHost> {
        self.inner.raft.as_ref()
    }

    /// Where shard `id` of a node of several shards lives.
    pub fn shard_dir(&self, id: ShardId) -> PathBuf {
        self.inner.data_dir.join("shards").join(id.0.to_string())
    }

    /// Opens shard `id` in `dir` and adds it to the set (at start; see [`Host::add`] for a
    /// running node). `several`: the node holds more than one shard (a lone append would then
    /// wait for the others' sync rounds on a runtime thread). Replicated, its group is
    /// configured with `members` (default: the node's `--peer`s and itself), and a new replica
    /// records `incarnation` (see [`strata_raft::StrataNode`]).
    pub async fn open(
        &self,
        id: ShardId,
        dir: &Path,
        several: bool,
        (members, incarnation): (Option<BTreeMap<u64, StrataNode>>, u64),
    ) -> Result<(), OpenError> {
        let members = members.or_else(|| self.inner.raft.as_ref().map(|r| r.members.clone()));
        let backend = self
            .open_storage(id.0, dir, several, (members, incarnation))
            .await?;
        self.insert(id, backend, dir)
    }

    /// Opens the metadata group's replica in `dir` (a replicated node of several shards).
    pub async fn open_meta(&self, group: u32, dir: &Path) -> Result<Replica, OpenError> {
        let members = self.inner.raft.as_ref().map(|r| r.members.clone());
        match self.open_storage(group, dir, true, (members, 0)).await? {
            Backend::Replicated(replica) => Ok(*replica),
            Backend::Single(_) => Err(unavailable(dir, "the metadata group needs replication")),
        }
    }

    /// Adds shard `id` while the node runs (a split): opened in its directory, served by Raft
    /// (replicated: with `members` as its group's configured members, a new replica recording
    /// `incarnation`), added to the set, its background work started. A shard held already is
    /// left as it is.
    pub async fn add(
        &self,
        id: ShardId,
        (members, incarnation): (Option<BTreeMap<u64, StrataNode>>, u64),
    ) -> Result<Backend, OpenError> {
        let started = self.inner.adding.lock().await;
        if let Some(held) = self.inner.set.backend(id) {
            return Ok(held);
        }
        let dir = self.shard_dir(id);
        self.wait_closed(id)
            .await
            .map_err(|e| unavailable(&dir, e))?;
        let members = members.or_else(|| self.inner.raft.as_ref().map(|r| r.members.clone()));
        let backend = self
            .open_storage(id.0, &dir, true, (members, incarnation))
            .await?;
        self.insert(id, backend.clone(), &dir)?;
        if *started {
            self.start_background(id, &backend);
        }
        tracing::info!(shard = id.0, dir = %dir.display(), "a shard was added to this node");
        Ok(backend)
    }

    /// Starts every shard's background work (retention), once; shards added later start
    /// their own.
    pub async fn start(&self) {
        let mut started = self.inner.adding.lock().await;
        if *started {
            return;
        }
        for (id, backend) in self.inner.set.backends() {
            self.start_background(id, &backend);
        }
        *started = true;
    }

    fn start_background(&self, id: ShardId, backend: &Backend) {
        let settings = self.inner.service.retention.clone();
        let Some((_, service)) = self.inner.set.get().iter().find(|(s, _)| *s == id).cloned()
        else {
            return;
        };
        if settings.enabled {
            tokio::spawn(crate::retention::run(
                backend.clone(),
                settings,
                Arc::new(SystemWallClock::default()),
                service.pins().clone(),
                self.inner.stats.clone(),
                self.stop_of(id),
            ));
        }
    }

    /// Shard `id`'s stop, made when first asked: set once the node stops or the shard is
    /// removed.
    fn stop_of(&self, id: ShardId) -> watch::Receiver<bool> {
        let mut stops = strata_engine::sync::lock(&self.inner.stops);
        if let Some(tx) = stops.get(&id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        stops.insert(id, tx.clone());
        let mut node = self.inner.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = node.wait_for(|s| *s) => { tx.send_replace(true); }
                () = tx.closed() => {}
            }
        });
        rx
    }

    /// Removes shard `id` from this node (a replica move took its replica away; the group no
    /// longer counts it): out of the set and the Raft server, its subscriptions and background
    /// work stopped, its replica shut down; its directory is deleted in the background once
    /// nothing holds the store (an [`Host::add`] of the shard waits for that). A shard not
    /// held is left.
    pub async fn remove(&self, id: ShardId) -> Result<(), String> {
        let _removing = self.inner.adding.lock().await;
        let Some(service) = self.inner.set.remove(id) else {
            return Ok(());
        };
        if let Some(raft) = &self.inner.raft {
            raft.service.remove(u64::from(id.0));
        }
        if let Some(tx) = strata_engine::sync::lock(&self.inner.stops).remove(&id) {
            tx.send_replace(true);
        }
        let gone = match service.backend() {
            Backend::Replicated(replica) => {
                replica.shutdown().await;
                Some(replica.shard().gone())
            }
            Backend::Single(_) => None,
        };
        drop(service);
        strata_engine::sync::lock(&self.inner.closing).insert(id);
        let host = self.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let dir = host.shard_dir(id);
            match host.delete_when_gone(gone, &dir).await {
                Ok(()) => tracing::info!(shard = id.0, dir = %dir.display(),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "a shard was removed from this node"),
                Err(e) => tracing::error!(shard = id.0, error = %e, "removing a shard's directory"),
            }
            strata_engine::sync::lock(&host.inner.closing).remove(&id);
        });
        Ok(())
    }

    /// Deletes `dir` once `gone` says nothing holds its store (at most [`CLOSE_WAIT`]).
    async fn delete_when_gone(
        &self,
        gone: Option<strata_raft::ShardGone>,
        dir: &Path,
    ) -> Result<(), String> {
        if let Some(gone) = gone {
            let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
            while !gone.is_gone() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "still held by {} handles {CLOSE_WAIT:?} after its removal; {} stays",
                        gone.holders(),
                        dir.display()
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let doomed = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            strata_engine::fs::remove_dir_durably(&strata_engine::fs::StdFs, &doomed)
        })
        .await
        .map_err(|e| format!("removing {}: {e}", dir.display()))?
        .map_err(|e| format!("removing {}: {e}", dir.display()))
    }

    /// Waits (at most [`CLOSE_WAIT`] and a second) until a removal of shard `id` has deleted
    /// its directory.
    async fn wait_closed(&self, id: ShardId) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT + std::time::Duration::from_secs(1);
        while strata_engine::sync::lock(&self.inner.closing).contains(&id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{id}'s earlier replica here is still closing"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Builds `backend`'s service and adds both to the set (and, replicated, to the Raft
    /// server).
    fn insert(&self, id: ShardId, backend: Backend, dir: &Path) -> Result<(), OpenError> {
        if let (Some(raft), Backend::Replicated(replica)) = (&self.inner.raft, &backend) {
            raft.service
                .add(u64::from(id.0), replica.served())
                .map_err(|e| unavailable(dir, e))?;
        }
        let service = StreamsService::new(
            backend,
            Arc::new(SystemWallClock::default()),
            Arc::new(RandomIds),
            self.inner.service.clone(),
            self.inner.stats.clone(),
            self.stop_of(id),
        );
        self.inner
            .set
            .insert(id, service)
            .map_err(|e| unavailable(dir, e))
    }

    /// Opens the storage of group `group` in `dir`: an engine, or a replica started with
    /// `members`, a new one recording `incarnation` (on the blocking pool: recovery reads and
    /// syncs files).
    async fn open_storage(
        &self,
        group: u32,
        dir: &Path,
        several: bool,
        (members, incarnation): (Option<BTreeMap<u64, StrataNode>>, u64),
    ) -> Result<Backend, OpenError> {
        let inner = &self.inner;
        let (fs, cache, at) = (inner.round.clone(), inner.cache.clone(), dir.to_path_buf());
        let Some(raft) = &inner.raft else {
            let mut config = inner.engine.clone();
            config.lone_appends &= !several;
            let engine = blocking(dir, move || {
                Engine::open_dir_with(&at, config, Arc::new(fs), &cache)
            })
            .await?;
            return Ok(Backend::Single(Arc::new(engine)));
        };
        let options = ShardOptions {
            node_id: raft.node_id,
            dir: dir.to_path_buf(),
            engine: inner.engine.clone(),
            fs: Arc::new(fs),
            clock: Arc::new(MonotonicClock::default()),
            open_index: Arc::new(move |p| Ok(Box::new(RocksIndexStore::open_shared(p, &cache)?))),
            log_sync: Default::default(),
            incarnation,
        };
        let shard = blocking(dir, move || Shard::open(options)).await?;
        let replica = Replica::start(
            u64::from(group),
            shard,
            raft.me.clone(),
            members.unwrap_or_else(|| raft.members.clone()),
            raft.settings.clone(),
            raft.transport.clone(),
        )
        .await
        .map_err(|e| unavailable(dir, e))?;
        Ok(Backend::Replicated(Box::new(replica)))
    }
}

fn unavailable(dir: &Path, why: impl std::fmt::Display) -> OpenError {
    (
        dir.to_path_buf(),
        strata_engine::Error::Unavailable(why.to_string()),
    )
}

/// Runs `open` on the blocking pool.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    open: impl FnOnce() -> strata_engine::Result<T> + Send + 'static,
) -> Result<T, OpenError> {
    tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| unavailable(dir, format!("opening the store: {e}")))?
        .map_err(|e| (dir.to_path_buf(), e))
}

impl crate::meta::Groups for Host {
    fn held(&self) -> Vec<ShardId> {
        self.inner.set.ids()
    }

    fn incarnation(&self, shard: ShardId) -> Option<u64> {
        match self.inner.set.backend(shard) {
            Some(Backend::Replicated(replica)) => Some(replica.shard().incarnation()),
            _ => None,
        }
    }

    fn close(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.remove(shard))
    }

    fn form(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>
    {
        Box::pin(async move {
            match self.inner.set.backend(shard) {
                Some(Backend::Replicated(replica)) => {
                    replica.form_if_new().await.map_err(|e| e.to_string())
                }
                _ => Ok(false),
            }
        })
    }

    fn open(
        &self,
        shard: ShardId,
        (members, incarnation): (BTreeMap<u64, StrataNode>, u64),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let members = (!members.is_empty()).then_some(members);
            self.add(shard, (members, incarnation))
                .await
                .map(drop)
                .map_err(|(dir, e)| format!("opening {}: {e}", dir.display()))
        })
    }
}
