//! What simulated clients do, and the history they leave: appends with expected versions
//! (retried with the same event ids after timeouts and leader changes, so a retry is
//! idempotent), linearizable reads (leader barrier, then read), follower reads (no barrier),
//! and subscriptions through the shard layer's real subscription loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_engine::{AppendRequest, AsOf, Direction, Error, ExpectedVersion, NewEvent};
use strata_proto::v1 as pb;
use strata_raft::types::NodeId;
use strata_raft::ReplicaError;
use strata_shard::subscription::{self, Delivery, ReaderSource, Subscription};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cluster::{lock, Cluster};

/// Streams the workload writes.
pub const STREAMS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
/// How long one append may keep retrying before the client gives up (its outcome unknown).
pub const APPEND_PATIENCE: Duration = Duration::from_secs(8);
/// Most events a stream read returns (more than a run writes).
const READ_LIMIT: usize = 10_000;

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
    fn invoke(&self, client: u64, input: Input) -> usize {
        let mut h = lock(&self.0);
        let call = h.events;
        h.events += 1;
        h.open.insert(call, (client, input));
        call
    }

    fn complete(&self, call: usize, outcome: Outcome) {
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
    fn abandon(&self, call: usize) {
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

/// One client: random operations until `until`.
pub async fn client(
    cluster: Cluster,
    history: History,
    as_of_reads: AsOfReads,
    client: u64,
    until: Instant,
) {
    let mut leader: Option<NodeId> = None;
    let mut known: BTreeMap<String, Option<u64>> = BTreeMap::new();
    // Positions of this client's acknowledged appends.
    let mut acked: Vec<(String, u64)> = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(0, 40)).await;
        let stream = cluster.rng().pick(&STREAMS).unwrap_or("acct-a").to_string();
        let roll = cluster.rng().below(100);
        if roll < 60 {
            let position =
                append(&cluster, &history, client, &stream, &mut leader, &mut known).await;
            acked.extend(position.map(|p| (stream, p)));
        } else if roll < 80 {
            linearizable_read(&cluster, &history, client, &stream, &mut leader).await;
        } else if roll < 92 {
            follower_read(&cluster, &history, client, &stream).await;
        } else if let Some((stream, position)) = cluster.rng().pick(&acked) {
            as_of_read(&cluster, &as_of_reads, &stream, position);
        }
    }
}

/// A node's simulated wall clock, for the shard code that asks for "now".
struct NodeClock {
    cluster: Cluster,
    node: NodeId,
}

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeClock(n{})", self.node)
    }
}

impl strata_shard::clock::WallClock for NodeClock {
    fn now_us(&self) -> u64 {
        self.cluster.wall_clock_us(self.node)
    }
}

/// The stream retention is allowed to reclaim from: it has max-count metadata, is written by
/// [`reclaimable_writer`] (outside the checked history) and checked on its own after the run.
pub const RECLAIMABLE: &str = "r";
/// Events of [`RECLAIMABLE`] readers keep.
pub const RECLAIMABLE_KEEP: u64 = 4;

/// Gives [`RECLAIMABLE`] its metadata, then appends to it until `until` (results ignored: the
/// stream is only checked for being the same on every replica and for its floor).
pub async fn reclaimable_writer(cluster: Cluster, until: Instant) {
    let meta = strata_engine::system::StreamMeta {
        max_count: Some(RECLAIMABLE_KEEP),
        ..Default::default()
    };
    let mut placed = false;
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(5, 30)).await;
        let Some(node) = pick_node(&cluster, None) else {
            continue;
        };
        let Some(replica) = cluster.replica(node) else {
            continue;
        };
        let (stream, event) = if placed {
            (
                RECLAIMABLE.to_string(),
                NewEvent {
                    id: event_id(&cluster),
                    event_type: "filler".into(),
                    data: Bytes::from(vec![b'x'; 600]),
                    metadata: Bytes::new(),
                },
            )
        } else {
            (
                strata_engine::system::meta_stream(RECLAIMABLE),
                NewEvent {
                    id: event_id(&cluster),
                    event_type: strata_engine::system::METADATA_TYPE.into(),
                    data: Bytes::from(meta.encode()),
                    metadata: Bytes::new(),
                },
            )
        };
        let request = AppendRequest::single(
            stream,
            ExpectedVersion::Any,
            vec![event],
            cluster.wall_clock_us(node),
        );
        if let Ok(Ok(_)) = tokio::time::timeout(APPEND_PATIENCE, replica.append(request)).await {
            placed = true;
        }
    }
}

/// Reads `stream` as of `position` on a random running node (which may lag: then it refuses).
fn as_of_read(cluster: &Cluster, reads: &AsOfReads, stream: &str, position: u64) {
    let Some(node) = pick_node(cluster, None) else {
        return;
    };
    let Some(replica) = cluster.replica(node) else {
        return;
    };
    let read = replica.shard().reader().read_stream_as_of(
        stream,
        None,
        Direction::Forwards,
        READ_LIMIT,
        Some(AsOf::Position(position)),
    );
    if let Ok(events) = read {
        let ids = events.iter().map(|e| e.id.to_string()).collect();
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
    let events: Vec<NewEvent> = ids
        .iter()
        .map(|id| NewEvent {
            id: *id,
            event_type: "deposited".into(),
            data: Bytes::from(format!("{{\"client\":{client}}}")),
            metadata: Bytes::new(),
        })
        .collect();
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
        let Some(node) = pick_node(cluster, *leader) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(replica) = cluster.replica(node) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let request = AppendRequest::single(
            stream,
            expected,
            events.clone(),
            cluster.wall_clock_us(node),
        );
        match tokio::time::timeout(give_up - now, replica.append(request)).await {
            Ok(Ok(r)) => {
                let Some(s) = r.streams.first() else {
                    break Outcome::Unknown;
                };
                known.insert(stream.to_string(), Some(s.last_version));
                *leader = Some(node);
                position = Some(r.position);
                break Outcome::Appended(s.first_version);
            }
            Ok(Err(ReplicaError::Engine(Error::WrongExpectedVersion { actual, .. }))) => {
                known.insert(stream.to_string(), actual);
                *leader = Some(node);
                break Outcome::Conflict(actual);
            }
            Ok(Err(ReplicaError::NotLeader { leader: hint })) => {
                *leader = hint.map(|(id, _)| id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(e)) => {
                trace.log(format!(
                    "client {client}: append attempt {attempt} on n{node}: {e}"
                ));
                *leader = None;
                tokio::time::sleep(cluster.rng().millis(20, 200)).await;
            }
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

fn read_ids(cluster: &Cluster, node: NodeId, stream: &str) -> Option<Vec<String>> {
    let replica = cluster.replica(node)?;
    let events = replica
        .shard()
        .reader()
        .read_stream(stream, None, Direction::Forwards, READ_LIMIT)
        .ok()?;
    Some(events.iter().map(|e| e.id.to_string()).collect())
}

async fn linearizable_read(
    cluster: &Cluster,
    history: &History,
    client: u64,
    stream: &str,
    leader: &mut Option<NodeId>,
) {
    let Some(node) = pick_node(cluster, *leader) else {
        return;
    };
    let Some(replica) = cluster.replica(node) else {
        return;
    };
    let call = history.invoke(
        client,
        Input::Read {
            stream: stream.to_string(),
            follower: None,
        },
    );
    match replica.linearizable_barrier().await {
        Ok(()) => match read_ids(cluster, node, stream) {
            Some(ids) => {
                cluster.trace().log(format!(
                    "client {client}: read {stream} on n{node} -> {} events",
                    ids.len()
                ));
                history.complete(call, Outcome::Read(ids));
            }
            None => history.abandon(call),
        },
        Err(ReplicaError::NotLeader { leader: hint }) => {
            *leader = hint.map(|(id, _)| id);
            history.abandon(call);
        }
        Err(_) => {
            *leader = None;
            history.abandon(call);
        }
    }
}

async fn follower_read(cluster: &Cluster, history: &History, client: u64, stream: &str) {
    let Some(node) = pick_node(cluster, None) else {
        return;
    };
    let call = history.invoke(
        client,
        Input::Read {
            stream: stream.to_string(),
            follower: Some(node),
        },
    );
    match read_ids(cluster, node, stream) {
        Some(ids) => history.complete(call, Outcome::Read(ids)),
        None => history.abandon(call),
    }
}

/// A subscriber to `stream` from version 0: follows it on some running node, and when that
/// node goes down, resubscribes elsewhere from the next version it needs; stops at `until`
/// (which the run may move).
pub async fn subscriber(
    cluster: Cluster,
    stream: String,
    received: Received,
    until: tokio::sync::watch::Receiver<Instant>,
) {
    let mut next_version = 0u64;
    let until = || *until.borrow();
    while Instant::now() < until() {
        let Some(node) = pick_node(&cluster, None) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(replica) = cluster.replica(node) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shard = replica.shard().clone();
        let reader = shard.reader();
        let request = pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Stream(stream.clone())),
            start: Some(pb::subscribe_request::Start::FromVersion(next_version)),
            filter: None,
        };
        let Ok(sub) = Subscription::from_request(&reader, request) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let fresh_shard = shard.clone();
        let last: subscription::FinalStatus = Arc::default();
        let delivery = Delivery {
            tx,
            last: last.clone(),
            stop,
            stall_timeout: Duration::from_secs(30),
            source: Some(ReaderSource {
                generation: shard.watch_generation(),
                fresh: Arc::new(move || fresh_shard.reader()),
            }),
            pin: None,
            clock: Arc::new(NodeClock {
                cluster: cluster.clone(),
                node,
            }),
        };
        let task = tokio::spawn(subscription::run(reader, sub, delivery));
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
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(unit)) => {
                    for item in unit {
                        let Ok(response) = item else { continue };
                        if let Some(pb::subscribe_response::Item::Event(e)) = response.item {
                            next_version = e.version + 1;
                            lock(&received.0).push((e.stream, e.version, e.id));
                        }
                    }
                }
                Ok(None) => {
                    let why = lock(&last).as_ref().map(|s| s.message().to_string());
                    cluster.trace().log(format!(
                        "subscriber {stream}: ended on n{node}: {}",
                        why.unwrap_or_default()
                    ));
                    ended = true;
                    break;
                }
                Err(_) => {}
            }
        }
        let _ = stop_tx.send(true);
        drop(rx);
        task.abort();
        if ended {
            // The subscription ended (a corrupt log here answers DataLoss): try again later,
            // maybe elsewhere. Retrying at once would spin without letting simulated time move
            // (seeds 53007249, 53008880 with crashes,disk).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
