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

use strata_engine::fs::StdFs;
use strata_engine::index_store::{IndexCache, INDEX_CACHE_BYTES_DEFAULT};
use strata_engine::sync_round::RoundFs;
use strata_engine::EngineConfig;
use strata_proto::internal::raft_internal_server::RaftInternalServer;
use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use strata_raft::network::MESSAGE_BYTES_MAX;
use strata_raft::{GrpcTransport, RaftService, RaftSettings, StrataNode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::backend::Backend;
use crate::clock::SystemWallClock;
use crate::cluster::ClusterService;
use crate::forward::Peers;
use crate::host::{Host, HostParts, RaftHost};
use crate::ids::RandomIds;
use crate::map_cell::MapCell;
use crate::meta::{Meta, META_DIR, META_GROUP};
use crate::mover::{Mover, Switch, SwitchError};
use crate::replica_move::{GrpcGroups, ReplicaMover};
use crate::router::{Directory, Router};
use crate::service::{ServiceConfig, ServiceStats};
use crate::shards::LocalShards;
use crate::throttle::{CatchUpThrottle, Throttle};

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
    /// How often the metadata group's leader looks for a replica move to balance the
    /// replicas per node (see [`ClusterService::balance_replicas`]); `None`: never by itself
    /// (`strata cluster rebalance` does it).
    pub replica_balance_interval: Option<std::time::Duration>,
}

/// [`ClusterConfig::leader_balance_interval`] unless told otherwise, in milliseconds.
pub const LEADER_BALANCE_INTERVAL_DEFAULT_MS: u64 = 30_000;
/// [`ClusterConfig::replica_balance_interval`] unless told otherwise, in milliseconds (0: off).
pub const REPLICA_BALANCE_INTERVAL_DEFAULT_MS: u64 = 0;

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
    host: Host,
    listener: TcpListener,
    raft_listener: Option<TcpListener>,
    raft_service: Option<RaftService<GrpcTransport>>,
    router: Router,
    cluster: ClusterService,
    stats: Arc<ServiceStats>,
    /// The node's move throttle (slot copies, new replicas' catch-up).
    throttle: Throttle,
    stop: watch::Sender<bool>,
    metrics: Option<TcpListener>,
    data_dir: PathBuf,
    leader_balance_interval: Option<std::time::Duration>,
    replica_balance_interval: Option<std::time::Duration>,
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
        let stats = Arc::new(ServiceStats::default());
        // One budget for the node's moves: slot copies and new replicas' catch-up.
        let throttle = Throttle::new(config.service.moves.clone(), stats.clone());
        let (stop, stopped) = watch::channel(false);
        let round = RoundFs::new(node_fs());
        let cache = IndexCache::new(INDEX_CACHE_BYTES_DEFAULT)
            .map_err(|e| engine_error(&config.data_dir, e))?;
        let mut parts = HostParts {
            data_dir: config.data_dir.clone(),
            engine: config.engine.clone(),
            service: config.service.clone(),
            round,
            cache,
            stats: stats.clone(),
            stop: stopped,
            raft: None,
        };
        let (raft_listener, raft_service) = match &config.cluster {
            None => (None, None),
            Some(cluster) => {
                let pacer = Arc::new(CatchUpThrottle::new(throttle.clone()));
                let (listener, raft) = raft_host(cluster, local, pacer).await?;
                let service = raft.service.clone();
                parts.raft = Some(raft);
                (listener, Some(service))
            }
        };
        let host = Host::new(parts).map_err(NodeError::Shards)?;
        let shards = open_shards(&config, &host).await?;
        let peers = config.cluster.as_ref().map(|_| {
            let limits = &config.engine.limits;
            Peers::new(
                crate::limits::request_bytes_max(limits),
                crate::limits::encoded_answer_bytes_max(limits, config.service.response_bytes_max),
            )
        });
        let settings = (
            config.service.clone(),
            config.engine.limits.clone(),
            stats.clone(),
        );
        let mut router = Router::serving(
            shards.map.clone(),
            shards.set.clone(),
            peers.clone(),
            settings,
        )
        .map_err(NodeError::Shards)?
        .with_stop(stop.subscribe());
        if let Some(meta) = &shards.meta {
            router = router.with_directory(directory(meta));
        }
        let mut cluster = ClusterService::new(
            shards.clone(),
            local.to_string(),
            peers.clone(),
            stats.clone(),
        );
        if shards.map.get().shards().len() > 1 {
            cluster = cluster.with_mover(mover(&config, &shards, &host, throttle.clone()));
        }
        if let (Some(meta), Some(peers)) = (&shards.meta, &peers) {
            let mut replicas = ReplicaMover::new(
                meta.clone(),
                shards.map.clone(),
                Arc::new(GrpcGroups(peers.clone())),
                local.to_string(),
                Arc::new(SystemWallClock::default()),
            );
            if let Some(slots) = cluster.mover() {
                replicas = replicas.with_slot_mover(slots.clone());
            }
            cluster = cluster.with_replica_mover(replicas);
        }
        Ok(Node {
            shards,
            host,
            listener,
            raft_listener,
            raft_service,
            router,
            cluster,
            stats,
            throttle,
            stop,
            metrics,
            leader_balance_interval: config
                .cluster
                .as_ref()
                .and_then(|c| c.leader_balance_interval),
            replica_balance_interval: config
                .cluster
                .as_ref()
                .and_then(|c| c.replica_balance_interval),
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
    pub fn backends(&self) -> Vec<(ShardId, Backend)> {
        self.shards.backends()
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
        self.host.start().await;
        if let (Some(_), Some(interval)) = (&self.shards.meta, self.leader_balance_interval) {
            tokio::spawn(
                self.cluster
                    .clone()
                    .balance_leaders(interval, self.stop.subscribe()),
            );
        }
        if let (Some(_), Some(interval)) = (&self.shards.meta, self.replica_balance_interval) {
            tokio::spawn(
                self.cluster
                    .clone()
                    .balance_replicas(interval, self.stop.subscribe()),
            );
        }
        if let Some(meta) = &self.shards.meta {
            let follower = crate::meta::Follower {
                meta: meta.clone(),
                cell: self.shards.map.clone(),
                dir: self.data_dir.clone(),
                groups: Arc::new(self.host.clone()),
                fs: Arc::new(StdFs),
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
                (self.cluster.mover().cloned(), self.throttle.clone()),
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
        let backends = self.shards.backends();
        let closing = backends.iter().map(|(_, b)| b.close());
        futures_util::future::join_all(closing).await;
        if let Some(meta) = &self.shards.meta {
            meta.replica().shutdown().await;
        }
        result.map_err(NodeError::from)
    }
}

/// How often a replicated cluster's metadata leader looks for moves that did not finish.
const MOVE_RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The slot-range mover of a node of several shards. Without replication the next map is
/// written to the data directory (synced, renamed), then routed by; replicated, it is recorded
/// in the metadata group (compare-and-set), which every node follows, and the switch waits
/// until this node routes by it. A map that adds a shard is installed the same way, the shard
/// opened first here (single node) or by each node's follower (replicated), whose group this
/// node then forms.
fn mover(config: &NodeConfig, shards: &LocalShards, host: &Host, throttle: Throttle) -> Mover {
    let install = Installer {
        dir: config.data_dir.clone(),
        cell: shards.map.clone(),
        meta: shards.meta.clone(),
    };
    let switch: Switch = {
        let install = install.clone();
        Arc::new(move |map| {
            let install = install.clone();
            Box::pin(async move { install.install(map).await })
        })
    };
    let host = host.clone();
    let add_shard: crate::mover::AddShard = Arc::new(move |map, id| {
        let (install, host) = (install.clone(), host.clone());
        Box::pin(async move {
            if let Some(meta) = &install.meta {
                let now = crate::clock::WallClock::now_us(&SystemWallClock::default());
                return crate::meta::add_shard(meta, &install.cell, host.set(), (map, id), now)
                    .await;
            }
            host.add(id, (None, 0))
                .await
                .map_err(|(dir, e)| format!("opening {}: {e}", dir.display()))?;
            install.install(map).await.map_err(|e| e.to_string())
        })
    });
    Mover::new(
        shards.set.clone(),
        shards.map.clone(),
        (switch, add_shard),
        Arc::new(SystemWallClock::default()),
        Arc::new(RandomIds),
        throttle,
    )
}

/// Installs a node's next map: see [`mover`].
#[derive(Clone)]
struct Installer {
    dir: PathBuf,
    cell: MapCell,
    meta: Option<Meta>,
}

impl Installer {
    async fn install(&self, map: ClusterMap) -> Result<(), SwitchError> {
        let Some(meta) = &self.meta else {
            let (dir, written) = (self.dir.clone(), map.clone());
            let wrote =
                tokio::task::spawn_blocking(move || crate::shards::write_map(&dir, &written))
                    .await
                    .map_err(|e| format!("the map's writer failed: {e}"))
                    .and_then(|w| w);
            wrote.map_err(SwitchError::Refused)?;
            self.cell.advance(map);
            return Ok(());
        };
        let now = crate::clock::WallClock::now_us(&SystemWallClock::default());
        crate::meta::install(meta, &self.cell, map, now).await
    }
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

/// Where the cluster's nodes are, by the metadata group's membership (see [`Directory`]).
fn directory(meta: &Meta) -> Directory {
    let replica = meta.replica().clone();
    Directory {
        me: replica.node_id(),
        addr_of: Arc::new(move |id| {
            let members = replica.status().members;
            members
                .into_iter()
                .find(|m| m.id == id)
                .map(|m| m.node.addr)
        }),
    }
}

/// Opens the shards `config.data_dir` holds (see [`crate::shards`]) into `host` — those its
/// map places on this node; the directories of others (their replicas moved away while the
/// node was down) are deleted — and on a replicated node of several shards its replica of the
/// metadata group (see `crate::meta`).
/// The file system the node's logs live on: the real one, or in a test build asked for it
/// (`STRATA_TEST_DISK=lose-unsynced`), one that loses unsynced writes when the process dies.
fn node_fs() -> Arc<dyn strata_engine::fs::FileSystem> {
    if strata_engine::planted::lose_unsynced_writes() {
        tracing::warn!("this node's disk loses unsynced writes on a kill (test build)");
        Arc::new(strata_engine::lossy_fs::LoseUnsyncedFs::new(Arc::new(
            StdFs,
        )))
    } else {
        Arc::new(StdFs)
    }
}

async fn open_shards(config: &NodeConfig, host: &Host) -> Result<LocalShards, NodeError> {
    let layout = read_layout(config).await?;
    let several = layout.dirs.len() > 1;
    let me = host.raft().map(|r| r.node_id);
    for (id, dir) in &layout.dirs {
        if me.is_some_and(|me| !layout.map.holds(me, *id)) {
            remove_moved(*id, dir).await?;
            continue;
        }
        remove_leftover(dir).await?;
        let members = crate::meta::founding_members(&layout.map, *id);
        let incarnation = me.map_or(0, |me| layout.map.incarnation(*id, me));
        host.open(*id, dir, several, (members, incarnation))
            .await
            .map_err(|(dir, e)| engine_error(&dir, e))?;
    }
    let meta = match (host.raft(), several) {
        (Some(_), true) => {
            let dir = config.data_dir.join(META_DIR);
            let replica = host
                .open_meta(META_GROUP, &dir)
                .await
                .map_err(|(dir, e)| engine_error(&dir, e))?;
            if let Some(raft) = host.raft() {
                raft.service
                    .add(u64::from(META_GROUP), replica.served())
                    .map_err(NodeError::Shards)?;
            }
            Some(Meta::new(replica))
        }
        _ => None,
    };
    Ok(LocalShards {
        set: host.set().clone(),
        map: MapCell::new(layout.map),
        round: Some(host.round().clone()),
        meta,
    })
}

/// Deletes what an interrupted removal of an earlier replica in `dir` left (see
/// [`strata_engine::fs::remove_dir_durably`]).
async fn remove_leftover(dir: &std::path::Path) -> Result<(), NodeError> {
    use strata_engine::fs::FileSystem;
    let tomb = strata_engine::fs::removed_name(dir);
    let shown = tomb.display().to_string();
    tokio::task::spawn_blocking(move || strata_engine::fs::StdFs.remove_dir_all(&tomb))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| NodeError::Shards(format!("removing {shown}: {e}")))
}

/// Deletes `dir`, the replica of shard `id` the map places on other nodes.
async fn remove_moved(id: ShardId, dir: &std::path::Path) -> Result<(), NodeError> {
    let gone = dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || {
        strata_engine::fs::remove_dir_durably(&strata_engine::fs::StdFs, &gone)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    removed.map_err(|e| NodeError::Shards(format!("removing {}: {e}", dir.display())))?;
    tracing::info!(shard = id.0, dir = %dir.display(), "this node's replica of the shard moved away while it was down; removed");
    Ok(())
}

/// The layout of `config.data_dir` (see [`crate::shards`]), read or made on the blocking pool.
async fn read_layout(config: &NodeConfig) -> Result<crate::shards::Layout, NodeError> {
    let (dir, shards) = (config.data_dir.clone(), config.shards);
    tokio::task::spawn_blocking(move || crate::shards::layout(&dir, shards))
        .await
        .map_err(|e| NodeError::Shards(format!("reading the data directory: {e}")))?
        .map_err(NodeError::Shards)
}

/// The Raft listener (when Raft has its own port) and what the node's groups are opened
/// with: one transport (messages carry the group's id), its server side, and `pacer` for
/// new replicas' catch-up from this node.
async fn raft_host(
    cluster: &ClusterConfig,
    local: SocketAddr,
    pacer: Arc<dyn strata_raft::CatchUpPacer>,
) -> Result<(Option<TcpListener>, RaftHost), NodeError> {
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
        incarnation: 0,
    };
    let mut members = cluster.peers.clone();
    members.insert(cluster.node_id, me.clone());
    let transport = Arc::new(GrpcTransport::default());
    let service =
        RaftService::new(HashMap::new(), transport.clone()).with_pacer(Some(pacer.clone()));
    let mut settings = cluster.raft.clone();
    settings.catch_up = Some(pacer);
    let raft = RaftHost {
        node_id: cluster.node_id,
        me,
        members,
        settings,
        transport,
        service,
    };
    Ok((raft_listener, raft))
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
