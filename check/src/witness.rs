//! A small witness for a history that is not linearizable: the fewest operations found that
//! are still not linearizable on their own, so a reader can see the violation (Knossos and
//! Porcupine show the point the search got stuck; a reduced history is easier to read and to
//! replay).
//!
//! Two steps, both checked with the WGL search:
//!
//! 1. a short window (by event index) that is already not linearizable: prefixes doubling in
//!    length up to the first that is not, then the latest start and the earliest end
//!    (binary searches) for which the window, closed over what its
//!    operations depend on, is still not; operations under way at its end get an unknown
//!    outcome (or, having no effect, such as reads, are dropped): any linearization of the
//!    whole history, cut there, explains it;
//! 2. delta debugging (Zeller's ddmin) over that window: drop chunks, halving their size,
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

    /// The writes of every value the kept operations observe (or would have, had they taken
    /// effect), transitively.
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

/// The value a register operation observed, if it took effect: a compare-and-set of
/// unknown outcome that did saw its `from` (without that write kept, a witness could hold
/// such a cas whose value a read saw, and no write for it to have compared against: a
/// violation that is not in the history).
fn observed(op: &RegisterOp) -> Option<i64> {
    match op {
        RegisterOp::Read(v) => *v,
        RegisterOp::Cas(from, _, Some(true) | None) => Some(*from),
        RegisterOp::Cas(_, _, Some(false)) | RegisterOp::Write(_) => None,
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

/// History events in the first window [`reduce`] tries.
const WINDOW_FIRST_EVENTS: usize = 64;

/// A small non-linearizable sub-history of `ops` (see the module docs), or `None` if `ops`
/// is not found non-linearizable before `deadline`. Tried first without the operations of
/// unknown outcome nothing depends on ([`settled`]), then, if that finds none, with them.
pub fn reduce<M: Reducible>(
    model: &M,
    ops: &[Operation<M::Op>],
    deadline: Instant,
) -> Option<Vec<Operation<M::Op>>> {
    let known = settled(model, ops);
    let base = narrow(model, &known, deadline).or_else(|| {
        (known.len() < ops.len())
            .then(|| narrow(model, ops, deadline))
            .flatten()
    })?;
    Some(pick(&base, &ddmin(model, &base, deadline)))
}

/// A short window of `ops` that violates (step 1 of the module docs). A check costs the
/// search about as much per event whether it finds an order or proves there is none (~80 µs
/// per event in a release build on a register history of 15,000 events and 10 clients), so
/// the windows tried are kept short: prefixes doubling in length from the start up to the
/// first that violates, then windows ending there and starting later and later, then ending
/// earlier and earlier.
fn narrow<M: Reducible>(
    model: &M,
    ops: &[Operation<M::Op>],
    deadline: Instant,
) -> Option<Vec<Operation<M::Op>>> {
    let end = ops
        .iter()
        .map(|o| o.ret.unwrap_or(o.call) + 1)
        .max()
        .unwrap_or(0);
    let violating =
        |start: usize, end: usize| violates(model, &window(model, ops, start, end), deadline);
    // 1. The end: prefixes doubling in length, up to the first that violates (`lo`: the end
    //    of the last that does not).
    let (mut lo, mut hi) = (0, WINDOW_FIRST_EVENTS.min(end));
    while !violating(0, hi) {
        if hi == end || Instant::now() >= deadline {
            return None;
        }
        (lo, hi) = (hi, hi.saturating_mul(2).min(end));
    }
    // 2. The start: the latest from which the window to `hi` violates.
    let (start, _) = edge(0, hi, deadline, |mid| violating(mid, hi));
    // 3. The end again: the earliest for that start (`lo` does not violate: a window of a
    //    prefix that does not is a part of it, closed, and does not either).
    let (_, hi) = edge(lo.max(start), hi, deadline, |mid| !violating(start, mid));
    Some(window(model, ops, start, hi))
}

/// Narrows `(yes, no)`, where `holds(yes)` and not `holds(no)`, by binary search to two
/// neighbouring places (or as near as `deadline` lets it), keeping that.
fn edge(
    mut yes: usize,
    mut no: usize,
    deadline: Instant,
    mut holds: impl FnMut(usize) -> bool,
) -> (usize, usize) {
    while yes.abs_diff(no) > 1 && Instant::now() < deadline {
        let mid = yes.min(no) + yes.abs_diff(no) / 2;
        if holds(mid) {
            yes = mid;
        } else {
            no = mid;
        }
    }
    (yes, no)
}

/// The operations invoked from event `start` on in the prefix up to event `end` (see
/// [`prefix`]), closed over what they depend on (which may have been invoked earlier).
fn window<M: Reducible>(
    model: &M,
    ops: &[Operation<M::Op>],
    start: usize,
    end: usize,
) -> Vec<Operation<M::Op>> {
    let head = prefix(model, ops, end);
    let from: Vec<usize> = (0..head.len()).filter(|i| head[*i].call >= start).collect();
    pick(&head, &model.closure(&head, &from))
}

/// `ops` without the operations of unknown outcome that nothing else depends on. Each such
/// operation may take effect anywhere after its invocation, or never, so a few of them near
/// the violation multiply the orders the search must rule out: in a register history of
/// 6,500 operations, 29 of them (of 36 unknown) made every prefix past the violation exhaust
/// the search's state bound. Dropping them can also remove the violation (an unknown write
/// that must have taken effect for none of the reads to be stale), so [`reduce`] falls back.
fn settled<M: Reducible>(model: &M, ops: &[Operation<M::Op>]) -> Vec<Operation<M::Op>> {
    let known: Vec<usize> = (0..ops.len()).filter(|i| ops[*i].ret.is_some()).collect();
    pick(ops, &model.closure(ops, &known))
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

    /// A read of a value an unknown-outcome cas wrote needs the cas, and the cas needs the
    /// write of what it compared against: without it, the two alone are a violation the
    /// history does not have (a reduced witness of a read and an unknown cas, seen in a run).
    #[test]
    fn a_kept_unknown_cas_keeps_the_write_it_compared_against() {
        let ops = vec![
            Operation::new(0, Write(1), 0, Some(1)),
            Operation::new(1, Cas(1, 2, None), 2, None),
            Operation::new(2, Read(Some(2)), 4, Some(5)),
        ];
        assert_eq!(Register.closure(&ops, &[2]), vec![0, 1, 2]);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        assert!(!violates(&Register, &ops, deadline));
        assert!(reduce(&Register, &ops, deadline).is_none());
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
