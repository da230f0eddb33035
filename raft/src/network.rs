//! Raft traffic between nodes over tonic (`strata.internal.v1.RaftInternal`). Every message
//! names its shard (multi-Raft shares the connections); openraft's requests and responses travel
//! bincode-encoded. Connections are pooled per address and reused; every call has a deadline;
//! messages are bounded by [`MESSAGE_BYTES_MAX`].
//!
//! Snapshots are sent whole (`full_snapshot`): the leader sends its manifest, the receiver
//! fetches the named log ranges from the leader (`FetchLog`, chunks of at most
//! [`crate::snapshot::FETCH_CHUNK_BYTES`]), checks them, and only then installs.
//!
//! [`RaftTransport`] is the seam: [`GrpcTransport`] is the real network; the simulator can put
//! its own in its place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strata_proto::internal as pb;
use strata_proto::internal::raft_internal_client::RaftInternalClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::pacing::CatchUpPacer;
use crate::snapshot::{self, Manifest};
use crate::storage::Shard;
use crate::types::{NodeId, Raft, SnapshotMeta, StrataNode, TypeConfig};
use crate::wire::{Outcome, WireAppend};

/// Largest Raft message, either way. An AppendEntries carries at most
/// [`crate::storage::ENTRIES_BYTES_MAX`] of entries or one entry whatever its size (one record,
/// up to the engine's `batch_bytes_max`), so a node refuses at start-up a `batch_bytes_max`
/// whose AppendEntries would not fit ([`check_limits`]); a fetch carries at most
/// [`crate::snapshot::FETCH_CHUNK_BYTES`].
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// How long openraft waits before it tries an unreachable peer again (its own default).
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(500);
/// Most entries one AppendEntries carries (openraft's `max_payload_entries`).
pub const ENTRIES_PER_MESSAGE_MAX: u64 = 512;
/// Most bytes the wire adds to one entry's record bytes (its log id, the payload's and the
/// command's tags, the bytes' length; bincode's fixed-width integers). Checked by a test
/// against the worst case.
pub const ENTRY_WIRE_OVERHEAD_BYTES: usize = 64;
/// Most bytes the wire adds to a whole AppendEntries besides its entries (vote, previous log
/// id, commit point, the entries' count, the `RaftMessage` envelope and gRPC's frame).
pub const MESSAGE_WIRE_OVERHEAD_BYTES: usize = 256;

/// The largest AppendEntries a shard whose records are at most `batch_bytes_max` sends.
pub fn append_entries_bytes_max(batch_bytes_max: usize) -> usize {
    crate::storage::ENTRIES_BYTES_MAX.max(batch_bytes_max)
        + ENTRIES_PER_MESSAGE_MAX as usize * ENTRY_WIRE_OVERHEAD_BYTES
        + MESSAGE_WIRE_OVERHEAD_BYTES
}

/// Refuses engine limits whose largest append would not fit one Raft message: a leader could
/// take it, and replication would then stall on it for good.
pub fn check_limits(limits: &strata_engine::Limits) -> strata_engine::Result<()> {
    let needed = append_entries_bytes_max(limits.batch_bytes_max);
    if needed > MESSAGE_BYTES_MAX {
        return Err(strata_engine::Error::invalid(
            "batch_bytes_max",
            format!(
                "{} makes an AppendEntries of up to {needed} bytes, above the Raft message limit of {MESSAGE_BYTES_MAX}",
                limits.batch_bytes_max
            ),
        ));
    }
    Ok(())
}
/// How long to wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a whole snapshot transfer (fetch, check, install) may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// HTTP/2 keep-alive ping interval on Raft connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A peer that answers no keep-alive ping for this long is dead: calls on the connection fail
/// then, instead of waiting out their deadline (a snapshot offer's is [`SNAPSHOT_TIMEOUT`]).
/// The simulator's network fails hung calls after the same time.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Which RPC a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// AppendEntries.
    AppendEntries,
    /// RequestVote.
    Vote,
    /// A whole snapshot.
    InstallSnapshot,
    /// "Start an election now" from a leader handing over its leadership.
    TimeoutNow,
    /// An append proposed on behalf of another node.
    Propose,
}

/// How Raft messages reach other nodes: the real network or the simulator's.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends one encoded message to the node at `addr` and returns the encoded answer.
    fn call(
        &self,
        addr: &str,
        rpc: Rpc,
        message: pb::RaftMessage,
        deadline: Duration,
    ) -> impl Future<Output = Result<pb::RaftMessage, Status>> + Send;

    /// Fetches raw log bytes from the node at `addr` (for a snapshot install).
    fn fetch_log(
        &self,
        addr: &str,
        request: pb::FetchLogRequest,
        deadline: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, Status>> + Send;
}

/// The real network: one lazily connected, reused tonic channel per address.
#[derive(Debug, Clone, Default)]
pub struct GrpcTransport {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcTransport {
    fn client(&self, addr: &str) -> Result<RaftInternalClient<Channel>, Status> {
        let mut channels = strata_engine::sync::lock(&self.channels);
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| Status::invalid_argument(format!("bad address {addr}: {e}")))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(DEAD_PEER_TIMEOUT)
                    .keep_alive_while_idle(true);
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftInternalClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}

impl RaftTransport for GrpcTransport {
    async fn call(
        &self,
        addr: &str,
        rpc: Rpc,
        message: pb::RaftMessage,
        deadline: Duration,
    ) -> Result<pb::RaftMessage, Status> {
        let mut client = self.client(addr)?;
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
                Rpc::TimeoutNow => client.timeout_now(request).await,
                Rpc::Propose => client.propose(request).await,
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{rpc:?} to {addr} took longer than {deadline:?}"
            ))),
        }
    }

    async fn fetch_log(
        &self,
        addr: &str,
        request: pb::FetchLogRequest,
        deadline: Duration,
    ) -> Result<Vec<u8>, Status> {
        let mut client = self.client(addr)?;
        let mut request = Request::new(request);
        request.set_timeout(deadline);
        match tokio::time::timeout(deadline, client.fetch_log(request)).await {
            Ok(r) => r.map(|r| r.into_inner().data),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "fetching log bytes from {addr} took longer than {deadline:?}"
            ))),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(value).map_err(|e| Status::internal(format!("encoding: {e}")))
}

/// Decodes a Raft message's payload (bincode). Whatever the bytes, the answer is the message or
/// `INVALID_ARGUMENT`, never a panic or an allocation beyond the bytes' own length.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

/// What the leader sends to install a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotOffer {
    /// The sender's vote.
    pub vote: Vote<NodeId>,
    /// The snapshot's [`Manifest`], encoded.
    pub manifest: Vec<u8>,
    /// Where to fetch the manifest's ranges (the sender's Raft address).
    pub source_addr: String,
}

/// openraft's network factory for one shard.
#[derive(Debug)]
pub struct Network<T> {
    shard_id: u64,
    self_node: StrataNode,
    transport: Arc<T>,
    /// Raft addresses this node was configured with for its peers; they win over the
    /// membership's (each node may reach a peer by its own route).
    routes: HashMap<NodeId, String>,
    /// This replica's storage, whose saved vote an AppendEntries must still carry when sent
    /// (see [`Connection::append_entries`]); `None`: not checked.
    local: Option<Shard>,
    /// Paces what this leader sends new replicas (see [`crate::pacing`]); `None`: unpaced.
    pacer: Option<Arc<dyn CatchUpPacer>>,
}

impl<T> Clone for Network<T> {
    fn clone(&self) -> Self {
        Network {
            shard_id: self.shard_id,
            self_node: self.self_node.clone(),
            transport: self.transport.clone(),
            routes: self.routes.clone(),
            local: self.local.clone(),
            pacer: self.pacer.clone(),
        }
    }
}

impl<T: RaftTransport> Network<T> {
    /// Raft traffic of shard `shard_id`, sent from `self_node`, reaching the peers in `routes`
    /// at those addresses and any other member at its membership address.
    pub fn new(
        shard_id: u64,
        self_node: StrataNode,
        transport: Arc<T>,
        routes: HashMap<NodeId, String>,
    ) -> Network<T> {
        Network {
            shard_id,
            self_node,
            transport,
            routes,
            local: None,
            pacer: None,
        }
    }

    /// The network of the replica over `shard`: an AppendEntries is sent only while the
    /// replica's saved vote is still the one the request carries.
    pub fn voting_in(mut self, shard: &Shard) -> Network<T> {
        self.local = Some(shard.clone());
        self
    }

    /// Entries sent to a member that is not a voter by the replica's applied membership (a
    /// move's new replica) are paced by `pacer` (needs [`Network::voting_in`]).
    pub fn paced_by(mut self, pacer: Option<Arc<dyn CatchUpPacer>>) -> Network<T> {
        self.pacer = pacer;
        self
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &StrataNode) -> Connection<T> {
        Connection {
            shard_id: self.shard_id,
            target,
            to_incarnation: node.incarnation,
            addr: self
                .routes
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.raft_addr.clone()),
            self_addr: self.self_node.raft_addr.clone(),
            transport: self.transport.clone(),
            local: self.local.clone(),
            pacer: self.pacer.clone(),
            paced_for: Duration::ZERO,
        }
    }
}

/// Sends a shard's `TimeoutNow` whatever the transport (the replica holds it type-erased).
pub trait Handover: Send + Sync + 'static {
    /// Tells node `target` (at `node`) to start an election of this shard now, on behalf of a
    /// leader whose vote is `vote` (see [`Rpc::TimeoutNow`]).
    fn timeout_now<'a>(
        &'a self,
        target: NodeId,
        node: &'a StrataNode,
        vote: &'a Vote<NodeId>,
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'a>>;

    /// Proposes `appends`, in order, to this shard at node `target` (at `node`), which should
    /// lead it (see [`Rpc::Propose`]); one answer per append.
    fn propose<'a>(
        &'a self,
        target: NodeId,
        node: &'a StrataNode,
        appends: &'a [WireAppend],
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<ProposeAnswer>, Status>> + Send + 'a>>;
}

impl<T: RaftTransport> Handover for Network<T> {
    fn timeout_now<'a>(
        &'a self,
        target: NodeId,
        node: &'a StrataNode,
        vote: &'a Vote<NodeId>,
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'a>> {
        Box::pin(self.send_timeout_now(target, node, vote, deadline))
    }

    fn propose<'a>(
        &'a self,
        target: NodeId,
        node: &'a StrataNode,
        appends: &'a [WireAppend],
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<ProposeAnswer>, Status>> + Send + 'a>>
    {
        Box::pin(async move {
            let message = pb::RaftMessage {
                shard_id: self.shard_id,
                payload: encode(&appends)?,
                to_incarnation: Some(node.incarnation),
            };
            let answer = self
                .transport
                .call(&self.addr_of(target, node), Rpc::Propose, message, deadline)
                .await?;
            decode(&answer.payload)
        })
    }
}

impl<T: RaftTransport> Network<T> {
    /// Where node `target` takes Raft traffic: its route (tests put proxies there), else its
    /// Raft address.
    fn addr_of(&self, target: NodeId, node: &StrataNode) -> String {
        self.routes
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.raft_addr.clone())
    }

    async fn send_timeout_now(
        &self,
        target: NodeId,
        node: &StrataNode,
        vote: &Vote<NodeId>,
        deadline: Duration,
    ) -> Result<(), Status> {
        let addr = self.addr_of(target, node);
        let message = pb::RaftMessage {
            shard_id: self.shard_id,
            payload: encode(vote)?,
            to_incarnation: Some(node.incarnation),
        };
        self.transport
            .call(&addr, Rpc::TimeoutNow, message, deadline)
            .await
            .map(drop)
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct Connection<T> {
    shard_id: u64,
    target: NodeId,
    /// The incarnation of the target's replica this node's membership names.
    to_incarnation: u64,
    addr: String,
    self_addr: String,
    transport: Arc<T>,
    local: Option<Shard>,
    pacer: Option<Arc<dyn CatchUpPacer>>,
    /// The pacer's wait when it last held a message back (openraft's backoff then).
    paced_for: Duration,
}

/// Whether a failed call is the target being out of reach — down, or holding no replica of
/// the group (removed, or not yet opened: NOT_FOUND), or another one than addressed
/// (FAILED_PRECONDITION) — which openraft retries after a backoff. Any other failure it
/// retries at once.
fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
    )
}

impl<T: RaftTransport> Connection<T> {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, RPCError<NodeId, StrataNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(rpc, payload, deadline).await
    }

    /// Sends an encoded request and decodes the answer.
    async fn send<Resp: DeserializeOwned, E>(
        &self,
        rpc: Rpc,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<Resp, RPCError<NodeId, StrataNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let message = pb::RaftMessage {
            shard_id: self.shard_id,
            payload,
            to_incarnation: Some(self.to_incarnation),
        };
        let answer = match self
            .transport
            .call(&self.addr, rpc, message, deadline)
            .await
        {
            Ok(a) => a,
            Err(status) if is_unreachable(&status) => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&answer.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<T> Connection<T> {
    /// Before an AppendEntries of `bytes` to a new replica (see [`crate::pacing`]): sleeps the
    /// pacer's wait if short, else holds the message back as unreachable for that wait.
    async fn pace<E: std::error::Error>(
        &mut self,
        bytes: usize,
    ) -> Result<(), RPCError<NodeId, StrataNode, RaftError<NodeId, E>>> {
        self.paced_for = Duration::ZERO;
        let (Some(pacer), Some(local)) = (&self.pacer, &self.local) else {
            return Ok(());
        };
        if !crate::pacing::is_new_replica(local, self.target) {
            return Ok(());
        }
        let due = pacer.due();
        if due > crate::pacing::PACED_SLEEP_MAX {
            self.paced_for = due;
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                format!(
                    "not sent yet: new replica {}'s catch-up is paced by the move throttle (next in {due:?})",
                    self.target
                ),
            ))));
        }
        if !due.is_zero() {
            tokio::time::sleep(due).await;
        }
        pacer.take(bytes as u64);
        Ok(())
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, StrataNode, RaftError<NodeId>>>
    {
        // openraft's replication task reads the entries it sends from the log while the core
        // goes on: a leader that stepped down and had its log truncated by the next leader can
        // send entries of the new log after a `prev_log_id` of the old one (openraft issue
        // #1077), which a follower whose vote is still the old leader's would take. A vote
        // saved before any truncation, unchanged once the entries are read, proves they are
        // the old leader's own log: otherwise the request is not sent.
        if let Some(local) = &self.local {
            let now = local.vote();
            if now != Some(rpc.vote) {
                // As unreachable: openraft backs off (a network error is retried at once)
                // until its core closes the stale replication.
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    format!(
                        "not sent: this replica's vote moved from {} to {now:?} since the request was built (its log may have changed)",
                        rpc.vote
                    ),
                ))));
            }
        }
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.pace(payload.len()).await?;
        self.send(Rpc::AppendEntries, payload, option.hard_ttl())
            .await
    }

    fn backoff(&self) -> Backoff {
        // Held back by the pacer: the first retry comes when its wait is over.
        let first = if self.paced_for.is_zero() {
            UNREACHABLE_BACKOFF
        } else {
            self.paced_for
        };
        Backoff::new(std::iter::once(first).chain(std::iter::repeat(UNREACHABLE_BACKOFF)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, StrataNode, RaftError<NodeId>>> {
        self.rpc(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    /// Chunked snapshot transfer is not used: `full_snapshot` below sends a manifest and the
    /// receiver fetches the log ranges itself. openraft calls this only from the default
    /// `full_snapshot`, which is replaced.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, StrataNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other(
                "chunked snapshot transfer is not supported; snapshots are sent whole",
            ),
        )))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let offer = SnapshotOffer {
            vote,
            manifest: snapshot.snapshot.into_inner(),
            source_addr: self.self_addr.clone(),
        };
        let send = self.rpc::<_, SnapshotResponse<NodeId>, SnapshotRefused>(
            Rpc::InstallSnapshot,
            &offer,
            SNAPSHOT_TIMEOUT,
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
                RPCError::PayloadTooLarge(p) => StreamingError::Network(NetworkError::new(&p)),
            }),
        }
    }
}

/// Why a replica did not install an offered snapshot.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("snapshot refused: {0}")]
pub struct SnapshotRefused(pub String);

/// One shard's Raft node as the server side sees it.
#[derive(Clone)]
pub struct ServedShard {
    /// The Raft node.
    pub raft: Raft,
    /// Its storage.
    pub shard: Shard,
    /// Proposes an append through the replica's proposer (for `Propose`).
    pub propose: Proposer,
}

/// The answer to an append proposed on behalf of another node (`RaftInternal.Propose`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ProposeAnswer {
    /// Decided at its log index: appended, or rejected there.
    Decided(Outcome),
    /// The receiver does not lead the shard; the leader's id and node, when known.
    NotLeader(Option<(u64, StrataNode)>),
    /// The shard cannot answer now (no quorum, timed out, stopping).
    Unavailable(String),
}

/// Hands appends, in order, to a replica's proposer and answers how each was decided.
pub type Proposer = Arc<
    dyn Fn(Vec<WireAppend>) -> std::pin::Pin<Box<dyn Future<Output = Vec<ProposeAnswer>> + Send>>
        + Send
        + Sync,
>;

/// The server side of `RaftInternal`: dispatches by shard id.
#[derive(Clone)]
pub struct RaftService<T> {
    /// Groups may be added while it serves (a shard split adds one on every node).
    shards: Arc<std::sync::RwLock<HashMap<u64, ServedShard>>>,
    transport: Arc<T>,
    /// Paces fetches of new replicas (see [`crate::pacing`]); `None`: unpaced.
    pacer: Option<Arc<dyn CatchUpPacer>>,
}

impl<T> std::fmt::Debug for RaftService<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("shards", &self.served().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T: RaftTransport> RaftService<T> {
    /// Serves these shards; fetches for snapshot installs go through `transport`.
    pub fn new(shards: HashMap<u64, ServedShard>, transport: Arc<T>) -> RaftService<T> {
        RaftService {
            shards: Arc::new(std::sync::RwLock::new(shards)),
            transport,
            pacer: None,
        }
    }

    /// Fetches for new replicas' catch-up (`FetchLogRequest::new_replica`) are paced by
    /// `pacer` from now on.
    pub fn with_pacer(mut self, pacer: Option<Arc<dyn CatchUpPacer>>) -> RaftService<T> {
        self.pacer = pacer;
        self
    }

    /// Serves a fetch on this task (the simulator's, where nothing may run on other threads):
    /// paced as [`pb::raft_internal_server::RaftInternal::fetch_log`] is.
    pub async fn fetch_here(&self, r: pb::FetchLogRequest) -> Result<Vec<u8>, Status> {
        let served = self.shard(r.shard_id)?;
        self.pace_fetch(&r).await;
        let data = served
            .shard
            .fetch_chunk(r.position, r.max_bytes)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.took(&r, data.len());
        Ok(data)
    }

    /// Waits out the pacer before a new replica's fetch.
    async fn pace_fetch(&self, r: &pb::FetchLogRequest) {
        if let (true, Some(pacer)) = (r.new_replica, &self.pacer) {
            let due = pacer.due();
            if !due.is_zero() {
                tokio::time::sleep(due).await;
            }
        }
    }

    /// Counts a new replica's fetched bytes with the pacer.
    fn took(&self, r: &pb::FetchLogRequest, bytes: usize) {
        if let (true, Some(pacer)) = (r.new_replica, &self.pacer) {
            pacer.take(bytes as u64);
        }
    }

    /// Serves one more group from now on (one added while the node runs); refused if the
    /// id is served already.
    pub fn add(&self, id: u64, shard: ServedShard) -> Result<(), String> {
        let mut shards = self
            .shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shards.contains_key(&id) {
            return Err(format!("shard {id} is served already"));
        }
        shards.insert(id, shard);
        Ok(())
    }

    /// Stops serving group `id` (its replica here was removed); `false` if it was not served.
    pub fn remove(&self, id: u64) -> bool {
        self.shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
            .is_some()
    }
}

impl<T> RaftService<T> {
    fn served(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, ServedShard>> {
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shard(&self, id: u64) -> Result<ServedShard, Status> {
        self.served()
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("shard {id} is not on this node")))
    }

    /// A Raft message's group id, the group served here, and its payload decoded.
    fn unpack<P: DeserializeOwned>(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<(u64, ServedShard, P), Status> {
        let m = request.into_inner();
        let served = self.shard(m.shard_id)?;
        addressed(m.shard_id, served.shard.incarnation(), m.to_incarnation)?;
        Ok((m.shard_id, served, decode(&m.payload)?))
    }
}

impl<T: RaftTransport> RaftService<T> {
    async fn take_snapshot(
        &self,
        shard_id: u64,
        served: &ServedShard,
        offer: SnapshotOffer,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotRefused> {
        let refuse = |e: &dyn std::fmt::Display| SnapshotRefused(e.to_string());
        let mine = served.raft.metrics().borrow().vote;
        if offer.vote < mine {
            // A stale leader: answer with the newer vote so it steps down.
            return Ok(SnapshotResponse { vote: mine });
        }
        let manifest = Manifest::decode(&offer.manifest).map_err(|e| refuse(&e))?;
        // One offer at a time: a duplicate waits here, then finds the snapshot installed.
        let _installing = served.shard.lock_install().await;
        let meta: SnapshotMeta = manifest.meta.clone();
        let holds = match meta.last_log_id {
            Some(l) => served.shard.holds(l).map_err(|e| refuse(&e))?,
            None => true,
        };
        if !holds && !manifest.segments.is_empty() {
            let total = manifest.bytes();
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = total,
                source = %offer.source_addr,
                "fetching snapshot segments"
            );
            let options = served.shard.options().clone();
            let new_replica = crate::pacing::is_new_replica(&served.shard, options.node_id);
            let transport = self.transport.clone();
            let source = offer.source_addr.clone();
            let mut last_report = 0u64;
            let staged = snapshot::stage(
                options.fs.as_ref(),
                &options.dir,
                served.shard.next_staging_attempt(),
                &manifest,
                |position, len| {
                    let transport = transport.clone();
                    let source = source.clone();
                    async move {
                        transport
                            .fetch_log(
                                &source,
                                pb::FetchLogRequest {
                                    shard_id,
                                    position,
                                    max_bytes: len as u32,
                                    new_replica,
                                },
                                Duration::from_secs(30),
                            )
                            .await
                            .map_err(|s| strata_engine::Error::Unavailable(s.message().to_string()))
                    }
                },
                |done, total| {
                    if done - last_report >= 64 << 20 || done == total {
                        last_report = done;
                        tracing::info!(done, total, "snapshot fetch progress");
                    }
                },
            )
            .await
            .map_err(|e| refuse(&e))?;
            served.shard.staged(&meta.snapshot_id, staged);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(offer.manifest)),
        };
        served
            .raft
            .install_full_snapshot(offer.vote, snapshot)
            .await
            .map_err(|e| refuse(&e))
    }
}

/// Refuses a message for another incarnation of group `shard_id`'s replica here than `mine`
/// (`to`: the one the sender's membership names; `None`: not said, not checked).
fn addressed(shard_id: u64, mine: u64, to: Option<u64>) -> Result<(), Status> {
    match to {
        Some(theirs) if theirs != mine => Err(Status::failed_precondition(format!(
            "shard {shard_id}'s replica here is incarnation {mine}; the message is for incarnation {theirs}, a replica this node held before (the sender's membership is stale)"
        ))),
        _ => Ok(()),
    }
}

fn message(shard_id: u64, payload: Vec<u8>) -> Response<pb::RaftMessage> {
    Response::new(pb::RaftMessage {
        shard_id,
        payload,
        to_incarnation: None,
    })
}

#[tonic::async_trait]
impl<T: RaftTransport> pb::raft_internal_server::RaftInternal for RaftService<T> {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (shard_id, served, rpc): (u64, ServedShard, AppendEntriesRequest<TypeConfig>) =
            self.unpack(request)?;
        let result = served.raft.append_entries(rpc).await;
        Ok(message(shard_id, encode(&result)?))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (shard_id, served, rpc): (u64, ServedShard, VoteRequest<NodeId>) =
            self.unpack(request)?;
        let result = served.raft.vote(rpc).await;
        Ok(message(shard_id, encode(&result)?))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (shard_id, served, offer): (u64, ServedShard, SnapshotOffer) = self.unpack(request)?;
        let result: Result<SnapshotResponse<NodeId>, RaftError<NodeId, SnapshotRefused>> = self
            .take_snapshot(shard_id, &served, offer)
            .await
            .map_err(RaftError::APIError);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "snapshot not installed");
        }
        Ok(message(shard_id, encode(&result)?))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (shard_id, served, theirs): (u64, ServedShard, Vote<NodeId>) = self.unpack(request)?;
        let mine = served.raft.metrics().borrow().vote;
        // A late one must not unsettle a leader of a later term than the sender's.
        if !(mine.committed && mine.leader_id.term > theirs.leader_id.term) {
            served
                .raft
                .trigger()
                .elect()
                .await
                .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        } else {
            tracing::info!(%mine, %theirs, "a stale TimeoutNow is ignored");
        }
        Ok(message(shard_id, Vec::new()))
    }

    async fn propose(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let (shard_id, served, appends): (u64, ServedShard, Vec<WireAppend>) =
            self.unpack(request)?;
        let answers = (served.propose)(appends).await;
        Ok(message(shard_id, encode(&answers)?))
    }

    async fn fetch_log(
        &self,
        request: Request<pb::FetchLogRequest>,
    ) -> Result<Response<pb::FetchLogResponse>, Status> {
        let r = request.into_inner();
        let served = self.shard(r.shard_id)?;
        self.pace_fetch(&r).await;
        let shard = served.shard.clone();
        let (position, max_bytes) = (r.position, r.max_bytes);
        let data = tokio::task::spawn_blocking(move || shard.fetch_chunk(position, max_bytes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.took(&r, data.len());
        Ok(Response::new(pb::FetchLogResponse { data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, LogId};
    use crate::wire::Command;
    use openraft::{CommittedLeaderId, EntryPayload};
    use prost::Message;

    #[test]
    fn a_message_for_another_incarnation_is_refused_and_backed_off_from() {
        assert!(addressed(4, 7, Some(7)).is_ok());
        assert!(addressed(4, 7, None).is_ok(), "a sender that names none");
        let refused = addressed(4, 7, Some(0)).expect_err("a stale member's message");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("incarnation 7"), "{refused}");
        assert!(
            is_unreachable(&refused),
            "backed off from, not retried at once"
        );
        assert!(is_unreachable(&Status::not_found(
            "shard 4 is not on this node"
        )));
        assert!(!is_unreachable(&Status::internal("a bug")));
    }

    /// A transport that records what it is asked to send and answers nothing.
    #[derive(Default)]
    struct Recording(Mutex<Vec<pb::RaftMessage>>);

    impl RaftTransport for Recording {
        async fn call(
            &self,
            _addr: &str,
            _rpc: Rpc,
            message: pb::RaftMessage,
            _deadline: Duration,
        ) -> Result<pb::RaftMessage, Status> {
            strata_engine::sync::lock(&self.0).push(message);
            Err(Status::unavailable("recorded"))
        }

        async fn fetch_log(
            &self,
            _addr: &str,
            _request: pb::FetchLogRequest,
            _deadline: Duration,
        ) -> Result<Vec<u8>, Status> {
            Err(Status::unavailable("recorded"))
        }
    }

    /// Node 2's replica of a group, in `dir`.
    fn node_2_shard(dir: &std::path::Path) -> Shard {
        Shard::open(crate::storage::ShardOptions::on_disk(
            2,
            dir,
            strata_engine::EngineConfig::default(),
        ))
        .expect("open shard")
    }

    #[tokio::test]
    async fn an_append_entries_is_sent_only_while_its_vote_is_the_replicas() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shard = node_2_shard(tmp.path());
        let transport = Arc::new(Recording::default());
        let me = StrataNode::at("n2", "n2");
        let mut network = Network::new(4, me, transport.clone(), HashMap::new()).voting_in(&shard);
        let target = StrataNode::at("n3", "n3").incarnation(6);
        let mut connection = network.new_client(3, &target).await;
        let request = |term| AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, 2),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(1));
        // This replica leads in term 2 (as saved); a request of term 1 is a stale one.
        let mut raft_log = shard.split().0;
        openraft::storage::RaftLogStorage::save_vote(&mut raft_log, &Vote::new_committed(2, 2))
            .await
            .expect("save vote");
        let stale = connection.append_entries(request(1), option.clone()).await;
        assert!(matches!(stale, Err(RPCError::Unreachable(_))), "{stale:?}");
        assert!(
            strata_engine::sync::lock(&transport.0).is_empty(),
            "not sent"
        );
        let _ = connection.append_entries(request(2), option).await;
        let sent = strata_engine::sync::lock(&transport.0).clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].to_incarnation,
            Some(6),
            "the target's incarnation named"
        );
    }

    /// A pacer whose wait is set by the test; it counts the bytes taken.
    #[derive(Debug, Default)]
    struct Fixed(Mutex<(Duration, u64)>);

    impl CatchUpPacer for Fixed {
        fn due(&self) -> Duration {
            strata_engine::sync::lock(&self.0).0
        }

        fn take(&self, bytes: u64) {
            strata_engine::sync::lock(&self.0).1 += bytes;
        }
    }

    /// Applies a membership of `voters` (and learner 3, when not a voter) at `index`.
    async fn apply_membership(shard: &Shard, index: u64, voters: &[NodeId]) {
        let voters: std::collections::BTreeSet<NodeId> = voters.iter().copied().collect();
        let nodes: std::collections::BTreeMap<NodeId, StrataNode> = [2, 3]
            .into_iter()
            .map(|n| (n, StrataNode::at(format!("n{n}"), format!("n{n}"))))
            .collect();
        let membership = openraft::Membership::new(vec![voters], nodes);
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 2), index),
            payload: EntryPayload::Membership(membership),
        };
        let mut sm = shard.split().1;
        openraft::storage::RaftStateMachine::apply(&mut sm, vec![entry])
            .await
            .expect("apply");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_to_a_new_replica_are_paced_and_to_a_voter_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shard = node_2_shard(tmp.path());
        let mut raft_log = shard.split().0;
        openraft::storage::RaftLogStorage::save_vote(&mut raft_log, &Vote::new_committed(2, 2))
            .await
            .expect("save vote");
        let transport = Arc::new(Recording::default());
        let pacer = Arc::new(Fixed::default());
        let mut network = Network::new(
            4,
            StrataNode::at("n2", "n2"),
            transport.clone(),
            HashMap::new(),
        )
        .voting_in(&shard)
        .paced_by(Some(pacer.clone()));
        let mut connection = network.new_client(3, &StrataNode::at("n3", "n3")).await;
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 2),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(1));
        let sent = || strata_engine::sync::lock(&transport.0).len();
        let taken = || strata_engine::sync::lock(&pacer.0).1;
        let set_due = |d| strata_engine::sync::lock(&pacer.0).0 = d;
        // Node 3 is a learner: a short wait is slept, then the message goes and is counted.
        apply_membership(&shard, 1, &[2]).await;
        set_due(Duration::from_millis(5));
        let started = tokio::time::Instant::now();
        let _ = connection
            .append_entries(request.clone(), option.clone())
            .await;
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert_eq!(sent(), 1);
        assert_eq!(taken(), encode(&request).expect("encodes").len() as u64);
        // A long wait: not sent; openraft backs off for exactly that long.
        set_due(Duration::from_secs(3));
        let held = connection
            .append_entries(request.clone(), option.clone())
            .await;
        assert!(matches!(held, Err(RPCError::Unreachable(_))), "{held:?}");
        assert_eq!(sent(), 1, "held back");
        let mut backoff = connection.backoff();
        assert_eq!(backoff.next(), Some(Duration::from_secs(3)));
        assert_eq!(backoff.next(), Some(UNREACHABLE_BACKOFF));
        // A voter is never paced, whatever the wait.
        apply_membership(&shard, 2, &[2, 3]).await;
        let before = taken();
        let _ = connection.append_entries(request, option).await;
        assert_eq!(sent(), 2);
        assert_eq!(taken(), before, "a voter's entries are not counted");
        let mut backoff = connection.backoff();
        assert_eq!(
            backoff.next(),
            Some(UNREACHABLE_BACKOFF),
            "not paced: the usual"
        );
    }

    fn worst_append_entries(entries: usize, frame_bytes: usize) -> usize {
        let log_id = LogId::new(CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Normal(Command::Frame(bytes::Bytes::from(vec![
                0xff;
                frame_bytes
            ]))),
        };
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(u64::MAX, u64::MAX),
            prev_log_id: Some(log_id),
            entries: vec![entry; entries],
            leader_commit: Some(log_id),
        };
        let payload = encode(&rpc).expect("encodes");
        let message = pb::RaftMessage {
            shard_id: u64::MAX,
            payload,
            to_incarnation: Some(u64::MAX),
        };
        // gRPC's frame: a compression flag and a 4-byte length.
        message.encoded_len() + 5
    }

    #[test]
    fn the_wire_overheads_bound_the_worst_append_entries() {
        for (entries, frame_bytes) in [(0, 0), (1, 0), (1, 1 << 20), (512, 100), (3, 70_000)] {
            let wire = worst_append_entries(entries, frame_bytes);
            let bound =
                entries * (frame_bytes + ENTRY_WIRE_OVERHEAD_BYTES) + MESSAGE_WIRE_OVERHEAD_BYTES;
            assert!(wire <= bound, "{entries} × {frame_bytes}: {wire} > {bound}");
        }
    }

    #[test]
    fn limits_whose_largest_append_does_not_fit_a_message_are_refused() {
        let mut limits = strata_engine::Limits::default();
        assert!(check_limits(&limits).is_ok());
        limits.batch_bytes_max = MESSAGE_BYTES_MAX - MESSAGE_WIRE_OVERHEAD_BYTES;
        let refused = check_limits(&limits).expect_err("too large for a message");
        assert!(refused.to_string().contains("batch_bytes_max"), "{refused}");
        limits.batch_bytes_max = MESSAGE_BYTES_MAX
            - MESSAGE_WIRE_OVERHEAD_BYTES
            - ENTRIES_PER_MESSAGE_MAX as usize * ENTRY_WIRE_OVERHEAD_BYTES;
        assert!(check_limits(&limits).is_ok());
    }
}
