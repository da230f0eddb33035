//! `AppendStream` over real gRPC against a node on loopback: answers in order with one result
//! per append, a bad append failing alone, appends decided in the order sent, a malformed
//! message ending the call after the answers already due, a client that stops reading pushed
//! back (the node stops reading it), and a client that goes away mid-stream losing nothing
//! that was acknowledged.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use strata_proto::v1 as pb;
use strata_shard::ServiceConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

type Answers = tonic::Streaming<pb::AppendStreamResponse>;

/// Opens a call fed by the returned sender.
async fn open(node: &TestNode) -> (mpsc::Sender<pb::AppendStreamRequest>, Answers) {
    let (tx, rx) = mpsc::channel(64);
    let answers = node
        .client()
        .await
        .append_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, answers)
}

fn message(appends: Vec<pb::AppendRequest>) -> pb::AppendStreamRequest {
    pb::AppendStreamRequest { appends }
}

fn ok(result: &pb::AppendResult) -> &pb::AppendResponse {
    match &result.outcome {
        Some(pb::append_result::Outcome::Appended(r)) => r,
        other => panic!("expected an append, got {other:?}"),
    }
}

fn err(result: &pb::AppendResult) -> &pb::AppendError {
    match &result.outcome {
        Some(pb::append_result::Outcome::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn one(stream: &str, expected: Option<pb::ExpectedVersion>, id: u128) -> pb::AppendRequest {
    append(stream, expected, vec![event(&uuid(id), "{}")])
}

#[tokio::test]
async fn answers_come_in_order_and_a_bad_append_fails_alone() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let (tx, mut answers) = open(&node).await;
    tx.send(message(vec![
        one("s", no_stream(), 1),
        one("s", exact(0), 2),
        one("s", exact(5), 3),
        one("s", exact(1), 4),
    ]))
    .await
    .unwrap();
    tx.send(message(vec![one("", None, 5), one("t", no_stream(), 6)]))
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.results.len(), 4);
    assert_eq!(ok(&first.results[0]).streams[0].first_version, 0);
    assert_eq!(ok(&first.results[1]).streams[0].first_version, 1);
    // Decided after the second: the stream was at 1 then, and nothing of it was written.
    let wrong = err(&first.results[2]);
    assert_eq!(wrong.kind, "wrong-expected-version");
    assert_eq!(wrong.code, Code::FailedPrecondition as i32);
    assert_eq!(wrong.actual_version, Some(1));
    assert_eq!(ok(&first.results[3]).streams[0].first_version, 2);
    let second = answers.message().await.unwrap().unwrap();
    let invalid = err(&second.results[0]);
    assert_eq!(invalid.code, Code::InvalidArgument as i32);
    assert!(invalid.message.contains("`stream`"), "{}", invalid.message);
    assert_eq!(ok(&second.results[1]).streams[0].stream, "t");
    // Many in flight on one stream, each expecting the version the one before made: the node
    // decides them in the order sent, so every one goes in.
    for m in 0..20u64 {
        let batch = (0..10u64)
            .map(|i| {
                one(
                    "ordered",
                    Some(exact_or_none(m * 10 + i)),
                    100 + u128::from(m * 10 + i),
                )
            })
            .collect();
        tx.send(message(batch)).await.unwrap();
    }
    for m in 0..20u64 {
        let answer = answers.message().await.unwrap().unwrap();
        for (i, r) in answer.results.iter().enumerate() {
            assert_eq!(ok(r).streams[0].first_version, m * 10 + i as u64);
        }
    }
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the call ends cleanly"
    );
    node.stop().await;
}

/// `exact(v - 1)`, or "no stream" for the first.
fn exact_or_none(v: u64) -> pb::ExpectedVersion {
    match v {
        0 => no_stream().unwrap(),
        v => exact(v - 1).unwrap(),
    }
}

#[tokio::test]
async fn a_malformed_message_ends_the_call_after_the_answers_due() {
    let node = TestNode::start(ServiceConfig::default()).await;
    for bad in [Vec::new(), (0..1025).map(|i| one("big", None, i)).collect()] {
        let count = bad.len();
        let (tx, mut answers) = open(&node).await;
        tx.send(message(vec![one("fine", None, 5000 + count as u128)]))
            .await
            .unwrap();
        tx.send(message(bad)).await.unwrap();
        let answered = answers.message().await.unwrap().unwrap();
        ok(&answered.results[0]);
        let status = answers.message().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(&format!("not {count}")),
            "{}",
            status.message()
        );
    }
    // Nothing of the refused messages was written.
    let mut client = node.client().await;
    let info = client
        .get_stream(pb::GetStreamRequest {
            stream: "big".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!info.exists);
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_pushed_back() {
    let node = TestNode::start(ServiceConfig {
        append_window: 4,
        append_window_bytes: 64 << 10,
        ..ServiceConfig::default()
    })
    .await;
    let messages = 600usize;
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let data = vec![b'x'; 60 << 10];
    // The transport pulls each message from this stream only when it can send it.
    let requests = tokio_stream::iter(0..messages).map(move |i| {
        counter.fetch_add(1, Ordering::SeqCst);
        message(vec![append(
            "pushed",
            None,
            vec![pb::NewEvent {
                id: uuid(1_000_000 + i as u128),
                r#type: "Big".into(),
                data: data.clone().into(),
                metadata: Default::default(),
            }],
        )])
    });
    // A client whose HTTP/2 receive windows hold only a few dozen unread answers, so that not
    // reading shows at the node soon (with the default windows it buffers ~40,000).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut answers = strata_proto::v1::streams_client::StreamsClient::new(channel)
        .append_stream(requests)
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_reading = pulled.load(Ordering::SeqCst);
    // Unread answers fill the client's window, then the node's 16; the node stops reading; its
    // own HTTP/2 window (1 MiB: ~17 messages) fills; the client cannot send. Without
    // push-back all 600 (35 MiB) would have gone.
    assert!(
        before_reading <= 120,
        "{before_reading} of {messages} messages were taken while no answer was read"
    );
    let (_, metrics) = http_get(node.metrics, "/metrics").await;
    let peak: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strata_append_stream_call_peak "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        peak <= 4,
        "one call had {peak} appends in flight; its window is 4"
    );
    let mut versions = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        versions.push(ok(&answer.results[0]).streams[0].first_version);
    }
    assert_eq!(versions, (0..messages as u64).collect::<Vec<_>>());
    let (_, metrics) = http_get(node.metrics, "/metrics").await;
    assert!(metrics.contains("\nstrata_append_stream_in_flight 0\n"));
    node.stop().await;
}

use tokio_stream::StreamExt as _;

#[tokio::test]
async fn a_client_going_away_mid_stream_loses_nothing_acknowledged() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let ids = |m: u128| (0..10u128).map(move |i| 7_000 + m * 10 + i);
    let (tx, mut answers) = open(&node).await;
    for m in 0..50u128 {
        let batch = ids(m).map(|id| one("leaving", None, id)).collect();
        tx.send(message(batch)).await.unwrap();
    }
    let mut acknowledged = Vec::new();
    for m in 0..20u128 {
        let answer = answers.message().await.unwrap().unwrap();
        assert!(answer
            .results
            .iter()
            .all(|r| ok(r).streams[0].stream == "leaving"));
        acknowledged.extend(ids(m));
    }
    drop(answers);
    drop(tx);
    // Whatever the node had taken still commits; every acknowledged one is there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = stored_ids(&node, "leaving").await;
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged {id} is missing");
    }
    // Retried with the same ids on a new call, all 500 are there exactly once.
    let (tx, mut answers) = open(&node).await;
    for m in 0..50u128 {
        let batch = ids(m).map(|id| one("leaving", None, id)).collect();
        tx.send(message(batch)).await.unwrap();
    }
    drop(tx);
    let mut deduplicated = 0;
    while let Some(answer) = answers.message().await.unwrap() {
        deduplicated += answer.results.iter().filter(|r| ok(r).deduplicated).count();
    }
    assert!(deduplicated >= acknowledged.len());
    let stored = stored_ids(&node, "leaving").await;
    let mut sorted = stored.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), stored.len(), "an event was written twice");
    assert_eq!(stored.len(), 500);
    node.stop().await;
}

async fn stored_ids(node: &TestNode, stream: &str) -> Vec<u128> {
    let mut client = node.client().await;
    let events = client
        .read(pb::ReadRequest {
            stream: stream.into(),
            limit: 4096,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .iter()
        .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
        .collect()
}

#[tokio::test]
async fn a_stopping_node_ends_an_open_call_after_its_answers_and_drains() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let (tx, mut answers) = open(&node).await;
    tx.send(message(vec![one("open-call", no_stream(), 1)]))
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(ok(&first.results[0]).streams[0].last_version, 0);
    // The client keeps the call open (`tx` lives on); the node must still stop.
    let stopped = tokio::time::timeout(Duration::from_secs(20), node.stop()).await;
    assert!(
        stopped.is_ok(),
        "the node did not stop while a call was open"
    );
    let end = answers.message().await;
    match end {
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("shutting down"), "{status:?}");
        }
        other => panic!("the call ended with {other:?}"),
    }
    drop(tx);
}
