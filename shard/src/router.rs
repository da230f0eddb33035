//! The `Streams` service of a node with several shards: each call goes to the shard whose
//! slots hold its stream (see `strata_proto::routing`), where a [`StreamsService`] of its own
//! serves it exactly as on a one-shard node.
//!
//! ```text
//!   call ──▶ Router ── stream name ──▶ slot (CRC-32 of the routing key) ──▶ map ──▶ shard k
//!                                                                         StreamsService k
//!                                                                         (engine k, history k)
//! ```
//!
//! An `AppendMulti` must stay within one shard (it is atomic there); across shards it is
//! refused naming every stream's shard. An `AppendStream` message may mix shards: its appends
//! are handed to their shards in the order sent (so each shard decides its own in that order)
//! and answered in the order sent. Snapshot policies apply to every shard. `ReadAll`,
//! `GetLog` and `$all` subscriptions span every shard: `ReadAll` pages of each shard merged by
//! timestamp, subscriptions merged as records come (`all_subscription.rs`), both resumed from
//! a cursor of per-shard points (`merge.rs`).
//!
//! On a replicated node each shard is a Raft group whose leader may be another node. A call
//! that needs the leader (appends, writes, linearizable reads) for a shard led elsewhere is
//! forwarded to it ([`crate::forward`]; an `AppendStream`'s parts over links,
//! [`crate::remote_appends`]); follower reads and subscriptions are served here. A merged
//! linearizable read asks each remote leader for its shard's end (a forwarded `GetLog`),
//! waits until this node has applied that far (woken by its Raft metrics), then reads here:
//! a read index.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use futures_util::future::join_all;
use tonic::metadata::MetadataMap;

use crate::all_subscription::Feed;
use crate::append_stream::{Boxed, Outcomes, Submit};
use crate::backend::Backend;
use crate::convert;
use crate::forward::{self, forwarded, Peers};
use crate::map_cell::MapCell;
use crate::merge::{merge, Cursor, Point};
use crate::remote_appends::RemoteAppends;
use crate::remote_shard::RemoteShard;
use crate::service::{ServiceConfig, StreamsService};
use crate::shard_set::{Served, ShardSet};
use crate::stats::ServiceStats;
use crate::status::invalid;
use strata_proto::metadata::{ERROR_KIND_KEY, LEADER_KEY, MAP_EPOCH_KEY};
use strata_raft::Fence;

/// A node's shards and the map routing streams to them.
#[derive(Debug, Clone)]
pub struct Router {
    /// The map now (the metadata group may replace it).
    map: MapCell,
    /// The node's shards of the moment (found by id: the set changes while the node runs).
    set: ShardSet,
    /// Every shard's settings and limits (the same on all), and the node's counters — taken
    /// from the first shard at start, not holding it (a shard may be removed).
    config: ServiceConfig,
    limits: strata_engine::Limits,
    stats: Arc<ServiceStats>,
    /// The other nodes, on a replicated node (calls for shards led there are forwarded).
    peers: Option<Peers>,
    /// One `AppendStream` call's links to other leaders (set on the call's own router).
    remote: Option<Arc<RemoteAppends>>,
    /// Where the other nodes are, to pass calls for shards this node holds no replica of.
    directory: Option<Directory>,
    /// Set when the node stops: its `AppendStream` calls end (see [`Submit::stop`]).
    stop: Option<watch::Receiver<bool>>,
}

/// This node's id and the client addresses of the cluster's nodes (on a replicated node of
/// several shards: the metadata group's members), to find a node holding a shard whose
/// replicas are on other nodes.
#[derive(Clone)]
pub struct Directory {
    /// This node's id.
    pub me: u64,
    /// A node's client address, if it is a member.
    pub addr_of: Arc<dyn Fn(u64) -> Option<String> + Send + Sync>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("me", &self.me).finish()
    }
}

/// Where a call about one shard goes.
enum Route {
    /// This node's replica serves it.
    Here(Box<StreamsService>),
    /// To the shard's leader, at this address.
    Leader(String),
    /// To a node holding the shard, at this address (this node holds none).
    Holder(String),
}

/// How long a merged read waits for this node to apply what a remote leader has committed.
pub const READ_INDEX_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Router {
    /// Routes by `map` to `shards`, which must be some of the map's shards (on one node, or
    /// without a [`Directory`], all of them); with `peers`, calls for shards another node leads
    /// are forwarded there.
    pub fn new(map: MapCell, set: ShardSet, peers: Option<Peers>) -> Result<Router, String> {
        let settings = set
            .get()
            .first()
            .map(|(_, s)| (s.config().clone(), s.limits(), Submit::stats(s).clone()))
            .ok_or_else(|| "a node without shards".to_string())?;
        Router::serving(map, set, peers, settings)
    }

    /// [`Router::new`] with the services' settings, limits and counters given, so a node may
    /// hold no shard (it was added and holds none yet, or its replicas moved away): it passes
    /// every call on to the nodes holding the shards.
    pub fn serving(
        map: MapCell,
        set: ShardSet,
        peers: Option<Peers>,
        (config, limits, stats): (ServiceConfig, strata_engine::Limits, Arc<ServiceStats>),
    ) -> Result<Router, String> {
        let (have, all) = (set.ids(), map.get().shards());
        if have.iter().any(|id| !all.contains(id)) {
            return Err(format!(
                "the map has shards {all:?}, the node opened {have:?}"
            ));
        }
        Ok(Router {
            map,
            set,
            config,
            limits,
            stats,
            peers,
            remote: None,
            directory: None,
            stop: None,
        })
    }

    /// The router whose `AppendStream` calls end when `stop` is set (the node's).
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Router {
        self.stop = Some(stop);
        self
    }

    /// The router passing calls for shards this node holds no replica of to nodes that do.
    pub fn with_directory(mut self, directory: Directory) -> Router {
        self.directory = Some(directory);
        self
    }

    /// The map it routes by now.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.get()
    }

    /// The shards' services now, by id.
    pub fn shards(&self) -> Served {
        self.set.get()
    }

    /// Every shard's service settings (they are the same).
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The limits requests are checked against (the same on every shard).
    pub fn limits(&self) -> strata_engine::Limits {
        self.limits.clone()
    }

    /// The lowest shard held now (what a call on a one-shard cluster, or a call refused for
    /// its own fault, goes to).
    fn first(&self) -> Result<StreamsService, Status> {
        self.shards()
            .first()
            .map(|(_, s)| s.clone())
            .ok_or_else(|| Status::unavailable("this node holds no shard now"))
    }

    /// The map to route by, or FAILED_PRECONDITION naming why this node must not route (its
    /// map is not the cluster's: see [`crate::meta`]).
    fn routing(&self) -> Result<Arc<ClusterMap>, Status> {
        self.map
            .routable()
            .map_err(|why| Status::failed_precondition(why.to_string()))
    }

    /// The shard holding `stream`.
    fn owner(&self, stream: &str) -> Result<ShardId, Status> {
        Ok(self.routing()?.shard_of(stream))
    }

    /// Whether the cluster has several shards (by the map, not by what this node holds).
    fn several(&self) -> bool {
        self.map.get().shards().len() > 1
    }

    /// The client address of a node the map says holds shard `id` (this node holds none).
    fn holder_addr(&self, id: ShardId) -> Option<String> {
        let directory = self.directory.as_ref()?;
        let map = self.map.get();
        map.replicas(id)?
            .iter()
            .filter(|n| **n != directory.me)
            .find_map(|n| (directory.addr_of)(*n))
    }

    /// Where a call with `metadata` about shard `id` goes: here, to the leader when `leader`
    /// (the call needs it) and another node leads, or to a holder when this node holds no
    /// replica — unless another node passed the call on already (see [`crate::forward`]).
    fn route(&self, id: ShardId, leader: bool, metadata: &MetadataMap) -> Result<Route, Status> {
        match self.at(id) {
            Ok(service) => Ok(
                match self.leader_elsewhere(id, metadata).filter(|_| leader) {
                    Some(addr) => Route::Leader(addr),
                    None => Route::Here(Box::new(service)),
                },
            ),
            Err(not_here) if forward::is_passed_on(metadata) => Err(not_here),
            Err(not_here) => self.holder_addr(id).map(Route::Holder).ok_or(not_here),
        }
    }

    /// Shard `id` at a node holding it (this node holds none), or UNAVAILABLE.
    fn remote_shard(&self, id: ShardId) -> Result<RemoteShard<'_>, Status> {
        let addr = self.holder_addr(id).ok_or_else(|| {
            Status::unavailable(format!(
                "{id} is not on this node and no node holding it is known; retry"
            ))
        })?;
        Ok(RemoteShard {
            peers: self.forwarding()?,
            addr,
            shard: id,
        })
    }

    /// Shard `id`'s log end at `consistency` and, with `at`, its first record stamped at or
    /// after it: here, or at a node holding it.
    async fn log_point_of(
        &self,
        id: ShardId,
        consistency: pb::Consistency,
        at: Option<u64>,
        metadata: &MetadataMap,
    ) -> Result<(u64, Option<u64>), Status> {
        match self.at(id) {
            Ok(service) => {
                let here = self.read_index(id, consistency, metadata).await?;
                service.log_point(here, at).await
            }
            Err(_) => {
                let remote = self.remote_shard(id)?;
                remote.log_point(consistency as i32, at).await
            }
        }
    }

    /// Shard `id`'s service on this node.
    fn at(&self, id: ShardId) -> Result<StreamsService, Status> {
        let shards = self.shards();
        shards
            .binary_search_by_key(&id, |(s, _)| *s)
            .map(|at| shards[at].1.clone())
            .map_err(|_| Status::unavailable(format!("{id} is not served by this node")))
    }

    /// The service of the shard holding `stream`.
    fn shard(&self, stream: &str) -> Result<StreamsService, Status> {
        self.at(self.owner(stream)?)
    }

    /// The client address of the leader of shard `id` when a call with `metadata` that needs
    /// the leader must go there: another node leads it, and the call was not forwarded to
    /// this node already.
    fn leader_elsewhere(&self, id: ShardId, metadata: &MetadataMap) -> Option<String> {
        if forward::is_forwarded(metadata) {
            return None;
        }
        self.leader_addr(id)
    }

    /// The client address of the leader of shard `id` when another node leads it.
    fn leader_addr(&self, id: ShardId) -> Option<String> {
        self.peers.as_ref()?;
        let service = self.at(id).ok()?;
        let Backend::Replicated(replica) = service.backend() else {
            return None;
        };
        match replica.leader() {
            Some((id, node)) if id != replica.node_id() => Some(node.addr),
            _ => None,
        }
    }

    /// Resolves once this node knows shard `id`'s leader is no longer the node at `tried`,
    /// which a call was forwarded to: UNAVAILABLE naming the new leader, which
    /// [`moved_leader`] sends the call to once more. Without it a call forwarded to a leader
    /// that was cut off waited out the append timeout there while the others elected another.
    /// Never resolves when no replica of `id` is here.
    fn leader_moved_from(
        &self,
        id: ShardId,
        tried: &str,
    ) -> impl Future<Output = Status> + Send + 'static {
        let replica = match self.at(id).map(|s| s.backend().clone()) {
            Ok(Backend::Replicated(replica)) => Some(replica),
            _ => None,
        };
        let tried = tried.to_string();
        async move {
            let Some(replica) = replica else {
                return std::future::pending().await;
            };
            let (_, node) = replica.leader_other_than(&tried).await;
            let mut status = Status::unavailable(format!(
                "{id}'s leader changed from {tried} to {} while the call was forwarded; it may \
                 have committed there, so retry it with the same event ids",
                node.addr
            ));
            if let Ok(v) = node.addr.parse() {
                status.metadata_mut().insert(LEADER_KEY, v);
            }
            status
        }
    }

    /// `answer` carrying the epoch of the map this node routes by ([`MAP_EPOCH_KEY`]), on a
    /// node of several shards: a client routing by an older table reads it again.
    fn with_epoch<T>(&self, answer: Answer<T>) -> Answer<T> {
        let several = self.several();
        answer.map(|mut r| {
            if several {
                let epoch = MetadataValue::from(self.map.get().epoch());
                r.metadata_mut().insert(MAP_EPOCH_KEY, epoch);
            }
            r
        })
    }

    /// Counts one call (or part) passed on, and the peers to pass it with.
    fn forwarding(&self) -> Result<&Peers, Status> {
        self.stats
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.peers()
    }

    fn peers(&self) -> Result<&Peers, Status> {
        self.peers
            .as_ref()
            .ok_or_else(|| Status::internal("forwarding without peers"))
    }

    /// Where this `AppendStream` call sends the appends of shard `id`: over a link to its
    /// leader when another node leads it (`None`: here).
    fn remote_leader(&self, id: ShardId) -> Option<(&RemoteAppends, String)> {
        let remote = self.remote.as_deref()?;
        Some((remote, self.leader_addr(id)?))
    }

    /// Where this `AppendStream` call sends the appends of shard `id` when this node holds no
    /// replica of it: over a link to a node that does (not on a call passed on already).
    fn remote_holder(&self, id: ShardId) -> Option<(&RemoteAppends, String)> {
        let remote = self.remote.as_deref()?;
        if self.at(id).is_ok() || remote.last_hop() {
            return None;
        }
        Some((remote, self.holder_addr(id)?))
    }

    /// The router of one `AppendStream` call (its own links to other leaders).
    fn for_call(&self, metadata: &MetadataMap) -> Router {
        let mut call = self.clone();
        if let Some(peers) = &self.peers {
            if !forward::is_forwarded(metadata) {
                call.remote = Some(Arc::new(RemoteAppends::new(
                    peers.clone(),
                    metadata.clone(),
                    forward::is_passed_on(metadata),
                )));
            }
        }
        call
    }

    /// Makes a read of shard `id` at `consistency` servable from this node's replica, and
    /// returns the consistency to read it at here: for a linearizable read of a shard led
    /// elsewhere, the leader's end after its barrier, then this replica applied that far.
    async fn read_index(
        &self,
        id: ShardId,
        consistency: pb::Consistency,
        metadata: &MetadataMap,
    ) -> Result<pb::Consistency, Status> {
        if consistency == pb::Consistency::Follower {
            return Ok(consistency);
        }
        let Some(addr) = self.leader_elsewhere(id, metadata) else {
            return Ok(consistency);
        };
        let service = &self.at(id)?;
        let request = forward::for_shard(
            pb::GetLogRequest {
                consistency: pb::Consistency::Linearizable as i32,
                ..Default::default()
            },
            id.0,
        );
        let end = self
            .peers()?
            .streams(&addr)?
            .get_log(request)
            .await?
            .into_inner()
            .end_position;
        let Backend::Replicated(replica) = service.backend() else {
            return Ok(consistency);
        };
        // Woken by each change of the replica's Raft metrics (applying an entry is one; the
        // records are readable before it is reported), taken before the first look.
        let mut metrics = replica.raft().metrics();
        let applied = async {
            while service.backend().reader().end() < end {
                if metrics.changed().await.is_err() {
                    return Err(Status::unavailable(format!("{id}'s replica stopped")));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(READ_INDEX_WAIT_MAX, applied).await {
            Ok(Ok(())) => Ok(pb::Consistency::Follower),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable(format!(
                "{id} has not applied up to position {end} (its leader's end) within {READ_INDEX_WAIT_MAX:?}; retry"
            ))),
        }
    }
}

/// A unary call about one stream: forwarded to the shard's leader when another node leads it
/// and `$leader` (the call needs the leader), to a node holding the shard when this one holds
/// none, otherwise served by the shard here (see [`Router::route`]). A forwarded call this
/// node learns went to a leader no longer leading is sent once more to the new leader when
/// `$idempotent` (a read, or appends, whose ids make a repeat answer as the first); otherwise
/// its client gets UNAVAILABLE, outcome unknown, and decides.
macro_rules! routed {
    ($self:ident, $request:ident, $stream:expr, $leader:expr, $method:ident, $idempotent:expr) => {{
        let id = $self.owner($stream)?;
        let answer = match $self.route(id, $leader, $request.metadata())? {
            Route::Here(service) => service.$method($request).await,
            Route::Leader(addr) => {
                let again = ($request.metadata().clone(), $request.get_ref().clone());
                let mut leader = $self.forwarding()?.streams(&addr)?;
                let (first, unknown) = tokio::select! {
                    answer = leader.$method(forwarded($request)) => (answer, false),
                    moved = $self.leader_moved_from(id, &addr) => (Err(moved), true),
                };
                match first {
                    // The leader changed meanwhile (a handover refusing the call, or this node
                    // learnt of a new one while the call waited at the old): once more, at the
                    // new one.
                    Err(status) => match moved_leader(&status, &addr)
                        .filter(|_| $idempotent || !unknown)
                    {
                        Some(next) => {
                            let request = Request::from_parts(again.0, Default::default(), again.1);
                            let mut leader = $self.forwarding()?.streams(&next)?;
                            leader.$method(forwarded(request)).await
                        }
                        None => Err(status),
                    },
                    answer => answer,
                }
            }
            Route::Holder(addr) => {
                let mut holder = $self.forwarding()?.streams(&addr)?;
                holder.$method(forward::via_holder($request)).await
            }
        };
        $self.with_epoch(answer)
    }};
}

/// The leader a forwarded call's answer names when the node it went to no longer leads (an
/// UNAVAILABLE naming another node): the call is refused there, not decided, so it may go to
/// the named leader once more (an append carries its ids: a retry is never a duplicate).
fn moved_leader(status: &Status, tried: &str) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let named = status.metadata().get(LEADER_KEY)?.to_str().ok()?;
    (!named.is_empty() && named != tried).then(|| named.to_string())
}

/// Whether a read at `consistency` (the request's field) needs the leader.
fn linearizable(consistency: i32) -> bool {
    consistency == pb::Consistency::Linearizable as i32
}

impl Router {
    /// A `$all` subscription over the shards (or from a cursor): one per shard, merged.
    async fn subscribe_all(
        &self,
        r: pb::SubscribeRequest,
    ) -> Answer<crate::subscription::EventStream> {
        use pb::subscribe_request::Start;
        convert::check_filter(r.filter.as_ref())?;
        let ids = self.routing()?.shards();
        let several = || {
            format!(
                "names a place in one shard's log; on a cluster of {} shards start from a cursor",
                ids.len()
            )
        };
        let cursor = match &r.start {
            None | Some(Start::AfterPosition(0)) | Some(Start::FromPosition(0)) => {
                Cursor::default()
            }
            Some(Start::Cursor(bytes)) => Cursor::decode("cursor", bytes, &*self.routing()?)?,
            Some(Start::FromEnd(_)) => {
                let mut at_end = Cursor::default();
                for id in &ids {
                    let (end, _) = self
                        .log_point_of(*id, pb::Consistency::Follower, None, &MetadataMap::new())
                        .await?;
                    at_end.set(*id, end);
                }
                at_end
            }
            Some(Start::AfterPosition(_)) => return Err(invalid("after_position", several())),
            Some(Start::FromPosition(_)) => return Err(invalid("from_position", several())),
            Some(Start::FromVersion(_)) => {
                return Err(invalid(
                    "from_version",
                    "is for stream subscriptions; $all starts from a cursor",
                ))
            }
        };
        let buffer = self.config().subscription_buffer_records_max;
        let mut feeds = Vec::with_capacity(ids.len());
        for id in &ids {
            let start = match cursor.point(*id) {
                Point::From(0) => None,
                Point::From(p) => Some(Start::FromPosition(p)),
                Point::After(p) => Some(Start::AfterPosition(p)),
            };
            let request = pb::SubscribeRequest {
                target: r.target.clone(),
                start,
                filter: r.filter.clone(),
            };
            feeds.push(match self.at(*id) {
                Ok(service) => {
                    let (units, last) = service.open_subscription(request)?;
                    Feed {
                        shard: *id,
                        units,
                        last,
                    }
                }
                Err(_) => self.remote_shard(*id)?.feed(request, buffer).await?,
            });
        }
        Ok(Response::new(ends_when_shards_change(
            crate::all_subscription::start(feeds, cursor, buffer),
            self.map.clone(),
            ids,
        )))
    }

    /// `ReadAll` over several shards: a page of each from the cursor, merged.
    async fn read_all_merged(
        &self,
        r: pb::ReadAllRequest,
        cursor: Cursor,
        metadata: &MetadataMap,
    ) -> Answer<pb::ReadAllResponse> {
        convert::check_filter(r.filter.as_ref())?;
        let ids = self.routing()?.shards();
        if r.from_position != 0 {
            return Err(invalid(
                "from_position",
                format!(
                    "names a place in one shard's log; on a cluster of {} shards continue from next_cursor (from_cursor)",
                    ids.len()
                ),
            ));
        }
        let limit = convert::read_limit(r.limit, self.limits().read_records_max)?;
        let consistency = convert::consistency(r.consistency)?;
        let as_of = convert::as_of(r.as_of);
        if let Some(strata_engine::AsOf::Position(_)) = as_of {
            return Err(invalid(
                "as_of.position",
                "names a place in one shard's log; read several shards as of a timestamp",
            ));
        }
        let pages = join_all(ids.iter().map(|id| {
            let from = cursor.get(*id);
            let r = &r;
            async move {
                let Ok(service) = self.at(*id) else {
                    let page = pb::ReadAllRequest {
                        from_position: from,
                        from_cursor: Default::default(),
                        filter: None,
                        ..r.clone()
                    };
                    return self.remote_shard(*id)?.page(page).await;
                };
                let here = self.read_index(*id, consistency, metadata).await?;
                service.read_all_batch(from, limit, here, as_of).await
            }
        }))
        .await;
        let mut batches = Vec::with_capacity(pages.len());
        let mut closed = u64::MAX;
        for (id, page) in ids.iter().zip(pages) {
            let (mut batch, shard_closed) = page?;
            closed = closed.min(shard_closed);
            // A subscription's cursor: the record there was delivered already.
            if let Point::After(p) = cursor.point(*id) {
                if batch.records.first().is_some_and(|r| r.position == p) {
                    batch.records.remove(0);
                }
            }
            batches.push((*id, batch));
        }
        let bytes_max = self.config().response_bytes_max;
        let (events, next) = merge(batches, &cursor, limit, r.filter.as_ref(), bytes_max);
        let next_position = match &ids[..] {
            [id] => next.get(*id),
            _ => 0,
        };
        Ok(Response::new(pb::ReadAllResponse {
            events,
            next_position,
            closed_timestamp_us: if closed == u64::MAX { 0 } else { closed },
            next_cursor: next.encode().into(),
        }))
    }
}

/// A stream subscription on shard `shard` that ends (UNAVAILABLE, kind `moved`) once the map
/// gives `stream` to another shard: the source takes none of its events any more, and the
/// client resubscribes after its last version, reaching the new shard.
fn ends_when_moved(
    events: crate::subscription::EventStream,
    map: MapCell,
    stream: String,
    shard: ShardId,
) -> crate::subscription::EventStream {
    ends_when(events, map, move |map| {
        let to = map.shard_of(&stream);
        (to != shard).then(|| {
            format!(
                "stream {stream:?} moved from {shard} to {to}; resubscribe after the last version received"
            )
        })
    })
}

/// A `$all` subscription over `shards` that ends (UNAVAILABLE, kind `moved`) once the map has
/// other shards (a split added one): the client resubscribes from its cursor, over them all.
fn ends_when_shards_change(
    events: crate::subscription::EventStream,
    map: MapCell,
    shards: Vec<ShardId>,
) -> crate::subscription::EventStream {
    ends_when(events, map, move |map| {
        let now = map.shards();
        (now != shards).then(|| {
            format!(
                "the cluster's shards changed ({shards:?} to {now:?}); resubscribe from the last cursor received"
            )
        })
    })
}

/// `events` until the map, each time it changes, makes `ended` say why the subscription must
/// end: then one UNAVAILABLE of kind `moved` saying so, and the end.
fn ends_when(
    events: crate::subscription::EventStream,
    map: MapCell,
    ended: impl Fn(&ClusterMap) -> Option<String> + Send + Sync + 'static,
) -> crate::subscription::EventStream {
    use futures_util::StreamExt;
    let epochs = map.watch();
    let ended = Arc::new(ended);
    Box::pin(futures_util::stream::unfold(
        Some((events, epochs, true)),
        move |state| {
            let (map, ended) = (map.clone(), ended.clone());
            async move {
                let (mut events, mut epochs, mut watching) = state?;
                loop {
                    tokio::select! {
                        item = events.next() => {
                            return item.map(|item| (item, Some((events, epochs, watching))));
                        }
                        changed = epochs.changed(), if watching => {
                            watching = changed.is_ok();
                            let why = if watching { ended(&map.get()) } else { None };
                            if let Some(why) = why {
                                let mut status = Status::unavailable(why);
                                status
                                    .metadata_mut()
                                    .insert(ERROR_KIND_KEY, MetadataValue::from_static("moved"));
                                return Some((Err(status), None));
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// The status of an `AppendMulti` over streams of several shards.
fn cross_shard(e: &strata_proto::routing::CrossShard) -> Status {
    let mut status = Status::failed_precondition(e.to_string());
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static("cross-shard"));
    status
}

impl Submit for Router {
    #[allow(clippy::async_yields_async)] // the answers to come are the point: see the trait
    fn submit_batch<'a>(
        &'a self,
        batch: Vec<pb::AppendRequest>,
        fence: &'a Fence,
    ) -> Boxed<'a, Outcomes> {
        Box::pin(async move {
            let shards = self.shards();
            // Every append goes to a node's one shard only when the cluster has one: a node
            // holding one replica of several shards routes by the map like any other.
            let several = self.several();
            if let [(only, service)] = &shards[..] {
                if !several && self.remote_leader(*only).is_none() {
                    return service.submit_batch(batch, fence).await;
                }
            }
            // Each shard's appends in the order sent; the answers put back in that order.
            let mut parts: Vec<(ShardId, Vec<usize>, Vec<pb::AppendRequest>)> = Vec::new();
            let mut routed: Vec<Result<usize, Status>> = Vec::with_capacity(batch.len());
            let map = self.routing();
            for (i, append) in batch.into_iter().enumerate() {
                let id = match (&map, &shards[..]) {
                    (Ok(_), [(only, _)]) if !several => *only,
                    (Ok(map), _) => map.shard_of(&append.stream),
                    (Err(refused), _) => {
                        routed.push(Err(refused.clone()));
                        continue;
                    }
                };
                let held = shards.binary_search_by_key(&id, |(s, _)| *s).is_ok();
                match held || self.remote_holder(id).is_some() {
                    true => {
                        let part = match parts.iter().position(|(s, _, _)| *s == id) {
                            Some(p) => p,
                            None => {
                                parts.push((id, Vec::new(), Vec::new()));
                                parts.len() - 1
                            }
                        };
                        parts[part].1.push(i);
                        parts[part].2.push(append);
                        routed.push(Ok(part));
                    }
                    false => routed.push(Err(Status::unavailable(format!(
                        "the shard of {:?} is not served by this node",
                        append.stream
                    )))),
                }
            }
            let mut pending = Vec::with_capacity(parts.len());
            for (id, _, appends) in parts {
                pending.push(
                    match self.remote_leader(id).or_else(|| self.remote_holder(id)) {
                        Some((remote, addr)) => {
                            self.stats
                                .forwarded
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let moved = self.leader_moved_from(id, &addr);
                            let n = appends.len();
                            let answers = remote.submit(&addr, appends, fence).await;
                            crate::remote_appends::unless_moved(answers, moved, n, fence)
                        }
                        None => match self.at(id) {
                            Ok(service) => service.submit_batch(appends, fence).await,
                            Err(lost) => {
                                // Every append of the part gets the answer (one alone left
                                // the others "unanswered", an internal error).
                                let answers: Outcomes =
                                    Box::pin(std::future::ready(vec![Err(lost); appends.len()]));
                                answers
                            }
                        },
                    },
                );
            }
            let outcomes: Outcomes = Box::pin(async move {
                let mut answers = Vec::with_capacity(pending.len());
                for p in pending {
                    answers.push(p.await.into_iter());
                }
                routed
                    .into_iter()
                    .map(|r| match r {
                        Ok(part) => answers[part]
                            .next()
                            .unwrap_or_else(|| Err(Status::internal("an append went unanswered"))),
                        Err(status) => Err(status),
                    })
                    .collect()
            });
            outcomes
        })
    }

    fn stats(&self) -> &Arc<ServiceStats> {
        &self.stats
    }

    fn stop(&self) -> Option<watch::Receiver<bool>> {
        self.stop.clone()
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::streams_server::Streams for Router {
    async fn append(&self, request: Request<pb::AppendRequest>) -> Answer<pb::AppendResponse> {
        let stream = request.get_ref().stream.clone();
        routed!(self, request, &stream, true, append, true)
    }

    type AppendStreamStream = crate::append_stream::AnswerStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendStreamRequest>>,
    ) -> Answer<Self::AppendStreamStream> {
        let call = self.for_call(request.metadata());
        crate::append_stream::respond(call, request, self.config().window())
    }

    async fn append_multi(
        &self,
        request: Request<pb::AppendMultiRequest>,
    ) -> Answer<pb::AppendResponse> {
        let names = request.get_ref().streams.iter().map(|s| s.stream.as_str());
        if let Err(e) = self.routing()?.shard_of_all(names) {
            return Err(cross_shard(&e));
        }
        let first = match request.get_ref().streams.first() {
            Some(first) => first.stream.clone(),
            None => return self.first()?.append_multi(request).await,
        };
        routed!(self, request, &first, true, append_multi, true)
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Answer<pb::ReadResponse> {
        let r = request.get_ref();
        let (stream, leader) = (r.stream.clone(), linearizable(r.consistency));
        routed!(self, request, &stream, leader, read, true)
    }

    async fn read_all(&self, request: Request<pb::ReadAllRequest>) -> Answer<pb::ReadAllResponse> {
        let r = request.get_ref();
        if !r.from_cursor.is_empty() && r.from_position != 0 {
            return Err(invalid(
                "from_position",
                "must be 0 with from_cursor: continue from one or the other",
            ));
        }
        if let Some(only) = forward::shard_of(request.metadata())? {
            // A merged read elsewhere asks for one shard's page (see `crate::remote_shard`).
            let id = ShardId(only);
            return match self.route(id, linearizable(r.consistency), request.metadata())? {
                Route::Here(service) => service.read_all(request).await,
                Route::Leader(addr) => {
                    let mut leader = self.forwarding()?.streams(&addr)?;
                    leader.read_all(forwarded(request)).await
                }
                Route::Holder(_) => Err(Status::unavailable(format!("{id} is not on this node"))),
            };
        }
        let shards = self.shards();
        if let ([(id, service)], false, true) =
            (&shards[..], self.several(), r.from_cursor.is_empty())
        {
            let id = *id;
            if linearizable(r.consistency) {
                if let Some(addr) = self.leader_elsewhere(id, request.metadata()) {
                    let mut leader = self.forwarding()?.streams(&addr)?;
                    return leader.read_all(forwarded(request)).await;
                }
            }
            let mut answer = service.read_all(request).await?;
            let next = answer.get_ref().next_position;
            answer.get_mut().next_cursor = Cursor::at(&[id], next).encode().into();
            return Ok(answer);
        }
        let (metadata, _, r) = request.into_parts();
        let cursor = Cursor::decode("from_cursor", &r.from_cursor, &*self.routing()?)?;
        self.read_all_merged(r, cursor, &metadata).await
    }

    type SubscribeStream = crate::subscription::EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Answer<Self::SubscribeStream> {
        use pb::subscribe_request::{Start, Target};
        let r = request.get_ref();
        if let (Some(only), Some(Target::All(_))) =
            (forward::shard_of(request.metadata())?, &r.target)
        {
            // A merged subscription elsewhere follows one shard (see `crate::remote_shard`).
            let service = self.at(ShardId(only))?;
            let (units, last) = service.open_subscription(request.into_inner())?;
            return Ok(Response::new(crate::all_subscription::whole_records(
                units, last,
            )));
        }
        let several = self.several();
        let service = match &r.target {
            Some(Target::Stream(name)) if several => {
                let id = self.owner(name)?;
                let name = name.clone();
                let events: crate::subscription::EventStream =
                    match self.route(id, false, request.metadata())? {
                        Route::Here(service) => service.subscribe(request).await?.into_inner(),
                        Route::Leader(addr) | Route::Holder(addr) => {
                            let mut holder = self.forwarding()?.streams_apart(&addr)?;
                            let events = holder.subscribe(forward::via_holder(request)).await?;
                            // Its connection lives as long as the call.
                            Box::pin(futures_util::StreamExt::inspect(
                                events.into_inner(),
                                move |_| {
                                    let _ = &holder;
                                },
                            ))
                        }
                    };
                return Ok(Response::new(ends_when_moved(
                    events,
                    self.map.clone(),
                    name,
                    id,
                )));
            }
            Some(Target::Stream(name)) => Some(self.shard(name)?),
            // One shard without a cursor, or no target (its error): as on one shard.
            Some(Target::All(_)) if !matches!(r.start, Some(Start::Cursor(_))) => {
                (!several).then(|| self.first()).transpose()?
            }
            Some(Target::All(_)) => None,
            None => Some(self.first()?),
        };
        match service {
            Some(service) => service.subscribe(request).await,
            None => self.subscribe_all(request.into_inner()).await,
        }
    }

    async fn get_stream(
        &self,
        request: Request<pb::GetStreamRequest>,
    ) -> Answer<pb::GetStreamResponse> {
        let r = request.get_ref();
        let (stream, leader) = (r.stream.clone(), linearizable(r.consistency));
        routed!(self, request, &stream, leader, get_stream, true)
    }

    async fn get_log(&self, request: Request<pb::GetLogRequest>) -> Answer<pb::GetLogResponse> {
        let only = forward::shard_of(request.metadata())?;
        let (metadata, _, r) = request.into_parts();
        let consistency = convert::consistency(r.consistency)?;
        // A remote read index asks about one shard (see `read_index`).
        let asked: Vec<ShardId> = match only {
            None => self.routing()?.shards(),
            Some(id) => match self.at(ShardId(id)) {
                Ok(_) => vec![ShardId(id)],
                Err(_) => return Err(Status::not_found(format!("shard {id} is not on this node"))),
            },
        };
        let points = join_all(asked.iter().map(|&id| {
            let metadata = &metadata;
            self.log_point_of(id, consistency, r.at_timestamp_us, metadata)
        }))
        .await;
        let (mut ends, mut firsts) = (Cursor::default(), Cursor::default());
        let mut answer = pb::GetLogResponse::default();
        for (&id, point) in asked.iter().zip(points) {
            let (end, first) = point?;
            ends.set(id, end);
            firsts.set(id, first.unwrap_or(end));
            if asked.len() == 1 {
                answer.end_position = end;
                answer.first_position_at_or_after = first;
            }
        }
        answer.end_cursor = ends.encode().into();
        if r.at_timestamp_us.is_some() {
            answer.cursor_at_or_after = firsts.encode().into();
        }
        Ok(Response::new(answer))
    }

    async fn set_stream_metadata(
        &self,
        request: Request<pb::SetStreamMetadataRequest>,
    ) -> Answer<pb::WriteResponse> {
        let stream = request.get_ref().stream.clone();
        routed!(self, request, &stream, true, set_stream_metadata, false)
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Answer<pb::WriteResponse> {
        let stream = request.get_ref().stream.clone();
        routed!(self, request, &stream, true, delete_stream, false)
    }

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Answer<pb::WriteResponse> {
        let stream = request.get_ref().stream.clone();
        routed!(self, request, &stream, true, save_snapshot, false)
    }

    async fn read_state(
        &self,
        request: Request<pb::ReadStateRequest>,
    ) -> Answer<pb::ReadStateResponse> {
        let r = request.get_ref();
        let (stream, leader) = (r.stream.clone(), linearizable(r.consistency));
        routed!(self, request, &stream, leader, read_state, true)
    }

    /// Sets the policy on every shard, in id order (a policy is a value: a retry after a
    /// partial failure sets the same one again); answers with the last shard's policies.
    async fn set_snapshot_policy(
        &self,
        request: Request<pb::SnapshotPolicy>,
    ) -> Answer<pb::SnapshotPolicies> {
        let only = forward::shard_of(request.metadata())?;
        let ids = match only {
            Some(id) => vec![ShardId(id)],
            None => self.routing()?.shards(),
        };
        let policy = request.into_inner();
        let mut last = None;
        for id in ids {
            let request = Request::new(policy.clone());
            last = Some(match (self.at(id), only) {
                (Ok(service), _) => service.set_snapshot_policy(request).await?,
                (Err(not_here), Some(_)) => return Err(not_here),
                (Err(_), None) => {
                    let remote = self.remote_shard(id)?;
                    let mut holder = remote.peers.streams(&remote.addr)?;
                    let request = forward::for_shard_via_holder(policy.clone(), id.0);
                    holder.set_snapshot_policy(request).await?
                }
            });
        }
        last.ok_or_else(|| Status::internal("a cluster without shards"))
    }
}
