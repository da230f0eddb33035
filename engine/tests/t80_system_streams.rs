//! System streams in the engine: tombstones refuse appends at apply time (also within one
//! group and after reopening), metadata floors apply to reads and as-of reads, and ReadState
//! equals a model over random histories of appends and snapshots.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{event, open_sim, small_config};
use proptest::prelude::*;
use strata_engine::index_store::MemIndexStore;
use strata_engine::sim_fs::SimFs;
use strata_engine::system::{self, SnapshotInfo, SnapshotPolicy, StreamMeta};
use strata_engine::{
    AppendRequest, AppendResult, AsOf, Direction, Error, ExpectedVersion, NewEvent,
};

fn at(stream: &str, events: Vec<NewEvent>, ts: u64) -> AppendRequest {
    AppendRequest::single(stream, ExpectedVersion::Any, events, ts)
}

fn typed(id: u128, event_type: &str, data: Vec<u8>, metadata: Vec<u8>) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::from_u128(id),
        event_type: event_type.into(),
        data: Bytes::from(data),
        metadata: Bytes::from(metadata),
    }
}

/// The hard deletion of `stream`: its tombstone (event id 100) stamped `timestamp_us`.
fn tombstone_of(stream: &str, timestamp_us: u64) -> AppendRequest {
    at(
        &system::deleted_stream(stream),
        vec![typed(100, system::TOMBSTONE_TYPE, vec![], vec![])],
        timestamp_us,
    )
}

fn assert_deleted(answer: &Result<AppendResult, Error>) {
    assert!(
        matches!(answer, Err(Error::StreamDeleted { .. })),
        "{answer:?}"
    );
}

#[test]
fn a_tombstone_refuses_later_appends_in_the_same_group_and_after_reopening() {
    let fs = SimFs::new(1);
    let index = MemIndexStore::new();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let tombstone = tombstone_of("s", 10);
    let answers = store.commit(vec![
        at("s", vec![event(1, "a")], 1),
        tombstone,
        at("s", vec![event(2, "b")], 11),
        at(
            &system::meta_stream("s"),
            vec![typed(
                3,
                system::METADATA_TYPE,
                StreamMeta::default().encode(),
                vec![],
            )],
            12,
        ),
        at("other", vec![event(4, "c")], 13),
    ]);
    assert!(answers[0].is_ok() && answers[1].is_ok() && answers[4].is_ok());
    for refused in [&answers[2], &answers[3]] {
        assert!(
            matches!(refused, Err(Error::StreamDeleted { stream }) if stream == "s"),
            "{refused:?}"
        );
    }
    drop(store);
    index.persist();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let again = store
        .commit(vec![at("s", vec![event(5, "d")], 20)])
        .remove(0);
    assert_deleted(&again);
    let reader = store.reader();
    assert!(matches!(
        reader.read_stream_visible("s", None, Direction::Forwards, 10, None, 30),
        Err(Error::StreamDeleted { .. })
    ));
    // As of before the tombstone, the stream reads as it was.
    let first = answers[0].as_ref().unwrap().position;
    let before = reader
        .read_stream_visible(
            "s",
            None,
            Direction::Forwards,
            10,
            Some(AsOf::Position(first)),
            30,
        )
        .unwrap()
        .events;
    assert_eq!(before.len(), 1);
    // Names starting with '$' must be system streams about a valid stream.
    for bad in ["$x", "$meta:", "$snap:$meta:s"] {
        let r = store
            .commit(vec![at(bad, vec![event(9, "x")], 40)])
            .remove(0);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn metadata_floors_apply_to_reads_as_of_their_time() {
    let fs = SimFs::new(2);
    let index = MemIndexStore::new();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    // Versions 0..10 stamped 1_000, 2_000, …, 10_000 µs.
    for i in 0..10u64 {
        store
            .commit(vec![at(
                "s",
                vec![event(i as u128 + 1, "x")],
                (i + 1) * 1_000,
            )])
            .remove(0)
            .unwrap();
    }
    let meta = StreamMeta {
        max_age_us: Some(3_500),
        max_count: None,
        truncate_before: None,
    };
    store
        .commit(vec![at(
            &system::meta_stream("s"),
            vec![typed(50, system::METADATA_TYPE, meta.encode(), vec![])],
            20_000,
        )])
        .remove(0)
        .unwrap();
    let reader = store.reader().clone();
    let versions = |as_of: Option<AsOf>, now: u64| -> Vec<u64> {
        reader
            .read_stream_visible("s", None, Direction::Forwards, 100, as_of, now)
            .unwrap()
            .events
            .iter()
            .map(|e| e.version)
            .collect()
    };
    // Now = 12_000: events stamped at or after 8_500 are young enough: versions 8 and 9.
    assert_eq!(versions(None, 12_000), [8, 9]);
    // Backwards too, and the floor holds for a backwards read from the top.
    let back: Vec<u64> = reader
        .read_stream_visible("s", None, Direction::Backwards, 100, None, 12_000)
        .unwrap()
        .events
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(back, [9, 8]);
    // As of 25_000 (after the metadata): measured back from 25_000, nothing is young.
    assert_eq!(
        versions(Some(AsOf::Timestamp(25_000)), 0),
        Vec::<u64>::new()
    );
    // As of 15_000 (before the metadata was written): no metadata yet, all ten.
    assert_eq!(versions(Some(AsOf::Timestamp(15_000)), 0).len(), 10);
    let info = reader.stream_info("s", None, 12_000).unwrap();
    assert_eq!(
        (info.head, info.floor, info.meta_version),
        (Some(9), 8, Some(0))
    );
}

/// The model after one record: its position, the stream's head, the snapshots so far.
type Point = (u64, Option<u64>, Vec<(u64, Vec<u8>)>);

/// A history for one stream: appends of 1..3 events, and snapshots of a version then current.
fn ops() -> impl Strategy<Value = Vec<(bool, usize, u64)>> {
    prop::collection::vec((any::<bool>(), 1..3usize, any::<u64>()), 1..50)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn read_state_equals_the_model(ops in ops(), every in 0..6u64, picks in prop::collection::vec(any::<u64>(), 8)) {
        let fs = SimFs::new(3);
        let index = MemIndexStore::new();
        let mut store = open_sim(&fs, &index, small_config()).unwrap();
        let mut id = 0u128;
        let mut ts = 1_000u64;
        let mut next_id = || { id += 1; id };
        if every > 0 {
            let policy = SnapshotPolicy { prefix: "agg".into(), every };
            store.commit(vec![at(system::SETTINGS_STREAM, vec![typed(next_id(), system::POLICY_TYPE, policy.encode(), vec![])], ts)]).remove(0).unwrap();
        }
        // Model: after each record, (position, head version, snapshots so far as (version, data)).
        let mut points: Vec<Point> = Vec::new();
        let mut head: Option<u64> = None;
        let mut snaps: Vec<(u64, Vec<u8>)> = Vec::new();
        for (snapshot, n, pick) in ops {
            ts += 10;
            let position = if snapshot && head.is_some() {
                let h = head.unwrap_or(0);
                let version = pick % (h + 1);
                let data = format!("state-{version}-{pick}").into_bytes();
                let info = SnapshotInfo { version, schema_version: 1 };
                let p = store.commit(vec![at(&system::snapshot_stream("agg-1"), vec![typed(next_id(), system::SNAPSHOT_TYPE, data.clone(), info.encode())], ts)]).remove(0).unwrap().position;
                snaps.push((version, data));
                p
            } else {
                let events = (0..n).map(|_| event(next_id(), "e")).collect();
                let r = store.commit(vec![at("agg-1", events, ts)]).remove(0).unwrap();
                head = Some(r.streams[0].last_version);
                r.position
            };
            points.push((position, head, snaps.clone()));
        }
        let reader = store.reader().clone();
        for pick in picks {
            let (position, head, snaps) = &points[(pick % points.len() as u64) as usize];
            let state = reader.read_state("agg-1", Some(AsOf::Position(*position)), 4096, 0).unwrap();
            prop_assert_eq!(state.version, *head);
            let Some(h) = head else {
                prop_assert!(state.snapshot.is_none() && state.events.is_empty());
                continue;
            };
            // The newest stored snapshot (they all cover versions already written).
            let expected = snaps.last();
            prop_assert_eq!(
                state.snapshot.as_ref().map(|(i, e)| (i.version, e.data.to_vec())),
                expected.cloned()
            );
            let from = expected.map_or(0, |(v, _)| v + 1);
            let versions: Vec<u64> = state.events.iter().map(|e| e.version).collect();
            prop_assert_eq!(versions, (from..=*h).collect::<Vec<_>>());
            prop_assert!(state.complete);
            let since = expected.map_or(h + 1, |(v, _)| h - v);
            prop_assert_eq!(state.snapshot_due, every > 0 && since >= every);
        }
    }
}

#[test]
fn a_tombstone_written_after_a_stream_was_checked_still_refuses_it() {
    // The writer remembers streams the index holds no tombstone for; a tombstone written in a
    // later group must still count.
    let fs = SimFs::new(2);
    let index = MemIndexStore::new();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    assert!(store.commit(vec![at("s", vec![event(1, "a")], 1)])[0].is_ok());
    assert!(store.commit(vec![at("s", vec![event(2, "b")], 2)])[0].is_ok());
    assert!(store.commit(vec![tombstone_of("s", 3)])[0].is_ok());
    let refused = store
        .commit(vec![at("s", vec![event(3, "c")], 4)])
        .remove(0);
    assert_deleted(&refused);
}
