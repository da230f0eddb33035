//! Where a stream's calls go on a cluster of several shards: the cluster map and each shard's
//! leader, learned from `Cluster.Status`, so a call goes straight to the node leading its
//! stream's shard instead of through a node that forwards it.
//!
//! ```text
//!   stream ──slot (strata_proto::routing)──▶ map ──▶ shard k ──▶ leader of k ──▶ its address
//! ```
//!
//! The table is a cache: a node that is not the shard's leader names the leader (the entry
//! is replaced), a node that does not answer drops the entry, and a table with dropped
//! entries is read again from the cluster at most every [`RELOAD_EVERY`]. A node answers
//! with the epoch of the map it routed by (`strata-map-epoch`): a newer one than the table's
//! (slots moved, a shard split) has the table read again before the next call. Without a table (a
//! node of one shard, no replication, or a status that did not answer) calls go to the
//! client's target node as before, which forwards what it does not lead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strata_proto::routing::{ClusterMap, ShardId, SlotRange};
use strata_proto::v1 as pb;

/// Least time between two reads of the table from the cluster.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The map and the shards' leaders' client addresses.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    map: ClusterMap,
    leaders: HashMap<ShardId, String>,
}

impl Routes {
    /// The table a node's status gives; `None` for one shard, no replication (no node
    /// addresses), or a map that does not check.
    pub(crate) fn from_status(status: &pb::ClusterStatus) -> Option<Routes> {
        if status.shards.len() < 2 {
            return None;
        }
        let ranges = status
            .shards
            .iter()
            .flat_map(|s| {
                s.slots.iter().map(|r| {
                    (
                        SlotRange {
                            start: r.start,
                            end: r.end,
                        },
                        ShardId(s.id),
                    )
                })
            })
            .collect();
        let map = ClusterMap::new(status.map_epoch, status.slots, ranges)
            .ok()?
            .with_empty(status.shards.iter().map(|s| ShardId(s.id)));
        let addr_of: HashMap<u64, &str> = status
            .nodes
            .iter()
            .filter(|n| !n.addr.is_empty())
            .map(|n| (n.id, n.addr.as_str()))
            .collect();
        let leaders = status
            .shards
            .iter()
            .filter(|s| s.leader != 0)
            .filter_map(|s| Some((ShardId(s.id), addr_of.get(&s.leader)?.to_string())))
            .collect();
        Some(Routes { map, leaders })
    }

    /// The address of the leader of `stream`'s shard, if known.
    pub(crate) fn leader_of(&self, stream: &str) -> Option<&str> {
        self.leaders
            .get(&self.map.shard_of(stream))
            .map(String::as_str)
    }

    /// `leader` leads `stream`'s shard (a node's hint).
    pub(crate) fn learn(&mut self, stream: &str, leader: &str) {
        self.leaders
            .insert(self.map.shard_of(stream), leader.to_string());
    }

    /// The leader of `stream`'s shard did not answer.
    pub(crate) fn forget(&mut self, stream: &str) {
        self.leaders.remove(&self.map.shard_of(stream));
    }

    /// The epoch of the map the table was read with.
    pub(crate) fn epoch(&self) -> u64 {
        self.map.epoch()
    }

    /// Whether every shard's leader is known.
    pub(crate) fn complete(&self) -> bool {
        self.leaders.len() == self.map.shards().len()
    }
}

/// The table and when it may be read again.
#[derive(Debug, Default)]
pub(crate) struct RouteState {
    pub(crate) routes: Option<Routes>,
    /// `None`: never read.
    pub(crate) next_read: Option<Instant>,
    /// A node answered by a newer map than the table's (slots moved): read it at once.
    stale: bool,
}

impl RouteState {
    /// Whether the table should be read from the cluster now (and if so, marks it read: one
    /// caller reads, the others go on without waiting).
    pub(crate) fn read_due(&mut self, now: Instant) -> bool {
        let wanted = self.routes.as_ref().is_none_or(|r| !r.complete());
        let due = self.next_read.is_none_or(|at| now >= at);
        if self.stale || (wanted && due) {
            self.stale = false;
            self.next_read = Some(now + RELOAD_EVERY);
            return true;
        }
        false
    }

    /// A node routed a call by the map of `epoch`: a table read with an older one is read
    /// again before the next call.
    pub(crate) fn saw_epoch(&mut self, epoch: u64) {
        if self.routes.as_ref().is_some_and(|r| r.epoch() < epoch) {
            self.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status(leaders: &[u64]) -> pb::ClusterStatus {
        let map = ClusterMap::even(4096, leaders.len() as u32).unwrap();
        pb::ClusterStatus {
            map_epoch: 1,
            slots: 4096,
            nodes: (1..=3)
                .map(|id| pb::NodeStatus {
                    id,
                    addr: format!("n{id}:1"),
                    ..Default::default()
                })
                .collect(),
            shards: map
                .ranges()
                .iter()
                .zip(leaders)
                .map(|((r, id), leader)| pb::ShardStatus {
                    id: id.0,
                    leader: *leader,
                    replicas: vec![1, 2, 3],
                    slots: vec![pb::SlotRange {
                        start: r.start,
                        end: r.end,
                    }],
                    moving: None,
                    preferred_leader: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_stream_goes_to_its_shards_leader_and_hints_and_silence_change_it() {
        let mut routes = Routes::from_status(&status(&[1, 2, 3, 0])).unwrap();
        let map = ClusterMap::even(4096, 4).unwrap();
        let stream_of = |shard: u32| {
            (0..)
                .map(|i| format!("s-{i}"))
                .find(|s| map.shard_of(s) == ShardId(shard))
                .unwrap()
        };
        assert_eq!(routes.leader_of(&stream_of(1)), Some("n2:1"));
        assert_eq!(routes.leader_of(&stream_of(3)), None, "no leader known");
        assert!(!routes.complete());
        routes.learn(&stream_of(3), "n1:1");
        assert_eq!(routes.leader_of(&stream_of(3)), Some("n1:1"));
        assert!(routes.complete());
        routes.forget(&stream_of(1));
        assert_eq!(routes.leader_of(&stream_of(1)), None);
    }

    #[test]
    fn one_shard_or_a_bad_map_gives_no_table() {
        assert!(Routes::from_status(&status(&[1])).is_none());
        let mut bad = status(&[1, 2]);
        bad.shards[1].slots[0].start += 1; // a gap
        assert!(Routes::from_status(&bad).is_none());
    }

    #[test]
    fn the_table_is_read_once_then_at_most_every_reload_interval_while_incomplete() {
        let mut state = RouteState::default();
        let t0 = Instant::now();
        assert!(state.read_due(t0));
        assert!(!state.read_due(t0), "one caller reads");
        assert!(state.read_due(t0 + RELOAD_EVERY));
        state.routes = Routes::from_status(&status(&[1, 2]));
        assert!(!state.read_due(t0 + RELOAD_EVERY * 3), "complete: not read");
        // A node answering by a newer map makes it due at once, for one caller.
        state.saw_epoch(1);
        assert!(!state.read_due(t0 + RELOAD_EVERY * 3), "the same epoch");
        state.saw_epoch(2);
        assert!(state.read_due(t0 + RELOAD_EVERY * 3), "a newer epoch");
        assert!(!state.read_due(t0 + RELOAD_EVERY * 3), "one caller reads");
    }
}
