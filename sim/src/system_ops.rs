//! A client of the system-stream operations, through a node's `Streams` service under the
//! run's faults: hard deletes of streams it wrote (`DeleteStream`, a tombstone decided with its
//! write) and appends after them, client snapshots (`SaveSnapshot`) and the state reads that
//! use them (`ReadState`). What it was told is checked against the final log after the run:
//!
//! - a stream whose delete was acknowledged has its tombstone in the log, and no event of the
//!   stream lies after any tombstone of it (an append after the delete is refused, whoever
//!   leads);
//! - every acknowledged append to a doomed stream that has no tombstone is in the log (a
//!   deleted stream's events may be reclaimed by retention);
//! - a `ReadState` answer is the final log: its snapshot covers a version at most the state's,
//!   holds the id of the event at that version (what this client stored there), and its events
//!   are the final log's, contiguous from the snapshot on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::v1 as pb;
use strata_proto::v1::streams_server::Streams;
use strata_shard::service::StreamsService;
use tokio::time::Instant;
use tonic::Request;
use uuid::Uuid;

use crate::check::{EventPlaces, Violation};
use crate::cluster::{lock, Cluster};

/// Streams the client writes and then hard-deletes: `doomed-0`, `doomed-1`, …
pub const DOOMED_PREFIX: &str = "doomed-";
/// The stream the client snapshots and reads state of.
pub const SNAPPED: &str = "snapped";
/// How long one operation may wait for its answer.
const PATIENCE: Duration = Duration::from_secs(6);

/// One `ReadState` answer, as the client read it.
#[derive(Debug, Clone)]
pub struct StateRead {
    /// The snapshot's version and data (the id of the event it was taken at).
    pub snapshot: Option<(u64, String)>,
    /// The stream's last version at the point (`None`: no stream).
    pub version: Option<u64>,
    /// The events after the snapshot: (version, id).
    pub events: Vec<(u64, String)>,
    /// Whether the events reach `version`.
    pub complete: bool,
}

/// What the client was told.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Streams whose hard delete was acknowledged.
    pub deleted: Vec<String>,
    /// Acknowledged appends to doomed streams: (stream, event id).
    pub appended: Vec<(String, String)>,
    /// `ReadState` answers.
    pub states: Vec<StateRead>,
}

/// The client's observations; cheap to clone.
#[derive(Clone, Default)]
pub struct Observations(Arc<Mutex<Observed>>);

impl Observations {
    /// Everything so far.
    pub fn all(&self) -> Observed {
        lock(&self.0).clone()
    }
}

fn service(cluster: &Cluster) -> Option<(u64, StreamsService)> {
    let node = cluster.rng().pick(&cluster.up_ids())?;
    Some((node, cluster.streams(node)?.0))
}

fn new_event(cluster: &Cluster, data: Vec<u8>) -> (String, pb::NewEvent) {
    let id = Uuid::from_u64_pair(cluster.rng().next_u64(), cluster.rng().next_u64()).to_string();
    let event = pb::NewEvent {
        id: id.clone(),
        r#type: "noted".into(),
        data: data.into(),
        metadata: Default::default(),
    };
    (id, event)
}

/// Appends one event to `stream` on some node; its id when acknowledged.
async fn append_one(cluster: &Cluster, service: &StreamsService, stream: &str) -> Option<String> {
    let (id, event) = new_event(cluster, b"{}".to_vec());
    let request = pb::AppendRequest {
        stream: stream.to_string(),
        expected: None,
        events: vec![event],
    };
    let answer = tokio::time::timeout(PATIENCE, service.append(Request::new(request))).await;
    matches!(answer, Ok(Ok(_))).then_some(id)
}

/// Runs until `until`: writes doomed streams and deletes them, snapshots [`SNAPPED`] and reads
/// its state.
pub async fn client(cluster: Cluster, observed: Observations, until: Instant) {
    let mut doomed = 0u64;
    let mut doomed_writes = 0u64;
    // Acknowledged appends to SNAPPED, by version.
    let mut snapped: BTreeMap<u64, String> = BTreeMap::new();
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(10, 80)).await;
        let Some((node, service)) = service(&cluster) else {
            continue;
        };
        let stream = format!("{DOOMED_PREFIX}{doomed}");
        match cluster.rng().below(10) {
            0..=2 => {
                if let Some(id) = append_one(&cluster, &service, &stream).await {
                    doomed_writes += 1;
                    lock(&observed.0).appended.push((stream, id));
                }
            }
            3 if doomed_writes > 0 => {
                let request = pb::DeleteStreamRequest {
                    stream: stream.clone(),
                    hard: true,
                    expected: None,
                };
                let call = service.delete_stream(Request::new(request));
                let answer = tokio::time::timeout(PATIENCE, call).await;
                let acked = matches!(answer, Ok(Ok(_)));
                cluster.trace().log(format!(
                    "system client: hard delete {stream} on n{node} -> {}",
                    if acked { "ok" } else { "unknown" }
                ));
                if acked {
                    lock(&observed.0).deleted.push(stream.clone());
                    // An append after an acknowledged delete must be refused.
                    let _ = append_one(&cluster, &service, &stream).await;
                }
                doomed += 1;
                doomed_writes = 0;
            }
            4..=6 => append_snapped(&cluster, &service, &mut snapped).await,
            7 => save_snapshot(&cluster, &service, &snapped).await,
            _ => read_state(&service, &observed).await,
        }
    }
}

async fn append_snapped(
    cluster: &Cluster,
    service: &StreamsService,
    snapped: &mut BTreeMap<u64, String>,
) {
    let (id, event) = new_event(cluster, b"{}".to_vec());
    let request = pb::AppendRequest {
        stream: SNAPPED.to_string(),
        expected: None,
        events: vec![event],
    };
    let call = service.append(Request::new(request));
    if let Ok(Ok(r)) = tokio::time::timeout(PATIENCE, call).await {
        if let Some(s) = r.into_inner().streams.first() {
            snapped.insert(s.first_version, id);
        }
    }
}

/// Stores a snapshot of [`SNAPPED`] at an acknowledged version; its data is that event's id.
async fn save_snapshot(
    cluster: &Cluster,
    service: &StreamsService,
    snapped: &BTreeMap<u64, String>,
) {
    let versions: Vec<u64> = snapped.keys().copied().collect();
    let Some(version) = cluster.rng().pick(&versions) else {
        return;
    };
    let Some(id) = snapped.get(&version) else {
        return;
    };
    let request = pb::SaveSnapshotRequest {
        stream: SNAPPED.to_string(),
        version,
        schema_version: 1,
        data: id.clone().into_bytes().into(),
    };
    let _ = tokio::time::timeout(PATIENCE, service.save_snapshot(Request::new(request))).await;
}

async fn read_state(service: &StreamsService, observed: &Observations) {
    let request = pb::ReadStateRequest {
        stream: SNAPPED.to_string(),
        as_of: None,
        limit: 0,
        consistency: pb::Consistency::Linearizable as i32,
    };
    let call = service.read_state(Request::new(request));
    let Ok(Ok(answer)) = tokio::time::timeout(PATIENCE, call).await else {
        return;
    };
    let r = answer.into_inner();
    let read = StateRead {
        snapshot: r
            .snapshot
            .map(|s| (s.version, String::from_utf8_lossy(&s.data).into_owned())),
        version: r.exists.then_some(r.version),
        events: r.events.into_iter().map(|e| (e.version, e.id)).collect(),
        complete: r.complete,
    };
    lock(&observed.0).states.push(read);
}

/// Checks what the client was told against the final log: `places` (every event's stream and
/// position) and `snapped` ([`SNAPPED`]'s final events: (version, id) in order).
pub fn check(
    observed: &Observed,
    places: &EventPlaces,
    snapped: &[(u64, String)],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut v = |property, detail| out.push(Violation { property, detail });
    // The newest tombstone position of each deleted stream, and each stream's last event.
    let mut tombstones: BTreeMap<&str, u64> = BTreeMap::new();
    let mut last_event: BTreeMap<&str, u64> = BTreeMap::new();
    for (stream, position, _) in places.values() {
        match stream.strip_prefix("$deleted:") {
            Some(base) => {
                let t = tombstones.entry(base).or_insert(*position);
                *t = (*t).min(*position);
            }
            None => {
                let e = last_event.entry(stream.as_str()).or_insert(*position);
                *e = (*e).max(*position);
            }
        }
    }
    for stream in &observed.deleted {
        if !tombstones.contains_key(stream.as_str()) {
            v(
                "acknowledged deletes hold",
                format!("{stream}: no tombstone in the log"),
            );
        }
    }
    for (stream, tombstone) in &tombstones {
        if let Some(last) = last_event.get(stream).filter(|last| *last > tombstone) {
            v(
                "nothing is appended after a hard delete",
                format!("{stream}: an event at {last}, after its tombstone at {tombstone}"),
            );
        }
    }
    // A deleted stream's events are dead once the as-of window passes: retention may have
    // reclaimed them. The others must all be there.
    for (stream, id) in &observed.appended {
        if tombstones.contains_key(stream.as_str()) {
            continue;
        }
        if places.get(id).is_none_or(|(s, _, _)| s != stream) {
            v(
                "acknowledged appends hold",
                format!("{stream}: event {id} is not in the log"),
            );
        }
    }
    let final_id: BTreeMap<u64, &str> = snapped.iter().map(|(v, id)| (*v, id.as_str())).collect();
    for (i, state) in observed.states.iter().enumerate() {
        if let Some(problem) = state_problem(state, &final_id) {
            v(
                "ReadState is the log",
                format!("read {i}: {problem} ({state:?})"),
            );
        }
    }
    out
}

/// What is wrong with one `ReadState` answer, judged by the final log's events by version.
fn state_problem(state: &StateRead, final_id: &BTreeMap<u64, &str>) -> Option<String> {
    let version = state.version?;
    let start = match &state.snapshot {
        Some((at, data)) => {
            if *at > version {
                return Some(format!(
                    "snapshot at {at} past the state's version {version}"
                ));
            }
            if final_id.get(at) != Some(&data.as_str()) {
                return Some(format!(
                    "snapshot at {at} holds {data}, the log has another event"
                ));
            }
            at + 1
        }
        None => 0,
    };
    for (i, (v, id)) in state.events.iter().enumerate() {
        if *v != start + i as u64 {
            return Some(format!(
                "event {i} has version {v}, expected {}",
                start + i as u64
            ));
        }
        if final_id.get(v) != Some(&id.as_str()) {
            return Some(format!(
                "version {v} is {id} here, another event in the log"
            ));
        }
    }
    let reached = state
        .events
        .last()
        .map_or(start.checked_sub(1), |(v, _)| Some(*v));
    if state.complete && reached != Some(version) && start <= version {
        return Some(format!(
            "complete, but the events reach {reached:?}, not {version}"
        ));
    }
    None
}
