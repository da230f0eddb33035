//! A Strata node: its storage (one engine, or a replica of a Raft-replicated shard), the
//! `Streams` and `Cluster` gRPC services, the internal Raft service (on the client port or its
//! own), the standard gRPC health service and server reflection (so `grpcurl` works without
//! .proto files). Shutdown stops accepting calls, lets in-flight calls finish, then drains the
//! engine's queue (or stops the Raft node).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use strata_engine::clock::MonotonicClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::{IndexCache, RocksIndexStore, INDEX_CACHE_BYTES_DEFAULT};
use strata_engine::sync_round::RoundFs;
use strata_engine::{Engine, EngineConfig};
use strata_proto::internal::raft_internal_server::RaftInternalServer;
use strata_proto::routing::ShardId;
use strata_proto::v1 as pb;
use strata_raft::network::MESSAGE_BYTES_MAX;
use strata_raft::{
    GrpcTransport, RaftService, RaftSettings, Replica, Shard, ShardOptions, StrataNode,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::backend::Backend;
use crate::clock::SystemWallClock;
use crate::cluster::ClusterService;
use crate::forward::Peers;
use crate::ids::RandomIds;
use crate::map_cell::MapCell;
use crate::meta::{Meta, META_DIR, META_GROUP};
use crate::mover::Mover;
use crate::router::Router;
use crate::service::{ServiceConfig, ServiceStats, StreamsService};
use crate::shards::LocalShards;
use crate::throttle::Throttle;

/// Largest HTTP/2 frame a client may send (h2's default is 16 KiB: a 100 KiB append took 7
/// frames). Flow-control windows stay hyper's (1 MiB per call and per connection): they bound
/// what a connection can buffer in the server before the service reads it.
const HTTP2_FRAME_BYTES_MAX: u32 = 1 << 20;

/// How a node joins a replicated shard.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (unique in the cluster, not 0-reserved: any u64).
    pub node_id: u64,
    /// The other members (id → addresses); `Cluster.Init` forms the cluster from these and
    /// this node.
    pub peers: BTreeMap<u64, StrataNode>,
    /// Where Raft traffic is served; `None` shares the client port.
    pub raft_listen: Option<SocketAddr>,
    /// The client address others are told (leader hints); `None` is the bound one.
    pub advertise_addr: Option<String>,
    /// The Raft address peers dial; `None` is the bound one.
    pub advertise_raft_addr: Option<String>,
    /// Raft timing and housekeeping.
    pub raft: RaftSettings,
    /// How often the metadata group's leader balances the shards' leaders (see
    /// [`ClusterService::balance_leaders`]); `None`: never by itself.
    pub leader_balance_interval: Option<std::time::Duration>,
}

/// [`ClusterConfig::leader_balance_interval`] unless told otherwise, in milliseconds.
pub const LEADER_BALANCE_INTERVAL_DEFAULT_MS: u64 = 30_000;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the data lives (the engine's log and index).
    pub data_dir: PathBuf,
    /// The gRPC address.
    pub listen: SocketAddr,
    /// Storage settings.
    pub engine: EngineConfig,
    /// Service settings.
    pub service: ServiceConfig,
    /// The HTTP address of `/metrics` and `/health`; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Replication; `None` runs engines on their own.
    pub cluster: Option<ClusterConfig>,
    /// Shards: `None` opens what `data_dir` holds (one shard when new); `Some(n)` must match
    /// it, or makes `n` in a new directory (see [`crate::shards`]). A replicated node holds a
    /// replica of every shard; every node of a cluster must be started with the same count.
    pub shards: Option<u32>,
}

/// A node bound to its address, not yet serving.
#[derive(Debug)]
pub struct Node {
    shards: LocalShards,
    listener: TcpListener,
    raft_listener: Option<TcpListener>,
    raft_service: Option<RaftService<GrpcTransport>>,
    router: Router,
    cluster: ClusterService,
    stats: Arc<ServiceStats>,
    stop: watch::Sender<bool>,
    metrics: Option<TcpListener>,
    data_dir: PathBuf,
    leader_balance_interval: Option<std::time::Duration>,
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The storage engine failed to open.
    #[error("opening the store in {dir}: {source}")]
    Engine {
        dir: PathBuf,
        source: strata_engine::Error,
    },
    /// The address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The limits do not fit together (see [`crate::limits`]).
    #[error("limits: {0}")]
    Limits(strata_engine::Error),
    /// The data directory's shards are not what was asked (see [`crate::shards`]).
    #[error("{0}")]
    Shards(String),
}

impl Node {
    /// Opens the store and binds the address (port 0 picks a free port).
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        crate::limits::check(
            &config.engine.limits,
            config.service.response_bytes_max,
            config.cluster.is_some(),
        )
        .map_err(NodeError::Limits)?;
        config.service.validate().map_err(NodeError::Limits)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                crate::metrics::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let (shards, raft_listener, raft_service) = match &config.cluster {
            None => (open_engines(&config).await?, None, None),
            Some(cluster) => {
                let (shards, raft_listener, service) =
                    open_replicas(&config, cluster, local).await?;
                (shards, raft_listener, Some(service))
            }
        };
        let stats = Arc::new(ServiceStats::default());
        let (stop, stopped) = watch::channel(false);
        let services = shards
            .backends
            .iter()
            .map(|(id, backend)| {
                let service = StreamsService::new(
                    backend.clone(),
                    Arc::new(SystemWallClock::default()),
                    Arc::new(RandomIds),
                    config.service.clone(),
                    stats.clone(),
                    stopped.clone(),
                );
                (*id, service)
            })
            .collect();
        let peers = config.cluster.as_ref().map(|_| {
            let limits = &config.engine.limits;
            Peers::new(
                crate::limits::request_bytes_max(limits),
                crate::limits::encoded_answer_bytes_max(limits, config.service.response_bytes_max),
            )
        });
        let router =
            Router::new(shards.map.clone(), services, peers.clone()).map_err(NodeError::Shards)?;
        let mut cluster =
            ClusterService::new(shards.clone(), local.to_string(), peers, stats.clone());
        if shards.backends.len() > 1 {
            cluster = cluster.with_mover(mover(&config, &shards, &stats));
        }
        Ok(Node {
            shards,
            listener,
            raft_listener,
            raft_service,
            router,
            cluster,
            stats,
            stop,
            metrics,
            leader_balance_interval: config
                .cluster
                .as_ref()
                .and_then(|c| c.leader_balance_interval),
            data_dir: config.data_dir,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The storage it serves: its shards by id.
    pub fn backends(&self) -> &[(ShardId, Backend)] {
        &self.shards.backends
    }

    /// The bound Raft address, when Raft has its own port.
    pub fn raft_addr(&self) -> Option<SocketAddr> {
        self.raft_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The service's counters.
    pub fn stats(&self) -> &Arc<ServiceStats> {
        &self.stats
    }

    /// Serves until `shutdown` resolves, then drains and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NodeError> {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::streams_server::StreamsServer<Router>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        match (self.cluster.mover(), &self.shards.meta) {
            // A move the node stopped in before its switch leaves its fence: lifted here,
            // before any call is served.
            (Some(mover), None) => {
                mover.recover().await.map_err(NodeError::Shards)?;
            }
            // Replicated: the metadata leader looks, now and then (its map is the cluster's).
            (Some(_), Some(_)) => {
                tokio::spawn(
                    self.cluster
                        .clone()
                        .recover_moves(MOVE_RECOVERY_INTERVAL, self.stop.subscribe()),
                );
            }
            _ => {}
        }
        let settings = self.router.config().retention.clone();
        if settings.enabled {
            for ((_, backend), (_, service)) in
                self.shards.backends.iter().zip(self.router.shards())
            {
                tokio::spawn(crate::retention::run(
                    backend.clone(),
                    settings.clone(),
                    Arc::new(SystemWallClock::default()),
                    service.pins().clone(),
                    self.stats.clone(),
                    self.stop.subscribe(),
                ));
            }
        }
        if let (Some(_), Some(interval)) = (&self.shards.meta, self.leader_balance_interval) {
            tokio::spawn(
                self.cluster
                    .clone()
                    .balance_leaders(interval, self.stop.subscribe()),
            );
        }
        if let Some(meta) = &self.shards.meta {
            let follower = crate::meta::Follower {
                meta: meta.clone(),
                cell: self.shards.map.clone(),
                dir: self.data_dir.clone(),
                opened: self.shards.backends.iter().map(|(id, _)| *id).collect(),
                clock: Arc::new(SystemWallClock::default()),
            };
            tokio::spawn(crate::meta::follow(follower, self.stop.subscribe()));
        }
        if let Some(listener) = self.metrics {
            tokio::spawn(crate::metrics::serve(
                listener,
                self.shards.clone(),
                self.stats.clone(),
                self.data_dir.clone(),
                self.cluster.mover().cloned(),
                self.stop.subscribe(),
            ));
        }
        let raft_server = self.raft_service.map(|s| {
            RaftInternalServer::new(s)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX)
        });
        let mut stop_raft = self.stop.subscribe();
        let separate_raft = match (self.raft_listener, &raft_server) {
            (Some(listener), Some(server)) => {
                let server = server.clone();
                Some(tokio::spawn(async move {
                    tonic::transport::Server::builder()
                        .add_service(server)
                        .serve_with_incoming_shutdown(incoming(listener), async move {
                            let _ = stop_raft.wait_for(|s| *s).await;
                        })
                        .await
                }))
            }
            _ => None,
        };
        let shared_raft = if separate_raft.is_none() {
            raft_server
        } else {
            None
        };
        let result = tonic::transport::Server::builder()
            .max_frame_size(Some(HTTP2_FRAME_BYTES_MAX))
            .add_service(health)
            .add_service(reflection)
            .add_service(streams_server(self.router))
            .add_service(pb::cluster_server::ClusterServer::new(self.cluster))
            .add_optional_service(shared_raft)
            .serve_with_incoming_shutdown(incoming(self.listener), async {
                shutdown.await;
                // Subscriptions never end by themselves: tell them to, so the server can drain.
                self.stop.send_replace(true);
            })
            .await;
        self.stop.send_replace(true);
        if let Some(task) = separate_raft {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "raft server failed"),
                Err(e) => tracing::warn!(error = %e, "raft server task failed"),
                Ok(Ok(())) => {}
            }
        }
        // In-flight calls have finished; let queued appends finish too, then close.
        let closing = self.shards.backends.iter().map(|(_, b)| b.close());
        futures_util::future::join_all(closing).await;
        if let Some(meta) = &self.shards.meta {
            meta.replica().shutdown().await;
        }
        result.map_err(NodeError::from)
    }
}

/// How often a replicated cluster's metadata leader looks for moves that did not finish.
const MOVE_RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a replicated switch waits for this node to route by the map it recorded.
const SWITCH_ROUTED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The slot-range mover of a node of several shards. Without replication the next map is
/// written to the data directory (synced, renamed), then routed by; replicated, it is recorded
/// in the metadata group (compare-and-set), which every node follows, and the switch waits
/// until this node routes by it.
fn mover(config: &NodeConfig, shards: &LocalShards, stats: &Arc<ServiceStats>) -> Mover {
    let (dir, cell, meta) = (
        config.data_dir.clone(),
        shards.map.clone(),
        shards.meta.clone(),
    );
    let switch: crate::mover::Switch = Arc::new(move |map| {
        let (dir, cell, meta) = (dir.clone(), cell.clone(), meta.clone());
        Box::pin(async move {
            let Some(meta) = meta else {
                let written = map.clone();
                tokio::task::spawn_blocking(move || crate::shards::write_map(&dir, &written))
                    .await
                    .map_err(|e| format!("the map's writer failed: {e}"))??;
                cell.advance(map);
                return Ok(());
            };
            let now = crate::clock::WallClock::now_us(&SystemWallClock::default());
            meta.propose(&map, now)
                .await
                .map_err(|e| format!("recording the map: {e}"))?;
            let mut epochs = cell.watch();
            let epoch = map.epoch();
            let routed = tokio::time::timeout(SWITCH_ROUTED_WAIT, async {
                epochs.wait_for(|e| *e >= epoch).await.is_ok()
            })
            .await;
            match routed {
                Ok(true) => Ok(()),
                _ => Err(format!(
                    "the map of epoch {epoch} is recorded, but this node did not route by it within {SWITCH_ROUTED_WAIT:?}"
                )),
            }
        })
    });
    Mover::new(
        shards.backends.clone(),
        shards.map.clone(),
        switch,
        Arc::new(SystemWallClock::default()),
        Arc::new(RandomIds),
        Throttle::new(config.service.moves.clone(), stats.clone()),
    )
}

/// The `Streams` service with its message limits derived from the engine's (see
/// [`crate::limits`]), not gRPC's 4 MiB default, which would make the documented batch limit
/// unreachable.
fn streams_server(service: Router) -> pb::streams_server::StreamsServer<Router> {
    let limits = service.limits();
    let answers =
        crate::limits::encoded_answer_bytes_max(&limits, service.config().response_bytes_max);
    pb::streams_server::StreamsServer::new(service)
        .max_decoding_message_size(crate::limits::request_bytes_max(&limits))
        .max_encoding_message_size(answers)
}

/// Accepted connections with TCP_NODELAY: small responses must not wait for delayed ACKs
/// (Nagle), ~40 ms stalls otherwise.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
            }
        })
    })
}

fn engine_error(dir: &std::path::Path, source: strata_engine::Error) -> NodeError {
    NodeError::Engine {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Opens storage in `dir` on the blocking pool (recovery reads and syncs files).
async fn open_blocking<T: Send + 'static>(
    dir: &std::path::Path,
    open: impl FnOnce() -> strata_engine::Result<T> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| {
            engine_error(
                dir,
                strata_engine::Error::Io {
                    context: "opening the store".into(),
                    source: std::io::Error::other(e.to_string()),
                },
            )
        })?
        .map_err(|e| engine_error(dir, e))
}

/// Opens the engines of a node without replication: the shards its directory holds, over one
/// sync round and one index cache.
async fn open_engines(config: &NodeConfig) -> Result<LocalShards, NodeError> {
    let layout = read_layout(config).await?;
    let round = RoundFs::new(Arc::new(StdFs));
    let cache = IndexCache::new(INDEX_CACHE_BYTES_DEFAULT)
        .map_err(|e| engine_error(&config.data_dir, e))?;
    let mut backends = Vec::with_capacity(layout.dirs.len());
    let several = layout.dirs.len() > 1;
    for (id, dir) in layout.dirs {
        let (mut engine_config, fs, cache) = (config.engine.clone(), round.clone(), cache.clone());
        // A lone append would wait for the other shards' rounds on a runtime thread.
        engine_config.lone_appends &= !several;
        let at = dir.clone();
        let engine = open_blocking(&at, move || {
            Engine::open_dir_with(&dir, engine_config, Arc::new(fs), &cache)
        })
        .await?;
        backends.push((id, Backend::Single(Arc::new(engine))));
    }
    Ok(LocalShards {
        backends,
        map: MapCell::new(layout.map),
        round: Some(round),
        meta: None,
    })
}

/// The layout of `config.data_dir` (see [`crate::shards`]), read or made on the blocking pool.
async fn read_layout(config: &NodeConfig) -> Result<crate::shards::Layout, NodeError> {
    let (dir, shards) = (config.data_dir.clone(), config.shards);
    tokio::task::spawn_blocking(move || crate::shards::layout(&dir, shards))
        .await
        .map_err(|e| NodeError::Shards(format!("reading the data directory: {e}")))?
        .map_err(NodeError::Shards)
}

/// The Raft listener (when Raft has its own port) and this node as peers reach it.
async fn raft_endpoint(
    cluster: &ClusterConfig,
    local: SocketAddr,
) -> Result<(Option<TcpListener>, StrataNode), NodeError> {
    let raft_listener = match cluster.raft_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let raft_local = match &raft_listener {
        Some(l) => l.local_addr().map_err(|source| NodeError::Bind {
            addr: local,
            source,
        })?,
        None => local,
    };
    let me = StrataNode {
        addr: cluster
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local.to_string()),
        raft_addr: cluster
            .advertise_raft_addr
            .clone()
            .unwrap_or_else(|| raft_local.to_string()),
    };
    Ok((raft_listener, me))
}

/// Opens this node's replica of every shard its directory holds: one Raft group per shard,
/// all over one transport (messages carry the shard id), one sync round and one index cache.
async fn open_replicas(
    config: &NodeConfig,
    cluster: &ClusterConfig,
    local: SocketAddr,
) -> Result<(LocalShards, Option<TcpListener>, RaftService<GrpcTransport>), NodeError> {
    let (raft_listener, me) = raft_endpoint(cluster, local).await?;
    let layout = read_layout(config).await?;
    let mut members = cluster.peers.clone();
    members.insert(cluster.node_id, me.clone());
    let round = RoundFs::new(Arc::new(StdFs));
    let cache = IndexCache::new(INDEX_CACHE_BYTES_DEFAULT)
        .map_err(|e| engine_error(&config.data_dir, e))?;
    let transport = Arc::new(GrpcTransport::default());
    let mut backends = Vec::with_capacity(layout.dirs.len());
    let mut served = HashMap::with_capacity(layout.dirs.len() + 1);
    // A cluster of several shards has a metadata group too (see `crate::meta`).
    let meta_dir = (layout.dirs.len() > 1).then(|| config.data_dir.join(META_DIR));
    let groups = layout
        .dirs
        .into_iter()
        .map(|(id, dir)| (id.0, dir))
        .chain(meta_dir.map(|dir| (META_GROUP, dir)));
    let mut meta = None;
    for (id, dir) in groups {
        let cache = cache.clone();
        let options = ShardOptions {
            node_id: cluster.node_id,
            dir: dir.clone(),
            engine: config.engine.clone(),
            fs: Arc::new(round.clone()),
            clock: Arc::new(MonotonicClock::default()),
            open_index: Arc::new(move |p| Ok(Box::new(RocksIndexStore::open_shared(p, &cache)?))),
            log_sync: Default::default(),
        };
        let shard = open_blocking(&dir, move || Shard::open(options)).await?;
        let replica = Replica::start(
            u64::from(id),
            shard,
            me.clone(),
            members.clone(),
            cluster.raft.clone(),
            transport.clone(),
        )
        .await
        .map_err(|e| engine_error(&dir, strata_engine::Error::Unavailable(e.to_string())))?;
        served.insert(u64::from(id), replica.served());
        if id == META_GROUP {
            meta = Some(Meta::new(replica));
        } else {
            backends.push((ShardId(id), Backend::Replicated(Box::new(replica))));
        }
    }
    let shards = LocalShards {
        backends,
        map: MapCell::new(layout.map),
        round: Some(round),
        meta,
    };
    let service = RaftService::new(served, transport);
    Ok((shards, raft_listener, service))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
