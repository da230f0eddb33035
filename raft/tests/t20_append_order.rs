//! Appends queued one after another on a replica are decided in that order, however many
//! entries are in flight: what `AppendStream` promises. (The first version handed each entry to
//! Raft from its own task; tasks raced, and a pipelined stream's appends could land in the log
//! out of the order sent — seen through a three-node, four-shard cluster in t20_cluster.)

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::clock::MonotonicClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::RocksIndexStore;
use strata_engine::{AppendRequest, EngineConfig, ExpectedVersion, NewEvent};
use strata_raft::{GrpcTransport, RaftSettings, Replica, Shard, ShardOptions, StrataNode};

fn event(n: u64) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::from_u128(u128::from(n) + 1),
        event_type: "T".into(),
        data: bytes::Bytes::from(n.to_string()),
        metadata: bytes::Bytes::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_queued_in_order_are_decided_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(ShardOptions {
        node_id: 1,
        dir: dir.path().to_path_buf(),
        engine: EngineConfig::default(),
        fs: Arc::new(StdFs),
        clock: Arc::new(MonotonicClock::default()),
        open_index: Arc::new(|p| Ok(Box::new(RocksIndexStore::open(p)?))),
        log_sync: Default::default(),
        incarnation: 0,
    })
    .unwrap();
    let me = StrataNode {
        addr: "127.0.0.1:1".into(),
        raft_addr: "127.0.0.1:1".into(),
        incarnation: 0,
    };
    let members = BTreeMap::from([(1, me.clone())]);
    let replica = Replica::start(
        0,
        shard,
        me,
        members,
        RaftSettings::default(),
        Arc::new(GrpcTransport::default()),
    )
    .await
    .unwrap();
    replica.init().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while replica.leader().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two streams, so entries pair them and many are in flight at once.
    let mut pending = Vec::new();
    for n in 0..600u64 {
        let stream = if n % 2 == 0 { "a" } else { "b" };
        let request = AppendRequest::single(stream, ExpectedVersion::Any, vec![event(n)], n + 1);
        pending.push((stream, replica.submit(request).await.unwrap()));
    }
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, (stream, answer)) in pending.into_iter().enumerate() {
        let result = answer.await.unwrap();
        let expected = next.entry(stream).or_default();
        assert_eq!(
            result.streams[0].first_version, *expected,
            "append {i} on {stream} decided out of the order queued"
        );
        *expected += 1;
    }
    replica.shutdown().await;
}
