//! A small witness for a register history that is not linearizable: the fewest operations
//! found that are still not linearizable on their own, so a reader can see the violation
//! (Knossos and Porcupine show the point the search got stuck; a reduced history is easier to
//! read and to replay).
//!
//! Two steps, both checked with the WGL search:
//!
//! 1. the shortest prefix (by event index) that is already not linearizable — binary search;
//!    operations under way at its end become unknown-outcome writes (reads are dropped);
//! 2. delta debugging (Zeller's ddmin) over that prefix: drop chunks, halving their size,
//!    keeping each drop after which the rest is still not linearizable.
//!
//! Dropping a write whose value a remaining operation observed would make a violation that is
//! not in the history (a read of a value nobody wrote), so every candidate keeps the writes of
//! the values its operations observe (its closure). A witness is sound: it is a sub-history,
//! closed that way, that no order explains. Bounded by the budget: when it runs out the
//! smallest set found so far is returned.

use std::collections::HashSet;
use std::time::Instant;

use crate::models::{Register, RegisterOp};
use crate::wgl::{check, Budget, Operation, Verdict};

/// Whether `ops` is certainly not linearizable (an exhausted budget counts as no).
fn violates(ops: &[Operation<RegisterOp>], deadline: Instant) -> bool {
    let budget = Budget {
        deadline,
        states_max: 2_000_000,
    };
    check(&Register, ops, budget) == Verdict::NotLinearizable
}

/// The values an operation observed.
fn observed(op: &RegisterOp) -> Option<i64> {
    match op {
        RegisterOp::Read(v) => *v,
        RegisterOp::Cas(from, _, Some(true)) => Some(*from),
        _ => None,
    }
}

/// The value an operation writes, if any.
fn written(op: &RegisterOp) -> Option<i64> {
    match op {
        RegisterOp::Write(v) | RegisterOp::Cas(_, v, _) => Some(*v),
        RegisterOp::Read(_) => None,
    }
}

/// `keep` (indices into `all`) plus the writes of every value they observe.
fn closure(all: &[Operation<RegisterOp>], keep: &[usize]) -> Vec<usize> {
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
    let mut out: Vec<usize> = set.into_iter().collect();
    out.sort_unstable();
    out
}

fn pick(all: &[Operation<RegisterOp>], idx: &[usize]) -> Vec<Operation<RegisterOp>> {
    idx.iter().map(|i| all[*i].clone()).collect()
}

/// The history up to event `t`: operations completed before it, and the writes under way at
/// it as unknown.
fn prefix(ops: &[Operation<RegisterOp>], t: usize) -> Vec<Operation<RegisterOp>> {
    ops.iter()
        .filter(|o| o.call < t)
        .filter_map(|o| match (o.ret, &o.op) {
            (Some(r), _) if r < t => Some(o.clone()),
            (_, RegisterOp::Read(_)) => None,
            (_, RegisterOp::Cas(a, b, _)) => Some(Operation {
                op: RegisterOp::Cas(*a, *b, None),
                ret: None,
                ..o.clone()
            }),
            (_, RegisterOp::Write(_)) => Some(Operation {
                ret: None,
                ..o.clone()
            }),
        })
        .collect()
}

/// A small non-linearizable sub-history of `ops` (see the module docs), or `None` if `ops`
/// is not found non-linearizable before `deadline`.
pub fn reduce(
    ops: &[Operation<RegisterOp>],
    deadline: Instant,
) -> Option<Vec<Operation<RegisterOp>>> {
    let end = ops
        .iter()
        .map(|o| o.ret.unwrap_or(o.call) + 1)
        .max()
        .unwrap_or(0);
    if !violates(ops, deadline) {
        return None;
    }
    // 1. The shortest violating prefix: violates(prefix(hi)) holds throughout.
    let (mut lo, mut hi) = (0, end);
    while lo + 1 < hi && Instant::now() < deadline {
        let mid = lo + (hi - lo) / 2;
        if violates(&prefix(ops, mid), deadline) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let base = prefix(ops, hi);
    // 2. ddmin over it.
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
            let candidate = closure(&base, &rest);
            if candidate.len() < keep.len() && violates(&pick(&base, &candidate), deadline) {
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
    Some(pick(&base, &keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterOp::*;

    fn op(client: u64, op: RegisterOp, call: usize, ret: Option<usize>) -> Operation<RegisterOp> {
        Operation {
            client,
            op,
            call,
            ret,
        }
    }

    #[test]
    fn a_stale_read_among_many_good_operations_comes_down_to_the_few_that_show_it() {
        let mut ops = Vec::new();
        let mut t = 0;
        // 200 serial writes, each read back.
        for v in 1..=200 {
            ops.push(op(0, Write(v), t, Some(t + 1)));
            ops.push(op(1, Read(Some(v)), t + 2, Some(t + 3)));
            t += 4;
        }
        // Then a read of an old value, after 200 was acknowledged: stale.
        ops.push(op(2, Read(Some(150)), t, Some(t + 1)));
        // And more good ones after it.
        for v in 201..=220 {
            ops.push(op(0, Write(v), t + 2, Some(t + 3)));
            t += 2;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let w = reduce(&ops, deadline).expect("a witness");
        assert!(violates(&w, deadline));
        assert!(w.len() <= 4, "{w:?}");
        // The stale read is in it, with the write of what it read.
        assert!(w.iter().any(|o| o.op == Read(Some(150)) && o.client == 2));
        assert!(w.iter().any(|o| o.op == Write(150)));
        // A linearizable history has none.
        let good: Vec<_> = ops.iter().filter(|o| o.client != 2).cloned().collect();
        assert!(reduce(&good, deadline).is_none());
    }
}
