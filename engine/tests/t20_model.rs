//! Model-based test: random appends (fresh, retried, mutated retries, groups), reads,
//! truncations and crash-and-reopen points (unsynced writes dropped or torn, failed fsyncs,
//! a full disk) on the fault-injecting file system, checked against a plain in-memory model.
//! Every acknowledged append survives; an unacknowledged one is all there or not at all;
//! reads equal the model. More cases: PROPTEST_CASES=2000 cargo test --test t20_model.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{open_sim, open_sim_rounds};
use proptest::prelude::*;
use strata_engine::config::{SEGMENT_FOOTER_BYTES, SEGMENT_HEADER_BYTES};
use strata_engine::fs::{FileSystem, OpenMode};
use strata_engine::index_store::MemIndexStore;
use strata_engine::segment::parse_segment_file_name;
use strata_engine::sim_fs::{CrashMode, SimFs};
use strata_engine::{
    AppendRequest, AppendResult, Direction, EngineConfig, Error, ExpectedVersion, NewEvent,
    Position, Store, StreamAppend,
};
use uuid::Uuid;

const STREAMS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    Exists,
    Current,
    Wrong(u64),
}

#[derive(Debug, Clone)]
enum Mutation {
    Exact,
    ChangeData,
    AddNew,
    DropLast,
    OtherStream,
}

#[derive(Debug, Clone)]
struct AppendOp {
    streams: Vec<(usize, Expect, Vec<u16>)>,
    retry: Option<(usize, Mutation)>,
}

#[derive(Debug, Clone)]
enum Op {
    Group(Vec<AppendOp>),
    FailingSync(AppendOp),
    DiskFull(AppendOp),
    Truncate(usize),
    Crash {
        tear: bool,
        lose_index: bool,
        wipe_index: bool,
    },
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        3 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::Exists),
        3 => Just(Expect::Current),
        1 => (0u64..3).prop_map(Expect::Wrong),
    ]
}

fn append_strategy() -> impl Strategy<Value = AppendOp> {
    let part = (
        0..STREAMS.len(),
        expect_strategy(),
        prop::collection::vec(0u16..400, 1..4),
    );
    let mutation = prop_oneof![
        4 => Just(Mutation::Exact),
        1 => Just(Mutation::ChangeData),
        1 => Just(Mutation::AddNew),
        1 => Just(Mutation::DropLast),
        1 => Just(Mutation::OtherStream),
    ];
    (
        prop::collection::vec(part, 1..3),
        prop::option::weighted(0.3, (any::<usize>(), mutation)),
    )
        .prop_map(|(mut streams, retry)| {
            streams.sort_by_key(|p| p.0);
            streams.dedup_by_key(|p| p.0);
            AppendOp { streams, retry }
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => prop::collection::vec(append_strategy(), 1..4).prop_map(Op::Group),
        1 => append_strategy().prop_map(Op::FailingSync),
        1 => append_strategy().prop_map(Op::DiskFull),
        1 => any::<usize>().prop_map(Op::Truncate),
        2 => (any::<bool>(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(tear, lose_index, wipe_index)| Op::Crash { tear, lose_index, wipe_index }),
    ]
}

/// A committed record as the model knows it.
#[derive(Debug, Clone)]
struct ModelRecord {
    position: Position,
    parts: Vec<(String, u64, Vec<NewEvent>)>,
}

#[derive(Debug, Default)]
struct Model {
    records: Vec<ModelRecord>,
}

impl Model {
    fn streams(&self) -> HashMap<String, Vec<NewEvent>> {
        let mut out: HashMap<String, Vec<NewEvent>> = HashMap::new();
        for r in &self.records {
            for (s, _, events) in &r.parts {
                out.entry(s.clone())
                    .or_default()
                    .extend(events.iter().cloned());
            }
        }
        out
    }

    fn find_id(&self, id: Uuid) -> Option<(usize, String, u64)> {
        for (i, r) in self.records.iter().enumerate() {
            for (s, first, events) in &r.parts {
                if let Some(k) = events.iter().position(|e| e.id == id) {
                    return Some((i, s.clone(), first + k as u64));
                }
            }
        }
        None
    }

    /// What the store must answer, without the position of a new record.
    fn decide(&self, request: &AppendRequest) -> Decision {
        let ids: Vec<&NewEvent> = request
            .streams
            .iter()
            .flat_map(|p| p.events.iter())
            .collect();
        let found: Vec<_> = ids.iter().map(|e| self.find_id(e.id)).collect();
        if found.iter().any(Option::is_some) {
            if found.iter().any(Option::is_none) {
                return Decision::Conflict;
            }
            let record = found[0].as_ref().map(|f| f.0);
            let Some(record) = record else {
                return Decision::Conflict;
            };
            let r = &self.records[record];
            // Exactly the committed parts' events, in order, with the same content.
            for part in &request.streams {
                match r.parts.iter().find(|(s, _, _)| *s == part.stream) {
                    Some((_, _, events)) if *events == part.events => {}
                    _ => return Decision::Conflict,
                }
            }
            let result = request.streams.iter().map(|p| {
                let (_, first, events) = r.parts.iter().find(|(s, _, _)| *s == p.stream).unwrap();
                (p.stream.clone(), *first, first + events.len() as u64 - 1)
            });
            return Decision::Duplicate(r.position, result.collect());
        }
        let streams = self.streams();
        let mut firsts = Vec::new();
        for part in &request.streams {
            let current = streams.get(&part.stream).map(|e| e.len() as u64 - 1);
            let ok = match part.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => current.is_none(),
                ExpectedVersion::StreamExists => current.is_some(),
                ExpectedVersion::Exact(v) => current == Some(v),
            };
            if !ok {
                return Decision::WrongVersion(current);
            }
            firsts.push(current.map_or(0, |v| v + 1));
        }
        Decision::Write(firsts)
    }

    fn apply(&mut self, request: &AppendRequest, firsts: &[u64], position: Position) {
        let parts = request
            .streams
            .iter()
            .zip(firsts)
            .map(|(p, f)| (p.stream.clone(), *f, p.events.clone()))
            .collect();
        self.records.push(ModelRecord { position, parts });
    }
}

/// A short description of a request (payloads left out).
fn describe(request: &AppendRequest) -> String {
    let parts: Vec<String> = request
        .streams
        .iter()
        .map(|p| {
            format!(
                "{} {:?} ids {:?}",
                p.stream,
                p.expected,
                p.events.iter().map(|e| e.id.as_u128()).collect::<Vec<_>>()
            )
        })
        .collect();
    parts.join("; ")
}

#[derive(Debug, PartialEq)]
enum Decision {
    Duplicate(Position, Vec<(String, u64, u64)>),
    Write(Vec<u64>),
    WrongVersion(Option<u64>),
    Conflict,
}

fn open(
    rounds: bool,
    fs: &SimFs,
    index: &MemIndexStore,
    config: EngineConfig,
) -> strata_engine::Result<Store> {
    if rounds {
        open_sim_rounds(fs, index, config)
    } else {
        open_sim(fs, index, config)
    }
}

struct Harness {
    fs: SimFs,
    index: MemIndexStore,
    store: Option<Store>,
    model: Model,
    issued: Vec<AppendRequest>,
    next_id: u128,
    config: EngineConfig,
    /// Whether the store syncs through a sync round (odd seeds).
    rounds: bool,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let fs = SimFs::new(seed);
        let index = MemIndexStore::new();
        let mut config = EngineConfig {
            segment_bytes_max: 8 << 10,
            group_bytes_max: 4 << 10,
            read_chunk_bytes: 4096,
            ..EngineConfig::default()
        };
        config.limits.batch_bytes_max = 4 << 10;
        config.limits.event_bytes_max = 2 << 10;
        let rounds = seed % 2 == 1;
        let store = open(rounds, &fs, &index, config.clone()).unwrap();
        Harness {
            rounds,
            fs,
            index,
            store: Some(store),
            model: Model::default(),
            issued: Vec::new(),
            next_id: 1,
            config,
        }
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("store is open")
    }

    fn build(&mut self, op: &AppendOp) -> AppendRequest {
        if let Some((pick, mutation)) = &op.retry {
            if !self.issued.is_empty() {
                let mut r = self.issued[pick % self.issued.len()].clone();
                match mutation {
                    Mutation::Exact => {}
                    Mutation::ChangeData => {
                        r.streams[0].events[0].data = Bytes::from_static(b"changed")
                    }
                    Mutation::AddNew => {
                        let id = self.fresh_id();
                        r.streams[0].events.push(NewEvent {
                            id,
                            event_type: "T".into(),
                            data: Bytes::new(),
                            metadata: Bytes::new(),
                        });
                    }
                    Mutation::DropLast => {
                        if r.streams[0].events.len() > 1 {
                            r.streams[0].events.pop();
                        } else if r.streams.len() > 1 {
                            r.streams.pop();
                        }
                    }
                    Mutation::OtherStream => {
                        let other = STREAMS
                            .iter()
                            .find(|s| !r.streams.iter().any(|p| p.stream == **s))
                            .unwrap();
                        r.streams[0].stream = other.to_string();
                    }
                }
                return r;
            }
        }
        let streams = self.model.streams();
        let mut parts = Vec::new();
        for (s, expect, sizes) in &op.streams {
            let stream = STREAMS[*s].to_string();
            let current = streams.get(&stream).map(|e| e.len() as u64 - 1);
            let expected = match expect {
                Expect::Any => ExpectedVersion::Any,
                Expect::NoStream => ExpectedVersion::NoStream,
                Expect::Exists => ExpectedVersion::StreamExists,
                Expect::Current => {
                    current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                }
                Expect::Wrong(d) => ExpectedVersion::Exact(current.map_or(*d, |c| c + 1 + d)),
            };
            let events = sizes
                .iter()
                .map(|size| {
                    let id = self.fresh_id();
                    NewEvent {
                        id,
                        event_type: format!("T{}", size % 3),
                        data: Bytes::from(vec![(*size % 251) as u8; *size as usize]),
                        metadata: Bytes::from(size.to_le_bytes().to_vec()),
                    }
                })
                .collect();
            parts.push(StreamAppend {
                stream,
                expected,
                events,
            });
        }
        AppendRequest {
            copy: false,
            streams: parts,
            conditions: Vec::new(),
            timestamp_us: self.next_id as u64,
        }
    }

    fn fresh_id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    /// Commits a group and checks every answer against the model, in order.
    fn group(&mut self, ops: &[AppendOp]) {
        let requests: Vec<AppendRequest> = ops.iter().map(|op| self.build(op)).collect();
        self.issued.extend(requests.iter().cloned());
        let answers = self.store().commit(requests.clone());
        for (request, answer) in requests.iter().zip(answers) {
            self.check_answer(request, answer);
        }
    }

    fn check_answer(
        &mut self,
        request: &AppendRequest,
        answer: strata_engine::Result<AppendResult>,
    ) {
        match (self.model.decide(request), answer) {
            (Decision::Write(firsts), Ok(r)) => {
                assert!(!r.deduplicated, "{request:?} was new");
                let got: Vec<u64> = r.streams.iter().map(|s| s.first_version).collect();
                assert_eq!(got, firsts);
                assert!(self
                    .model
                    .records
                    .last()
                    .is_none_or(|last| last.position < r.position));
                self.model.apply(request, &firsts, r.position);
            }
            (Decision::Duplicate(position, versions), Ok(r)) => {
                assert!(r.deduplicated);
                assert_eq!(r.position, position);
                let got: Vec<_> = r
                    .streams
                    .iter()
                    .map(|s| (s.stream.clone(), s.first_version, s.last_version))
                    .collect();
                assert_eq!(got, versions);
            }
            (
                Decision::WrongVersion(actual),
                Err(Error::WrongExpectedVersion { actual: got, .. }),
            ) => assert_eq!(got, actual),
            (Decision::Conflict, Err(Error::IdempotencyConflict { .. })) => {}
            (decision, answer) => panic!(
                "model says {decision:?}, store answered {answer:?} for {}",
                describe(request)
            ),
        }
    }

    /// An append whose write cannot complete: the answer is an error if it needed a write.
    fn faulty(&mut self, op: &AppendOp, sync_fails: bool) {
        let request = self.build(op);
        self.issued.push(request.clone());
        if sync_fails {
            self.fs.fail_next_syncs(1);
        } else {
            // A full disk fails only writes that need space: cut the zeros preallocated past
            // the tail's records so this one does.
            self.cut_preallocated();
            self.fs.set_space_limit(Some(self.fs.used_bytes()));
        }
        let answer = self.store().commit(vec![request.clone()]).remove(0);
        self.fs.fail_next_syncs(0);
        self.fs.set_space_limit(None);
        match (self.model.decide(&request), answer) {
            (Decision::Write(firsts), Err(e)) => {
                assert!(
                    matches!(e, Error::Poisoned(_) | Error::NoSpace { .. }),
                    "unexpected error {e}"
                );
                // Unacknowledged: after a crash it must be all there or not at all.
                self.crash_and_reopen(true, false, false);
                let present = request.streams[0]
                    .events
                    .iter()
                    .map(|e| self.store().reader().event_by_id(e.id).unwrap().is_some())
                    .collect::<Vec<_>>();
                if present[0] {
                    let end_before = self.model.records.last().map_or(0, |r| r.position);
                    let position = self
                        .store()
                        .reader()
                        .event_by_id(request.streams[0].events[0].id)
                        .unwrap()
                        .unwrap()
                        .position;
                    assert!(position > end_before);
                    self.model.apply(&request, &firsts, position);
                }
                self.check_all();
            }
            (Decision::Write(_), Ok(r)) => {
                panic!("an append acknowledged despite the injected fault: {r:?}")
            }
            (_, answer) => self.check_answer(&request, answer),
        }
        if self.store().commit(Vec::new()).is_empty() && self.is_poisoned() {
            self.crash_and_reopen(false, false, false);
        }
    }

    /// Cuts the tail segment file back to its records (the writer preallocates zeros past them).
    fn cut_preallocated(&mut self) {
        let end = self.store().next_position();
        let tail = self
            .fs
            .files()
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                Some((parse_segment_file_name(&name)?, p))
            })
            .max_by_key(|(base, _)| *base);
        let Some((base, path)) = tail else { return };
        if self.fs.file_len(&path).unwrap() > end - base {
            let file = FileSystem::open(&self.fs, &path, OpenMode::ReadWrite).unwrap();
            file.set_len(end - base).unwrap();
        }
    }

    fn is_poisoned(&mut self) -> bool {
        let probe = AppendRequest::single(
            "a",
            ExpectedVersion::Exact(u64::MAX),
            vec![NewEvent {
                id: Uuid::from_u128(u128::MAX),
                event_type: "P".into(),
                data: Bytes::new(),
                metadata: Bytes::new(),
            }],
            0,
        );
        matches!(
            self.store().commit(vec![probe]).remove(0),
            Err(Error::Poisoned(_))
        )
    }

    fn truncate(&mut self, pick: usize) {
        if self.model.records.is_empty() {
            return;
        }
        let k = pick % self.model.records.len();
        let position = self.model.records[k].position;
        self.store().truncate_from(position).unwrap();
        self.model.records.truncate(k);
        // The log ends at `position`, or, when that record opened a segment, at the end of
        // the previous one's records (the truncation undid the roll).
        let end = self.store().reader().end();
        let unrolled = SEGMENT_FOOTER_BYTES + SEGMENT_HEADER_BYTES;
        assert!(
            end == position || end + unrolled == position,
            "truncated at {position}, log ends at {end}"
        );
    }

    fn crash_and_reopen(&mut self, tear: bool, lose_index: bool, wipe_index: bool) {
        // A crash runs no destructor: nothing gets flushed on the way down.
        std::mem::forget(self.store.take());
        self.fs.crash(if tear {
            CrashMode::TearUnsynced
        } else {
            CrashMode::DropUnsynced
        });
        if wipe_index {
            self.index.wipe();
        } else if lose_index {
            self.index.crash();
        } else {
            self.index.persist();
        }
        self.store = Some(open(self.rounds, &self.fs, &self.index, self.config.clone()).unwrap());
    }

    fn check_all(&mut self) {
        let streams = self.model.streams();
        let reader = self.store().reader().clone();
        for name in STREAMS {
            let got = reader
                .read_stream(name, None, Direction::Forwards, 4096)
                .unwrap();
            let want = streams.get(name).cloned().unwrap_or_default();
            assert_eq!(got.len(), want.len(), "stream {name}");
            for (v, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    (g.version, g.id, &g.data, &g.metadata, &g.event_type),
                    (v as u64, w.id, &w.data, &w.metadata, &w.event_type)
                );
            }
            let back = reader
                .read_stream(name, None, Direction::Backwards, 2)
                .unwrap();
            assert_eq!(
                back.iter().map(|e| e.id).collect::<Vec<_>>(),
                want.iter().rev().take(2).map(|e| e.id).collect::<Vec<_>>()
            );
            assert_eq!(
                reader.stream_version(name).unwrap(),
                want.len().checked_sub(1).map(|v| v as u64)
            );
        }
        let mut positions = Vec::new();
        let mut from = 0;
        loop {
            let batch = reader.read_all(from, 3).unwrap_or_else(|e| {
                panic!(
                    "read_all({from}) failed: {e}; end {}; model {:?}",
                    reader.end(),
                    self.model
                        .records
                        .iter()
                        .map(|r| r.position)
                        .collect::<Vec<_>>()
                )
            });
            if batch.records.is_empty() {
                break;
            }
            positions.extend(batch.records.iter().map(|r| r.position));
            from = batch.next;
        }
        assert_eq!(
            positions,
            self.model
                .records
                .iter()
                .map(|r| r.position)
                .collect::<Vec<_>>()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_through_crashes(seed in any::<u64>(), ops in prop::collection::vec(op_strategy(), 1..60)) {
        let mut h = Harness::new(seed);
        for op in &ops {
            match op {
                Op::Group(appends) => h.group(appends),
                Op::FailingSync(append) => h.faulty(append, true),
                Op::DiskFull(append) => h.faulty(append, false),
                Op::Truncate(pick) => h.truncate(*pick),
                Op::Crash { tear, lose_index, wipe_index } => h.crash_and_reopen(*tear, *lose_index, *wipe_index),
            }
            h.check_all();
        }
        h.crash_and_reopen(true, true, false);
        h.check_all();
    }
}
