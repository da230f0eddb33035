//! Hand-written histories after the examples of Elle's paper and documentation: each anomaly
//! must be found with its witness, and clean histories must pass.

#![allow(clippy::unwrap_used)]

use super::*;

/// A builder: transactions get consecutive call/return indices (serial) unless placed.
struct H {
    txns: Vec<Txn>,
    clock: usize,
}

fn a(k: Key, v: Value) -> Mop {
    Mop::Append(k, v)
}

fn r(k: Key, l: &[Value]) -> Mop {
    Mop::Read(k, Some(l.to_vec()))
}

impl H {
    fn new() -> H {
        H {
            txns: Vec::new(),
            clock: 0,
        }
    }

    /// A transaction that runs alone: invoked and completed before the next.
    fn serial(mut self, outcome: Outcome, mops: Vec<Mop>) -> H {
        let call = self.clock;
        self.clock += 2;
        self.txns.push(Txn {
            process: self.txns.len() as u64,
            call,
            ret: (outcome != Outcome::Info).then_some(call + 1),
            outcome,
            mops,
        });
        self
    }

    fn ok(self, mops: Vec<Mop>) -> H {
        self.serial(Outcome::Ok, mops)
    }

    /// Transactions all concurrent with one another (invoked together, then completed).
    fn concurrent(mut self, txns: Vec<(Outcome, Vec<Mop>)>) -> H {
        let n = txns.len();
        let start = self.clock;
        self.clock += 2 * n;
        for (i, (outcome, mops)) in txns.into_iter().enumerate() {
            self.txns.push(Txn {
                process: self.txns.len() as u64,
                call: start + i,
                ret: (outcome != Outcome::Info).then_some(start + n + i),
                outcome,
                mops,
            });
        }
        self
    }

    fn check(&self) -> Verdict {
        check(&self.txns).unwrap()
    }
}

fn classes(v: &Verdict) -> Vec<&str> {
    let mut c: Vec<&str> = v.anomalies.iter().map(|a| a.class.as_str()).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn only(v: &Verdict, class: &str) -> Anomaly {
    let found: Vec<&Anomaly> = v.anomalies.iter().filter(|a| a.class == class).collect();
    assert_eq!(found.len(), 1, "{class} in {:?}", v.anomalies);
    found[0].clone()
}

#[test]
fn a_serial_history_and_one_with_concurrent_unknown_appends_are_valid() {
    let h = H::new()
        .ok(vec![a(1, 1), a(2, 1)])
        .ok(vec![r(1, &[1]), a(1, 2)])
        .ok(vec![r(1, &[1, 2]), r(2, &[1])])
        .concurrent(vec![
            (Outcome::Ok, vec![a(2, 2)]),
            (Outcome::Info, vec![a(2, 3)]),
            (Outcome::Ok, vec![r(2, &[1, 2])]),
        ])
        .ok(vec![r(2, &[1, 2, 3]), r(1, &[1, 2]), r(3, &[])]);
    let v = h.check();
    assert!(v.valid(), "{:?}", v.anomalies);
    // The info append was observed, so it counts as committed.
    assert_eq!(v.committed, 7);
}

#[test]
fn g0_write_cycle() {
    // T0 and T1 both append to x and y; the final reads order x as T0 then T1, y the reverse.
    let h = H::new()
        .concurrent(vec![
            (Outcome::Ok, vec![a(1, 1), a(2, 1)]),
            (Outcome::Ok, vec![a(1, 2), a(2, 2)]),
        ])
        .ok(vec![r(1, &[1, 2]), r(2, &[2, 1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G0"]);
    let g0 = only(&v, "G0");
    assert_eq!(g0.cycle.len(), 2);
    assert!(g0.cycle.iter().all(|s| s.edge == Edge::Ww));
    let mut t = g0.txns.clone();
    t.sort_unstable();
    assert_eq!(t, [0, 1]);
}

#[test]
fn g1a_aborted_read() {
    let h = H::new()
        .serial(Outcome::Fail, vec![a(1, 1)])
        .ok(vec![r(1, &[1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G1a"]);
    assert_eq!(only(&v, "G1a").txns, [0, 1]);
}

#[test]
fn g1b_intermediate_read() {
    // T0 appends 1 then 2 to x; T1 sees x end in 1, a state T0 never committed.
    let h = H::new()
        .concurrent(vec![
            (Outcome::Ok, vec![a(1, 1), a(1, 2)]),
            (Outcome::Ok, vec![r(1, &[1])]),
        ])
        .ok(vec![r(1, &[1, 2])]);
    let v = h.check();
    assert!(classes(&v).contains(&"G1b"), "{:?}", v.anomalies);
    assert_eq!(only(&v, "G1b").txns, [0, 1]);
}

#[test]
fn g1c_circular_information_flow() {
    // Each transaction read the other's append: wr both ways.
    let h = H::new().concurrent(vec![
        (Outcome::Ok, vec![a(1, 1), r(2, &[1])]),
        (Outcome::Ok, vec![a(2, 1), r(1, &[1])]),
    ]);
    let v = h.check();
    assert_eq!(classes(&v), ["G1c"]);
    let g = only(&v, "G1c");
    assert!(g.cycle.iter().all(|s| s.edge == Edge::Wr), "{g}");
}

#[test]
fn g_single_read_skew() {
    // T0 saw x before T1's append but y after it.
    let h = H::new()
        .concurrent(vec![
            (Outcome::Ok, vec![r(1, &[]), r(2, &[1])]),
            (Outcome::Ok, vec![a(1, 1), a(2, 1)]),
        ])
        .ok(vec![r(1, &[1]), r(2, &[1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G-single"]);
    let g = only(&v, "G-single");
    let kinds: HashSet<Edge> = g.cycle.iter().map(|s| s.edge).collect();
    assert_eq!(kinds, HashSet::from([Edge::Rw, Edge::Wr]));
    assert!(g.to_string().contains("read key 1 = []"), "{g}");
}

#[test]
fn g2_write_skew() {
    // Each read the key the other appended to, before the append: rw both ways.
    let h = H::new()
        .concurrent(vec![
            (Outcome::Ok, vec![r(1, &[]), a(2, 1)]),
            (Outcome::Ok, vec![r(2, &[]), a(1, 1)]),
        ])
        .ok(vec![r(1, &[1]), r(2, &[1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G2"]);
    assert!(only(&v, "G2").cycle.iter().all(|s| s.edge == Edge::Rw));
}

#[test]
fn a_lost_update_is_named_and_its_cycle_found() {
    let h = H::new()
        .ok(vec![a(1, 1)])
        .concurrent(vec![
            (Outcome::Ok, vec![r(1, &[1]), a(1, 2)]),
            (Outcome::Ok, vec![r(1, &[1]), a(1, 3)]),
        ])
        .ok(vec![r(1, &[1, 2, 3])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G-single", "lost-update"]);
    assert_eq!(only(&v, "lost-update").txns, [1, 2]);
}

#[test]
fn a_stale_read_breaks_real_time_order() {
    // T0's append completed before T1 began, yet T1 did not see it (a later read orders it).
    let h = H::new()
        .ok(vec![a(1, 1)])
        .ok(vec![r(1, &[])])
        .ok(vec![r(1, &[1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G-single-realtime"]);
    let g = only(&v, "G-single-realtime");
    assert_eq!(g.cycle.len(), 2);
    // The same two transactions concurrent: serializable, no anomaly.
    let h = H::new()
        .concurrent(vec![
            (Outcome::Ok, vec![a(1, 1)]),
            (Outcome::Ok, vec![r(1, &[])]),
        ])
        .ok(vec![r(1, &[1])]);
    assert!(h.check().valid());
    // An element no read ever saw has no known place: no edge, no verdict on it.
    let h = H::new().ok(vec![a(1, 1)]).ok(vec![r(1, &[])]);
    assert!(h.check().valid());
}

#[test]
fn a_write_reordered_against_real_time_is_g0_realtime() {
    // T0 appended 1 and completed before T1 appended 2, yet the list puts 2 first.
    let h = H::new()
        .ok(vec![a(1, 1)])
        .ok(vec![a(1, 2)])
        .ok(vec![r(1, &[2, 1])]);
    let v = h.check();
    assert_eq!(classes(&v), ["G0-realtime"]);
}

#[test]
fn incompatible_orders_garbage_and_duplicates() {
    let h = H::new()
        .ok(vec![a(1, 1)])
        .concurrent(vec![
            (Outcome::Ok, vec![a(1, 2)]),
            (Outcome::Ok, vec![a(1, 3)]),
        ])
        .ok(vec![r(1, &[1, 2])])
        .ok(vec![r(1, &[1, 3])]);
    let v = h.check();
    assert!(
        classes(&v).contains(&"incompatible-order"),
        "{:?}",
        v.anomalies
    );
    let h = H::new()
        .ok(vec![a(1, 1)])
        .ok(vec![r(1, &[1, 1]), r(2, &[7])]);
    let v = h.check();
    assert_eq!(classes(&v), ["duplicate-elements", "garbage-read"]);
}

#[test]
fn an_unobserved_unknown_append_is_left_out_and_a_repeated_value_is_refused() {
    // The info append was never read: it may not have happened, so the empty read is fine.
    let h = H::new()
        .serial(Outcome::Info, vec![a(1, 1)])
        .ok(vec![r(1, &[])]);
    let v = h.check();
    assert!(v.valid(), "{:?}", v.anomalies);
    assert_eq!(v.committed, 1);
    let h = H::new().ok(vec![a(1, 1)]).ok(vec![a(1, 1)]);
    assert!(check(&h.txns).is_err());
}

#[test]
fn witnesses_are_capped_but_all_are_counted() {
    let mut h = H::new();
    for k in 0..20 {
        h = h.ok(vec![a(k, 1)]).ok(vec![r(k, &[])]).ok(vec![r(k, &[1])]);
    }
    let v = h.check();
    let shown = v.anomalies.len();
    assert_eq!(shown, WITNESSES_PER_CLASS_MAX);
    assert_eq!(v.counts, [("G-single-realtime".to_string(), 20)]);
}
