//! Sharded runs (`strata-sim run --shards N`): four nodes, each shard's Raft group on three of
//! them (placed by the map; shard k at first on every node but k mod 4 + 1) and the metadata
//! group on all four, with a node's real router, map follower, slot-range mover and replica
//! mover (`strata_shard::{router, meta, mover, replica_move}`), over the simulated disks,
//! network and clocks. While the clients of [`crate::workload`] append (with expected
//! versions), read and subscribe through the nodes' routers (a node holding no replica of a
//! stream's shard refuses, and the client tries another: the simulated routers do not pass
//! calls between nodes), and the nemesis of [`crate::run`] delays, loses and duplicates
//! messages, partitions nodes, kills them and skews their clocks, a mover driver on the
//! metadata group's leader keeps moving: slot ranges that hold the clients' streams from one
//! shard to another, splits, and (with `--replica-moves`) replicas from a node to one not
//! holding the shard (never a node's last), finishing or cancelling a replica move a killed
//! leader left recorded; a
//! killed node's move dies with it, and that leader lifts the fences of moves that stopped,
//! as a node's `recover_moves` does (the other nodes lift those on shards they lead once
//! they have stayed for [`FENCE_GRACE`]). A replica move's group calls go straight to the named
//! node's replica ([`crate::replica_ops`]); the Raft messages they cause cross the simulated
//! network.
//!
//! After the liveness phase (faults off, nodes restarted, every group led, stale fences
//! lifted, recorded replica moves finished, every node routing by the metadata group's newest
//! map and holding exactly the shards it places there):
//! - the nodes route by one map, and no fence is left on slots the map gives to its holder;
//! - each stream, read from the shard the map gives it, is the history's log
//!   ([`check::check_log`]: every acknowledged append there once, in place, versions
//!   contiguous, refused appends absent, nothing no client appended) and the history is
//!   linearizable per stream; follower reads and subscribers saw prefixes of it;
//! - the shards' `$all` (copies left out) holds each of those events exactly once;
//! - each shard's replicas hold the same records, and its group is exactly the nodes the map
//!   places it on, all voters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::fence::read_fences;
use strata_engine::Direction;
use strata_proto::routing::{slot_of, ClusterMap, ShardId, SlotRange};
use strata_raft::types::NodeId;
use strata_raft::{RaftService, StrataNode};
use strata_shard::backend::Backend;
use strata_shard::map_cell::{read_map_with, MapCell};
use strata_shard::meta::{follow, Follower, Groups, Meta, META_GROUP};
use strata_shard::mover::{AddShard, Mover, Step, Switch};
use strata_shard::replica_move::ReplicaMover;
use strata_shard::router::Router;
use strata_shard::service::{ServiceStats, StreamsService};
use strata_shard::shard_set::ShardSet;
use strata_shard::throttle::Throttle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::check::{self, Final, Violations};
use crate::cluster::{Cluster, Disk, Up};
use crate::nemesis::{FaultLog, FaultSet, RunConfig, RunReport};
use crate::replica_ops::SimGroupOps;
use crate::trace::Trace;
use crate::workload::{self, Received};

/// Slots of a simulated sharded cluster: few, so a move of a few slots carries streams.
pub const SLOTS: u32 = 64;
/// The streams the clients of a sharded run write (spread over the slots and shards).
pub const STREAMS: [&str; 8] = [
    "acct-a", "acct-b", "acct-c", "acct-d", "acct-e", "acct-f", "acct-g", "acct-h",
];
/// Nodes of a sharded run: each shard has three replicas, so one node holds none of it.
pub const NODES: u64 = 4;
/// Shards a sharded run's splits stop at.
const SPLIT_SHARDS_MAX: usize = 6;
/// Fault classes a sharded run injects (no membership changes: the groups' members are the
/// three nodes; no disk faults: a node with a flipped bit stays down, and three are all).
const SHARDED_FAULTS: FaultSet = FaultSet {
    network: true,
    partitions: true,
    crashes: true,
    disk: false,
    clock: true,
    membership: false,
};

pub use crate::sharded_node::ShardedNode;

/// A node's shards, and opening one a map adds (a split), as a node's assembly does.
struct SimGroups {
    cluster: Cluster,
    id: NodeId,
    disk: Disk,
    set: ShardSet,
    service: Arc<RaftService<crate::cluster::SimNet>>,
    stopped: watch::Receiver<bool>,
    stats: Arc<ServiceStats>,
    /// The node's metadata replica: which incarnation this is.
    first: Arc<strata_raft::Replica>,
    /// The stores of replicas closed here, until nothing holds them (then their directories
    /// may go, as a node deletes them).
    closing: Arc<std::sync::Mutex<BTreeMap<ShardId, strata_raft::ShardGone>>>,
    /// Each held shard's stop (set when the node stops or the shard is closed here), as a
    /// node's assembly gives each shard's service and subscriptions.
    stops: ShardStops,
}

/// Each held shard's stop, by shard.
type ShardStops = Arc<std::sync::Mutex<BTreeMap<ShardId, Arc<watch::Sender<bool>>>>>;

/// A new stop for shard `shard`, set when `node` (the node's stop) is, or when closed.
fn shard_stop(
    stops: &ShardStops,
    shard: ShardId,
    node: &watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    crate::cluster::lock(stops).insert(shard, tx.clone());
    let mut node = node.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = node.wait_for(|s| *s) => { tx.send_replace(true); }
            () = tx.closed() => {}
        }
    });
    rx
}

impl SimGroups {
    /// Waits (at most 30 s of simulated time) until the replica of `shard` closed here is
    /// gone, so its directory can be deleted.
    async fn wait_closed(&self, shard: ShardId) -> Result<(), String> {
        let gone = crate::cluster::lock(&self.closing).get(&shard).cloned();
        if let Some(gone) = gone {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !gone.is_gone() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "n{}: {shard}'s closed replica is still held by {} handles",
                        self.id,
                        gone.holders()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            crate::cluster::lock(&self.closing).remove(&shard);
        }
        Ok(())
    }
}

impl Groups for SimGroups {
    fn held(&self) -> Vec<ShardId> {
        self.set.ids()
    }

    fn incarnation(&self, shard: ShardId) -> Option<u64> {
        match self.set.backend(shard) {
            Some(Backend::Replicated(replica)) => Some(replica.shard().incarnation()),
            _ => None,
        }
    }

    fn close(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.service.remove(u64::from(shard.0));
            self.cluster
                .drop_group(self.id, u64::from(shard.0), &self.first);
            if let Some(stop) = crate::cluster::lock(&self.stops).remove(&shard) {
                stop.send_replace(true);
            }
            if let Some(service) = self.set.remove(shard) {
                if let Backend::Replicated(replica) = service.backend() {
                    replica.shutdown().await;
                    let gone = replica.shard().gone();
                    crate::cluster::lock(&self.closing).insert(shard, gone);
                }
            }
            Ok(())
        })
    }

    fn form(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>
    {
        Box::pin(async move {
            match self.set.backend(shard) {
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
            // A replica the node held before (moved away since) is not taken up again: once
            // nothing holds it, it is deleted.
            if let Err(e) = self.wait_closed(shard).await {
                self.cluster
                    .trace()
                    .log(format!("n{}: opening {shard}: {e}", self.id));
                return Err(e);
            }
            let dir = shard_dir(self.id, shard);
            remove_stale(&self.disk, &dir)?;
            let replica = self
                .cluster
                .open_group_with(
                    self.id,
                    &self.disk,
                    (u64::from(shard.0), dir, incarnation),
                    members,
                )
                .await?;
            let replica = Arc::new(replica);
            if !self
                .cluster
                .push_group(self.id, replica.clone(), &self.first)
            {
                replica.shutdown().await;
                return Err(format!("n{} went down", self.id));
            }
            self.service.add(u64::from(shard.0), replica.served())?;
            let backend = Backend::Replicated(Box::new((*replica).clone()));
            let stop = shard_stop(&self.stops, shard, &self.stopped);
            let service = self
                .cluster
                .streams_service(self.id, backend, stop, self.stats.clone());
            self.set.insert(shard, service)
        })
    }
}

fn open_boxed<'a>(
    cluster: &'a Cluster,
    id: NodeId,
    disk: &'a Disk,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Up, String>> + Send + 'a>> {
    Box::pin(open_node(cluster, id, disk))
}

/// Opens node `id` of a sharded run: the groups of the shards the map places on it in
/// `/nID/shards/K` (a replica moved away is deleted), the metadata group in `/nID/meta`, the
/// map from its cache `/nID/cluster.map` (else the first map), and the router, follower and
/// movers over them.
pub(crate) async fn open_node(cluster: &Cluster, id: NodeId, disk: &Disk) -> Result<Up, String> {
    let home = PathBuf::from(format!("/n{id}"));
    let map = match read_map_with(&disk.fs, &home)? {
        Some(cached) => cached,
        None => first_map(cluster.shards())?,
    };
    let stats = Arc::new(ServiceStats::default());
    let pacer = cluster.pace_with(id, stats.clone());
    let mut groups = Vec::new();
    let mut served = HashMap::new();
    for shard in map.shards() {
        let dir = shard_dir(id, shard);
        if !map.holds(id, shard) {
            remove_stale(disk, &dir)?;
            continue;
        }
        let members = members_of(cluster, &map, shard);
        let incarnation = map.incarnation(shard, id);
        let replica = cluster
            .open_group_with(id, disk, (u64::from(shard.0), dir, incarnation), members)
            .await?;
        served.insert(u64::from(shard.0), replica.served());
        groups.push((shard, Arc::new(replica)));
    }
    let dir = PathBuf::from(format!("/n{id}/meta"));
    let meta_replica = cluster
        .open_group_with(
            id,
            disk,
            (u64::from(META_GROUP), dir, 0),
            every_node(cluster),
        )
        .await?;
    served.insert(u64::from(META_GROUP), meta_replica.served());
    let service = Arc::new(RaftService::new(served, cluster.transport(id)).with_pacer(Some(pacer)));
    let (stop, stopped) = watch::channel(false);
    let stops = ShardStops::default();
    let services: Vec<(ShardId, StreamsService)> = groups
        .iter()
        .map(|(shard, r)| {
            let backend = Backend::Replicated(Box::new((**r).clone()));
            let stop = shard_stop(&stops, *shard, &stopped);
            let service = cluster.streams_service(id, backend, stop, stats.clone());
            (*shard, service)
        })
        .collect();
    // The node's identity (which incarnation runs) and the monitor's group: the metadata
    // replica, which no move takes away.
    let meta_arc = Arc::new(meta_replica.clone());
    let meta_backend = Backend::Replicated(Box::new(meta_replica.clone()));
    let first = cluster.streams_service(id, meta_backend, stopped.clone(), stats.clone());
    let set = ShardSet::new(services)?;
    let map = MapCell::new(map);
    let meta = Meta::new(meta_replica.clone());
    let router = Router::new(map.clone(), set.clone(), None)?;
    let mover = mover(cluster, id, (&set, &map, &meta), stats.clone());
    let replicas = ReplicaMover::new(
        meta.clone(),
        map.clone(),
        Arc::new(SimGroupOps(cluster.clone())),
        crate::cluster::addr(id),
        cluster.node_clock(id),
    )
    .with_slot_mover(mover.clone());
    let mut groups: Vec<Arc<strata_raft::Replica>> = groups.into_iter().map(|(_, r)| r).collect();
    let groups_of = SimGroups {
        cluster: cluster.clone(),
        id,
        disk: disk.clone(),
        set: set.clone(),
        service: service.clone(),
        stopped: stopped.clone(),
        stats,
        first: meta_arc.clone(),
        closing: Arc::default(),
        stops,
    };
    let follower = Follower {
        meta: meta.clone(),
        cell: map.clone(),
        dir: home,
        groups: Arc::new(groups_of),
        fs: Arc::new(disk.fs.clone()),
        clock: cluster.node_clock(id),
    };
    tokio::spawn(tracing::Instrument::in_current_span(follow(
        follower,
        stopped.clone(),
    )));
    groups.push(meta_arc.clone());
    Ok(Up {
        replica: meta_arc,
        groups,
        sharded: Some(ShardedNode {
            router,
            set,
            map,
            meta,
            mover,
            replicas,
            stopped,
        }),
        service,
        streams: first,
        stop,
    })
}

/// Shard `shard`'s directory on node `id`.
fn shard_dir(id: NodeId, shard: ShardId) -> PathBuf {
    PathBuf::from(format!("/n{id}/shards/{}", shard.0))
}

/// Deletes `dir` if it is there: a replica the map no longer places on the node, as a node
/// deletes one at start.
fn remove_stale(disk: &Disk, dir: &std::path::Path) -> Result<(), String> {
    strata_engine::fs::remove_dir_durably(&disk.fs, dir)
        .map_err(|e| format!("removing {}: {e}", dir.display()))
}

/// The first map of a sharded run: the slots even over the shards, shard k placed on every
/// node but one (node k mod 4 + 1), so replicas have somewhere to move.
fn first_map(shards: u32) -> Result<ClusterMap, String> {
    let mut map = ClusterMap::even(SLOTS, shards).map_err(|e| e.to_string())?;
    for shard in map.shards() {
        let skipped = u64::from(shard.0) % NODES + 1;
        let nodes: Vec<NodeId> = (1..=NODES).filter(|n| *n != skipped).collect();
        map = map.placed_on(shard, &nodes).map_err(|e| e.to_string())?;
    }
    Ok(map)
}

/// The first members of shard `shard`'s group: its founders when the map records them (a
/// split added it), else the nodes the map places it on.
fn members_of(cluster: &Cluster, map: &ClusterMap, shard: ShardId) -> BTreeMap<u64, StrataNode> {
    if let Some(founders) = strata_shard::meta::founding_members(map, shard) {
        return founders;
    }
    match map.replicas(shard) {
        Some(nodes) => nodes.iter().map(|n| (*n, sim_node(*n))).collect(),
        None => every_node(cluster),
    }
}

/// Every node of the run, as a group's members (the metadata group's).
fn every_node(cluster: &Cluster) -> BTreeMap<u64, StrataNode> {
    cluster
        .ids()
        .into_iter()
        .map(|n| (n, sim_node(n)))
        .collect()
}

fn sim_node(id: NodeId) -> StrataNode {
    StrataNode {
        addr: crate::cluster::addr(id),
        raft_addr: crate::cluster::addr(id),
        incarnation: 0,
    }
}

/// Node `id`'s mover: its switch records the map in the metadata group as a replicated node's
/// does (`strata_shard::meta::install`).
fn mover(
    cluster: &Cluster,
    id: NodeId,
    (set, map, meta): (&ShardSet, &MapCell, &Meta),
    stats: Arc<ServiceStats>,
) -> Mover {
    let (cell, recorder, clock) = (map.clone(), meta.clone(), cluster.node_clock(id));
    let switch: Switch = Arc::new(move |next: ClusterMap| {
        let (cell, meta, clock) = (cell.clone(), recorder.clone(), clock.clone());
        Box::pin(async move {
            let now = strata_shard::clock::WallClock::now_us(clock.as_ref());
            strata_shard::meta::install(&meta, &cell, next, now).await
        })
    });
    let (cell, recorder, clock, held) = (
        map.clone(),
        meta.clone(),
        cluster.node_clock(id),
        set.clone(),
    );
    let add_shard: AddShard = Arc::new(move |next: ClusterMap, shard| {
        let (cell, meta, clock, held) =
            (cell.clone(), recorder.clone(), clock.clone(), held.clone());
        Box::pin(async move {
            let now = strata_shard::clock::WallClock::now_us(clock.as_ref());
            strata_shard::meta::add_shard(&meta, &cell, &held, (next, shard), now).await
        })
    });
    Mover::new(
        set.clone(),
        map.clone(),
        (switch, add_shard),
        cluster.node_clock(id),
        Arc::new(strata_shard::ids::SeededIds::new(cluster.rng().next_u64())),
        Throttle::new(Default::default(), stats),
    )
}

/// Forms every group: each shard's from the first node it is placed on, the metadata
/// group's from node 1.
async fn form(cluster: &Cluster, violations: &Violations) {
    for id in cluster.up_ids() {
        let Some(node) = cluster.sharded(id) else {
            continue;
        };
        let map = node.map.get();
        for (shard, backend) in node.set.backends() {
            let Backend::Replicated(replica) = backend else {
                continue;
            };
            if map.replicas(shard).and_then(|r| r.first().copied()) == Some(id) {
                if let Err(e) = replica.init().await {
                    violations.add(cluster, "cluster forms", format!("{shard}: {e}"));
                }
            }
        }
        if id == 1 {
            if let Err(e) = node.meta.replica().init().await {
                violations.add(cluster, "cluster forms", format!("metadata group: {e}"));
            }
        }
    }
}

/// The node leading the metadata group, as the running nodes see it.
fn meta_leader(cluster: &Cluster) -> Option<(NodeId, ShardedNode)> {
    cluster.up_ids().into_iter().find_map(|id| {
        let node = cluster.sharded(id)?;
        let leads = node.meta.replica().leader().is_some_and(|(l, _)| l == id);
        leads.then_some((id, node))
    })
}

/// A range to move: a few slots around a client stream's slot, all on the shard owning it,
/// and another shard to take them.
fn pick_move(cluster: &Cluster, map: &ClusterMap) -> Option<(SlotRange, ShardId)> {
    let rng = cluster.rng();
    let stream = rng.pick(&STREAMS)?;
    let slot = slot_of(stream, map.slots());
    let (owned, from) = *map
        .ranges()
        .iter()
        .find(|(r, _)| r.start <= slot && slot < r.end)?;
    let start = slot.saturating_sub(rng.below(3) as u32).max(owned.start);
    let end = (slot + 1 + rng.below(3) as u32).min(owned.end);
    let others: Vec<ShardId> = map.shards().into_iter().filter(|s| *s != from).collect();
    Some((SlotRange { start, end }, rng.pick(&others)?))
}

/// Moves slot ranges until `until`, one at a time from the metadata group's leader (a move
/// dies with its node), and on that leader lifts the fences of moves that stopped.
async fn mover_driver(cluster: Cluster, moves: Moves, (until, replicas): (Instant, bool)) {
    loop {
        tokio::time::sleep(cluster.rng().millis(300, 1500)).await;
        if Instant::now() >= until {
            return;
        }
        let Some((id, node)) = meta_leader(&cluster) else {
            continue;
        };
        let mut stopped = node.stopped.clone();
        let recovered = tokio::select! {
            r = node.mover.recover() => r,
            _ = stopped.wait_for(|s| *s) => continue,
        };
        match recovered {
            Ok(lifted) if !lifted.is_empty() => {
                cluster.trace().log(format!(
                    "n{id}: lifted the fences of stopped moves: {lifted:?}"
                ));
                moves.note("recovered", lifted.len() as u64);
            }
            Ok(_) => {}
            Err(e) => cluster.trace().log(format!("n{id}: recovering moves: {e}")),
        }
        let lifted = recover_abandoned(&cluster, id).await;
        moves.note("recovered", lifted as u64);
        let Ok(map) = node.map.routable() else {
            continue;
        };
        if replicas && cluster.rng().chance(0.4) {
            move_replica(&cluster, (id, &node), &map, &moves).await;
            continue;
        }
        // One in four a split of a client stream's shard (while there are fewer than 6).
        let split = map.shards().len() < SPLIT_SHARDS_MAX && cluster.rng().chance(0.25);
        let picked = if split {
            let stream = cluster.rng().pick(&STREAMS).unwrap_or("acct-a");
            let shard = map.shard_of(stream);
            cluster.trace().log(format!("n{id}: splitting {shard}"));
            let target = tokio::select! {
                r = node.mover.split_target(shard, None) => r,
                _ = stopped.wait_for(|s| *s) => continue,
            };
            match target {
                Ok(t) => {
                    moves.note("split", 1);
                    Some(t)
                }
                Err(e) => {
                    cluster.trace().log(format!("n{id}: split of {shard}: {e}"));
                    None
                }
            }
        } else {
            pick_move(&cluster, &map)
        };
        let Some((range, to)) = picked else {
            continue;
        };
        cluster.trace().log(format!(
            "n{id}: moving {range} to {to} (map epoch {})",
            map.epoch()
        ));
        moves.note("begun", 1);
        let outcome = tokio::select! {
            r = node.mover.run(range, to) => Some(r),
            _ = stopped.wait_for(|s| *s) => None,
        };
        match outcome {
            Some(Ok(s)) => {
                moves.note("done", 1);
                cluster.trace().log(format!(
                    "n{id}: moved {range} to {to}: {} events, pause {} us",
                    s.copied_events, s.pause_us
                ));
            }
            Some(Err(e)) => {
                moves.note("failed", 1);
                cluster
                    .trace()
                    .log(format!("n{id}: move of {range} to {to}: {e}"));
            }
            None => {
                moves.note("killed", 1);
                cluster
                    .trace()
                    .log(format!("n{id}: went down moving {range} to {to}"));
            }
        }
    }
}

/// One replica move from the metadata leader `id`: a move the map records (its runner went
/// down) finished or cancelled, else a new one — a shard's replica from a node holding it to
/// one that does not, never the last replica a node holds.
async fn move_replica(
    cluster: &Cluster,
    (id, node): (NodeId, &ShardedNode),
    map: &ClusterMap,
    moves: &Moves,
) {
    let recorded = map
        .shards()
        .into_iter()
        .find_map(|s| map.replica_move(s).map(|m| (s, m)));
    let (shard, (from, to), cancel) = match recorded {
        Some((s, m)) => (s, m, cluster.rng().chance(0.5)),
        None => match pick_replica_move(cluster, map) {
            Some((s, m)) => (s, m, false),
            None => return,
        },
    };
    let what = if cancel { "cancelling" } else { "moving" };
    let about = format!("{what} {shard}'s replica n{from} → n{to}");
    cluster
        .trace()
        .log(format!("n{id}: {about} (map epoch {})", map.epoch()));
    let run = async {
        match cancel {
            true => node.replicas.cancel(shard.0, from, to).await,
            false => node.replicas.run(shard.0, from, to).await,
        }
    };
    let mut stopped = node.stopped.clone();
    let outcome = tokio::select! {
        r = run => Some(r),
        _ = stopped.wait_for(|s| *s) => None,
    };
    let (note, said) = match (outcome, cancel) {
        (Some(Ok(())), true) => ("replica moves cancelled", "done".to_string()),
        (Some(Ok(())), false) => ("replica moves done", "done".to_string()),
        (Some(Err(e)), _) => ("replica moves failed", e.message().to_string()),
        (None, _) => ("replica moves killed", "went down".to_string()),
    };
    moves.note(note, 1);
    cluster.trace().log(format!("n{id}: {about}: {said}"));
}

/// A replica move to begin: a shard, a node holding it that holds another shard too, and a
/// node not holding it.
fn pick_replica_move(cluster: &Cluster, map: &ClusterMap) -> Option<(ShardId, (u64, u64))> {
    let rng = cluster.rng();
    let shards = map.shards();
    let shard = rng.pick(&shards)?;
    let holders = map.replicas(shard)?.to_vec();
    let load = |n: u64| shards.iter().filter(|s| map.holds(n, **s)).count();
    let sources: Vec<u64> = holders.iter().copied().filter(|n| load(*n) > 1).collect();
    let targets: Vec<u64> = (1..=NODES).filter(|n| !holders.contains(n)).collect();
    Some((shard, (rng.pick(&sources)?, rng.pick(&targets)?)))
}

/// Moves by outcome.
#[derive(Clone, Default)]
struct Moves(Arc<std::sync::Mutex<BTreeMap<&'static str, u64>>>);

impl Moves {
    fn note(&self, what: &'static str, n: u64) {
        *crate::cluster::lock(&self.0).entry(what).or_default() += n;
    }

    fn all(&self) -> BTreeMap<&'static str, u64> {
        crate::cluster::lock(&self.0).clone()
    }
}

/// One sharded run (see the module).
pub(crate) async fn simulate(config: RunConfig) -> RunReport {
    let trace = Trace::new(config.print);
    let shards = config.shards;
    let cluster = Cluster::with_shards(
        config.seed,
        NODES,
        (shards, Some(open_boxed)),
        trace.clone(),
    );
    let faults = FaultSet {
        network: config.faults.network,
        partitions: config.faults.partitions,
        crashes: config.faults.crashes,
        clock: config.faults.clock,
        ..SHARDED_FAULTS
    };
    trace.log(format!(
        "seed {} · {NODES} nodes · {shards} shards of {SLOTS} slots, 3 replicas each · faults {faults:?}",
        config.seed
    ));
    if config.lying_disks {
        for id in cluster.ids() {
            if let Some(fs) = cluster.fs(id) {
                fs.set_lying(true);
            }
        }
    }
    let violations = Violations::default();
    for id in cluster.ids() {
        if let Err(e) = cluster.start(id).await {
            violations.add(&cluster, "nodes start", format!("n{id}: {e}"));
        }
    }
    form(&cluster, &violations).await;
    let start = Instant::now();
    let safety_end = start + config.safety;
    let workload::Clients {
        history,
        as_of_reads: _,
        mut tasks,
        subscribers,
        subscribers_until,
    } = workload::start(&cluster, &STREAMS, safety_end, safety_end + config.liveness);
    let moves = Moves::default();
    tasks.push(tokio::spawn(mover_driver(
        cluster.clone(),
        moves.clone(),
        (safety_end, config.replica_moves),
    )));
    let fault_log = FaultLog::default();
    let tainted = Arc::default();
    let _ = tokio::spawn(crate::nemesis::nemesis(
        cluster.clone(),
        faults,
        fault_log.clone(),
        tainted,
        safety_end,
    ))
    .await;
    trace.log("liveness phase: faults off, stopped nodes restarted");
    let recovered = recover(&cluster, config.liveness).await;
    subscribers_until.send_replace(Instant::now() + Duration::from_secs(2));
    for t in tasks {
        let _ = t.await;
    }
    // The driver's last move may have ended after the cluster first settled: settle again.
    let recovered = match recovered {
        Ok(_) => recover(&cluster, config.liveness).await,
        Err(e) => Err(e),
    };
    let ops = history.ops();
    match recovered {
        Err(e) => violations.add(
            &cluster,
            "liveness",
            format!("not recovered within {:?}: {e}", config.liveness),
        ),
        Ok(map) => {
            let found = check_final(&cluster, &map, &ops, &subscribers).await;
            for v in found {
                violations.add(&cluster, v.property, v.detail);
            }
        }
    }
    let (lin, unknown_streams) = check::check_linearizable(&ops, config.check_time);
    for v in lin {
        violations.add(&cluster, v.property, v.detail);
    }
    let acked = ops
        .iter()
        .filter(|o| matches!(o.outcome, workload::Outcome::Appended(_)))
        .count();
    let mut fault_counts = crate::cluster::lock(&fault_log.0).clone();
    for (what, n) in moves.all() {
        let class = match what {
            "done" => "moves done",
            "failed" => "moves rolled back",
            "killed" => "moves killed",
            "recovered" => "fences recovered",
            "split" => "shards added",
            replica if replica.starts_with("replica") => replica,
            _ => "moves begun",
        };
        fault_counts.insert(class, n);
    }
    trace.log(format!(
        "end: {} ops ({acked} acknowledged appends), moves {:?}",
        ops.len(),
        moves.all()
    ));
    let simulated = start.elapsed();
    cluster.shutdown().await;
    RunReport {
        seed: config.seed,
        trace_hash: trace.hash(),
        violations: violations.all(),
        faults: fault_counts,
        ops: ops.len(),
        acked,
        entries: 0,
        unknown_streams,
        simulated,
    }
}

/// The liveness phase: faults off, every node started; then every group led, the stopped
/// moves' fences lifted, and every node routing by the metadata group's newest map — within
/// `within`. Returns that map.
async fn recover(cluster: &Cluster, within: Duration) -> Result<ClusterMap, String> {
    cluster.set_net(|n| {
        *n = crate::cluster::NetConditions {
            delay_max_ms: 5,
            ..Default::default()
        }
    });
    for id in cluster.ids() {
        cluster.set_clock(id, 1.0, 0);
        let _ = cluster.start(id).await;
    }
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match settled(cluster).await {
            Ok(map) => return Ok(map),
            Err(why) => {
                if why != last {
                    cluster.trace().log(format!("settling: {why}"));
                }
                last = why;
            }
        }
    }
    Err(last)
}

/// How long a stale fence stays before a node other than the metadata leader lifts it (the
/// nodes' [`strata_shard::mover::ABANDONED_FENCE_GRACE`], shortened to fit a run's liveness
/// phase: a move it cuts short rolls back).
const FENCE_GRACE: Duration = Duration::from_secs(5);

/// On every node up but the metadata leader `leader`: lifts the fences that stayed stale for
/// [`FENCE_GRACE`] on the shards it leads, as a node's `recover_moves` does. Returns how many.
async fn recover_abandoned(cluster: &Cluster, leader: NodeId) -> usize {
    let mut lifted = 0;
    for id in cluster.up_ids() {
        let Some(node) = cluster.sharded(id).filter(|_| id != leader) else {
            continue;
        };
        let mut stopped = node.stopped.clone();
        let recovered = tokio::select! {
            r = node.mover.recover_abandoned(id, FENCE_GRACE) => r,
            _ = stopped.wait_for(|s| *s) => continue,
        };
        match recovered {
            Ok(fences) if !fences.is_empty() => {
                cluster
                    .trace()
                    .log(format!("n{id}: lifted abandoned fences: {fences:?}"));
                lifted += fences.len();
            }
            Ok(_) => {}
            Err(e) => cluster
                .trace()
                .log(format!("n{id}: recovering abandoned fences: {e}")),
        }
    }
    lifted
}

/// A shard that node `leader` holds no replica of and that keeps a fence over slots it owns
/// (a slot move stopped with it), with a node holding it.
fn fenced_elsewhere(
    cluster: &Cluster,
    ids: &[NodeId],
    map: &ClusterMap,
    leader: NodeId,
) -> Option<(ShardId, NodeId)> {
    map.shards()
        .into_iter()
        .filter(|shard| !map.holds(leader, *shard))
        .find_map(|shard| {
            let (holder, backend) = ids
                .iter()
                .find_map(|id| Some((*id, cluster.sharded(*id)?.set.backend(shard)?)))?;
            let held = [(shard, backend)];
            (!check_fences(&held, map).is_empty()).then_some((shard, holder))
        })
}

/// Whether the cluster has settled (see [`recover`]): the map every node routes by.
async fn settled(cluster: &Cluster) -> Result<ClusterMap, String> {
    let ids = cluster.up_ids();
    if ids.len() < NODES as usize {
        return Err(format!("nodes up: {ids:?}"));
    }
    // A move the driver began before the liveness phase runs to its end (or fails) first.
    for id in &ids {
        let n = cluster.sharded(*id).ok_or("a node without shards")?;
        if let Some((shard, step)) = n.replicas.steps().into_iter().next() {
            return Err(format!("n{id} is still moving {shard}'s replica ({step})"));
        }
        if let Some(s) = n.mover.status() {
            if matches!(s.step, Step::Copying | Step::Fenced) {
                return Err(format!(
                    "n{id} is still moving {} ({})",
                    s.range,
                    s.step.name()
                ));
            }
        }
    }
    let (leader, node) = meta_leader(cluster).ok_or("the metadata group has no leader")?;
    // Recovery first: it also forms the groups of shards a stopped split added.
    let recovered = node.mover.recover().await;
    let newest = match node.meta.latest()? {
        Some((_, map)) => map,
        None => return Err("no map recorded".into()),
    };
    // A replica move the driver left recorded (its runner went down) is finished (before the
    // groups' leaders are looked at: its target is no member yet, and knows no leader).
    for shard in newest.shards() {
        if let Some((from, to)) = newest.replica_move(shard) {
            node.replicas
                .run(shard.0, from, to)
                .await
                .map_err(|e| format!("n{leader}: finishing {shard}'s replica move: {e}"))?;
            let after = node.meta.latest()?.map_or(0, |(_, m)| m.epoch());
            return Err(format!(
                "n{leader} finished {shard}'s replica move (map epoch {} → {after}, routing by {})",
                newest.epoch(),
                node.map.get().epoch()
            ));
        }
    }
    // A stopped slot move's fence on a shard the metadata leader holds no replica of: the
    // shard's leader lifts it once it has stayed for the grace.
    recover_abandoned(cluster, leader).await;
    if let Some((shard, holder)) = fenced_elsewhere(cluster, &ids, &newest, leader) {
        return Err(format!(
            "{shard} (held by n{holder}, not by the metadata leader n{leader}) keeps a stale fence; its leader lifts it after {FENCE_GRACE:?}"
        ));
    }
    // A member a move left in a group (its last step failed after the map's end) is taken out.
    let removed = node
        .replicas
        .tidy()
        .await
        .map_err(|e| format!("n{leader}: tidying the groups: {}", e.message()))?;
    if !removed.is_empty() {
        return Err(format!("n{leader} took {removed:?} out of their groups"));
    }
    for id in &ids {
        let n = cluster.sharded(*id).ok_or("a node without shards")?;
        for (shard, backend) in n.set.backends() {
            if let Backend::Replicated(r) = backend {
                if r.leader().is_none() {
                    return Err(format!("n{id}: {shard} has no leader"));
                }
            }
        }
    }
    recovered.map_err(|e| format!("n{leader}: recovering moves: {e}"))?;
    for id in &ids {
        let n = cluster.sharded(*id).ok_or("a node without shards")?;
        let map = n.map.routable().map_err(|why| format!("n{id}: {why}"))?;
        if *map != newest {
            return Err(format!(
                "n{id} routes by epoch {}, the cluster's is {}",
                map.epoch(),
                newest.epoch()
            ));
        }
        // It holds what the map places on it, and nothing else.
        let placed: Vec<ShardId> = newest
            .shards()
            .into_iter()
            .filter(|s| newest.holds(*id, *s))
            .collect();
        if n.set.ids() != placed {
            return Err(format!(
                "n{id} holds {:?}, the map places {placed:?} on it",
                n.set.ids()
            ));
        }
    }
    // Every shard's replicas level: the same end on every node holding it.
    for shard in newest.shards() {
        let holders = ids.iter().filter(|id| newest.holds(**id, shard)).count();
        let ends: Vec<u64> = ids
            .iter()
            .filter_map(|id| cluster.sharded(*id)?.set.backend(shard))
            .map(|b| b.reader().end())
            .collect();
        let distinct: BTreeSet<u64> = ends.iter().copied().collect();
        if ends.len() != holders || distinct.len() != 1 {
            return Err(format!("{shard}'s replicas end at {ends:?}"));
        }
    }
    Ok(newest)
}

/// The checks of the module's list, on the settled cluster routing by `map`.
async fn check_final(
    cluster: &Cluster,
    map: &ClusterMap,
    ops: &[workload::Op],
    subscribers: &[(String, Received)],
) -> Vec<check::Violation> {
    let mut out = Vec::new();
    let mut v = |property, detail: String| out.push(check::Violation { property, detail });
    let ids = cluster.up_ids();
    // Each shard as the first node holding it has it.
    let mut held: Vec<(ShardId, Backend)> = Vec::new();
    for shard in map.shards() {
        match ids
            .iter()
            .find_map(|id| cluster.sharded(*id)?.set.backend(shard))
        {
            Some(backend) => held.push((shard, backend)),
            None => v("sharded log", format!("no node up holds {shard}")),
        }
    }
    // Each stream from the shard the map gives it.
    let mut last: Final = BTreeMap::new();
    for stream in STREAMS {
        let shard = map.shard_of(stream);
        let Some((_, backend)) = held.iter().find(|(s, _)| *s == shard) else {
            continue;
        };
        match read_whole(backend, stream) {
            Ok(held) => {
                last.insert(stream.to_string(), held);
            }
            Err(e) => v("sharded log", format!("reading {stream} on {shard}: {e}")),
        }
    }
    out.extend(check::check_log(ops, &last));
    out.extend(check::check_follower_reads(ops, &last));
    let received: Vec<check::SubscriberLog> = subscribers
        .iter()
        .map(|(n, r)| (n.clone(), r.all()))
        .collect();
    out.extend(check::check_subscribers(&received, &last));
    out.extend(check_all_once(&held, &last));
    out.extend(check_fences(&held, map));
    out.extend(check_replicas_alike(cluster, &ids, map));
    out.extend(check_groups_placed(cluster, &ids, map));
    out
}

/// Every event of `stream` in `backend`: (version, id), page after page.
fn read_whole(backend: &Backend, stream: &str) -> strata_engine::Result<Vec<(u64, String)>> {
    let reader = backend.reader();
    let page = reader.limits().read_events_max;
    let mut held: Vec<(u64, String)> = Vec::new();
    loop {
        let from = held.last().map(|(v, _)| v + 1);
        let events = reader.read_stream(stream, from, Direction::Forwards, page)?;
        let full = events.len() == page;
        held.extend(events.into_iter().map(|e| (e.version, e.id.to_string())));
        if !full {
            return Ok(held);
        }
    }
}

/// The shards' `$all` together (copies left out) holds each client event exactly once.
fn check_all_once(held: &[(ShardId, Backend)], last: &Final) -> Vec<check::Violation> {
    // id → (times, where it was last seen: shard, stream@version, position)
    let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for (shard, backend) in held {
        let reader = backend.reader();
        let mut at = 0;
        loop {
            let batch = match reader.read_all(at, 4096) {
                Ok(b) => b,
                Err(e) => {
                    out.push(check::Violation {
                        property: "$all once",
                        detail: format!("reading {shard}'s log at {at}: {e}"),
                    });
                    break;
                }
            };
            if batch.records.is_empty() {
                break;
            }
            for record in batch.records.iter().filter(|r| !r.copy) {
                for e in record
                    .events
                    .iter()
                    .filter(|e| STREAMS.contains(&e.stream.as_str()))
                {
                    let at = format!("{shard} {}@{} at {}", e.stream, e.version, record.position);
                    let entry = seen.entry(e.id.to_string()).or_default();
                    *entry = (entry.0 + 1, at);
                }
            }
            at = batch.next;
        }
    }
    for (stream, events) in last {
        for (version, id) in events {
            let n = seen.remove(id).map_or(0, |(n, _)| n);
            if n != 1 {
                out.push(check::Violation {
                    property: "$all once",
                    detail: format!("{stream}@{version} ({id}) is in the shards' $all {n} times"),
                });
            }
        }
    }
    for (id, (n, at)) in seen {
        out.push(check::Violation {
            property: "$all once",
            detail: format!("{id} is in the shards' $all {n} times ({at}) and in no stream"),
        });
    }
    out
}

/// No shard keeps a fence over slots the map gives to it (a move neither finished nor rolled
/// back).
fn check_fences(held: &[(ShardId, Backend)], map: &ClusterMap) -> Vec<check::Violation> {
    let mut out = Vec::new();
    for (shard, backend) in held {
        let fences = match read_fences(&backend.reader()) {
            Ok(f) => f,
            Err(e) => {
                out.push(check::Violation {
                    property: "moves end",
                    detail: format!("reading {shard}'s fences: {e}"),
                });
                continue;
            }
        };
        for f in fences.list() {
            let mine = map
                .ranges()
                .iter()
                .any(|(r, s)| *s == *shard && r.start < f.end && f.start < r.end);
            if mine {
                out.push(check::Violation {
                    property: "moves end",
                    detail: format!(
                        "{shard} keeps a fence over slots {}..{} it owns (epoch {})",
                        f.start,
                        f.end,
                        map.epoch()
                    ),
                });
            }
        }
    }
    out
}

/// Each shard's group is the nodes the map places it on, all voters: every replica move
/// ended (or was cancelled) in the groups as in the map.
fn check_groups_placed(
    cluster: &Cluster,
    ids: &[NodeId],
    map: &ClusterMap,
) -> Vec<check::Violation> {
    let mut out = Vec::new();
    for shard in map.shards() {
        let placed = map.replicas(shard).map(<[u64]>::to_vec).unwrap_or_default();
        for id in ids {
            let Some(Backend::Replicated(r)) =
                cluster.sharded(*id).and_then(|n| n.set.backend(shard))
            else {
                continue;
            };
            let members: Vec<(u64, &str)> = r
                .status()
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        if m.role == "learner" {
                            "learner"
                        } else {
                            "voter"
                        },
                    )
                })
                .collect();
            let voters: Vec<u64> = members
                .iter()
                .filter(|(_, role)| *role == "voter")
                .map(|(m, _)| *m)
                .collect();
            if voters != placed || members.len() != placed.len() {
                out.push(check::Violation {
                    property: "replicas placed",
                    detail: format!(
                        "{shard}: n{id}'s group is {members:?}, the map places it on {placed:?} (epoch {})",
                        map.epoch()
                    ),
                });
            }
        }
    }
    out
}

/// Each shard's replicas hold the same records (event ids in log order).
fn check_replicas_alike(
    cluster: &Cluster,
    ids: &[NodeId],
    map: &ClusterMap,
) -> Vec<check::Violation> {
    let mut out = Vec::new();
    for ShardId(k) in map.shards() {
        let mut logs: Vec<(NodeId, Vec<String>)> = Vec::new();
        for id in ids {
            let Some(backend) = cluster.sharded(*id).and_then(|n| n.set.backend(ShardId(k))) else {
                continue;
            };
            let reader = backend.reader();
            let (mut at, mut held) = (0, Vec::new());
            while let Ok(batch) = reader.read_all(at, 4096) {
                if batch.records.is_empty() {
                    break;
                }
                for r in &batch.records {
                    held.extend(r.events.iter().map(|e| e.id.to_string()));
                }
                at = batch.next;
            }
            logs.push((*id, held));
        }
        if let Some((first, log)) = logs.first() {
            for (id, other) in &logs[1..] {
                if other != log {
                    out.push(check::Violation {
                        property: "replicas alike",
                        detail: format!(
                            "shard {k}: n{first} holds {} events, n{id} {} (first difference at {})",
                            log.len(),
                            other.len(),
                            log.iter().zip(other).take_while(|(a, b)| a == b).count()
                        ),
                    });
                }
            }
        }
    }
    out
}
