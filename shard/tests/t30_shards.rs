//! A node of several shards over real gRPC: each stream lands in the shard its slot maps to
//! (checked by opening the shards' engines afterwards) and only there; reads find it there;
//! an `AppendMulti` across shards is refused naming each stream's shard, within one routing
//! key it commits; an `AppendStream` message mixing shards is answered in order with a bad
//! append failing alone; `$all` is read across shards in time order page by page from a
//! cursor (also as of a time, and from `GetLog`'s cursors); a `$all` subscription merges the
//! shards (catch-up, caught_up once, live) and resumes from an event's cursor without gap or
//! repeat; the node reports its map and shares fdatasyncs; a restart finds everything.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

const SHARDS: u32 = 4;
const STREAMS: u64 = 40;

fn stream(i: u64) -> String {
    format!("order-{i}")
}

async fn status(node: &TestNode) -> pb::ClusterStatus {
    pb::cluster_client::ClusterClient::new(node.channel().await)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn streams_live_in_the_shard_of_their_slot_and_survive_a_restart() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(SHARDS)).await;
    let mut client = node.client().await;
    for i in 0..STREAMS {
        for v in 0..2u64 {
            let expected = if v == 0 { no_stream() } else { exact(v - 1) };
            let events = vec![event(&uuid(u128::from(i * 10 + v + 1)), "{}")];
            client
                .append(append(&stream(i), expected, events))
                .await
                .unwrap();
        }
    }
    // The node says what its map is.
    let s = status(&node).await;
    assert_eq!((s.slots, s.map_epoch, s.shards.len()), (4096, 1, 4));
    let owned: u32 = s
        .shards
        .iter()
        .flat_map(|sh| sh.slots.iter().map(|r| r.end - r.start))
        .sum();
    assert_eq!(owned, 4096, "every slot owned once: {:?}", s.shards);
    // 80 appends, 4 shards: far fewer fdatasyncs than one per shard per append would be
    // impossible to tell apart from sequential appends, but each append took at least one.
    assert!(s.log_fdatasyncs >= STREAMS * 2, "{}", s.log_fdatasyncs);
    let (_, metrics) = http_get(node.metrics, "/metrics").await;
    assert!(metrics.contains("\nstrata_shards 4\n"), "{metrics}");
    assert!(
        metrics.contains("\nstrata_events_appended_total 80\n"),
        "{metrics}"
    );
    // A restart without --shards finds the four shards and every event.
    let dir = node.stop().await;
    let node = TestNode::start_sharded(dir, None).await;
    let mut client = node.client().await;
    for i in 0..STREAMS {
        let read = client
            .read(pb::ReadRequest {
                stream: stream(i),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.events.len(), 2, "{}", stream(i));
    }
    let dir = node.stop().await;
    // Each stream is in its own shard's engine and in no other.
    let map = ClusterMap::even(4096, SHARDS).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for id in 0..SHARDS {
        let engine = strata_engine::Engine::open_dir(
            &dir.path().join("shards").join(id.to_string()),
            Default::default(),
        )
        .unwrap();
        for i in 0..STREAMS {
            let version = engine.reader().stream_version(&stream(i)).unwrap();
            let here = map.shard_of(&stream(i)) == ShardId(id);
            assert_eq!(version.is_some(), here, "{} in shard {id}", stream(i));
            if here {
                used.insert(id);
                assert_eq!(version, Some(1));
            }
        }
        engine.close();
    }
    assert_eq!(used.len(), SHARDS as usize, "40 streams reach every shard");
}

#[tokio::test]
async fn a_multi_stream_append_stays_within_one_shard() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(SHARDS)).await;
    let mut client = node.client().await;
    let map = ClusterMap::even(4096, SHARDS).unwrap();
    // Two plain names in different shards.
    let (a, b) = (0..)
        .map(|i| (stream(0), stream(i)))
        .find(|(a, b)| map.shard_of(a) != map.shard_of(b))
        .unwrap();
    let multi = |streams: Vec<(&str, u128)>| pb::AppendMultiRequest {
        streams: streams
            .into_iter()
            .map(|(s, id)| pb::StreamAppend {
                stream: s.into(),
                expected: None,
                events: vec![event(&uuid(id), "{}")],
            })
            .collect(),
    };
    let refused = client
        .append_multi(multi(vec![(&a, 1), (&b, 2)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let says = refused.message();
    for (s, shard) in [(&a, map.shard_of(&a)), (&b, map.shard_of(&b))] {
        assert!(says.contains(&format!("{s:?} ({shard})")), "{says}");
    }
    assert_eq!(
        refused
            .metadata()
            .get(strata_proto::metadata::ERROR_KIND_KEY)
            .unwrap(),
        "cross-shard"
    );
    for s in [&a, &b] {
        let read = client
            .read(pb::ReadRequest {
                stream: s.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            read.events.is_empty(),
            "nothing of the refused append in {s}"
        );
    }
    // One routing key: one shard, one atomic append.
    let done = client
        .append_multi(multi(vec![("order-{7}", 3), ("order-{7}-payments", 4)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.streams.len(), 2);
}

#[tokio::test]
async fn a_pipelined_message_over_several_shards_is_answered_in_order() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(SHARDS)).await;
    let mut client = node.client().await;
    let mut appends: Vec<pb::AppendRequest> = (0..20u64)
        .map(|i| {
            append(
                &stream(i),
                no_stream(),
                vec![event(&uuid(u128::from(i) + 100), "{}")],
            )
        })
        .collect();
    // The 11th expects a version its stream does not have: it alone fails.
    appends[10].expected = exact(5);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AppendStreamRequest { appends }).await.unwrap();
    drop(tx);
    let mut answers = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    while let Some(message) = answers.next().await {
        results.extend(message.unwrap().results);
    }
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        match (&r.outcome, i) {
            (Some(pb::append_result::Outcome::Error(e)), 10) => {
                assert_eq!(e.kind, "wrong-expected-version", "{e:?}")
            }
            (Some(pb::append_result::Outcome::Appended(a)), _) if i != 10 => {
                assert_eq!(a.streams[0].stream, stream(i as u64), "answer {i} in order")
            }
            other => panic!("answer {i}: {other:?}"),
        }
    }
}

/// Pages of `$all` from `cursor` until the cursor stops moving.
async fn read_all_pages(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    mut cursor: Vec<u8>,
    limit: u32,
    as_of: Option<pb::AsOf>,
) -> Vec<pb::RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_cursor: cursor.clone().into(),
                limit,
                as_of,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.next_position, 0, "several shards: no single position");
        events.extend(page.events);
        if page.next_cursor.as_ref() == cursor.as_slice() {
            return events;
        }
        cursor = page.next_cursor.to_vec();
    }
}

#[tokio::test]
async fn all_is_read_across_shards_in_time_order_page_by_page_without_gap_or_repeat() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(SHARDS)).await;
    let mut client = node.client().await;
    let mut appended = Vec::new();
    for round in 0..2u64 {
        for i in 0..STREAMS {
            let expected = if round == 0 { no_stream() } else { exact(0) };
            let id = uuid(u128::from(round * 1000 + i + 1));
            client
                .append(append(&stream(i), expected, vec![event(&id, "{}")]))
                .await
                .unwrap();
            appended.push(id);
        }
    }
    // Appended one after another: the merge by timestamp gives back exactly that order,
    // whatever the page size.
    for limit in [1, 7, 1000] {
        let events = read_all_pages(&mut client, Vec::new(), limit, None).await;
        let ids: Vec<&String> = events.iter().map(|e| &e.id).collect();
        assert_eq!(ids, appended.iter().collect::<Vec<_>>(), "limit {limit}");
    }
    // The log's end as a cursor: nothing after it; a cursor at a time: what came since.
    let log = client
        .get_log(pb::GetLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let after_end = read_all_pages(&mut client, log.end_cursor.to_vec(), 100, None).await;
    assert!(after_end.is_empty());
    let all = read_all_pages(&mut client, Vec::new(), 1000, None).await;
    let t = all[STREAMS as usize].timestamp_us;
    let since = client
        .get_log(pb::GetLogRequest {
            at_timestamp_us: Some(t),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let later = read_all_pages(&mut client, since.cursor_at_or_after.to_vec(), 9, None).await;
    assert_eq!(later.len(), STREAMS as usize, "the second round's appends");
    assert_eq!(later[0].id, appended[STREAMS as usize]);
    // As of a time: every shard's prefix up to it, once all are closed through it.
    let as_of = Some(pb::AsOf {
        point: Some(pb::as_of::Point::TimestampUs(t - 1)),
    });
    let before = read_all_pages(&mut client, Vec::new(), 13, as_of).await;
    assert_eq!(before.len(), STREAMS as usize, "the first round's appends");
    // Bad cursors and mixed starts change nothing and say what is wrong.
    let e = client
        .read_all(pb::ReadAllRequest {
            from_position: 40,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("next_cursor"), "{}", e.message());
    let e = client
        .read_all(pb::ReadAllRequest {
            from_cursor: vec![1, 9, 0].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("from_cursor"), "{}", e.message());
    let e = client
        .read_all(pb::ReadAllRequest {
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::Position(10)),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// Reads a subscription until `n` events have come: (event, its cursor, more in its record),
/// and whether `caught_up` came after exactly `caught_up_after` of them.
async fn take(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    n: usize,
) -> (Vec<(pb::RecordedEvent, Vec<u8>, bool)>, Option<usize>) {
    let (mut events, mut caught_up) = (Vec::new(), None);
    while events.len() < n {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        match r.item.unwrap() {
            pb::subscribe_response::Item::Event(e) => {
                events.push((e, r.cursor.to_vec(), r.more_in_record))
            }
            pb::subscribe_response::Item::CaughtUp(_) => {
                assert!(caught_up.is_none(), "caught_up once");
                caught_up = Some(events.len());
            }
        }
    }
    (events, caught_up)
}

#[tokio::test]
async fn a_subscription_to_all_merges_the_shards_and_resumes_from_a_cursor() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(SHARDS)).await;
    let mut client = node.client().await;
    let mut ids = std::collections::BTreeSet::new();
    let mut append_n = |client: &mut pb::streams_client::StreamsClient<_>, from: u64, n: u64| {
        let client = client.clone();
        let mut client: pb::streams_client::StreamsClient<tonic::transport::Channel> = client;
        let batch: Vec<(String, String)> = (from..from + n)
            .map(|i| (stream(i % STREAMS), uuid(u128::from(i) + 1)))
            .collect();
        ids.extend(batch.iter().map(|(_, id)| id.clone()));
        async move {
            for (s, id) in batch {
                client
                    .append(append(&s, None, vec![event(&id, "{}")]))
                    .await
                    .unwrap();
            }
        }
    };
    append_n(&mut client, 0, 60).await;
    let mut sub = client
        .subscribe(subscribe_all())
        .await
        .unwrap()
        .into_inner();
    let (first, caught_up) = take(&mut sub, 60).await;
    // Live: 20 more while subscribed.
    append_n(&mut client, 60, 20).await;
    let (live, late) = take(&mut sub, 20).await;
    let caught_up = caught_up.or(late.map(|n| n + 60));
    assert_eq!(caught_up, Some(60), "caught up after the 60 that existed");
    let all: Vec<&(pb::RecordedEvent, Vec<u8>, bool)> = first.iter().chain(&live).collect();
    let got: std::collections::BTreeSet<String> =
        all.iter().map(|(e, _, _)| e.id.clone()).collect();
    assert_eq!(got.len(), 80, "no event twice");
    assert_eq!(got, ids, "every event");
    // Each stream's versions in order; single-event records end at once.
    let mut versions: std::collections::HashMap<&str, u64> = Default::default();
    for (e, cursor, more) in &all {
        assert!(!cursor.is_empty() && !more);
        let next = versions.entry(e.stream.as_str()).or_insert(0);
        assert_eq!(e.version, *next, "{} in order", e.stream);
        *next += 1;
    }
    drop(sub);
    // Resume after the 30th event: the rest, once each, none of the first 30.
    let cursor = all[29].1.clone();
    let mut resumed = client
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::All(pb::Empty {})),
            start: Some(pb::subscribe_request::Start::Cursor(cursor.into())),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let (rest, _) = take(&mut resumed, 50).await;
    let head: std::collections::BTreeSet<&String> =
        all[..30].iter().map(|(e, _, _)| &e.id).collect();
    let tail: std::collections::BTreeSet<&String> = rest.iter().map(|(e, _, _)| &e.id).collect();
    assert_eq!(tail.len(), 50);
    assert!(head.is_disjoint(&tail));
    // A position is one shard's: refused on several.
    let e = client
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::All(pb::Empty {})),
            start: Some(pb::subscribe_request::Start::AfterPosition(40)),
            filter: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("start from a cursor"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_one_shard_node_answers_with_a_cursor_too() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), None).await;
    let mut client = node.client().await;
    for i in 0..5u64 {
        client
            .append(append(
                "s",
                None,
                vec![event(&uuid(u128::from(i) + 1), "{}")],
            ))
            .await
            .unwrap();
    }
    let page = client
        .read_all(pb::ReadAllRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_position > 0);
    let rest = read_all_pages_one(&mut client, page.next_cursor.to_vec()).await;
    assert_eq!(page.events.len() + rest, 5);
}

/// Events from `cursor` to the end on a one-shard node (positions move too).
async fn read_all_pages_one(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    mut cursor: Vec<u8>,
) -> usize {
    let mut n = 0;
    loop {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_cursor: cursor.clone().into(),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        n += page.events.len();
        if page.next_cursor.as_ref() == cursor.as_slice() {
            return n;
        }
        cursor = page.next_cursor.to_vec();
    }
}

#[tokio::test]
async fn a_directory_refuses_another_number_of_shards() {
    let node = TestNode::start_sharded(tempfile::tempdir().unwrap(), Some(2)).await;
    let dir = node.stop().await;
    let config = strata_shard::NodeConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: Default::default(),
        service: Default::default(),
        cluster: None,
        metrics_listen: None,
        shards: Some(3),
    };
    let e = strata_shard::Node::bind(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds 2 shards") && e.contains("--shards 2"),
        "{e}"
    );
}

/// The feeds a node reads from another node's shards (a merged `$all` subscription's remote
/// parts) hold back no other call it passes to that node when the subscriber is slow: four
/// feeds of ~4 MiB each, each taken one record and then left, each of which the sending node
/// pushes as far as HTTP/2's windows allow (hyper's: 2 MiB a call, 5 MiB a connection); then a
/// call over the nodes' shared connection. With the feeds on that connection, the third feed
/// filled it and the fourth got nothing (nor would the call); on connections of their own
/// (`Peers::streams_apart`) the call is answered, and each feed is then read to its end.
#[tokio::test]
async fn remote_feeds_nobody_reads_hold_back_no_other_call_to_their_node() {
    use strata_shard::forward::Peers;
    use strata_shard::remote_shard::RemoteShard;
    let node = TestNode::start(Default::default()).await;
    let mut client = node.client().await;
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
    let appends = 40u128;
    for a in 0..appends {
        let events = (0..100)
            .map(|i| event(&uuid(a * 100 + i + 1), &data))
            .collect();
        client.append(append("wide", None, events)).await.unwrap();
    }
    let peers = Peers::new(64 << 20, 64 << 20);
    let remote = RemoteShard {
        peers: &peers,
        addr: node.addr.to_string(),
        shard: ShardId(0),
    };
    let patience = std::time::Duration::from_secs(20);
    let mut feeds = Vec::new();
    for n in 0..4 {
        let mut feed = remote.feed(subscribe_all(), 1).await.unwrap();
        let first = tokio::time::timeout(patience, feed.units.recv()).await;
        let first = first.unwrap_or_else(|_| panic!("feed {n} got nothing"));
        assert_eq!(first.unwrap().len(), 100, "a whole record");
        feeds.push(feed);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut shared = peers.streams(&node.addr.to_string()).unwrap();
    let read = shared.read(pb::ReadRequest {
        stream: "wide".into(),
        limit: 10,
        ..Default::default()
    });
    let answered = tokio::time::timeout(patience, read).await;
    let page = answered.expect("a call beside feeds nobody reads").unwrap();
    assert_eq!(page.into_inner().events.len(), 10);
    for mut feed in feeds {
        for _ in 1..appends {
            let unit = tokio::time::timeout(patience, feed.units.recv()).await;
            assert_eq!(unit.expect("the rest of a feed").unwrap().len(), 100);
        }
    }
}
