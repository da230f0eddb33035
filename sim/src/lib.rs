//! strata-sim: Strata's consistency testing.
//!
//! - The deterministic simulator: [`cluster`] (real engine + Raft + shard-layer subscriptions
//!   of 3–5 nodes on one thread, over simulated disks, network and clocks), [`workload`]
//!   (clients and subscribers, and the history they leave), [`check`] (the properties),
//!   [`run`] (one seed: safety phase, liveness phase, checks), [`trace`] (the hashed trace).
//! - A linearizability checker ([`wgl`]: Wing–Gong search with Lowe's memoisation, per-key
//!   partitioning as in Porcupine) with three models ([`models`]: compare-and-set register,
//!   string key-value map, Strata stream), behind `strata-sim check-history`.

pub mod check;
pub use strata_check::{models, wgl};
pub mod cluster;
pub mod nemesis;
pub(crate) mod replica_ops;
pub mod run;
pub mod sharded;
pub mod sharded_node;
pub mod system_ops;
pub mod trace;
pub mod workload;

use std::time::{Duration, Instant};

use models::ParseError;
use wgl::{Budget, Model, Operation, Verdict};

/// Which model a history is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// One register with read / write / compare-and-set (Jepsen etcd logs).
    CasRegister,
    /// String keys with get / put / append (EDN lines), checked key by key.
    Kv,
    /// Strata streams (JSON lines), checked stream by stream.
    Stream,
}

/// Limits of a whole check.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall time for the whole history.
    pub time: Duration,
    /// Most memoised states per partition.
    pub states_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(60),
            states_max: 20_000_000,
        }
    }
}

/// The outcome, with which partition decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Partitions (keys, streams; 1 for a register).
    pub partitions: usize,
    /// The partition found not linearizable, or left unknown.
    pub culprit: Option<String>,
}

/// Checks partitions, stopping at the first that is not linearizable. Partitions are tried
/// with a small time slice first and again with more, so an easy failing partition is found
/// before a hard one exhausts the budget.
fn check_partitions<M: Model>(
    model: &M,
    parts: &[(String, Vec<Operation<M::Op>>)],
    limits: Limits,
) -> Report {
    let started = Instant::now();
    let deadline = started + limits.time;
    let mut pending: Vec<usize> = (0..parts.len()).collect();
    pending.sort_by_key(|i| parts[*i].1.len());
    let mut slice = Duration::from_millis(200);
    loop {
        let mut still = Vec::new();
        for &i in &pending {
            let now = Instant::now();
            if now >= deadline {
                still.push(i);
                continue;
            }
            let budget = Budget {
                deadline: (now + slice).min(deadline),
                states_max: limits.states_max,
            };
            match wgl::check(model, &parts[i].1, budget) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => {
                    return Report {
                        verdict: Verdict::NotLinearizable,
                        partitions: parts.len(),
                        culprit: Some(parts[i].0.clone()),
                    }
                }
                Verdict::Unknown => still.push(i),
            }
        }
        if still.is_empty() {
            return Report {
                verdict: Verdict::Linearizable,
                partitions: parts.len(),
                culprit: None,
            };
        }
        if Instant::now() >= deadline || slice >= limits.time {
            return Report {
                verdict: Verdict::Unknown,
                partitions: parts.len(),
                culprit: Some(parts[still[0]].0.clone()),
            };
        }
        pending = still;
        slice *= 8;
    }
}

/// Parses `text` in `model`'s format and checks it.
pub fn check_history(model: ModelKind, text: &str, limits: Limits) -> Result<Report, ParseError> {
    Ok(match model {
        ModelKind::CasRegister => {
            let ops = models::parse_register(text)?;
            check_partitions(&models::Register, &[("register".to_string(), ops)], limits)
        }
        ModelKind::Kv => check_partitions(&models::KvKey, &models::parse_kv(text)?, limits),
        ModelKind::Stream => {
            check_partitions(&models::Stream, &models::parse_stream(text)?, limits)
        }
    })
}
