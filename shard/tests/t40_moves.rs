//! Slot-range moves over a node's real engines (`strata_shard::mover`): a move copies the
//! slots' streams (with the streams about them) and switches the map; a move whose switch
//! fails rolls back (the source takes the slots' writes again, the map unchanged); a fence
//! left by a move that stopped before its switch is lifted by `recover`, a finished move's is
//! kept; slots moved away and back again lift the returning shard's old fence; a split adds a
//! shard (opened by the node's assembly) and moves half a shard to it; bad input is refused
//! with nothing changed.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_engine::fence::{Fence, FenceChange, FENCES_STREAM};
use strata_engine::fs::StdFs;
use strata_engine::index_store::IndexCache;
use strata_engine::sync_round::RoundFs;
use strata_engine::{AppendRequest, Direction, EngineConfig, Error, ExpectedVersion, NewEvent};
use strata_proto::routing::{slot_of, ClusterMap, ShardId, SlotRange};
use strata_shard::clock::SystemWallClock;
use strata_shard::host::{Host, HostParts};
use strata_shard::ids::RandomIds;
use strata_shard::map_cell::MapCell;
use strata_shard::mover::{AddShard, MoveError, Mover, Step, Switch, SwitchError};
use strata_shard::stats::ServiceStats;
use strata_shard::throttle::{Throttle, ThrottleConfig};
use strata_shard::{Backend, ServiceConfig};
use tokio::sync::watch;

const SLOTS: u32 = 64;

struct Node {
    _dir: tempfile::TempDir,
    shards: Vec<(ShardId, Backend)>,
    map: MapCell,
    host: Host,
    _stop: watch::Sender<bool>,
}

/// A node of `shards` engines, assembled as a node without replication assembles them.
async fn node(shards: u32) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let host = Host::new(HostParts {
        data_dir: dir.path().to_path_buf(),
        engine: EngineConfig::default(),
        service: ServiceConfig::default(),
        round: RoundFs::new(Arc::new(StdFs)),
        cache: IndexCache::new(1 << 20).unwrap(),
        stats: Arc::new(ServiceStats::default()),
        stop: stopped,
        raft: None,
    })
    .unwrap();
    for k in 0..shards {
        let id = ShardId(k);
        host.open(id, &host.shard_dir(id), true, (None, 0))
            .await
            .unwrap();
    }
    Node {
        _dir: dir,
        shards: host.set().backends(),
        map: MapCell::new(ClusterMap::even(SLOTS, shards).unwrap()),
        host,
        _stop: stop,
    }
}

/// A mover whose switch takes the map into the cell, or fails while `fail` is set; a shard
/// it adds is opened by the node's assembly.
fn mover(node: &Node, fail: Arc<AtomicBool>) -> Mover {
    let cell = node.map.clone();
    let switch: Switch = Arc::new(move |map| {
        let (cell, fail) = (cell.clone(), fail.clone());
        Box::pin(async move {
            if fail.load(Ordering::Relaxed) {
                return Err(SwitchError::Refused(
                    "the map's store is down (planted)".to_string(),
                ));
            }
            cell.advance(map);
            Ok(())
        })
    });
    mover_switching(node, switch)
}

/// A mover whose switch is `switch`.
fn mover_switching(node: &Node, switch: Switch) -> Mover {
    let (cell, host) = (node.map.clone(), node.host.clone());
    let add_shard: AddShard = Arc::new(move |map, id| {
        let (cell, host) = (cell.clone(), host.clone());
        Box::pin(async move {
            host.add(id, (None, 0))
                .await
                .map_err(|(_, e)| e.to_string())?;
            cell.advance(map);
            Ok(())
        })
    });
    let throttle = ThrottleConfig {
        adaptive: false,
        ..ThrottleConfig::default()
    };
    Mover::new(
        node.host.set().clone(),
        node.map.clone(),
        (switch, add_shard),
        Arc::new(SystemWallClock::default()),
        Arc::new(RandomIds),
        Throttle::new(throttle, Arc::new(ServiceStats::default())),
    )
}

fn backend(node: &Node, id: u32) -> &Backend {
    &node.shards[id as usize].1
}

fn event(n: u128) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::from_u128(n),
        event_type: "T".into(),
        data: Bytes::from(format!("{{\"n\": {n}}}")),
        metadata: Bytes::new(),
    }
}

async fn append(b: &Backend, stream: &str, n: u128) -> Result<u64, Error> {
    let request = AppendRequest::single(stream, ExpectedVersion::Any, vec![event(n)], 1);
    b.append(request)
        .await
        .map(|r| r.streams[0].last_version)
        .map_err(|e| match e {
            strata_raft::ReplicaError::Engine(e) => e,
            other => Error::Unavailable(other.to_string()),
        })
}

/// Streams whose slot is in `range`, and one whose slot is not.
fn streams_in(range: SlotRange) -> (Vec<String>, String) {
    let inside = |s: &String| (range.start..range.end).contains(&slot_of(s, SLOTS));
    let all: Vec<String> = (0..400).map(|k| format!("s-{k}")).collect();
    let outside = all.iter().find(|s| !inside(s)).unwrap().clone();
    (all.into_iter().filter(inside).take(5).collect(), outside)
}

async fn versions(b: &Backend, stream: &str) -> Vec<u64> {
    let stream = stream.to_string();
    b.read(move |r| r.read_stream(&stream, None, Direction::Forwards, 1000))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.version)
        .collect()
}

#[tokio::test]
async fn a_move_copies_the_slots_streams_and_switches_the_map() {
    let n = node(2).await;
    // Shard 0 holds 0..32; move 0..16 to shard 1.
    let range = SlotRange { start: 0, end: 16 };
    let (moving, staying) = streams_in(range);
    let source = backend(&n, 0);
    for (k, s) in moving.iter().enumerate() {
        for v in 0..3 {
            append(source, s, (k * 10 + v) as u128 + 1).await.unwrap();
        }
    }
    // A stream about a moving one moves with it.
    let meta = strata_engine::system::meta_stream(&moving[0]);
    append(source, &meta, 900).await.unwrap();
    append(source, &staying, 901).await.unwrap();
    let m = mover(&n, Arc::default());
    let status = m.run(range, ShardId(1)).await.unwrap();
    assert_eq!(status.step, Step::Done);
    assert_eq!(status.copied_events, moving.len() as u64 * 3 + 1);
    assert_eq!(n.map.get().epoch(), 2);
    assert_eq!(n.map.get().shard_of(&moving[0]), ShardId(1));
    let target = backend(&n, 1);
    for s in &moving {
        assert_eq!(versions(target, s).await, vec![0, 1, 2], "{s}");
        // The source keeps its copy and refuses the stream's writes, naming the target.
        assert!(matches!(
            append(source, s, 1000).await,
            Err(Error::Moved { shard: 1, .. })
        ));
    }
    assert_eq!(versions(target, &meta).await, vec![0]);
    assert!(versions(target, &staying).await.is_empty());
    append(source, &staying, 902).await.unwrap();
    // On the target, the moved streams continue at their versions.
    assert_eq!(append(target, &moving[0], 1001).await.unwrap(), 3);
    // Bad input: nothing changes.
    for (range, to, says) in [
        (SlotRange { start: 0, end: 16 }, 1, "already"),
        (SlotRange { start: 8, end: 24 }, 0, "span shards"),
        (SlotRange { start: 40, end: 80 }, 0, "not a range"),
        (SlotRange { start: 20, end: 24 }, 5, "not a shard"),
    ] {
        match m.run(range, ShardId(to)).await {
            Err(MoveError::Invalid(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("{range} to {to}: {other:?}"),
        }
    }
    assert_eq!(n.map.get().epoch(), 2);
}

#[tokio::test]
async fn a_move_whose_switch_fails_rolls_back() {
    let n = node(2).await;
    let range = SlotRange { start: 0, end: 16 };
    let (moving, _) = streams_in(range);
    let source = backend(&n, 0);
    append(source, &moving[0], 1).await.unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let m = mover(&n, fail.clone());
    match m.run(range, ShardId(1)).await {
        Err(MoveError::Failed(why)) => assert!(why.contains("planted"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.status().unwrap().step, Step::Failed);
    assert_eq!(n.map.get().epoch(), 1, "the map unchanged");
    // The fence was lifted: the source takes the slots' writes again.
    assert_eq!(append(source, &moving[0], 2).await.unwrap(), 1);
    // Tried again with the switch working: the copies of the first try deduplicate.
    fail.store(false, Ordering::Relaxed);
    let done = m.run(range, ShardId(1)).await.unwrap();
    assert_eq!(done.step, Step::Done);
    assert_eq!(versions(backend(&n, 1), &moving[0]).await, vec![0, 1]);
}

#[tokio::test]
async fn recover_lifts_the_fence_of_an_unfinished_move_and_keeps_a_finished_ones() {
    let n = node(2).await;
    let (moving, _) = streams_in(SlotRange { start: 0, end: 16 });
    let source = backend(&n, 0);
    // A move stopped between its fence and its switch: the fence alone is there.
    let fence = Fence {
        slots: SLOTS,
        start: 0,
        end: 16,
        to: 1,
    };
    set_fence(source, fence, 77).await;
    assert!(matches!(
        append(source, &moving[0], 1).await,
        Err(Error::Moved { .. })
    ));
    let m = mover(&n, Arc::default());
    let lifted = m.recover().await.unwrap();
    assert_eq!(lifted, vec![(ShardId(0), fence)]);
    append(source, &moving[0], 2).await.unwrap();
    // A finished move's fence stays: the map gives its slots to the target.
    m.run(SlotRange { start: 0, end: 16 }, ShardId(1))
        .await
        .unwrap();
    assert!(m.recover().await.unwrap().is_empty());
    assert!(matches!(
        append(source, &moving[0], 3).await,
        Err(Error::Moved { .. })
    ));
}

/// Sets `fence` on `shard`'s `$fences`, as a move does before its switch.
async fn set_fence(b: &Backend, fence: Fence, n: u128) {
    let (kind, data) = FenceChange::Set(fence).encode();
    let fenced = AppendRequest::single(
        FENCES_STREAM,
        ExpectedVersion::Any,
        vec![NewEvent {
            event_type: kind.into(),
            data: data.into(),
            ..event(n)
        }],
        1,
    );
    b.append(fenced).await.unwrap();
}

#[tokio::test]
async fn an_abandoned_fence_is_lifted_after_its_grace_unless_a_fence_changed_meanwhile() {
    let n = node(2).await;
    let (moving, _) = streams_in(SlotRange { start: 0, end: 16 });
    let source = backend(&n, 0).clone();
    let fence = |end| Fence {
        slots: SLOTS,
        start: 0,
        end,
        to: 1,
    };
    set_fence(&source, fence(16), 77).await;
    // A new move fences the same shard while the first recovery records the map again.
    let (cell, racing, fenced_again) = (
        n.map.clone(),
        source.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    let once = fenced_again.clone();
    let switch: Switch = Arc::new(move |map| {
        let (cell, racing, once) = (cell.clone(), racing.clone(), once.clone());
        Box::pin(async move {
            if !once.swap(true, Ordering::Relaxed) {
                set_fence(&racing, fence(8), 78).await;
            }
            cell.advance(map);
            Ok(())
        })
    });
    let m = mover_switching(&n, switch);
    // Seen for the first time: not yet lifted, whatever the grace.
    let hour = Duration::from_secs(3600);
    assert!(m.recover_abandoned(1, hour).await.unwrap().is_empty());
    assert!(
        m.recover_abandoned(1, hour).await.unwrap().is_empty(),
        "within its grace"
    );
    // Past the grace, but a fence was set after the fences were read: nothing is lifted.
    let raced = m.recover_abandoned(1, Duration::ZERO).await;
    assert!(fenced_again.load(Ordering::Relaxed));
    let refused = raced.expect_err("the lift expected the fences read");
    assert!(refused.contains("version"), "{refused}");
    assert!(matches!(
        append(&source, &moving[0], 1).await,
        Err(Error::Moved { .. })
    ));
    // Seen anew (the fences changed): lifted once the grace has passed again.
    assert!(m.recover_abandoned(1, hour).await.unwrap().is_empty());
    let mut lifted = m.recover_abandoned(1, Duration::ZERO).await.unwrap();
    lifted.sort_by_key(|(_, f)| f.end);
    assert_eq!(
        lifted,
        vec![(ShardId(0), fence(8)), (ShardId(0), fence(16))]
    );
    append(&source, &moving[0], 2).await.unwrap();
}

#[tokio::test]
async fn slots_moved_away_and_back_are_written_where_they_are() {
    let n = node(2).await;
    let range = SlotRange { start: 0, end: 16 };
    let (moving, _) = streams_in(range);
    let returning = (0..400)
        .map(|k| format!("r-{k}"))
        .find(|s| slot_of(s, SLOTS) < 8)
        .unwrap();
    let (a, b) = (backend(&n, 0), backend(&n, 1));
    append(a, &returning, 1).await.unwrap();
    let m = mover(&n, Arc::default());
    m.run(range, ShardId(1)).await.unwrap();
    append(b, &returning, 2).await.unwrap();
    // Back to shard 0, half of them: its old fence over 0..16 becomes one over 8..16.
    m.run(SlotRange { start: 0, end: 8 }, ShardId(0))
        .await
        .unwrap();
    assert_eq!(n.map.get().epoch(), 3);
    for s in moving.iter().chain([&returning]) {
        let slot = slot_of(s, SLOTS);
        let (home, away) = if slot < 8 { (a, b) } else { (b, a) };
        append(home, s, 100 + u128::from(slot) + 1000 * s.len() as u128)
            .await
            .unwrap();
        assert!(
            matches!(append(away, s, 5000).await, Err(Error::Moved { .. })),
            "{s}"
        );
    }
    // Its first event was here all along, its second came back as a copy.
    assert_eq!(versions(a, &returning).await, vec![0, 1, 2]);
}

/// Slots coming back to a shard they left keep its fence from the first move until the switch
/// gives them back: a router on a map older than that move (a partitioned node) must not write
/// there while the source still owns them. Lifted before the switch, such a write was
/// acknowledged on the old owner and lost when the move back stopped (CI's sharded sweep,
/// seed 1796451701289282829). A move back that fails keeps the fence.
#[tokio::test]
async fn slots_coming_back_stay_fenced_on_their_old_owner_until_the_switch() {
    let n = node(2).await;
    let range = SlotRange { start: 0, end: 16 };
    let stream = streams_in(range).0[0].clone();
    let (a, b) = (backend(&n, 0), backend(&n, 1));
    append(a, &stream, 1).await.unwrap();
    mover(&n, Arc::default())
        .run(range, ShardId(1))
        .await
        .unwrap();
    append(b, &stream, 2).await.unwrap();
    let refused_at_switch = Arc::new(AtomicBool::new(false));
    let fail = Arc::new(AtomicBool::new(true));
    let (cell, old_owner, written) = (n.map.clone(), a.clone(), stream.clone());
    let (seen, failing) = (refused_at_switch.clone(), fail.clone());
    let switch: Switch = Arc::new(move |map| {
        let (cell, old_owner, written) = (cell.clone(), old_owner.clone(), written.clone());
        let (seen, failing) = (seen.clone(), failing.clone());
        Box::pin(async move {
            let refused = append(&old_owner, &written, 9).await;
            seen.store(
                matches!(refused, Err(Error::Moved { shard: 1, .. })),
                Ordering::Relaxed,
            );
            if failing.load(Ordering::Relaxed) {
                return Err(SwitchError::Refused("planted".to_string()));
            }
            cell.advance(map);
            Ok(())
        })
    });
    let m = mover_switching(&n, switch);
    assert!(matches!(
        m.run(range, ShardId(0)).await,
        Err(MoveError::Failed(_))
    ));
    assert!(
        refused_at_switch.load(Ordering::Relaxed),
        "taken before the switch"
    );
    // Rolled back: the old owner still refuses, the owner takes the writes.
    assert!(matches!(
        append(a, &stream, 3).await,
        Err(Error::Moved { shard: 1, .. })
    ));
    assert_eq!(append(b, &stream, 4).await.unwrap(), 2);
    // With the switch working: refused up to the switch, taken after it.
    fail.store(false, Ordering::Relaxed);
    refused_at_switch.store(false, Ordering::Relaxed);
    m.run(range, ShardId(0)).await.unwrap();
    assert!(
        refused_at_switch.load(Ordering::Relaxed),
        "taken before the switch"
    );
    assert_eq!(append(a, &stream, 5).await.unwrap(), 3);
    assert!(matches!(
        append(b, &stream, 6).await,
        Err(Error::Moved { shard: 0, .. })
    ));
}

/// A target already holding other events of a moving stream (a history the copy would not
/// continue): the move fails naming the stream and rolls back; the source keeps the writes.
#[tokio::test]
async fn a_target_whose_stream_differs_fails_the_move_and_it_rolls_back() {
    let n = node(2).await;
    let range = SlotRange { start: 0, end: 16 };
    let (moving, _) = streams_in(range);
    let (source, target) = (backend(&n, 0), backend(&n, 1));
    append(source, &moving[0], 1).await.unwrap();
    append(target, &moving[0], 2).await.unwrap();
    let m = mover(&n, Arc::default());
    match m.run(range, ShardId(1)).await {
        Err(MoveError::Failed(why)) => assert!(why.contains(moving[0].as_str()), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n.map.get().epoch(), 1);
    assert_eq!(append(source, &moving[0], 3).await.unwrap(), 1);
}

/// Waits for the mover's move to end (10 s at most).
async fn ended(m: &Mover) -> strata_shard::mover::MoveStatus {
    for _ in 0..1000 {
        let s = m.status().unwrap();
        if matches!(s.step, Step::Done | Step::Failed) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the move did not end: {:?}", m.status());
}

#[tokio::test]
async fn a_split_adds_a_shard_and_moves_the_upper_half_to_it() {
    let n = node(2).await;
    // Shard 0 holds 0..32: the default split moves 16..32 to a new shard 2.
    let upper = SlotRange { start: 16, end: 32 };
    let (moving, _) = streams_in(upper);
    let (staying, _) = streams_in(SlotRange { start: 0, end: 16 });
    let source = backend(&n, 0);
    for (k, s) in moving.iter().chain(&staying).enumerate() {
        append(source, s, k as u128 + 1).await.unwrap();
    }
    let fail = Arc::new(AtomicBool::new(true));
    let m = mover(&n, fail.clone());
    // The shard is added (epoch 2), then the move fails at its switch and rolls back: the new
    // shard stays, owning nothing.
    m.split(ShardId(0), None).await.unwrap();
    assert_eq!(ended(&m).await.step, Step::Failed);
    assert_eq!(n.host.set().ids(), vec![ShardId(0), ShardId(1), ShardId(2)]);
    assert_eq!(n.map.get().epoch(), 2);
    assert_eq!(n.map.get().empty_shards(), &[ShardId(2)]);
    // Split again: the empty shard is taken, no other is added.
    fail.store(false, Ordering::Relaxed);
    let begun = m.split(ShardId(0), None).await.unwrap();
    assert_eq!((begun.range, begun.to), (upper, ShardId(2)));
    assert_eq!(ended(&m).await.step, Step::Done);
    let map = n.map.get();
    assert_eq!(map.epoch(), 3);
    assert_eq!(map.shards(), vec![ShardId(0), ShardId(1), ShardId(2)]);
    assert!(map.empty_shards().is_empty());
    let added = n.host.set().backend(ShardId(2)).unwrap();
    for s in &moving {
        assert_eq!(map.shard_of(s), ShardId(2));
        assert_eq!(versions(&added, s).await, vec![0], "{s}");
    }
    for s in &staying {
        assert_eq!(map.shard_of(s), ShardId(0));
        assert!(versions(&added, s).await.is_empty(), "{s}");
    }
    // Bad input, each refused with the map unchanged: an unknown shard, a split point outside
    // the shard's ranges or at a range's first slot, a shard with no range to split.
    for (shard, at, says) in [
        (9, None, "no shard 9: the cluster has shards 0, 1, 2"),
        (
            0,
            Some(40),
            "slot 40 is not inside one of shard 0's ranges (0..16)",
        ),
        (0, Some(0), "not inside"),
        (2, Some(16), "not inside"),
    ] {
        match m.split(ShardId(shard), at).await {
            Err(MoveError::Invalid(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("split {shard} at {at:?}: {other:?}"),
        }
    }
    assert_eq!(n.map.get().epoch(), 3);
    // A split while a move runs is refused, naming the move.
    m.start(SlotRange { start: 0, end: 8 }, ShardId(1)).unwrap();
    match m.split(ShardId(1), None).await {
        Err(MoveError::Busy(why)) => assert!(why.contains("in progress"), "{why}"),
        other => panic!("a split during a move: {other:?}"),
    }
    assert_eq!(ended(&m).await.step, Step::Done);
    assert_eq!(
        n.host.set().ids().len(),
        3,
        "no shard added by the refused split"
    );
}

#[tokio::test]
async fn a_move_whose_switch_is_undecided_keeps_its_fence_until_recovery_decides() {
    let n = node(2).await;
    let range = SlotRange { start: 0, end: 16 };
    let (moving, _) = streams_in(range);
    let source = backend(&n, 0);
    append(source, &moving[0], 1).await.unwrap();
    // The map's store does not answer: the map may still be installed.
    let undecided = Arc::new(AtomicBool::new(true));
    let cell = n.map.clone();
    let flag = undecided.clone();
    let switch: Switch = Arc::new(move |map| {
        let (cell, flag) = (cell.clone(), flag.clone());
        Box::pin(async move {
            if flag.load(Ordering::Relaxed) {
                return Err(SwitchError::Unknown("no answer (planted)".into()));
            }
            cell.advance(map);
            Ok(())
        })
    });
    let add_shard: AddShard = Arc::new(|_, _| Box::pin(async { Err("no splits here".into()) }));
    let m = Mover::new(
        n.host.set().clone(),
        n.map.clone(),
        (switch, add_shard),
        Arc::new(SystemWallClock::default()),
        Arc::new(RandomIds),
        Throttle::new(
            ThrottleConfig {
                adaptive: false,
                ..ThrottleConfig::default()
            },
            Arc::new(ServiceStats::default()),
        ),
    );
    match m.run(range, ShardId(1)).await {
        Err(MoveError::Undecided(why)) => assert!(why.contains("planted"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Not rolled back: the source still refuses the slots' writes, the map is unchanged.
    assert!(matches!(
        append(source, &moving[0], 2).await,
        Err(Error::Moved { shard: 1, .. })
    ));
    assert_eq!(n.map.get().epoch(), 1);
    // Recovery decides: it records the map again (so the old switch can no longer land),
    // then lifts the fence.
    undecided.store(false, Ordering::Relaxed);
    let lifted = m.recover().await.unwrap();
    assert_eq!(lifted.len(), 1, "{lifted:?}");
    assert_eq!(n.map.get().epoch(), 2, "the map recorded again");
    assert_eq!(append(source, &moving[0], 3).await.unwrap(), 1);
}
