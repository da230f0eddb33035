//! The API's answers to bad and large input over real gRPC (each case an outside black-box
//! run found): undecodable requests are INVALID_ARGUMENT naming the field, the documented batch
//! limit is reachable and refused past it as RESOURCE_EXHAUSTED, reads of large events come
//! back in pages any default gRPC client can read, unknown enum values are refused on every
//! node, and a hard-deleted stream says so when read.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use prost::Message;
use strata_proto::metadata::ERROR_KIND_KEY;
use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;
use strata_shard::ServiceConfig;
use tonic::transport::Channel;
use tonic::Code;

/// An `AppendRequest` whose `stream` (field 1) carries raw bytes, UTF-8 or not.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStreamAppend {
    #[prost(bytes = "vec", tag = "1")]
    stream: Vec<u8>,
}

async fn raw_append(node: &TestNode, stream: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(node.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawStreamAppend, pb::AppendResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/strata.v1.Streams/Append");
    grpc.unary(tonic::Request::new(RawStreamAppend { stream }), path, codec)
        .await
        .unwrap_err()
}

/// A client allowing the largest messages a node may send or take (as Strata's own do).
async fn big_client(node: &TestNode) -> StreamsClient<Channel> {
    node.client()
        .await
        .max_decoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
        .max_encoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
}

fn sized_event(n: u128, bytes: usize) -> pb::NewEvent {
    pb::NewEvent {
        id: uuid(n),
        r#type: "Big".into(),
        data: vec![b'x'; bytes].into(),
        metadata: Default::default(),
    }
}

fn read(stream: &str, from: Option<u64>, consistency: i32) -> pb::ReadRequest {
    pb::ReadRequest {
        stream: stream.into(),
        from_version: from,
        direction: 0,
        limit: 0,
        consistency,
        as_of: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_is_invalid_argument_naming_the_field() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let bad = raw_append(&node, vec![b'a', 0xff, 0xfe]).await;
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(
        bad.message().contains("AppendRequest.stream"),
        "{}",
        bad.message()
    );
    assert_eq!(
        bad.metadata().get(ERROR_KIND_KEY).unwrap(),
        "invalid-argument"
    );
    // The same field as valid UTF-8 decodes and reaches the service's own checks.
    let ok_bytes = raw_append(&node, b"a".to_vec()).await;
    assert_eq!(ok_bytes.code(), Code::InvalidArgument);
    assert!(
        ok_bytes.message().contains("`events`"),
        "{}",
        ok_bytes.message()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_batch_limit_is_reachable_and_refused_past_it_as_resource_exhausted() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = big_client(&node).await;
    // 4.5 MiB in five valid events: above gRPC's 4 MiB default, well within batch_bytes_max.
    let five: Vec<_> = (1..=5).map(|i| sized_event(i, 900 << 10)).collect();
    let r = c
        .append(append("big", None, five))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.streams[0].last_version, 4);
    // 17 events of 1,000,000 bytes: past batch_bytes_max (16 MiB), refused by the engine.
    let over: Vec<_> = (10..27).map(|i| sized_event(i, 1_000_000)).collect();
    let refused = c.append(append("big", None, over)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("batch_bytes_max"),
        "{}",
        refused.message()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_come_back_in_pages_a_default_client_can_read() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut writer = big_client(&node).await;
    for i in 0..40u128 {
        writer
            .append(append("large", None, vec![sized_event(100 + i, 1_000_000)]))
            .await
            .unwrap();
    }
    // gRPC's default receive limit (4 MiB): every page must fit it.
    let mut c = node.client().await;
    let (mut from, mut versions, mut pages) = (None, Vec::new(), 0);
    loop {
        let page = c.read(read("large", from, 0)).await.unwrap().into_inner();
        assert!(
            page.encoded_len() <= 4 << 20,
            "{} bytes",
            page.encoded_len()
        );
        assert!(!page.events.is_empty());
        versions.extend(page.events.iter().map(|e| e.version));
        pages += 1;
        if !page.truncated {
            break;
        }
        from = Some(page.events.last().unwrap().version + 1);
    }
    assert_eq!(versions, (0..40).collect::<Vec<_>>());
    assert!(pages >= 10, "{pages} pages");
    // `$all` pages end at a record and say where to go on.
    let (mut position, mut seen) = (0, 0);
    loop {
        let page = c
            .read_all(pb::ReadAllRequest {
                from_position: position,
                limit: 0,
                filter: None,
                consistency: 0,
                as_of: None,
                from_cursor: Default::default(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.encoded_len() <= 4 << 20,
            "{} bytes",
            page.encoded_len()
        );
        seen += page.events.len();
        if page.next_position == position {
            break;
        }
        position = page.next_position;
    }
    assert_eq!(seen, 40);
    // ReadState says it is incomplete when the bytes cut it.
    let state = c
        .read_state(pb::ReadStateRequest {
            stream: "large".into(),
            as_of: None,
            limit: 0,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!state.complete && !state.events.is_empty() && state.events.len() < 40);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enum_values_are_refused_naming_the_field_on_a_single_node() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    c.append(append("s", None, vec![event(&uuid(1), "x")]))
        .await
        .unwrap();
    let consistency = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("`consistency`"),
            "{}",
            status.message()
        );
    };
    consistency(c.read(read("s", None, 9)).await.unwrap_err());
    consistency(
        c.read_all(pb::ReadAllRequest {
            from_position: 0,
            limit: 0,
            filter: None,
            consistency: 9,
            as_of: None,
            from_cursor: Default::default(),
        })
        .await
        .unwrap_err(),
    );
    consistency(
        c.get_stream(pb::GetStreamRequest {
            stream: "s".into(),
            consistency: 9,
        })
        .await
        .unwrap_err(),
    );
    consistency(
        c.read_state(pb::ReadStateRequest {
            stream: "s".into(),
            as_of: None,
            limit: 0,
            consistency: 9,
        })
        .await
        .unwrap_err(),
    );
    let direction = c
        .read(pb::ReadRequest {
            direction: 7,
            ..read("s", None, 0)
        })
        .await
        .unwrap_err();
    assert_eq!(direction.code(), Code::InvalidArgument);
    assert!(
        direction.message().contains("`direction`"),
        "{}",
        direction.message()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_hard_deleted_stream_says_it_is_deleted() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let mut c = node.client().await;
    c.append(append("gone", None, vec![event(&uuid(1), "x")]))
        .await
        .unwrap();
    c.delete_stream(pb::DeleteStreamRequest {
        stream: "gone".into(),
        expected: None,
        hard: true,
    })
    .await
    .unwrap();
    let read = c.read(read("gone", None, 0)).await.unwrap_err();
    assert_eq!(read.code(), Code::FailedPrecondition);
    assert_eq!(
        read.metadata().get(ERROR_KIND_KEY).unwrap(),
        "stream-deleted"
    );
    assert!(
        read.message().contains("hard-deleted"),
        "{}",
        read.message()
    );
    assert!(read.message().contains("read"), "{}", read.message());
    node.stop().await;
}

/// Many calls cancelled at once on one connection (0.3 s deadlines under load, as an outside
/// run saw) can make the server's HTTP/2 layer answer GOAWAY ENHANCE_YOUR_CALM: hyper's guard
/// against rapid-reset floods, which Strata keeps. Whatever the burst did to the connection,
/// the same reconnecting channel serves the next calls: the client recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_after_a_burst_of_cancelled_calls() {
    let node = TestNode::start(ServiceConfig::default()).await;
    let client = StreamsClient::new(node.channel().await);
    let mut calls = Vec::new();
    for i in 0..2000u128 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            let mut request =
                tonic::Request::new(append("burst", None, vec![event(&uuid(i + 1), "x")]));
            request.set_timeout(std::time::Duration::from_micros(50));
            c.append(request).await
        }));
    }
    let mut goaways = 0;
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            let text = format!("{status:?}");
            goaways += usize::from(text.contains("ENHANCE_YOUR_CALM") || text.contains("too_many"));
        }
    }
    eprintln!("burst: {goaways} calls failed by the server's reset guard");
    // The channel reconnects if the server closed the connection: a call or two later it works.
    let mut c = client.clone();
    let mut answered = None;
    for _ in 0..20 {
        match c
            .append(append("after", None, vec![event(&uuid(9_999), "x")]))
            .await
        {
            Ok(r) => {
                answered = Some(r.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let answered = answered.expect("the channel serves calls again after the burst");
    assert_eq!(answered.streams[0].stream, "after");
    node.stop().await;
}
