//! The faults a run injects, one at a time: `--fault-secs` healthy, then a fault for
//! `--fault-secs`, healed, and so on until the workload's time is up.
//!
//! Partitions cut Raft links through the run's proxies; clients still reach every node (so a
//! deposed leader still gets their requests, as a real client behind a load balancer would):
//!
//! - `isolate-leader`: the leader alone against the rest, both ways;
//! - `majority`: a random minority against the majority, both ways;
//! - `bridge`: two halves that cannot talk, and one node talking to both (Jepsen's bridge;
//!   on three nodes: 1 – 2 – 3 with 1 and 3 cut);
//! - `one-way`: the leader's connections to the others are cut, theirs to it are not (it can
//!   neither send heartbeats nor answer; it still hears them);
//! - `partition`: one of the four above, at random each time.
//!
//! Processes:
//!
//! - `kill`: SIGKILL of a node (the leader half the time), started again at the heal;
//! - `kill-all`: SIGKILL of every node at once (a power cut, when the nodes run on a disk
//!   that loses unsynced writes: `--lose-unsynced`), all started again at the heal;
//! - `pause`: SIGSTOP of a node (the leader half the time), SIGCONT at the heal;
//! - `membership`: a node (the leader half the time) removed from the cluster, added back at
//!   the heal (as a learner that catches up, then a voter);
//! - `none`: no fault (a baseline).
//!
//! Network quality and time:
//!
//! - `regions`: the nodes split in two "regions"; every link between them delayed 30–100 ms
//!   one way (plus up to 20 ms of jitter) and 2–5 % of its chunks "lost" (delayed by a TCP
//!   retransmission, 200 ms);
//! - `clock` (test builds): one or more nodes' wall clocks stepped by ±0.1–10 s and drifting
//!   by up to ±2000 ppm (`strata_engine::planted::clock_offset_us`), reset at the heal.
//!
//! And `all`: each class in turn ([`CLASSES`]: partition, kill, pause, membership, regions,
//! then clock where the build can skew clocks), one class per fault — every class in one run.

use serde::Serialize;

use super::cluster::LocalCluster;
use super::proxy::Shape;
use super::rng::Rng;
use crate::Failure;

/// Which faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// No fault.
    None,
    /// A network partition of a random kind (isolate-leader, majority, bridge, one-way).
    Partition,
    /// The leader cut off from the rest.
    IsolateLeader,
    /// A minority cut off from the majority.
    Majority,
    /// Two halves joined by one node.
    Bridge,
    /// The leader's outgoing links cut.
    OneWay,
    /// SIGKILL and restart of one node.
    Kill,
    /// SIGKILL and restart of every node.
    KillAll,
    /// SIGSTOP and SIGCONT.
    Pause,
    /// A node removed from the cluster and added back.
    Membership,
    /// Slow, lossy links between two groups of nodes.
    Regions,
    /// Skewed, drifting wall clocks (test builds).
    Clock,
    /// Each class in turn, one per fault (clock only in test builds).
    All,
}

/// The classes `all` takes in turn.
pub const CLASSES: [NemesisKind; 6] = [
    NemesisKind::Partition,
    NemesisKind::Kill,
    NemesisKind::Pause,
    NemesisKind::Membership,
    NemesisKind::Regions,
    NemesisKind::Clock,
];

/// The kind of a run's `n`th fault (0-based) under `kind`: itself, or under `all` the next of
/// [`CLASSES`], skipping clock when the nodes' clocks cannot be skewed (`clocks` false) and
/// membership when the cluster has several shards (`membership` false).
pub fn turn(kind: NemesisKind, n: usize, clocks: bool, membership: bool) -> NemesisKind {
    if kind != NemesisKind::All {
        return kind;
    }
    let classes: Vec<NemesisKind> = CLASSES
        .into_iter()
        .filter(|c| *c != NemesisKind::Clock || clocks)
        .filter(|c| *c != NemesisKind::Membership || membership)
        .collect();
    classes[n % classes.len()]
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Its class (`partition`, `kill`, …: the nemesis, or under `all` the class of its turn).
    pub class: String,
    /// What it was.
    pub what: String,
    /// When it began, µs since the run began.
    pub start_us: u64,
    /// When it was healed.
    pub end_us: u64,
}

/// The fault under way, to heal.
#[derive(Debug)]
pub enum Active {
    /// These directed links cut.
    Cut(Vec<(u64, u64)>),
    /// These nodes killed.
    Killed(Vec<u64>),
    /// A node paused.
    Paused(u64),
    /// A node removed from the cluster.
    Removed(u64),
    /// These directed links slowed down.
    Shaped(Vec<(u64, u64)>),
    /// These nodes' clocks skewed.
    Skewed(Vec<u64>),
}

/// A node to hit: the leader half the time (when one is known), else any.
async fn victim(cluster: &LocalCluster, rng: &mut Rng) -> u64 {
    let ids = cluster.ids();
    if rng.below(2) == 0 {
        if let Some(leader) = cluster.leader().await {
            return leader;
        }
    }
    pick(&ids, rng)
}

fn pick(ids: &[u64], rng: &mut Rng) -> u64 {
    ids.get(rng.below(ids.len() as u64) as usize)
        .copied()
        .unwrap_or(1)
}

fn shuffled(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut v = ids.to_vec();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

/// Every link between `a` and `b`, both ways.
fn between(a: &[u64], b: &[u64]) -> Vec<(u64, u64)> {
    let mut links = Vec::new();
    for i in a {
        for j in b {
            links.push((*i, *j));
            links.push((*j, *i));
        }
    }
    links
}

/// The links a partition of `kind` cuts now, and what it is in words.
async fn partition(
    kind: NemesisKind,
    cluster: &LocalCluster,
    rng: &mut Rng,
) -> (String, Vec<(u64, u64)>) {
    let ids = cluster.ids();
    let kind = match kind {
        NemesisKind::Partition => [
            NemesisKind::IsolateLeader,
            NemesisKind::Majority,
            NemesisKind::Bridge,
            NemesisKind::OneWay,
        ][rng.below(4) as usize],
        k => k,
    };
    let leader = match kind {
        NemesisKind::IsolateLeader | NemesisKind::OneWay => cluster.leader().await,
        _ => None,
    };
    let leader = leader.unwrap_or_else(|| pick(&ids, rng));
    let others =
        |x: &[u64]| -> Vec<u64> { ids.iter().copied().filter(|i| !x.contains(i)).collect() };
    match kind {
        NemesisKind::IsolateLeader => {
            let rest = others(&[leader]);
            (
                format!("isolated leader {leader} from {rest:?}"),
                between(&[leader], &rest),
            )
        }
        NemesisKind::OneWay => {
            let rest = others(&[leader]);
            (
                format!("one-way: leader {leader} cannot reach {rest:?} (they reach it)"),
                rest.iter().map(|j| (leader, *j)).collect(),
            )
        }
        NemesisKind::Bridge => {
            let order = shuffled(&ids, rng);
            let half = ids.len() / 2;
            let (a, rest) = order.split_at(half);
            let (bridge, b) = rest.split_at(1);
            (
                format!("bridge: {a:?} | {b:?}, joined by {bridge:?}"),
                between(a, b),
            )
        }
        _ => {
            let mut minority = shuffled(&ids, rng);
            minority.truncate((ids.len() - 1) / 2);
            let majority = others(&minority);
            (
                format!("partition {minority:?} | {majority:?}"),
                between(&minority, &majority),
            )
        }
    }
}

/// Begins a fault of `kind`; returns what it is and how to heal it (`None` for `none`).
pub async fn begin(
    kind: NemesisKind,
    cluster: &mut LocalCluster,
    rng: &mut Rng,
) -> Option<(String, Active)> {
    match kind {
        NemesisKind::None | NemesisKind::All => None,
        NemesisKind::Partition
        | NemesisKind::IsolateLeader
        | NemesisKind::Majority
        | NemesisKind::Bridge
        | NemesisKind::OneWay => {
            let (what, links) = partition(kind, cluster, rng).await;
            cluster.cut(&links, true);
            Some((what, Active::Cut(links)))
        }
        NemesisKind::Kill => {
            let id = victim(cluster, rng).await;
            cluster.kill(id).await;
            Some((format!("kill -9 node {id}"), Active::Killed(vec![id])))
        }
        NemesisKind::KillAll => {
            let ids = cluster.ids();
            cluster.kill_all(&ids);
            Some((format!("kill -9 nodes {ids:?}"), Active::Killed(ids)))
        }
        NemesisKind::Pause => {
            let id = victim(cluster, rng).await;
            cluster.pause(id, true);
            Some((format!("pause node {id}"), Active::Paused(id)))
        }
        NemesisKind::Membership => {
            let id = victim(cluster, rng).await;
            match cluster.remove(id).await {
                Ok(()) => Some((format!("removed node {id}"), Active::Removed(id))),
                Err(e) => Some((
                    format!("removing node {id} failed: {e}"),
                    Active::Cut(Vec::new()),
                )),
            }
        }
        NemesisKind::Regions => {
            let ids = shuffled(&cluster.ids(), rng);
            let split = 1 + rng.below(ids.len() as u64 / 2) as usize;
            let (a, b) = ids.split_at(split);
            let shape = Shape {
                delay_ms: 30 + rng.below(71),
                jitter_ms: 20,
                loss_per_mille: 20 + rng.below(31),
            };
            let links = between(a, b);
            cluster.shape(&links, shape);
            Some((
                format!(
                    "regions {a:?} | {b:?}: {} ms (+ up to {} ms), {}‰ lost",
                    shape.delay_ms, shape.jitter_ms, shape.loss_per_mille
                ),
                Active::Shaped(links),
            ))
        }
        NemesisKind::Clock => {
            let ids = shuffled(&cluster.ids(), rng);
            let n = 1 + rng.below(ids.len() as u64) as usize;
            let mut what = Vec::new();
            for id in &ids[..n] {
                let step_ms = 100 + rng.below(9_901) as i64;
                let sign = if rng.below(2) == 0 { -1 } else { 1 };
                let drift = rng.below(4_001) as i64 - 2_000;
                if let Err(e) = cluster.skew(*id, sign * step_ms * 1000, drift) {
                    return Some((
                        format!("skewing clocks failed: {}", e.message),
                        Active::Cut(Vec::new()),
                    ));
                }
                what.push(format!("node {id} {:+} ms, {drift:+} ppm", sign * step_ms));
            }
            Some((
                format!("clocks: {}", what.join(", ")),
                Active::Skewed(ids[..n].to_vec()),
            ))
        }
    }
}

/// Heals `active`; returns a note on how it went when worth telling (a node that could not be
/// added back).
pub async fn heal(active: Active, cluster: &mut LocalCluster) -> Result<Option<String>, Failure> {
    match active {
        Active::Cut(links) => cluster.cut(&links, false),
        Active::Killed(ids) => ids.into_iter().try_for_each(|id| cluster.restart(id))?,
        Active::Paused(id) => cluster.pause(id, false),
        Active::Removed(id) => {
            if let Err(e) = cluster.add(id).await {
                return Ok(Some(format!("adding node {id} back failed: {e}")));
            }
        }
        Active::Shaped(links) => cluster.shape(&links, Shape::default()),
        Active::Skewed(ids) => ids.into_iter().try_for_each(|id| cluster.skew(id, 0, 0))?,
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_takes_every_class_in_turn() {
        let with: Vec<_> = (0..7)
            .map(|n| turn(NemesisKind::All, n, true, true))
            .collect();
        assert_eq!(with[..6], CLASSES);
        assert_eq!(with[6], NemesisKind::Partition);
        let without: Vec<_> = (0..6)
            .map(|n| turn(NemesisKind::All, n, false, true))
            .collect();
        assert!(!without.contains(&NemesisKind::Clock));
        assert_eq!(without[5], NemesisKind::Partition);
        let sharded: Vec<_> = (0..5)
            .map(|n| turn(NemesisKind::All, n, true, false))
            .collect();
        assert!(!sharded.contains(&NemesisKind::Membership));
        assert!(sharded.contains(&NemesisKind::Clock));
        assert_eq!(turn(NemesisKind::Kill, 3, true, true), NemesisKind::Kill);
    }

    #[test]
    fn between_cuts_every_link_both_ways() {
        let mut links = between(&[1], &[2, 3]);
        links.sort_unstable();
        assert_eq!(links, [(1, 2), (1, 3), (2, 1), (3, 1)]);
    }
}
