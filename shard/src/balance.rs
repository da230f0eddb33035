//! Leader balancing: which shards' leaderships to hand over so that every node leads within
//! one of an even share. Pure (no I/O): the CLI's `cluster rebalance` runs its plan now, and
//! the planner of moves will later.
//!
//! The rule: a shard with a preferred leader (the map's, an operator's choice) that is one of
//! its voters is handed to it first, and stays there. Then a node's *share* counts the shards
//! it leads; only a shard's voters may lead it. Each step hands one shard without such a
//! preference from the node leading the most to the voter of it leading the fewest, and only
//! when that narrows their gap by two or more (a difference of at least two), so the sum of
//! squared shares falls with every step and the plan ends; it ends when no such step is left.
//! Where every node holds every shard and nothing is preferred that means max − min ≤ 1.

use std::collections::BTreeMap;

/// One shard as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLeads {
    /// The shard.
    pub shard: u32,
    /// Its leader (`None`: no leader known; the shard is left out of the plan).
    pub leader: Option<u64>,
    /// Its voters (the leader among them).
    pub voters: Vec<u64>,
    /// The node the map prefers to lead it, if any (ignored unless a voter).
    pub preferred: Option<u64>,
}

impl ShardLeads {
    /// The voter it should be led by, if the map prefers one of its voters.
    fn pinned_to(&self) -> Option<u64> {
        self.preferred.filter(|p| self.voters.contains(p))
    }
}

/// One handover of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// The shard.
    pub shard: u32,
    /// Its leader now.
    pub from: u64,
    /// The voter to lead it.
    pub to: u64,
}

/// Most handovers one plan holds (a plan is at most one per shard in practice; the bound makes
/// the loop's end plain).
pub const HANDOVERS_MAX: usize = 4096;

/// Leaderships per node of `shards` (every voter counted, leading nothing or not).
pub fn shares(shards: &[ShardLeads]) -> BTreeMap<u64, usize> {
    let mut shares: BTreeMap<u64, usize> = BTreeMap::new();
    for s in shards {
        for v in &s.voters {
            shares.entry(*v).or_default();
        }
        if let Some(l) = s.leader {
            *shares.entry(l).or_default() += 1;
        }
    }
    shares
}

/// The handovers that balance `shards`' leaders (see the module's rule), in the order to run
/// them.
pub fn plan(shards: &[ShardLeads]) -> Vec<Handover> {
    let mut shards: Vec<ShardLeads> = shards.to_vec();
    let mut shares = shares(&shards);
    let mut plan = Vec::new();
    for shard in &mut shards {
        let (Some(from), Some(to)) = (shard.leader, shard.pinned_to()) else {
            continue;
        };
        if from != to {
            *shares.entry(from).or_default() -= 1;
            *shares.entry(to).or_default() += 1;
            shard.leader = Some(to);
            plan.push(Handover {
                shard: shard.shard,
                from,
                to,
            });
        }
    }
    while plan.len() < HANDOVERS_MAX {
        let Some(step) = next_step(&shards, &shares) else {
            break;
        };
        let (at, to) = step;
        let shard = &mut shards[at];
        let Some(from) = shard.leader else { break };
        debug_assert!(
            shares[&from] >= shares[&to] + 2,
            "a step narrows a gap of two"
        );
        *shares.entry(from).or_default() -= 1;
        *shares.entry(to).or_default() += 1;
        shard.leader = Some(to);
        plan.push(Handover {
            shard: shard.shard,
            from,
            to,
        });
    }
    plan
}

/// The best step: from the most-leading node, one of its shards to that shard's least-leading
/// voter, when their shares differ by two or more. Among voters leading as few, the one
/// holding the fewest shards goes first (it has the fewest other chances); remaining ties go
/// to the lower shard and node ids, so a plan is the same every time.
fn next_step(shards: &[ShardLeads], shares: &BTreeMap<u64, usize>) -> Option<(usize, u64)> {
    let mut held: BTreeMap<u64, usize> = BTreeMap::new();
    for v in shards.iter().flat_map(|s| &s.voters) {
        *held.entry(*v).or_default() += 1;
    }
    let mut best: Option<(usize, usize, u64)> = None; // (gap, shard index, to)
    for (at, s) in shards.iter().enumerate() {
        let Some(from) = s.leader.filter(|_| s.pinned_to().is_none()) else {
            continue;
        };
        let mine = shares.get(&from).copied().unwrap_or(0);
        let Some((theirs, _, to)) = s
            .voters
            .iter()
            .filter(|v| **v != from)
            .map(|v| {
                let share = shares.get(v).copied().unwrap_or(0);
                (share, held.get(v).copied().unwrap_or(0), *v)
            })
            .min()
        else {
            continue;
        };
        let gap = mine.saturating_sub(theirs);
        if gap >= 2 && best.is_none_or(|(g, _, _)| gap > g) {
            best = Some((gap, at, to));
        }
    }
    best.map(|(_, at, to)| (at, to))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    fn everywhere(leaders: &[u64], nodes: u64) -> Vec<ShardLeads> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, l)| ShardLeads {
                shard: i as u32,
                leader: Some(*l),
                voters: (1..=nodes).collect(),
                preferred: None,
            })
            .collect()
    }

    #[test]
    fn new_nodes_get_their_share_of_the_leaders() {
        // 8 shards led by nodes 1–3 (3, 3, 2), nodes 4 and 5 just added: 2, 2, 2, 1, 1.
        let shards = everywhere(&[1, 2, 3, 1, 2, 3, 1, 2], 5);
        let plan = plan(&shards);
        let mut after = shards.clone();
        for h in &plan {
            let s = &mut after[h.shard as usize];
            assert_eq!(s.leader, Some(h.from), "{h:?} starts from the leader");
            s.leader = Some(h.to);
        }
        let counts: Vec<usize> = shares(&after).into_values().collect();
        assert_eq!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap(),
            1
        );
        assert_eq!(plan.len(), 2, "no more handovers than needed: {plan:?}");
    }

    #[test]
    fn a_balanced_cluster_and_leaderless_shards_need_nothing() {
        assert!(plan(&everywhere(&[1, 2, 3, 1, 2, 3, 1, 2], 3)).is_empty());
        let mut shards = everywhere(&[1, 1, 1, 1], 2);
        for s in &mut shards {
            s.leader = None;
        }
        assert!(plan(&shards).is_empty());
    }

    #[test]
    fn only_a_voter_of_the_shard_is_handed_its_leadership() {
        // Node 3 holds only shard 0: it can take that one, no other.
        let shards = vec![
            ShardLeads {
                shard: 0,
                leader: Some(1),
                voters: vec![1, 2, 3],
                preferred: None,
            },
            ShardLeads {
                shard: 1,
                leader: Some(1),
                voters: vec![1, 2],
                preferred: None,
            },
            ShardLeads {
                shard: 2,
                leader: Some(1),
                voters: vec![1, 2],
                preferred: None,
            },
        ];
        let plan = plan(&shards);
        for h in &plan {
            let s = &shards[h.shard as usize];
            assert!(s.voters.contains(&h.to), "{h:?}");
        }
        assert_eq!(plan.len(), 2, "{plan:?}");
    }

    #[test]
    fn a_preferred_voter_is_handed_its_shard_first_and_keeps_it() {
        // Six shards all led by node 1; shards 0 and 1 prefer node 3, shard 2 prefers node 9
        // (no voter: ignored).
        let mut shards = everywhere(&[1, 1, 1, 1, 1, 1], 3);
        shards[0].preferred = Some(3);
        shards[1].preferred = Some(3);
        shards[2].preferred = Some(9);
        let steps = plan(&shards);
        assert_eq!(
            steps[..2],
            [
                Handover {
                    shard: 0,
                    from: 1,
                    to: 3
                },
                Handover {
                    shard: 1,
                    from: 1,
                    to: 3
                }
            ]
        );
        let mut after = shards.clone();
        for h in &steps {
            after[h.shard as usize].leader = Some(h.to);
        }
        assert_eq!(shares(&after), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        // Once there, a preferred shard is not moved to even the others out.
        let mut pinned = everywhere(&[3, 3, 3, 1], 3);
        for s in &mut pinned[..3] {
            s.preferred = Some(3);
        }
        let none = plan(&pinned);
        assert!(none.is_empty(), "{none:?}");
    }

    proptest! {
        /// With every node a voter of every shard, the plan ends within one of even, each step
        /// from the shard's leader at that point to one of its voters.
        #[test]
        fn a_plan_balances_within_one(nodes in 1u64..7, leaders in prop::collection::vec(1u64..7, 1..40)) {
            let leaders: Vec<u64> = leaders.into_iter().map(|l| (l - 1) % nodes + 1).collect();
            let shards = everywhere(&leaders, nodes);
            let plan = plan(&shards);
            let mut after = shards.clone();
            for h in &plan {
                let s = &mut after[h.shard as usize];
                prop_assert_eq!(s.leader, Some(h.from));
                prop_assert!(s.voters.contains(&h.to));
                s.leader = Some(h.to);
            }
            let counts: Vec<usize> = shares(&after).into_values().collect();
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
            prop_assert!(plan.len() <= leaders.len());
        }
    }
}
