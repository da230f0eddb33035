//! The metadata group: one more Raft group on the nodes of a sharded cluster (reserved id
//! [`META_GROUP`], data in `DIR/meta/`), whose log holds the cluster map's history in the
//! stream `$cluster-map`. Each event is a whole map (`ClusterMap::encode`); its version + 1 is
//! the map's epoch. A change is an append expecting the version it was computed from
//! (compare-and-set: of two changes computed from one map, one wins).
//!
//! Every node follows the stream in its own replica ([`follow`]): a map of a later epoch is
//! checked (same slot count), the shards it adds are opened (a split), then it is written to
//! `DIR/cluster.map` (the cache a restart routes by until it has caught up) and swapped into
//! the node's [`MapCell`]. So a node never routes a slot to a shard it has not opened.
//! The group's leader writes the first map, the one the node derived from `--shards`, if the
//! stream is empty. Invariant: a node's map epoch never goes down, and every map it routes by
//! was committed in the metadata group (or is the derived first one, epoch 1).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use strata_engine::system::{CLUSTER_MAP_STREAM, CLUSTER_MAP_TYPE};
use strata_engine::{AppendRequest, Direction, ExpectedVersion, NewEvent};
use strata_proto::routing::{ClusterMap, Founder, ShardId};
use strata_raft::{Replica, ReplicaError, StrataNode};
use tokio::sync::watch;

use crate::map_cell::{write_map_with, MapCell, SwitchError};

/// The metadata group's id (as a shard id on the Raft transport): no data shard has it.
pub const META_GROUP: u32 = u32::MAX;
/// The metadata group's directory under a node's data directory.
pub const META_DIR: &str = "meta";
/// How often a node looks at the metadata group when nothing wakes it.
const FOLLOW_IDLE: Duration = Duration::from_secs(1);

/// A node's replica of the metadata group.
#[derive(Debug, Clone)]
pub struct Meta {
    replica: Replica,
}

impl Meta {
    /// The metadata group over `replica` (started with [`META_GROUP`] as its shard id).
    pub fn new(replica: Replica) -> Meta {
        Meta { replica }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The newest map this replica has applied, with its stream version (`None`: none yet).
    /// A stored map whose epoch is not its version + 1 is refused, naming both.
    pub fn latest(&self) -> Result<Option<(u64, ClusterMap)>, String> {
        let reader = self.replica.shard().reader();
        let events = reader
            .read_stream(CLUSTER_MAP_STREAM, None, Direction::Backwards, 1)
            .map_err(|e| format!("reading {CLUSTER_MAP_STREAM}: {e}"))?;
        let Some(e) = events.into_iter().next() else {
            return Ok(None);
        };
        let map = decode(&e.data, e.version)?;
        Ok(Some((e.version, map)))
    }

    /// Records `map` as the next map: `map.epoch()` must be the current one + 1 (1 for the
    /// first), and the stream must still be at that point — else the answer is the engine's
    /// wrong-expected-version error and nothing is written. Only on the group's leader
    /// (elsewhere: not the leader, naming it).
    pub async fn propose(&self, map: &ClusterMap, now_us: u64) -> Result<(), ReplicaError> {
        self.replica.append(proposal(map, now_us)?).await?;
        Ok(())
    }

    /// [`Meta::propose`] at the group's leader wherever it is, asked again (the same event:
    /// answered as decided) while the group does not answer, for at most `wait`.
    pub async fn propose_at_leader(
        &self,
        map: &ClusterMap,
        now_us: u64,
        wait: Duration,
    ) -> Result<(), ReplicaError> {
        let request = proposal(map, now_us)?;
        self.replica
            .append_all_at_leader(vec![request], wait)
            .await?;
        Ok(())
    }
}

/// How long a switch asks the metadata group to record its map before calling the outcome
/// unknown.
pub const RECORD_WAIT: Duration = Duration::from_secs(10);
/// How long a switch whose map is recorded waits for this node to route by it (the switch is
/// done either way: the map is the cluster's).
pub const ROUTED_WAIT: Duration = Duration::from_secs(5);

/// Records `map` as the cluster's next map — the commit point of a move or a split — then
/// waits a while until `cell` routes by it. Refused when the group decided against it (another
/// map holds its epoch); unknown when the group did not answer within [`RECORD_WAIT`] (the
/// proposal may still commit: the caller must not act as if it will not).
pub async fn install(
    meta: &Meta,
    cell: &MapCell,
    map: ClusterMap,
    now_us: u64,
) -> Result<(), SwitchError> {
    match meta.propose_at_leader(&map, now_us, RECORD_WAIT).await {
        Ok(()) => {}
        Err(ReplicaError::Engine(e)) => {
            return Err(SwitchError::Refused(format!("recording the map: {e}")))
        }
        Err(e) => return Err(SwitchError::Unknown(format!("recording the map: {e}"))),
    }
    let epoch = map.epoch();
    let mut epochs = cell.watch();
    let routed = tokio::time::timeout(ROUTED_WAIT, async {
        epochs.wait_for(|e| *e >= epoch).await.is_ok()
    })
    .await;
    if !matches!(routed, Ok(true)) {
        tracing::warn!(
            epoch,
            "the map is recorded, but this node does not route by it yet"
        );
    }
    Ok(())
}

/// How long adding a shard waits for this node to open it, then for its new group to elect a
/// leader.
pub const NEW_GROUP_WAIT: Duration = Duration::from_secs(30);

/// After a map that adds shard `id` is installed: waits until this node holds the shard (its
/// follower opens it before routing by the map), forms its group from here (this node runs its
/// first election; the others joined when their followers opened it) and waits for a leader.
pub async fn form_added(set: &crate::shard_set::ShardSet, id: ShardId) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + NEW_GROUP_WAIT;
    let backend = loop {
        if let Some(b) = set.backend(id) {
            break b;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "this node has not opened {id} within {NEW_GROUP_WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let crate::backend::Backend::Replicated(replica) = backend else {
        return Ok(());
    };
    replica
        .init()
        .await
        .map_err(|e| format!("forming {id}'s group: {e}"))?;
    let mut metrics = replica.raft().metrics();
    let led = tokio::time::timeout_at(deadline, async {
        metrics
            .wait_for(|m| m.current_leader.is_some())
            .await
            .is_ok()
    })
    .await;
    match led {
        Ok(true) => Ok(()),
        _ => Err(format!(
            "{id}'s group has no leader within {NEW_GROUP_WAIT:?} (are its nodes up?)"
        )),
    }
}

/// Adds shard `shard` by `map` (a split's first step; `map` from
/// [`ClusterMap::with_shard_added`], the shard placed where the split one is, if placed):
/// recorded with the metadata group's voters of the moment it is placed on as the group's
/// founders (every node opens it configured with them, and only they form it), installed,
/// then its group formed from here.
pub async fn add_shard(
    meta: &Meta,
    cell: &MapCell,
    set: &crate::shard_set::ShardSet,
    (map, shard): (ClusterMap, ShardId),
    now_us: u64,
) -> Result<(), String> {
    // Its founders: the nodes the map places it on, else every voter.
    let placed = map.replicas(shard).map(<[u64]>::to_vec);
    let founders: Vec<Founder> = voters(meta)
        .into_iter()
        .filter(|(id, _)| placed.as_ref().is_none_or(|p| p.contains(id)))
        .map(|(id, node)| Founder {
            id,
            addr: node.addr,
            raft_addr: node.raft_addr,
        })
        .collect();
    let map = map
        .with_founders(shard, &founders)
        .map_err(|e| e.to_string())?;
    install(meta, cell, map, now_us)
        .await
        .map_err(|e| e.to_string())?;
    form_added(set, shard).await
}

/// The voters shard `shard`'s group is configured with, when `map` records its founders (a
/// shard a split added; `None`: the node's own configuration).
pub fn founding_members(map: &ClusterMap, shard: ShardId) -> Option<BTreeMap<u64, StrataNode>> {
    let founders = map.founders(shard)?;
    Some(
        founders
            .iter()
            .map(|f| {
                let node = StrataNode {
                    addr: f.addr.clone(),
                    raft_addr: f.raft_addr.clone(),
                    incarnation: 0,
                };
                (f.id, node)
            })
            .collect(),
    )
}

/// The append recording `map` (see [`Meta::propose`]).
fn proposal(map: &ClusterMap, now_us: u64) -> Result<AppendRequest, ReplicaError> {
    {
        let epoch = map.epoch();
        let expected = match epoch {
            0 => {
                return Err(strata_engine::Error::invalid("epoch", "epochs start at 1").into());
            }
            1 => ExpectedVersion::NoStream,
            e => ExpectedVersion::Exact(e - 2),
        };
        let text = map.encode();
        // The id names the map: a retry of this proposal is answered as the first was, and a
        // different map for the same epoch is a different event.
        let id = uuid::Uuid::from_u64_pair(epoch, u64::from(crc32fast::hash(text.as_bytes())));
        let event = NewEvent {
            id,
            event_type: CLUSTER_MAP_TYPE.into(),
            data: Bytes::from(text),
            metadata: Bytes::new(),
        };
        Ok(AppendRequest::single(
            CLUSTER_MAP_STREAM,
            expected,
            vec![event],
            now_us,
        ))
    }
}

/// Decodes the map stored at `version`, checking its epoch against it.
fn decode(data: &[u8], version: u64) -> Result<ClusterMap, String> {
    let text = std::str::from_utf8(data)
        .map_err(|_| format!("{CLUSTER_MAP_STREAM}@{version} is not UTF-8"))?;
    let map =
        ClusterMap::decode(text).map_err(|e| format!("{CLUSTER_MAP_STREAM}@{version}: {e}"))?;
    if map.epoch() != version + 1 {
        return Err(format!(
            "{CLUSTER_MAP_STREAM}@{version} holds epoch {}, not {}",
            map.epoch(),
            version + 1
        ));
    }
    Ok(map)
}

/// Whether a node routing by `current` can route by `next`: the same slot count (fixed at
/// creation). Shards of `next` the node lacks are opened before it routes by it.
pub fn check_next(current: &ClusterMap, next: &ClusterMap) -> Result<(), String> {
    if next.slots() != current.slots() {
        return Err(format!(
            "map epoch {} has {} slots, this node's {}: the slot count is fixed at creation",
            next.epoch(),
            next.slots(),
            current.slots()
        ));
    }
    Ok(())
}

/// The shards a node holds, and opening one a newer map adds (see `crate::host`).
pub trait Groups: Send + Sync {
    /// The shards held now.
    fn held(&self) -> Vec<ShardId>;
    /// Opens shard `shard` and serves it, its group configured with `members`; a new replica
    /// records `incarnation` (see [`ClusterMap::incarnation`]).
    fn open(
        &self,
        shard: ShardId,
        members_and_incarnation: (BTreeMap<u64, StrataNode>, u64),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
    /// Forms shard `shard`'s group from the members it was opened with, if its replica here
    /// is new (see [`strata_raft::Replica::form_if_new`]); whether it did.
    fn form(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>;
    /// The incarnation of the replica of shard `shard` held here (see
    /// [`strata_raft::StrataNode`]); `None` when none is held (or it is not replicated).
    fn incarnation(&self, shard: ShardId) -> Option<u64>;
    /// Stops serving shard `shard` and deletes its replica (the map places it elsewhere).
    fn close(
        &self,
        shard: ShardId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// What a node needs to follow the metadata group.
#[derive(Clone)]
pub struct Follower {
    /// The node's replica of the group.
    pub meta: Meta,
    /// The map the node routes by.
    pub cell: MapCell,
    /// The node's data directory (the cache `cluster.map` lives there).
    pub dir: PathBuf,
    /// The file system the cache is written through.
    pub fs: std::sync::Arc<dyn strata_engine::fs::FileSystem>,
    /// The shards the node holds, and how it opens more.
    pub groups: std::sync::Arc<dyn Groups>,
    /// The node's wall clock (the first map's timestamp).
    pub clock: std::sync::Arc<dyn crate::clock::WallClock>,
}

/// Follows the metadata group until `stop`: adopts each later map (see the module), and on the
/// group's leader writes the first one if there is none. Woken by the replica's Raft metrics.
pub async fn follow(f: Follower, mut stop: watch::Receiver<bool>) {
    let mut metrics = f.meta.replica.raft().metrics();
    let mut seen_applied = None;
    loop {
        let applied = metrics.borrow_and_update().last_applied.map(|l| l.index);
        if applied != seen_applied {
            seen_applied = applied;
            step(&f).await;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(FOLLOW_IDLE) => seen_applied = None,
        }
    }
}

/// One look at the group: adopt its newest map (and form the groups this node founds), or
/// write the first one.
async fn step(f: &Follower) {
    match f.meta.latest() {
        Ok(Some((_, map))) => {
            adopt(f, map).await;
            form_founded(f).await;
        }
        Ok(None) => {
            let leads = f
                .meta
                .replica
                .leader()
                .is_some_and(|(id, _)| id == f.meta.replica.node_id());
            let first = f.cell.get();
            if leads && first.epoch() == 1 {
                match f.meta.propose(&first, f.clock.now_us()).await {
                    Ok(()) => tracing::info!(epoch = 1, "the first cluster map is recorded"),
                    Err(e) => tracing::warn!(error = %e, "recording the first cluster map"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "the metadata group's map is unreadable"),
    }
}

/// Routes by `map` from now on if it is later than the node's and the node can (see
/// [`check_next`]); shards it adds are opened (their groups configured with the founders the
/// map records), then the cache file is written. A node that cannot route by the cluster's
/// map (or holds another map of the same epoch: it was started with another `--shards`)
/// refuses calls from then on, naming why, rather than route by its own.
async fn adopt(f: &Follower, map: ClusterMap) {
    let current = f.cell.get();
    if map.epoch() < current.epoch() || (map.epoch() == current.epoch() && map == *current) {
        return;
    }
    let conflict = if map.epoch() == current.epoch() {
        Err(format!(
            "this node's map ({} shards over {} slots) is not the cluster's map of the same epoch {} ({} shards over {} slots): it was started with another --shards; restart it with --shards {} on a new data directory",
            current.shards().len(),
            current.slots(),
            map.epoch(),
            map.shards().len(),
            map.slots(),
            map.shards().len()
        ))
    } else {
        match check_next(&current, &map) {
            Ok(()) => {
                close_replaced(f, &map).await;
                open_added(f, &map).await
            }
            Err(e) => Err(e),
        }
    };
    if let Err(e) = conflict {
        tracing::error!(error = %e, "this node cannot route by the cluster's map; it refuses calls");
        f.cell.refuse(e);
        return;
    }
    let (fs, dir, cached) = (f.fs.clone(), f.dir.clone(), map.clone());
    let written = crate::blocking::run(move || write_map_with(fs.as_ref(), &dir, &cached)).await;
    if let Err(e) = written.and_then(|w| w) {
        tracing::error!(error = %e, "caching the cluster map; routing by the old one");
        return;
    }
    let epoch = map.epoch();
    if f.cell.advance(map.clone()) {
        tracing::info!(epoch, "routing by a new cluster map");
    }
    close_moved(f, &map).await;
}

/// Removes the shards this node holds that `map` places on other nodes only (a replica move
/// took them away), once the node routes by it.
async fn close_moved(f: &Follower, map: &ClusterMap) {
    let me = f.meta.replica.node_id();
    for shard in f.groups.held() {
        if map.holds(me, shard) {
            continue;
        }
        match f.groups.close(shard).await {
            Ok(()) => tracing::info!(
                shard = shard.0,
                epoch = map.epoch(),
                "this node's replica of the shard moved away; removed"
            ),
            Err(e) => {
                tracing::error!(shard = shard.0, error = %e, "removing a replica that moved away")
            }
        }
    }
}

/// Removes the replicas this node holds of shards `map` moves a replica to this node of, when
/// they are not that move's replica (another incarnation): an older one, kept because this
/// node missed the map that took it away (down, or slow) — its group removed it, and the
/// move adds a new, empty one, which [`open_added`] then opens.
async fn close_replaced(f: &Follower, map: &ClusterMap) {
    let me = f.meta.replica.node_id();
    for shard in f.groups.held() {
        let (wanted, held) = (map.incarnation(shard, me), f.groups.incarnation(shard));
        if wanted == 0 || held.is_none_or(|h| h == wanted) {
            continue;
        }
        match f.groups.close(shard).await {
            Ok(()) => tracing::info!(
                shard = shard.0,
                held,
                wanted,
                "this node's replica of the shard is an older one than the map's move brings; removed"
            ),
            Err(e) => {
                tracing::error!(shard = shard.0, error = %e, "removing an older replica")
            }
        }
    }
}

/// Forms the groups of the shards this node holds whose founders the map it routes by
/// records with this node among them, where its replica is new: every founder does, with the
/// same members, so a split's new shard is formed whichever of them lives (the map forgets
/// a shard's founders once a replica move begins: its membership changes from then on).
async fn form_founded(f: &Follower) {
    let (map, me) = (f.cell.get(), f.meta.replica.node_id());
    for shard in f.groups.held() {
        let founder = map
            .founders(shard)
            .is_some_and(|founders| founders.iter().any(|n| n.id == me));
        if !founder {
            continue;
        }
        match f.groups.form(shard).await {
            Ok(true) => tracing::info!(shard = shard.0, "formed an added shard's group"),
            Ok(false) => {}
            Err(e) => tracing::warn!(shard = shard.0, error = %e, "forming an added shard's group"),
        }
    }
}

/// Opens the shards `map` places on this node and it does not hold (a split added them, or a
/// replica move brings one here).
async fn open_added(f: &Follower, map: &ClusterMap) -> Result<(), String> {
    let (held, me) = (f.groups.held(), f.meta.replica.node_id());
    let added: Vec<ShardId> = map
        .shards()
        .into_iter()
        .filter(|s| !held.contains(s) && map.holds(me, *s))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    for shard in added {
        let members = founding_members(map, shard).unwrap_or_else(|| voters(&f.meta));
        let incarnation = map.incarnation(shard, me);
        f.groups
            .open(shard, (members, incarnation))
            .await
            .map_err(|e| {
                format!(
                    "map epoch {} adds {shard}, which this node could not open: {e}",
                    map.epoch()
                )
            })?;
    }
    Ok(())
}

/// The metadata group's voters (the cluster's nodes of the moment), with their addresses.
pub fn voters(meta: &Meta) -> BTreeMap<u64, StrataNode> {
    meta.replica
        .status()
        .members
        .into_iter()
        .filter(|m| m.role != "learner")
        .map(|m| (m.id, m.node))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stored_map_must_carry_the_epoch_of_its_version() {
        let map = ClusterMap::even(4096, 4).unwrap();
        assert_eq!(decode(map.encode().as_bytes(), 0).unwrap(), map);
        let e = decode(map.encode().as_bytes(), 3).unwrap_err();
        assert!(e.contains("holds epoch 1, not 4"), "{e}");
        assert!(decode(&[0xff, 0xfe], 0).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn a_node_refuses_a_map_of_other_slots() {
        let now = ClusterMap::even(4096, 4).unwrap();
        let more = now.with_shard_added(ShardId(4)).unwrap();
        assert!(check_next(&now, &more).is_ok());
        let slots = ClusterMap::even(1024, 4).unwrap();
        let e = check_next(&now, &slots).unwrap_err();
        assert!(e.contains("1024 slots, this node's 4096"), "{e}");
    }

    #[test]
    fn the_cell_only_moves_forward() {
        let first = ClusterMap::even(4096, 4).unwrap();
        let cell = MapCell::new(first.clone());
        assert!(!cell.advance(first.clone()), "the same epoch");
        let next = first
            .with_range_moved(
                strata_proto::routing::SlotRange { start: 0, end: 10 },
                ShardId(1),
            )
            .unwrap();
        assert_eq!(next.epoch(), 2);
        assert!(cell.advance(next.clone()));
        assert!(!cell.advance(first.clone()), "an older epoch");
        assert_eq!(*cell.get(), next);
        // A refusal holds until a later map is taken.
        cell.refuse("not this node's map".into());
        assert_eq!(&*cell.routable().unwrap_err(), "not this node's map");
        assert!(!cell.advance(first));
        assert!(cell.routable().is_err());
        let later = next
            .with_range_moved(
                strata_proto::routing::SlotRange { start: 10, end: 20 },
                ShardId(2),
            )
            .unwrap();
        assert!(cell.advance(later.clone()));
        assert_eq!(*cell.routable().unwrap(), later);
    }
}
