//! What a slot-range move needs from the engine: write fences (`$fences`) refuse appends to
//! the fenced slots' streams, and the streams about them, at the point of the log where they
//! stand, across reopening and until lifted; copies (`AppendRequest::copy`) keep their
//! source's versions, pass fences, deduplicate when retried, and are flagged so `$all`
//! readers can leave them out.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{event, open_sim, small_config};
use strata_engine::fence::{Fence, FenceChange, FENCES_STREAM};
use strata_engine::index_store::MemIndexStore;
use strata_engine::sim_fs::SimFs;
use strata_engine::{AppendRequest, Direction, Error, ExpectedVersion, NewEvent, StreamAppend};

const SLOTS: u32 = 64;

fn fence_event(id: u128, change: FenceChange) -> NewEvent {
    let (event_type, data) = change.encode();
    NewEvent {
        id: uuid::Uuid::from_u128(id),
        event_type: event_type.into(),
        data: Bytes::from(data),
        metadata: Bytes::new(),
    }
}

fn any(stream: &str, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::single(stream, ExpectedVersion::Any, events, 10)
}

/// The fence of `stream`'s slot alone, for shard `to`.
fn fence_of(stream: &str, to: u32) -> (Fence, FenceChange) {
    let slot = strata_slots::slot_of(stream, SLOTS);
    let fence = Fence {
        slots: SLOTS,
        start: slot,
        end: slot + 1,
        to,
    };
    (fence, FenceChange::Set(fence))
}

/// A stream whose slot is not `stream`'s.
fn elsewhere(stream: &str) -> String {
    let slot = strata_slots::slot_of(stream, SLOTS);
    (0..1000)
        .map(|k| format!("other-{k}"))
        .find(|s| strata_slots::slot_of(s, SLOTS) != slot)
        .unwrap()
}

#[test]
fn a_fence_refuses_its_slots_writes_until_lifted_and_survives_reopening() {
    let (fs, index) = (SimFs::new(85), MemIndexStore::default());
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let moving = "order-{7}";
    let other = elsewhere(moving);
    store.commit(vec![any(moving, vec![event(1, "a")])]);
    let (fence, set) = fence_of(moving, 3);
    // A fence and an append after it in the same group: the append is refused.
    let answers = store.commit(vec![
        any(FENCES_STREAM, vec![fence_event(10, set)]),
        any("order-{7}-payments", vec![event(2, "b")]),
        any(&other, vec![event(3, "c")]),
    ]);
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    match &answers[1] {
        Err(Error::Moved { stream, shard: 3 }) => assert_eq!(stream, "order-{7}-payments"),
        a => panic!("{a:?}"),
    }
    assert!(answers[2].is_ok());
    assert_eq!(store.fences().list(), &[fence]);
    drop(store);
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    assert_eq!(
        store.fences().list(),
        &[fence],
        "the fence is read back at open"
    );
    let meta = strata_engine::system::meta_stream(moving);
    let answers = store.commit(vec![
        any(moving, vec![event(4, "d")]),
        any(&meta, vec![event(5, "{}")]),
    ]);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(Error::Moved { shard: 3, .. }))),
        "{answers:?}"
    );
    // A malformed fence is refused and changes nothing.
    let bad = NewEvent {
        event_type: "$fence".into(),
        data: Bytes::from_static(b"slots 64 range 9 9 to 1"),
        ..event(6, "")
    };
    let answer = store.commit(vec![any(FENCES_STREAM, vec![bad])]).remove(0);
    assert!(
        matches!(answer, Err(Error::InvalidArgument { .. })),
        "{answer:?}"
    );
    assert_eq!(store.fences().list(), &[fence]);
    // Lifted: writes go through again.
    let lift = FenceChange::Lift {
        slots: SLOTS,
        start: fence.start,
        end: fence.end,
    };
    let answers = store.commit(vec![
        any(FENCES_STREAM, vec![fence_event(11, lift)]),
        any(moving, vec![event(7, "e")]),
    ]);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    assert!(store.fences().is_empty());
}

#[test]
fn a_fence_truncated_away_is_no_longer_in_force() {
    let (fs, index) = (SimFs::new(85), MemIndexStore::default());
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let at = store
        .commit(vec![any(
            FENCES_STREAM,
            vec![fence_event(1, fence_of("s", 2).1)],
        )])
        .remove(0)
        .unwrap()
        .position;
    assert!(!store.fences().is_empty());
    store.truncate_from(at).unwrap();
    assert!(store.fences().is_empty());
    assert!(store.commit(vec![any("s", vec![event(2, "x")])])[0].is_ok());
}

fn copy(stream: &str, first: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        streams: vec![StreamAppend {
            stream: stream.into(),
            expected: match first {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v - 1),
            },
            events,
        }],
        conditions: Vec::new(),
        timestamp_us: 20,
        copy: true,
    }
}

#[test]
fn copies_keep_versions_pass_fences_deduplicate_and_are_flagged() {
    let (fs, index) = (SimFs::new(85), MemIndexStore::default());
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    // Fenced here (moved away once, say): copies still land.
    store.commit(vec![any(
        FENCES_STREAM,
        vec![fence_event(1, fence_of("s", 4).1)],
    )]);
    // The source had reclaimed versions 0..5: the copy starts at 5.
    let first = store
        .commit(vec![copy("s", 5, vec![event(10, "a"), event(11, "b")])])
        .remove(0)
        .unwrap();
    assert_eq!(
        (
            first.streams[0].first_version,
            first.streams[0].last_version
        ),
        (5, 6)
    );
    let next = store
        .commit(vec![copy("s", 7, vec![event(12, "c")])])
        .remove(0)
        .unwrap();
    assert_eq!(next.streams[0].first_version, 7);
    // Retried (a resumed move scans from the start again): the original answer, no write.
    let again = store
        .commit(vec![copy("s", 5, vec![event(10, "a"), event(11, "b")])])
        .remove(0)
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.position, first.position);
    // Versions reclaimed at the source between two copied ones leave a gap here.
    let gap = store
        .commit(vec![copy("s", 9, vec![event(13, "d")])])
        .remove(0)
        .unwrap();
    assert_eq!(gap.streams[0].first_version, 9);
    // A copy of versions the stream already has here, with other events, is refused.
    let behind = store
        .commit(vec![copy("s", 6, vec![event(14, "x")])])
        .remove(0);
    assert!(
        matches!(
            behind,
            Err(Error::WrongExpectedVersion {
                actual: Some(9),
                ..
            })
        ),
        "{behind:?}"
    );
    let read = store
        .reader()
        .read_stream("s", None, Direction::Forwards, 10)
        .unwrap();
    let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![5, 6, 7, 9]);
    let all = store.reader().read_all(0, 100).unwrap();
    let flags: Vec<bool> = all.records.iter().map(|r| r.copy).collect();
    assert_eq!(
        flags,
        vec![false, true, true, true],
        "the fence is not a copy, the copies are"
    );
    // A copy's record is flagged on disk: read back after reopening.
    drop(store);
    let store = open_sim(&fs, &index, small_config()).unwrap();
    let all = store.reader().read_all(0, 100).unwrap();
    assert!(all.records[1].copy && all.records[2].copy);
}

/// A copy tried again with more events (a move's second try, its steps merged differently)
/// writes only the events not here yet; an id here at another version is a conflict. A
/// client's retry of one of the source appends a copy record merged is answered as the
/// original was.
#[test]
fn copies_skip_what_is_here_and_merged_copies_still_answer_retries() {
    let (fs, index) = (SimFs::new(86), MemIndexStore::default());
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    // Two source appends of s (versions 0 and 1) copied as one record.
    let merged = store
        .commit(vec![copy("s", 0, vec![event(1, "a"), event(2, "b")])])
        .remove(0)
        .unwrap();
    // Tried again with a third event: only it is written, at version 2.
    let more = store
        .commit(vec![copy(
            "s",
            0,
            vec![event(1, "a"), event(2, "b"), event(3, "c")],
        )])
        .remove(0)
        .unwrap();
    assert_eq!(
        (more.streams[0].first_version, more.streams[0].last_version),
        (2, 2)
    );
    let all = store
        .commit(vec![copy("s", 1, vec![event(2, "b")])])
        .remove(0)
        .unwrap();
    assert!(all.deduplicated && all.streams.is_empty());
    let clash = store
        .commit(vec![copy("s", 5, vec![event(1, "a")])])
        .remove(0);
    assert!(
        matches!(clash, Err(Error::IdempotencyConflict { .. })),
        "{clash:?}"
    );
    // The client's retry of its second append (event 2 alone) after the move.
    let retry = store
        .commit(vec![AppendRequest::single(
            "s",
            ExpectedVersion::Any,
            vec![event(2, "b")],
            30,
        )])
        .remove(0)
        .unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.position, merged.position);
    assert_eq!(
        (
            retry.streams[0].first_version,
            retry.streams[0].last_version
        ),
        (1, 1)
    );
    let read = store
        .reader()
        .read_stream("s", None, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}
