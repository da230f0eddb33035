//! Replica moves: shard K's replica goes from node F to node T, online, as CockroachDB and
//! TiKV move replicas — the group never has fewer voters than it had:
//!
//! ```text
//!  1 begin    the map places K on its nodes and T, and records the move F → T (next epoch);
//!             T's follower opens K, unformed (only a founder forms a group: T waits)
//!  2 add      K's leader adds T as a learner; T catches up (entries or a snapshot), then is
//!             promoted to voter                           (`Replica::add_node`)
//!  3 hand     F's leadership of K, if any, is handed to T
//!  4 end      the map places K without F and forgets the move (next epoch); F's follower,
//!             once it routes by it, deletes its replica of K, and calls for K that reach F
//!             are passed to the holders from then on
//!  5 remove   K's leader removes F from the group (which counted it as a voter since 4,
//!             down: the others are a majority of it)
//! ```
//!
//! Calls for K reach a node holding it whatever the step: a node the map does not place K on
//! passes them to one it does ([`crate::forward`]). Moves run at the metadata group's leader.
//! One at a time per shard: the map refuses to begin a second while one is recorded, so this
//! holds across metadata leaders. Every step is a no-op when done already, so a move that
//! failed part way (a node down, the metadata leader changed) is finished by running it again
//! (`cluster status` shows it in the map; another move of the shard is refused naming it).
//! Until step 4 a move can be cancelled instead ([`ReplicaMover::cancel`]): a run of it here
//! stops, T hands back any leadership, the map places K where it was (T's follower deletes
//! the replica it opened), and T leaves the group. A group member the map does not place
//! (a move's or cancel's last step failed) is taken out by [`ReplicaMover::tidy`], which the
//! metadata leader runs now and then, and before the next move of the shard begins. T must be a voter of the metadata group
//! (`cluster add-node` first). A node may hold no shard (added, or drained to leave the
//! cluster); it serves, passing every call to the nodes holding the shards, and restarts so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use strata_proto::v1::cluster_client::ClusterClient;
use strata_raft::StrataNode;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Status;

use crate::clock::WallClock;
use crate::forward::{self, Peers};
use crate::map_cell::MapCell;
use crate::meta::Meta;
use crate::status::invalid;

/// How many times a membership step is tried while its group's leader changes.
pub const STEP_ATTEMPTS: u32 = 8;
/// The pause between two tries of a step.
const STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a cancel waits for the move it cancels to stop.
pub const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs replica moves (on the metadata group's leader).
#[derive(Clone)]
pub struct ReplicaMover {
    meta: Meta,
    cell: MapCell,
    groups: Arc<dyn GroupOps>,
    /// This node's client address (a step about a shard held here calls this node).
    here: String,
    clock: Arc<dyn WallClock>,
    /// The replica moves running here now, by shard.
    busy: Busy,
    /// This node's slot-range mover, when it has one (a shard it moves slots of or to does
    /// not move a replica meanwhile).
    slots: Option<crate::mover::Mover>,
}

/// The replica moves running on a node: each one's step and cancel.
type Busy = Arc<Mutex<BTreeMap<ShardId, Running>>>;

/// A replica move running here.
struct Running {
    step: &'static str,
    cancel: watch::Sender<bool>,
}

impl std::fmt::Debug for ReplicaMover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaMover")
            .field("here", &self.here)
            .finish_non_exhaustive()
    }
}

/// Marks a shard busy for as long as it lives: its move's step, and whether it was cancelled.
struct Claim {
    busy: Busy,
    shard: ShardId,
    cancelled: watch::Receiver<bool>,
}

impl Claim {
    fn step(&self, step: &'static str) {
        if let Some(r) = strata_engine::sync::lock(&self.busy).get_mut(&self.shard) {
            r.step = step;
        }
    }

    /// `work`, unless the move is cancelled first (ABORTED).
    async fn unless_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut cancelled = self.cancelled.clone();
        tokio::select! {
            done = work => done,
            _ = cancelled.wait_for(|c| *c) => Err(Status::aborted(format!(
                "the replica move of {} was cancelled", self.shard
            ))),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        strata_engine::sync::lock(&self.busy).remove(&self.shard);
    }
}

/// A replica move begun (the map records it), to be finished.
pub struct Begun {
    claim: Claim,
    c: Checked,
    at: String,
}

/// A move's request, checked against the map and the cluster's nodes.
struct Checked {
    shard: ShardId,
    from: u64,
    to: (u64, StrataNode),
    /// The nodes holding the shard now, by the map.
    holders: Vec<u64>,
    /// The map no longer places the shard on `from` (a move that stopped before its group
    /// removed `from`, or bad input: told apart by the group).
    ended: bool,
    /// The nodes' client addresses.
    nodes: BTreeMap<u64, StrataNode>,
}

impl ReplicaMover {
    /// A mover recording maps in `meta`, routing by `cell`, changing groups through `groups`.
    pub fn new(
        meta: Meta,
        cell: MapCell,
        groups: Arc<dyn GroupOps>,
        here: String,
        clock: Arc<dyn WallClock>,
    ) -> ReplicaMover {
        ReplicaMover {
            meta,
            cell,
            groups,
            here,
            clock,
            busy: Arc::default(),
            slots: None,
        }
    }

    /// The mover refusing a replica move of a shard `slots` moves slots of or to now.
    pub fn with_slot_mover(mut self, slots: crate::mover::Mover) -> ReplicaMover {
        self.slots = Some(slots);
        self
    }

    /// Moves shard `shard`'s replica from node `from` to node `to` (see the module); answers
    /// when done.
    pub async fn run(&self, shard: u32, from: u64, to: u64) -> Result<(), Status> {
        let begun = self.begin(shard, from, to).await?;
        self.finish(begun).await
    }

    /// Checks the move and records its first step in the map (a no-op when the map records
    /// it already: a move resumed); [`ReplicaMover::finish`] runs the rest.
    pub async fn begin(&self, shard: u32, from: u64, to: u64) -> Result<Begun, Status> {
        let shard = ShardId(shard);
        let claim = self.claim(shard)?;
        claim.step("beginning");
        let map = self.current().await?;
        let mut c = self.check(&map, shard, from, to)?;
        let at = self.step_node(shard, &c.holders, (c.from, c.to.0), &c.nodes)?;
        if c.ended && !self.member(&at, shard, from).await? {
            return Err(invalid(
                "from",
                format!(
                    "node {from} holds no replica of {shard} (its replicas: {:?})",
                    c.holders
                ),
            ));
        }
        if !c.ended && map.replica_move(shard).is_none() {
            self.no_slot_move(shard)?;
            // Members an earlier move left (its source, when its last step failed) go first:
            // the target may be one, and must join afresh (its old replica is deleted).
            self.remove_strays(shard, &at, &c.holders).await?;
            let begun = map.with_replica_move_begun(shard, &c.holders, (c.from, c.to.0));
            let incarnation = begun.as_ref().map_or(0, |b| b.incarnation(shard, c.to.0));
            self.install(begun).await?;
            c.to.1.incarnation = incarnation;
        } else {
            // Resumed: the target's replica is the one the recorded move created.
            c.to.1.incarnation = map.incarnation(shard, c.to.0);
        }
        Ok(Begun { claim, c, at })
    }

    /// The rest of a move [`ReplicaMover::begin`] began; answers when done, or ABORTED once
    /// [`ReplicaMover::cancel`] stops it.
    pub async fn finish(&self, begun: Begun) -> Result<(), Status> {
        let Begun { claim, c, at } = begun;
        let shard = c.shard;
        if !c.ended {
            claim.step("adding");
            claim.unless_cancelled(self.add(&c, &at)).await?;
            claim.step("handing over");
            claim.unless_cancelled(self.hand_over(&c, &at)).await?;
            claim.step("ending");
            let map = self.current().await?;
            claim
                .unless_cancelled(self.install(map.with_replica_move_ended(shard)))
                .await?;
        }
        claim.step("removing");
        self.remove_member(shard, &at, c.from).await?;
        tracing::info!(
            shard = shard.0,
            from = c.from,
            to = c.to.0,
            "a replica moved"
        );
        Ok(())
    }

    /// Undoes shard `shard`'s replica move in progress (a move running here stops first):
    /// the new replica hands back any leadership and leaves the group, and the map places the
    /// shard where it was. `from` and `to` are 0 or the move's own.
    pub async fn cancel(&self, shard: u32, from: u64, to: u64) -> Result<(), Status> {
        let shard = ShardId(shard);
        self.stop_running(shard).await?;
        let claim = self.claim(shard)?;
        claim.step("cancelling");
        let map = self.current().await?;
        let Some((f, t)) = map.replica_move(shard) else {
            return Err(Status::failed_precondition(format!(
                "no replica move of {shard} is in progress (its replicas: {:?}): nothing to cancel",
                self.holders(&map, shard)
            )));
        };
        for (field, asked, is) in [("from", from, f), ("to", to, t)] {
            if asked != 0 && asked != is {
                return Err(invalid(
                    field,
                    format!("the replica move of {shard} in progress is {f} → {t}"),
                ));
            }
        }
        let holders = self.holders(&map, shard);
        let nodes = crate::meta::voters(&self.meta);
        let at = self.step_node(shard, &holders, (f, t), &nodes)?;
        self.step("handing the new replica's leadership back", || async {
            if self.groups.view(&at, shard).await?.leader != t {
                return Ok(());
            }
            self.groups.transfer(&at, shard, f).await
        })
        .await?;
        // The map first (from the map as it is now: it may have changed meanwhile), then the
        // group, as a move ends: the target's follower closes its replica once the map no
        // longer places it, and a replica a group removed is never one the map places (it
        // would be taken up again with what it held). A removal that fails leaves a member
        // the map does not place, which `tidy` (or the next move of the shard) takes out.
        let map = self.current().await?;
        self.install(map.with_replica_move_cancelled(shard)).await?;
        self.remove_member(shard, &at, t).await?;
        tracing::info!(
            shard = shard.0,
            from = f,
            to = t,
            "a replica move was cancelled"
        );
        Ok(())
    }

    /// Takes out of each shard's group the members the map does not place it on, when the map
    /// records no move of it (a move whose last step failed after the map's end: its source
    /// stays a member, or a learner, until removed). Run by the metadata leader now and then;
    /// a shard a move runs on here is passed over. Returns what it removed.
    pub async fn tidy(&self) -> Result<Vec<(ShardId, u64)>, Status> {
        let map = self.current().await?;
        let nodes = crate::meta::voters(&self.meta);
        let mut removed = Vec::new();
        for shard in map.shards() {
            let Some(placed) = map.replicas(shard) else {
                continue;
            };
            if map.replica_move(shard).is_some() {
                continue;
            }
            let Ok(claim) = self.claim(shard) else {
                continue;
            };
            claim.step("tidying");
            let at = self.step_node(shard, placed, (0, 0), &nodes)?;
            let strays = self.remove_strays(shard, &at, placed).await?;
            removed.extend(strays.into_iter().map(|n| (shard, n)));
        }
        Ok(removed)
    }

    /// Removes from `shard`'s group (asked at `at`) the members not among `placed`; returns
    /// them.
    async fn remove_strays(
        &self,
        shard: ShardId,
        at: &str,
        placed: &[u64],
    ) -> Result<Vec<u64>, Status> {
        let view = self.groups.view(at, shard).await?;
        let strays: Vec<u64> = view
            .members
            .into_iter()
            .filter(|m| !placed.contains(m))
            .collect();
        for member in &strays {
            self.remove_member(shard, at, *member).await?;
            tracing::info!(
                shard = shard.0,
                node = member,
                "a replica the map no longer places left its group"
            );
        }
        Ok(strays)
    }

    /// Refuses while this node's slot mover moves slots of or to `shard`: one move at a time
    /// per shard.
    fn no_slot_move(&self, shard: ShardId) -> Result<(), Status> {
        let moving = self.slots.as_ref().and_then(crate::mover::Mover::status);
        match moving {
            Some(m)
                if (m.from == shard || m.to == shard)
                    && matches!(m.step, crate::mover::Step::Copying | crate::mover::Step::Fenced) =>
            {
                Err(Status::failed_precondition(format!(
                    "slots {} are moving from {} to {}: one move at a time per shard; move the replica once it ends",
                    m.range, m.from, m.to
                )))
            }
            _ => Ok(()),
        }
    }

    /// The step of each replica move running here.
    pub fn steps(&self) -> BTreeMap<ShardId, &'static str> {
        strata_engine::sync::lock(&self.busy)
            .iter()
            .map(|(shard, r)| (*shard, r.step))
            .collect()
    }

    /// Cancels the move of `shard` running here, if any, and waits (at most
    /// [`CANCEL_WAIT`]) until it has stopped.
    async fn stop_running(&self, shard: ShardId) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            match strata_engine::sync::lock(&self.busy).get(&shard) {
                Some(r) => r.cancel.send_replace(true),
                None => return Ok(()),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "the replica move of {shard} running here did not stop within {CANCEL_WAIT:?}; cancel again"
                )));
            }
            tokio::time::sleep(STEP_PAUSE / 5).await;
        }
    }

    /// Removes node `id` from `shard`'s group (asked at `at`), if it is a member.
    async fn remove_member(&self, shard: ShardId, at: &str, id: u64) -> Result<(), Status> {
        self.step("removing a replica from the group", || async {
            if !self.member(at, shard, id).await? {
                return Ok(());
            }
            self.groups.remove(at, shard, id).await
        })
        .await
    }

    /// Step 2: the group adds the target (learner, caught up, voter), asked at `at`.
    async fn add(&self, c: &Checked, at: &str) -> Result<(), Status> {
        self.step("adding the new replica", || async {
            self.still_recorded(c).await?;
            self.groups.add(at, c.shard, c.to.0, &c.to.1).await
        })
        .await?;
        tracing::info!(
            shard = c.shard.0,
            node = c.to.0,
            "a moved replica joined its group"
        );
        Ok(())
    }

    /// Step 3: the source's leadership of the shard, if it leads it, handed to the target
    /// (before its replica closes, so the group does not wait out an election).
    async fn hand_over(&self, c: &Checked, at: &str) -> Result<(), Status> {
        self.step("handing the old replica's leadership over", || async {
            self.still_recorded(c).await?;
            if self.groups.view(at, c.shard).await?.leader != c.from {
                return Ok(());
            }
            self.groups.transfer(at, c.shard, c.to.0).await
        })
        .await
    }

    /// Runs one membership step, again while it answers UNAVAILABLE (a leader changing: the
    /// step's own handover, an election), at most [`STEP_ATTEMPTS`] times. Steps are no-ops
    /// once done, so a retry is safe.
    async fn step<F, Fut>(&self, what: &str, attempt: F) -> Result<(), Status>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == tonic::Code::Unavailable && tries < STEP_ATTEMPTS => {
                    tracing::info!(step = what, error = %e.message(), "retrying a replica move's step");
                    tokio::time::sleep(STEP_PAUSE).await;
                }
                Err(e) => return Err(step_failed(what, &e)),
            }
        }
    }

    fn claim(&self, shard: ShardId) -> Result<Claim, Status> {
        let mut busy = strata_engine::sync::lock(&self.busy);
        if busy.contains_key(&shard) {
            return Err(Status::failed_precondition(format!(
                "a replica move of {shard} is in progress: one at a time per shard"
            )));
        }
        let (cancel, cancelled) = watch::channel(false);
        busy.insert(
            shard,
            Running {
                step: "checking",
                cancel,
            },
        );
        Ok(Claim {
            busy: self.busy.clone(),
            shard,
            cancelled,
        })
    }

    /// The cluster's map as the metadata group has it now: read after this node confirms it
    /// leads the group, not the map it routes by (which may lag: a move cancelled or ended by
    /// another node's run would look still under way). A node that refuses calls runs no move.
    async fn current(&self) -> Result<Arc<ClusterMap>, Status> {
        let routed = self
            .cell
            .routable()
            .map_err(|why| Status::failed_precondition(why.to_string()))?;
        self.meta
            .replica()
            .linearizable_barrier()
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "reading the cluster map at the metadata group's leader: {e}"
                ))
            })?;
        match self.meta.latest() {
            Ok(Some((_, map))) => Ok(Arc::new(map)),
            Ok(None) => Ok(routed),
            Err(e) => Err(Status::internal(e)),
        }
    }

    /// Fails (not to be retried) once the map no longer records `c`'s move: it was cancelled,
    /// or another node's run finished it.
    async fn still_recorded(&self, c: &Checked) -> Result<(), Status> {
        let map = self.current().await?;
        if map.replica_move(c.shard) == Some((c.from, c.to.0)) {
            return Ok(());
        }
        Err(Status::aborted(format!(
            "{}'s replica move {} → {} is no longer recorded in the map (cancelled, or finished by another run): stopped",
            c.shard, c.from, c.to.0
        )))
    }

    /// The nodes holding `shard` by `map` (a shard not placed: every member of the cluster).
    fn holders(&self, map: &ClusterMap, shard: ShardId) -> Vec<u64> {
        match map.replicas(shard) {
            Some(nodes) => nodes.to_vec(),
            None => crate::meta::voters(&self.meta).into_keys().collect(),
        }
    }

    /// Checks the request against `map`.
    fn check(
        &self,
        map: &ClusterMap,
        shard: ShardId,
        from: u64,
        to: u64,
    ) -> Result<Checked, Status> {
        if !map.shards().contains(&shard) {
            return Err(invalid(
                "shard",
                format!(
                    "no {shard}: the cluster has shards {:?}",
                    ids(&map.shards())
                ),
            ));
        }
        let nodes = crate::meta::voters(&self.meta);
        let Some(node) = nodes.get(&to).cloned() else {
            return Err(invalid(
                "to",
                format!(
                    "node {to} is not a member of the cluster (members: {:?}): start it and add it with `strata cluster add-node` first",
                    nodes.keys().collect::<Vec<_>>()
                ),
            ));
        };
        if from == to {
            return Err(invalid("to", format!("node {to} is the node moved from")));
        }
        let holders = self.holders(map, shard);
        let ended = match map.replica_move(shard) {
            // Resumed: the target is among the holders already.
            Some(moving) if moving == (from, to) => false,
            Some((f, t)) => {
                return Err(Status::failed_precondition(
                    strata_proto::routing::MapError::ReplicaMoving {
                        shard,
                        from: f,
                        to: t,
                    }
                    .to_string(),
                ))
            }
            None => match (holders.contains(&from), holders.contains(&to)) {
                (false, true) => true,
                (false, false) => {
                    return Err(invalid(
                        "from",
                        format!(
                            "node {from} holds no replica of {shard} (its replicas: {holders:?})"
                        ),
                    ))
                }
                (true, true) => {
                    return Err(invalid(
                        "to",
                        format!(
                        "node {to} holds a replica of {shard} already (its replicas: {holders:?})"
                    ),
                    ))
                }
                (true, false) => false,
            },
        };
        Ok(Checked {
            shard,
            from,
            to: (to, node),
            holders,
            ended,
            nodes,
        })
    }

    /// Where the group's membership steps of a move `from` → `to` are asked: this node when
    /// it holds the shard (and is neither end of the move), else another holder.
    fn step_node(
        &self,
        shard: ShardId,
        holders: &[u64],
        (from, to): (u64, u64),
        nodes: &BTreeMap<u64, StrataNode>,
    ) -> Result<String, Status> {
        let me = self.meta.replica().node_id();
        let staying: Vec<u64> = holders
            .iter()
            .copied()
            .filter(|n| *n != from && *n != to)
            .collect();
        if staying.contains(&me) {
            return Ok(self.here.clone());
        }
        let found = staying
            .iter()
            .chain([&from])
            .find_map(|n| nodes.get(n).map(|node| node.addr.clone()));
        found.ok_or_else(|| {
            Status::unavailable(format!(
                "no node holding {shard} is a member of the cluster"
            ))
        })
    }

    /// Whether node `id` is a member of `shard`'s group, asked of the node at `at`.
    async fn member(&self, at: &str, shard: ShardId, id: u64) -> Result<bool, Status> {
        Ok(self.groups.view(at, shard).await?.members.contains(&id))
    }

    /// Records `map` with `shard` on `nodes` in the metadata group, and waits until this node
    /// routes by it.
    async fn install(
        &self,
        next: Result<ClusterMap, strata_proto::routing::MapError>,
    ) -> Result<(), Status> {
        let next = next.map_err(|e| Status::failed_precondition(e.to_string()))?;
        crate::meta::install(&self.meta, &self.cell, next, self.clock.now_us())
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "recording the shard's replicas: {e}; run the move again to finish it"
                ))
            })
    }
}

/// A future a [`GroupOps`] call answers with.
pub type GroupFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Status>> + Send + 'a>>;

/// A shard's group as a node holding a replica of it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Its leader (0: none known).
    pub leader: u64,
    /// Its members, voters and learners.
    pub members: Vec<u64>,
}

/// How a replica move reaches a shard's group: each call is asked of the node at client
/// address `at` (holding a replica of the shard), which passes membership changes on to the
/// group's leader. Over gRPC between nodes ([`GrpcGroups`]); the simulator calls its nodes'
/// replicas.
pub trait GroupOps: Send + Sync {
    /// The group as its leader sees it, asked of the node at `at` (as `at` sees it while no
    /// leader is known; UNAVAILABLE when `at` holds no replica).
    fn view<'a>(&'a self, at: &'a str, shard: ShardId) -> GroupFuture<'a, GroupView>;
    /// Adds node `id` (learner, caught up, voter); done already is no error.
    fn add<'a>(
        &'a self,
        at: &'a str,
        shard: ShardId,
        id: u64,
        node: &'a StrataNode,
    ) -> GroupFuture<'a, ()>;
    /// Hands the group's leadership to voter `to`.
    fn transfer<'a>(&'a self, at: &'a str, shard: ShardId, to: u64) -> GroupFuture<'a, ()>;
    /// Removes member `id` from the group.
    fn remove<'a>(&'a self, at: &'a str, shard: ShardId, id: u64) -> GroupFuture<'a, ()>;
}

/// [`GroupOps`] over the `Cluster` service of the node at `at` (the call names the shard).
#[derive(Clone)]
pub struct GrpcGroups(pub Peers);

impl GrpcGroups {
    /// `call` on the `Cluster` service of the node at `at` with `request` about `shard`
    /// (passed on to a holder, then to the group's leader); the answer dropped.
    fn ask<'a, R, Fut>(
        &'a self,
        at: &'a str,
        (shard, request): (ShardId, R),
        call: impl FnOnce(ClusterClient<Channel>, tonic::Request<R>) -> Fut + Send + 'a,
    ) -> GroupFuture<'a, ()>
    where
        R: Send + 'a,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::ClusterStatus>, Status>>
            + Send
            + 'a,
    {
        Box::pin(async move {
            let client = self.0.cluster(at)?;
            call(client, forward::for_shard_via_holder(request, shard.0))
                .await
                .map(drop)
        })
    }

    /// The group as the node at `at` sees it, and the cluster's nodes.
    async fn view_at(
        &self,
        at: &str,
        shard: ShardId,
    ) -> Result<(GroupView, Vec<pb::NodeStatus>), Status> {
        let request = forward::forwarded(tonic::Request::new(pb::StatusRequest {}));
        let status = self.0.cluster(at)?.status(request).await?.into_inner();
        let me = status.node_id;
        let view = status
            .shards
            .into_iter()
            .find(|s| s.id == shard.0 && s.replicas.contains(&me))
            .map(|s| GroupView {
                leader: s.leader,
                members: s.replicas,
            })
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the node at {at} holds no replica of {shard}; retry"
                ))
            })?;
        Ok((view, status.nodes))
    }
}

impl GroupOps for GrpcGroups {
    fn view<'a>(&'a self, at: &'a str, shard: ShardId) -> GroupFuture<'a, GroupView> {
        Box::pin(async move {
            let (here, nodes) = self.view_at(at, shard).await?;
            let leader = nodes
                .iter()
                .find(|n| n.id == here.leader && n.addr != at)
                .map(|n| n.addr.clone());
            match leader {
                Some(addr) => match self.view_at(&addr, shard).await {
                    Ok((theirs, _)) if theirs.leader == here.leader => Ok(theirs),
                    _ => Ok(here),
                },
                None => Ok(here),
            }
        })
    }

    fn add<'a>(
        &'a self,
        at: &'a str,
        shard: ShardId,
        id: u64,
        node: &'a StrataNode,
    ) -> GroupFuture<'a, ()> {
        let add = pb::AddNodeRequest {
            id,
            addr: node.addr.clone(),
            raft_addr: node.raft_addr.clone(),
            incarnation: node.incarnation,
        };
        self.ask(
            at,
            (shard, add),
            |mut c, r| async move { c.add_node(r).await },
        )
    }

    fn transfer<'a>(&'a self, at: &'a str, shard: ShardId, to: u64) -> GroupFuture<'a, ()> {
        let request = pb::TransferLeaderRequest {
            shard: shard.0,
            to,
            prefer: false,
        };
        self.ask(at, (shard, request), |mut c, r| async move {
            c.transfer_leader(r).await
        })
    }

    fn remove<'a>(&'a self, at: &'a str, shard: ShardId, id: u64) -> GroupFuture<'a, ()> {
        let remove = pb::RemoveNodeRequest { id };
        self.ask(at, (shard, remove), |mut c, r| async move {
            c.remove_node(r).await
        })
    }
}

fn ids(shards: &[ShardId]) -> Vec<u32> {
    shards.iter().map(|s| s.0).collect()
}

/// A failed step's status: its own code, saying which step and that a rerun finishes it.
fn step_failed(step: &str, e: &Status) -> Status {
    if e.code() == tonic::Code::Aborted {
        // Stopped on purpose (cancelled, or no longer recorded): running it again is no fix.
        return Status::aborted(format!("{step}: {}", e.message()));
    }
    Status::new(
        e.code(),
        format!("{step}: {}; run the move again to finish it", e.message()),
    )
}
