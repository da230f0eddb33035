//! The `strata.v1.Cluster` service: forming a replicated cluster (every shard's Raft group),
//! its status, and membership changes (learner → caught up → voter; removal), applied to every
//! shard's group the node holds (a node holds every shard unless replicas moved:
//! [`crate::replica_move`], `MoveShard`). A group led by another node has its
//! change forwarded there ([`crate::forward`], restricted to that shard). Leadership handovers
//! (`TransferLeader`) go to the shard's leader; a removal first hands over what the leaving
//! node leads ([`crate::balance`] picks the voter leading the fewest). On a node without
//! replication only `Status` answers (a one-node view); the rest fail with
//! FAILED_PRECONDITION.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use strata_proto::routing::{MapError, ShardId};
use strata_proto::v1 as pb;
use strata_raft::{Replica, ReplicaError, StrataNode};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::backend::replica_status;
use crate::balance::{self, ShardLeads};
use crate::forward::{self, Peers};
use crate::meta::Meta;
use crate::mover::{MoveError, Mover, ABANDONED_FENCE_GRACE};
use crate::replica_move::ReplicaMover;
use crate::shards::LocalShards;
use crate::stats::ServiceStats;

/// How many of [`ClusterService::recover_moves`]'s intervals pass between two looks for
/// members a replica move left in a group.
pub const TIDY_EVERY: u64 = 5;

/// The service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    shards: LocalShards,
    /// This node's client address (for the one-node view).
    addr: String,
    /// The other nodes (membership changes of groups led there are forwarded).
    peers: Option<Peers>,
    /// The node's service counters (calls forwarded).
    stats: Arc<ServiceStats>,
    /// Slot-range moves, on a node of several shards without replication.
    mover: Option<Mover>,
    /// Replica moves, on a replicated node of several shards.
    replica_mover: Option<ReplicaMover>,
}

impl ClusterService {
    /// The service of a node's shards (replicas, or engines without replication).
    pub fn new(
        shards: LocalShards,
        addr: String,
        peers: Option<Peers>,
        stats: Arc<ServiceStats>,
    ) -> ClusterService {
        ClusterService {
            shards,
            addr,
            peers,
            stats,
            mover: None,
            replica_mover: None,
        }
    }

    /// With replica moves by `mover`.
    pub fn with_replica_mover(mut self, mover: ReplicaMover) -> ClusterService {
        self.replica_mover = Some(mover);
        self
    }

    /// With slot-range moves by `mover`.
    pub fn with_mover(mut self, mover: Mover) -> ClusterService {
        self.mover = Some(mover);
        self
    }

    /// The moves' runner, if the node moves slots.
    pub fn mover(&self) -> Option<&Mover> {
        self.mover.as_ref()
    }

    /// The latest move's progress, as `Status` shows it.
    fn move_status(&self) -> Option<pb::MoveStatus> {
        let mover = self.mover.as_ref()?;
        let s = mover.status()?;
        Some(pb::MoveStatus {
            start: s.range.start,
            end: s.range.end,
            from_shard: s.from.0,
            to_shard: s.to.0,
            step: s.step.name().into(),
            source_bytes: s.source_bytes,
            scanned_bytes: s.scanned_bytes,
            copied_events: s.copied_events,
            copied_bytes: s.copied_bytes,
            streams: s.streams,
            pause_us: s.pause_us,
            elapsed_us: s.elapsed_us,
            error: s.error.unwrap_or_default(),
            rate: mover.throttle().stats().rate.load(Ordering::Relaxed),
        })
    }

    /// The replicas a call is about: every shard's and the metadata group's, or the one a
    /// forwarded call names.
    fn replicas(&self, metadata: &MetadataMap) -> Result<Vec<Replica>, Status> {
        let mut all = self.shards.replicas();
        if all.is_empty() {
            return Err(Status::failed_precondition(
                "this node runs without replication (strata dev); start it with `strata node --id N --peer …` to form a cluster",
            ));
        }
        all.extend(self.shards.meta.as_ref().map(Meta::replica).cloned());
        match forward::shard_of(metadata)? {
            None => Ok(all),
            Some(id) => all
                .into_iter()
                .find(|r| r.shard_id() == u64::from(id))
                .map(|r| vec![r])
                .ok_or_else(|| Status::not_found(format!("shard {id} is not on this node"))),
        }
    }

    /// Runs a membership change on each replica's group: here where this node leads it, at its
    /// leader otherwise (`remote` sends the forwarded call). Stops at the first failure.
    async fn each_group<F, Fut, R, RFut>(
        &self,
        metadata: &MetadataMap,
        concerned: impl Fn(&Replica) -> bool,
        local: F,
        remote: R,
    ) -> Result<(), Status>
    where
        F: Fn(Replica) -> Fut,
        Fut: Future<Output = Result<(), ReplicaError>>,
        R: Fn(pb::cluster_client::ClusterClient<tonic::transport::Channel>, u32) -> RFut,
        RFut: Future<Output = Result<(), Status>>,
    {
        let forwarded = forward::is_forwarded(metadata);
        for replica in self.replicas(metadata)? {
            if !concerned(&replica) {
                continue;
            }
            let leader = replica.leader().filter(|(id, _)| *id != replica.node_id());
            match (leader, &self.peers, forwarded) {
                (Some((_, node)), Some(peers), false) => {
                    let shard = u32::try_from(replica.shard_id())
                        .map_err(|_| Status::internal("a shard id past u32"))?;
                    remote(peers.cluster(&node.addr)?, shard).await?;
                }
                _ => local(replica.clone()).await.map_err(replica_status)?,
            }
        }
        Ok(())
    }

    /// Records where every shard not placed yet is (on each voter of the metadata group, as
    /// every node holds it) before the cluster's nodes change: a node added from then on holds
    /// no replica until replicas move to it.
    async fn pin_placement(&self) -> Result<(), Status> {
        let Some(meta) = &self.shards.meta else {
            return Ok(());
        };
        let map = self
            .shards
            .map
            .routable()
            .map_err(|why| Status::failed_precondition(why.to_string()))?;
        let voters: Vec<u64> = crate::meta::voters(meta).into_keys().collect();
        let next = map
            .with_unplaced_on(&voters)
            .map_err(|e| Status::internal(e.to_string()))?;
        let Some(next) = next else {
            return Ok(());
        };
        let now = crate::clock::WallClock::now_us(&crate::clock::SystemWallClock::default());
        crate::meta::install(meta, &self.shards.map, next, now)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "recording where the shards are before the node joins: {e}; retry"
                ))
            })
    }

    /// `TransferLeader` without a preference: at the shard's leader (passed on there).
    async fn hand_over(
        &self,
        metadata: MetadataMap,
        r: pb::TransferLeaderRequest,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let replicas = self.replicas(&metadata)?;
        let shards = self.shards.map.get().shards();
        let Some(replica) = replicas
            .into_iter()
            .find(|rep| rep.shard_id() == u64::from(r.shard))
        else {
            if let (true, false, Some(addr)) = (
                shards.contains(&ShardId(r.shard)),
                forward::is_passed_on(&metadata),
                self.holder_addr(ShardId(r.shard)),
            ) {
                // Its replicas are on other nodes: one of them passes it on to the leader.
                let request = forward::for_shard_via_holder(r, r.shard);
                return self.peers()?.cluster(&addr)?.transfer_leader(request).await;
            }
            if shards.contains(&ShardId(r.shard)) {
                return Err(Status::unavailable(format!(
                    "shard {} is not on this node and no node holding it is known; retry",
                    r.shard
                )));
            }
            return Err(crate::status::invalid(
                "shard",
                format!(
                    "no shard {}: the cluster has shards 0 to {}",
                    r.shard,
                    shards.last().map_or(0, |s| s.0)
                ),
            ));
        };
        let leader = replica.leader().filter(|(id, _)| *id != replica.node_id());
        match (leader, &self.peers, forward::is_forwarded(&metadata)) {
            (Some((_, node)), Some(peers), false) => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                let request =
                    forward::forwarded(Request::from_parts(metadata, Default::default(), r));
                peers.cluster(&node.addr)?.transfer_leader(request).await?;
            }
            _ => replica
                .transfer_leader(r.to)
                .await
                .map_err(replica_status)?,
        }
        Ok(Response::new(self.status()))
    }

    /// Records node `to` (0: none) as shard `shard`'s preferred leader in the map, here at
    /// the metadata group's leader (from the group's newest map, compare-and-set).
    async fn record_preference(&self, shard: u32, to: u64) -> Result<(), Status> {
        let Some(meta) = &self.shards.meta else {
            return Err(Status::failed_precondition(
                "a node without replication leads its shards itself: no leader to prefer",
            ));
        };
        meta.replica()
            .linearizable_barrier()
            .await
            .map_err(replica_status)?;
        if to != 0 && !crate::meta::voters(meta).contains_key(&to) {
            return Err(crate::status::invalid(
                "to",
                format!("node {to} is not a member of the cluster"),
            ));
        }
        let map = match meta.latest().map_err(Status::internal)? {
            Some((_, map)) => map,
            None => return Err(Status::unavailable("no cluster map is recorded yet; retry")),
        };
        let next = map
            .with_preferred_leader(ShardId(shard), (to != 0).then_some(to))
            .map_err(|e| match e {
                MapError::NotAReplica { .. } => crate::status::invalid("to", e.to_string()),
                e => crate::status::invalid("shard", e.to_string()),
            })?;
        let now = crate::clock::WallClock::now_us(&crate::clock::SystemWallClock::default());
        crate::meta::install(meta, &self.shards.map, next, now)
            .await
            .map_err(|e| Status::unavailable(format!("recording the preference: {e}; retry")))
    }

    /// The client address of a node the map places shard `shard` on, other than this one.
    fn holder_addr(&self, shard: ShardId) -> Option<String> {
        let meta = self.shards.meta.as_ref()?;
        let me = meta.replica().node_id();
        let nodes = crate::meta::voters(meta);
        let map = self.shards.map.get();
        map.replicas(shard)?
            .iter()
            .filter(|n| **n != me)
            .find_map(|n| nodes.get(n).map(|node| node.addr.clone()))
    }

    fn peers(&self) -> Result<&Peers, Status> {
        self.peers
            .as_ref()
            .ok_or_else(|| Status::internal("forwarding without peers"))
    }

    /// Refuses to remove node `id` while the map places replicas on it: they must move first
    /// (the command line's `remove-node` moves them), or their groups would lose a voter the
    /// map still counts — or their last replica.
    fn check_drained(&self, id: u64) -> Result<(), Status> {
        let map = self.shards.map.get();
        let held: Vec<u32> = map
            .shards()
            .into_iter()
            .filter(|s| map.replicas(*s).is_some_and(|r| r.contains(&id)))
            .map(|s| s.0)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "node {id} holds replicas of shards {held:?}: move them to other nodes first (`strata cluster move-shard`; `strata cluster remove-node` does it for you)"
        )))
    }

    /// The node's mover, or why slots cannot move here.
    fn mover_here(&self) -> Result<&Mover, Status> {
        self.mover.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node has one shard: there is nowhere to move slots (start a new directory with --shards N)",
            )
        })
    }

    /// On a replicated node, the metadata group's leader runs moves (one planner for the
    /// cluster): its `Cluster` client when another node leads it and the call was not
    /// forwarded here already (`None`: run it here).
    fn meta_leader_elsewhere(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Option<pb::cluster_client::ClusterClient<tonic::transport::Channel>>, Status> {
        let Some(meta) = &self.shards.meta else {
            return Ok(None);
        };
        match (
            meta.replica().leader(),
            &self.peers,
            forward::is_forwarded(metadata),
        ) {
            (Some((id, node)), Some(peers), false) if id != meta.replica().node_id() => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                Ok(Some(peers.cluster(&node.addr)?))
            }
            (None, _, _) => Err(Status::unavailable(
                "the metadata group has no leader yet; retry",
            )),
            _ => Ok(None),
        }
    }

    /// Forms `replica`'s group from the node that should lead it (the node that initializes a
    /// group calls its first election); from here when that node does not answer.
    async fn init_at(
        &self,
        replica: &Replica,
        shard: u32,
        node: &StrataNode,
    ) -> Result<(), Status> {
        if let Some(peers) = &self.peers {
            let request = forward::for_shard(pb::InitRequest {}, shard);
            match peers.cluster(&node.addr)?.init(request).await {
                Ok(_) => return Ok(()),
                Err(e) => tracing::warn!(shard, addr = %node.addr, error = %e,
                    "the preferred leader did not form the group; forming it here"),
            }
        }
        replica.init().await.map_err(replica_status)
    }

    /// Refuses to form a cluster with a peer whose map differs from this node's (streams would
    /// be routed to different shards by different nodes). A peer that does not answer is
    /// passed over: Raft forms the groups once it runs, and a node started later with another
    /// map serves none of the shards it lacks.
    async fn check_peer_maps(&self) -> Result<(), Status> {
        let (Some(peers), Some(replica)) = (&self.peers, self.shards.replica()) else {
            return Ok(());
        };
        let mine = map_summary(&self.status());
        for (id, node) in replica.configured_members() {
            if *id == replica.node_id() {
                continue;
            }
            let request = forward::forwarded(Request::new(pb::StatusRequest {}));
            let theirs = match peers.cluster(&node.addr)?.status(request).await {
                Ok(status) => map_summary(status.get_ref()),
                Err(e) => {
                    tracing::warn!(peer = id, addr = %node.addr, error = %e, "cannot compare maps with a peer");
                    continue;
                }
            };
            if theirs != mine {
                return Err(Status::failed_precondition(format!(
                    "node {id} ({}) holds {} shards over {} slots, this node {} over {}: start every node of a cluster with the same --shards (each on a new data directory)",
                    node.addr,
                    theirs.1.len(),
                    theirs.0,
                    mine.1.len(),
                    mine.0
                )));
            }
        }
        Ok(())
    }

    /// Every group's leader and voters as this node sees them (for the balance planner; the
    /// metadata group's as shard [`crate::meta::META_GROUP`]).
    fn leads(&self) -> Vec<ShardLeads> {
        let map = self.shards.map.get();
        self.shards
            .replicas()
            .into_iter()
            .chain(self.shards.meta.as_ref().map(Meta::replica).cloned())
            .filter_map(|r| {
                let status = r.status();
                let shard = u32::try_from(r.shard_id()).ok()?;
                Some(ShardLeads {
                    shard,
                    preferred: map.preferred_leader(ShardId(shard)),
                    leader: status.leader,
                    voters: status
                        .members
                        .iter()
                        .filter(|m| m.role != "learner")
                        .map(|m| m.id)
                        .collect(),
                })
            })
            .collect()
    }

    /// Before node `id` leaves: hands each shard it leads to the voter leading the fewest, so
    /// those groups do not wait out an election. A handover that fails is logged and the
    /// removal goes on (the group then elects a leader itself).
    async fn hand_over_from(&self, id: u64, only: Option<u32>) {
        let mut shards = self.leads();
        for at in 0..shards.len() {
            if shards[at].leader != Some(id) || only.is_some_and(|o| o != shards[at].shard) {
                continue;
            }
            let shares = balance::shares(&shards);
            let Some(to) = shards[at]
                .voters
                .iter()
                .filter(|v| **v != id)
                .min_by_key(|v| (shares.get(v).copied().unwrap_or(0), **v))
                .copied()
            else {
                continue;
            };
            let shard = shards[at].shard;
            let request = Request::new(pb::TransferLeaderRequest {
                shard,
                to,
                prefer: false,
            });
            match pb::cluster_server::Cluster::transfer_leader(self, request).await {
                Ok(_) => shards[at].leader = Some(to),
                Err(e) => tracing::warn!(shard, from = id, to, error = %e.message(),
                    "handing the leadership over before a removal failed; the group will elect one"),
            }
        }
    }

    /// On the metadata group's leader, every `interval`: lifts the fences of moves that did not
    /// finish (a previous metadata leader's, stopped mid-move; see [`Mover::recover`]), and
    /// takes out of each shard's group the members a replica move left that the map does not
    /// place it on (see [`ReplicaMover::tidy`]; every [`TIDY_EVERY`] intervals). On every
    /// other node: lifts the fences of shards it leads that stayed stale for
    /// [`ABANDONED_FENCE_GRACE`] (the metadata leader may hold no replica of them; see
    /// [`Mover::recover_abandoned`]).
    pub async fn recover_moves(
        self,
        interval: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(meta) = &self.shards.meta else {
            return;
        };
        for round in 1u64.. {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let me = meta.replica().node_id();
            if meta.replica().leader().map(|(id, _)| id) != Some(me) {
                if let Some(mover) = &self.mover {
                    match mover.recover_abandoned(me, ABANDONED_FENCE_GRACE).await {
                        Ok(lifted) if !lifted.is_empty() => tracing::warn!(
                            ?lifted,
                            "rolled back moves that did not finish (their metadata leader holds no replica of the shard)"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "looking for abandoned fences failed"),
                    }
                }
                continue;
            }
            if let Some(mover) = &self.mover {
                match mover.recover().await {
                    Ok(lifted) if !lifted.is_empty() => {
                        tracing::warn!(
                            fences = lifted.len(),
                            "rolled back moves that did not finish"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "looking for unfinished moves failed"),
                }
            }
            // Each group's view is a call to a node: less often.
            let Some(replicas) = self
                .replica_mover
                .as_ref()
                .filter(|_| round % TIDY_EVERY == 0)
            else {
                continue;
            };
            match replicas.tidy().await {
                Ok(removed) if !removed.is_empty() => tracing::warn!(
                    ?removed,
                    "took replicas the map no longer places out of their groups"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message(), "tidying the groups failed"),
            }
        }
    }

    /// Balances the groups' leaders by itself until `stop`: every `interval`, on the node leading
    /// the metadata group (one planner), when every group has a leader and none changed since
    /// the last look, hands over the first leadership [`balance::plan`] names. One handover per
    /// look, and a look after a change waits a whole interval: leaders that move (a failover,
    /// a handover) settle before the next.
    pub async fn balance_leaders(
        self,
        interval: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last: Option<Vec<ShardLeads>> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(meta) = &self.shards.meta else {
                return;
            };
            let me = meta.replica().node_id();
            if meta.replica().leader().map(|(id, _)| id) != Some(me) {
                last = None;
                continue;
            }
            // The data shards' leaders: the metadata group is idle, its leadership costs
            // nothing to balance.
            let mut now = self.leads();
            now.retain(|s| s.shard != crate::meta::META_GROUP);
            let settled = now.iter().all(|s| s.leader.is_some()) && last.as_ref() == Some(&now);
            last = Some(now.clone());
            if !settled {
                continue;
            }
            let Some(step) = balance::plan(&now).into_iter().next() else {
                continue;
            };
            let request = Request::new(pb::TransferLeaderRequest {
                shard: step.shard,
                to: step.to,
                prefer: false,
            });
            match pb::cluster_server::Cluster::transfer_leader(&self, request).await {
                Ok(_) => {
                    self.stats.handovers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        shard = step.shard,
                        from = step.from,
                        to = step.to,
                        "leaders balanced: a leadership handed over"
                    );
                }
                Err(e) => tracing::warn!(shard = step.shard, from = step.from, to = step.to,
                    error = %e.message(), "balancing leaders: a handover failed"),
            }
        }
    }

    /// Runs on every node of a replicated cluster of several shards; acts on the metadata
    /// group's leader: every `interval`, when the map records no replica move and every
    /// member of the metadata group answers, it plans from the map's placement
    /// ([`crate::placement::plan`]: replicas per node within one of even) and, when two looks
    /// in a row plan the same first move, runs it to its end. One move at a time; a failed
    /// move is left to the mover's recovery (resumed or rolled back) and planned afresh.
    pub async fn balance_replicas(
        self,
        interval: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last: Option<crate::placement::ReplicaMove> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let (Some(meta), Some(mover)) = (&self.shards.meta, &self.replica_mover) else {
                return;
            };
            let next = self.replica_move_to_make(meta).await;
            let settled = next.is_some() && next == last;
            last = next;
            let Some(step) = next.filter(|_| settled) else {
                continue;
            };
            last = None;
            tracing::info!(
                shard = step.shard,
                from = step.from,
                to = step.to,
                "replicas balanced: a replica move begins"
            );
            let moved = async {
                let begun = mover.begin(step.shard, step.from, step.to).await?;
                mover.finish(begun).await
            };
            tokio::select! {
                result = moved => match result {
                    Ok(()) => {
                        self.stats.replica_moves.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(shard = step.shard, from = step.from, to = step.to,
                            "replicas balanced: a replica moved");
                    }
                    Err(e) => tracing::warn!(shard = step.shard, from = step.from, to = step.to,
                        error = %e.message(), "balancing replicas: a move stopped"),
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The first replica move the placement plan names, here at the metadata group's leader,
    /// when no move is recorded and every member of the metadata group answers its status.
    async fn replica_move_to_make(&self, meta: &Meta) -> Option<crate::placement::ReplicaMove> {
        let me = meta.replica().node_id();
        if meta.replica().leader().map(|(id, _)| id) != Some(me) {
            return None;
        }
        let map = self.shards.map.get();
        let shards = map.shards();
        if shards.iter().any(|s| map.replica_move(*s).is_some()) {
            return None;
        }
        let voters = crate::meta::voters(meta);
        for (id, node) in &voters {
            if *id != me && !self.answers(&node.addr).await {
                return None;
            }
        }
        let nodes: Vec<u64> = voters.keys().copied().collect();
        let placed: Vec<crate::placement::Placed> = shards
            .iter()
            .map(|s| crate::placement::Placed {
                shard: s.0,
                replicas: map
                    .replicas(*s)
                    .map_or_else(|| nodes.clone(), <[u64]>::to_vec),
            })
            .collect();
        crate::placement::plan(&placed, &nodes, &[])
            .into_iter()
            .next()
    }

    /// Whether the node at `addr` answers `Cluster.Status` within a second.
    async fn answers(&self, addr: &str) -> bool {
        let Ok(mut client) = self.peers().and_then(|p| p.cluster(addr)) else {
            return false;
        };
        let asked = client.status(pb::StatusRequest::default());
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(1), asked).await,
            Ok(Ok(_))
        )
    }

    /// Every shard with its slot ranges, leader and replicas: as this node's replica sees it
    /// (`one` — this node alone — when not replicated), or (a shard whose replicas are on
    /// other nodes) its replicas by the map and no leader known here; and the replica move
    /// the map records for it.
    fn shard_statuses(&self, one: u64) -> Vec<pb::ShardStatus> {
        let map = self.shards.map.get();
        let held = self.shards.backends();
        let steps = self
            .replica_mover
            .as_ref()
            .map(ReplicaMover::steps)
            .unwrap_or_default();
        map.shards()
            .into_iter()
            .map(|id| {
                let replica = match held.iter().find(|(h, _)| *h == id) {
                    Some((_, crate::backend::Backend::Replicated(r))) => Some(r.status()),
                    _ => None,
                };
                let (leader, replicas) = match (&replica, held.iter().any(|(h, _)| *h == id)) {
                    (Some(s), _) => (
                        s.leader.unwrap_or(0),
                        s.members.iter().map(|m| m.id).collect(),
                    ),
                    (None, true) => (one, vec![one]),
                    (None, false) => (0, map.replicas(id).map(<[u64]>::to_vec).unwrap_or_default()),
                };
                let moving = map.replica_move(id).map(|(from, to)| {
                    let step = steps.get(&id).copied().unwrap_or("recorded");
                    replica_move_status((from, to), step, replica.as_ref())
                });
                pb::ShardStatus {
                    id: id.0,
                    leader,
                    replicas,
                    moving,
                    preferred_leader: map.preferred_leader(id).unwrap_or(0),
                    slots: map
                        .ranges()
                        .iter()
                        .filter(|(_, owner)| *owner == id)
                        .map(|(r, _)| pb::SlotRange {
                            start: r.start,
                            end: r.end,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn status(&self) -> pb::ClusterStatus {
        let map = self.shards.map.get();
        let held = self.shards.replica();
        let Some(replica) = held.or_else(|| self.shards.meta.as_ref().map(|m| m.replica().clone()))
        else {
            return pb::ClusterStatus {
                node_id: 0,
                leader: 0,
                has_leader: true,
                term: 0,
                nodes: vec![pb::NodeStatus {
                    id: 0,
                    addr: self.addr.clone(),
                    raft_addr: String::new(),
                    role: "leader".into(),
                    matched: 0,
                }],
                last_log_index: 0,
                process_cpu_us: process_cpu_us(),
                last_applied: 0,
                log_fdatasyncs: self.shards.fdatasyncs(),
                map_epoch: map.epoch(),
                slots: map.slots(),
                forwarded_calls: self.stats.forwarded.load(Ordering::Relaxed),
                shards: self.shard_statuses(0),
                meta_leader: 0,
                r#move: self.move_status(),
            };
        };
        let s = replica.status();
        // The cluster's nodes: the metadata group's members where there is one (a node may
        // hold no replica of the first shard).
        let members = match &self.shards.meta {
            Some(meta) => meta.replica().status().members,
            None => s.members,
        };
        pb::ClusterStatus {
            node_id: s.node_id,
            leader: s.leader.unwrap_or(0),
            has_leader: s.leader.is_some(),
            term: s.term,
            shards: self.shard_statuses(0),
            nodes: members
                .into_iter()
                .map(|m| pb::NodeStatus {
                    id: m.id,
                    addr: m.node.addr,
                    raft_addr: m.node.raft_addr,
                    role: m.role.into(),
                    matched: m.matched,
                })
                .collect(),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            process_cpu_us: process_cpu_us(),
            log_fdatasyncs: self.shards.fdatasyncs(),
            map_epoch: map.epoch(),
            slots: map.slots(),
            forwarded_calls: self.stats.forwarded.load(Ordering::Relaxed),
            meta_leader: self
                .shards
                .meta
                .as_ref()
                .and_then(|m| m.replica().leader())
                .map_or(0, |(id, _)| id),
            r#move: self.move_status(),
        }
    }
}

/// The node that should lead `replica`'s shard, when it is another node: the configured
/// members in id order, shard `k` to the member at `k mod members` (leaders spread within ±1
/// of even at formation).
fn preferred_leader(replica: &Replica) -> Option<(u32, StrataNode)> {
    let members = replica.configured_members();
    let shard = u32::try_from(replica.shard_id()).ok()?;
    let at = usize::try_from(shard).ok()? % members.len().max(1);
    let (id, node) = members.iter().nth(at)?;
    (*id != replica.node_id()).then(|| (shard, node.clone()))
}

/// A move refused or failed, as a status: bad input INVALID_ARGUMENT, a move in progress
/// FAILED_PRECONDITION, a failure UNAVAILABLE.
/// `field` names the request's part at fault.
fn move_status(field: &str, e: MoveError) -> Status {
    match e {
        MoveError::Invalid(why) => crate::status::invalid(field, why),
        MoveError::Busy(why) => Status::failed_precondition(why),
        e @ (MoveError::Failed(_) | MoveError::Undecided(_)) => Status::unavailable(e.to_string()),
    }
}

/// What two nodes must agree on to route alike: the slot count and each shard's ranges.
type MapSummary = (u32, Vec<(u32, Vec<(u32, u32)>)>);

fn map_summary(status: &pb::ClusterStatus) -> MapSummary {
    let shards = status
        .shards
        .iter()
        .map(|s| (s.id, s.slots.iter().map(|r| (r.start, r.end)).collect()))
        .collect();
    (status.slots, shards)
}

/// CPU time this process has used (user + system), in microseconds; 0 if the OS will not say.
pub fn process_cpu_us() -> u64 {
    // SAFETY: getrusage(2) fills the zeroed struct we own; RUSAGE_SELF needs nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let replicas = self.replicas(request.metadata())?;
        if !forwarded {
            self.check_peer_maps().await?;
        }
        for replica in replicas {
            match preferred_leader(&replica).filter(|_| !forwarded) {
                Some((shard, node)) => self.init_at(&replica, shard, &node).await?,
                None => replica.init().await.map_err(replica_status)?,
            }
        }
        Ok(Response::new(self.status()))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        if r.addr.is_empty() {
            return Err(crate::status::invalid("addr", "must not be empty"));
        }
        let raft_addr = if r.raft_addr.is_empty() {
            r.addr.clone()
        } else {
            r.raft_addr
        };
        let node = StrataNode {
            addr: r.addr,
            raft_addr,
            incarnation: r.incarnation,
        };
        let change = pb::AddNodeRequest {
            id: r.id,
            addr: node.addr.clone(),
            raft_addr: node.raft_addr.clone(),
            incarnation: node.incarnation,
        };
        // A call about one shard (a replica move's step) changes that group; otherwise the
        // node joins the metadata group only, once every shard's place is recorded: replicas
        // move to it by `move-shard` (`rebalance`).
        let only = forward::shard_of(&metadata)?;
        if only.is_none() {
            self.pin_placement().await?;
        }
        let map = self.shards.map.get();
        let concerned = |r: &Replica| {
            let group = u32::try_from(r.shard_id()).unwrap_or(crate::meta::META_GROUP);
            only.is_some()
                || group == crate::meta::META_GROUP
                || map.replicas(ShardId(group)).is_none()
        };
        self.each_group(
            &metadata,
            concerned,
            |replica| {
                let node = node.clone();
                async move { replica.add_node(r.id, node).await }
            },
            |mut leader, shard| {
                let change = change.clone();
                async move {
                    leader
                        .add_node(forward::for_shard(change, shard))
                        .await
                        .map(drop)
                }
            },
        )
        .await?;
        Ok(Response::new(self.status()))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        if !r.prefer {
            return self.hand_over(metadata, r).await;
        }
        if let Some(mut leader) = self.meta_leader_elsewhere(&metadata)? {
            let request = forward::forwarded(Request::from_parts(metadata, Default::default(), r));
            return leader.transfer_leader(request).await;
        }
        self.record_preference(r.shard, r.to).await?;
        if r.to == 0 {
            return Ok(Response::new(self.status()));
        }
        let handover = pb::TransferLeaderRequest { prefer: false, ..r };
        self.hand_over(MetadataMap::new(), handover).await
    }

    async fn move_slots(
        &self,
        request: Request<pb::MoveSlotsRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        let mover = self.mover_here()?;
        if let Some(mut leader) = self.meta_leader_elsewhere(&metadata)? {
            let request = forward::forwarded(Request::from_parts(metadata, Default::default(), r));
            return leader.move_slots(request).await;
        }
        let range = strata_proto::routing::SlotRange {
            start: r.start,
            end: r.end,
        };
        mover
            .start(range, strata_proto::routing::ShardId(r.to_shard))
            .map_err(|e| move_status("slots", e))?;
        Ok(Response::new(self.status()))
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        let mover = self.mover_here()?;
        if let Some(mut leader) = self.meta_leader_elsewhere(&metadata)? {
            let request = forward::forwarded(Request::from_parts(metadata, Default::default(), r));
            return leader.split_shard(request).await;
        }
        let at = (r.at != 0).then_some(r.at);
        mover
            .split(strata_proto::routing::ShardId(r.shard), at)
            .await
            .map_err(|e| move_status("shard", e))?;
        Ok(Response::new(self.status()))
    }

    async fn move_shard(
        &self,
        request: Request<pb::MoveShardRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        let mover = self.replica_mover.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "replicas move between the nodes of a replicated cluster of several shards; this node is not one",
            )
        })?;
        if let Some(mut leader) = self.meta_leader_elsewhere(&metadata)? {
            let request = forward::forwarded(Request::from_parts(metadata, Default::default(), r));
            return leader.move_shard(request).await;
        }
        if r.cancel {
            mover.cancel(r.shard, r.from, r.to).await?;
        } else if r.no_wait {
            let begun = mover.begin(r.shard, r.from, r.to).await?;
            let (mover, shard) = (mover.clone(), r.shard);
            tokio::spawn(async move {
                if let Err(e) = mover.finish(begun).await {
                    tracing::warn!(shard, error = %e.message(), "a replica move stopped");
                }
            });
        } else {
            mover.run(r.shard, r.from, r.to).await?;
        }
        Ok(Response::new(self.status()))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (metadata, _, r) = request.into_parts();
        let id = r.id;
        if forward::shard_of(&metadata)?.is_none() {
            self.check_drained(id)?;
        }
        // Only the groups it is a member of (an add that failed part way left it in some);
        // a member of none gets the group's own precise error.
        let member = |r: &Replica| r.status().members.iter().any(|m| m.id == id);
        if !forward::is_forwarded(&metadata) {
            self.hand_over_from(id, forward::shard_of(&metadata)?).await;
        }
        let replicas = self.replicas(&metadata)?;
        if let (false, Some(first)) = (replicas.iter().any(&member), replicas.first()) {
            first.remove_node(id).await.map_err(replica_status)?;
        }
        self.each_group(
            &metadata,
            member,
            |replica| async move { replica.remove_node(id).await },
            |mut leader, shard| async move {
                leader
                    .remove_node(forward::for_shard(pb::RemoveNodeRequest { id }, shard))
                    .await
                    .map(drop)
            },
        )
        .await?;
        Ok(Response::new(self.status()))
    }
}

/// A replica move `from` → `to` at `step`, with the new replica's catch-up when `replica` (this
/// node's replica of the shard) leads the group.
fn replica_move_status(
    (from, to): (u64, u64),
    step: &str,
    replica: Option<&strata_raft::replica::Status>,
) -> pb::ReplicaMoveStatus {
    let leading = replica.filter(|s| s.leader == Some(s.node_id));
    let matched = leading
        .and_then(|s| s.members.iter().find(|m| m.id == to))
        .map_or(0, |m| m.matched);
    pb::ReplicaMoveStatus {
        from,
        to,
        step: step.to_string(),
        matched,
        last_log_index: leading.map_or(0, |s| s.last_log_index),
    }
}
