//! Appends and reads on the real engine (files + RocksDB): stream semantics, idempotency,
//! segment rolls and reopen.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{append, event, small_config};
use strata_engine::{AppendRequest, Direction, Engine, Error, ExpectedVersion, StreamAppend};

/// The append that opens stream "acct" with events 1 and 2 (retried by the idempotency tests).
fn acct_opening() -> AppendRequest {
    append(
        "acct",
        ExpectedVersion::NoStream,
        vec![event(1, "a"), event(2, "b")],
    )
}

#[test]
fn append_read_reopen_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let mut positions = Vec::new();
    for i in 0..200u128 {
        let stream = format!("s-{}", i % 7);
        let r = engine
            .append_blocking(append(
                &stream,
                ExpectedVersion::Any,
                vec![event(i + 1, &format!("payload-{i}-{}", "x".repeat(200)))],
            ))
            .unwrap();
        assert!(!r.deduplicated);
        positions.push(r.position);
    }
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase"
    );
    let segments = common::segment_files(dir.path());
    assert!(segments > 3, "small segments rolled: {segments}");
    let check = |engine: &Engine| {
        let reader = engine.reader();
        let s3 = reader
            .read_stream("s-3", None, Direction::Forwards, 1000)
            .unwrap();
        let expected: Vec<u128> = (0..200u128).filter(|i| i % 7 == 3).map(|i| i + 1).collect();
        assert_eq!(
            s3.iter().map(|e| e.id.as_u128()).collect::<Vec<_>>(),
            expected
        );
        assert!(s3.iter().enumerate().all(|(v, e)| e.version == v as u64));
        let back = reader
            .read_stream("s-3", Some(10), Direction::Backwards, 3)
            .unwrap();
        assert_eq!(
            back.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![10, 9, 8]
        );
        let mut all = Vec::new();
        let mut from = 0;
        loop {
            let batch = reader.read_all(from, 17).unwrap();
            if batch.records.is_empty() {
                break;
            }
            all.extend(batch.records.iter().map(|r| r.events[0].id.as_u128()));
            from = batch.next;
        }
        assert_eq!(all, (1..=200u128).collect::<Vec<_>>());
        assert_eq!(reader.stream_version("s-0").unwrap(), Some(28));
        assert_eq!(reader.stream_version("nope").unwrap(), None);
    };
    check(&engine);
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    check(&engine);
    // Appends continue after reopen with the next versions.
    let r = engine
        .append_blocking(append(
            "s-0",
            ExpectedVersion::Exact(28),
            vec![event(1000, "after")],
        ))
        .unwrap();
    assert_eq!(r.streams[0].first_version, 29);
}

#[test]
fn expected_versions_and_idempotent_retries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let first = engine.append_blocking(acct_opening()).unwrap();
    assert_eq!(
        (
            first.streams[0].first_version,
            first.streams[0].last_version
        ),
        (0, 1)
    );
    match engine.append_blocking(append(
        "acct",
        ExpectedVersion::NoStream,
        vec![event(3, "c")],
    )) {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(1)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    match engine.append_blocking(append(
        "other",
        ExpectedVersion::StreamExists,
        vec![event(3, "c")],
    )) {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, None),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    // A retry of the committed append returns the original result, even with a stale
    // expectation, and writes nothing.
    let end = engine.reader().end();
    let retry = engine.append_blocking(acct_opening()).unwrap();
    assert!(retry.deduplicated);
    assert_eq!(
        (retry.position, retry.streams.clone()),
        (first.position, first.streams.clone())
    );
    assert_eq!(engine.reader().end(), end);
    // Partial overlap, different content, different stream, a subset: all conflicts.
    for bad in [
        append(
            "acct",
            ExpectedVersion::Any,
            vec![event(2, "b"), event(9, "new")],
        ),
        append(
            "acct",
            ExpectedVersion::Any,
            vec![event(1, "A"), event(2, "b")],
        ),
        append(
            "elsewhere",
            ExpectedVersion::Any,
            vec![event(1, "a"), event(2, "b")],
        ),
        append("acct", ExpectedVersion::Any, vec![event(1, "a")]),
        append(
            "acct",
            ExpectedVersion::Any,
            vec![event(2, "b"), event(1, "a")],
        ),
    ] {
        match engine.append_blocking(bad.clone()) {
            Err(Error::IdempotencyConflict { .. }) => {}
            other => panic!("expected an idempotency conflict for {bad:?}, got {other:?}"),
        }
    }
    assert_eq!(engine.reader().end(), end);
    assert_eq!(engine.reader().stream_version("acct").unwrap(), Some(1));
}

#[test]
fn multi_stream_append_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    engine
        .append_blocking(append("order-1", ExpectedVersion::Any, vec![event(1, "x")]))
        .unwrap();
    let both = |expected_b| AppendRequest {
        copy: false,
        streams: vec![
            StreamAppend {
                stream: "order-1".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![event(10, "o")],
            },
            StreamAppend {
                stream: "stock-1".into(),
                expected: expected_b,
                events: vec![event(11, "s"), event(12, "t")],
            },
        ],
        conditions: Vec::new(),
        timestamp_us: 5,
    };
    // One part fails: nothing is written.
    assert!(matches!(
        engine.append_blocking(both(ExpectedVersion::StreamExists)),
        Err(Error::WrongExpectedVersion { .. })
    ));
    assert_eq!(engine.reader().stream_version("order-1").unwrap(), Some(0));
    assert_eq!(engine.reader().stream_version("stock-1").unwrap(), None);
    let ok = engine
        .append_blocking(both(ExpectedVersion::NoStream))
        .unwrap();
    assert_eq!(ok.streams[1].last_version, 1);
    let batch = engine.reader().read_all(ok.position, 10).unwrap();
    assert_eq!(
        batch.records[0].events.len(),
        3,
        "one record holds both streams"
    );
    assert!(
        engine
            .append_blocking(both(ExpectedVersion::NoStream))
            .unwrap()
            .deduplicated
    );
}

/// A condition is a version check on a stream the append does not write, decided with the
/// write — also against an append earlier in the same group commit.
#[test]
fn a_condition_on_another_stream_is_decided_with_the_write() {
    let fs = strata_engine::sim_fs::SimFs::new(3);
    let index = strata_engine::index_store::MemIndexStore::default();
    let mut store = common::open_sim(&fs, &index, small_config()).unwrap();
    let to_acct = |store: &mut strata_engine::Store, id: u128| {
        store
            .commit(vec![append(
                "acct",
                ExpectedVersion::Any,
                vec![event(id, "a")],
            )])
            .remove(0)
            .unwrap();
    };
    to_acct(&mut store, 1);
    let guarded = |id: u128, acct: ExpectedVersion| {
        append("audit", ExpectedVersion::Any, vec![event(id, "g")]).on_condition("acct", acct)
    };
    // In one group: an append moves `acct` to version 1, then a write guarded on version 0.
    let answers = store.commit(vec![
        append("acct", ExpectedVersion::Any, vec![event(2, "b")]),
        guarded(3, ExpectedVersion::Exact(0)),
    ]);
    assert!(answers[0].is_ok());
    match &answers[1] {
        Err(Error::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!((stream.as_str(), *actual), ("acct", Some(1)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.reader().stream_version("audit").unwrap(), None);
    let ok = store
        .commit(vec![guarded(4, ExpectedVersion::Exact(1))])
        .remove(0)
        .unwrap();
    assert_eq!(
        ok.streams.len(),
        1,
        "a condition writes nothing to its stream"
    );
    assert_eq!(store.reader().stream_version("acct").unwrap(), Some(1));
    assert_eq!(store.reader().stream_version("audit").unwrap(), Some(0));
    // A retry is answered with the original result, whatever the condition says now.
    to_acct(&mut store, 5);
    let again = store
        .commit(vec![guarded(4, ExpectedVersion::Exact(1))])
        .remove(0)
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.position, ok.position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(
        Engine::open_dir(dir.path(), strata_engine::EngineConfig::default()).unwrap(),
    );
    let mut tasks = Vec::new();
    for client in 0..32u128 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u128 {
                let stream = format!("c-{client}");
                let r = engine
                    .append(append(
                        &stream,
                        if i == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(i as u64 - 1)
                        },
                        vec![event(client * 1000 + i + 1, "e")],
                    ))
                    .await
                    .unwrap();
                assert_eq!(r.streams[0].first_version, i as u64);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = engine.stats();
    let groups = stats.groups.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        stats.appends.load(std::sync::atomic::Ordering::Relaxed),
        32 * 50
    );
    assert!(
        groups < 32 * 50,
        "appends were coalesced into fewer fsyncs ({groups})"
    );
    for client in 0..32 {
        assert_eq!(
            engine
                .reader()
                .stream_version(&format!("c-{client}"))
                .unwrap(),
            Some(49)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_when_records_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(Engine::open_dir(dir.path(), small_config()).unwrap());
    let mut end = engine.reader().watch_end();
    let start = *end.borrow_and_update();
    let appender = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .append(append("live", ExpectedVersion::Any, vec![event(1, "x")]))
                .await
                .unwrap()
        })
    };
    // No polling: this wakes only when the writer publishes a new end.
    end.changed().await.unwrap();
    let now = *end.borrow();
    assert!(now > start);
    let r = appender.await.unwrap();
    let batch = engine.reader().read_all(r.position, 10).unwrap();
    assert_eq!(batch.records[0].events[0].id.as_u128(), 1);
    assert_eq!(batch.next, engine.reader().end());
}

#[test]
fn time_index_finds_the_first_record_at_or_after_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let mut positions = Vec::new();
    for (i, ts) in [100u64, 200, 300].iter().enumerate() {
        let request = AppendRequest::single(
            "t",
            ExpectedVersion::Any,
            vec![event(i as u128 + 1, "x")],
            *ts,
        );
        positions.push(engine.append_blocking(request).unwrap().position);
    }
    let reader = engine.reader();
    assert_eq!(reader.position_at_or_after(0).unwrap(), Some(positions[0]));
    assert_eq!(
        reader.position_at_or_after(200).unwrap(),
        Some(positions[1])
    );
    assert_eq!(
        reader.position_at_or_after(201).unwrap(),
        Some(positions[2])
    );
    assert_eq!(reader.position_at_or_after(301).unwrap(), None);
    let events = reader
        .read_stream("t", None, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.timestamp_us).collect::<Vec<_>>(),
        vec![100, 200, 300]
    );
}

#[test]
fn an_index_in_an_older_layout_is_rebuilt_at_open() {
    use strata_engine::index_store::{IndexBatch, IndexStore, RocksIndexStore};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let ids = [(1u128, "a"), (2, "b"), (3, "c")];
    engine
        .append_blocking(AppendRequest {
            streams: vec![StreamAppend {
                stream: "x".into(),
                expected: ExpectedVersion::NoStream,
                events: ids.iter().map(|(id, data)| event(*id, data)).collect(),
            }],
            ..Default::default()
        })
        .unwrap();
    engine.close();
    drop(engine);
    // What an older build left: its checkpoint, no layout key, one key per event with a
    // 16-byte value (read in this layout, a malformed run).
    {
        let index = RocksIndexStore::open(&dir.path().join("index")).unwrap();
        let mut batch = IndexBatch::default();
        batch.delete(b"v");
        let mut old_key = b"sx\0".to_vec();
        old_key.extend_from_slice(&1u64.to_be_bytes());
        batch.put(old_key, vec![0; 16]);
        index.write(batch, true).unwrap();
    }
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let read = engine
        .reader()
        .read_stream("x", None, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (e.version, e.id.as_u128()))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 2), (2, 3)]
    );
}

/// The id filter must know every committed id once it has read the index (by a thread of its
/// own, at open): after reopening, a retry is answered with the original result and a partly
/// repeated append is refused — with the filter on, at the smallest size, and off — and with
/// the filter in, new ids are not looked up in the index.
#[test]
fn committed_ids_are_found_after_reopening_whatever_the_id_filter_size() {
    use std::sync::atomic::Ordering::Relaxed;
    for filter_bytes in [256 << 20, 64, 0] {
        let dir = tempfile::tempdir().unwrap();
        let config = || strata_engine::EngineConfig {
            id_filter_bytes_max: filter_bytes,
            ..small_config()
        };
        let first = {
            let engine = Engine::open_dir(dir.path(), config()).unwrap();
            for i in 0..50u128 {
                engine
                    .append_blocking(append(
                        "many",
                        ExpectedVersion::Any,
                        vec![event(1000 + i, "m")],
                    ))
                    .unwrap();
            }
            engine.append_blocking(acct_opening()).unwrap()
        };
        let engine = Engine::open_dir(dir.path(), config()).unwrap();
        // Appends take the filter in once it is read; wait for it (when on).
        let stats = engine.stats().clone();
        for i in 0..500u128 {
            if filter_bytes == 0 || stats.id_filter_bytes.load(Relaxed) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            engine
                .append_blocking(append(
                    "warm",
                    ExpectedVersion::Any,
                    vec![event(5000 + i, "w")],
                ))
                .unwrap();
        }
        assert_eq!(stats.id_filter_bytes.load(Relaxed) > 0, filter_bytes > 0);
        let end = engine.reader().end();
        let retry = engine.append_blocking(acct_opening()).unwrap();
        assert!(retry.deduplicated, "filter of {filter_bytes} bytes");
        assert_eq!(retry.position, first.position);
        match engine.append_blocking(append(
            "elsewhere",
            ExpectedVersion::Any,
            vec![event(7, "new"), event(1030, "old")],
        )) {
            Err(Error::IdempotencyConflict { .. }) => {}
            other => panic!("filter of {filter_bytes} bytes: expected a conflict, got {other:?}"),
        }
        assert_eq!(engine.reader().end(), end, "nothing written");
        let lookups = stats.id_index_lookups.load(Relaxed);
        let new_ids: Vec<_> = (0..100u128).map(|i| event(90_000 + i, "n")).collect();
        engine
            .append_blocking(append("fresh", ExpectedVersion::Any, new_ids))
            .unwrap();
        let looked_up = stats.id_index_lookups.load(Relaxed) - lookups;
        if filter_bytes == 256 << 20 {
            assert!(
                looked_up < 5,
                "{looked_up} of 100 new ids went to the index"
            );
        } else if filter_bytes == 0 {
            assert_eq!(looked_up, 100);
        }
    }
}
