//! The simulated cluster: nodes of the real engine and Raft code on one thread, each with its
//! own disk ([`SimFs`] and an in-memory index store with RocksDB's crash behaviour), its own
//! clock (timer drift through [`strata_raft::runtime`], wall-clock skew for event
//! timestamps), and a network ([`SimNet`]) that delays, drops, duplicates and reorders messages
//! and cuts links one way or both. Every choice comes from the run's one seeded generator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use strata_engine::clock::Clock;
use strata_engine::fs::FileSystem;
use strata_engine::index_store::{IndexBatch, IndexStore, MemIndexStore};
use strata_engine::rng::SplitMix64;
use strata_engine::sim_fs::{CrashMode, SimFs};
use strata_engine::{EngineConfig, Error};
use strata_proto::internal as pb;
use strata_proto::internal::raft_internal_server::RaftInternal;
use strata_raft::network::{Rpc, DEAD_PEER_TIMEOUT};
use strata_raft::runtime::{with_clock_rate, ClockRate};
use strata_raft::types::NodeId;
use strata_raft::StrataNode;
use strata_raft::{
    CatchUpPacer, LogSync, RaftService, RaftSettings, RaftTransport, Replica, Shard, ShardOptions,
};
use strata_shard::backend::Backend;
use strata_shard::ids::SeededIds;
use strata_shard::service::{ServiceConfig, ServiceStats, StreamsService};
use strata_shard::throttle::{CatchUpThrottle, Throttle, ThrottleConfig};
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::trace::Trace;

/// The run's random source, shared by everything in it (one thread: draws happen in a fixed
/// order, so one seed gives one run).
#[derive(Debug, Clone)]
pub struct SimRng(Arc<Mutex<SplitMix64>>);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(Arc::new(Mutex::new(SplitMix64::new(seed))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        lock(&self.0).next_u64()
    }

    /// A number in `0..bound`.
    pub fn below(&self, bound: u64) -> u64 {
        lock(&self.0).below(bound)
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A duration in `lo..=hi` milliseconds.
    pub fn millis(&self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.below(items.len() as u64) as usize].clone())
    }
}

pub(crate) use strata_engine::sync::lock;

/// A node's address on the simulated network.
pub fn addr(id: NodeId) -> String {
    format!("n{id}")
}

/// The node at simulated address `addr`.
pub(crate) fn id_of(addr: &str) -> Option<NodeId> {
    addr.strip_prefix('n')?.parse().ok()
}

/// The simulated time since the run started, for clocks and traces.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(pub tokio::time::Instant);

impl Epoch {
    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The engine's monotonic clock (statistics only), on simulated time.
#[derive(Debug)]
struct SimClock(Epoch);

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// An index store on a node's simulated disk: crash loses what RocksDB would lose; a handle
/// from before a crash fails (its process is gone).
#[derive(Debug)]
struct SimIndex {
    store: MemIndexStore,
    epoch: u64,
    current: Arc<AtomicU64>,
}

impl SimIndex {
    fn live(&self) -> strata_engine::Result<()> {
        if self.current.load(Ordering::SeqCst) != self.epoch {
            return Err(Error::Index(
                "stale index handle: its process crashed".into(),
            ));
        }
        Ok(())
    }
}

impl IndexStore for SimIndex {
    fn get(&self, key: &[u8]) -> strata_engine::Result<Option<Vec<u8>>> {
        self.live()?;
        self.store.get(key)
    }

    fn write(&self, batch: IndexBatch, sync: bool) -> strata_engine::Result<()> {
        self.live()?;
        self.store.write(batch, sync)
    }

    fn flush(&self) -> strata_engine::Result<()> {
        self.live()?;
        self.store.flush()
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> strata_engine::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.live()?;
        self.store.scan(start, end, reverse, limit)
    }
}

/// A node's disk: its files and its index stores (by directory).
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub(crate) fs: SimFs,
    indexes: Arc<Mutex<BTreeMap<PathBuf, MemIndexStore>>>,
    epoch: Arc<AtomicU64>,
}

impl Disk {
    fn new(seed: u64) -> Disk {
        Disk {
            fs: SimFs::new(seed),
            indexes: Arc::default(),
            epoch: Arc::default(),
        }
    }

    /// Opens the index in `dir`; a directory the file system no longer has (a removed data
    /// generation) starts empty, as a deleted RocksDB directory would.
    fn open_index(&self, dir: &Path) -> strata_engine::Result<Box<dyn IndexStore>> {
        let exists = self
            .fs
            .exists(dir)
            .map_err(|e| Error::io("checking an index directory", e))?;
        let mut indexes = lock(&self.indexes);
        if !exists {
            self.fs
                .create_dir_all(dir)
                .map_err(|e| Error::io("creating an index directory", e))?;
            indexes.insert(dir.to_path_buf(), MemIndexStore::new());
        }
        let store = indexes.entry(dir.to_path_buf()).or_default().clone();
        Ok(Box::new(SimIndex {
            store,
            epoch: self.epoch.load(Ordering::SeqCst),
            current: self.epoch.clone(),
        }))
    }

    /// The process is gone: its handles stop working. With `power`, unsynced data is lost too
    /// (`tear`: a random prefix of it survives).
    fn kill(&self, power: Option<CrashMode>) {
        self.fs.fence();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(mode) = power {
            self.fs.crash(mode);
            for store in lock(&self.indexes).values() {
                store.crash();
            }
        }
    }
}

/// Why a node is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Crashed or stopped; it may be restarted.
    Stopped(String),
    /// It reported corruption of its data; it stays down (a real operator would rebuild it).
    Corrupt(String),
}

pub(crate) struct Up {
    /// Shard 0's replica (the only one of a run of one shard).
    pub(crate) replica: Arc<Replica>,
    /// Every group's replica, the metadata group's too (a sharded run).
    pub(crate) groups: Vec<Arc<Replica>>,
    /// A sharded run's node: its router, map and mover.
    pub(crate) sharded: Option<crate::sharded_node::ShardedNode>,
    pub(crate) service: Arc<RaftService<SimNet>>,
    /// The node's client API, in process: what simulated clients call.
    pub(crate) streams: StreamsService,
    /// Tells the node's service to stop (ends its subscriptions), as a shutdown would.
    pub(crate) stop: watch::Sender<bool>,
}

/// A node's simulated wall clock, for the service code that asks for "now".
pub struct NodeClock {
    shared: Weak<Shared>,
    node: NodeId,
}

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeClock(n{})", self.node)
    }
}

impl strata_shard::clock::WallClock for NodeClock {
    fn now_us(&self) -> u64 {
        self.shared
            .upgrade()
            .map_or(0, |s| Cluster(s).wall_clock_us(self.node))
    }
}

struct NodeState {
    disk: Disk,
    /// Timer pace (1.0 exact).
    rate: ClockRate,
    /// Offset of its wall clock, microseconds.
    skew_us: i64,
    up: Option<Up>,
    down: Option<Down>,
    /// Times started.
    incarnations: u64,
    /// Paces new replicas' catch-up from this node (its move throttle; new at each start).
    pacer: Option<Arc<dyn CatchUpPacer>>,
}

/// Network conditions.
#[derive(Debug, Clone, Default)]
pub struct NetConditions {
    /// Links cut, as (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Chance a message (or its answer) is lost.
    pub loss: f64,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
    /// Most one-way delay, milliseconds (at least 1).
    pub delay_max_ms: u64,
}

struct State {
    nodes: BTreeMap<NodeId, NodeState>,
    net: NetConditions,
    /// Disk latency bound per sync, milliseconds.
    disk_latency_max_ms: u64,
}

/// What the whole run shares.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) rng: SimRng,
    pub(crate) trace: Trace,
    pub(crate) epoch: Epoch,
    settings: RaftSettings,
    engine: EngineConfig,
    initial: BTreeMap<NodeId, StrataNode>,
    /// Data shards per node (1: the one-group runs of [`crate::run`]).
    shards: u32,
    /// Opens a node of several shards (see `crate::sharded`).
    open_sharded: Option<OpenNode>,
}

/// Opens node `NodeId` on its disk: its groups and what serves them.
pub(crate) type OpenNode = for<'a> fn(
    &'a Cluster,
    NodeId,
    &'a Disk,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Up, String>> + Send + 'a>,
>;

/// The cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster(pub(crate) Arc<Shared>);

/// The Raft settings of simulated nodes: production timing, snapshots much sooner (so they,
/// purging and installs happen within a short run).
pub fn sim_settings() -> RaftSettings {
    RaftSettings {
        snapshot_every_entries: 64,
        keep_entries: 16,
        append_timeout: Duration::from_secs(3),
        read_timeout: Duration::from_secs(2),
        learner_catch_up_timeout: Duration::from_secs(10),
        ..RaftSettings::default()
    }
}

/// The move throttle of a simulated node: the defaults scaled to the simulator's small logs
/// (kilobytes, not gigabytes), so that pacing holds catch-ups back within a run.
pub fn sim_throttle() -> ThrottleConfig {
    ThrottleConfig {
        rate_start: 64 << 10,
        rate_min: 16 << 10,
        step: 32 << 10,
        ..ThrottleConfig::default()
    }
}

/// The service settings of a simulated node: the defaults, with a subscriber cut off after a
/// stall longer than any fault lasts.
pub fn sim_service() -> ServiceConfig {
    ServiceConfig {
        subscription_stall_timeout: Duration::from_secs(30),
        ..ServiceConfig::default()
    }
}

/// Engine settings of simulated nodes: small segments, so segments seal, roll and are copied
/// by snapshot installs.
pub fn sim_engine() -> EngineConfig {
    let mut config = EngineConfig {
        segment_bytes_max: 32 << 10,
        ..EngineConfig::default()
    };
    config.limits.batch_bytes_max = 8 << 10;
    config.limits.event_bytes_max = 4 << 10;
    config
}

impl Cluster {
    /// `nodes` nodes (ids 1..=nodes) of which the first three form the initial membership.
    pub fn new(seed: u64, nodes: u64, trace: Trace) -> Cluster {
        Cluster::with_shards(seed, nodes, (1, None), trace)
    }

    /// [`Cluster::new`] whose nodes each hold a replica of `shards` shards' groups, opened by
    /// `open` when more than one (see `crate::sharded`).
    pub(crate) fn with_shards(
        seed: u64,
        nodes: u64,
        (shards, open_sharded): (u32, Option<OpenNode>),
        trace: Trace,
    ) -> Cluster {
        let rng = SimRng::new(seed);
        let mut states = BTreeMap::new();
        for id in 1..=nodes {
            states.insert(
                id,
                NodeState {
                    disk: Disk::new(rng.next_u64()),
                    rate: ClockRate::default(),
                    skew_us: 0,
                    up: None,
                    down: Some(Down::Stopped("not started".into())),
                    incarnations: 0,
                    pacer: None,
                },
            );
        }
        let initial = (1..=nodes.min(3))
            .map(|id| {
                (
                    id,
                    StrataNode {
                        addr: addr(id),
                        raft_addr: addr(id),
                        incarnation: 0,
                    },
                )
            })
            .collect();
        Cluster(Arc::new(Shared {
            state: Mutex::new(State {
                nodes: states,
                net: NetConditions {
                    delay_max_ms: 5,
                    ..NetConditions::default()
                },
                disk_latency_max_ms: 2,
            }),
            rng,
            trace,
            epoch: Epoch(tokio::time::Instant::now()),
            settings: sim_settings(),
            engine: sim_engine(),
            initial,
            shards,
            open_sharded,
        }))
    }

    /// Data shards per node.
    pub fn shards(&self) -> u32 {
        self.0.shards
    }

    /// Adds a group opened while node `id` runs (a split) to what its shutdown stops and what
    /// its snapshot fetches read. Refused if the node is down (or restarted: another `up`).
    pub(crate) fn push_group(&self, id: NodeId, replica: Arc<Replica>, up: &Arc<Replica>) -> bool {
        let mut state = self.state();
        let Some(running) = state.nodes.get_mut(&id).and_then(|n| n.up.as_mut()) else {
            return false;
        };
        if !Arc::ptr_eq(&running.replica, up) {
            return false;
        }
        running.groups.push(replica);
        true
    }

    /// Drops group `group`'s replica from what node `id`'s shutdown stops (a replica move
    /// took it away and the node closed it), if the node still runs as `up`.
    pub(crate) fn drop_group(&self, id: NodeId, group: u64, up: &Arc<Replica>) {
        let mut state = self.state();
        let Some(running) = state.nodes.get_mut(&id).and_then(|n| n.up.as_mut()) else {
            return;
        };
        if Arc::ptr_eq(&running.replica, up) {
            running.groups.retain(|r| r.shard_id() != group);
        }
    }

    /// A running node of a sharded run.
    pub fn sharded(&self, id: NodeId) -> Option<crate::sharded_node::ShardedNode> {
        self.state()
            .nodes
            .get(&id)
            .and_then(|n| n.up.as_ref().and_then(|u| u.sharded.clone()))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0.state)
    }

    /// The run's random source.
    pub fn rng(&self) -> &SimRng {
        &self.0.rng
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.0.trace
    }

    /// All node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.state().nodes.keys().copied().collect()
    }

    /// The nodes of the initial membership.
    pub fn initial_members(&self) -> Vec<NodeId> {
        self.0.initial.keys().copied().collect()
    }

    /// Running nodes.
    pub fn up_ids(&self) -> Vec<NodeId> {
        self.state()
            .nodes
            .iter()
            .filter(|(_, n)| n.up.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A running node's replica.
    pub fn replica(&self, id: NodeId) -> Option<Arc<Replica>> {
        self.state()
            .nodes
            .get(&id)
            .and_then(|n| n.up.as_ref().map(|u| u.replica.clone()))
    }

    /// A running node's replica with the number of times the node was started (the replica
    /// of one incarnation).
    pub fn replica_incarnation(&self, id: NodeId) -> Option<(Arc<Replica>, u64)> {
        self.state()
            .nodes
            .get(&id)
            .and_then(|n| n.up.as_ref().map(|u| (u.replica.clone(), n.incarnations)))
    }

    /// A running node's client API (the `strata.v1.Streams` service, in process) and the
    /// replica under it.
    pub fn streams(&self, id: NodeId) -> Option<(StreamsService, Arc<Replica>)> {
        self.state().nodes.get(&id).and_then(|n| {
            n.up.as_ref()
                .map(|u| (u.streams.clone(), u.replica.clone()))
        })
    }

    /// A node's wall clock as the service's seam.
    pub fn node_clock(&self, id: NodeId) -> Arc<NodeClock> {
        Arc::new(NodeClock {
            shared: Arc::downgrade(&self.0),
            node: id,
        })
    }

    /// Why a node is down, if it is.
    pub fn down(&self, id: NodeId) -> Option<Down> {
        self.state().nodes.get(&id).and_then(|n| n.down.clone())
    }

    /// A node's wall clock, microseconds (simulated time plus its skew, never below zero):
    /// what its appends are stamped with.
    pub fn wall_clock_us(&self, id: NodeId) -> u64 {
        let skew = self.state().nodes.get(&id).map_or(0, |n| n.skew_us);
        let base: i64 = 1_700_000_000_000_000 + self.0.epoch.elapsed().as_micros() as i64;
        (base + skew).max(0) as u64
    }

    /// Sets a node's timer pace (1.0 exact) and wall-clock skew.
    pub fn set_clock(&self, id: NodeId, rate: f64, skew_us: i64) {
        if let Some(n) = self.state().nodes.get_mut(&id) {
            n.rate.set(rate);
            n.skew_us = skew_us;
        }
    }

    /// Changes the network.
    pub fn set_net(&self, change: impl FnOnce(&mut NetConditions)) {
        change(&mut self.state().net);
    }

    /// Sets the bound of simulated sync latency.
    pub fn set_disk_latency(&self, max_ms: u64) {
        self.state().disk_latency_max_ms = max_ms;
    }

    /// A node's simulated file system (for disk faults).
    pub fn fs(&self, id: NodeId) -> Option<SimFs> {
        self.state().nodes.get(&id).map(|n| n.disk.fs.clone())
    }

    /// Starts (or restarts) a node that is stopped; a node found corrupt stays down.
    pub async fn start(&self, id: NodeId) -> Result<(), String> {
        let (disk, rate) = {
            let mut state = self.state();
            let Some(n) = state.nodes.get_mut(&id) else {
                return Err(format!("no node {id}"));
            };
            match &n.down {
                None => return Ok(()),
                Some(Down::Corrupt(why)) => return Err(format!("node {id} is corrupt: {why}")),
                Some(Down::Stopped(_)) => {}
            }
            n.incarnations += 1;
            (n.disk.clone(), n.rate.clone())
        };
        // Everything the node logs while opening (and every task spawned from there that keeps
        // the current span) carries its id.
        let span = tracing::info_span!("node", id);
        let opening = tracing::Instrument::instrument(self.open_node(id, &disk), span);
        let started = with_clock_rate(rate.clone(), opening).await;
        let mut state = self.state();
        let Some(n) = state.nodes.get_mut(&id) else {
            return Err(format!("no node {id}"));
        };
        match started {
            Ok(up) => {
                n.up = Some(up);
                n.down = None;
                drop(state);
                self.trace().log(format!("node {id} started"));
                Ok(())
            }
            Err(e) => {
                disk.kill(None);
                let down = if is_corruption(&e) {
                    Down::Corrupt(e.clone())
                } else {
                    Down::Stopped(e.clone())
                };
                n.down = Some(down);
                drop(state);
                self.trace().log(format!("node {id} failed to start: {e}"));
                Err(e)
            }
        }
    }

    /// Opens group `group` of node `id` in `dir` on `disk` and starts its replica, the
    /// group's first members the run's initial ones.
    pub(crate) async fn open_group(
        &self,
        id: NodeId,
        disk: &Disk,
        group: u64,
        dir: PathBuf,
    ) -> Result<Replica, String> {
        let members = self.0.initial.clone();
        self.open_group_with(id, disk, (group, dir, 0), members)
            .await
    }

    /// [`Cluster::open_group`] with the group's first members given (a shard placed on some
    /// of the nodes; a replica that is not among them waits to be added).
    pub(crate) async fn open_group_with(
        &self,
        id: NodeId,
        disk: &Disk,
        (group, dir, incarnation): (u64, PathBuf, u64),
        members: BTreeMap<NodeId, StrataNode>,
    ) -> Result<Replica, String> {
        let latency_rng = self.0.rng.clone();
        let latency_of = Arc::downgrade(&self.0);
        let opener_disk = disk.clone();
        let options = ShardOptions {
            node_id: id,
            dir,
            engine: self.0.engine.clone(),
            fs: Arc::new(disk.fs.clone()),
            clock: Arc::new(SimClock(self.0.epoch)),
            open_index: Arc::new(move |p| opener_disk.open_index(p)),
            log_sync: LogSync::Task(Arc::new(move || {
                let max = latency_of
                    .upgrade()
                    .map_or(1, |s| lock(&s.state).disk_latency_max_ms);
                latency_rng.millis(0, max)
            })),
            incarnation,
        };
        let me = StrataNode {
            addr: addr(id),
            raft_addr: addr(id),
            incarnation: 0,
        };
        let shard = Shard::open(options).map_err(|e| e.to_string())?;
        let mut settings = self.0.settings.clone();
        settings.catch_up = self.pacer(id);
        Replica::start(group, shard, me, members, settings, self.transport(id))
            .await
            .map_err(|e| e.to_string())
    }

    /// Node `id`'s end of the simulated network.
    /// Node `id`'s pacer of new replicas' catch-up from now on: a move throttle reading
    /// `latency` (the node's append latency), at the simulator's rates.
    pub(crate) fn pace_with(
        &self,
        id: NodeId,
        latency: Arc<ServiceStats>,
    ) -> Arc<dyn CatchUpPacer> {
        let throttle = Throttle::new(sim_throttle(), latency);
        let pacer: Arc<dyn CatchUpPacer> = Arc::new(CatchUpThrottle::new(throttle));
        if let Some(n) = self.state().nodes.get_mut(&id) {
            n.pacer = Some(pacer.clone());
        }
        pacer
    }

    fn pacer(&self, id: NodeId) -> Option<Arc<dyn CatchUpPacer>> {
        self.state().nodes.get(&id).and_then(|n| n.pacer.clone())
    }

    pub(crate) fn transport(&self, id: NodeId) -> Arc<SimNet> {
        Arc::new(SimNet {
            from: id,
            shared: Arc::downgrade(&self.0),
        })
    }

    /// A service over `backend` as node `id` runs it.
    pub(crate) fn streams_service(
        &self,
        id: NodeId,
        backend: Backend,
        stopped: watch::Receiver<bool>,
        stats: Arc<ServiceStats>,
    ) -> StreamsService {
        StreamsService::new(
            backend,
            self.node_clock(id),
            Arc::new(SeededIds::new(self.0.rng.next_u64())),
            sim_service(),
            stats,
            stopped,
        )
    }

    /// Opens node `id`'s groups: one, or every shard's and the metadata group's.
    async fn open_node(&self, id: NodeId, disk: &Disk) -> Result<Up, String> {
        if let (true, Some(open)) = (self.0.shards > 1, self.0.open_sharded) {
            return open(self, id, disk).await;
        }
        let stats = Arc::new(ServiceStats::default());
        let pacer = self.pace_with(id, stats.clone());
        let replica = self
            .open_group(id, disk, 0, PathBuf::from(format!("/n{id}")))
            .await?;
        let service = Arc::new(
            RaftService::new(HashMap::from([(0, replica.served())]), self.transport(id))
                .with_pacer(Some(pacer)),
        );
        let (stop, stopped) = watch::channel(false);
        let backend = Backend::Replicated(Box::new(replica.clone()));
        let streams = self.streams_service(id, backend, stopped, stats);
        let replica = Arc::new(replica);
        Ok(Up {
            groups: vec![replica.clone()],
            replica,
            sharded: None,
            service,
            streams,
            stop,
        })
    }

    /// Stops a node at once. `power`: the machine lost power too (unsynced writes are lost,
    /// or torn); otherwise only the process died (the OS keeps what it wrote).
    pub fn kill(&self, id: NodeId, power: Option<CrashMode>, why: &str) {
        let up = {
            let mut state = self.state();
            let Some(n) = state.nodes.get_mut(&id) else {
                return;
            };
            let Some(up) = n.up.take() else { return };
            up.stop.send_replace(true);
            n.disk.kill(power);
            if n.down.is_none() {
                n.down = Some(Down::Stopped(why.to_string()));
            }
            up
        };
        self.trace().log(format!("node {id} down: {why}"));
        tokio::spawn(async move {
            for replica in &up.groups {
                replica.shutdown().await;
            }
        });
    }

    /// Lets a node that stopped for corruption be started again, its data as it is (what an
    /// operator tries first when the cluster has no leader without it). Returns whether it
    /// was down for corruption.
    pub fn forgive_corruption(&self, id: NodeId) -> bool {
        let mut state = self.state();
        let Some(n) = state.nodes.get_mut(&id) else {
            return false;
        };
        let Some(Down::Corrupt(why)) = &n.down else {
            return false;
        };
        n.down = Some(Down::Stopped(format!("restarted after corruption: {why}")));
        true
    }

    /// Marks a node corrupt (it reported corruption) and stops it.
    pub fn mark_corrupt(&self, id: NodeId, why: String) {
        if let Some(n) = self.state().nodes.get_mut(&id) {
            n.down = Some(Down::Corrupt(why.clone()));
        }
        self.kill(id, None, &format!("reported corruption: {why}"));
    }

    /// Stops every node (end of run: breaks the reference cycles through the network).
    pub async fn shutdown(&self) {
        let ups: Vec<Up> = {
            let mut state = self.state();
            state
                .nodes
                .values_mut()
                .filter_map(|n| n.up.take())
                .collect()
        };
        for up in ups {
            for replica in &up.groups {
                replica.shutdown().await;
            }
        }
    }

    /// How a message from `from` to `to` fares: its delay, and whether the link is cut, the
    /// connection resets, or the message arrives twice.
    fn route(&self, from: NodeId, to: NodeId) -> Route {
        let state = self.state();
        let net = &state.net;
        Route {
            delay: self.0.rng.millis(1, net.delay_max_ms.max(1)),
            cut: net.cut.contains(&(from, to)),
            reset: self.0.rng.chance(net.loss),
            duplicated: self.0.rng.chance(net.duplicate),
        }
    }

    fn service(&self, to: NodeId) -> Option<Arc<RaftService<SimNet>>> {
        self.state()
            .nodes
            .get(&to)
            .and_then(|n| n.up.as_ref().map(|u| u.service.clone()))
    }
}

struct Route {
    delay: Duration,
    cut: bool,
    reset: bool,
    duplicated: bool,
}

/// Whether an error message reports corrupt data (as opposed to an I/O failure).
pub fn is_corruption(message: &str) -> bool {
    message.to_ascii_lowercase().contains("corrupt")
}

/// The simulated network as one node's Raft transport.
pub struct SimNet {
    from: NodeId,
    shared: Weak<Shared>,
}

fn unreachable(why: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("simulated network: {why}"))
}

impl SimNet {
    fn cluster(&self) -> Result<Cluster, Status> {
        self.shared
            .upgrade()
            .map(Cluster)
            .ok_or_else(|| unreachable("the simulation ended"))
    }

    /// Carries one request to `to` and its answer back, with the network's faults. As on
    /// the real transport (gRPC over TCP with keep-alives): a lost message is a reset
    /// connection, an error soon after sending; a cut link or a dead peer is silence, an
    /// error after [`DEAD_PEER_TIMEOUT`] (or the call's own deadline if shorter).
    async fn carry<R, F, Fut>(
        &self,
        to: NodeId,
        deadline: Duration,
        deliver: F,
    ) -> Result<R, Status>
    where
        F: Fn(Cluster) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let cluster = self.cluster()?;
        let silence = deadline.min(DEAD_PEER_TIMEOUT);
        let trip = async {
            let out = cluster.route(self.from, to);
            tokio::time::sleep(out.delay).await;
            if out.cut {
                tokio::time::sleep(silence).await;
                return Err(unreachable(format!(
                    "no answer from n{to} within {silence:?}"
                )));
            }
            if out.reset {
                return Err(unreachable(format!("connection to n{to} reset")));
            }
            if out.duplicated {
                // The copy's answer is lost; the copy still acts on the receiver.
                let _ = deliver(cluster.clone()).await;
            }
            let answer = deliver(cluster.clone()).await;
            let back = cluster.route(to, self.from);
            tokio::time::sleep(back.delay).await;
            if back.cut {
                tokio::time::sleep(silence).await;
                return Err(unreachable(format!(
                    "no answer from n{to} within {silence:?}"
                )));
            }
            if back.reset {
                return Err(unreachable(format!("connection to n{to} reset")));
            }
            answer
        };
        match tokio::time::timeout(deadline, trip).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no answer from n{to} within {deadline:?}"
            ))),
        }
    }
}

impl RaftTransport for SimNet {
    async fn call(
        &self,
        addr: &str,
        rpc: Rpc,
        message: pb::RaftMessage,
        deadline: Duration,
    ) -> Result<pb::RaftMessage, Status> {
        let to = id_of(addr).ok_or_else(|| unreachable(format!("no node at {addr}")))?;
        self.carry(to, deadline, |cluster| {
            let message = message.clone();
            async move {
                let service = cluster
                    .service(to)
                    .ok_or_else(|| unreachable(format!("n{to} is down")))?;
                let request = Request::new(message);
                let answer = match rpc {
                    Rpc::AppendEntries => service.append_entries(request).await,
                    Rpc::Vote => service.vote(request).await,
                    Rpc::InstallSnapshot => service.install_snapshot(request).await,
                    Rpc::TimeoutNow => service.timeout_now(request).await,
                    Rpc::Propose => service.propose(request).await,
                }?;
                Ok(answer.into_inner())
            }
        })
        .await
    }

    async fn fetch_log(
        &self,
        addr: &str,
        request: pb::FetchLogRequest,
        deadline: Duration,
    ) -> Result<Vec<u8>, Status> {
        let to = id_of(addr).ok_or_else(|| unreachable(format!("no node at {addr}")))?;
        self.carry(to, deadline, |cluster| async move {
            let service = cluster
                .service(to)
                .ok_or_else(|| unreachable(format!("n{to} is down")))?;
            service.fetch_here(request).await
        })
        .await
    }
}
