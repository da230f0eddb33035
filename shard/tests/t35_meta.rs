//! The metadata group on one node (a one-voter group over the real engine and Raft code): the
//! first map is recorded by the leader, a change is a compare-and-set on the map's history (a
//! second change computed from the same map is refused and changes nothing), and a node
//! following the group routes by the newest map and caches it in `cluster.map`.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::fs::StdFs;
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

    fn open(&self, _shard: ShardId, _with: (BTreeMap<u64, StrataNode>, u64)) -> Opening<'_> {
        Box::pin(async { Err("planted: no disk".to_string()) })
    }

    fn incarnation(&self, _shard: ShardId) -> Option<u64> {
        Some(0)
    }

    fn form(&self, _shard: ShardId) -> Forming<'_> {
        Box::pin(async { Err("planted: no disk".to_string()) })
    }
}

/// A follower of `meta` into `cell` over `groups`, its cache in `dir`, running until `stop`.
fn following(
    meta: &Meta,
    cell: &MapCell,
    dir: &std::path::Path,
    groups: Arc<dyn Groups>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let follower = Follower {
        meta: meta.clone(),
        cell: cell.clone(),
        dir: dir.to_path_buf(),
        groups,
        fs: Arc::new(StdFs),
        clock: Arc::new(SystemWallClock::default()),
    };
    tokio::spawn(follow(follower, stop))
}

async fn one_voter_meta(dir: &std::path::Path) -> Meta {
    let options = ShardOptions::on_disk(1, &dir.join("meta"), EngineConfig::default());
    let shard = Shard::open(options).unwrap();
    let me = StrataNode {
        addr: "127.0.0.1:1".into(),
        raft_addr: "127.0.0.1:1".into(),
        incarnation: 0,
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
    // It elects itself a moment later: a proposal before then is refused (NotLeader).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while replica.leader().map(|(id, _)| id) != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the one voter never led"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let refusing = Arc::new(Refusing(first.shards()));
    let task = following(&meta, &cell, tmp.path(), refusing, stop);

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

/// How a shard was opened: its group's members and its new replica's incarnation.
type Opened = (BTreeMap<u64, StrataNode>, u64);

/// Holds `held` (with their replicas' incarnations) and every shard it opens, recording how
/// it opened each, which it formed and which it closed.
#[derive(Default)]
struct Recording {
    opened: std::sync::Mutex<BTreeMap<ShardId, Opened>>,
    held: std::sync::Mutex<BTreeMap<ShardId, u64>>,
    formed: std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
    closed: std::sync::Mutex<Vec<ShardId>>,
}

impl Recording {
    fn holding(shards: &[(ShardId, u64)]) -> Recording {
        Recording {
            held: std::sync::Mutex::new(shards.iter().copied().collect()),
            ..Recording::default()
        }
    }
}

impl Groups for Recording {
    fn close(&self, shard: ShardId) -> Opening<'_> {
        self.held.lock().unwrap().remove(&shard);
        self.closed.lock().unwrap().push(shard);
        Box::pin(async { Ok(()) })
    }

    fn held(&self) -> Vec<ShardId> {
        self.held.lock().unwrap().keys().copied().collect()
    }

    fn open(&self, shard: ShardId, with: (BTreeMap<u64, StrataNode>, u64)) -> Opening<'_> {
        self.held.lock().unwrap().insert(shard, with.1);
        self.opened.lock().unwrap().insert(shard, with);
        Box::pin(async { Ok(()) })
    }

    fn incarnation(&self, shard: ShardId) -> Option<u64> {
        self.held.lock().unwrap().get(&shard).copied()
    }

    fn form(&self, shard: ShardId) -> Forming<'_> {
        self.formed.lock().unwrap().insert(shard);
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
    let held: Vec<(ShardId, u64)> = first.shards().into_iter().map(|s| (s, 0)).collect();
    let groups = Arc::new(Recording::holding(&held));
    let task = following(&meta, &cell, tmp.path(), groups.clone(), stop);
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
    let opened = groups.opened.lock().unwrap().clone();
    let (members, incarnation) = opened.get(&ShardId(2)).expect("shard 2 opened");
    assert_eq!(*incarnation, 0, "a founder's replica is incarnation 0");
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
        groups.formed.lock().unwrap().contains(&ShardId(3))
    })
    .await;
    assert!(
        !groups.formed.lock().unwrap().contains(&ShardId(2)),
        "only a founder forms a shard"
    );
    stop_tx.send_replace(true);
    task.await.unwrap();
    meta.replica().shutdown().await;
}

/// A node that missed the map ending a move of its replica away (down, or slow) still holds
/// that replica when a later move brings the shard back: the follower replaces it with the
/// move's own (a new incarnation) rather than take the old one up again — the group removed
/// it, and a member whose membership is stale would take it for the replica it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_a_missed_map_took_away_is_replaced_when_a_move_brings_the_shard_back() {
    let tmp = tempfile::tempdir().unwrap();
    let first = layout(tmp.path(), Some(2)).unwrap().map;
    let meta = one_voter_meta(tmp.path()).await;
    meta.propose(&first, 1).await.unwrap();
    // Epoch 2 moves shard 1 off this node (1); epoch 3 begins moving it back.
    let away = first.with_replicas(ShardId(1), &[2, 3]).unwrap();
    meta.propose(&away, 1).await.unwrap();
    let back = away
        .with_replica_move_begun(ShardId(1), &[2, 3], (2, 1))
        .unwrap();
    meta.propose(&back, 1).await.unwrap();
    // The follower starts now: it never sees epoch 2.
    let groups = Arc::new(Recording::holding(&[(ShardId(0), 0), (ShardId(1), 0)]));
    let cell = MapCell::new(first.clone());
    let (stop_tx, stop) = watch::channel(false);
    let task = following(&meta, &cell, tmp.path(), groups.clone(), stop);
    eventually("the follower takes epoch 3", || cell.get().epoch() == 3).await;
    assert_eq!(*groups.closed.lock().unwrap(), vec![ShardId(1)]);
    let opened = groups.opened.lock().unwrap().clone();
    let (_, incarnation) = opened.get(&ShardId(1)).expect("shard 1 opened again");
    assert_eq!(*incarnation, back.epoch(), "the move's own replica");
    assert_eq!(groups.incarnation(ShardId(1)), Some(3));
    assert!(!opened.contains_key(&ShardId(0)), "shard 0 was never moved");
    stop_tx.send_replace(true);
    task.await.unwrap();
    meta.replica().shutdown().await;
}
