//! A small witness for a history that is not linearizable: the fewest operations found that
//! are still not linearizable on their own, so a reader can see the violation (Knossos and
//! Porcupine show the point the search got stuck; a reduced history is easier to read and to
//! replay).
//!
//! Two steps, both checked with the WGL search:
//!
//! 1. the shortest prefix (by event index) that is already not linearizable — binary search;
//!    operations under way at its end get an unknown outcome (or, having no effect, such as
//!    reads, are dropped): any linearization of the whole history, cut there, explains it;
//! 2. delta debugging (Zeller's ddmin) over that prefix: drop chunks, halving their size,
//!    keeping each drop after which the rest is still not linearizable.
//!
//! Dropping an operation a remaining one depends on would make a violation that is not in the
//! history, so every candidate is closed over those ([`Reducible::closure`]): for a register,
//! the writes of the values its operations observe (values are unique); for a stream, every
//! append that may have taken effect (the versions and contents its operations saw count
//! them all), so only reads and refused appends drop. A witness is sound: a sub-history, closed
//! that way, that no order explains. Bounded by the budget: when it runs out the smallest set
//! found so far is returned.

use std::collections::HashSet;
use std::time::Instant;

use crate::models::{Register, RegisterOp, Stream, StreamOp};
use crate::wgl::{check, Budget, Model, Operation, Verdict};

/// What reducing a history needs of its model besides the steps.
pub trait Reducible: Model<Op: Clone> {
    /// `op` as a prefix cut while it was under way sees it: its outcome unknown; `None` when
    /// it has no effect then (a read), and is dropped.
    fn under_way(&self, op: &Self::Op) -> Option<Self::Op>;
    /// `keep` (indices into `all`) plus every operation they depend on, sorted.
    fn closure(&self, all: &[Operation<Self::Op>], keep: &[usize]) -> Vec<usize>;
}

impl Reducible for Register {
    fn under_way(&self, op: &RegisterOp) -> Option<RegisterOp> {
        match op {
            RegisterOp::Read(_) => None,
            RegisterOp::Cas(a, b, _) => Some(RegisterOp::Cas(*a, *b, None)),
            RegisterOp::Write(v) => Some(RegisterOp::Write(*v)),
        }
    }

    /// The writes of every value the kept operations observe, transitively.
    fn closure(&self, all: &[Operation<RegisterOp>], keep: &[usize]) -> Vec<usize> {
        let mut set: HashSet<usize> = keep.iter().copied().collect();
        let mut queue: Vec<usize> = keep.to_vec();
        while let Some(i) = queue.pop() {
            let Some(v) = observed(&all[i].op) else {
                continue;
            };
            for (j, o) in all.iter().enumerate() {
                if written(&o.op) == Some(v) && set.insert(j) {
                    queue.push(j);
                }
            }
        }
        sorted(set)
    }
}

impl Reducible for Stream {
    fn under_way(&self, op: &StreamOp) -> Option<StreamOp> {
        match op {
            StreamOp::Read(_) => None,
            StreamOp::Append {
                expected, events, ..
            } => Some(StreamOp::Append {
                expected: *expected,
                events: events.clone(),
                result: None,
            }),
        }
    }

    /// Every append that may have taken effect (acknowledged, or unknown): an append's
    /// version and a read's events count all of them.
    fn closure(&self, all: &[Operation<StreamOp>], keep: &[usize]) -> Vec<usize> {
        let mut set: HashSet<usize> = keep.iter().copied().collect();
        for (j, o) in all.iter().enumerate() {
            if let StreamOp::Append {
                result: Some(Ok(_)) | None,
                ..
            } = o.op
            {
                set.insert(j);
            }
        }
        sorted(set)
    }
}

fn sorted(set: HashSet<usize>) -> Vec<usize> {
    let mut out: Vec<usize> = set.into_iter().collect();
    out.sort_unstable();
    out
}

/// Whether `ops` is certainly not linearizable (an exhausted budget counts as no).
fn violates<M: Reducible>(model: &M, ops: &[Operation<M::Op>], deadline: Instant) -> bool {
    let budget = Budget {
        deadline,
        states_max: 2_000_000,
    };
    check(model, ops, budget) == Verdict::NotLinearizable
}

/// The value a register operation observed.
fn observed(op: &RegisterOp) -> Option<i64> {
    match op {
        RegisterOp::Read(v) => *v,
        RegisterOp::Cas(from, _, Some(true)) => Some(*from),
        _ => None,
    }
}

/// The value a register operation writes, if any.
fn written(op: &RegisterOp) -> Option<i64> {
    match op {
        RegisterOp::Write(v) | RegisterOp::Cas(_, v, _) => Some(*v),
        RegisterOp::Read(_) => None,
    }
}

fn pick<Op: Clone>(all: &[Operation<Op>], idx: &[usize]) -> Vec<Operation<Op>> {
    idx.iter().map(|i| all[*i].clone()).collect()
}

/// The history up to event `t`: operations completed before it, and those under way at it
/// with an unknown outcome (see [`Reducible::under_way`]).
fn prefix<M: Reducible>(model: &M, ops: &[Operation<M::Op>], t: usize) -> Vec<Operation<M::Op>> {
    ops.iter()
        .filter(|o| o.call < t)
        .filter_map(|o| match o.ret {
            Some(r) if r < t => Some(o.clone()),
            _ => model.under_way(&o.op).map(|op| Operation {
                op,
                ret: None,
                client: o.client,
                call: o.call,
            }),
        })
        .collect()
}

/// A small non-linearizable sub-history of `ops` (see the module docs), or `None` if `ops`
/// is not found non-linearizable before `deadline`.
pub fn reduce<M: Reducible>(
    model: &M,
    ops: &[Operation<M::Op>],
    deadline: Instant,
) -> Option<Vec<Operation<M::Op>>> {
    let end = ops
        .iter()
        .map(|o| o.ret.unwrap_or(o.call) + 1)
        .max()
        .unwrap_or(0);
    if !violates(model, ops, deadline) {
        return None;
    }
    // 1. The shortest violating prefix: violates(prefix(hi)) holds throughout.
    let (mut lo, mut hi) = (0, end);
    while lo + 1 < hi && Instant::now() < deadline {
        let mid = lo + (hi - lo) / 2;
        if violates(model, &prefix(model, ops, mid), deadline) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let base = prefix(model, ops, hi);
    Some(pick(&base, &ddmin(model, &base, deadline)))
}

/// Delta debugging over `base` (violating): the indices of a smaller violating closed subset.
fn ddmin<M: Reducible>(model: &M, base: &[Operation<M::Op>], deadline: Instant) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..base.len()).collect();
    let mut n = 2usize;
    while keep.len() >= 2 && Instant::now() < deadline {
        let chunk = keep.len().div_ceil(n);
        let mut reduced = false;
        for start in (0..keep.len()).step_by(chunk) {
            let rest: Vec<usize> = keep
                .iter()
                .enumerate()
                .filter(|(k, _)| *k < start || *k >= start + chunk)
                .map(|(_, i)| *i)
                .collect();
            let candidate = model.closure(base, &rest);
            if candidate.len() < keep.len() && violates(model, &pick(base, &candidate), deadline) {
                keep = candidate;
                n = n.saturating_sub(1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if chunk <= 1 {
                break;
            }
            n = (n * 2).min(keep.len());
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterOp::*;

    #[test]
    fn a_stale_read_among_many_good_operations_comes_down_to_the_few_that_show_it() {
        let mut ops = Vec::new();
        let mut t = 0;
        // 200 serial writes, each read back.
        for v in 1..=200 {
            ops.push(Operation::new(0, Write(v), t, Some(t + 1)));
            ops.push(Operation::new(1, Read(Some(v)), t + 2, Some(t + 3)));
            t += 4;
        }
        // Then a read of an old value, after 200 was acknowledged: stale.
        ops.push(Operation::new(2, Read(Some(150)), t, Some(t + 1)));
        // And more good ones after it.
        for v in 201..=220 {
            ops.push(Operation::new(0, Write(v), t + 2, Some(t + 3)));
            t += 2;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let w = reduce(&Register, &ops, deadline).expect("a witness");
        assert!(violates(&Register, &w, deadline));
        assert!(w.len() <= 4, "{w:?}");
        // The stale read is in it, with the write of what it read.
        assert!(w.iter().any(|o| o.op == Read(Some(150)) && o.client == 2));
        assert!(w.iter().any(|o| o.op == Write(150)));
        // A linearizable history has none.
        let good: Vec<_> = ops.iter().filter(|o| o.client != 2).cloned().collect();
        assert!(reduce(&Register, &good, deadline).is_none());
    }

    fn append(
        events: &[&str],
        expected: Option<Option<u64>>,
        result: Option<Result<u64, Option<u64>>>,
    ) -> StreamOp {
        StreamOp::Append {
            expected,
            events: events.iter().map(|e| e.to_string()).collect(),
            result,
        }
    }

    fn read(events: &[String]) -> StreamOp {
        StreamOp::Read(Some(events.to_vec()))
    }

    #[test]
    fn a_lost_append_comes_down_to_the_appends_and_the_read_that_show_it() {
        let mut ops = Vec::new();
        let mut log: Vec<String> = Vec::new();
        let mut t = 0;
        // 60 acknowledged appends, each read back by another client, with refused ones between.
        for v in 0..60u64 {
            let id = format!("e{v}");
            ops.push(Operation::new(
                0,
                append(&[&id], None, Some(Ok(v))),
                t,
                Some(t + 1),
            ));
            log.push(id);
            ops.push(Operation::new(1, read(&log), t + 2, Some(t + 3)));
            let stale = append(&["x"], Some(None), Some(Err(Some(v))));
            ops.push(Operation::new(2, stale, t + 4, Some(t + 5)));
            t += 6;
        }
        // Then a read that lacks e30, acknowledged long before: lost.
        let mut lost = log.clone();
        lost.remove(30);
        ops.push(Operation::new(3, read(&lost), t, Some(t + 1)));
        for v in 60..80u64 {
            let id = format!("e{v}");
            ops.push(Operation::new(
                0,
                append(&[&id], None, Some(Ok(v))),
                t + 2,
                Some(t + 3),
            ));
            t += 2;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let w = reduce(&Stream, &ops, deadline).expect("a witness");
        assert!(violates(&Stream, &w, deadline));
        // The bad read, and the appends up to it (each counts); no other read, no refusal,
        // nothing after.
        let reads: Vec<_> = w
            .iter()
            .filter(|o| matches!(o.op, StreamOp::Read(_)))
            .collect();
        assert_eq!(reads.len(), 1, "{w:?}");
        assert_eq!(reads[0].client, 3);
        assert_eq!(w.len(), 61, "{w:?}");
        assert!(w.iter().all(|o| o.client != 2));
        let good: Vec<_> = ops.iter().filter(|o| o.client != 3).cloned().collect();
        assert!(reduce(&Stream, &good, deadline).is_none());
    }
}
