//! The faults a run injects, one at a time: `--fault-secs` healthy, then a fault for
//! `--fault-secs`, healed, and so on until the workload's time is up.
//!
//! - `partition`: the Raft links between two sides are cut both ways (clients still reach
//!   every node): half the time the leader alone against the rest, else a random minority
//!   against the majority;
//! - `kill`: SIGKILL of a node (the leader half the time), started again at the heal;
//! - `pause`: SIGSTOP of a node (the leader half the time), SIGCONT at the heal;
//! - `none`: no fault (a baseline).

use serde::Serialize;

use super::cluster::LocalCluster;
use super::rng::Rng;
use crate::Failure;

/// Which faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisKind {
    /// No fault.
    None,
    /// Network partitions.
    Partition,
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP and SIGCONT.
    Pause,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
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
    /// Links cut between the two sides.
    Partition(Vec<u64>, Vec<u64>),
    /// A node killed.
    Killed(u64),
    /// A node paused.
    Paused(u64),
}

/// A node to hit: the leader half the time (when one is known), else any.
async fn victim(cluster: &LocalCluster, rng: &mut Rng) -> u64 {
    let ids = cluster.ids();
    if rng.below(2) == 0 {
        if let Some(leader) = cluster.leader().await {
            return leader;
        }
    }
    ids.get(rng.below(ids.len() as u64) as usize)
        .copied()
        .unwrap_or(1)
}

/// Begins a fault of `kind`; returns what it is and how to heal it (`None` for `none`).
pub async fn begin(
    kind: NemesisKind,
    cluster: &mut LocalCluster,
    rng: &mut Rng,
) -> Option<(String, Active)> {
    match kind {
        NemesisKind::None => None,
        NemesisKind::Partition => {
            let ids = cluster.ids();
            let lone = match rng.below(2) {
                0 => cluster.leader().await,
                _ => None,
            };
            let minority: Vec<u64> = match lone {
                Some(leader) => vec![leader],
                None => {
                    let mut shuffled = ids.clone();
                    for i in (1..shuffled.len()).rev() {
                        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    shuffled.truncate((ids.len() - 1) / 2);
                    shuffled
                }
            };
            let majority: Vec<u64> = ids.into_iter().filter(|i| !minority.contains(i)).collect();
            cluster.partition(&minority, &majority, true);
            let what = match lone {
                Some(l) => format!("isolated leader {l} from {majority:?}"),
                None => format!("partition {minority:?} | {majority:?}"),
            };
            Some((what, Active::Partition(minority, majority)))
        }
        NemesisKind::Kill => {
            let id = victim(cluster, rng).await;
            cluster.kill(id).await;
            Some((format!("kill -9 node {id}"), Active::Killed(id)))
        }
        NemesisKind::Pause => {
            let id = victim(cluster, rng).await;
            cluster.pause(id, true);
            Some((format!("pause node {id}"), Active::Paused(id)))
        }
    }
}

/// Heals `active`.
pub fn heal(active: Active, cluster: &mut LocalCluster) -> Result<(), Failure> {
    match active {
        Active::Partition(a, b) => {
            cluster.partition(&a, &b, false);
            Ok(())
        }
        Active::Killed(id) => cluster.restart(id),
        Active::Paused(id) => {
            cluster.pause(id, false);
            Ok(())
        }
    }
}
