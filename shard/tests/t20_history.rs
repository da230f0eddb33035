//! Over real gRPC: closed timestamps (an as-of-T read of $all taken under concurrent writers
//! gives the same answer later), stream metadata and deletion, snapshots and ReadState.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;
use strata_shard::status::ERROR_KIND_KEY;
use strata_shard::ServiceConfig;
use tonic::transport::Channel;
use tonic::Code;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn at_time(t: u64) -> Option<pb::AsOf> {
    Some(pb::AsOf {
        point: Some(pb::as_of::Point::TimestampUs(t)),
    })
}

/// The whole log as of `t`: (stream, version, id) of every user event, and the closed
/// timestamp the first page reported.
async fn all_as_of(c: &mut StreamsClient<Channel>, t: u64) -> (Vec<(String, u64, String)>, u64) {
    let mut from = 0;
    let mut out = Vec::new();
    let mut closed = None;
    loop {
        let page = c
            .read_all(pb::ReadAllRequest {
                from_position: from,
                limit: 4096,
                filter: None,
                consistency: 0,
                as_of: at_time(t),
                from_cursor: Default::default(),
            })
            .await
            .unwrap()
            .into_inner();
        closed.get_or_insert(page.closed_timestamp_us);
        out.extend(page.events.into_iter().map(|e| (e.stream, e.version, e.id)));
        if page.next_position == from {
            return (out, closed.unwrap_or(0));
        }
        from = page.next_position;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_of_time_read_of_all_under_writers_never_changes_later() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = node.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.append(append(&format!("w-{w}"), None, vec![event("", "{}")]))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut c = node.client().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Points in the recent past, now, and slightly ahead of the clock: each read waits until
    // the shard has closed past its point, so writers still running cannot add to it.
    let mut checks = Vec::new();
    for ahead_ms in [-50i64, 0, 0, 30, 200] {
        let t = (now_us() as i64 + ahead_ms * 1000) as u64;
        let (first, closed) = all_as_of(&mut c, t).await;
        assert!(closed >= t, "closed {closed} < as-of {t}");
        checks.push((t, first));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut appended = 0;
    for w in writers {
        appended += w.await.unwrap();
    }
    assert!(appended > 0);
    for (t, first) in checks {
        let (again, _) = all_as_of(&mut c, t).await;
        assert!(
            first == again,
            "the as-of-{t} answer changed: {} events then, {} now",
            first.len(),
            again.len()
        );
    }
    // Too far ahead of the clock: refused, naming the field.
    let err = c
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            limit: 1,
            filter: None,
            consistency: 0,
            as_of: at_time(now_us() + 60_000_000),
            from_cursor: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("as_of.timestamp_us"), "{err:?}");
    // Ticks live in $closed and stay out of plain reads of $all.
    let (all, _) = all_as_of(&mut c, now_us()).await;
    assert!(all.iter().all(|(s, _, _)| !s.starts_with('$')));
    let ticks = c
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            limit: 4096,
            filter: Some(pb::Filter {
                stream_prefix: "$closed".into(),
                event_types: Vec::new(),
                partitions: None,
            }),
            consistency: 0,
            as_of: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ticks.events.is_empty());
    node.stop().await;
}

fn read(stream: &str) -> pb::ReadRequest {
    pb::ReadRequest {
        stream: stream.into(),
        from_version: None,
        direction: 0,
        limit: 0,
        consistency: 0,
        as_of: None,
    }
}

async fn versions(c: &mut StreamsClient<Channel>, stream: &str) -> Vec<u64> {
    c.read(read(stream))
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .map(|e| e.version)
        .collect()
}

async fn info(c: &mut StreamsClient<Channel>, stream: &str) -> pb::GetStreamResponse {
    c.get_stream(pb::GetStreamRequest {
        stream: stream.into(),
        consistency: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

fn meta(
    stream: &str,
    max_count: Option<u64>,
    truncate_before: Option<u64>,
) -> pb::SetStreamMetadataRequest {
    pb::SetStreamMetadataRequest {
        stream: stream.into(),
        metadata: Some(pb::StreamMetadata {
            max_age_us: None,
            max_count,
            truncate_before,
        }),
        expected_metadata_version: None,
    }
}

fn kind(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A soft delete hides exactly the versions before its own record: an append landing between
/// the delete's read of the head and its write must not survive it (the write is conditional
/// on the head it read, decided with the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_delete_under_concurrent_appends_hides_everything_before_it() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    c.append(append("race", None, vec![event("", "{}")]))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..3 {
        let mut w = node.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                w.append(append("race", None, vec![event("", "{}")]))
                    .await
                    .unwrap();
            }
        }));
    }
    let (mut done, mut lost_races) = (0, 0);
    for _ in 0..30 {
        match c
            .delete_stream(pb::DeleteStreamRequest {
                stream: "race".into(),
                hard: false,
                expected: None,
            })
            .await
        {
            Ok(r) => {
                done += 1;
                let at = r.into_inner().position;
                let visible = c.read(read("race")).await.unwrap().into_inner().events;
                for e in visible {
                    assert!(
                        e.position > at,
                        "version {} at {} survived the delete at {at}",
                        e.version,
                        e.position
                    );
                }
            }
            Err(e) => {
                // Appends kept landing between the read and the write on every attempt.
                assert_eq!(kind(&e), "wrong-expected-version", "{e:?}");
                lost_races += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(done > 0, "every delete lost its race ({lost_races})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_soft_and_hard_delete_behave_as_documented() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    let ten: Vec<_> = (0..10).map(|_| event("", "{}")).collect();
    c.append(append("m", None, ten.clone())).await.unwrap();
    // max_count keeps the newest N; truncate_before hides older versions; the larger floor wins.
    c.set_stream_metadata(meta("m", Some(3), None))
        .await
        .unwrap();
    assert_eq!(versions(&mut c, "m").await, [7, 8, 9]);
    c.set_stream_metadata(meta("m", Some(3), Some(8)))
        .await
        .unwrap();
    assert_eq!(versions(&mut c, "m").await, [8, 9]);
    let i = info(&mut c, "m").await;
    assert_eq!((i.current_version, i.first_visible_version), (9, 8));
    assert_eq!(i.metadata_version, Some(1));
    // A stale conditional metadata update is refused and changes nothing.
    let mut stale = meta("m", None, None);
    stale.expected_metadata_version = Some(0);
    let err = c.set_stream_metadata(stale).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(versions(&mut c, "m").await, [8, 9]);
    // As of before the metadata, every event is still there (what a reader saw then).
    let old = c
        .read(pb::ReadRequest {
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::Version(9)),
            }),
            ..read("m")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.events.len(), 2, "metadata applies to as-of reads too");
    // max_count 0 is refused.
    let err = c
        .set_stream_metadata(meta("m", Some(0), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata.max_count"));

    // Soft delete: nothing visible, then appending recreates it with the next versions.
    c.delete_stream(pb::DeleteStreamRequest {
        stream: "m".into(),
        hard: false,
        expected: exact(9),
    })
    .await
    .unwrap();
    assert!(versions(&mut c, "m").await.is_empty());
    let i = info(&mut c, "m").await;
    assert!(i.deleted && !i.tombstoned);
    let a = c
        .append(append("m", exact(9), vec![event("", "{}")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.streams[0].first_version, 10);
    assert_eq!(versions(&mut c, "m").await, [10]);
    assert!(!info(&mut c, "m").await.deleted);
    // A delete at the wrong version is refused.
    let err = c
        .delete_stream(pb::DeleteStreamRequest {
            stream: "m".into(),
            hard: true,
            expected: exact(3),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(kind(&err), "wrong-expected-version");

    // Hard delete: appends, metadata and snapshots are refused for good; reads say so.
    c.append(append("h", None, ten)).await.unwrap();
    c.delete_stream(pb::DeleteStreamRequest {
        stream: "h".into(),
        hard: true,
        expected: None,
    })
    .await
    .unwrap();
    let err = c
        .append(append("h", None, vec![event("", "{}")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(kind(&err), "stream-deleted");
    let err = c.read(read("h")).await.unwrap_err();
    assert_eq!(kind(&err), "stream-deleted");
    let err = c
        .set_stream_metadata(meta("h", None, None))
        .await
        .unwrap_err();
    assert_eq!(kind(&err), "stream-deleted");
    let err = c
        .delete_stream(pb::DeleteStreamRequest {
            stream: "h".into(),
            hard: true,
            expected: None,
        })
        .await
        .unwrap_err();
    assert_eq!(kind(&err), "stream-deleted");
    assert!(info(&mut c, "h").await.tombstoned);
    // System streams are not append targets.
    let err = c
        .append(append("$meta:m", None, vec![event("", "{}")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reserved"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_returns_the_newest_snapshot_and_the_events_after_it() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    let policies = c
        .set_snapshot_policy(pb::SnapshotPolicy {
            stream_prefix: "acct-".into(),
            every: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policies.policies.len(), 1);
    let mut positions = Vec::new();
    for i in 0..12u64 {
        let a = c
            .append(append(
                "acct-1",
                None,
                vec![event("", &format!("{{\"n\": {i}}}"))],
            ))
            .await
            .unwrap()
            .into_inner();
        positions.push(a.position);
        if i == 4 || i == 9 {
            c.save_snapshot(pb::SaveSnapshotRequest {
                stream: "acct-1".into(),
                version: i,
                schema_version: 2,
                data: format!("state@{i}").into_bytes().into(),
            })
            .await
            .unwrap();
        }
    }
    let state = |as_of: Option<pb::as_of::Point>| pb::ReadStateRequest {
        stream: "acct-1".into(),
        as_of: as_of.map(|p| pb::AsOf { point: Some(p) }),
        limit: 0,
        consistency: 0,
    };
    let now = c.read_state(state(None)).await.unwrap().into_inner();
    let snap = now.snapshot.unwrap();
    assert_eq!((snap.version, snap.schema_version), (9, 2));
    assert_eq!(&snap.data[..], b"state@9");
    assert_eq!(
        now.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [10, 11]
    );
    assert!(now.complete && !now.snapshot_due && now.version == 11);
    // As of version 8's record: the snapshot at 4 plus 5..=8; five events since it: due.
    let past = c
        .read_state(state(Some(pb::as_of::Point::Position(positions[8]))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(past.snapshot.unwrap().version, 4);
    assert_eq!(
        past.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    assert!(!past.snapshot_due);
    let at_nine = c
        .read_state(state(Some(pb::as_of::Point::Version(9))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        at_nine.snapshot.unwrap().version,
        9,
        "the snapshot at 9 covers 9"
    );
    assert!(at_nine.events.is_empty() && at_nine.complete);
    // As of version 4's record, before its snapshot was stored: five events, none
    // snapshotted, and the policy (every 5) says one is due.
    let due = c
        .read_state(state(Some(pb::as_of::Point::Position(positions[4]))))
        .await
        .unwrap()
        .into_inner();
    assert!(due.snapshot.is_none() && due.snapshot_due && due.events.len() == 5);
    let before = c
        .read_state(state(Some(pb::as_of::Point::Position(positions[3]))))
        .await
        .unwrap()
        .into_inner();
    assert!(before.snapshot.is_none());
    assert_eq!(before.events.len(), 4);
    // A limit cuts the events and says so.
    let cut = c
        .read_state(pb::ReadStateRequest {
            limit: 2,
            ..state(Some(pb::as_of::Point::Position(positions[3])))
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!cut.complete && cut.events.len() == 2);
    // A snapshot past the stream's last version is refused.
    let err = c
        .save_snapshot(pb::SaveSnapshotRequest {
            stream: "acct-1".into(),
            version: 12,
            schema_version: 1,
            data: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("version"));
    node.stop().await;
}

/// Bytes the log's files occupy on disk (allocated blocks: holes do not count).
fn log_disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_shrinks_the_log_while_writers_keep_appending() {
    let mut service = ServiceConfig::default();
    service.retention.interval = Duration::from_millis(100);
    service.retention.engine.as_of_window_us = 0;
    let mut engine = strata_engine::EngineConfig {
        segment_bytes_max: 512 << 10,
        ..Default::default()
    };
    engine.limits.batch_bytes_max = 128 << 10;
    engine.limits.event_bytes_max = 64 << 10;
    let node = TestNode::start_with(service, engine).await;
    let mut c = node.client().await;
    c.set_stream_metadata(meta("hot", Some(50), None))
        .await
        .unwrap();
    // An $all subscriber that keeps up does not hold retention back; one that stopped reading
    // would (it pins what it has yet to deliver) — here it keeps reading.
    let mut sub = c.subscribe(subscribe_all()).await.unwrap().into_inner();
    let reading = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = sub.message().await {
            n += 1;
        }
        n
    });
    let payload = "x".repeat(4000);
    let mut written = 0u64;
    let started = std::time::Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        let events = (0..8).map(|_| event("", &payload)).collect();
        c.append(append("hot", None, events)).await.unwrap();
        written += 8 * 4000;
        appends += 1;
    }
    // Passes run every 100 ms once the subscriber has read past a segment; give the last
    // ones (and a subscriber slowed by a busy machine) time.
    assert!(appends > 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let on_disk = log_disk_bytes(node._dir.path());
        if on_disk * 2 < written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "log holds {on_disk} bytes on disk after {written} bytes of events were written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = versions(&mut c, "hot").await;
    assert_eq!(kept.len(), 50);
    assert_eq!(*kept.last().unwrap() + 1, appends * 8);
    let (_, metrics) = http_get(node.metrics, "/metrics").await;
    let reclaimed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strata_retention_bytes_reclaimed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(reclaimed > 0);
    node.stop().await;
    assert!(reading.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriptions_skip_hidden_versions_and_end_on_a_tombstone() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    let five: Vec<_> = (0..5).map(|_| event("", "{}")).collect();
    c.append(append("sub", None, five)).await.unwrap();
    c.set_stream_metadata(meta("sub", None, Some(3)))
        .await
        .unwrap();
    let mut stream = c
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Stream("sub".into())),
            start: None,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    // Events until the caught-up marker.
    while let pb::subscribe_response::Item::Event(e) =
        stream.message().await.unwrap().unwrap().item.unwrap()
    {
        versions.push(e.version);
    }
    assert_eq!(
        versions,
        [3, 4],
        "versions below truncate_before are not delivered"
    );
    c.delete_stream(pb::DeleteStreamRequest {
        stream: "sub".into(),
        hard: true,
        expected: None,
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .unwrap()
    .expect("the subscription ends with a status");
    assert_eq!(end.code(), Code::FailedPrecondition);
    assert_eq!(kind(&end), "stream-deleted");
    node.stop().await;
}
