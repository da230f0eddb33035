//! Appends queued one after another on a replica are decided in that order, however many
//! entries are in flight: what `AppendStream` promises. (The first version handed each entry to
//! Raft from its own task; tasks raced, and a pipelined stream's appends could land in the log
//! out of the order sent — seen through a three-node, four-shard cluster in t20_cluster.)
//! And a call's order fence: once one of its appends is refused, its later ones are refused
//! untried, even after this node has become the leader.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::clock::MonotonicClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::RocksIndexStore;
use strata_engine::{AppendRequest, EngineConfig, ExpectedVersion, NewEvent};
use strata_raft::{
    Fence, GrpcTransport, RaftSettings, Replica, ReplicaError, Shard, ShardOptions, StrataNode,
};

fn event(n: u64) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::from_u128(u128::from(n) + 1),
        event_type: "T".into(),
        data: bytes::Bytes::from(n.to_string()),
        metadata: bytes::Bytes::new(),
    }
}

/// A one-member replica in `dir`, its group not formed yet (no leader until `init`).
async fn unformed(dir: &std::path::Path) -> Replica {
    let shard = Shard::open(ShardOptions {
        node_id: 1,
        dir: dir.to_path_buf(),
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
    Replica::start(
        0,
        shard,
        me,
        members,
        RaftSettings::default(),
        Arc::new(GrpcTransport::default()),
    )
    .await
    .unwrap()
}

/// Forms the one-member group and waits for it to lead.
async fn form(replica: &Replica) {
    replica.init().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while replica.leader().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_queued_in_order_are_decided_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let replica = unformed(dir.path()).await;
    form(&replica).await;
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

/// The answer of an append on the call of `fence`, refused when queued or later.
async fn decided(
    replica: &Replica,
    request: AppendRequest,
    fence: &Fence,
) -> Result<strata_engine::AppendResult, ReplicaError> {
    match replica.submit_fenced(request, Some(fence)).await {
        Ok(answer) => answer.await,
        Err(e) => Err(e),
    }
}

/// The case the fence is for: a node refuses a call's first append while it is not the leader
/// (a candidate), wins its election, and would take the call's next append, which then lands
/// before the client's retry of the first. With the fence the next one is refused untried;
/// another call's append (its own fence) goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_append_was_refused_is_refused_untried_after_the_node_leads() {
    let dir = tempfile::tempdir().unwrap();
    let replica = unformed(dir.path()).await;
    let call = Fence::new();
    let first = AppendRequest::single("s", ExpectedVersion::Any, vec![event(1)], 1);
    let refused = decided(&replica, first, &call).await;
    assert!(
        matches!(refused, Err(ReplicaError::NotLeader { .. })),
        "{refused:?}"
    );
    assert!(call.is_set(), "a refusal sets the call's fence");
    form(&replica).await;
    let second = AppendRequest::single("s", ExpectedVersion::Any, vec![event(2)], 2);
    let untried = decided(&replica, second.clone(), &call).await;
    assert!(
        matches!(untried, Err(ReplicaError::NotTried)),
        "{untried:?}"
    );
    // The same append on a call of its own (the client's retry on a new call) is appended.
    let other = Fence::new();
    let taken = decided(&replica, second, &other).await.unwrap();
    assert_eq!(
        taken.streams[0].first_version, 0,
        "nothing went in before it"
    );
    // A final answer (a wrong expected version) does not fence the call: its next append goes.
    let wrong = AppendRequest::single("s", ExpectedVersion::Exact(7), vec![event(3)], 3);
    let answer = decided(&replica, wrong, &other).await;
    assert!(
        matches!(
            answer,
            Err(ReplicaError::Engine(
                strata_engine::Error::WrongExpectedVersion { .. }
            ))
        ),
        "{answer:?}"
    );
    assert!(!other.is_set());
    let next = AppendRequest::single("s", ExpectedVersion::Exact(0), vec![event(4)], 4);
    let next = decided(&replica, next, &other).await.unwrap();
    assert_eq!(next.streams[0].first_version, 1);
    replica.shutdown().await;
}
