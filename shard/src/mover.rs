//! Slot-range moves: slots `A..B` handed from the shard that owns them (the source, S) to
//! another shard of the node (the target, T), online. The steps, and why each is safe:
//!
//! ```text
//!  1 copy      read S's log from its start, 256 records a step; the events whose stream (or
//!              the stream a `$meta:`/`$snap:`/`$deleted:` stream is about) falls in A..B are
//!              appended to T as copies (`AppendRequest::copy`: same ids, same versions, each
//!              stream's events of a step together, flagged so `$all` skips them; events
//!              already on T are skipped). Passes repeat until one finds little new.
//!  2 fence     a `$fence` event appended to S: from that record on, S refuses every append to
//!              A..B (`Moved`, naming T), decided in S's log order, so nothing S acknowledges
//!              for A..B can follow the fence.              ── the write pause of A..B starts
//!  3 catch up  read S up to and including the fence record: the last of A..B's events.
//!  4 verify    per stream: the events T holds from the first version copied, counted and
//!              checksummed (version, id, type, data, metadata), equal what was read from S.
//!              Most of it is checked before the fence (and once more after a last pass), so
//!              the check inside the pause reads only what step 3 copied.
//!  5 unfence T T's own fences over A..B (it owned them once and moved them away) are lifted.
//!  6 switch    the map with A..B on T (next epoch), written where the node keeps it; calls
//!              route to T from then on.                     ── the write pause ends
//! ```
//!
//! A failure before the switch rolls back: S's fence is lifted by an `$unfence` event (T's
//! copies stay, unrouted and outside `$all`; a later move of the same slots deduplicates
//! against them). A switch whose outcome is unknown (its map may still be installed) keeps the
//! fence. A crash before the switch leaves it too: [`Mover::recover`], run when the node
//! starts (replicated: by the metadata leader, every 2 s), records the map again at the next
//! epoch (so no switch computed before can land), then lifts every fence over slots the map
//! still gives to its own shard. After the
//! switch the move is done; S keeps the fence (a writer routing by an older map is told where
//! the slots went) and its copies of the streams (its `$all` keeps delivering the originals;
//! reads and writes of the streams go to T).
//!
//! Bounds: one move at a time per node; the copy reads [`COPY_RECORDS`] records per step and
//! keeps them in flight to T at once; the verification holds one tally per stream moved (at
//! most [`MOVE_STREAMS_MAX`]); the copy's pace is set by [`crate::throttle::Throttle`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use strata_engine::fence::{Fence, FenceChange, Fences, FENCES_STREAM};
use strata_engine::system::slot_base;
use strata_engine::{
    AppendRequest, Direction, ExpectedVersion, Limits, NewEvent, Position, Reader, Record,
    RecordedEvent, StreamAppend,
};
use strata_proto::routing::{slot_of, ClusterMap, ShardId, SlotRange};

use crate::backend::Backend;
use crate::clock::WallClock;
use crate::ids::IdSource;
use crate::map_cell::MapCell;
use crate::shard_set::ShardSet;
use crate::throttle::Throttle;

/// Most shards a cluster has (each node holds every shard: see `crate::shards`).
pub const SHARDS_MAX: u32 = crate::shards::SHARDS_PER_NODE_MAX;
/// Records read from the source per step of the copy.
pub const COPY_RECORDS: usize = 256;
/// Most streams one move carries (the verification keeps a tally of ~100 bytes per stream).
pub const MOVE_STREAMS_MAX: usize = 1_000_000;
/// Copy passes before the fence: a pass that copies at most [`CATCH_UP_CLOSE_RECORDS`]
/// records ends them, and so does this many (a source written faster than the copy runs is
/// fenced anyway, its write pause then covering the rest).
pub const CATCH_UP_PASSES_MAX: usize = 8;
/// A copy pass this short (in records) is close enough to the source's end to fence.
pub const CATCH_UP_CLOSE_RECORDS: u64 = 64;
/// How long the last catch-up waits for the fence record to become readable.
const FENCE_VISIBLE_WAIT: Duration = Duration::from_secs(10);
/// Events of a stream read per step of the verification.
const VERIFY_EVENTS: usize = 512;
/// How long one of the move's own writes (a copy, a fence) may wait for its shard's leader
/// (an election, a leader that moved) before the move fails and rolls back.
pub const MOVE_WRITE_WAIT: Duration = Duration::from_secs(30);

/// Installs the next map: where the node keeps it and what it routes by. The switch is a
/// move's commit point, so its failure says whether the map may still be installed.
pub type Switch =
    Arc<dyn Fn(ClusterMap) -> BoxFuture<'static, Result<(), SwitchError>> + Send + Sync>;

pub use crate::map_cell::SwitchError;

/// Installs a map that adds shard `ShardId` (owning no slot): answers once this node serves the
/// shard and, replicated, its group has formed and has a leader.
pub type AddShard =
    Arc<dyn Fn(ClusterMap, ShardId) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copying the slots' streams while the source still takes writes.
    Copying,
    /// The source refuses the slots' writes; the last events are being copied and checked.
    Fenced,
    /// The map routes the slots to the target.
    Done,
    /// Stopped and rolled back (the error says why).
    Failed,
}

impl Step {
    /// Its name in status answers.
    pub fn name(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::Fenced => "fenced",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
}

/// A move's progress (the latest move of the node, running or ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveStatus {
    /// The slots moved.
    pub range: SlotRange,
    /// From which shard, to which.
    pub from: ShardId,
    pub to: ShardId,
    /// Where it is.
    pub step: Step,
    /// The source log's end when the move began (what the first pass reads).
    pub source_bytes: u64,
    /// How far in the source's log the copy has read.
    pub scanned_bytes: u64,
    /// Events and bytes (event data and metadata) copied to the target, streams among them.
    pub copied_events: u64,
    pub copied_bytes: u64,
    pub streams: u64,
    /// Time from the fence to the switch: how long writes to the slots waited.
    pub pause_us: u64,
    /// Time since the move began (until it ended).
    pub elapsed_us: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a move was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The request is impossible as asked; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Another move is running; nothing changed.
    #[error("{0}")]
    Busy(String),
    /// The move stopped and was rolled back (the map unchanged).
    #[error("the move failed and was rolled back: {0}")]
    Failed(String),
    /// The switch's outcome is unknown (the map may still be installed): the source's fence
    /// stays until recovery decides — recording the map again at the next epoch (so the
    /// switch can no longer land) lifts it; a switch that landed keeps it.
    #[error("the move's switch is undecided; its slots stay fenced until recovery decides: {0}")]
    Undecided(String),
}

/// A move decided valid: which shards, and the range.
#[derive(Debug, Clone, Copy)]
struct Plan {
    range: SlotRange,
    slots: u32,
    from: ShardId,
    to: ShardId,
}

/// Runs the node's slot-range moves (one at a time).
#[derive(Clone)]
pub struct Mover {
    inner: Arc<Inner>,
}

struct Inner {
    shards: ShardSet,
    map: MapCell,
    switch: Switch,
    add_shard: AddShard,
    /// Held while a split adds its shard (one split at a time).
    splitting: tokio::sync::Mutex<()>,
    clock: Arc<dyn WallClock>,
    ids: Arc<dyn IdSource>,
    throttle: Throttle,
    status: Mutex<Option<(MoveStatus, Instant)>>,
    /// Held by a running move and by [`Mover::recover`]: never both at once.
    running: tokio::sync::Mutex<()>,
    /// Stale fences [`Mover::recover_abandoned`] has seen, by shard and `$fences` version:
    /// since when.
    abandoned: Mutex<HashMap<(ShardId, Option<u64>), tokio::time::Instant>>,
}

impl std::fmt::Debug for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mover")
            .field("shards", &self.inner.shards.ids())
            .field("status", &self.status())
            .finish()
    }
}

/// What a move's copy has sent: per stream, and how far in the target's log.
#[derive(Debug, Default)]
struct Copied {
    tallies: HashMap<String, Tally>,
    /// The position of the last copy's record in the target's log.
    written_to: Position,
}

/// Per stream: what the copy sent, to check against what the target holds.
#[derive(Debug, Clone)]
struct Tally {
    first: u64,
    events: u64,
    crc: crc32fast::Hasher,
    /// After the last version counted (verification goes on from there).
    next: Option<u64>,
}

fn feed(crc: &mut crc32fast::Hasher, version: u64, e: &NewEvent) {
    crc.update(&version.to_le_bytes());
    crc.update(e.id.as_bytes());
    for part in [e.event_type.as_bytes(), &e.data, &e.metadata] {
        crc.update(&(part.len() as u64).to_le_bytes());
        crc.update(part);
    }
}

fn new_event(e: &RecordedEvent) -> NewEvent {
    NewEvent {
        id: e.id,
        event_type: e.event_type.clone(),
        data: e.data.clone(),
        metadata: e.metadata.clone(),
    }
}

/// Whether `stream`'s events move with `range` (of `slots`): its own slot, or for a stream
/// about another (`$meta:S`, …) S's, for a consumer group's its group's; never a shard's own
/// system streams.
fn moves(stream: &str, range: SlotRange, slots: u32) -> bool {
    slot_base(stream).is_some_and(|base| {
        let slot = slot_of(base, slots);
        range.start <= slot && slot < range.end
    })
}

/// The copies of a step's moving events (`records` in log order): each stream's events in
/// one part while their versions run on, parts of distinct streams in one request while the
/// limits allow — so a step is a few records on the target, not one per source record (a
/// replicated target commits each record in a Raft round). A stream seen again after a gap in
/// its versions (reclaimed at the source) starts a new request. Retried or merged differently
/// the next time, the events already on the target are skipped there.
fn copies_of(
    records: &[Record],
    range: SlotRange,
    slots: u32,
    limits: &Limits,
) -> Vec<AppendRequest> {
    let mut out = Vec::new();
    let mut parts: Vec<StreamAppend> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let (mut events, mut bytes) = (0usize, 0usize);
    let mut timestamp_us = 0;
    let flush = |parts: &mut Vec<StreamAppend>,
                 at: &mut HashMap<String, usize>,
                 ts: u64,
                 out: &mut Vec<AppendRequest>| {
        if !parts.is_empty() {
            out.push(AppendRequest {
                streams: std::mem::take(parts),
                conditions: Vec::new(),
                timestamp_us: ts,
                copy: true,
            });
        }
        at.clear();
    };
    for record in records {
        for e in record
            .events
            .iter()
            .filter(|e| moves(&e.stream, range, slots))
        {
            let size = e.stream.len() + e.event_type.len() + e.data.len() + e.metadata.len() + 64;
            let next = at.get(&e.stream).and_then(|&i| parts.get(i)).map(|p| {
                let first = match p.expected {
                    ExpectedVersion::Exact(v) => v + 1,
                    _ => 0,
                };
                first + p.events.len() as u64
            });
            let fits = events < limits.batch_events_max
                && bytes + size <= limits.batch_bytes_max
                && (next.is_some() || parts.len() < limits.batch_streams_max);
            if !fits || next.is_some_and(|n| n != e.version) {
                flush(&mut parts, &mut at, timestamp_us, &mut out);
                (events, bytes) = (0, 0);
            }
            timestamp_us = record.timestamp_us;
            events += 1;
            bytes += size;
            match at.get(&e.stream) {
                Some(&i) => parts[i].events.push(new_event(e)),
                None => {
                    at.insert(e.stream.clone(), parts.len());
                    parts.push(StreamAppend {
                        stream: e.stream.clone(),
                        expected: match e.version {
                            0 => ExpectedVersion::NoStream,
                            v => ExpectedVersion::Exact(v - 1),
                        },
                        events: vec![new_event(e)],
                    });
                }
            }
        }
    }
    flush(&mut parts, &mut at, timestamp_us, &mut out);
    out
}

/// The fences recorded in `reader`'s `$fences` stream.
fn fences_of(reader: &Reader) -> strata_engine::Result<Fences> {
    strata_engine::fence::read_fences(reader)
}

/// The version of `$fences`' last event (`None`: none).
fn fences_version(reader: &Reader) -> strata_engine::Result<Option<u64>> {
    let last = reader.read_stream(FENCES_STREAM, None, Direction::Backwards, 1)?;
    Ok(last.first().map(|e| e.version))
}

/// A fence over slots the map gives to its shard, and the shard's `$fences` version when it
/// was read.
#[derive(Debug, Clone, Copy)]
struct StaleFence {
    shard: ShardId,
    version: Option<u64>,
    fence: Fence,
}

/// How long a stale fence stays unchanged before a node other than the metadata leader lifts
/// it ([`Mover::recover_abandoned`]): far longer than a running move keeps its fence.
pub const ABANDONED_FENCE_GRACE: Duration = Duration::from_secs(30);

/// Refuses while `map` records a replica move of `shard`: one move at a time per shard (a
/// slot move writes through the shard's group, whose membership such a move changes).
fn no_replica_move(map: &ClusterMap, shard: ShardId) -> Result<(), MoveError> {
    match map.replica_move(shard) {
        Some((from, to)) => Err(MoveError::Busy(format!(
            "{shard}'s replica is moving from node {from} to node {to}: one move at a time per shard (let it finish, or cancel it: `strata cluster move-shard {} --cancel`)",
            shard.0
        ))),
        None => Ok(()),
    }
}

/// The slots a split of `shard` at `at` moves: from `at` to the end of `shard`'s range that
/// holds it (`at` strictly inside, so slots stay on both sides); without `at`, the upper half
/// of `shard`'s largest range.
fn split_range(map: &ClusterMap, shard: ShardId, at: Option<u32>) -> Result<SlotRange, MoveError> {
    if !map.shards().contains(&shard) {
        let have: Vec<String> = map.shards().iter().map(|s| s.0.to_string()).collect();
        return Err(MoveError::Invalid(format!(
            "no {shard}: the cluster has shards {}",
            have.join(", ")
        )));
    }
    let ranges: Vec<SlotRange> = map
        .ranges()
        .iter()
        .filter(|(_, s)| *s == shard)
        .map(|(r, _)| *r)
        .collect();
    let listed = || {
        let all: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    };
    let (range, at) = match at {
        Some(at) => {
            let Some(r) = ranges.iter().find(|r| r.start < at && at < r.end) else {
                return Err(MoveError::Invalid(format!(
                    "slot {at} is not inside one of {shard}'s ranges ({}): a split leaves slots on both sides",
                    listed()
                )));
            };
            (*r, at)
        }
        None => {
            let largest = ranges.iter().max_by_key(|r| (r.end - r.start, r.start));
            match largest {
                Some(r) if r.end - r.start >= 2 => (*r, r.start + (r.end - r.start) / 2),
                _ => {
                    return Err(MoveError::Invalid(format!(
                        "{shard} has no range of two slots or more to split (its slots: {})",
                        listed()
                    )))
                }
            }
        }
    };
    Ok(SlotRange {
        start: at,
        end: range.end,
    })
}

/// The changes that lift `shard`'s fence `f` over the slots `map` gives to `shard`: the fence
/// lifted, and its parts owned by other shards fenced again, each naming its owner.
fn refence(map: &ClusterMap, shard: ShardId, f: Fence) -> Vec<FenceChange> {
    let mut changes = vec![FenceChange::Lift {
        slots: f.slots,
        start: f.start,
        end: f.end,
    }];
    for (r, owner) in map.ranges() {
        let (start, end) = (r.start.max(f.start), r.end.min(f.end));
        if *owner != shard && start < end {
            changes.push(FenceChange::Set(Fence {
                start,
                end,
                to: owner.0,
                ..f
            }));
        }
    }
    changes
}

/// Whether `map` gives every slot of `range` to `shard`.
fn owns(map: &ClusterMap, range: SlotRange, shard: ShardId) -> bool {
    map.ranges()
        .iter()
        .filter(|(r, _)| r.start < range.end && range.start < r.end)
        .all(|(_, s)| *s == shard)
}

impl Mover {
    /// A mover over the node's `shards`, routing by `map`, installing each next map by
    /// `switch` (and one that adds a shard by `add_shard`).
    pub fn new(
        shards: ShardSet,
        map: MapCell,
        (switch, add_shard): (Switch, AddShard),
        clock: Arc<dyn WallClock>,
        ids: Arc<dyn IdSource>,
        throttle: Throttle,
    ) -> Mover {
        Mover {
            inner: Arc::new(Inner {
                shards,
                map,
                switch,
                add_shard,
                splitting: tokio::sync::Mutex::new(()),
                clock,
                ids,
                throttle,
                status: Mutex::new(None),
                running: tokio::sync::Mutex::new(()),
                abandoned: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The latest move's progress (running or ended).
    pub fn status(&self) -> Option<MoveStatus> {
        let held = strata_engine::sync::lock(&self.inner.status);
        held.as_ref().map(|(s, began)| {
            let mut s = s.clone();
            if matches!(s.step, Step::Copying | Step::Fenced) {
                s.elapsed_us = began.elapsed().as_micros() as u64;
            }
            s
        })
    }

    /// The pace keeper of the copies (its state is shown as metrics).
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    fn backend(&self, id: ShardId) -> Result<Backend, MoveError> {
        self.inner
            .shards
            .backend(id)
            .ok_or_else(|| {
                MoveError::Invalid(format!(
                    "{id} has no replica on this node, which runs slot-range moves (the metadata group's leader on a cluster): a move needs both shards here — move a replica of {id} to it first (`strata cluster move-shard`)"
                ))
            })
    }

    /// Checks a move of `range` to `to` against the map now.
    fn plan(&self, range: SlotRange, to: ShardId) -> Result<Plan, MoveError> {
        let map = self
            .inner
            .map
            .routable()
            .map_err(|why| MoveError::Invalid(why.to_string()))?;
        let slots = map.slots();
        if range.start >= range.end || range.end > slots {
            return Err(MoveError::Invalid(format!(
                "{range} is not a range of this cluster's {slots} slots (start < end ≤ {slots})"
            )));
        }
        let owners: Vec<ShardId> = map
            .ranges()
            .iter()
            .filter(|(r, _)| r.start < range.end && range.start < r.end)
            .map(|(_, s)| *s)
            .collect();
        let from = match owners.as_slice() {
            [one, rest @ ..] if rest.iter().all(|s| s == one) => *one,
            _ => {
                let names: Vec<String> = owners.iter().map(|s| s.0.to_string()).collect();
                return Err(MoveError::Invalid(format!(
                    "{range} span shards {}: move one shard's slots at a time",
                    names.join(", ")
                )));
            }
        };
        if from == to {
            return Err(MoveError::Invalid(format!("{range} are on {to} already")));
        }
        for shard in [from, to] {
            no_replica_move(&map, shard)?;
        }
        if self.backend(to).is_err() || !map.shards().contains(&to) {
            let held: Vec<String> = map.shards().iter().map(|s| s.0.to_string()).collect();
            return Err(MoveError::Invalid(format!(
                "{to} is not a shard of this cluster (it has shards {}); `split-shard` adds one",
                held.join(", ")
            )));
        }
        map.with_range_moved(range, to)
            .map_err(|e| MoveError::Invalid(e.to_string()))?;
        Ok(Plan {
            range,
            slots,
            from,
            to,
        })
    }

    /// Takes the one move slot for `plan`, or says which move holds it.
    fn begin(&self, plan: &Plan) -> Result<(), MoveError> {
        self.check_idle()?;
        let mut held = strata_engine::sync::lock(&self.inner.status);
        let source_bytes = self
            .backend(plan.from)
            .map(|b| b.reader().end())
            .unwrap_or(0);
        *held = Some((
            MoveStatus {
                range: plan.range,
                from: plan.from,
                to: plan.to,
                step: Step::Copying,
                source_bytes,
                scanned_bytes: 0,
                copied_events: 0,
                copied_bytes: 0,
                streams: 0,
                pause_us: 0,
                elapsed_us: 0,
                error: None,
            },
            Instant::now(),
        ));
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut MoveStatus)) {
        if let Some((s, _)) = strata_engine::sync::lock(&self.inner.status).as_mut() {
            f(s);
        }
    }

    /// Starts moving `range` to shard `to` in the background; answers once the move is
    /// checked and begun (its progress is [`Mover::status`]).
    pub fn start(&self, range: SlotRange, to: ShardId) -> Result<MoveStatus, MoveError> {
        let plan = self.plan(range, to)?;
        self.begin(&plan)?;
        let mover = self.clone();
        tokio::spawn(async move {
            let _ = mover.execute(plan).await;
        });
        self.status()
            .ok_or_else(|| MoveError::Failed("the move's status went missing".into()))
    }

    /// Moves `range` to shard `to`; answers when done (or failed and rolled back).
    pub async fn run(&self, range: SlotRange, to: ShardId) -> Result<MoveStatus, MoveError> {
        let plan = self.plan(range, to)?;
        self.begin(&plan)?;
        self.execute(plan).await
    }

    /// Splits shard `shard`: its slots from `at` to the end of the range holding `at` (default:
    /// the upper half of its largest range) move to a shard that owns none — one left empty
    /// by an earlier split that stopped, or a new one, added to the map and opened on every
    /// node first. Answers once the move has begun, like [`Mover::start`].
    pub async fn split(&self, shard: ShardId, at: Option<u32>) -> Result<MoveStatus, MoveError> {
        let (range, to) = self.split_target(shard, at).await?;
        self.start(range, to)
    }

    /// A split's first step: the slots it moves and the shard owning none that takes them
    /// (added to the map, opened on every node, its group formed, when there is none). The
    /// move is the caller's ([`Mover::start`] or [`Mover::run`]).
    pub async fn split_target(
        &self,
        shard: ShardId,
        at: Option<u32>,
    ) -> Result<(SlotRange, ShardId), MoveError> {
        let _splitting = self.inner.splitting.lock().await;
        self.check_idle()?;
        let map = self
            .inner
            .map
            .routable()
            .map_err(|why| MoveError::Invalid(why.to_string()))?;
        let range = split_range(&map, shard, at)?;
        no_replica_move(&map, shard)?;
        if let Some(empty) = map.empty_shards().iter().find(|s| **s != shard) {
            return Ok((range, *empty));
        }
        let next = map.next_shard();
        if map.shards().len() >= SHARDS_MAX as usize {
            return Err(MoveError::Invalid(format!(
                "the cluster has {} shards, the most a node holds: move slots between them instead",
                map.shards().len()
            )));
        }
        let mut added = map
            .with_shard_added(next)
            .map_err(|e| MoveError::Invalid(e.to_string()))?;
        // The new shard's replicas are where the shard split is (its slots' data is there).
        if let Some(nodes) = map.replicas(shard) {
            added = added
                .placed_on(next, nodes)
                .map_err(|e| MoveError::Invalid(e.to_string()))?;
        }
        (self.inner.add_shard)(added, next)
            .await
            .map_err(|e| MoveError::Failed(format!("adding {next}: {e}")))?;
        Ok((range, next))
    }

    /// Forms the groups of shards a split added whose splitter stopped before forming them:
    /// a shard of `map` owning no slot whose replica here has never had a membership (the
    /// group was never formed) is formed from here. (Run by recovery, on one node: a node
    /// added to the cluster joins existing groups as a learner and never forms one — but
    /// should it lead the metadata group before it joins an empty shard's group, it would
    /// form a second one, so only a founder the map records forms it, and a shard without
    /// recorded founders is never formed here; see ARCHITECTURE.md, "splits".)
    async fn form_added(&self, map: &ClusterMap) {
        for shard in map.empty_shards() {
            let Some(Backend::Replicated(replica)) = self.inner.shards.backend(*shard) else {
                continue;
            };
            // Only a founder forms it, configured as every founder is (see `ClusterMap::founders`).
            let founder =
                |f: &[strata_proto::routing::Founder]| f.iter().any(|f| f.id == replica.node_id());
            if !map.founders(*shard).is_some_and(founder) {
                continue;
            }
            match replica.form_if_new().await {
                Ok(true) => tracing::warn!(
                    shard = shard.0,
                    "formed the group of a shard a stopped split added"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = shard.0, error = %e, "forming an added shard's group")
                }
            }
        }
    }

    /// Refuses while a move runs (see [`Mover::begin`], which takes the slot).
    fn check_idle(&self) -> Result<(), MoveError> {
        let held = strata_engine::sync::lock(&self.inner.status);
        match held.as_ref() {
            Some((s, _)) if matches!(s.step, Step::Copying | Step::Fenced) => {
                Err(MoveError::Busy(format!(
                    "a move is in progress ({} from {} to {}, {}): one at a time",
                    s.range,
                    s.from,
                    s.to,
                    s.step.name()
                )))
            }
            _ => Ok(()),
        }
    }

    async fn execute(&self, plan: Plan) -> Result<MoveStatus, MoveError> {
        let _running = self.inner.running.lock().await;
        let began = Instant::now();
        let mut fence_set = None;
        let outcome = self.steps(plan, &mut fence_set).await;
        if let Err(e) = &outcome {
            tracing::warn!(range = %plan.range, from = %plan.from, to = %plan.to, error = %e, "slot-range move failed; rolling back");
            // An undecided switch may still land: lifting the fence then would let the source
            // take writes the new owner never sees. Recovery decides it.
            if let (Some(fence), false) = (fence_set, matches!(e, MoveError::Undecided(_))) {
                if let Err(lift) = self.lift(plan.from, fence).await {
                    tracing::error!(error = %lift, "lifting the fence failed; it is lifted when the node next starts");
                }
            }
        }
        self.update(|s| {
            s.elapsed_us = began.elapsed().as_micros() as u64;
            match &outcome {
                Ok(()) => s.step = Step::Done,
                Err(e) => {
                    s.step = Step::Failed;
                    s.error = Some(e.to_string());
                }
            }
        });
        outcome?;
        let status = self
            .status()
            .ok_or_else(|| MoveError::Failed("the move's status went missing".into()))?;
        tracing::info!(range = %plan.range, from = %plan.from, to = %plan.to, events = status.copied_events, pause_us = status.pause_us, "slot-range move done");
        Ok(status)
    }

    async fn steps(&self, plan: Plan, fence_set: &mut Option<Fence>) -> Result<(), MoveError> {
        let (source, target) = (&self.backend(plan.from)?, &self.backend(plan.to)?);
        // The foreground's latency before the copy is the baseline the pace is set against.
        self.inner.throttle.begin().await;
        let mut copied = Copied::default();
        let mut at: Position = 0;
        for _ in 0..CATCH_UP_PASSES_MAX {
            let copied = self
                .copy_pass(source, target, &plan, &mut at, None, &mut copied)
                .await?;
            if copied <= CATCH_UP_CLOSE_RECORDS {
                break;
            }
        }
        // Checked before the fence (most of the reading), then caught up and checked again
        // for what came meanwhile, so the fenced part is short.
        let mut checked = HashMap::new();
        self.verify(target, &copied, &mut checked).await?;
        self.copy_pass(source, target, &plan, &mut at, None, &mut copied)
            .await?;
        self.verify(target, &copied, &mut checked).await?;
        let fence = Fence {
            slots: plan.slots,
            start: plan.range.start,
            end: plan.range.end,
            to: plan.to.0,
        };
        let fenced = Instant::now();
        let fence_at = self.record(plan.from, FenceChange::Set(fence)).await?;
        *fence_set = Some(fence);
        self.update(|s| s.step = Step::Fenced);
        self.copy_pass(source, target, &plan, &mut at, Some(fence_at), &mut copied)
            .await?;
        self.verify(target, &copied, &mut checked).await?;
        let map = self.inner.map.get();
        if !owns(&map, plan.range, plan.from) {
            return Err(MoveError::Failed(format!(
                "the map changed during the move ({} no longer on {})",
                plan.range, plan.from
            )));
        }
        let next = map
            .with_range_moved(plan.range, plan.to)
            .map_err(|e| MoveError::Failed(e.to_string()))?;
        (self.inner.switch)(next).await.map_err(|e| match e {
            SwitchError::Refused(why) => MoveError::Failed(format!("switching the map: {why}")),
            SwitchError::Unknown(why) => MoveError::Undecided(format!("switching the map: {why}")),
        })?;
        // Only now may the target take the slots' writes. Its fences over them (from a move
        // away from it) also stop routers on maps older than that move; lifted before the
        // switch, a router still on such a map wrote to the target while the source owned
        // the slots, and a move that then stopped lost those writes. Past the switch the
        // move is done whatever happens here: a fence left is stale, and recovery lifts it.
        if let Err(e) = self.unfence_target(target, &plan).await {
            tracing::warn!(shard = plan.to.0, error = %e, "lifting the target's old fences after the switch failed; recovery lifts them");
        }
        self.update(|s| s.pause_us = fenced.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Copies from `at` to the source's end as the pass starts (past `until` when given: the
    /// fence record, which may take a moment to become readable); returns the records copied.
    async fn copy_pass(
        &self,
        source: &Backend,
        target: &Backend,
        plan: &Plan,
        at: &mut Position,
        until: Option<Position>,
        sent: &mut Copied,
    ) -> Result<u64, MoveError> {
        let limits = source.reader().limits().clone();
        // A pass ends at the log's end as it starts (or past the fence): a source written
        // faster than the copy runs cannot keep it going for ever.
        let end = source.reader().end();
        let mut copied = 0;
        let waited = Instant::now();
        loop {
            if until.is_none() && *at >= end {
                return Ok(copied);
            }
            let from = *at;
            let batch = source
                .read(move |r| r.read_all(from, COPY_RECORDS))
                .await
                .map_err(|s| {
                    MoveError::Failed(format!(
                        "reading {}'s log at {from}: {}",
                        plan.from,
                        s.message()
                    ))
                })?;
            if batch.records.is_empty() {
                match until {
                    Some(fence) if *at <= fence => {
                        if waited.elapsed() > FENCE_VISIBLE_WAIT {
                            return Err(MoveError::Failed(format!(
                                "the fence at {fence} in {} was not readable within {FENCE_VISIBLE_WAIT:?}",
                                plan.from
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    _ => return Ok(copied),
                }
            }
            let copies = copies_of(&batch.records, plan.range, plan.slots, &limits);
            let mut bytes = 0u64;
            for request in &copies {
                bytes += self.tally(request, &mut sent.tallies)?;
            }
            let answers = target
                .append_all_at_leader(copies, MOVE_WRITE_WAIT)
                .await
                .map_err(|e| MoveError::Failed(format!("copying to {}: {e}", plan.to)))?;
            let last = answers.iter().map(|a| a.position).max();
            sent.written_to = sent.written_to.max(last.unwrap_or(0));
            copied += batch.records.len() as u64;
            *at = batch.next;
            let (streams, next) = (sent.tallies.len() as u64, batch.next);
            self.update(|s| {
                s.scanned_bytes = next;
                s.copied_bytes += bytes;
                s.streams = streams;
            });
            self.inner.throttle.pace(bytes).await;
        }
    }

    /// Counts a copy into the tallies; returns its bytes (data and metadata).
    fn tally(
        &self,
        request: &AppendRequest,
        tallies: &mut HashMap<String, Tally>,
    ) -> Result<u64, MoveError> {
        let mut bytes = 0;
        let mut events = 0;
        for part in &request.streams {
            let first = match part.expected {
                ExpectedVersion::Exact(v) => v + 1,
                _ => 0,
            };
            if !tallies.contains_key(&part.stream) && tallies.len() >= MOVE_STREAMS_MAX {
                return Err(MoveError::Failed(format!(
                    "more than {MOVE_STREAMS_MAX} streams in the range: move a smaller one"
                )));
            }
            let tally = tallies.entry(part.stream.clone()).or_insert_with(|| Tally {
                first,
                events: 0,
                crc: crc32fast::Hasher::new(),
                next: None,
            });
            for (k, e) in part.events.iter().enumerate() {
                feed(&mut tally.crc, first + k as u64, e);
                tally.events += 1;
                tally.next = Some(first + k as u64 + 1);
                events += 1;
                bytes += (e.data.len() + e.metadata.len()) as u64;
            }
        }
        self.update(|s| s.copied_events += events);
        Ok(bytes)
    }

    /// Checks that `target` holds, per stream, exactly what the copy read from the source,
    /// going on from what earlier calls checked (`done`): only the events copied since are
    /// read, so the check after the fence — inside the write pause — reads little.
    async fn verify(
        &self,
        target: &Backend,
        sent: &Copied,
        done: &mut HashMap<String, Tally>,
    ) -> Result<(), MoveError> {
        // Read here: a replica of the target may not have applied the last copies yet.
        let waited = Instant::now();
        while sent.written_to > 0 && target.reader().end() <= sent.written_to {
            if waited.elapsed() > FENCE_VISIBLE_WAIT {
                return Err(MoveError::Failed(format!(
                    "this node's replica of the target did not apply the copies (to {}) within {FENCE_VISIBLE_WAIT:?}",
                    sent.written_to
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for (stream, tally) in &sent.tallies {
            let checked = done.get(stream).filter(|d| d.events == tally.events);
            if checked.is_some() {
                continue;
            }
            let start = done.remove(stream).unwrap_or(Tally {
                first: tally.first,
                events: 0,
                crc: crc32fast::Hasher::new(),
                next: None,
            });
            // Versions may have gaps (reclaimed at the source): go on after the last one read.
            let (name, from) = (stream.clone(), start.next.unwrap_or(tally.first));
            let held = target
                .read(move |r| {
                    let mut held = start;
                    let mut from = from;
                    loop {
                        let page =
                            r.read_stream(&name, Some(from), Direction::Forwards, VERIFY_EVENTS)?;
                        for e in &page {
                            feed(&mut held.crc, e.version, &new_event(e));
                            held.events += 1;
                            held.next = Some(e.version + 1);
                        }
                        match page.last() {
                            Some(e) if page.len() == VERIFY_EVENTS => from = e.version + 1,
                            _ => return Ok(held),
                        }
                    }
                })
                .await
                .map_err(|s| MoveError::Failed(format!("verifying {stream}: {}", s.message())))?;
            let (got, want) = (held.crc.clone().finalize(), tally.crc.clone().finalize());
            if (held.events, got) != (tally.events, want) {
                return Err(MoveError::Failed(format!(
                    "verifying {stream:?}: the target holds {} events from version {} (checksum {got:08x}), the source {} ({want:08x})",
                    held.events, tally.first, tally.events
                )));
            }
            done.insert(stream.clone(), held);
        }
        Ok(())
    }

    /// Appends one fence change to `shard`'s `$fences`; returns the record's position.
    async fn record(&self, shard: ShardId, change: FenceChange) -> Result<Position, MoveError> {
        self.record_all(shard, vec![change]).await
    }

    async fn record_all(
        &self,
        shard: ShardId,
        changes: Vec<FenceChange>,
    ) -> Result<Position, MoveError> {
        self.record_expecting(shard, changes, ExpectedVersion::Any)
            .await
    }

    /// Appends `changes` to `shard`'s `$fences` as one record, the stream `expected` so.
    async fn record_expecting(
        &self,
        shard: ShardId,
        changes: Vec<FenceChange>,
        expected: ExpectedVersion,
    ) -> Result<Position, MoveError> {
        let events = changes
            .iter()
            .map(|c| {
                let (event_type, data) = c.encode();
                NewEvent {
                    id: self.inner.ids.new_id(),
                    event_type: event_type.into(),
                    data: data.into(),
                    metadata: bytes::Bytes::new(),
                }
            })
            .collect();
        let request =
            AppendRequest::single(FENCES_STREAM, expected, events, self.inner.clock.now_us());
        let answer = self
            .backend(shard)?
            .append_all_at_leader(vec![request], MOVE_WRITE_WAIT)
            .await
            .map_err(|e| MoveError::Failed(format!("writing {shard}'s fences: {e}")))?;
        answer
            .first()
            .map(|a| a.position)
            .ok_or_else(|| MoveError::Failed(format!("{shard} did not answer the fence")))
    }

    async fn lift(&self, shard: ShardId, fence: Fence) -> Result<Position, MoveError> {
        self.record(
            shard,
            FenceChange::Lift {
                slots: fence.slots,
                start: fence.start,
                end: fence.end,
            },
        )
        .await
    }

    /// Lifts the target's fences over the range (from moves away from it), keeping the parts
    /// of them outside the range fenced as they were.
    async fn unfence_target(&self, target: &Backend, plan: &Plan) -> Result<(), MoveError> {
        let fences = target.read(|r| fences_of(&r)).await.map_err(|s| {
            MoveError::Failed(format!("reading {}'s fences: {}", plan.to, s.message()))
        })?;
        let mut changes = Vec::new();
        for f in fences.list() {
            if f.slots != plan.slots || f.end <= plan.range.start || plan.range.end <= f.start {
                continue;
            }
            changes.push(FenceChange::Lift {
                slots: f.slots,
                start: f.start,
                end: f.end,
            });
            for (start, end) in [(f.start, plan.range.start), (plan.range.end, f.end)] {
                if start < end {
                    changes.push(FenceChange::Set(Fence { start, end, ..*f }));
                }
            }
        }
        if !changes.is_empty() {
            self.record_all(plan.to, changes).await?;
        }
        Ok(())
    }

    /// After a restart: lifts every fence over slots the map still gives (all or some of them)
    /// to the shard that holds it (a move that stopped before its switch), keeping its parts
    /// over other shards' slots fenced. Returns the fences lifted.
    ///
    /// Before lifting anything it records the map again at the next epoch (same ranges), so
    /// a switch still in flight from a mover elsewhere (a metadata leader that lost its
    /// leadership mid-move) is refused: its compare-and-set was computed from the old epoch.
    pub async fn recover(&self) -> Result<Vec<(ShardId, Fence)>, String> {
        let _running = self.inner.running.lock().await;
        let map = self.inner.map.get();
        self.form_added(&map).await;
        let stale = self.stale_fences(&map, None).await?;
        self.lift_stale(&map, stale, false).await
    }

    /// On a node that does not lead the metadata group (whose [`Mover::recover`] sees only
    /// the shards it holds): lifts the stale fences of the shards whose group this node
    /// (`me`) leads once they have stayed unchanged for `grace` — longer than a running
    /// move keeps its fence, so no move is cut short. As `recover`, it records the map again
    /// first; each shard's lift is appended with `$fences` expected at the version read
    /// before its fences, so a fence set since (a new move's) is never lifted.
    pub async fn recover_abandoned(
        &self,
        me: u64,
        grace: Duration,
    ) -> Result<Vec<(ShardId, Fence)>, String> {
        let _running = self.inner.running.lock().await;
        let map = self.inner.map.get();
        let stale = self.stale_fences(&map, Some(me)).await?;
        let now = tokio::time::Instant::now();
        let ripe: Vec<StaleFence> = {
            let mut seen = strata_engine::sync::lock(&self.inner.abandoned);
            seen.retain(|k, _| stale.iter().any(|f| (f.shard, f.version) == *k));
            stale
                .into_iter()
                .filter(|f| *seen.entry((f.shard, f.version)).or_insert(now) + grace <= now)
                .collect()
        };
        self.lift_stale(&map, ripe, true).await
    }

    /// The fences of the held shards (only those `leader` leads, when given) over slots `map`
    /// still gives them — stale when no move runs — each with its `$fences` version, read
    /// before the fences.
    async fn stale_fences(
        &self,
        map: &ClusterMap,
        leader: Option<u64>,
    ) -> Result<Vec<StaleFence>, String> {
        let mut stale = Vec::new();
        for (id, backend) in &self.inner.shards.backends() {
            if let (Some(me), Backend::Replicated(r)) = (leader, backend) {
                if r.leader().map(|(l, _)| l) != Some(me) {
                    continue;
                }
            }
            let (version, fences) = backend
                .read(|r| Ok((fences_version(&r)?, fences_of(&r)?)))
                .await
                .map_err(|s| format!("reading {id}'s fences: {}", s.message()))?;
            for f in fences.list() {
                // Stale when the shard owns any of its slots: a fence over slots that moved
                // away since (in part) would block the shard's own writes for ever.
                let mine = map
                    .ranges()
                    .iter()
                    .any(|(r, s)| s == id && r.start < f.end && f.start < r.end);
                if f.slots == map.slots() && mine {
                    stale.push(StaleFence {
                        shard: *id,
                        version,
                        fence: *f,
                    });
                }
            }
        }
        Ok(stale)
    }

    /// Records `map` again at the next epoch, then lifts the `stale` fences (see
    /// [`refence`]), each shard's in one append — expecting its `$fences` version when
    /// `expect`.
    async fn lift_stale(
        &self,
        map: &ClusterMap,
        stale: Vec<StaleFence>,
        expect: bool,
    ) -> Result<Vec<(ShardId, Fence)>, String> {
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        (self.inner.switch)(map.bumped())
            .await
            .map_err(|e| format!("recording the map again before lifting fences: {e}"))?;
        let mut shards: Vec<ShardId> = stale.iter().map(|f| f.shard).collect();
        shards.dedup();
        for shard in shards {
            let of_shard: Vec<&StaleFence> = stale.iter().filter(|f| f.shard == shard).collect();
            let changes = of_shard
                .iter()
                .flat_map(|f| refence(map, shard, f.fence))
                .collect();
            let expected = match of_shard.first().and_then(|f| f.version) {
                Some(v) if expect => ExpectedVersion::Exact(v),
                _ => ExpectedVersion::Any,
            };
            self.record_expecting(shard, changes, expected)
                .await
                .map_err(|e| e.to_string())?;
            for f in of_shard {
                tracing::warn!(
                    shard = shard.0,
                    start = f.fence.start,
                    end = f.fence.end,
                    to = f.fence.to,
                    "lifted the fence of a move that did not finish"
                );
            }
        }
        Ok(stale.into_iter().map(|f| (f.shard, f.fence)).collect())
    }
}
