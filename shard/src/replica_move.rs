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
//! T must be a voter of the metadata group (`cluster add-node` first). A node may be left
//! holding no shard (one being drained to leave the cluster); it serves on, passing every call
//! to the nodes holding the shards, but does not start again without one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use strata_raft::StrataNode;
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

/// Runs replica moves (on the metadata group's leader).
#[derive(Clone)]
pub struct ReplicaMover {
    meta: Meta,
    cell: MapCell,
    peers: Peers,
    /// This node's client address (a step about a shard held here calls this node).
    here: String,
    clock: Arc<dyn WallClock>,
    /// The shards a replica move runs on now.
    busy: Arc<Mutex<BTreeSet<ShardId>>>,
}

impl std::fmt::Debug for ReplicaMover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaMover")
            .field("here", &self.here)
            .finish_non_exhaustive()
    }
}

/// Marks a shard busy for as long as it lives.
struct Claim {
    busy: Arc<Mutex<BTreeSet<ShardId>>>,
    shard: ShardId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        strata_engine::sync::lock(&self.busy).remove(&self.shard);
    }
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
    /// A mover recording maps in `meta`, routing by `cell`, reaching nodes through `peers`.
    pub fn new(
        meta: Meta,
        cell: MapCell,
        peers: Peers,
        here: String,
        clock: Arc<dyn WallClock>,
    ) -> ReplicaMover {
        ReplicaMover {
            meta,
            cell,
            peers,
            here,
            clock,
            busy: Arc::default(),
        }
    }

    /// Moves shard `shard`'s replica from node `from` to node `to` (see the module); answers
    /// when done.
    pub async fn run(&self, shard: u32, from: u64, to: u64) -> Result<(), Status> {
        let shard = ShardId(shard);
        let _claim = self.claim(shard)?;
        let map = self.routing()?;
        let c = self.check(&map, shard, from, to)?;
        let at = self.step_node(&c)?;
        if c.ended && !self.member(&at, shard, from).await? {
            return Err(invalid(
                "from",
                format!(
                    "node {from} holds no replica of {shard} (its replicas: {:?})",
                    c.holders
                ),
            ));
        }
        if !c.ended {
            if map.replica_move(shard).is_none() {
                let begun = map.with_replica_move_begun(shard, &c.holders, (c.from, c.to.0));
                self.install(begun).await?;
            }
            self.add(&c, &at).await?;
            self.hand_over(&c, &at).await?;
            let map = self.routing()?;
            self.install(map.with_replica_move_ended(shard)).await?;
        }
        self.step("removing the old replica from the group", || async {
            if !self.member(&at, shard, c.from).await? {
                return Ok(());
            }
            let remove = pb::RemoveNodeRequest { id: c.from };
            self.peers
                .cluster(&at)?
                .remove_node(forward::for_shard_via_holder(remove, shard.0))
                .await
                .map(drop)
        })
        .await?;
        tracing::info!(
            shard = shard.0,
            from = c.from,
            to = c.to.0,
            "a replica moved"
        );
        Ok(())
    }

    /// Step 2: the group adds the target (learner, caught up, voter), asked at `at`.
    async fn add(&self, c: &Checked, at: &str) -> Result<(), Status> {
        let add = pb::AddNodeRequest {
            id: c.to.0,
            addr: c.to.1.addr.clone(),
            raft_addr: c.to.1.raft_addr.clone(),
        };
        self.step("adding the new replica", || {
            let (cluster, add) = (self.peers.cluster(at), add.clone());
            async move {
                cluster?
                    .add_node(forward::for_shard_via_holder(add, c.shard.0))
                    .await
                    .map(drop)
            }
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
            if self.group(at, c.shard).await?.leader != c.from {
                return Ok(());
            }
            let request = pb::TransferLeaderRequest {
                shard: c.shard.0,
                to: c.to.0,
            };
            self.peers
                .cluster(at)?
                .transfer_leader(forward::for_shard_via_holder(request, c.shard.0))
                .await
                .map(drop)
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
        if !busy.insert(shard) {
            return Err(Status::failed_precondition(format!(
                "a replica move of {shard} is in progress: one at a time per shard"
            )));
        }
        Ok(Claim {
            busy: self.busy.clone(),
            shard,
        })
    }

    fn routing(&self) -> Result<Arc<ClusterMap>, Status> {
        self.cell
            .routable()
            .map_err(|why| Status::failed_precondition(why.to_string()))
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

    /// Where the group's membership steps are asked: this node when it holds the shard (and
    /// is not the node leaving), else another holder.
    fn step_node(&self, c: &Checked) -> Result<String, Status> {
        let me = self.meta.replica().node_id();
        let staying: Vec<u64> = c
            .holders
            .iter()
            .copied()
            .filter(|n| *n != c.from && *n != c.to.0)
            .collect();
        if staying.contains(&me) {
            return Ok(self.here.clone());
        }
        let found = staying
            .iter()
            .chain([&c.from])
            .find_map(|n| c.nodes.get(n).map(|node| node.addr.clone()));
        found.ok_or_else(|| {
            Status::unavailable(format!(
                "no node holding {} is a member of the cluster",
                c.shard
            ))
        })
    }

    /// Shard `shard`'s group as the node at `at` (holding a replica of it) sees it.
    async fn group(&self, at: &str, shard: ShardId) -> Result<pb::ShardStatus, Status> {
        let request = forward::forwarded(tonic::Request::new(pb::StatusRequest {}));
        let status = self.peers.cluster(at)?.status(request).await?.into_inner();
        let me = status.node_id;
        status
            .shards
            .into_iter()
            .find(|s| s.id == shard.0 && s.replicas.contains(&me))
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the node at {at} holds no replica of {shard}; retry"
                ))
            })
    }

    /// Whether node `id` is a member of `shard`'s group, asked of the node at `at`.
    async fn member(&self, at: &str, shard: ShardId, id: u64) -> Result<bool, Status> {
        Ok(self.group(at, shard).await?.replicas.contains(&id))
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

fn ids(shards: &[ShardId]) -> Vec<u32> {
    shards.iter().map(|s| s.0).collect()
}

/// A failed step's status: its own code, saying which step and that a rerun finishes it.
fn step_failed(step: &str, e: &Status) -> Status {
    Status::new(
        e.code(),
        format!("{step}: {}; run the move again to finish it", e.message()),
    )
}
