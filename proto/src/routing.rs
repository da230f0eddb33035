//! Slots and routing: which shard holds a stream. Clients and nodes must agree on it exactly,
//! for ever (a stream's events live in the shard its slot maps to), so it lives here, beside
//! the wire contract, and the hash is pinned by tests.
//!
//! ```text
//! stream name ──routing key──▶ CRC-32 ──mod slots──▶ slot ──cluster map (epoch N)──▶ shard
//! "order-{42}-payments"   "42"                        0..slots    sorted slot ranges
//! ```
//!
//! - **Routing key**: the text between the first `{` and the next `}` when that text is not
//!   empty, else the whole name. `order-{42}` and `order-{42}-payments` share a slot, so an
//!   `AppendMulti` over them stays on one shard.
//! - **Hash**: CRC-32 (ISO-HDLC, the zlib/Ethernet one) of the key's UTF-8 bytes, modulo the
//!   number of slots. The number of slots is chosen when a cluster is created
//!   ([`SLOTS_DEFAULT`]) and never changes; shards own ranges of slots.
//! - **Cluster map**: slot ranges covering every slot exactly once, each owned by one shard,
//!   and an epoch that increases on every change. A node or client holding an older epoch is
//!   redirected.

use std::fmt;

/// Slots of a cluster unless chosen otherwise at creation.
pub const SLOTS_DEFAULT: u32 = 4096;
/// Most slots a cluster may have (a slot number fits in 16 bits).
pub const SLOTS_MAX: u32 = 1 << 16;

/// A shard: one Raft group holding the streams of its slot ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

pub use strata_slots::{routing_key, slot_of};

/// Slots `start..end` (end excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot.
    pub start: u32,
    /// One past the last slot.
    pub end: u32,
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slots {}..{}", self.start, self.end)
    }
}

/// A node that formed an added shard's group (see [`ClusterMap::founders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Founder {
    /// Its node id.
    pub id: u64,
    /// Its client address.
    pub addr: String,
    /// Its Raft address.
    pub raft_addr: String,
}

/// A cluster map that cannot be built or changed as asked; the map is left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// The number of slots is 0 or above [`SLOTS_MAX`].
    SlotCount { slots: u32 },
    /// No shard was given.
    NoShards,
    /// A range holds no slot or ends past the last slot.
    BadRange { range: SlotRange, slots: u32 },
    /// Slots no range covers.
    Gap { range: SlotRange },
    /// A slot two ranges cover.
    Overlap { slot: u32 },
    /// The shard named is not in the map.
    UnknownShard { shard: ShardId },
    /// A shard added must be the one after the highest (ids are never reused).
    NotNextShard { shard: ShardId, next: ShardId },
    /// A shard placed on no node.
    NoReplicas { shard: ShardId },
    /// Another replica move of the shard is under way.
    ReplicaMoving { shard: ShardId, from: u64, to: u64 },
    /// A replica move whose source holds no replica or whose target holds one.
    NotAMove { shard: ShardId, from: u64, to: u64 },
    /// No replica move of the shard is under way.
    NoReplicaMove { shard: ShardId },
    /// A preferred leader that holds no replica of the shard.
    NotAReplica { shard: ShardId, node: u64 },
    /// A shard's group formed by no node.
    NoFounders { shard: ShardId },
    /// A founder's address is empty or holds a space or comma.
    BadAddress { node: u64, addr: String },
    /// A map's text ([`ClusterMap::decode`]) is not one.
    Text { line: usize, why: String },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::SlotCount { slots } => {
                write!(f, "a cluster has 1 to {SLOTS_MAX} slots, not {slots}")
            }
            MapError::NoShards => write!(f, "a cluster map needs at least one shard"),
            MapError::BadRange { range, slots } => write!(
                f,
                "{range} is empty or ends past the cluster's {slots} slots"
            ),
            MapError::Gap { range } => write!(f, "no shard owns {range}"),
            MapError::Overlap { slot } => write!(f, "slot {slot} is owned by two ranges"),
            MapError::UnknownShard { shard } => write!(f, "{shard} is not in the cluster map"),
            MapError::NotNextShard { shard, next } => write!(
                f,
                "a new shard takes the next id ({next}), not {shard}: ids are never reused"
            ),
            MapError::NoReplicas { shard } => {
                write!(f, "{shard} needs a replica on at least one node")
            }
            MapError::ReplicaMoving { shard, from, to } => write!(
                f,
                "a replica move of {shard} from node {from} to node {to} is unfinished: run it again to finish it (`strata cluster move-shard {} --from {from} --to {to}`); one at a time per shard",
                shard.0
            ),
            MapError::NotAMove { shard, from, to } => write!(
                f,
                "moving {shard}'s replica from node {from} to node {to}: the source must hold one and the target none"
            ),
            MapError::NoReplicaMove { shard } => {
                write!(f, "no replica move of {shard} is under way")
            }
            MapError::NotAReplica { shard, node } => write!(
                f,
                "node {node} holds no replica of {shard}: only a node holding one may lead it"
            ),
            MapError::NoFounders { shard } => {
                write!(f, "{shard}'s group needs at least one founding node")
            }
            MapError::BadAddress { node, addr } => write!(
                f,
                "node {node}'s address {addr:?} is empty or holds a space or comma"
            ),
            MapError::Text { line, why } => write!(f, "cluster map, line {line}: {why}"),
        }
    }
}

impl std::error::Error for MapError {}

/// An append over streams of several shards (one append is atomic only within a shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossShard {
    /// Every stream of the append with its shard, in the append's order.
    pub streams: Vec<(String, ShardId)>,
}

impl fmt::Display for CrossShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an append is atomic within one shard, and these streams are in different shards:"
        )?;
        for (stream, shard) in &self.streams {
            write!(f, " {stream:?} ({shard})")?;
        }
        write!(
            f,
            "; give related streams one routing key (e.g. order-{{42}} and order-{{42}}-payments), or coordinate the shards with a saga"
        )
    }
}

impl std::error::Error for CrossShard {}

/// Which shard owns each slot, at an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    epoch: u64,
    slots: u32,
    /// Sorted by start; together they cover `0..slots` exactly once.
    ranges: Vec<(SlotRange, ShardId)>,
    /// Shards that own no slot (a shard just added, before slots move to it), sorted.
    empty: Vec<ShardId>,
    /// The voters a shard's group was formed with, sorted, for the shards a split added:
    /// every node opening such a shard configures it with these, so whichever of them forms
    /// the group forms the same one (see [`ClusterMap::founders`]).
    founders: std::collections::BTreeMap<ShardId, Vec<Founder>>,
    /// The nodes holding a shard's replicas (its group's voters), sorted, for the shards whose
    /// replicas moved (`cluster move-shard`); a shard not listed has a replica on every node.
    replicas: std::collections::BTreeMap<ShardId, Vec<u64>>,
    /// The replica moves under way: shard → (from node, to node). The target is among the
    /// shard's replicas already; the source leaves them when the move ends.
    moving: std::collections::BTreeMap<ShardId, (u64, u64, u64)>,
    /// The node each shard should be led by when it can (an operator's choice; the leader
    /// balancer hands the leadership there). Always a node holding a replica: a change of
    /// the shard's replicas without it drops it.
    preferred: std::collections::BTreeMap<ShardId, u64>,
}

impl ClusterMap {
    /// A map from its parts, checked: every slot owned by exactly one range.
    pub fn new(
        epoch: u64,
        slots: u32,
        mut ranges: Vec<(SlotRange, ShardId)>,
    ) -> Result<ClusterMap, MapError> {
        if slots == 0 || slots > SLOTS_MAX {
            return Err(MapError::SlotCount { slots });
        }
        if ranges.is_empty() {
            return Err(MapError::NoShards);
        }
        ranges.sort_by_key(|(r, _)| r.start);
        let mut next = 0;
        for (range, _) in &ranges {
            if range.start >= range.end || range.end > slots {
                return Err(MapError::BadRange {
                    range: *range,
                    slots,
                });
            }
            if range.start < next {
                return Err(MapError::Overlap { slot: range.start });
            }
            if range.start > next {
                return Err(MapError::Gap {
                    range: SlotRange {
                        start: next,
                        end: range.start,
                    },
                });
            }
            next = range.end;
        }
        if next < slots {
            return Err(MapError::Gap {
                range: SlotRange {
                    start: next,
                    end: slots,
                },
            });
        }
        Ok(ClusterMap {
            epoch,
            slots,
            ranges,
            empty: Vec::new(),
            founders: Default::default(),
            replicas: Default::default(),
            moving: Default::default(),
            preferred: Default::default(),
        })
    }

    /// The map with shards that own no slot too (`empty`; owners of a range are ignored there).
    pub fn with_empty(mut self, empty: impl IntoIterator<Item = ShardId>) -> ClusterMap {
        let owners = self.owners();
        self.empty = empty.into_iter().filter(|s| !owners.contains(s)).collect();
        self.empty.sort();
        self.empty.dedup();
        self
    }

    fn owners(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.ranges.iter().map(|(_, s)| *s).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The first map of a new cluster (epoch 1): `shards` shards numbered from 0, each owning
    /// one contiguous range, their sizes within one slot of each other.
    pub fn even(slots: u32, shards: u32) -> Result<ClusterMap, MapError> {
        if shards == 0 {
            return Err(MapError::NoShards);
        }
        if slots == 0 || slots > SLOTS_MAX || shards > slots {
            return Err(MapError::SlotCount { slots });
        }
        let bound = |i: u32| (u64::from(slots) * u64::from(i) / u64::from(shards)) as u32;
        let ranges = (0..shards)
            .map(|i| {
                let range = SlotRange {
                    start: bound(i),
                    end: bound(i + 1),
                };
                (range, ShardId(i))
            })
            .collect();
        ClusterMap::new(1, slots, ranges)
    }

    /// The map's epoch: higher is newer.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The cluster's number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The ranges, sorted by first slot, with their shards.
    pub fn ranges(&self) -> &[(SlotRange, ShardId)] {
        &self.ranges
    }

    /// The shard owning `slot` (a slot past the last is taken modulo the slots).
    pub fn shard_of_slot(&self, slot: u32) -> ShardId {
        let slot = slot % self.slots;
        let i = self
            .ranges
            .partition_point(|(r, _)| r.end <= slot)
            .min(self.ranges.len() - 1);
        self.ranges[i].1
    }

    /// The shard holding `stream`.
    pub fn shard_of(&self, stream: &str) -> ShardId {
        self.shard_of_slot(slot_of(stream, self.slots))
    }

    /// The one shard holding all of `streams` (an `AppendMulti`'s), or the streams with their
    /// shards when they are spread over several.
    pub fn shard_of_all<'a>(
        &self,
        streams: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<ShardId>, CrossShard> {
        let placed: Vec<(&str, ShardId)> =
            streams.into_iter().map(|s| (s, self.shard_of(s))).collect();
        let first = placed.first().map(|(_, shard)| *shard);
        if placed.iter().all(|(_, shard)| Some(*shard) == first) {
            return Ok(first);
        }
        Err(CrossShard {
            streams: placed
                .into_iter()
                .map(|(s, shard)| (s.to_string(), shard))
                .collect(),
        })
    }

    /// The same ranges at the next epoch: a change that moves nothing, recorded so that any
    /// change computed from this map (a move's switch in flight elsewhere) is refused.
    pub fn bumped(&self) -> ClusterMap {
        ClusterMap {
            epoch: self.epoch + 1,
            ..self.clone()
        }
    }

    /// The shards that own no slot (added and not yet given any, or emptied by moves).
    pub fn empty_shards(&self) -> &[ShardId] {
        &self.empty
    }

    /// The id a shard added to this map takes: one past the highest it has.
    pub fn next_shard(&self) -> ShardId {
        ShardId(self.shards().last().map_or(0, |s| s.0 + 1))
    }

    /// The map with shard `shard` added, owning no slot yet (the first step of a split: every
    /// node opens the shard's group, then slots move to it), at the next epoch. `shard` must be
    /// [`ClusterMap::next_shard`].
    pub fn with_shard_added(&self, shard: ShardId) -> Result<ClusterMap, MapError> {
        let next = self.next_shard();
        if shard != next {
            return Err(MapError::NotNextShard { shard, next });
        }
        let mut map = self.bumped();
        map.empty.push(shard);
        Ok(map)
    }

    /// The map after `range` moves to shard `to` (the switch step of a slot-range move): the
    /// next epoch, neighbouring ranges of one shard merged. `to` must already own a range, or be
    /// `to` must be one of the map's shards (a new one is added first:
    /// [`ClusterMap::with_shard_added`]); a shard left without slots stays in the map.
    pub fn with_range_moved(&self, range: SlotRange, to: ShardId) -> Result<ClusterMap, MapError> {
        if range.start >= range.end || range.end > self.slots {
            return Err(MapError::BadRange {
                range,
                slots: self.slots,
            });
        }
        if !self.shards().contains(&to) {
            return Err(MapError::UnknownShard { shard: to });
        }
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for (r, shard) in &self.ranges {
            // The parts of `r` outside `range` stay where they were.
            for part in [
                SlotRange {
                    start: r.start,
                    end: r.end.min(range.start),
                },
                SlotRange {
                    start: r.start.max(range.end),
                    end: r.end,
                },
            ] {
                if part.start < part.end {
                    ranges.push((part, *shard));
                }
            }
        }
        ranges.push((range, to));
        ranges.sort_by_key(|(r, _)| r.start);
        let mut merged: Vec<(SlotRange, ShardId)> = Vec::with_capacity(ranges.len());
        for (r, shard) in ranges {
            match merged.last_mut() {
                Some((last, owner)) if *owner == shard && last.end == r.start => last.end = r.end,
                _ => merged.push((r, shard)),
            }
        }
        let mut next =
            ClusterMap::new(self.epoch + 1, self.slots, merged)?.with_empty(self.shards());
        next.founders = self.founders.clone();
        next.replicas = self.replicas.clone();
        next.moving = self.moving.clone();
        Ok(next)
    }

    /// The node ids shard `shard`'s group was formed with, when recorded (a shard a split
    /// added; `None` for the shards made at creation, formed from the nodes' `--peer`s). Only
    /// these nodes may form the group, each configured with exactly these voters: two nodes
    /// forming it with different voters could elect two leaders. Members that join or leave
    /// later (`cluster add-node`, `remove-node`) change the group, not this record.
    pub fn founders(&self, shard: ShardId) -> Option<&[Founder]> {
        self.founders.get(&shard).map(Vec::as_slice)
    }

    /// The nodes holding shard `shard`'s replicas, when placed (`None`: every node).
    pub fn replicas(&self, shard: ShardId) -> Option<&[u64]> {
        self.replicas.get(&shard).map(Vec::as_slice)
    }

    /// Whether node `node` holds a replica of shard `shard` by this map.
    pub fn holds(&self, node: u64, shard: ShardId) -> bool {
        self.replicas(shard)
            .is_none_or(|nodes| nodes.contains(&node))
    }

    /// The map with shard `shard`'s replicas on `nodes` (a step of a replica move), at the
    /// next epoch. Refused when the shard is not in the map or `nodes` is empty.
    pub fn with_replicas(&self, shard: ShardId, nodes: &[u64]) -> Result<ClusterMap, MapError> {
        self.bumped().placing(shard, nodes)
    }

    /// The map with every shard not placed yet placed on `nodes` (the cluster's nodes of the
    /// moment: where such a shard is), at the next epoch; `None` when every shard is placed.
    pub fn with_unplaced_on(&self, nodes: &[u64]) -> Result<Option<ClusterMap>, MapError> {
        let unplaced: Vec<ShardId> = self
            .shards()
            .into_iter()
            .filter(|s| !self.replicas.contains_key(s))
            .collect();
        if unplaced.is_empty() {
            return Ok(None);
        }
        let mut next = self.bumped();
        for shard in unplaced {
            next = next.placing(shard, nodes)?;
        }
        Ok(Some(next))
    }

    /// The node shard `shard` should be led by when it can, if any.
    pub fn preferred_leader(&self, shard: ShardId) -> Option<u64> {
        self.preferred.get(&shard).copied()
    }

    /// The map with node `node` as shard `shard`'s preferred leader (`None`: no preference),
    /// at the next epoch. Refused when the shard is not in the map or `node` holds no replica
    /// of it.
    pub fn with_preferred_leader(
        &self,
        shard: ShardId,
        node: Option<u64>,
    ) -> Result<ClusterMap, MapError> {
        self.bumped().preferring(shard, node)
    }

    fn preferring(mut self, shard: ShardId, node: Option<u64>) -> Result<ClusterMap, MapError> {
        if !self.shards().contains(&shard) {
            return Err(MapError::UnknownShard { shard });
        }
        match node {
            Some(node) if !self.holds(node, shard) => {
                return Err(MapError::NotAReplica { shard, node })
            }
            Some(node) => self.preferred.insert(shard, node),
            None => self.preferred.remove(&shard),
        };
        Ok(self)
    }

    /// The replica move of shard `shard` under way, `(from, to)`, if any.
    pub fn replica_move(&self, shard: ShardId) -> Option<(u64, u64)> {
        self.moving.get(&shard).map(|&(from, to, _)| (from, to))
    }

    /// The incarnation (see `strata_raft::StrataNode`) node `node`'s replica of shard `shard`
    /// takes if it is created now: the epoch of the map that began the move when `node` is a
    /// replica move's target, else 0 (a founder of the group). Unique per node and group:
    /// epochs only grow, and a move ends before another of the shard begins.
    pub fn incarnation(&self, shard: ShardId, node: u64) -> u64 {
        match self.moving.get(&shard) {
            Some(&(_, to, since)) if to == node => since,
            _ => 0,
        }
    }

    /// The first step of moving shard `shard`'s replica from node `from` to node `to`: the
    /// shard placed on `holders` (its nodes now) and `to`, the move recorded, at the next
    /// epoch. Refused while another replica move of the shard is under way, or when `from` is
    /// not among `holders` or `to` is.
    pub fn with_replica_move_begun(
        &self,
        shard: ShardId,
        holders: &[u64],
        (from, to): (u64, u64),
    ) -> Result<ClusterMap, MapError> {
        if let Some((from, to)) = self.replica_move(shard) {
            return Err(MapError::ReplicaMoving { shard, from, to });
        }
        if !holders.contains(&from) || holders.contains(&to) {
            return Err(MapError::NotAMove { shard, from, to });
        }
        let mut nodes = holders.to_vec();
        nodes.push(to);
        let mut next = self.bumped().placing(shard, &nodes)?;
        let since = next.epoch;
        next.moving.insert(shard, (from, to, since));
        // Its group formed (a leader adds the target) and its membership changes from here:
        // no node may form it from the founders any more.
        next.founders.remove(&shard);
        Ok(next)
    }

    /// The last step of shard `shard`'s replica move: the source no longer among its
    /// replicas, the move no longer recorded, at the next epoch.
    pub fn with_replica_move_ended(&self, shard: ShardId) -> Result<ClusterMap, MapError> {
        self.replica_move_settled(shard, |(from, _)| from)
    }

    /// Shard `shard`'s replica move undone: the target no longer among its replicas, the move
    /// no longer recorded, at the next epoch (the source holds its replica throughout).
    pub fn with_replica_move_cancelled(&self, shard: ShardId) -> Result<ClusterMap, MapError> {
        self.replica_move_settled(shard, |(_, to)| to)
    }

    /// Shard `shard`'s replica move no longer recorded, and the end of it that `dropped` picks
    /// (from the move's `(from, to)`) no longer among the shard's replicas, at the next epoch.
    fn replica_move_settled(
        &self,
        shard: ShardId,
        dropped: fn((u64, u64)) -> u64,
    ) -> Result<ClusterMap, MapError> {
        let gone = dropped(
            self.replica_move(shard)
                .ok_or(MapError::NoReplicaMove { shard })?,
        );
        let nodes: Vec<u64> = self
            .replicas(shard)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|n| *n != gone)
            .collect();
        let mut next = self.bumped().placing(shard, &nodes)?;
        next.moving.remove(&shard);
        Ok(next)
    }

    /// This map, at the same epoch, with shard `shard` placed on `nodes` (a part of a change
    /// built from several, e.g. a split's new shard placed where the split one is).
    pub fn placed_on(self, shard: ShardId, nodes: &[u64]) -> Result<ClusterMap, MapError> {
        self.placing(shard, nodes)
    }

    fn placing(mut self, shard: ShardId, nodes: &[u64]) -> Result<ClusterMap, MapError> {
        if !self.shards().contains(&shard) {
            return Err(MapError::UnknownShard { shard });
        }
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(MapError::NoReplicas { shard });
        }
        if self
            .preferred
            .get(&shard)
            .is_some_and(|p| !nodes.contains(p))
        {
            self.preferred.remove(&shard);
        }
        self.replicas.insert(shard, nodes);
        Ok(self)
    }

    /// This map, at the same epoch, recording `nodes` as shard `shard`'s founders (a part of
    /// a change built from several: the change itself is at the next epoch). Refused when
    /// the shard is not in the map, `nodes` is empty, or an address is empty or holds a space
    /// or comma (the text's separators).
    pub fn with_founders(
        mut self,
        shard: ShardId,
        nodes: &[Founder],
    ) -> Result<ClusterMap, MapError> {
        if !self.shards().contains(&shard) {
            return Err(MapError::UnknownShard { shard });
        }
        let mut nodes = nodes.to_vec();
        nodes.sort_by_key(|f| f.id);
        nodes.dedup_by_key(|f| f.id);
        let bad = |a: &str| a.is_empty() || a.contains(|c: char| c == ',' || c.is_whitespace());
        if let Some(f) = nodes.iter().find(|f| bad(&f.addr) || bad(&f.raft_addr)) {
            return Err(MapError::BadAddress {
                node: f.id,
                addr: format!("{} / {}", f.addr, f.raft_addr),
            });
        }
        if nodes.is_empty() {
            return Err(MapError::NoFounders { shard });
        }
        self.founders.insert(shard, nodes);
        Ok(self)
    }
}

/// First line of a map's text.
const MAP_TEXT_HEADER: &str = "strata-cluster-map 1";

impl ClusterMap {
    /// The map as text, one fact per line (a node keeps its map in a file this way):
    ///
    /// ```text
    /// strata-cluster-map 1
    /// epoch 1
    /// slots 4096
    /// range 0 2048 0        first slot, one past the last, shard
    /// range 2048 4096 1
    /// shard 2               a shard owning no slot (only such shards are listed so)
    /// founders 2 1,A1,R1 2,A2,R2    the voters shard 2's group was formed with: id, client
    ///                               address, Raft address (added shards only)
    /// replicas 2 2 3 4              the nodes holding shard 2 (once placed; else every node)
    /// moving 2 1 4 9                shard 2's replica moving from node 1 to node 4, begun at
    ///                               epoch 9 (the target's incarnation; none: 0)
    /// prefers 2 3                   shard 2 should be led by node 3 when it can
    /// ```
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{MAP_TEXT_HEADER}\nepoch {}\nslots {}\n",
            self.epoch, self.slots
        );
        for (r, shard) in &self.ranges {
            out.push_str(&format!("range {} {} {}\n", r.start, r.end, shard.0));
        }
        for shard in &self.empty {
            out.push_str(&format!("shard {}\n", shard.0));
        }
        for (shard, nodes) in &self.founders {
            out.push_str(&format!("founders {}", shard.0));
            for f in nodes {
                out.push_str(&format!(" {},{},{}", f.id, f.addr, f.raft_addr));
            }
            out.push('\n');
        }
        for (shard, nodes) in &self.replicas {
            out.push_str(&format!("replicas {}", shard.0));
            for node in nodes {
                out.push_str(&format!(" {node}"));
            }
            out.push('\n');
        }
        for (shard, (from, to, since)) in &self.moving {
            out.push_str(&format!("moving {} {from} {to} {since}\n", shard.0));
        }
        for (shard, node) in &self.preferred {
            out.push_str(&format!("prefers {} {node}\n", shard.0));
        }
        out
    }

    /// A map from [`ClusterMap::encode`]'s text, checked as [`ClusterMap::new`] checks.
    pub fn decode(text: &str) -> Result<ClusterMap, MapError> {
        let bad = |line: usize, why: String| MapError::Text { line, why };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        match lines.next() {
            Some((_, MAP_TEXT_HEADER)) => {}
            other => {
                return Err(bad(
                    1,
                    format!(
                        "expected {MAP_TEXT_HEADER:?}, found {:?}",
                        other.map_or("", |(_, l)| l)
                    ),
                ))
            }
        }
        let (mut epoch, mut slots, mut ranges, mut empty) = (None, None, Vec::new(), Vec::new());
        let (mut placed, mut held, mut moving) = (Vec::new(), Vec::new(), Vec::new());
        let mut prefers = Vec::new();
        for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |w: &str| {
                w.parse::<u64>()
                    .map_err(|_| bad(n, format!("{w:?} is not a number")))
            };
            let small = |w: &str| {
                number(w).and_then(|v| {
                    u32::try_from(v).map_err(|_| bad(n, format!("{v} does not fit in 32 bits")))
                })
            };
            match words.as_slice() {
                ["epoch", e] if epoch.is_none() => epoch = Some(number(e)?),
                ["slots", s] if slots.is_none() => slots = Some(small(s)?),
                ["range", start, end, shard] => ranges.push((
                    SlotRange {
                        start: small(start)?,
                        end: small(end)?,
                    },
                    ShardId(small(shard)?),
                )),
                ["shard", shard] => empty.push(ShardId(small(shard)?)),
                ["prefers", shard, node] => {
                    prefers.push((n, ShardId(small(shard)?), number(node)?));
                }
                ["moving", shard, from, to, since @ ..] if since.len() <= 1 => {
                    // A map from before incarnations has no epoch here: its target is 0.
                    let since = since.first().map_or(Ok(0), |w| number(w))?;
                    let shard = ShardId(small(shard)?);
                    moving.push((n, shard, (number(from)?, number(to)?, since)));
                }
                ["replicas", shard, nodes @ ..] => {
                    let nodes: Result<Vec<u64>, MapError> =
                        nodes.iter().map(|w| number(w)).collect();
                    held.push((n, ShardId(small(shard)?), nodes?));
                }
                ["founders", shard, nodes @ ..] => {
                    let founder = |w: &&str| match w.split(',').collect::<Vec<_>>()[..] {
                        [id, addr, raft_addr] => Ok(Founder {
                            id: number(id)?,
                            addr: addr.to_string(),
                            raft_addr: raft_addr.to_string(),
                        }),
                        _ => Err(bad(n, format!("{w:?} is not ID,ADDR,RAFT_ADDR"))),
                    };
                    let nodes: Result<Vec<Founder>, MapError> = nodes.iter().map(founder).collect();
                    placed.push((n, ShardId(small(shard)?), nodes?));
                }
                _ => return Err(bad(n, format!("unexpected {line:?}"))),
            }
        }
        let missing = |what: &str| bad(0, format!("no {what} line"));
        let map = ClusterMap::new(
            epoch.ok_or_else(|| missing("epoch"))?,
            slots.ok_or_else(|| missing("slots"))?,
            ranges,
        )?;
        let mut map = map.with_empty(empty);
        for (n, shard, nodes) in placed {
            if map.founders.contains_key(&shard) {
                return Err(bad(n, format!("{shard}'s founders are listed twice")));
            }
            map = map
                .with_founders(shard, &nodes)
                .map_err(|e| bad(n, e.to_string()))?;
        }
        for (n, shard, nodes) in held {
            if map.replicas.contains_key(&shard) {
                return Err(bad(n, format!("{shard}'s replicas are listed twice")));
            }
            map = map
                .placing(shard, &nodes)
                .map_err(|e| bad(n, e.to_string()))?;
        }
        for (n, shard, (from, to, since)) in moving {
            let placed = map.replicas(shard).unwrap_or_default();
            if !placed.contains(&from) || !placed.contains(&to) || map.moving.contains_key(&shard) {
                return Err(bad(
                    n,
                    format!(
                        "{shard}'s replica move {from} → {to} needs both among its replicas, once"
                    ),
                ));
            }
            map.moving.insert(shard, (from, to, since));
        }
        for (n, shard, node) in prefers {
            if map.preferred.contains_key(&shard) {
                return Err(bad(
                    n,
                    format!("{shard}'s preferred leader is listed twice"),
                ));
            }
            map = map
                .preferring(shard, Some(node))
                .map_err(|e| bad(n, e.to_string()))?;
        }
        Ok(map)
    }

    /// The map's shards, those owning slots and those owning none, in id order.
    pub fn shards(&self) -> Vec<ShardId> {
        let mut ids = self.owners();
        ids.extend(&self.empty);
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_routing_key_is_the_first_non_empty_braced_part() {
        assert_eq!(routing_key("order-{42}-payments"), "42");
        assert_eq!(routing_key("{42}"), "42");
        assert_eq!(routing_key("a{x}b{y}"), "x");
        assert_eq!(routing_key("order-{}-42"), "order-{}-42");
        assert_eq!(routing_key("order-{42"), "order-{42");
        assert_eq!(routing_key("order-42}"), "order-42}");
        assert_eq!(routing_key("plain"), "plain");
        // A consumer group's streams route by the group's name; its registry by itself.
        assert_eq!(routing_key("$group:billing"), "billing");
        assert_eq!(routing_key("$group:billing/p/3"), "billing");
        assert_eq!(routing_key("$group:/p/3"), "$group:/p/3");
        assert_eq!(routing_key("$groups"), "$groups");
        assert_eq!(
            slot_of("$group:billing/members", 4096),
            slot_of("invoices-{billing}", 4096)
        );
        assert_eq!(slot_of("order-{42}", 4096), slot_of("invoice-{42}-x", 4096));
    }

    /// Routing decides where data lives: these values must never change.
    #[test]
    fn the_slot_hash_is_pinned() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        let pinned: Vec<u32> = ["orders-1", "orders-2", "order-{42}-payments", "$all", "é"]
            .iter()
            .map(|s| slot_of(s, SLOTS_DEFAULT))
            .collect();
        let by_hand: Vec<u32> = ["orders-1", "orders-2", "42", "$all", "é"]
            .iter()
            .map(|s| crc32fast::hash(s.as_bytes()) % 4096)
            .collect();
        assert_eq!(pinned, by_hand);
        // Computed independently: Python's zlib.crc32(key.encode()) % 4096.
        assert_eq!(pinned, vec![3526, 3196, 136, 4026, 3390]);
    }

    #[test]
    fn slots_spread_streams_evenly() {
        let mut counts = vec![0u32; 64];
        for i in 0..64_000 {
            counts[slot_of(&format!("stream-{i}"), 64) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }

    #[test]
    fn an_even_map_covers_every_slot_once_in_near_equal_ranges() {
        for (slots, shards) in [(4096, 1), (4096, 8), (4096, 7), (10, 10), (65_536, 3)] {
            let map = ClusterMap::even(slots, shards).unwrap();
            assert_eq!(map.epoch(), 1);
            assert_eq!(map.ranges().len() as u32, shards);
            let sizes: Vec<u32> = map.ranges().iter().map(|(r, _)| r.end - r.start).collect();
            let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
            assert!(spread <= 1, "{slots}/{shards}: {sizes:?}");
            for slot in 0..slots {
                let shard = map.shard_of_slot(slot);
                let (range, _) = map.ranges()[shard.0 as usize];
                assert!(range.start <= slot && slot < range.end);
            }
        }
    }

    #[test]
    fn bad_maps_are_refused_with_the_slots_at_fault() {
        let r = |start, end| SlotRange { start, end };
        let s = ShardId;
        assert_eq!(
            ClusterMap::new(1, 0, vec![(r(0, 1), s(0))]),
            Err(MapError::SlotCount { slots: 0 })
        );
        assert_eq!(ClusterMap::new(1, 8, vec![]), Err(MapError::NoShards));
        assert_eq!(
            ClusterMap::new(1, 8, vec![(r(0, 4), s(0)), (r(5, 8), s(1))]),
            Err(MapError::Gap { range: r(4, 5) })
        );
        assert_eq!(
            ClusterMap::new(1, 8, vec![(r(0, 5), s(0)), (r(4, 8), s(1))]),
            Err(MapError::Overlap { slot: 4 })
        );
        assert_eq!(
            ClusterMap::new(1, 8, vec![(r(0, 6), s(0))]),
            Err(MapError::Gap { range: r(6, 8) })
        );
        assert_eq!(
            ClusterMap::new(1, 8, vec![(r(0, 9), s(0))]),
            Err(MapError::BadRange {
                range: r(0, 9),
                slots: 8
            })
        );
        assert_eq!(
            ClusterMap::even(4, 5),
            Err(MapError::SlotCount { slots: 4 })
        );
        assert_eq!(ClusterMap::even(4, 0), Err(MapError::NoShards));
    }

    #[test]
    fn moving_a_range_reassigns_exactly_its_slots_at_the_next_epoch() {
        let map = ClusterMap::even(4096, 4).unwrap();
        let range = SlotRange {
            start: 1000,
            end: 1100,
        };
        let added = map.with_shard_added(ShardId(4)).unwrap();
        let moved = added.with_range_moved(range, ShardId(4)).unwrap();
        assert_eq!(moved.epoch(), 3);
        for slot in 0..4096 {
            let want = if (1000..1100).contains(&slot) {
                ShardId(4)
            } else {
                map.shard_of_slot(slot)
            };
            assert_eq!(moved.shard_of_slot(slot), want, "slot {slot}");
        }
        // The range spanned shards 0 and 1; moving each part back merges the ranges again.
        let back = moved
            .with_range_moved(
                SlotRange {
                    start: 1000,
                    end: 1024,
                },
                ShardId(0),
            )
            .and_then(|m| {
                m.with_range_moved(
                    SlotRange {
                        start: 1024,
                        end: 1100,
                    },
                    ShardId(1),
                )
            })
            .unwrap();
        assert_eq!(back.ranges(), map.ranges());
        assert_eq!(back.epoch(), 5);
        // The emptied shard stays (its group holds the copies until retention).
        assert_eq!(back.shards(), added.shards());
        // Refused, the map unchanged: an unknown shard, an empty or out-of-bounds range.
        assert_eq!(
            map.with_range_moved(range, ShardId(9)),
            Err(MapError::UnknownShard { shard: ShardId(9) })
        );
        let empty = SlotRange { start: 5, end: 5 };
        assert!(matches!(
            map.with_range_moved(empty, ShardId(1)),
            Err(MapError::BadRange { .. })
        ));
        assert_eq!(map.epoch(), 1);
    }

    #[test]
    fn a_multi_stream_append_across_shards_names_each_streams_shard() {
        let map = ClusterMap::even(4096, 8).unwrap();
        let together = ["order-{7}", "order-{7}-payments", "order-{7}-shipping"];
        assert_eq!(
            map.shard_of_all(together).unwrap(),
            Some(map.shard_of("order-{7}"))
        );
        assert_eq!(map.shard_of_all([]).unwrap(), None);
        // Find two streams on different shards.
        let a = "orders-1";
        let b = (2..)
            .map(|i| format!("orders-{i}"))
            .find(|s| map.shard_of(s) != map.shard_of(a))
            .unwrap();
        let err = map.shard_of_all([a, b.as_str()]).unwrap_err();
        assert_eq!(
            err.streams,
            vec![
                (a.to_string(), map.shard_of(a)),
                (b.clone(), map.shard_of(&b))
            ]
        );
        let text = err.to_string();
        assert!(text.contains(a) && text.contains(&b) && text.contains("routing key"));
    }

    #[test]
    fn a_preferred_leader_holds_a_replica_survives_the_text_and_leaves_with_it() {
        let map = ClusterMap::even(8, 2)
            .unwrap()
            .with_replicas(ShardId(1), &[1, 2, 3])
            .unwrap();
        assert_eq!(map.preferred_leader(ShardId(1)), None);
        let prefers = map.with_preferred_leader(ShardId(1), Some(2)).unwrap();
        assert_eq!(prefers.preferred_leader(ShardId(1)), Some(2));
        assert_eq!(prefers.epoch(), map.epoch() + 1);
        assert_eq!(ClusterMap::decode(&prefers.encode()), Ok(prefers.clone()));
        // Shard 0 is on every node (not placed): any node may be preferred.
        assert!(map.with_preferred_leader(ShardId(0), Some(9)).is_ok());
        assert_eq!(
            map.with_preferred_leader(ShardId(1), Some(4)),
            Err(MapError::NotAReplica {
                shard: ShardId(1),
                node: 4
            })
        );
        assert_eq!(
            map.with_preferred_leader(ShardId(7), Some(1)),
            Err(MapError::UnknownShard { shard: ShardId(7) })
        );
        // Cleared; or dropped when its node's replica moves away, kept when another's does.
        let cleared = prefers.with_preferred_leader(ShardId(1), None).unwrap();
        assert_eq!(cleared.preferred_leader(ShardId(1)), None);
        let begun = prefers
            .with_replica_move_begun(ShardId(1), &[1, 2, 3], (2, 4))
            .unwrap();
        assert_eq!(
            begun.preferred_leader(ShardId(1)),
            Some(2),
            "still a replica"
        );
        let ended = begun.with_replica_move_ended(ShardId(1)).unwrap();
        assert_eq!(ended.preferred_leader(ShardId(1)), None);
        let other = prefers
            .with_replica_move_begun(ShardId(1), &[1, 2, 3], (3, 4))
            .unwrap()
            .with_replica_move_ended(ShardId(1))
            .unwrap();
        assert_eq!(other.preferred_leader(ShardId(1)), Some(2));
        for (text, says) in [
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nreplicas 0 1 2\nprefers 0 3\n",
                "line 6: node 3 holds no replica of shard 0",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nprefers 0 1\nprefers 0 2\n",
                "line 6: shard 0's preferred leader is listed twice",
            ),
        ] {
            let e = ClusterMap::decode(text).unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
    }

    #[test]
    fn a_map_survives_its_text_and_bad_text_is_refused_naming_the_line() {
        let map = ClusterMap::even(4096, 3)
            .unwrap()
            .with_shard_added(ShardId(3))
            .unwrap()
            .with_range_moved(SlotRange { start: 10, end: 20 }, ShardId(3))
            .unwrap();
        let text = map.encode();
        assert_eq!(ClusterMap::decode(&text).unwrap(), map);
        assert_eq!(
            map.shards(),
            vec![ShardId(0), ShardId(1), ShardId(2), ShardId(3)]
        );
        // A shard without slots is listed on a line of its own, and survives the text too.
        let added = map.with_shard_added(ShardId(4)).unwrap();
        assert!(added.encode().ends_with("shard 4\n"), "{}", added.encode());
        assert_eq!(ClusterMap::decode(&added.encode()).unwrap(), added);
        assert_eq!(added.shards().last(), Some(&ShardId(4)));
        // An added shard's founders survive the text, and moves of slots.
        let f = |id: u64| Founder {
            id,
            addr: format!("h:{id}"),
            raft_addr: format!("h:{}", id + 100),
        };
        let placed = added
            .clone()
            .with_founders(ShardId(4), &[f(3), f(1), f(2), f(1)])
            .unwrap();
        assert_eq!(placed.epoch(), added.epoch(), "a part of a change, not one");
        assert_eq!(placed.founders(ShardId(4)), Some(&[f(1), f(2), f(3)][..]));
        assert!(placed
            .encode()
            .ends_with("shard 4\nfounders 4 1,h:1,h:101 2,h:2,h:102 3,h:3,h:103\n"));
        assert_eq!(ClusterMap::decode(&placed.encode()).unwrap(), placed);
        let moved = placed
            .with_range_moved(SlotRange { start: 0, end: 5 }, ShardId(4))
            .unwrap();
        assert_eq!(moved.founders(ShardId(4)), Some(&[f(1), f(2), f(3)][..]));
        assert_eq!(moved.founders(ShardId(0)), None);
        assert_eq!(
            added.clone().with_founders(ShardId(4), &[]),
            Err(MapError::NoFounders { shard: ShardId(4) })
        );
        assert_eq!(
            added.clone().with_founders(ShardId(5), &[f(1)]),
            Err(MapError::UnknownShard { shard: ShardId(5) })
        );
        // A replica move's placement survives the text and later changes, at the next epoch.
        let placed = moved.with_replicas(ShardId(1), &[4, 2, 3]).unwrap();
        assert_eq!(placed.epoch(), moved.epoch() + 1);
        assert_eq!(placed.replicas(ShardId(1)), Some(&[2, 3, 4][..]));
        assert!(placed.holds(4, ShardId(1)) && !placed.holds(1, ShardId(1)));
        assert!(
            placed.holds(1, ShardId(0)),
            "a shard not placed is on every node"
        );
        assert!(placed.encode().ends_with("replicas 1 2 3 4\n"));
        assert_eq!(ClusterMap::decode(&placed.encode()).unwrap(), placed);
        let later = placed.with_shard_added(ShardId(5)).unwrap();
        assert_eq!(later.replicas(ShardId(1)), Some(&[2, 3, 4][..]));
        assert_eq!(
            moved.with_replicas(ShardId(1), &[]),
            Err(MapError::NoReplicas { shard: ShardId(1) })
        );
        assert_eq!(
            moved.with_replicas(ShardId(9), &[1]),
            Err(MapError::UnknownShard { shard: ShardId(9) })
        );
        // A replica move: begun (the target placed too, the move recorded), then ended.
        let begun = placed
            .with_replica_move_begun(ShardId(1), &[2, 3, 4], (2, 1))
            .unwrap();
        assert_eq!(begun.replicas(ShardId(1)), Some(&[1, 2, 3, 4][..]));
        assert_eq!(begun.replica_move(ShardId(1)), Some((2, 1)));
        let founded = placed
            .clone()
            .with_founders(ShardId(1), &[f(2), f(3), f(4)])
            .unwrap();
        let moving = founded
            .with_replica_move_begun(ShardId(1), &[2, 3, 4], (2, 1))
            .unwrap();
        assert_eq!(
            moving.founders(ShardId(1)),
            None,
            "formed: founders forgotten"
        );
        let since = begun.epoch();
        assert!(begun.encode().ends_with(&format!("moving 1 2 1 {since}\n")));
        assert_eq!(ClusterMap::decode(&begun.encode()).unwrap(), begun);
        // The target's new replica is the move's own incarnation; every other one a founder's.
        assert_eq!(begun.incarnation(ShardId(1), 1), since);
        assert_eq!(begun.incarnation(ShardId(1), 2), 0);
        assert_eq!(placed.incarnation(ShardId(1), 1), 0);
        // A map written before incarnations decodes with the target as incarnation 0.
        let legacy = begun
            .encode()
            .replace(&format!("moving 1 2 1 {since}\n"), "moving 1 2 1\n");
        assert_eq!(
            ClusterMap::decode(&legacy)
                .unwrap()
                .incarnation(ShardId(1), 1),
            0
        );
        assert_eq!(
            begun.with_replica_move_begun(ShardId(1), &[1, 3, 4], (3, 5)),
            Err(MapError::ReplicaMoving {
                shard: ShardId(1),
                from: 2,
                to: 1
            }),
            "one at a time per shard"
        );
        assert_eq!(
            placed.with_replica_move_begun(ShardId(1), &[2, 3, 4], (2, 3)),
            Err(MapError::NotAMove {
                shard: ShardId(1),
                from: 2,
                to: 3
            })
        );
        let ended = begun.with_replica_move_ended(ShardId(1)).unwrap();
        assert_eq!(ended.replicas(ShardId(1)), Some(&[1, 3, 4][..]));
        assert_eq!(
            (ended.replica_move(ShardId(1)), ended.epoch()),
            (None, begun.epoch() + 1)
        );
        assert_eq!(
            ended.with_replica_move_ended(ShardId(1)),
            Err(MapError::NoReplicaMove { shard: ShardId(1) })
        );
        // Or cancelled: the target no longer placed, the source kept.
        let cancelled = begun.with_replica_move_cancelled(ShardId(1)).unwrap();
        assert_eq!(cancelled.replicas(ShardId(1)), Some(&[2, 3, 4][..]));
        assert_eq!(
            (cancelled.replica_move(ShardId(1)), cancelled.epoch()),
            (None, begun.epoch() + 1)
        );
        assert_eq!(
            ended.with_replica_move_cancelled(ShardId(1)),
            Err(MapError::NoReplicaMove { shard: ShardId(1) })
        );
        // Placing the rest: every shard not placed yet, at once.
        let all = placed.with_unplaced_on(&[1, 2, 3]).unwrap().unwrap();
        assert_eq!(all.epoch(), placed.epoch() + 1);
        assert_eq!(all.replicas(ShardId(0)), Some(&[1, 2, 3][..]));
        assert_eq!(all.replicas(ShardId(1)), Some(&[2, 3, 4][..]), "kept");
        assert_eq!(all.with_unplaced_on(&[1]), Ok(None));
        let spaced = Founder {
            addr: "a b".into(),
            ..f(1)
        };
        assert!(matches!(
            added.clone().with_founders(ShardId(4), &[spaced]),
            Err(MapError::BadAddress { node: 1, .. })
        ));
        for (text, says) in [
            ("", "line 1"),
            (
                "strata-cluster-map 2\nepoch 1\nslots 1\nrange 0 1 0",
                "line 1",
            ),
            (
                "strata-cluster-map 1\nepoch x\n",
                "line 2: \"x\" is not a number",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 4 0\n",
                "no shard owns slots 4..8",
            ),
            (
                "strata-cluster-map 1\nslots 8\nrange 0 8 0\n",
                "no epoch line",
            ),
            ("strata-cluster-map 1\nepoch 1\nepoch 2\n", "line 3"),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 99999999999\n",
                "32 bits",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nfounders 0\n",
                "line 5: shard 0's group needs at least one founding node",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nfounders 1 2,a,b\n",
                "line 5: shard 1 is not in the cluster map",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nfounders 0 1,a\n",
                "line 5: \"1,a\" is not ID,ADDR,RAFT_ADDR",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nfounders 0 1,a,b\nfounders 0 2,a,b\n",
                "line 6: shard 0's founders are listed twice",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nreplicas 0\n",
                "line 5: shard 0 needs a replica on at least one node",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nreplicas 0 1\nreplicas 0 2\n",
                "line 6: shard 0's replicas are listed twice",
            ),
            (
                "strata-cluster-map 1\nepoch 1\nslots 8\nrange 0 8 0\nreplicas 0 1 2\nmoving 0 1 3\n",
                "line 6: shard 0's replica move 1 → 3 needs both among its replicas",
            ),
        ] {
            let e = ClusterMap::decode(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
