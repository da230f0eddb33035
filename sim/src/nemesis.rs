//! What a simulated run is given and reports ([`RunConfig`], [`RunReport`]), and the nemesis
//! that injects its faults ([`nemesis`], by [`FaultSet`] class), shared by the one-group runs
//! of [`crate::run`] and the sharded runs of [`crate::sharded`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Membership, ServerState};
use strata_engine::sim_fs::CrashMode;
use strata_raft::types::NodeId;
use strata_raft::StrataNode;
use tokio::time::Instant;

use crate::check::Violation;
use crate::cluster::{addr, lock, Cluster, Down};

/// Fault classes a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSet {
    /// Message delay, loss, duplication (and so reordering).
    pub network: bool,
    /// Partitions: symmetric, one-way, the leader isolated.
    pub partitions: bool,
    /// Power loss (unsynced writes lost or torn) and process kills, with restarts.
    pub crashes: bool,
    /// Bit flips in sealed segments, a full disk, failing fsyncs, slow syncs.
    pub disk: bool,
    /// Clock drift (timer pace) and skew (wall clock).
    pub clock: bool,
    /// Adding and removing members.
    pub membership: bool,
}

impl FaultSet {
    /// Every class.
    pub const ALL: FaultSet = FaultSet {
        network: true,
        partitions: true,
        crashes: true,
        disk: true,
        clock: true,
        membership: true,
    };

    /// Parses `all`, `none`, or a comma list of `network,partitions,crashes,disk,clock,membership`.
    pub fn parse(text: &str) -> Result<FaultSet, String> {
        let mut f = FaultSet {
            network: false,
            partitions: false,
            crashes: false,
            disk: false,
            clock: false,
            membership: false,
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => f = FaultSet::ALL,
                "none" => {}
                "network" => f.network = true,
                "partitions" => f.partitions = true,
                "crashes" => f.crashes = true,
                "disk" => f.disk = true,
                "clock" => f.clock = true,
                "membership" => f.membership = true,
                other => {
                    return Err(format!(
                        "unknown fault class `{other}` (all, none, network, partitions, crashes, disk, clock, membership)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// How one run goes.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Decides everything.
    pub seed: u64,
    /// Faults to inject.
    pub faults: FaultSet,
    /// Simulated time with faults and clients.
    pub safety: Duration,
    /// Simulated time the cluster has to recover.
    pub liveness: Duration,
    /// Print the trace as it happens.
    pub print: bool,
    /// Wall time the linearizability check of one stream may take.
    pub check_time: Duration,
    /// Every disk acknowledges syncs without persisting (a planted bug: the checkers must
    /// catch what it loses).
    pub lying_disks: bool,
    /// Shards per node: 1 runs one Raft group; more runs [`crate::sharded`] (three nodes,
    /// a group per shard and the metadata group, slot-range moves).
    pub shards: u32,
    /// A sharded run moves replicas between its four nodes too (see [`crate::sharded`]).
    pub replica_moves: bool,
}

impl RunConfig {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> RunConfig {
        RunConfig {
            seed,
            faults: FaultSet::ALL,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(30),
            print: false,
            check_time: Duration::from_secs(10),
            lying_disks: false,
            shards: 1,
            replica_moves: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Hash of the trace.
    pub trace_hash: u64,
    /// Broken properties (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Faults injected, by class name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Operations in the history.
    pub ops: usize,
    /// Acknowledged appends.
    pub acked: usize,
    /// Entries applied anywhere.
    pub entries: usize,
    /// Streams whose linearizability check ran out of budget.
    pub unknown_streams: usize,
    /// Simulated time.
    pub simulated: Duration,
}

#[derive(Clone, Default)]
pub(crate) struct FaultLog(pub(crate) Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl FaultLog {
    pub(crate) fn note(&self, cluster: &Cluster, class: &'static str, what: String) {
        *lock(&self.0).entry(class).or_default() += 1;
        cluster.trace().log(format!("FAULT {class}: {what}"));
    }
}

pub(crate) fn leader_of(cluster: &Cluster) -> Option<NodeId> {
    cluster.up_ids().into_iter().find(|id| {
        cluster
            .replica(*id)
            .is_some_and(|r| r.raft().metrics().borrow().state == ServerState::Leader)
    })
}

/// The leader's view of the membership (empty without a leader).
fn leader_membership(cluster: &Cluster) -> Membership<NodeId, StrataNode> {
    leader_of(cluster)
        .and_then(|l| cluster.replica(l))
        .map(|l| {
            l.raft()
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .clone()
        })
        .unwrap_or_default()
}

/// The voters of the leader's newest configuration: the one a removal starts from. (During a
/// change, the voters of both halves of the joint configuration are more: counting them let a
/// removal from {1,2,3,4}→{1,3,4} take the cluster to {3,4}, where one damaged disk stops all
/// progress; seed 1795694877857510229.)
pub(crate) fn voters(cluster: &Cluster) -> BTreeSet<NodeId> {
    leader_membership(cluster)
        .get_joint_config()
        .last()
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn members(cluster: &Cluster) -> BTreeSet<NodeId> {
    leader_membership(cluster)
        .nodes()
        .map(|(id, _)| *id)
        .collect()
}

/// Sealed segment files of a node (a flip there is detectable; one in the last record of the
/// tail is indistinguishable from a torn write).
pub(crate) fn sealed_segments(cluster: &Cluster, id: NodeId) -> Vec<std::path::PathBuf> {
    let Some(fs) = cluster.fs(id) else {
        return Vec::new();
    };
    let mut by_dir: BTreeMap<std::path::PathBuf, Vec<std::path::PathBuf>> = BTreeMap::new();
    for path in fs.files() {
        // Segments of a live data generation (`/nN/gen-G/log/*.log`), not staged ones.
        let in_gen = path
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with("gen-"));
        if in_gen && path.extension().is_some_and(|e| e == "log") {
            if let Some(dir) = path.parent() {
                by_dir
                    .entry(dir.to_path_buf())
                    .or_default()
                    .push(path.clone());
            }
        }
    }
    by_dir
        .into_values()
        .flat_map(|mut files| {
            files.sort();
            files.pop();
            files
        })
        .collect()
}

/// Injects faults until `until`.
pub(crate) async fn nemesis(
    cluster: Cluster,
    faults: FaultSet,
    log: FaultLog,
    tainted: Arc<Mutex<BTreeSet<NodeId>>>,
    until: Instant,
) {
    let rng = cluster.rng().clone();
    let mut classes: Vec<&str> = Vec::new();
    for (on, name) in [
        (faults.network, "network"),
        (faults.partitions, "partitions"),
        (faults.crashes, "crashes"),
        (faults.disk, "disk"),
        (faults.clock, "clock"),
        (faults.membership, "membership"),
    ] {
        if on {
            classes.push(name);
        }
    }
    // Nodes the nemesis asked to remove and has not added back: a removal may still take
    // effect after its call failed or after the leader's view was read, so they never count
    // as voters when deciding whether another removal keeps three.
    let mut removing: BTreeSet<NodeId> = BTreeSet::new();
    // Each stopped node is restarted a while later (the liveness phase restarts the rest).
    loop {
        tokio::time::sleep(rng.millis(200, 1500)).await;
        if Instant::now() >= until {
            return;
        }
        for id in cluster.ids() {
            if matches!(cluster.down(id), Some(Down::Stopped(_))) && rng.chance(0.5) {
                let _ = cluster.start(id).await;
            }
        }
        let Some(class) = rng.pick(&classes) else {
            continue;
        };
        let ids = cluster.ids();
        let up = cluster.up_ids();
        match class {
            "network" => {
                let loss = rng.below(20) as f64 / 100.0;
                let dup = rng.below(10) as f64 / 100.0;
                let delay = 1 + rng.below(120);
                cluster.set_net(|n| {
                    n.loss = loss;
                    n.duplicate = dup;
                    n.delay_max_ms = delay;
                });
                log.note(
                    &cluster,
                    "network",
                    format!("loss {loss}, duplicate {dup}, delay ≤ {delay} ms"),
                );
            }
            "partitions" => match rng.below(4) {
                0 => {
                    let side: BTreeSet<NodeId> =
                        ids.iter().copied().filter(|_| rng.chance(0.5)).collect();
                    let mut cut = BTreeSet::new();
                    for a in &ids {
                        for b in &ids {
                            if side.contains(a) != side.contains(b) {
                                cut.insert((*a, *b));
                            }
                        }
                    }
                    cluster.set_net(|n| n.cut = cut);
                    log.note(&cluster, "partition", format!("{side:?} | rest"));
                }
                1 => {
                    if let (Some(a), Some(b)) = (rng.pick(&ids), rng.pick(&ids)) {
                        if a != b {
                            cluster.set_net(|n| {
                                n.cut.insert((a, b));
                            });
                            log.note(&cluster, "one-way partition", format!("n{a} -> n{b} cut"));
                        }
                    }
                }
                2 => {
                    if let Some(l) = leader_of(&cluster) {
                        let cut = ids
                            .iter()
                            .filter(|o| **o != l)
                            .flat_map(|o| [(l, *o), (*o, l)])
                            .collect();
                        cluster.set_net(|n| n.cut = cut);
                        log.note(&cluster, "leader isolated", format!("n{l}"));
                    }
                }
                _ => {
                    cluster.set_net(|n| n.cut.clear());
                    log.note(&cluster, "heal", "all links restored".into());
                }
            },
            "crashes" => {
                let Some(id) = rng.pick(&up) else { continue };
                match rng.below(3) {
                    0 => {
                        cluster.kill(id, Some(CrashMode::DropUnsynced), "power loss");
                        log.note(&cluster, "power loss", format!("n{id}"));
                    }
                    1 => {
                        cluster.kill(id, Some(CrashMode::TearUnsynced), "power loss, torn writes");
                        log.note(&cluster, "torn write", format!("n{id}"));
                    }
                    _ => {
                        cluster.kill(id, None, "process killed");
                        log.note(&cluster, "process kill", format!("n{id}"));
                    }
                }
            }
            "disk" => {
                let Some(id) = rng.pick(&ids) else { continue };
                let Some(fs) = cluster.fs(id) else { continue };
                match rng.below(4) {
                    0 => {
                        // At most one node's data is corrupted: a majority stays intact.
                        let allowed = {
                            let t = lock(&tainted);
                            t.is_empty() || t.contains(&id)
                        };
                        let sealed = sealed_segments(&cluster, id);
                        if let (true, Some(path)) = (allowed, rng.pick(&sealed)) {
                            let len = fs.file_len(&path).unwrap_or(0);
                            if len > 0 {
                                let offset = rng.below(len);
                                let bit = rng.below(8) as u8;
                                if fs.flip_bit(&path, offset, bit).is_ok() {
                                    lock(&tainted).insert(id);
                                    log.note(
                                        &cluster,
                                        "bit flip",
                                        format!("n{id} {} byte {offset} bit {bit}", path.display()),
                                    );
                                }
                            }
                        }
                    }
                    1 => {
                        let room = rng.below(32 << 10);
                        fs.set_space_limit(Some(fs.used_bytes() + room));
                        log.note(
                            &cluster,
                            "disk full",
                            format!("n{id} after {room} more bytes"),
                        );
                        let fs = fs.clone();
                        let lift = rng.millis(500, 4000);
                        tokio::spawn(async move {
                            tokio::time::sleep(lift).await;
                            fs.set_space_limit(None);
                        });
                    }
                    2 => {
                        fs.fail_next_syncs(1);
                        log.note(&cluster, "fsync failure", format!("n{id}"));
                    }
                    _ => {
                        let max = 1 + rng.below(60);
                        cluster.set_disk_latency(max);
                        log.note(&cluster, "slow disk", format!("syncs take ≤ {max} ms"));
                    }
                }
            }
            "clock" => {
                let Some(id) = rng.pick(&ids) else { continue };
                let rate = 0.7 + rng.below(61) as f64 / 100.0;
                let skew = rng.below(4_000_001) as i64 - 2_000_000;
                cluster.set_clock(id, rate, skew);
                log.note(
                    &cluster,
                    "clock",
                    format!("n{id} runs at {rate:.2}x, skew {skew} us"),
                );
            }
            "membership" => {
                let Some(l) = leader_of(&cluster) else {
                    continue;
                };
                let Some(leader) = cluster.replica(l) else {
                    continue;
                };
                let voters: BTreeSet<NodeId> =
                    voters(&cluster).difference(&removing).copied().collect();
                let spare: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|i| !voters.contains(i))
                    .collect();
                let removable: Vec<NodeId> = voters.iter().copied().filter(|v| *v != l).collect();
                let no_corruption = lock(&tainted).is_empty();
                if rng.chance(0.25) {
                    // A leadership handover: appends pause, the target is told to elect itself.
                    let Some(to) = rng.pick(&removable) else {
                        continue;
                    };
                    log.note(&cluster, "transfer lead", format!("n{l} to n{to}"));
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        let r = leader.transfer_leader(to).await;
                        c.trace().log(format!("transfer lead n{l} to n{to}: {r:?}"));
                    });
                } else if rng.chance(0.5) || voters.len() <= 3 || !no_corruption {
                    let Some(id) = rng.pick(&spare) else { continue };
                    removing.remove(&id);
                    log.note(&cluster, "add node", format!("n{id} via n{l}"));
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        let node = StrataNode {
                            addr: addr(id),
                            raft_addr: addr(id),
                            incarnation: 0,
                        };
                        let r = leader.add_node(id, node).await;
                        c.trace().log(format!("add n{id}: {r:?}"));
                    });
                } else if let Some(id) = rng.pick(&removable) {
                    removing.insert(id);
                    log.note(&cluster, "remove node", format!("n{id} via n{l}"));
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        let r = leader.remove_node(id).await;
                        c.trace().log(format!("remove n{id}: {r:?}"));
                    });
                }
            }
            _ => {}
        }
    }
}
