//! Bad input: each case is a typed error naming the field or limit, and the store is unchanged.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{append, event, small_config};
use strata_engine::{
    AppendRequest, Direction, Engine, Error, ExpectedVersion, NewEvent, StreamAppend,
};
use uuid::Uuid;

/// What a rejected request's error must look like.
type Check = Box<dyn Fn(&Error) -> bool>;

fn snapshot(engine: &Engine) -> (u64, Option<u64>, usize) {
    let r = engine.reader();
    (
        r.end(),
        r.stream_version("acct").unwrap(),
        r.read_all(0, 1000).unwrap().records.len(),
    )
}

#[test]
fn each_bad_request_is_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    engine
        .append_blocking(append(
            "acct",
            ExpectedVersion::NoStream,
            vec![event(1, "a")],
        ))
        .unwrap();
    let before = snapshot(&engine);
    let limits = engine.reader().limits().clone();
    let big = NewEvent {
        id: Uuid::from_u128(50),
        event_type: "Big".into(),
        data: Bytes::from(vec![0u8; limits.event_bytes_max]),
        metadata: Bytes::new(),
    };
    let mut many = Vec::new();
    for i in 0..=limits.batch_events_max as u128 {
        many.push(event(1000 + i, ""));
    }
    let two_streams_one_bad = AppendRequest {
        copy: false,
        streams: vec![
            StreamAppend {
                stream: "acct".into(),
                expected: ExpectedVersion::Any,
                events: vec![event(60, "ok")],
            },
            StreamAppend {
                stream: "bad\nname".into(),
                expected: ExpectedVersion::Any,
                events: vec![event(61, "ok")],
            },
        ],
        conditions: Vec::new(),
        timestamp_us: 1,
    };
    let cases: Vec<(&str, AppendRequest, Check)> = vec![
        (
            "oversized event",
            append("acct", ExpectedVersion::Any, vec![big]),
            Box::new(|e| {
                matches!(
                    e,
                    Error::LimitExceeded {
                        limit: "event_bytes_max",
                        ..
                    }
                )
            }),
        ),
        (
            "empty stream name",
            append("", ExpectedVersion::Any, vec![event(2, "x")]),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].stream"),
            ),
        ),
        (
            "control character",
            append("a\u{7}b", ExpectedVersion::Any, vec![event(2, "x")]),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].stream"),
            ),
        ),
        (
            "reserved name",
            append("$all", ExpectedVersion::Any, vec![event(2, "x")]),
            Box::new(|e| matches!(e, Error::InvalidArgument { .. })),
        ),
        (
            "long name",
            append(
                &"n".repeat(limits.stream_name_bytes_max + 1),
                ExpectedVersion::Any,
                vec![event(2, "x")],
            ),
            Box::new(|e| {
                matches!(
                    e,
                    Error::LimitExceeded {
                        limit: "stream_name_bytes_max",
                        ..
                    }
                )
            }),
        ),
        (
            "no streams",
            AppendRequest {
                copy: false,
                streams: vec![],
                conditions: Vec::new(),
                timestamp_us: 1,
            },
            Box::new(|e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams")),
        ),
        (
            "no events",
            append("acct", ExpectedVersion::Any, vec![]),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].events"),
            ),
        ),
        (
            "too many events",
            append("acct", ExpectedVersion::Any, many),
            Box::new(|e| {
                matches!(
                    e,
                    Error::LimitExceeded {
                        limit: "batch_events_max",
                        ..
                    }
                )
            }),
        ),
        (
            "nil id",
            append(
                "acct",
                ExpectedVersion::Any,
                vec![NewEvent {
                    id: Uuid::nil(),
                    ..event(0, "x")
                }],
            ),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].events[0].id"),
            ),
        ),
        (
            "duplicate id in batch",
            append(
                "acct",
                ExpectedVersion::Any,
                vec![event(7, "x"), event(7, "x")],
            ),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].events[1].id"),
            ),
        ),
        (
            "empty type",
            append(
                "acct",
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_type: String::new(),
                    ..event(8, "x")
                }],
            ),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[0].events[0].type"),
            ),
        ),
        (
            "one bad stream of two",
            two_streams_one_bad,
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "streams[1].stream"),
            ),
        ),
        (
            "a condition on a stream the append writes",
            append("acct", ExpectedVersion::Any, vec![event(20, "x")])
                .on_condition("acct", ExpectedVersion::Exact(0)),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "conditions[0].stream"),
            ),
        ),
        (
            "a condition on a bad stream name",
            append("acct", ExpectedVersion::Any, vec![event(21, "x")])
                .on_condition("", ExpectedVersion::Any),
            Box::new(
                |e| matches!(e, Error::InvalidArgument { field, .. } if field == "conditions[0].stream"),
            ),
        ),
        (
            "too many streams with the conditions",
            (0..limits.batch_streams_max).fold(
                append("acct", ExpectedVersion::Any, vec![event(22, "x")]),
                |r, i| r.on_condition(format!("other-{i}"), ExpectedVersion::Any),
            ),
            Box::new(|e| {
                matches!(
                    e,
                    Error::LimitExceeded {
                        limit: "batch_streams_max",
                        ..
                    }
                )
            }),
        ),
        (
            "a condition that does not hold",
            append("other", ExpectedVersion::Any, vec![event(23, "x")])
                .on_condition("acct", ExpectedVersion::NoStream),
            Box::new(|e| {
                matches!(
                    e,
                    Error::WrongExpectedVersion { stream, actual: Some(0), .. } if stream == "acct"
                )
            }),
        ),
        (
            "wrong expected version",
            append("acct", ExpectedVersion::Exact(5), vec![event(9, "x")]),
            Box::new(|e| {
                matches!(
                    e,
                    Error::WrongExpectedVersion {
                        actual: Some(0),
                        ..
                    }
                )
            }),
        ),
        (
            "same id, different content",
            append("acct", ExpectedVersion::Any, vec![event(1, "different")]),
            Box::new(|e| matches!(e, Error::IdempotencyConflict { .. })),
        ),
    ];
    for (name, request, is_expected) in cases {
        match engine.append_blocking(request) {
            Err(e) => assert!(is_expected(&e), "{name}: unexpected error {e}"),
            Ok(r) => panic!("{name}: accepted {r:?}"),
        }
        assert_eq!(snapshot(&engine), before, "{name} changed the store");
    }
}

#[test]
fn bad_reads_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let r = engine
        .append_blocking(append("acct", ExpectedVersion::Any, vec![event(1, "a")]))
        .unwrap();
    let reader = engine.reader();
    assert!(matches!(
        reader.read_stream("acct", None, Direction::Forwards, 1_000_000),
        Err(Error::LimitExceeded {
            limit: "read_events_max",
            ..
        })
    ));
    assert!(matches!(
        reader.read_stream("", None, Direction::Forwards, 1),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(
        matches!(reader.read_all(r.position + 3, 1), Err(Error::InvalidArgument { field, .. }) if field == "position")
    );
    assert!(matches!(
        reader.read_all(r.position + 1_000_000, 1),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        reader.read_all(0, 1_000_000),
        Err(Error::LimitExceeded {
            limit: "read_records_max",
            ..
        })
    ));
    // Reading at the end is empty, not an error.
    assert!(reader
        .read_all(reader.end(), 10)
        .unwrap()
        .records
        .is_empty());
    assert!(reader
        .read_stream("missing", None, Direction::Backwards, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_full_queue_answers_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.limits.queue_depth_max = 1;
    let engine = std::sync::Arc::new(Engine::open_dir(dir.path(), config).unwrap());
    // Flood the queue from many tasks at once; some must be turned away with Busy, none lost.
    let mut tasks = Vec::new();
    for i in 0..200u128 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .append_or_busy(append(
                    &format!("q-{i}"),
                    ExpectedVersion::Any,
                    vec![event(i + 1, "x")],
                ))
                .await
        }));
    }
    let mut busy = 0;
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Busy { queue_depth_max: 1 }) => busy += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok + busy, 200);
    assert!(busy > 0 && ok > 0, "ok={ok} busy={busy}");
    assert_eq!(engine.reader().read_all(0, 1000).unwrap().records.len(), ok);
}
