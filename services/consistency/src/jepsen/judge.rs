//! The checkers' side of a run: the completed operations sorted by kind, each workload's
//! checker run over them, and its findings in words (each with its witness: the operations
//! that show it, with their events in `history.jsonl`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use strata_check::models::{Register, RegisterOp, Stream, StreamOp};
use strata_check::wgl::{self, Budget, Operation, Verdict};
use strata_check::witness::{self, Reducible};
use strata_check::{bank as bank_check, elle, follower as follower_check};

use super::workload::{Done, Names, Record};
use super::{bank, register, streams, Workload};
use crate::Failure;

/// How long the checker may search, and the memoised states it may keep.
const CHECK_TIME: Duration = Duration::from_secs(120);
const CHECK_STATES_MAX: usize = 20_000_000;
/// How long the search for a small witness of a violation may take (all streams together).
const WITNESS_TIME: Duration = Duration::from_secs(30);

/// A checker's answer.
pub struct Checked {
    /// `linearizable` / `not-linearizable` / `unknown`, or `valid` / `invalid`.
    pub verdict: String,
    /// Findings in words, each with its witness.
    pub anomalies: Vec<String>,
    /// How many of each class.
    pub counts: Vec<(String, usize)>,
    /// What the checker measured besides (follower reads), else null.
    pub measured: serde_json::Value,
}

/// The checkers' records of a run, by kind.
#[derive(Default)]
struct Records {
    register: Vec<Operation<RegisterOp>>,
    txns: Vec<elle::Txn>,
    streams: BTreeMap<u64, Vec<Operation<StreamOp>>>,
    bank: Vec<bank_check::Read>,
    follower_writes: Vec<follower_check::Write>,
    follower_reads: Vec<follower_check::Read>,
}

impl Records {
    fn of(done: &[Done]) -> Records {
        let mut r = Records::default();
        for record in done.iter().filter_map(|d| d.record.clone()) {
            match record {
                Record::Register(op) => r.register.push(op),
                Record::Txn(t) => r.txns.push(t),
                Record::Stream(k, op) => r.streams.entry(k).or_default().push(op),
                Record::Bank(read) => r.bank.push(read),
                Record::FollowerWrite(w) => r.follower_writes.push(w),
                Record::FollowerRead(read) => r.follower_reads.push(read),
            }
        }
        r
    }
}

/// Checks the operations with the workload's checker.
pub fn check(workload: Workload, done: &[Done], names: &Names) -> Result<Checked, Failure> {
    let r = Records::of(done);
    Ok(match workload {
        Workload::Register => {
            let ops = strata_check::models::prune_unobserved_writes(r.register);
            linearizable(&Register, [(names.of(register::STREAM), ops)])
        }
        Workload::Stream => linearizable(
            &Stream,
            r.streams
                .into_iter()
                .map(|(k, ops)| (names.of(format_args!("{}{k}", streams::PREFIX)), ops)),
        ),
        Workload::ListAppend => {
            let v = elle::check(&r.txns).map_err(|e| Failure::new(e.0))?;
            Checked {
                verdict: valid(v.valid()),
                anomalies: v
                    .anomalies
                    .iter()
                    .map(|a| txn_witness(a, &r.txns))
                    .collect(),
                counts: v.counts,
                measured: serde_json::Value::Null,
            }
        }
        Workload::Bank => {
            let v = bank_check::check(&r.bank, bank::ACCOUNTS as usize, bank::TOTAL);
            Checked {
                verdict: valid(v.valid()),
                anomalies: v.violations.iter().map(ToString::to_string).collect(),
                counts: v.counts,
                measured: serde_json::Value::Null,
            }
        }
        Workload::Follower => follower(&r.follower_writes, &r.follower_reads),
    })
}

fn valid(ok: bool) -> String {
    if ok { "valid" } else { "invalid" }.to_string()
}

/// Linearizability of each named history against `model`; each violating one comes with a
/// reduced witness (`strata_check::witness`).
fn linearizable<M>(
    model: &M,
    histories: impl IntoIterator<Item = (String, Vec<Operation<M::Op>>)>,
) -> Checked
where
    M: Reducible,
    M::Op: Debug,
{
    let deadline = Instant::now() + CHECK_TIME;
    let mut verdict = "linearizable";
    let mut violating = Vec::new();
    for (name, ops) in histories {
        let budget = Budget {
            deadline,
            states_max: CHECK_STATES_MAX,
        };
        match wgl::check(model, &ops, budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                verdict = "not-linearizable";
                violating.push((name, ops));
            }
            Verdict::Unknown if verdict == "linearizable" => verdict = "unknown",
            Verdict::Unknown => {}
        }
    }
    let witness_deadline = Instant::now() + WITNESS_TIME;
    let anomalies: Vec<String> = violating
        .iter()
        .map(
            |(name, ops)| match witness::reduce(model, ops, witness_deadline) {
                Some(w) => ops_witness(name, &w),
                None => format!(
                "not linearizable: {name} ({} operations; no smaller witness within the budget)",
                ops.len()
            ),
            },
        )
        .collect();
    Checked {
        verdict: verdict.into(),
        counts: vec![("not-linearizable".to_string(), anomalies.len())],
        anomalies,
        measured: serde_json::Value::Null,
    }
}

fn follower(writes: &[follower_check::Write], reads: &[follower_check::Read]) -> Checked {
    let v = follower_check::check(writes, reads);
    let at = |q: f64| {
        let n = v.staleness_ms.len();
        v.staleness_ms
            .get(((n as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Checked {
        verdict: valid(v.valid()),
        anomalies: v.violations.iter().map(ToString::to_string).collect(),
        measured: serde_json::json!({
            "reads": v.reads,
            "closed_reads_checked": v.closed_checked,
            "staleness_ms": { "p50": at(0.5), "p99": at(0.99), "max": at(1.0) },
        }),
        counts: v.counts,
    }
}

/// An Elle anomaly with the transactions that show it, as the history has them.
fn txn_witness(a: &elle::Anomaly, txns: &[elle::Txn]) -> String {
    let mut out = a.to_string();
    for t in &a.txns {
        if let Some(txn) = txns.get(*t) {
            let mops: Vec<String> = txn
                .mops
                .iter()
                .map(|m| match m {
                    elle::Mop::Append(k, v) => format!("append {k} {v}"),
                    elle::Mop::Read(k, Some(l)) => format!("r {k} {l:?}"),
                    elle::Mop::Read(k, None) => format!("r {k} ?"),
                })
                .collect();
            out.push_str(&format!(
                "\n  T{t} = {}, {:?}: [{}]",
                place(txn.process, txn.call, txn.ret),
                txn.outcome,
                mops.join(", ")
            ));
        }
    }
    out
}

/// A linearizability witness in words: its operations in the order invoked, with their
/// history events (`history.jsonl`'s `index`).
fn ops_witness<Op: Debug + Clone>(name: &str, ops: &[Operation<Op>]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let mut out = format!(
        "not linearizable: {name}: no order of these {} operations explains what they saw",
        ops.len()
    );
    for o in &ops {
        out.push_str(&format!(
            "\n  {}: {:?}",
            place(o.client, o.call, o.ret),
            o.op
        ));
    }
    out
}

/// Where an operation is in the history: its process and its events in `history.jsonl`.
fn place(process: u64, call: usize, ret: Option<usize>) -> String {
    let ret = ret.map_or("(no completion)".to_string(), |r| r.to_string());
    format!("process {process}, history events {call}..{ret}")
}
