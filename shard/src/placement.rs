//! Replica placement: which replicas to move (`cluster move-shard`) so that the shards'
//! replicas are spread evenly over the nodes, and a node leaving holds none. Pure (no I/O):
//! `strata cluster rebalance` and `remove-node` run its plans one move at a time.
//!
//! The rule: a node's *load* counts the replicas it holds. First every replica on a leaving
//! node moves to the staying node of least load not holding that shard (ties: the lower id).
//! Then, while the most loaded staying node holds two or more replicas more than the least
//! loaded, one replica moves from the first to the second — of a shard the second does not
//! hold; if every shard of the first is on the second already, the next least loaded is
//! tried. Each such step lowers the sum of squared loads, so the plan ends; where it ends,
//! loads differ by at most one, or no move can narrow them (every shard of a most loaded node
//! is already on every less loaded one).

use std::collections::BTreeMap;

/// A shard's replicas as the planner sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The shard.
    pub shard: u32,
    /// The nodes holding its replicas.
    pub replicas: Vec<u64>,
}

/// One replica move of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaMove {
    /// The shard.
    pub shard: u32,
    /// The node holding the replica now.
    pub from: u64,
    /// The node to hold it.
    pub to: u64,
}

/// Most moves one plan holds (the bound makes the loop's end plain).
pub const MOVES_MAX: usize = 4096;

/// Replicas held per node: every node of `nodes` (holding none or not), and any other holder.
pub fn loads(shards: &[Placed], nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut loads: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for s in shards {
        for r in &s.replicas {
            *loads.entry(*r).or_default() += 1;
        }
    }
    loads
}

/// The moves that empty the `leaving` nodes and spread the replicas evenly over the others of
/// `nodes` (see the module's rule), in the order to run them. A replica on a node not in
/// `nodes` counts as leaving.
pub fn plan(shards: &[Placed], nodes: &[u64], leaving: &[u64]) -> Vec<ReplicaMove> {
    let mut shards = shards.to_vec();
    let staying: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|n| !leaving.contains(n))
        .collect();
    let mut plan = Vec::new();
    for at in 0..shards.len() {
        for from in shards[at].replicas.clone() {
            if staying.contains(&from) {
                continue;
            }
            let loads = loads(&shards, &staying);
            let to = staying
                .iter()
                .filter(|n| !shards[at].replicas.contains(n))
                .min_by_key(|n| (loads.get(n).copied().unwrap_or(0), **n));
            if let Some(&to) = to {
                apply(&mut shards, &mut plan, (at, from, to));
            }
        }
    }
    while plan.len() < MOVES_MAX {
        let Some(step) = next_step(&shards, &staying) else {
            break;
        };
        apply(&mut shards, &mut plan, step);
    }
    plan
}

fn apply(shards: &mut [Placed], plan: &mut Vec<ReplicaMove>, (at, from, to): (usize, u64, u64)) {
    let s = &mut shards[at];
    s.replicas.retain(|r| *r != from);
    s.replicas.push(to);
    debug_assert!(
        s.replicas.iter().filter(|r| **r == to).count() == 1,
        "a node holds one replica of a shard"
    );
    plan.push(ReplicaMove {
        shard: s.shard,
        from,
        to,
    });
}

/// The next balancing move among `staying` (the shard's place, from, to), if any narrows a
/// gap of two or more.
fn next_step(shards: &[Placed], staying: &[u64]) -> Option<(usize, u64, u64)> {
    let loads = loads(shards, staying);
    let in_staying = |n: &u64| staying.contains(n);
    let (&most, &top) = loads
        .iter()
        .filter(|(n, _)| in_staying(n))
        .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))?;
    let mut lighter: Vec<(usize, u64)> = loads
        .iter()
        .filter(|(n, l)| in_staying(n) && top >= **l + 2)
        .map(|(n, l)| (*l, *n))
        .collect();
    lighter.sort_unstable();
    for (_, to) in lighter {
        let movable = shards
            .iter()
            .position(|s| s.replicas.contains(&most) && !s.replicas.contains(&to));
        if let Some(at) = movable {
            return Some((at, most, to));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn everywhere(shards: u32, nodes: &[u64]) -> Vec<Placed> {
        (0..shards)
            .map(|shard| Placed {
                shard,
                replicas: nodes.to_vec(),
            })
            .collect()
    }

    fn run(shards: &[Placed], plan: &[ReplicaMove]) -> Vec<Placed> {
        let mut shards = shards.to_vec();
        for m in plan {
            let s = shards.iter_mut().find(|s| s.shard == m.shard).unwrap();
            assert!(
                s.replicas.contains(&m.from),
                "{m:?} moves a replica not there"
            );
            assert!(!s.replicas.contains(&m.to), "{m:?} moves onto a holder");
            s.replicas.retain(|r| *r != m.from);
            s.replicas.push(m.to);
        }
        shards
    }

    fn spread(shards: &[Placed], nodes: &[u64]) -> usize {
        let loads = loads(shards, nodes);
        let held: Vec<usize> = nodes.iter().map(|n| loads[n]).collect();
        held.iter().max().unwrap() - held.iter().min().unwrap()
    }

    #[test]
    fn a_new_node_takes_an_even_share_and_a_leaving_one_gives_all_away() {
        let shards = everywhere(6, &[1, 2, 3]);
        let four = plan(&shards, &[1, 2, 3, 4], &[]);
        let after = run(&shards, &four);
        assert_eq!(spread(&after, &[1, 2, 3, 4]), 1, "{four:?}");
        assert!(after.iter().all(|s| s.replicas.len() == 3));
        assert_eq!(four.len(), 4, "18 replicas over 4 nodes: node 4 takes 4");
        let five = run(&after, &plan(&after, &[1, 2, 3, 4, 5], &[]));
        assert!(spread(&five, &[1, 2, 3, 4, 5]) <= 1);
        // Node 5 leaves, then node 4: their replicas go to the others, evenly.
        let drain = plan(&five, &[1, 2, 3, 4, 5], &[5]);
        let without5 = run(&five, &drain);
        assert!(without5.iter().all(|s| !s.replicas.contains(&5)));
        assert!(spread(&without5, &[1, 2, 3, 4]) <= 1);
        let three = run(&without5, &plan(&without5, &[1, 2, 3, 4], &[4]));
        assert_eq!(three, run(&three, &[]));
        assert!(three.iter().all(|s| {
            let mut r = s.replicas.clone();
            r.sort_unstable();
            r == vec![1, 2, 3]
        }));
        assert!(
            plan(&three, &[1, 2, 3], &[]).is_empty(),
            "balanced: nothing to do"
        );
    }

    #[test]
    fn every_plan_ends_balanced_or_stuck_and_never_doubles_a_replica() {
        // A small deterministic generator: placements of 1–9 shards of 1–3 replicas over
        // 1–6 nodes, some leaving.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..2000 {
            let node_count = 1 + next(6);
            let nodes: Vec<u64> = (1..=node_count).collect();
            let shards: Vec<Placed> = (0..1 + next(9) as u32)
                .map(|shard| {
                    let mut replicas: Vec<u64> = Vec::new();
                    for _ in 0..1 + next(3) {
                        let n = 1 + next(node_count);
                        if !replicas.contains(&n) {
                            replicas.push(n);
                        }
                    }
                    Placed { shard, replicas }
                })
                .collect();
            let leaving: Vec<u64> = nodes.iter().copied().filter(|_| next(5) == 0).collect();
            let p = plan(&shards, &nodes, &leaving);
            let after = run(&shards, &p);
            let staying: Vec<u64> = nodes
                .iter()
                .copied()
                .filter(|n| !leaving.contains(n))
                .collect();
            if staying.is_empty() {
                continue;
            }
            for s in &after {
                let want = shards.iter().find(|o| o.shard == s.shard).unwrap();
                assert_eq!(
                    s.replicas.len(),
                    want.replicas.len(),
                    "a replica count changed"
                );
                let room = staying.len() >= s.replicas.len();
                if room {
                    assert!(
                        s.replicas.iter().all(|r| staying.contains(r)),
                        "{s:?} kept a leaving node: {shards:?} {leaving:?} {p:?}"
                    );
                }
            }
            let fits = after
                .iter()
                .all(|s| s.replicas.iter().all(|r| staying.contains(r)));
            if fits && spread(&after, &staying) > 1 {
                assert!(
                    next_step(&after, &staying).is_none(),
                    "stopped early: {after:?}"
                );
            }
        }
    }
}
