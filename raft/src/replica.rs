//! One node's replica of a shard: the Raft node over [`Shard`] storage and a transport, with
//! the operations the server needs — append through Raft, linearizable-read barriers, cluster
//! formation and safe membership changes, and a status view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use strata_engine::format::{FRAME_BYTES, HEADER_BYTES};
use strata_engine::validate::Validated;
use strata_engine::{AppendRequest, AppendResult, Error, Limits};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::fence::Fence;
use crate::network::{Handover, Network, ProposeAnswer, RaftTransport, ServedShard};
use crate::pacing::CatchUpPacer;
use crate::storage::Shard;
use crate::types::{NodeId, Raft, StrataNode, TypeConfig};
use crate::wire::{Command, Outcome, Reply, WireAppend};

type RaftMetrics = openraft::RaftMetrics<NodeId, StrataNode>;

/// Most appends one Raft entry carries.
pub const BATCH_APPENDS_MAX: usize = 256;
/// Entries of appends proposed and not yet answered at once, at most. Appends that arrive
/// while an entry is out queue and then go together in one entry, which waits until no entry
/// is out: the group commit of the replicated path. One entry out at a time, not two, for such
/// appends (2026-12-03, three local nodes, 64 unary clients, alternating runs): each entry
/// costs ~1 ms of CPU over the three nodes whatever it carries, so fuller entries pay — 8
/// shards 2,998 and 2,816 events/s against 2,583 and 2,076 with two; one shard 6,883 and 7,069
/// against 6,793 and 6,278, with a third fewer fdatasyncs. But appends that one entry could
/// not take (set aside: their stream is in it, or it is full) cannot get fuller by waiting —
/// a pipelined call sends runs of appends on one stream, and an entry takes one per stream —
/// so their entries go at once, up to this many out. openraft 0.9 writes each entry a leader
/// proposes on its own and waits for its fdatasync before it takes the next (its core runs
/// the storage commands after every client write), so a leader makes at most one entry per
/// write and fdatasync (~1,800 a second on this machine's disk); entries out are what keeps
/// that loop busy, while followers get them many to a message and sync them together.
/// 16 × 256 pipelined appends on three local nodes (2026-12-07, alternating runs): 16 out
/// 16,000–20,200 events/s, 64 out 21,200–25,100, 256 out 20,300 (the set-aside appends are
/// spread over more, emptier entries). Entries out hold at most `batch_bytes_max` each.
pub const BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Appends waiting to be proposed; past it callers wait (within their append timeout).
pub const APPEND_QUEUE_MAX: usize = 4096;
/// Appends set aside for a later entry (their stream is in the entry being made) at most.
/// Making an entry looks at each once, so this bounds that work too.
pub const SET_ASIDE_MAX: usize = 512;
/// How long a voter being removed is given to hear that it is a learner before it is dropped
/// from the membership (a node that is down does not hear it; it is removed anyway).
pub const REMOVED_HEARS_WAIT: Duration = Duration::from_secs(2);
/// How long one membership change (its joint configuration and its final one) may take to
/// commit before the call answers that its outcome is unknown (a quorum out of reach would
/// otherwise hold it for ever).
pub const MEMBERSHIP_CHANGE_WAIT: Duration = Duration::from_secs(10);
/// Bytes of a record besides its events.
const RECORD_OVERHEAD: usize = FRAME_BYTES + HEADER_BYTES + 4;

/// An append waiting to be proposed.
struct Proposal {
    request: AppendRequest,
    /// Its events' encoded bytes.
    bytes: usize,
    waiting: Waiting,
}

/// Who waits for a proposal's answer.
struct Waiting {
    reply: oneshot::Sender<Result<AppendResult, ReplicaError>>,
    /// The order fence of the call it came on, if any (see [`crate::fence`]).
    fence: Option<Fence>,
}

impl Waiting {
    /// Whether an earlier append of its call failed.
    fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(Fence::is_set)
    }

    /// Answers it; a failure its client retries sets its call's fence first.
    fn answer(self, outcome: Result<AppendResult, ReplicaError>) {
        if let (Err(e), Some(fence)) = (&outcome, &self.fence) {
            if e.retried() {
                fence.set();
            }
        }
        let _ = self.reply.send(outcome);
    }
}

/// Raft timing and housekeeping.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Leader heartbeat. Default 100 ms.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    /// Default 400–800 ms: a dead leader is replaced in about 1–2 s, within 3 s even when the
    /// first election splits the vote and a second round is needed.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many entries since the last one. Default 50,000.
    pub snapshot_every_entries: u64,
    /// Entries kept as Raft entries behind a snapshot (so slightly lagging followers catch up
    /// from the log rather than a snapshot). Default 10,000. The data itself is never deleted.
    pub keep_entries: u64,
    /// How long an append may wait to commit before the client is told the outcome is unknown.
    /// Default 5 s.
    pub append_timeout: Duration,
    /// A leader that has heard from no majority of its group for this long (cut off from the
    /// others, which elect a leader of their own) refuses new appends and answers those
    /// waiting on Raft, outcome unknown, instead of holding them for the whole
    /// `append_timeout`: its clients go to another node sooner. Default 1.6 s, twice the
    /// longest election timeout (the others have usually elected a leader by then). Zero
    /// turns it off. See [`Replica::cut_off`].
    pub cut_off_after: Duration,
    /// How long a linearizable read may wait to confirm leadership. Default 2 s.
    pub read_timeout: Duration,
    /// How long a node being added may take, as a learner, to replicate the log as it stood
    /// when it was added, before it is promoted to voter. Default 60 s; past it the node stays
    /// a learner and the call fails.
    pub learner_catch_up_timeout: Duration,
    /// Paces a new replica's catch-up from this node (see [`crate::pacing`]). Default `None`:
    /// unpaced; a node sets its move throttle here.
    pub catch_up: Option<Arc<dyn CatchUpPacer>>,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_every_entries: 50_000,
            keep_entries: 10_000,
            append_timeout: Duration::from_secs(5),
            cut_off_after: Duration::from_millis(1600),
            read_timeout: Duration::from_secs(2),
            learner_catch_up_timeout: Duration::from_secs(60),
            catch_up: None,
        }
    }
}

/// Why a replicated operation did not happen here.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The engine's answer (a conflict, bad input, …).
    #[error(transparent)]
    Engine(#[from] Error),
    /// This node is not the leader; the leader, if known, is named.
    #[error("this node is not the leader{}", leader_hint(.leader))]
    NotLeader {
        /// The leader's id and node, if known.
        leader: Option<(NodeId, StrataNode)>,
    },
    /// The shard cannot answer now (no quorum, timed out, shutting down).
    #[error("shard unavailable: {0}")]
    Unavailable(String),
    /// Not proposed: an earlier append of the same call failed and its client sends it again
    /// before this one (see [`crate::fence`]).
    #[error("not tried: an earlier append of this call was not appended (refused, or its outcome unknown); send this one again after it, with the same event ids")]
    NotTried,
}

impl ReplicaError {
    /// A copy, for answering every append of an entry.
    pub fn duplicate(&self) -> ReplicaError {
        match self {
            ReplicaError::Engine(e) => ReplicaError::Engine(e.duplicate()),
            ReplicaError::NotLeader { leader } => ReplicaError::NotLeader {
                leader: leader.clone(),
            },
            ReplicaError::Unavailable(m) => ReplicaError::Unavailable(m.clone()),
            ReplicaError::NotTried => ReplicaError::NotTried,
        }
    }

    /// Whether a client sends the append again (it was refused, or its outcome is unknown),
    /// rather than taking this as the append's answer.
    pub fn retried(&self) -> bool {
        match self {
            // As `strata-shard` maps them: UNAVAILABLE, which clients retry.
            ReplicaError::Engine(e) => matches!(
                e,
                Error::Busy { .. }
                    | Error::Closed
                    | Error::Poisoned(_)
                    | Error::Unavailable(_)
                    | Error::Moved { .. }
            ),
            ReplicaError::NotLeader { .. }
            | ReplicaError::Unavailable(_)
            | ReplicaError::NotTried => true,
        }
    }
}

fn leader_of(raft: &Raft) -> Option<(NodeId, StrataNode)> {
    leader_in(&raft.metrics().borrow())
}

/// The leader named in `metrics`, with its node, if known (the metrics are read in place: a
/// clone of them would copy their replication map on every routed call).
fn leader_in(metrics: &RaftMetrics) -> Option<(NodeId, StrataNode)> {
    let id = metrics.current_leader?;
    let node = metrics
        .membership_config
        .membership()
        .get_node(&id)?
        .clone();
    Some((id, node))
}

/// "Not the leader", naming the leader openraft pointed to, else the one this node knows of.
fn not_leader(raft: &Raft, me: NodeId, hint: ForwardToLeader<NodeId, StrataNode>) -> ReplicaError {
    let leader = match (hint.leader_id, hint.leader_node) {
        (Some(id), Some(node)) => Some((id, node)),
        _ => leader_of(raft).filter(|(id, _)| *id != me),
    };
    ReplicaError::NotLeader { leader }
}

/// A failed Raft write (client write or membership change) as this layer's error.
/// `change` (a membership change) if it answers within [`MEMBERSHIP_CHANGE_WAIT`].
async fn bounded<T>(change: impl Future<Output = T>) -> Result<T, ReplicaError> {
    tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT, change)
        .await
        .map_err(|_| {
            ReplicaError::Unavailable(format!(
                "the membership change did not commit within {MEMBERSHIP_CHANGE_WAIT:?} (is a quorum reachable?); it may still: look at the group's members, then run the call again"
            ))
        })
}

fn write_error(
    raft: &Raft,
    me: NodeId,
    e: RaftError<NodeId, ClientWriteError<NodeId, StrataNode>>,
) -> ReplicaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(raft, me, f),
        other => ReplicaError::Unavailable(other.to_string()),
    }
}

/// Proposes queued appends: while an entry is out, appends queue (see [`BATCHES_IN_FLIGHT_MAX`]
/// for when the next entry goes without waiting for it); the next entry takes as many as are
/// waiting on distinct streams (one record holds at most one
/// append per stream, so that every version a stream had is a record boundary for as-of
/// reads), within `bytes_max` and [`BATCH_APPENDS_MAX`]. An append on a stream the entry
/// already has is set aside, in order, for the next entry — and so is every later one on a
/// stream set aside, so a stream's appends keep their order — while the scan goes on for other
/// streams (a pipelined client sends runs of appends on one stream). At most
/// [`SET_ASIDE_MAX`] wait set aside.
async fn propose(
    raft: Raft,
    me: NodeId,
    mut queue: mpsc::Receiver<Proposal>,
    (slots, cut_off): (Arc<Semaphore>, watch::Receiver<bool>),
    (bytes_max, wait_max): (usize, Duration),
) {
    let mut aside: VecDeque<Proposal> = VecDeque::new();
    loop {
        // Appends the last entry could not take go at once; others wait for no entry out.
        let left = !aside.is_empty();
        if !left {
            match queue.recv().await {
                Some(p) => aside.push_back(p),
                None => return,
            }
        }
        // Taken once there is something to propose, so an idle proposer holds no slot (a
        // handover takes them all to pause proposals).
        let Some(slot) = entry_slot(&slots, left).await else {
            return;
        };
        let batch = proposable(&raft, me, next_batch(&mut aside, &mut queue, bytes_max));
        if batch.is_empty() {
            continue;
        }
        let (requests, waiting): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|p| (p.request.into(), p.waiting))
            .unzip();
        let count = waiting.len();
        // Handed to Raft here, one entry after another, so entries are written in the order
        // their appends were queued (an `AppendStream`'s appends on one stream, in consecutive
        // entries, must be decided in the order sent); only the waits run concurrently.
        let submitted = raft.client_write_ff(Command::Append(requests)).await;
        let raft = raft.clone();
        let mut cut_off = cut_off.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answer = match submitted {
                Ok(answer) => answer,
                Err(fatal) => {
                    let error = ReplicaError::Unavailable(format!("raft stopped: {fatal}"));
                    for w in waiting {
                        w.answer(Err(error.duplicate()));
                    }
                    return;
                }
            };
            // openraft answers a write when its entry is applied or truncated here; an entry
            // replaced some other way (a snapshot install after this node lost leadership)
            // would hold its slot for ever, so the wait is bounded.
            // The entry is answered once decided, or at once when this leader is cut off (its
            // slot released then: the entry stays in Raft, decided by whoever leads next).
            let answer = tokio::select! {
                answer = tokio::time::timeout(wait_max, answer) => answer,
                // (A watch no task keeps — cut-offs turned off — ends in an error: not a cut.)
                Ok(_) = cut_off.wait_for(|cut| *cut) => {
                    let error = cut_off_error();
                    for w in waiting {
                        w.answer(Err(error.duplicate()));
                    }
                    return;
                }
            };
            let outcomes: Vec<Result<AppendResult, ReplicaError>> = match answer {
                Err(_) => {
                    tracing::warn!(
                        appends = count,
                        "a Raft write went unanswered; its slot is released"
                    );
                    let error = ReplicaError::Unavailable(format!(
                            "no answer from Raft within {wait_max:?}; the append may still commit, so retry it with the same event ids"
                        ));
                    (0..count).map(|_| Err(error.duplicate())).collect()
                }
                Ok(Err(_)) => {
                    let error = ReplicaError::Unavailable(
                            "raft stopped before answering; the append may still commit, so retry it with the same event ids".into(),
                        );
                    (0..count).map(|_| Err(error.duplicate())).collect()
                }
                Ok(Ok(Ok(response))) => match response.data {
                    Reply::Outcomes(o) if o.len() == count => o
                        .into_iter()
                        .map(|o| o.into_result().map_err(ReplicaError::Engine))
                        .collect(),
                    _ => (0..count)
                        .map(|_| {
                            Err(ReplicaError::Unavailable(
                                "the entry committed without outcomes".into(),
                            ))
                        })
                        .collect(),
                },
                Ok(Ok(Err(e))) => {
                    let error = write_error(&raft, me, RaftError::APIError(e));
                    (0..count).map(|_| Err(error.duplicate())).collect()
                }
            };
            for (w, outcome) in waiting.into_iter().zip(outcomes) {
                w.answer(outcome);
            }
        });
    }
}

/// The answer to an append at a leader cut off (see [`RaftSettings::cut_off_after`]).
fn cut_off_error() -> ReplicaError {
    ReplicaError::Unavailable(
        "this node leads its group but has heard from no majority of it lately (cut off from \
         the others?); the append may still commit, so retry it with the same event ids at \
         another node"
            .into(),
    )
}

/// Keeps `cut` true while this node leads its group and no majority of it has answered for
/// longer than `after` (openraft's `millis_since_quorum_ack`, refreshed at every heartbeat),
/// looking once per `tick`. Ends with Raft, or when no replica holds the watch any more.
async fn watch_contact(raft: Raft, after: Duration, tick: Duration, cut: watch::Sender<bool>) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    let metrics = raft.metrics();
    loop {
        ticks.tick().await;
        if cut.is_closed() || metrics.has_changed().is_err() {
            return;
        }
        let now = {
            let m = metrics.borrow();
            m.state == ServerState::Leader
                && m.millis_since_quorum_ack.is_some_and(|ms| ms > after_ms)
        };
        cut.send_if_modified(|was| {
            if *was != now {
                tracing::warn!(
                    cut_off = now,
                    "this leader {} a majority of its group",
                    if now {
                        "has heard from no"
                    } else {
                        "hears again from"
                    }
                );
            }
            std::mem::replace(was, now) != now
        });
    }
}

/// A slot for the next entry: any free one for appends an entry left (`left`), else one
/// taken once no entry is out (the group commit). None once the proposer is to stop.
async fn entry_slot(slots: &Arc<Semaphore>, left: bool) -> Option<OwnedSemaphorePermit> {
    if left {
        return slots.clone().acquire_owned().await.ok();
    }
    let permits = u32::try_from(BATCHES_IN_FLIGHT_MAX).unwrap_or(u32::MAX);
    let mut all = slots.clone().acquire_many_owned(permits).await.ok()?;
    all.split(1)
}

/// The appends of `batch` that go to Raft. One whose call's fence is set is answered untried.
/// When this node does not lead (as its metrics say), each is refused here, in order, setting
/// its call's fence before the next entry is made — not by Raft a moment later, by when a
/// later append of the call may already be in an entry Raft takes once this node has won an
/// election (see [`crate::fence`]).
fn proposable(raft: &Raft, me: NodeId, batch: Vec<Proposal>) -> Vec<Proposal> {
    let leads = raft.metrics().borrow().current_leader == Some(me);
    let leader = (!leads).then(|| leader_of(raft).filter(|(id, _)| *id != me));
    let mut out = Vec::with_capacity(batch.len());
    for p in batch {
        if p.waiting.fenced() {
            p.waiting.answer(Err(ReplicaError::NotTried));
        } else if let Some(leader) = &leader {
            p.waiting.answer(Err(ReplicaError::NotLeader {
                leader: leader.clone(),
            }));
        } else {
            out.push(p);
        }
    }
    out
}

/// The next entry's appends: first from those set aside (in order), then from the queue,
/// each on a stream no earlier one of the entry (or still set aside) has.
fn next_batch(
    aside: &mut VecDeque<Proposal>,
    queue: &mut mpsc::Receiver<Proposal>,
    bytes_max: usize,
) -> Vec<Proposal> {
    let mut entry = EntryBuilder {
        batch: Vec::new(),
        kept: VecDeque::new(),
        taken: foldhash::HashSet::default(),
        blocked: foldhash::HashSet::default(),
        bytes: RECORD_OVERHEAD,
        bytes_max,
    };
    while let Some(p) = aside.pop_front() {
        entry.consider(p);
    }
    while entry.batch.len() < BATCH_APPENDS_MAX && entry.kept.len() < SET_ASIDE_MAX {
        let Ok(p) = queue.try_recv() else { break };
        entry.consider(p);
    }
    *aside = entry.kept;
    debug_assert!(
        !entry.batch.is_empty(),
        "an entry takes at least the first append"
    );
    entry.batch
}

/// One entry being filled by [`next_batch`].
struct EntryBuilder {
    /// Appends taken into the entry, in order.
    batch: Vec<Proposal>,
    /// Appends set aside for a later entry, in order.
    kept: VecDeque<Proposal>,
    /// Streams the entry holds, by [`stream_key`].
    taken: foldhash::HashSet<u64>,
    /// Streams of appends set aside, by [`stream_key`]: a later append on one waits behind
    /// them.
    blocked: foldhash::HashSet<u64>,
    /// The entry's size so far, and its bound.
    bytes: usize,
    bytes_max: usize,
}

impl EntryBuilder {
    /// Takes `p` into the entry if it fits (count, bytes — the first always — and no stream
    /// taken or blocked; a slot-range move's copy only alone, its record flagged as a whole),
    /// else sets it aside.
    fn consider(&mut self, p: Proposal) {
        let first = self.batch.is_empty();
        let alone = match self.batch.first() {
            Some(taken) => !taken.request.copy && !p.request.copy,
            None => true,
        };
        let keys = || p.request.streams.iter().map(|s| stream_key(&s.stream));
        let free = keys().all(|k| !self.taken.contains(&k) && !self.blocked.contains(&k));
        if self.batch.len() < BATCH_APPENDS_MAX
            && free
            && alone
            && (first || self.bytes + p.bytes <= self.bytes_max)
        {
            self.taken.extend(keys());
            self.bytes += p.bytes;
            self.batch.push(p);
        } else {
            self.blocked.extend(keys());
            self.kept.push_back(p);
        }
    }
}

/// A stream's name as a key of [`EntryBuilder`]'s sets (a fixed 64-bit hash). Two streams of
/// one key only make an append wait for a later entry than it needed to: never out of order.
fn stream_key(stream: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(stream)
}

fn leader_hint(leader: &Option<(NodeId, StrataNode)>) -> String {
    match leader {
        Some((id, node)) => format!("; the leader is node {id} at {}", node.addr),
        None => "; no leader is known yet".to_string(),
    }
}

/// A member's view in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Its addresses.
    pub node: StrataNode,
    /// "leader", "follower", "candidate" or "learner".
    pub role: &'static str,
    /// Last log index known replicated to it (the leader's view), else 0.
    pub matched: u64,
}

/// This node's view of the cluster.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Members.
    pub members: Vec<MemberStatus>,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub last_applied: u64,
}

/// A shard replica on this node.
#[derive(Clone)]
pub struct Replica {
    raft: Raft,
    shard_id: u64,
    shard: Shard,
    node_id: NodeId,
    node: StrataNode,
    members: BTreeMap<NodeId, StrataNode>,
    settings: RaftSettings,
    limits: Limits,
    proposals: mpsc::Sender<Proposal>,
    /// The proposer's slots for entries in flight: a leadership handover takes them all, so
    /// no entry is proposed while it runs.
    slots: Arc<Semaphore>,
    /// True while this node leads but no majority has answered it for
    /// [`RaftSettings::cut_off_after`] (see [`Replica::cut_off`]).
    cut_off: watch::Receiver<bool>,
    /// Sends `TimeoutNow` to the node taking over the leadership.
    handover: Arc<dyn Handover>,
    /// Set while a handover runs: linearizable reads are refused then (their leadership check
    /// is a heartbeat round, which would renew the followers' leases the new leader waits out).
    handing_over: Arc<AtomicBool>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("shard_id", &self.shard_id)
            .field("node_id", &self.node_id)
            .field("node", &self.node)
            .finish()
    }
}

impl Replica {
    /// Starts this node's Raft node of shard `shard_id` over its storage `shard`. `members`
    /// are the configured members (this node included) that [`Replica::init`] forms the
    /// shard's group from.
    pub async fn start<T: RaftTransport>(
        shard_id: u64,
        shard: Shard,
        node: StrataNode,
        members: BTreeMap<NodeId, StrataNode>,
        settings: RaftSettings,
        transport: Arc<T>,
    ) -> Result<Replica, ReplicaError> {
        let config = openraft::Config {
            cluster_name: "strata".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout.0.as_millis() as u64,
            election_timeout_max: settings.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
            max_in_snapshot_log_to_keep: settings.keep_entries,
            // Entries are whole records (up to the engine's batch limit); bound the count per
            // message too.
            max_payload_entries: crate::network::ENTRIES_PER_MESSAGE_MAX,
            ..openraft::Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ReplicaError::Unavailable(format!("raft settings: {e}")))?,
        );
        let node_id = shard.node_id();
        // This replica as the group's memberships name it.
        let node = node.incarnation(shard.incarnation());
        let limits = shard.options().engine.limits.clone();
        let (log, sm) = shard.split();
        let routes = members
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, n)| (*id, n.raft_addr.clone()))
            .collect();
        let network = Network::new(shard_id, node.clone(), transport, routes)
            .voting_in(&shard)
            .paced_by(settings.catch_up.clone());
        let handover: Arc<dyn Handover> = Arc::new(network.clone());
        // Its tasks log with the group's id (see `runtime`: spawns keep the span).
        let span = tracing::info_span!("group", id = shard_id);
        let raft = Raft::new(node_id, config, network, log, sm)
            .instrument(span)
            .await
            .map_err(|e| ReplicaError::Unavailable(format!("starting raft: {e}")))?;
        // A replica that finds its own data corrupt stops: leading (or voting) on damaged data
        // would hand it on, and a snapshot it serves would be refused everywhere.
        let mut corrupt = shard.watch_corruption();
        let stopping = raft.clone();
        tokio::spawn(async move {
            if corrupt.wait_for(Option::is_some).await.is_ok() {
                let why = corrupt.borrow().clone().unwrap_or_default();
                tracing::error!(reason = %why, "stopping this replica: its data is corrupt");
                if let Err(e) = stopping.shutdown().await {
                    tracing::warn!(error = %e, "raft shutdown failed");
                }
            }
        });
        let (proposals, queue) = mpsc::channel(APPEND_QUEUE_MAX);
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        let (cut, cut_off) = watch::channel(false);
        if !settings.cut_off_after.is_zero() {
            tokio::spawn(watch_contact(
                raft.clone(),
                settings.cut_off_after,
                settings.heartbeat,
                cut,
            ));
        }
        tokio::spawn(propose(
            raft.clone(),
            node_id,
            queue,
            (slots.clone(), cut_off.clone()),
            (limits.batch_bytes_max, settings.append_timeout * 2),
        ));
        Ok(Replica {
            raft,
            shard_id,
            shard,
            node_id,
            node,
            members,
            settings,
            limits,
            proposals,
            slots,
            cut_off,
            handover,
            handing_over: Arc::new(AtomicBool::new(false)),
        })
    }

    /// What the Raft server side needs.
    pub fn served(&self) -> ServedShard {
        let replica = self.clone();
        ServedShard {
            raft: self.raft.clone(),
            shard: self.shard.clone(),
            propose: Arc::new(move |appends: Vec<WireAppend>| {
                let replica = replica.clone();
                Box::pin(async move { replica.propose_in_order(appends).await })
            }),
        }
    }

    /// Queues `appends` one after another (decided in that order), then answers each.
    async fn propose_in_order(&self, appends: Vec<WireAppend>) -> Vec<ProposeAnswer> {
        let refused = |e: ReplicaError| match e {
            ReplicaError::Engine(e) => ProposeAnswer::Decided(Outcome::from(Err(e))),
            ReplicaError::NotLeader { leader } => ProposeAnswer::NotLeader(leader),
            ReplicaError::Unavailable(m) => ProposeAnswer::Unavailable(m),
            e @ ReplicaError::NotTried => ProposeAnswer::Unavailable(e.to_string()),
        };
        let mut pending = Vec::with_capacity(appends.len());
        for append in appends {
            pending.push(self.submit(append.into()).await);
        }
        let mut answers = Vec::with_capacity(pending.len());
        for p in pending {
            answers.push(match p {
                Ok(answer) => match answer.await {
                    Ok(r) => ProposeAnswer::Decided(Outcome::from(Ok(r))),
                    Err(e) => refused(e),
                },
                Err(e) => refused(e),
            });
        }
        answers
    }

    /// Appends `requests`, in order, at the shard's leader wherever it is: here when this node
    /// leads it, else all proposed there in one `RaftInternal.Propose` (queued there in order,
    /// so they pipeline). Follows leader changes and retries while the shard is unavailable —
    /// the whole list, with the same event ids, so the ones already decided answer as they
    /// did — for at most `wait`. For the server's own writes to shards led elsewhere (a
    /// slot-range move's copies and fences). An append the log rejects ends it with that error.
    pub async fn append_all_at_leader(
        &self,
        requests: Vec<AppendRequest>,
        wait: Duration,
    ) -> Result<Vec<AppendResult>, ReplicaError> {
        let until = tokio::time::Instant::now() + wait;
        let mut backoff = Duration::from_millis(20);
        let appends: Vec<WireAppend> = requests.into_iter().map(WireAppend::from).collect();
        loop {
            let answers = match self.leader() {
                Some((id, node)) if id != self.node_id => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    let limit = left.min(self.settings.append_timeout);
                    match self.handover.propose(id, &node, &appends, limit).await {
                        Ok(answers) if answers.len() == appends.len() => answers,
                        Ok(_) => vec![ProposeAnswer::Unavailable(format!(
                            "node {id} answered a different number of appends"
                        ))],
                        Err(status) => vec![ProposeAnswer::Unavailable(format!(
                            "proposing at node {id}: {}",
                            status.message()
                        ))],
                    }
                }
                _ => self.propose_in_order(appends.clone()).await,
            };
            let mut results = Vec::with_capacity(answers.len());
            let mut failed = None;
            for answer in answers {
                match answer {
                    ProposeAnswer::Decided(o) => match o.into_result() {
                        Ok(r) => results.push(r),
                        Err(Error::Unavailable(m)) => failed = Some(ReplicaError::Unavailable(m)),
                        Err(e) => return Err(ReplicaError::Engine(e)),
                    },
                    ProposeAnswer::NotLeader(leader) => {
                        failed = Some(ReplicaError::NotLeader { leader })
                    }
                    ProposeAnswer::Unavailable(m) => failed = Some(ReplicaError::Unavailable(m)),
                }
            }
            let Some(failed) = failed else {
                return Ok(results);
            };
            if tokio::time::Instant::now() + backoff > until {
                return Err(failed);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The members it was configured with (this node included).
    pub fn configured_members(&self) -> &BTreeMap<NodeId, StrataNode> {
        &self.members
    }

    /// The shard's id (its Raft messages carry it).
    pub fn shard_id(&self) -> u64 {
        self.shard_id
    }

    /// The storage.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Forms the cluster from the configured members. Does nothing on a node that already
    /// belongs to one.
    pub async fn init(&self) -> Result<(), ReplicaError> {
        match self.raft.initialize(self.members.clone()).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ReplicaError::Unavailable(format!("init: {e}"))),
        }
    }

    /// Forms the group from the configured members if this replica is new (no membership, no
    /// log): whether it did. Safe on every one of the members at once, as long as each was
    /// configured with the same members (see ARCHITECTURE.md, "splits").
    pub async fn form_if_new(&self) -> Result<bool, ReplicaError> {
        let new = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_none()
                && m.last_log_index.is_none()
        };
        if new {
            self.init().await?;
        }
        Ok(new)
    }

    /// Whether this node leads its group but has heard from no majority of it for
    /// [`RaftSettings::cut_off_after`]: appends here are refused, and those waiting on Raft
    /// answered, outcome unknown (a leader cut off from the others cannot commit; they elect
    /// a leader of their own, and its clients are better off going there than waiting out the
    /// append timeout). It leads again as soon as a majority answers.
    pub fn cut_off(&self) -> bool {
        *self.cut_off.borrow()
    }

    /// The leader's id and node, if known.
    pub fn leader(&self) -> Option<(NodeId, StrataNode)> {
        leader_of(&self.raft)
    }

    /// Resolves once this replica knows a leader whose client address is not `addr`, with it:
    /// a call forwarded to the leader at `addr` then went to a node that no longer leads (or
    /// that was cut off while the others elected another). Never resolves once Raft stopped.
    /// It watches Raft's server metrics (vote, state, leader, membership), which change only
    /// with those — not the full metrics, which change with every applied entry and would wake
    /// each forwarded call waiting on them.
    pub async fn leader_other_than(&self, addr: &str) -> (NodeId, StrataNode) {
        let mut server = self.raft.server_metrics();
        loop {
            let leader = {
                let m = server.borrow_and_update();
                m.current_leader.and_then(|id| {
                    let node = m.membership_config.membership().get_node(&id)?;
                    (node.addr != addr).then(|| (id, node.clone()))
                })
            };
            if let Some(leader) = leader {
                return leader;
            }
            if server.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Appends through Raft: answered once committed (on a majority, each after fdatasync) and
    /// applied here. The expected-version check and retry detection happen when the leader
    /// writes the entry, against its whole log before it. Concurrent appends on distinct
    /// streams share an entry (see [`BATCHES_IN_FLIGHT_MAX`]).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult, ReplicaError> {
        self.submit(request).await?.await
    }

    /// Queues an append for proposal (waiting while the queue is full) and returns its answer
    /// to come. Appends submitted one after another are proposed, and decided, in that order.
    /// Queueing and committing together are bounded by `append_timeout`.
    pub async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<
        impl Future<Output = Result<AppendResult, ReplicaError>> + Send + 'static,
        ReplicaError,
    > {
        self.submit_fenced(request, None).await
    }

    /// [`Replica::submit`] of an append of a pipelined call with this order fence: refused
    /// untried once it is set, and set when this append fails in a way its client retries
    /// (see [`crate::fence`]).
    pub async fn submit_fenced(
        &self,
        request: AppendRequest,
        fence: Option<&Fence>,
    ) -> Result<
        impl Future<Output = Result<AppendResult, ReplicaError>> + Send + 'static,
        ReplicaError,
    > {
        if fence.is_some_and(Fence::is_set) {
            return Err(ReplicaError::NotTried);
        }
        if self.cut_off() {
            if let Some(fence) = fence {
                fence.set();
            }
            return Err(cut_off_error());
        }
        let validated = Validated::new(request, &self.limits)?;
        let bytes = validated.bytes().saturating_sub(RECORD_OVERHEAD);
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            request: validated.into_request(),
            bytes,
            waiting: Waiting {
                reply,
                fence: fence.cloned(),
            },
        };
        let timeout = self.settings.append_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let late = move || {
            ReplicaError::Unavailable(format!(
                "the append did not commit within {timeout:?}; it may still commit, so retry it with the same event ids"
            ))
        };
        let stopping = || ReplicaError::Unavailable("the node is stopping".into());
        let queued = match tokio::time::timeout_at(deadline, self.proposals.send(proposal)).await {
            Err(_) => Err(late()),
            Ok(Err(_)) => Err(stopping()),
            Ok(Ok(())) => Ok(()),
        };
        if let (Err(_), Some(fence)) = (&queued, fence) {
            fence.set();
        }
        queued?;
        let fence = fence.cloned();
        Ok(async move {
            let outcome = match tokio::time::timeout_at(deadline, answer).await {
                Err(_) => Err(late()),
                Ok(Err(_)) => Err(stopping()),
                Ok(Ok(result)) => result,
            };
            if let (Err(e), Some(fence)) = (&outcome, &fence) {
                if e.retried() {
                    fence.set();
                }
            }
            outcome
        })
    }

    /// Waits until a read here reflects every append acknowledged before this call: this node
    /// confirms with a quorum that it still leads, then waits to apply up to the commit point.
    pub async fn linearizable_barrier(&self) -> Result<(), ReplicaError> {
        if self.handing_over.load(Ordering::Acquire) {
            return Err(ReplicaError::Unavailable(format!(
                "shard {}'s leadership is being handed over; retry in a moment",
                self.shard_id
            )));
        }
        if strata_engine::planted::bug(strata_engine::planted::Bug::ReadWithoutReadIndex)
            && self.raft.metrics().borrow().current_leader == Some(self.node_id)
        {
            // A planted bug (test builds only): a leader serves without confirming it leads.
            return Ok(());
        }
        let check = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.settings.read_timeout, check).await {
            Err(_) => Err(ReplicaError::Unavailable(format!(
                "could not confirm leadership within {:?}",
                self.settings.read_timeout
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(not_leader(&self.raft, self.node_id, f)),
            Ok(Err(e)) => Err(ReplicaError::Unavailable(e.to_string())),
        }
    }

    /// Adds a node the safe way: as a learner first, waiting until it has replicated the log
    /// as it stood when it was added, then promoted to a voter. A node that does not catch up
    /// within [`RaftSettings::learner_catch_up_timeout`] stays a learner (the call fails), so an
    /// unreachable node never becomes a voter that the quorum would have to count.
    pub async fn add_node(&self, id: NodeId, node: StrataNode) -> Result<(), ReplicaError> {
        let map = |e| write_error(&self.raft, self.node_id, e);
        let membership = self.settled_membership().await;
        let voter = membership.voter_ids().any(|v| v == id);
        match membership.membership().get_node(&id) {
            Some(known) if known.incarnation == node.incarnation && voter => return Ok(()),
            Some(known) if known.incarnation != node.incarnation => {
                if voter {
                    return Err(ReplicaError::Engine(Error::invalid(
                        "id",
                        format!(
                            "node {id} is a voter of this group as another of its replicas (incarnation {}, not {}): remove it first",
                            known.incarnation, node.incarnation
                        ),
                    )));
                }
                // A learner left of an earlier replica of the node: adding would keep its
                // entry (and send the new replica messages for the old one).
                self.change_members(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await?;
            }
            _ => {}
        }
        // openraft's own "blocking" add only waits until the learner lags less than its
        // replication threshold, which a short log always meets.
        bounded(self.raft.add_learner(id, node, false))
            .await?
            .map_err(map)?;
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let deadline = tokio::time::Instant::now() + self.settings.learner_catch_up_timeout;
        if self
            .wait_metrics(deadline, |m| matched(m, id) >= target)
            .await
            .is_err()
        {
            return Err(ReplicaError::Unavailable(format!(
                "node {id} has not replicated the log up to index {target} within {:?}; it stays a learner (check that it runs and is reachable, or remove it with remove-node)",
                self.settings.learner_catch_up_timeout
            )));
        }
        self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// The membership in effect here once it is applied (so committed): a membership a
    /// leader appended and did not commit before it went down may yet be replaced, and a
    /// node it makes a voter must not be taken for one. Waits at most
    /// [`MEMBERSHIP_CHANGE_WAIT`], then answers the one in effect.
    async fn settled_membership(&self) -> crate::types::StoredMembership {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_CHANGE_WAIT;
        let applied = |m: &RaftMetrics| m.last_applied >= *m.membership_config.log_id();
        let _ = self.wait_metrics(deadline, applied).await;
        (*self.raft.metrics().borrow().membership_config).clone()
    }

    /// openraft's membership change, at most [`MEMBERSHIP_CHANGE_WAIT`].
    async fn change_members(
        &self,
        change: ChangeMembers<NodeId, StrataNode>,
        retain: bool,
    ) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, ReplicaError> {
        bounded(self.raft.change_membership(change, retain))
            .await?
            .map_err(|e| write_error(&self.raft, self.node_id, e))
    }

    /// Removes a node from the membership (voter or learner). A voter is demoted to a learner
    /// first and given [`REMOVED_HEARS_WAIT`] to replicate that change, then removed.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ReplicaError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_none() {
            return Err(ReplicaError::Engine(Error::invalid(
                "id",
                format!("node {id} is not a member of this cluster"),
            )));
        }
        if membership.voter_ids().any(|v| v == id) {
            // First demoted to a learner, which it hears (it is still replicated to), so that
            // once removed it does not stand for election for ever believing itself a voter.
            let demoted = self
                .change_members(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await?;
            let at = demoted.log_id.index;
            let deadline = tokio::time::Instant::now() + REMOVED_HEARS_WAIT;
            if self
                .wait_metrics(deadline, |m| matched(m, id) >= at)
                .await
                .is_err()
            {
                tracing::info!(
                    node = id,
                    "a removed voter did not hear of its demotion (down?); removing it anyway"
                );
            }
        }
        self.change_members(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// Hands this node's leadership of the group to voter `to` (Raft's leadership transfer):
    /// new appends wait (proposals paused, heartbeats off), `to` catches up to the end of the
    /// log, is told to start an election at once (`TimeoutNow`), and wins it with the longest
    /// log before any follower's timer runs out; the appends waiting then go to the new leader
    /// (answered "not the leader", naming it). Bounded by [`Replica::handover_wait`]: past
    /// it, the heartbeats and proposals resume here and the call fails.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ReplicaError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node_id) {
            return Err(ReplicaError::NotLeader {
                leader: leader_of(&self.raft),
            });
        }
        if to == self.node_id {
            return Ok(());
        }
        let membership = metrics.membership_config.membership();
        let node = membership.get_node(&to).cloned().ok_or_else(|| {
            Error::invalid(
                "to",
                format!("node {to} is not a member of shard {}", self.shard_id),
            )
        })?;
        if !membership.voter_ids().any(|v| v == to) {
            return Err(Error::invalid(
                "to",
                format!(
                    "node {to} is a learner of shard {}: only a voter can lead",
                    self.shard_id
                ),
            )
            .into());
        }
        let wait = self.handover_wait();
        let deadline = tokio::time::Instant::now() + wait;
        let late = |what: &str| {
            ReplicaError::Unavailable(format!(
                "handing shard {}'s leadership to node {to}: {what} within {wait:?}; this node leads on",
                self.shard_id
            ))
        };
        let permits = u32::try_from(BATCHES_IN_FLIGHT_MAX).unwrap_or(u32::MAX);
        let _paused =
            tokio::time::timeout_at(deadline, self.slots.clone().acquire_many_owned(permits))
                .await
                .map_err(|_| late("the entry in flight was not answered"))?
                .map_err(|_| ReplicaError::Unavailable("the proposer stopped".into()))?;
        let _quiet = Quiet::new(&self.raft, &self.handing_over);
        let end = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        self.wait_metrics(deadline, |m| matched(m, to) >= end)
            .await
            .map_err(|()| late(&format!("it did not replicate the log up to index {end}")))?;
        // Told twice: at once (a group of three elects it with this node's vote, the other
        // follower's lease still running), and again once every follower's lease from this
        // leader has run out (larger groups need their votes).
        let lease = self.settings.election_timeout.1 + self.settings.heartbeat;
        let other_leads = |m: &RaftMetrics| m.current_leader.is_some_and(|l| l != self.node_id);
        for round in 0..2 {
            let vote = self.raft.metrics().borrow().vote;
            self.handover
                .timeout_now(to, &node, &vote, wait)
                .await
                .map_err(|e| late(&format!("TimeoutNow failed ({})", e.message())))?;
            let until = match round {
                0 => deadline.min(tokio::time::Instant::now() + lease),
                _ => deadline,
            };
            if self.wait_metrics(until, other_leads).await.is_ok() {
                break;
            }
        }
        if !other_leads(&self.raft.metrics().borrow()) {
            return Err(late("no other node took the lead"));
        }
        match self.raft.metrics().borrow().current_leader {
            Some(l) if l == to => Ok(()),
            other => Err(ReplicaError::Unavailable(format!(
                "shard {}'s leadership went to node {} instead of node {to}",
                self.shard_id,
                other.map_or_else(|| "none".to_string(), |l| l.to_string())
            ))),
        }
    }

    /// How long [`Replica::transfer_leader`] may take (and appends to the group wait at most):
    /// three of the longest election timeouts, within which a follower's lease runs out.
    pub fn handover_wait(&self) -> Duration {
        self.settings.election_timeout.1 * 3
    }

    /// Waits until `done` holds for the Raft metrics, or `deadline`.
    async fn wait_metrics(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn(&RaftMetrics) -> bool,
    ) -> Result<(), ()> {
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout_at(deadline, async {
            loop {
                if done(&metrics.borrow_and_update()) {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    return Err(());
                }
            }
        });
        waited.await.unwrap_or(Err(()))
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if !voters.contains(id) {
                    "learner"
                } else if *id == self.node_id && m.state == ServerState::Candidate {
                    "candidate"
                } else {
                    "follower"
                };
                MemberStatus {
                    id: *id,
                    node: node.clone(),
                    role,
                    matched: matched(&m, *id),
                }
            })
            .collect();
        Status {
            node_id: self.node_id,
            leader: m.current_leader,
            term: m.current_term,
            members,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
    }
}

/// How far node `id` has replicated the leader's log, by the leader's metrics (0: unknown).
fn matched(m: &RaftMetrics, id: NodeId) -> u64 {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |l| l.index)
}

/// Heartbeats off and linearizable reads refused for as long as it lives (a handover:
/// followers must not hear from this leader while the new one is elected), back on when
/// dropped, whatever happened.
/// Its own elections are off too: once it votes for the new leader it would otherwise run
/// for election itself on its short timer, ahead of the node it hands over to.
struct Quiet<'a>(&'a Raft, &'a AtomicBool);

impl<'a> Quiet<'a> {
    fn new(raft: &'a Raft, handing_over: &'a AtomicBool) -> Quiet<'a> {
        handing_over.store(true, Ordering::Release);
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        Quiet(raft, handing_over)
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
        self.0.runtime_config().elect(true);
        self.1.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_engine::ExpectedVersion;

    fn proposal(stream: &str, n: u64) -> Proposal {
        let (reply, _) = oneshot::channel();
        let mut request = AppendRequest::single(stream, ExpectedVersion::Any, Vec::new(), n);
        request.timestamp_us = n;
        Proposal {
            request,
            bytes: 10,
            waiting: Waiting { reply, fence: None },
        }
    }

    fn names(ps: &[Proposal]) -> Vec<(String, u64)> {
        ps.iter()
            .map(|p| (p.request.streams[0].stream.clone(), p.request.timestamp_us))
            .collect()
    }

    /// A pipelined client's runs of appends on one stream: each entry takes one per stream and
    /// the rest wait, in order (the first version stopped at the first repeat: one append per
    /// entry, 536 events/s on a 3-node cluster).
    #[tokio::test]
    async fn an_entry_takes_one_append_per_stream_and_the_rest_keep_their_order() {
        let (tx, mut queue) = mpsc::channel(64);
        for (i, s) in ["a", "a", "b", "a", "c", "b"].iter().enumerate() {
            tx.send(proposal(s, i as u64)).await.unwrap();
        }
        let mut aside = VecDeque::new();
        let first = next_batch(&mut aside, &mut queue, 1 << 20);
        let pair = |s: &str, n| (s.to_string(), n);
        assert_eq!(
            names(&first),
            vec![pair("a", 0), pair("b", 2), pair("c", 4)]
        );
        let second = next_batch(&mut aside, &mut queue, 1 << 20);
        assert_eq!(names(&second), vec![pair("a", 1), pair("b", 5)]);
        let third = next_batch(&mut aside, &mut queue, 1 << 20);
        assert_eq!(names(&third), vec![pair("a", 3)]);
        assert!(aside.is_empty());
    }

    /// Appends an entry left (a pipelined call's run on one stream) go while entries are out,
    /// up to the bound; fresh ones wait until none is out (the group commit).
    #[tokio::test]
    async fn left_appends_go_while_entries_are_out_fresh_ones_wait_for_none() {
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        let first = entry_slot(&slots, false).await.unwrap();
        let mut out = vec![first];
        for _ in 1..BATCHES_IN_FLIGHT_MAX {
            out.push(entry_slot(&slots, true).await.unwrap());
        }
        let soon = Duration::from_millis(50);
        let over = tokio::time::timeout(soon, entry_slot(&slots, true)).await;
        assert!(over.is_err(), "no more than the bound out at once");
        out.truncate(1);
        let fresh = tokio::time::timeout(soon, entry_slot(&slots, false)).await;
        assert!(fresh.is_err(), "a fresh entry waits while one is out");
        assert!(tokio::time::timeout(soon, entry_slot(&slots, true))
            .await
            .is_ok());
        out.clear();
        let fresh = tokio::time::timeout(soon, entry_slot(&slots, false)).await;
        assert!(fresh.is_ok_and(|s| s.is_some()), "none out: it goes");
        slots.close();
        assert!(entry_slot(&slots, true).await.is_none());
    }

    /// A slot-range move's copy takes an entry of its own (its record is flagged a copy as a
    /// whole); appends around it keep their order.
    #[tokio::test]
    async fn a_copy_goes_alone_in_its_entry() {
        let (tx, mut queue) = mpsc::channel(64);
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            let mut p = proposal(s, i as u64);
            p.request.copy = *s == "b" || *s == "c";
            tx.send(p).await.unwrap();
        }
        let mut aside = VecDeque::new();
        let pair = |s: &str, n| (s.to_string(), n);
        let entries: Vec<_> = (0..3)
            .map(|_| names(&next_batch(&mut aside, &mut queue, 1 << 20)))
            .collect();
        assert_eq!(
            entries,
            vec![
                vec![pair("a", 0), pair("d", 3)],
                vec![pair("b", 1)],
                vec![pair("c", 2)]
            ]
        );
        assert!(aside.is_empty());
    }
}
