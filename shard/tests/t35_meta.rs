//! The metadata group on one node (a one-voter group over the real engine and Raft code): the
//! first map is recorded by the leader, a change is a compare-and-set on the map's history (a
//! second change computed from the same map is refused and changes nothing), and a node
//! following the group routes by the newest map and caches it in `cluster.map`.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::clock::MonotonicClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::RocksIndexStore;
use strata_engine::EngineConfig;
use strata_proto::routing::{ClusterMap, ShardId, SlotRange};
use strata_raft::{
    GrpcTransport, RaftSettings, Replica, ReplicaError, Shard, ShardOptions, StrataNode,
};
use strata_shard::clock::SystemWallClock;
use strata_shard::map_cell::{MapCell, MAP_FILE};
use strata_shard::meta::{follow, Follower, Groups, Meta, META_GROUP};
use strata_shard::shards::layout;
use tokio::sync::watch;

/// What `Groups::open` and `close` answer.
type Opening<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
/// What `Groups::form` answers.
type Forming<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + 'a>>;

/// Holds the shards it was given and cannot open another (a node whose disk refuses).
struct Refusing(Vec<ShardId>);

impl Groups for Refusing {
    fn close(&self, _shard: ShardId) -> Opening<'_> {
        Box::pin(async { Err("planted: not removable".to_string()) })
    }

    fn held(&self) -> Vec<ShardId> {
        self.0.clone()
    }

    fn open(&self, _shard: ShardId, _members: BTreeMap<u64, StrataNode>) -> Opening<'_> {
        Box::pin(async { Err("planted: no disk".to_string()) })
    }

    fn form(&self, _shard: ShardId) -> Forming<'_> {
        Box::pin(async { Err("planted: no disk".to_string()) })
    }
}

async fn one_voter_meta(dir: &std::path::Path) -> Meta {
    let shard = Shard::open(ShardOptions {
        node_id: 1,
        dir: dir.join("meta"),
        engine: EngineConfig::default(),
        fs: Arc::new(StdFs),
        clock: Arc::new(MonotonicClock::default()),
        open_index: Arc::new(|p| Ok(Box::new(RocksIndexStore::open(p)?))),
        log_sync: Default::default(),
    })
    .unwrap();
    let me = StrataNode {
        addr: "127.0.0.1:1".into(),
        raft_addr: "127.0.0.1:1".into(),
    };
    let replica = Replica::start(
        u64::from(META_GROUP),
        shard,
        me.clone(),
        BTreeMap::from([(1, me)]),
        RaftSettings::default(),
        Arc::new(GrpcTransport::default()),
    )
    .await
    .unwrap();
    replica.init().await.unwrap();
    Meta::new(replica)
}

/// Waits until `check` holds (10 s at most).
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_changes_by_compare_and_set_and_followers_route_by_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let first = layout(tmp.path(), Some(4)).unwrap().map;
    assert_eq!(first.epoch(), 1);
    let meta = one_voter_meta(tmp.path()).await;
    let cell = MapCell::new(first.clone());
    let (stop_tx, stop) = watch::channel(false);
    let follower = Follower {
        meta: meta.clone(),
        cell: cell.clone(),
        dir: tmp.path().to_path_buf(),
        groups: Arc::new(Refusing(first.shards())),
        fs: Arc::new(StdFs),
        clock: Arc::new(SystemWallClock::default()),
    };
    let task = tokio::spawn(follow(follower, stop));

    // The leader records the first map.
    eventually("the first map is recorded", || {
        meta.latest()
            .unwrap()
            .is_some_and(|(v, m)| v == 0 && m == first)
    })
    .await;

    // Two changes computed from epoch 1: the first wins, the second is refused.
    let moved = first
        .with_range_moved(SlotRange { start: 0, end: 16 }, ShardId(3))
        .unwrap();
    let other = first
        .with_range_moved(
            SlotRange {
                start: 100,
                end: 116,
            },
            ShardId(2),
        )
        .unwrap();
    assert_eq!((moved.epoch(), other.epoch()), (2, 2));
    meta.propose(&moved, 1).await.unwrap();
    match meta.propose(&other, 2).await {
        Err(ReplicaError::Engine(strata_engine::Error::WrongExpectedVersion { .. })) => {}
        other => panic!("a second change from the same map: {other:?}"),
    }
    // A retry of the winner is answered as it was, and writes nothing more.
    meta.propose(&moved, 3).await.unwrap();
    let (version, latest) = meta.latest().unwrap().unwrap();
    assert_eq!((version, &latest), (1, &moved));

    // The follower routes by it and caches it for a restart.
    eventually("the follower takes epoch 2", || cell.get().epoch() == 2).await;
    assert_eq!(*cell.get(), moved);
    let cached =
        ClusterMap::decode(&std::fs::read_to_string(tmp.path().join(MAP_FILE)).unwrap()).unwrap();
    assert_eq!(cached, moved);
    assert_eq!(layout(tmp.path(), None).unwrap().map, moved);

    // A map adding a shard this node cannot open is not adopted, and the node refuses to
    // route (it would send the shard's slots nowhere).
    let added = moved.with_shard_added(ShardId(4)).unwrap();
    meta.propose(&added, 4).await.unwrap();
    eventually("the node refuses to route", || cell.routable().is_err()).await;
    let why = cell.routable().unwrap_err();
    assert!(
        why.contains("adds shard 4") && why.contains("planted: no disk"),
        "{why}"
    );
    assert_eq!(
        cell.get().epoch(),
        2,
        "a map of a shard not opened was adopted"
    );

    stop_tx.send_replace(true);
    task.await.unwrap();
    meta.replica().shutdown().await;
}

/// Holds its shards, records the members each shard it opens is configured with, and the
/// shards it is asked to form.
#[derive(Default)]
struct Recording(
    std::sync::Mutex<BTreeMap<ShardId, BTreeMap<u64, StrataNode>>>,
    Vec<ShardId>,
    std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
);

impl Groups for Recording {
    fn close(&self, _shard: ShardId) -> Opening<'_> {
        Box::pin(async { Err("planted: not removable".to_string()) })
    }

    fn held(&self) -> Vec<ShardId> {
        let mut held = self.1.clone();
        held.extend(self.0.lock().unwrap().keys());
        held
    }

    fn open(&self, shard: ShardId, members: BTreeMap<u64, StrataNode>) -> Opening<'_> {
        self.0.lock().unwrap().insert(shard, members);
        Box::pin(async { Ok(()) })
    }

    fn form(&self, shard: ShardId) -> Forming<'_> {
        self.2.lock().unwrap().insert(shard);
        Box::pin(async { Ok(false) })
    }
}

/// A shard a split added is opened configured with the founders its map records, not with
/// the metadata group's voters of the moment (a node that joined since must not form it);
/// a founder forms the group it opened, a node that is none does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_shard_is_opened_with_the_founders_its_map_records() {
    let tmp = tempfile::tempdir().unwrap();
    let first = layout(tmp.path(), Some(2)).unwrap().map;
    let meta = one_voter_meta(tmp.path()).await;
    let cell = MapCell::new(first.clone());
    let (stop_tx, stop) = watch::channel(false);
    let groups = Arc::new(Recording(
        Default::default(),
        first.shards(),
        Default::default(),
    ));
    let follower = Follower {
        meta: meta.clone(),
        cell: cell.clone(),
        dir: tmp.path().to_path_buf(),
        groups: groups.clone(),
        fs: Arc::new(StdFs),
        clock: Arc::new(SystemWallClock::default()),
    };
    let task = tokio::spawn(follow(follower, stop));
    eventually("the first map is recorded", || {
        meta.latest().unwrap().is_some()
    })
    .await;
    let founder = |id: u64| strata_proto::routing::Founder {
        id,
        addr: format!("10.0.0.{id}:5000"),
        raft_addr: format!("10.0.0.{id}:6000"),
    };
    let added = first
        .with_shard_added(ShardId(2))
        .unwrap()
        .with_founders(ShardId(2), &[founder(7), founder(8), founder(9)])
        .unwrap();
    meta.propose(&added, 1).await.unwrap();
    eventually("the follower takes epoch 2", || cell.get().epoch() == 2).await;
    let opened = groups.0.lock().unwrap().clone();
    let members = opened.get(&ShardId(2)).expect("shard 2 opened");
    assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![7, 8, 9]);
    assert_eq!(members[&8].raft_addr, "10.0.0.8:6000");
    assert!(
        !members.contains_key(&1),
        "the metadata group's voter is no founder"
    );
    // Every founder forms the group it opened (the same one); this node is none of shard 2's.
    let also = added
        .with_shard_added(ShardId(3))
        .unwrap()
        .with_founders(ShardId(3), &[founder(1), founder(8), founder(9)])
        .unwrap();
    meta.propose(&also, 1).await.unwrap();
    eventually("a founder forms its shard", || {
        groups.2.lock().unwrap().contains(&ShardId(3))
    })
    .await;
    assert!(
        !groups.2.lock().unwrap().contains(&ShardId(2)),
        "only a founder forms a shard"
    );
    stop_tx.send_replace(true);
    task.await.unwrap();
    meta.replica().shutdown().await;
}
