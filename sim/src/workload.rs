//! What simulated clients do, and the history they leave: appends with expected versions
//! (retried with the same event ids after timeouts and leader changes, so a retry is
//! idempotent), linearizable reads, follower reads, as-of reads and subscriptions. Every
//! operation goes through a node's `strata.v1.Streams` service in process (the node's real
//! request path: conversion, limits, read barriers, the subscription loop), and reads its
//! answer as a gRPC client would (status codes and metadata).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_engine::ExpectedVersion;
use strata_proto::metadata::{ACTUAL_VERSION_KEY, ERROR_KIND_KEY, LEADER_ID_KEY};
use strata_proto::v1 as pb;
use strata_proto::v1::streams_server::Streams;
use strata_raft::types::NodeId;
use strata_shard::router::Router;
use strata_shard::service::StreamsService;
use strata_shard::subscription::EventStream;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::cluster::{lock, Cluster};

/// Streams the workload writes.
pub const STREAMS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
/// How long one append may keep retrying before the client gives up (its outcome unknown).
pub const APPEND_PATIENCE: Duration = Duration::from_secs(8);
/// Events one read asks for (the service's most); a read pages on until the stream's end.
const READ_PAGE: u32 = 4096;

/// What an operation observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended; the first event's version.
    Appended(u64),
    /// Refused: the stream's actual last version.
    Conflict(Option<u64>),
    /// No answer before the client gave up: it may or may not have happened.
    Unknown,
    /// A read's event ids.
    Read(Vec<String>),
}

/// What an operation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Append `ids` to `stream` if its last version is `expected` (`None`: any).
    Append {
        /// Stream.
        stream: String,
        /// Expected last version: `None` any, `Some(None)` no stream, `Some(Some(v))`.
        expected: Option<Option<u64>>,
        /// Event ids.
        ids: Vec<String>,
    },
    /// Read the whole stream; `node`: a follower read there (no barrier), else linearizable.
    Read {
        /// Stream.
        stream: String,
        /// The node a follower read went to.
        follower: Option<NodeId>,
    },
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client.
    pub client: u64,
    /// What it asked.
    pub input: Input,
    /// What it saw.
    pub outcome: Outcome,
    /// History event index of the call.
    pub call: usize,
    /// History event index of the answer (`None`: unknown outcome).
    pub ret: Option<usize>,
}

#[derive(Default)]
struct HistoryState {
    events: usize,
    ops: Vec<Op>,
    open: BTreeMap<usize, (u64, Input)>,
}

/// Everything clients did; cheap to clone.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<HistoryState>>);

impl History {
    pub(crate) fn invoke(&self, client: u64, input: Input) -> usize {
        let mut h = lock(&self.0);
        let call = h.events;
        h.events += 1;
        h.open.insert(call, (client, input));
        call
    }

    pub(crate) fn complete(&self, call: usize, outcome: Outcome) {
        let mut h = lock(&self.0);
        let ret = (outcome != Outcome::Unknown).then_some(h.events);
        h.events += 1;
        if let Some((client, input)) = h.open.remove(&call) {
            h.ops.push(Op {
                client,
                input,
                outcome,
                call,
                ret,
            });
        }
    }

    /// Drops an operation that certainly had no effect (a failed read).
    pub(crate) fn abandon(&self, call: usize) {
        lock(&self.0).open.remove(&call);
    }

    /// The operations, with any still open closed as unknown.
    pub fn ops(&self) -> Vec<Op> {
        let mut h = lock(&self.0);
        let open: Vec<(usize, (u64, Input))> = std::mem::take(&mut h.open).into_iter().collect();
        let mut ops = h.ops.clone();
        for (call, (client, input)) in open {
            ops.push(Op {
                client,
                input,
                outcome: Outcome::Unknown,
                call,
                ret: None,
            });
        }
        ops.sort_by_key(|o| o.call);
        ops
    }
}

/// One delivered event: (stream, version, event id).
pub type Delivered = (String, u64, String);

/// A read of a stream as of the position of an acknowledged append: (stream, position, event
/// ids returned, node). It must equal the final log's prefix of that stream up to there,
/// whichever node answered and whatever happened in between.
pub type AsOfRead = (String, u64, Vec<String>, NodeId);

/// The as-of reads clients made; cheap to clone.
#[derive(Clone, Default)]
pub struct AsOfReads(Arc<Mutex<Vec<AsOfRead>>>);

impl AsOfReads {
    /// All of them.
    pub fn all(&self) -> Vec<AsOfRead> {
        lock(&self.0).clone()
    }
}

/// What a subscriber received, in order of delivery.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Delivered>>>);

impl Received {
    /// Deliveries so far.
    pub fn all(&self) -> Vec<Delivered> {
        lock(&self.0).clone()
    }
}

fn event_id(cluster: &Cluster) -> Uuid {
    let rng = cluster.rng();
    Uuid::from_u64_pair(rng.next_u64(), rng.next_u64())
}

fn pick_node(cluster: &Cluster, guess: Option<NodeId>) -> Option<NodeId> {
    let up = cluster.up_ids();
    match guess {
        Some(g) if up.contains(&g) => Some(g),
        _ => cluster.rng().pick(&up),
    }
}

/// A run's clients and subscribers (see [`start`]).
pub struct Clients {
    /// What the clients did.
    pub history: History,
    /// Their reads as of positions.
    pub as_of_reads: AsOfReads,
    /// The clients' and subscribers' tasks (a run adds its own).
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each subscriber's name and what it received.
    pub subscribers: Vec<(String, Received)>,
    /// When the subscribers stop (the run moves it once recovered).
    pub subscribers_until: tokio::sync::watch::Sender<Instant>,
}

/// Starts three clients on `streams` until `until`, and a subscriber to each of the first two
/// streams until `subscribed_until` (or when the run says).
pub fn start(
    cluster: &Cluster,
    streams: &'static [&'static str],
    until: Instant,
    subscribed_until: Instant,
) -> Clients {
    let history = History::default();
    let as_of_reads = AsOfReads::default();
    let mut tasks = Vec::new();
    for c in 0..3 {
        tasks.push(tokio::spawn(client(
            cluster.clone(),
            history.clone(),
            as_of_reads.clone(),
            (c, streams),
            until,
        )));
    }
    let mut subscribers = Vec::new();
    let (subscribers_until, watched) = tokio::sync::watch::channel(subscribed_until);
    for (i, stream) in streams.iter().take(2).enumerate() {
        let received = Received::default();
        subscribers.push((format!("s{i}-{stream}"), received.clone()));
        tasks.push(tokio::spawn(subscriber(
            cluster.clone(),
            stream.to_string(),
            received,
            watched.clone(),
        )));
    }
    Clients {
        history,
        as_of_reads,
        tasks,
        subscribers,
        subscribers_until,
    }
}

/// One client: random operations on `streams` until `until` (on a sharded run no as-of
/// reads by position: a stream's positions change when it moves to another shard).
pub async fn client(
    cluster: Cluster,
    history: History,
    as_of_reads: AsOfReads,
    (client, streams): (u64, &'static [&'static str]),
    until: Instant,
) {
    let sharded = cluster.shards() > 1;
    let mut leader: Option<NodeId> = None;
    let mut known: BTreeMap<String, Option<u64>> = BTreeMap::new();
    // Positions of this client's acknowledged appends.
    let mut acked: Vec<(String, u64)> = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(0, 40)).await;
        let stream = cluster.rng().pick(streams).unwrap_or("acct-a").to_string();
        let roll = cluster.rng().below(100);
        if roll < 60 {
            let position =
                append(&cluster, &history, client, &stream, &mut leader, &mut known).await;
            acked.extend(position.map(|p| (stream, p)));
        } else if roll < 80 {
            linearizable_read(&cluster, &history, client, &stream, &mut leader).await;
        } else if roll < 92 {
            follower_read(&cluster, &history, client, &stream).await;
        } else if sharded {
            continue;
        } else if let Some((stream, position)) = cluster.rng().pick(&acked) {
            as_of_read(&cluster, &as_of_reads, &stream, position).await;
        }
    }
}

/// The stream retention is allowed to reclaim from: it has max-count metadata, is written by
/// [`reclaimable_writer`] (outside the checked history) and checked on its own after the run.
pub const RECLAIMABLE: &str = "r";
/// Events of [`RECLAIMABLE`] readers keep.
pub const RECLAIMABLE_KEEP: u64 = 4;

/// What a node's error answer means to a client.
enum Refusal {
    /// The expected version did not hold: the stream's actual last version.
    Conflict(Option<u64>),
    /// Not the leader; the leader's id when the node knows it.
    NotLeader(Option<NodeId>),
    /// Anything else (unavailable, a storage error, a deadline): the status, for the trace.
    Other(String),
}

/// Reads an error answer as a gRPC client does: by its `strata-error` kind and metadata.
fn refusal(status: &Status) -> Refusal {
    let md = |key: &str| strata_proto::metadata::text(status, key);
    match md(ERROR_KIND_KEY).as_deref() {
        Some("wrong-expected-version") => {
            Refusal::Conflict(md(ACTUAL_VERSION_KEY).and_then(|v| v.parse().ok()))
        }
        Some("not-leader") => Refusal::NotLeader(md(LEADER_ID_KEY).and_then(|v| v.parse().ok())),
        _ => Refusal::Other(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// A node's client API as a simulated client calls it: one shard's service, or a sharded
/// node's router (which sends each call to its stream's shard).
#[derive(Clone)]
pub(crate) enum Api {
    One(Box<StreamsService>),
    Routed(Box<Router>),
}

impl Api {
    async fn append(&self, r: Request<pb::AppendRequest>) -> Answer<pb::AppendResponse> {
        match self {
            Api::One(s) => s.append(r).await,
            Api::Routed(s) => s.append(r).await,
        }
    }

    async fn read(&self, r: Request<pb::ReadRequest>) -> Answer<pb::ReadResponse> {
        match self {
            Api::One(s) => s.read(r).await,
            Api::Routed(s) => s.read(r).await,
        }
    }

    async fn set_stream_metadata(
        &self,
        r: Request<pb::SetStreamMetadataRequest>,
    ) -> Answer<pb::WriteResponse> {
        match self {
            Api::One(s) => s.set_stream_metadata(r).await,
            Api::Routed(s) => s.set_stream_metadata(r).await,
        }
    }

    async fn subscribe(&self, r: Request<pb::SubscribeRequest>) -> Answer<EventStream> {
        match self {
            Api::One(s) => s.subscribe(r).await,
            Api::Routed(s) => s.subscribe(r).await,
        }
    }
}

type Answer<T> = Result<tonic::Response<T>, Status>;

/// A running node's client API, chosen as [`pick_node`] does, with its (first shard's)
/// replica.
fn pick_service(
    cluster: &Cluster,
    guess: Option<NodeId>,
) -> Option<(NodeId, Api, Arc<strata_raft::Replica>)> {
    let node = pick_node(cluster, guess)?;
    let (service, replica) = cluster.streams(node)?;
    let api = match cluster.sharded(node) {
        Some(s) => Api::Routed(Box::new(s.router)),
        None => Api::One(Box::new(service)),
    };
    Some((node, api, replica))
}

fn wire_expected(expected: ExpectedVersion) -> Option<pb::ExpectedVersion> {
    use pb::expected_version::Kind;
    let kind = match expected {
        ExpectedVersion::Any => Kind::Any(pb::Empty {}),
        ExpectedVersion::NoStream => Kind::NoStream(pb::Empty {}),
        ExpectedVersion::StreamExists => Kind::StreamExists(pb::Empty {}),
        ExpectedVersion::Exact(v) => Kind::Exact(v),
    };
    Some(pb::ExpectedVersion { kind: Some(kind) })
}

fn wire_event(id: Uuid, event_type: &str, data: Vec<u8>) -> pb::NewEvent {
    pb::NewEvent {
        id: id.to_string(),
        r#type: event_type.to_string(),
        data: data.into(),
        metadata: Default::default(),
    }
}

/// Gives [`RECLAIMABLE`] its metadata (`SetStreamMetadata`), then appends to it until `until`
/// (results ignored: the stream is only checked for being the same on every replica and for
/// its floor).
pub async fn reclaimable_writer(cluster: Cluster, until: Instant) {
    let mut placed = false;
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(5, 30)).await;
        let Some((_, service, _)) = pick_service(&cluster, None) else {
            continue;
        };
        let done = if placed {
            let event = wire_event(event_id(&cluster), "filler", vec![b'x'; 600]);
            let request = pb::AppendRequest {
                stream: RECLAIMABLE.to_string(),
                expected: None,
                events: vec![event],
            };
            let call = service.append(Request::new(request));
            tokio::time::timeout(APPEND_PATIENCE, call)
                .await
                .is_ok_and(|r| r.is_ok())
        } else {
            let request = pb::SetStreamMetadataRequest {
                stream: RECLAIMABLE.to_string(),
                metadata: Some(pb::StreamMetadata {
                    max_count: Some(RECLAIMABLE_KEEP),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let call = service.set_stream_metadata(Request::new(request));
            tokio::time::timeout(APPEND_PATIENCE, call)
                .await
                .is_ok_and(|r| r.is_ok())
        };
        placed |= done;
    }
}

/// Reads `stream` as of `position` on a random running node (which may lag: then it refuses).
async fn as_of_read(cluster: &Cluster, reads: &AsOfReads, stream: &str, position: u64) {
    let Some((node, service, _)) = pick_service(cluster, None) else {
        return;
    };
    let as_of = pb::AsOf {
        point: Some(pb::as_of::Point::Position(position)),
    };
    let read = read_ids(&service, stream, pb::Consistency::Follower, Some(as_of)).await;
    if let Ok(ids) = read {
        lock(&reads.0).push((stream.to_string(), position, ids, node));
    }
}

/// One append, retried with the same event ids until answered or given up on; returns the
/// record's position when acknowledged.
async fn append(
    cluster: &Cluster,
    history: &History,
    client: u64,
    stream: &str,
    leader: &mut Option<NodeId>,
    known: &mut BTreeMap<String, Option<u64>>,
) -> Option<u64> {
    let rng = cluster.rng();
    let ids: Vec<Uuid> = (0..1 + rng.below(3)).map(|_| event_id(cluster)).collect();
    let expected = match rng.below(3) {
        0 => ExpectedVersion::Any,
        _ => match known.get(stream) {
            Some(Some(v)) => ExpectedVersion::Exact(*v),
            Some(None) | None => ExpectedVersion::NoStream,
        },
    };
    let model_expected = match expected {
        ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
        ExpectedVersion::NoStream => Some(None),
        ExpectedVersion::Exact(v) => Some(Some(v)),
    };
    let request = pb::AppendRequest {
        stream: stream.to_string(),
        expected: wire_expected(expected),
        events: ids
            .iter()
            .map(|id| wire_event(*id, "deposited", format!("{{\"client\":{client}}}").into()))
            .collect(),
    };
    let call = history.invoke(
        client,
        Input::Append {
            stream: stream.to_string(),
            expected: model_expected,
            ids: ids.iter().map(Uuid::to_string).collect(),
        },
    );
    let trace = cluster.trace();
    let give_up = Instant::now() + APPEND_PATIENCE;
    let mut attempt = 0;
    let mut position = None;
    let outcome = loop {
        let now = Instant::now();
        if now >= give_up {
            break Outcome::Unknown;
        }
        attempt += 1;
        let Some((node, service, _)) = pick_service(cluster, *leader) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = service.append(Request::new(request.clone()));
        match tokio::time::timeout(give_up - now, answer).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let Some(s) = r.streams.first() else {
                    break Outcome::Unknown;
                };
                known.insert(stream.to_string(), Some(s.last_version));
                *leader = Some(node);
                position = Some(r.position);
                break Outcome::Appended(s.first_version);
            }
            Ok(Err(status)) => match refusal(&status) {
                Refusal::Conflict(actual) => {
                    known.insert(stream.to_string(), actual);
                    *leader = Some(node);
                    break Outcome::Conflict(actual);
                }
                Refusal::NotLeader(hint) => {
                    *leader = hint;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Refusal::Other(e) => {
                    trace.log(format!(
                        "client {client}: append attempt {attempt} on n{node}: {e}"
                    ));
                    *leader = None;
                    tokio::time::sleep(cluster.rng().millis(20, 200)).await;
                }
            },
            Err(_) => {}
        }
    };
    trace.log(format!(
        "client {client}: append {stream} {expected} x{} -> {outcome:?}",
        ids.len()
    ));
    history.complete(call, outcome);
    position
}

/// The ids of `stream`'s events through `Read`, page after page to the stream's end.
async fn read_ids(
    service: &Api,
    stream: &str,
    consistency: pb::Consistency,
    as_of: Option<pb::AsOf>,
) -> Result<Vec<String>, Status> {
    let mut ids = Vec::new();
    let mut from = None;
    loop {
        let request = pb::ReadRequest {
            stream: stream.to_string(),
            from_version: from,
            direction: pb::Direction::Forwards as i32,
            limit: READ_PAGE,
            consistency: consistency as i32,
            as_of,
        };
        let page = service.read(Request::new(request)).await?.into_inner();
        let full = page.truncated || page.events.len() == READ_PAGE as usize;
        from = page.events.last().map(|e| e.version + 1);
        ids.extend(page.events.into_iter().map(|e| e.id));
        if !full || from.is_none() {
            return Ok(ids);
        }
    }
}

async fn linearizable_read(
    cluster: &Cluster,
    history: &History,
    client: u64,
    stream: &str,
    leader: &mut Option<NodeId>,
) {
    let Some((node, service, _)) = pick_service(cluster, *leader) else {
        return;
    };
    let call = history.invoke(
        client,
        Input::Read {
            stream: stream.to_string(),
            follower: None,
        },
    );
    match read_ids(&service, stream, pb::Consistency::Linearizable, None).await {
        Ok(ids) => {
            cluster.trace().log(format!(
                "client {client}: read {stream} on n{node} -> {} events",
                ids.len()
            ));
            history.complete(call, Outcome::Read(ids));
        }
        Err(status) => {
            *leader = match refusal(&status) {
                Refusal::NotLeader(hint) => hint,
                _ => None,
            };
            history.abandon(call);
        }
    }
}

async fn follower_read(cluster: &Cluster, history: &History, client: u64, stream: &str) {
    let Some((node, service, _)) = pick_service(cluster, None) else {
        return;
    };
    let call = history.invoke(
        client,
        Input::Read {
            stream: stream.to_string(),
            follower: Some(node),
        },
    );
    match read_ids(&service, stream, pb::Consistency::Follower, None).await {
        Ok(ids) => history.complete(call, Outcome::Read(ids)),
        Err(_) => history.abandon(call),
    }
}

/// A subscriber to `stream` from version 0, through a node's `Subscribe`: follows it on some
/// running node, and when that node goes down (its service ends the subscription), resubscribes
/// elsewhere from the next version it needs; stops at `until` (which the run may move).
pub async fn subscriber(
    cluster: Cluster,
    stream: String,
    received: Received,
    until: tokio::sync::watch::Receiver<Instant>,
) {
    let mut next_version = 0u64;
    let until = || *until.borrow();
    while Instant::now() < until() {
        let Some((node, service, replica)) = pick_service(&cluster, None) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let request = pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Stream(stream.clone())),
            start: Some(pb::subscribe_request::Start::FromVersion(next_version)),
            filter: None,
        };
        let mut events = match service.subscribe(Request::new(request)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                cluster.trace().log(format!(
                    "subscriber {stream}: refused on n{node}: {}",
                    status.message()
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        cluster.trace().log(format!(
            "subscriber {stream}: on n{node} from version {next_version}"
        ));
        let mut ended = false;
        loop {
            if Instant::now() >= until() {
                break;
            }
            // Stop following a node that went down (or was restarted: a new incarnation).
            let same = cluster
                .replica(node)
                .is_some_and(|r| Arc::ptr_eq(&r, &replica));
            if !same {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                Ok(Some(Ok(response))) => {
                    if let Some(pb::subscribe_response::Item::Event(e)) = response.item {
                        next_version = e.version + 1;
                        lock(&received.0).push((e.stream, e.version, e.id));
                    }
                }
                Ok(Some(Err(status))) => {
                    cluster.trace().log(format!(
                        "subscriber {stream}: ended on n{node}: {}",
                        status.message()
                    ));
                    ended = true;
                    break;
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => {}
            }
        }
        drop(events);
        if ended {
            // The subscription ended (a corrupt log here answers DataLoss): try again later,
            // maybe elsewhere. Retrying at once would spin without letting simulated time move
            // (seeds 53007249, 53008880 with crashes,disk).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
