//! Retention on a real file system: dead events' bytes become holes (disk usage goes down),
//! a prefix of dead segments is dropped, live events and positions stay exactly as they were,
//! the as-of window is honoured, and the log reopens (also with its index rebuilt) and
//! verifies clean.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{event, segment_files};
use strata_engine::clock::ManualClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::MemIndexStore;
use strata_engine::retention::RetentionConfig;
use strata_engine::system::{self, StreamMeta};
use strata_engine::{
    AppendRequest, AsOf, Direction, EngineConfig, Error, ExpectedVersion, NewEvent, Store,
};

fn config() -> EngineConfig {
    let mut config = EngineConfig {
        segment_bytes_max: 256 << 10,
        ..EngineConfig::default()
    };
    config.limits.batch_bytes_max = 64 << 10;
    config.limits.event_bytes_max = 32 << 10;
    config.group_bytes_max = 64 << 10;
    config
}

fn open(dir: &Path, index: &MemIndexStore) -> Store {
    Store::open(
        Arc::new(StdFs),
        dir,
        Box::new(index.clone()),
        config(),
        Arc::new(ManualClock::default()),
    )
    .unwrap()
}

/// Bytes the log's files occupy on disk (allocated blocks, so holes do not count).
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// Writes `stream`'s metadata (event id `id`, stamped `ts`).
fn set_meta(store: &mut Store, stream: &str, meta: StreamMeta, id: u128, ts: u64) {
    store
        .commit(vec![AppendRequest::single(
            system::meta_stream(stream),
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: system::METADATA_TYPE.into(),
                data: Bytes::from(meta.encode()),
                ..event(id, "")
            }],
            ts,
        )])
        .remove(0)
        .unwrap();
}

fn big(id: u128) -> NewEvent {
    NewEvent {
        data: Bytes::from(vec![b'x'; 4000]),
        ..event(id, "")
    }
}

fn versions(store: &Store, stream: &str) -> Vec<u64> {
    store
        .reader()
        .read_stream_visible(stream, None, Direction::Forwards, 4096, None, u64::MAX / 2)
        .unwrap()
        .events
        .iter()
        .map(|e| e.version)
        .collect()
}

fn all_events(store: &Store) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = store.reader().read_all(from, 4096).unwrap();
        out.extend(
            batch
                .records
                .iter()
                .flat_map(|r| r.events.iter())
                .map(|e| (e.stream.clone(), e.version, e.position)),
        );
        if batch.records.is_empty() {
            return out;
        }
        from = batch.next;
    }
}

#[test]
fn retention_reclaims_dead_events_and_keeps_everything_else_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let index = MemIndexStore::new();
    let mut store = open(dir, &index);
    // 600 events of 4 KB in "old" (about ten segments), then "keep" and more "old".
    let clock = std::cell::Cell::new((0u128, 1_000_000u64));
    let next = |store: &mut Store, stream: &str| {
        let (id, ts) = clock.get();
        clock.set((id + 1, ts + 1_000));
        store
            .commit(vec![AppendRequest::single(
                stream,
                ExpectedVersion::Any,
                vec![big(id + 1)],
                ts + 1_000,
            )])
            .remove(0)
            .unwrap()
    };
    for _ in 0..600 {
        next(&mut store, "old");
    }
    let mut keep_positions = Vec::new();
    for _ in 0..50 {
        keep_positions.push(next(&mut store, "keep").position);
        next(&mut store, "old");
    }
    let meta = StreamMeta {
        truncate_before: Some(640),
        ..StreamMeta::default()
    };
    let meta_at = clock.get().1 + 1_000;
    set_meta(&mut store, "old", meta, 999_999, meta_at);
    // Roll so every record so far is in a sealed segment.
    for _ in 0..70 {
        next(&mut store, "tail");
    }
    let before_all = all_events(&store);
    let before_disk = disk_bytes(dir);
    let before_files = segment_files(dir);
    let retention = store.retention();
    let window = 10_000_000;
    let settings = RetentionConfig {
        as_of_window_us: window,
        rewrite_dead_fraction: 0.5,
        bytes_per_sec: u64::MAX,
    };

    // Inside the window of the metadata change nothing is reclaimed: an as-of read there must
    // still see the old events.
    let early = retention
        .pass(&settings, meta_at + window / 2, u64::MAX, &mut |_| {})
        .unwrap();
    assert_eq!(early.segments_rewritten, 0, "{early:?}");

    let now = meta_at + window + 1;
    let mut paced = 0u64;
    let report = retention
        .pass(&settings, now, u64::MAX, &mut |n| paced += n)
        .unwrap();
    assert!(report.segments_rewritten >= 8, "{report:?}");
    assert!(paced > 0);
    assert_eq!(report.horizon_us, now - window);
    let dropped = store.drop_reclaimed(u64::MAX).unwrap();
    assert!(dropped >= 5, "dropped {dropped}");
    assert_eq!(segment_files(dir), before_files - dropped);
    let after_disk = disk_bytes(dir);
    assert!(
        after_disk * 2 < before_disk,
        "disk {before_disk} -> {after_disk} bytes"
    );
    // $all: every event is still there at its position unless it was reclaimed, and only
    // dead events were (events past their floor but not yet reclaimed stay in $all: metadata
    // applies to stream reads).
    let reader = store.reader().clone();
    let reclaimed: Vec<_> = before_all
        .iter()
        .filter(|(_, _, p)| reader.is_reclaimed(*p))
        .cloned()
        .collect();
    assert!(reclaimed.iter().all(|(s, v, _)| s == "old" && *v < 640));
    assert!(reclaimed.len() >= 550, "{} reclaimed", reclaimed.len());
    let expected: Vec<_> = before_all
        .iter()
        .filter(|e| !reclaimed.contains(e))
        .cloned()
        .collect();
    assert_eq!(all_events(&store), expected);
    assert_eq!(versions(&store, "old"), (640..650).collect::<Vec<_>>());
    assert_eq!(versions(&store, "keep"), (0..50).collect::<Vec<_>>());
    // As of a live record's position and as of a time inside the window: exact.
    let inside = Some(AsOf::Timestamp(now - window + 5));
    let as_of = reader
        .read_stream_as_of("keep", None, Direction::Forwards, 100, inside)
        .unwrap();
    assert_eq!(as_of.len(), 50);
    let old_then = reader
        .read_stream_visible("old", None, Direction::Forwards, 100, inside, 0)
        .unwrap()
        .events;
    assert_eq!(old_then.len(), 10);
    // A position older than the horizon is refused too.
    let err = reader
        .read_stream_as_of(
            "keep",
            None,
            Direction::Forwards,
            100,
            Some(AsOf::Position(keep_positions[9])),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    // Before the horizon: refused, not answered short.
    let err = reader
        .read_all_as_of(0, 10, Some(AsOf::Timestamp(now - window - 1)))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    // Lowering truncate_before cannot bring reclaimed events back, and reads do not fail.
    set_meta(&mut store, "old", StreamMeta::default(), 999_998, now);
    let visible = versions(&store, "old");
    assert!(
        visible.len() >= 10 && visible.len() < 650,
        "{}",
        visible.len()
    );
    // Reading $all from a dropped position continues at the first retained record.
    let from_zero = reader.read_all(1, 1).unwrap();
    assert_eq!(from_zero.records.len(), 1);
    drop(store);

    // Reopen on the same index, then with the index rebuilt from the log alone.
    let store = open(dir, &index);
    assert_eq!(versions(&store, "keep"), (0..50).collect::<Vec<_>>());
    drop(store);
    let fresh = MemIndexStore::new();
    let mut store = open(dir, &fresh);
    assert_eq!(versions(&store, "keep"), (0..50).collect::<Vec<_>>());
    // The rebuilt index knows the horizon (from the holes) and reads as of a time inside the
    // window still find the stream's versions, though the reclaimed ones have no entries now.
    let rebuilt = store.reader().clone();
    assert!(rebuilt
        .read_all_as_of(0, 10, Some(AsOf::Timestamp(now - window - 1)))
        .is_err());
    let old_then = rebuilt
        .read_stream_visible("old", None, Direction::Forwards, 100, inside, 0)
        .unwrap()
        .events;
    assert_eq!(old_then.len(), 10);
    let appended = store
        .commit(vec![AppendRequest::single(
            "old",
            ExpectedVersion::Exact(649),
            vec![event(5_000_000, "")],
            now + 5,
        )])
        .remove(0)
        .unwrap();
    assert_eq!(
        appended.streams[0].first_version, 650,
        "versions continue after a rebuild"
    );
    drop(store);
    let report = strata_engine::verify::verify(&StdFs, dir, &config(), |_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_pass_leaves_segments_past_its_bound_and_tombstoned_streams_go_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let index = MemIndexStore::new();
    let mut store = open(dir, &index);
    let mut positions = Vec::new();
    for i in 0..400u128 {
        let r = store
            .commit(vec![AppendRequest::single(
                "gone",
                ExpectedVersion::Any,
                vec![big(i + 1)],
                1_000 + i as u64,
            )])
            .remove(0)
            .unwrap();
        positions.push(r.position);
    }
    store
        .commit(vec![AppendRequest::single(
            system::deleted_stream("gone"),
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_type: system::TOMBSTONE_TYPE.into(),
                ..event(10_000, "")
            }],
            5_000,
        )])
        .remove(0)
        .unwrap();
    for i in 0..70u128 {
        store
            .commit(vec![AppendRequest::single(
                "tail",
                ExpectedVersion::Any,
                vec![big(20_000 + i)],
                6_000,
            )])
            .remove(0)
            .unwrap();
    }
    let retention = store.retention();
    let settings = RetentionConfig {
        as_of_window_us: 1_000,
        ..RetentionConfig::default()
    };
    // Bound at the 200th event: only segments ending before it are touched.
    let bound = positions[200];
    let report = retention
        .pass(&settings, 1_000_000, bound, &mut |_| {})
        .unwrap();
    assert!(report.segments_rewritten > 0);
    let reader = store.reader().clone();
    assert!(reader.is_reclaimed(positions[0]));
    assert!(!reader.is_reclaimed(positions[250]));
    let report = retention
        .pass(&settings, 1_000_000, u64::MAX, &mut |_| {})
        .unwrap();
    assert!(report.segments_rewritten > 0);
    // The tombstoned stream's events are reclaimed (where their segment was dead enough),
    // except its last.
    let gone = positions[..399]
        .iter()
        .filter(|p| reader.is_reclaimed(**p))
        .count();
    assert!(gone >= 350, "{gone} of 399 reclaimed");
    assert!(!reader.is_reclaimed(positions[399]));
    // A second pass finds nothing new.
    let again = retention
        .pass(&settings, 1_000_001, u64::MAX, &mut |_| {})
        .unwrap();
    assert_eq!(again.segments_rewritten, 0, "{again:?}");
}
