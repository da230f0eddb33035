//! End to end over real gRPC on loopback, against a node started by the test: appends and
//! reads, version conflicts, idempotent retries, every bad input with its status code,
//! subscriptions under concurrent writers, and the slow-subscriber limit.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

mod common;

use common::*;
use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;
use strata_shard::status::{ACTUAL_VERSION_KEY, ERROR_KIND_KEY};
use strata_shard::ServiceConfig;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_conflict_and_idempotent_retry() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    let first = c
        .append(append(
            "acct-1",
            no_stream(),
            vec![event(&uuid(1), "{\"a\":1}"), event(&uuid(2), "{\"a\":2}")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.streams[0].first_version,
            first.streams[0].last_version,
            first.deduplicated
        ),
        (0, 1, false)
    );
    let read = c
        .read(pb::ReadRequest {
            consistency: 0,
            as_of: None,
            stream: "acct-1".into(),
            from_version: None,
            direction: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.events
            .iter()
            .map(|e| (e.version, e.id.clone()))
            .collect::<Vec<_>>(),
        vec![(0, uuid(1)), (1, uuid(2))]
    );
    assert_eq!(&read.events[0].data[..], b"{\"a\":1}");
    // Conflict: the actual version comes back in metadata and the message.
    let err = c
        .append(append("acct-1", exact(0), vec![event(&uuid(3), "x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.metadata().get(ACTUAL_VERSION_KEY).unwrap(), "1");
    assert!(err.message().contains("actual 1"), "{}", err.message());
    // A retry returns the original result, whatever the expectation now says.
    let retry = c
        .append(append(
            "acct-1",
            no_stream(),
            vec![event(&uuid(1), "{\"a\":1}"), event(&uuid(2), "{\"a\":2}")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.deduplicated);
    assert_eq!(
        (retry.position, retry.streams.clone()),
        (first.position, first.streams.clone())
    );
    let info = c
        .get_stream(pb::GetStreamRequest {
            consistency: 0,
            stream: "acct-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.exists, info.current_version), (true, 1));
    // Multi-stream appends are atomic.
    let multi = pb::AppendMultiRequest {
        streams: vec![
            pb::StreamAppend {
                stream: "order-9".into(),
                expected: no_stream(),
                events: vec![event(&uuid(10), "o")],
            },
            pb::StreamAppend {
                stream: "acct-1".into(),
                expected: exact(7),
                events: vec![event(&uuid(11), "a")],
            },
        ],
    };
    assert_eq!(
        c.append_multi(multi).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let none = c
        .get_stream(pb::GetStreamRequest {
            consistency: 0,
            stream: "order-9".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!none.exists);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_has_its_status_and_writes_nothing() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    c.append(append("s", None, vec![event(&uuid(1), "one")]))
        .await
        .unwrap();
    let big = "x".repeat(2 << 20);
    let cases: Vec<(&str, pb::AppendRequest, Code, &str)> = vec![
        (
            "empty stream",
            append("", None, vec![event(&uuid(2), "x")]),
            Code::InvalidArgument,
            "`stream`",
        ),
        (
            "control char",
            append("a\tb", None, vec![event(&uuid(2), "x")]),
            Code::InvalidArgument,
            "`stream`",
        ),
        (
            "no events",
            append("s", None, vec![]),
            Code::InvalidArgument,
            "`events`",
        ),
        (
            "bad uuid",
            append("s", None, vec![event("not-a-uuid", "x")]),
            Code::InvalidArgument,
            "`events[0].id`",
        ),
        (
            "empty type",
            append(
                "s",
                None,
                vec![pb::NewEvent {
                    r#type: String::new(),
                    ..event(&uuid(2), "x")
                }],
            ),
            Code::InvalidArgument,
            "`events[0].type`",
        ),
        (
            "duplicate ids",
            append("s", None, vec![event(&uuid(3), "x"), event(&uuid(3), "x")]),
            Code::InvalidArgument,
            "`events[1].id`",
        ),
        (
            "oversized event",
            append("s", None, vec![event(&uuid(4), &big)]),
            Code::ResourceExhausted,
            "event_bytes_max",
        ),
        (
            "wrong version",
            append("s", exact(9), vec![event(&uuid(5), "x")]),
            Code::FailedPrecondition,
            "actual 0",
        ),
        (
            "same id, new content",
            append("s", None, vec![event(&uuid(1), "changed")]),
            Code::AlreadyExists,
            "different",
        ),
    ];
    for (name, request, code, needle) in cases {
        let err = c.append(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(needle), "{name}: {}", err.message());
        assert!(err.metadata().get(ERROR_KIND_KEY).is_some(), "{name}");
    }
    let bad_read = c
        .read(pb::ReadRequest {
            consistency: 0,
            as_of: None,
            stream: "s".into(),
            from_version: None,
            direction: 0,
            limit: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_read.code(), Code::ResourceExhausted);
    let bad_pos = c
        .read_all(pb::ReadAllRequest {
            consistency: 0,
            as_of: None,
            from_position: 7,
            limit: 0,
            filter: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_pos.code(), Code::InvalidArgument);
    let bad_dir = c
        .read(pb::ReadRequest {
            consistency: 0,
            as_of: None,
            stream: "s".into(),
            from_version: None,
            direction: 9,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_dir.code(), Code::InvalidArgument);
    let bad_sub = c
        .subscribe(pb::SubscribeRequest {
            target: None,
            start: None,
            filter: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_sub.code(), Code::InvalidArgument);
    // Nothing was written by any of them.
    let all = c
        .read_all(pb::ReadAllRequest {
            consistency: 0,
            as_of: None,
            from_position: 0,
            limit: 0,
            filter: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.events.len(), 1);
    node.stop().await;
}

async fn next_event(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> Result<Option<pb::RecordedEvent>, tonic::Status> {
    loop {
        match stream.message().await? {
            Some(pb::SubscribeResponse {
                item: Some(pb::subscribe_response::Item::Event(e)),
                ..
            }) => return Ok(Some(e)),
            Some(_) => continue,
            None => return Ok(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_sees_every_event_once_in_order_under_concurrent_writers() {
    const WRITERS: u128 = 8;
    const PER_WRITER: u128 = 60;
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    // Some history first, so the subscription has to catch up before going live.
    for w in 0..WRITERS {
        c.append(append(
            &format!("w-{w}"),
            no_stream(),
            vec![event(&uuid((w << 32) | 1_000_000), "old")],
        ))
        .await
        .unwrap();
    }
    let mut sub = c.subscribe(subscribe_all()).await.unwrap().into_inner();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let addr = node.addr;
            tokio::spawn(async move {
                let mut c = StreamsClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                for i in 1..=PER_WRITER {
                    c.append(append(
                        &format!("w-{w}"),
                        exact(i as u64 - 1),
                        vec![event(&uuid((w << 32) | i), "new")],
                    ))
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut positions = Vec::new();
    for _ in 0..WRITERS * (PER_WRITER + 1) {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), next_event(&mut sub))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let next = seen.entry(e.stream.clone()).or_insert(0);
        assert_eq!(
            e.version, *next,
            "per-stream order, no gap, no duplicate ({})",
            e.stream
        );
        *next += 1;
        positions.push(e.position);
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "log order");
    assert!(seen.values().all(|v| *v == PER_WRITER as u64 + 1));
    // Nothing more arrives: no duplicates after the last event.
    let extra =
        tokio::time::timeout(std::time::Duration::from_millis(300), next_event(&mut sub)).await;
    assert!(extra.is_err(), "an extra event arrived: {extra:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_and_can_resume_without_gap() {
    const EVENTS: u128 = 400;
    let config = ServiceConfig {
        subscription_buffer_records_max: 4,
        subscription_stall_timeout: std::time::Duration::from_millis(200),
        ..ServiceConfig::default()
    };
    let node = TestNode::start(config).await;
    let mut c = node.client().await;
    // Enough bytes to fill the transport's buffers as well as the subscription's.
    let payload = "x".repeat(64 << 10);
    for i in 0..EVENTS {
        c.append(append("s", None, vec![event(&uuid(i + 1), &payload)]))
            .await
            .unwrap();
    }
    let all = || Some(pb::subscribe_request::Target::All(pb::Empty {}));
    let mut sub = c
        .subscribe(pb::SubscribeRequest {
            target: all(),
            start: None,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Read nothing for a while: the buffer stays full and the server gives up on us.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let mut got = Vec::new();
    let status = loop {
        let next =
            tokio::time::timeout(std::time::Duration::from_secs(10), next_event(&mut sub)).await;
        match next.unwrap_or_else(|_| panic!("stuck after {} events before the cut-off", got.len()))
        {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!(
                "the subscription ended without a status after {} events",
                got.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("subscription_buffer_records_max"),
        "{}",
        status.message()
    );
    assert!(
        (got.len() as u128) < EVENTS,
        "cut off before the end ({} events)",
        got.len()
    );
    let last = got.last().map_or(0, |e| e.position);
    assert!(
        status.message().contains(&format!("after_position {last}")),
        "{}",
        status.message()
    );
    // Resume after the last event received: the rest, without gap or duplicate.
    let start = Some(pb::subscribe_request::Start::AfterPosition(last));
    let mut sub = c
        .subscribe(pb::SubscribeRequest {
            target: all(),
            start,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    while (got.len() as u128) < EVENTS {
        let next =
            tokio::time::timeout(std::time::Duration::from_secs(10), next_event(&mut sub)).await;
        got.push(
            next.unwrap_or_else(|_| panic!("stuck at {} events after resuming", got.len()))
                .unwrap()
                .unwrap(),
        );
    }
    let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, (0..EVENTS).map(|i| uuid(i + 1)).collect::<Vec<_>>());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_from_a_version_and_from_the_end() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    for i in 0..5u128 {
        c.append(append("s", None, vec![event(&uuid(i + 1), "x")]))
            .await
            .unwrap();
    }
    let target = || Some(pb::subscribe_request::Target::Stream("s".into()));
    let mut from3 = c
        .subscribe(pb::SubscribeRequest {
            target: target(),
            start: Some(pb::subscribe_request::Start::FromVersion(3)),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut from_end = c
        .subscribe(pb::SubscribeRequest {
            target: target(),
            start: Some(pb::subscribe_request::Start::FromEnd(pb::Empty {})),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    c.append(append("s", None, vec![event(&uuid(6), "live")]))
        .await
        .unwrap();
    let ten_s = std::time::Duration::from_secs(10);
    for v in [3, 4, 5] {
        let e = tokio::time::timeout(ten_s, next_event(&mut from3))
            .await
            .unwrap_or_else(|_| panic!("from 3: version {v} never came"));
        assert_eq!(e.unwrap().unwrap().version, v);
    }
    let e = tokio::time::timeout(ten_s, next_event(&mut from_end))
        .await
        .expect("from the end: version 5 never came");
    assert_eq!(e.unwrap().unwrap().version, 5);
    node.stop().await;
}

/// A plain HTTP/1.1 GET on loopback; returns the status line and the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_over_http() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    for i in 0..3u128 {
        c.append(append("m", None, vec![event(&uuid(i + 1), "x")]))
            .await
            .unwrap();
    }
    let _sub = c
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Stream("m".into())),
            start: None,
            filter: None,
        })
        .await
        .unwrap();
    let (status, body) = http_get(node.metrics, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("serving"));
    let (status, body) = http_get(node.metrics, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{body}"))
    };
    assert_eq!(value("strata_appends_total"), 3.0);
    assert_eq!(value("strata_events_appended_total"), 3.0);
    assert_eq!(value("strata_append_seconds_count"), 3.0);
    assert!(value("strata_fsync_seconds_count") >= 1.0);
    assert!(value("strata_disk_bytes") > 0.0);
    assert_eq!(value("strata_subscriptions"), 1.0);
    assert!(body.contains("strata_append_seconds_bucket{le=\"+Inf\"} 3"));
    let (status, _) = http_get(node.metrics, "/nope").await;
    assert!(status.contains("404"), "{status}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_as_grpcurl_expects() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let node = TestNode::start(ServiceConfig::default()).await;
    let channel = node.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "strata.v1.Streams".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection = ServerReflectionClient::new(channel);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(
                names.contains(&"strata.v1.Streams".to_string()),
                "{names:?}"
            );
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_appends_and_loses_no_acknowledged_one() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let writers: Vec<_> = (0..8u128)
        .map(|w| {
            let addr = node.addr;
            tokio::spawn(async move {
                let mut c = StreamsClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let mut acked = Vec::new();
                for i in 0..10_000u128 {
                    let expected = if i == 0 {
                        no_stream()
                    } else {
                        exact(i as u64 - 1)
                    };
                    match c
                        .append(append(
                            &format!("d-{w}"),
                            expected,
                            vec![event(&uuid((w << 32) | (i + 1)), "x")],
                        ))
                        .await
                    {
                        Ok(_) => acked.push(uuid((w << 32) | (i + 1))),
                        // The node is going away: Unavailable, or the connection closing.
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = node.stop().await;
    let mut total = 0;
    let engine = strata_engine::Engine::open_dir(dir.path(), Default::default()).unwrap();
    for (w, writer) in writers.into_iter().enumerate() {
        let acked = writer.await.unwrap();
        assert!(
            !acked.is_empty(),
            "writer {w} got acknowledgements before the stop"
        );
        let events = engine
            .reader()
            .read_stream(
                &format!("d-{w}"),
                None,
                strata_engine::Direction::Forwards,
                4096,
            )
            .unwrap();
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(v, e)| e.version == v as u64),
            "contiguous versions"
        );
        let stored: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        assert!(
            acked.iter().all(|id| stored.contains(id)),
            "writer {w}: an acknowledged append is missing"
        );
        total += acked.len();
    }
    assert!(total > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_as_of_a_version_a_position_and_a_time() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    let mut answers = Vec::new();
    for i in 1..=3u128 {
        let a = c
            .append(append("acct-9", None, vec![event(&uuid(i), "{}")]))
            .await
            .unwrap()
            .into_inner();
        answers.push(a);
    }
    let read = |as_of: pb::as_of::Point| pb::ReadRequest {
        consistency: 0,
        as_of: Some(pb::AsOf { point: Some(as_of) }),
        stream: "acct-9".into(),
        from_version: None,
        direction: 0,
        limit: 0,
    };
    let ids =
        |events: &[pb::RecordedEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let by_version = c
        .read(read(pb::as_of::Point::Version(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&by_version.events), [uuid(1)]);
    let by_position = c
        .read(read(pb::as_of::Point::Position(answers[1].position)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&by_position.events), [uuid(1), uuid(2)]);
    let all = c
        .read(read(pb::as_of::Point::Version(9)))
        .await
        .unwrap()
        .into_inner();
    let second_ts = all.events[1].timestamp_us;
    let by_time = c
        .read(read(pb::as_of::Point::TimestampUs(second_ts)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&by_time.events), [uuid(1), uuid(2)]);
    let before = c
        .read(read(pb::as_of::Point::TimestampUs(
            all.events[0].timestamp_us - 1,
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(before.events.is_empty());
    // The whole log as of the first append's position.
    let log = c
        .read_all(pb::ReadAllRequest {
            consistency: 0,
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::Position(answers[0].position)),
            }),
            from_position: 0,
            limit: 0,
            filter: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&log.events), [uuid(1)]);
    // Bad points: a version for the whole log; a position that is no record.
    let err = c
        .read_all(pb::ReadAllRequest {
            consistency: 0,
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::Version(1)),
            }),
            from_position: 0,
            limit: 0,
            filter: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("as_of_version"), "{}", err.message());
    let err = c
        .read(read(pb::as_of::Point::Position(answers[0].position + 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("as_of_position"),
        "{}",
        err.message()
    );
    node.stop().await;
}
