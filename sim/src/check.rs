//! The properties a run must keep: Raft invariants watched while it runs ([`Monitor`]), and
//! after it, no lost acknowledged event, no duplicate, contiguous versions, linearizability
//! of appends and linearizable reads (the WGL checker with the stream model), follower reads
//! that only show committed prefixes, and gap-free, duplicate-free subscriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use strata_raft::types::NodeId;

use crate::cluster::{is_corruption, lock, Cluster};
use crate::models::{Stream, StreamOp};
use crate::wgl::{self, Budget, Operation, Verdict};
use crate::workload::{AsOfRead, Delivered, Input, Op, Outcome};

/// A subscriber's name and what it received.
pub type SubscriberLog = (String, Vec<Delivered>);

/// A broken property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

/// Violations found so far; cheap to clone.
#[derive(Clone, Default)]
pub struct Violations(Arc<Mutex<Vec<Violation>>>);

impl Violations {
    /// Records one (and traces it); a repeat of one already recorded is dropped.
    pub fn add(&self, cluster: &Cluster, property: &'static str, detail: String) {
        let v = Violation { property, detail };
        let mut all = lock(&self.0);
        if all.contains(&v) {
            return;
        }
        cluster
            .trace()
            .log(format!("VIOLATION {}: {}", v.property, v.detail));
        all.push(v);
    }

    /// All of them.
    pub fn all(&self) -> Vec<Violation> {
        lock(&self.0).clone()
    }
}

/// Watches the running nodes: notices nodes that stopped on a storage error, and checks the
/// Raft invariants — no node leads under another's leader id, applied ≤ committed ≤ last log
/// index, and an entry once applied anywhere never changes (same bytes on every node, forever).
pub struct Monitor {
    cluster: Cluster,
    violations: Violations,
    /// Nodes whose disk had a bit flipped (corruption may be reported there, nowhere else).
    tainted: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Replicated bytes of every entry applied anywhere, by index.
    applied: BTreeMap<u64, Vec<u8>>,
    /// Per node: the next index to compare.
    checked: BTreeMap<NodeId, u64>,
    /// Leader ids seen, with the node that led under each and the incarnation it led in.
    leaders: BTreeMap<(u64, NodeId), (NodeId, u64)>,
}

impl Monitor {
    /// A monitor of `cluster`.
    pub fn new(
        cluster: Cluster,
        violations: Violations,
        tainted: Arc<Mutex<BTreeSet<NodeId>>>,
    ) -> Monitor {
        Monitor {
            cluster,
            violations,
            tainted,
            applied: BTreeMap::new(),
            checked: BTreeMap::new(),
            leaders: BTreeMap::new(),
        }
    }

    fn violation(&self, property: &'static str, detail: String) {
        self.violations.add(&self.cluster, property, detail);
    }

    /// A node reported corruption: fine where a bit was flipped, a bug anywhere else.
    pub fn corruption(&self, id: NodeId, why: String) {
        if !lock(&self.tainted).contains(&id) {
            self.violation(
                "false corruption",
                format!("n{id} reported corruption though its disk had no bit flip: {why}"),
            );
        }
        self.cluster.mark_corrupt(id, why);
    }

    /// One look at every running node.
    pub fn sample(&mut self) {
        for id in self.cluster.up_ids() {
            let Some((replica, incarnation)) = self.cluster.replica_incarnation(id) else {
                continue;
            };
            let m = replica.raft().metrics().borrow().clone();
            if let Err(fatal) = &m.running_state {
                // A replica that stopped itself on corruption says why through its shard.
                let why = match replica.shard().watch_corruption().borrow().clone() {
                    Some(reason) => reason,
                    None => fatal.to_string(),
                };
                if why.contains("panic") {
                    self.violation("no panic", format!("n{id}: {why}"));
                }
                if is_corruption(&why) {
                    self.corruption(id, why);
                } else {
                    self.cluster.kill(id, None, &format!("raft stopped: {why}"));
                }
                continue;
            }
            if m.state == ServerState::Leader {
                let leader_id = (m.vote.leader_id().term, m.vote.leader_id().node_id);
                if leader_id.1 != id {
                    self.violation(
                        "election safety",
                        format!("n{id} leads under leader id {leader_id:?}"),
                    );
                }
                match self.leaders.insert(leader_id, (id, incarnation)) {
                    None => self.cluster.trace().log(format!(
                        "n{id} leads (term {}, last log {:?})",
                        leader_id.0, m.last_log_index
                    )),
                    // A restarted leader must win a new term: resuming its old one, it knows
                    // only the commit point it wrote down (seed 1796235047174965752).
                    Some((_, before)) if before != incarnation => self.violation(
                        "a restarted node leads only after an election",
                        format!(
                            "n{id} leads in term {} again after a restart, without an election",
                            leader_id.0
                        ),
                    ),
                    Some(_) => {}
                }
            }
            // The nemesis's own budget: one damaged disk at most, so every configuration any
            // node holds (either half of a joint one) must keep a majority without it, which
            // takes three voters. A smaller one is the harness's bug, not the store's (seeds
            // 9007479 and 1795694877857510229 reached two voters, then lost one to a bit flip).
            for config in m.membership_config.membership().get_joint_config() {
                if !config.is_empty() && config.len() < 3 {
                    self.violation(
                        "nemesis: every configuration has three voters or more",
                        format!("n{id} holds {config:?}"),
                    );
                }
            }
            let shard = replica.shard();
            let applied = m.last_applied.map(|l| l.index);
            let committed = shard.committed().map(|c| c.index);
            let last = match shard.last_index() {
                Ok(l) => l,
                Err(e) => {
                    let why = e.to_string();
                    if is_corruption(&why) {
                        self.corruption(id, why);
                    }
                    continue;
                }
            };
            if committed > last {
                self.violation(
                    "committed <= last log index",
                    format!("n{id}: committed {committed:?} > last log index {last:?}"),
                );
            }
            if applied > last {
                self.violation(
                    "applied <= last log index",
                    format!("n{id}: applied {applied:?} > last log index {last:?}"),
                );
            }
            if let Some(a) = applied {
                // What openraft saved as committed in this incarnation (after a restart it
                // starts from what was applied, and saves again as commits advance).
                if committed.is_some_and(|c| a > c) {
                    self.violation(
                        "applied <= committed",
                        format!("n{id}: applied {a} > committed {committed:?}"),
                    );
                }
                self.compare_entries(id, shard, a + 1);
            }
        }
    }

    fn compare_entries(&mut self, id: NodeId, shard: &strata_raft::Shard, to: u64) {
        let from = *self.checked.get(&id).unwrap_or(&0);
        if from >= to {
            return;
        }
        let entries = match shard.replicated_entries(from, to) {
            Ok(e) => e,
            Err(e) => {
                let why = e.to_string();
                if is_corruption(&why) {
                    self.corruption(id, why);
                }
                return;
            }
        };
        let mut next = from;
        for (seq, bytes) in entries {
            match self.applied.get(&seq) {
                Some(seen) if *seen != bytes => {
                    self.violation(
                        "committed entries never change",
                        format!("entry {seq} on n{id} differs from the one applied before"),
                    );
                }
                Some(_) => {}
                None => {
                    self.applied.insert(seq, bytes);
                }
            }
            next = seq + 1;
        }
        self.checked.insert(id, next.max(from));
    }

    /// Entries applied anywhere.
    pub fn applied_entries(&self) -> usize {
        self.applied.len()
    }

    /// Distinct leader ids seen.
    pub fn leader_ids(&self) -> usize {
        self.leaders.len()
    }
}

/// The final contents of each stream: event ids by version.
pub type Final = BTreeMap<String, Vec<(u64, String)>>;

/// Checks the history and the final log: every acknowledged append is there, in place; no
/// event twice; versions contiguous; refused appends absent; unknown ones all-or-nothing;
/// nothing that no client appended.
pub fn check_log(ops: &[Op], last: &Final) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut v = |property, detail| out.push(Violation { property, detail });
    let mut at: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (stream, events) in last {
        for (i, (version, id)) in events.iter().enumerate() {
            if *version != i as u64 {
                v(
                    "versions contiguous",
                    format!("{stream}: event {i} has version {version}"),
                );
            }
            if at.insert(id, (stream, *version)).is_some() {
                v("no duplicate", format!("event {id} appears twice"));
            }
        }
    }
    let mut appended: BTreeSet<&str> = BTreeSet::new();
    for op in ops {
        let Input::Append { stream, ids, .. } = &op.input else {
            continue;
        };
        appended.extend(ids.iter().map(String::as_str));
        let found: Vec<Option<(&str, u64)>> =
            ids.iter().map(|id| at.get(id.as_str()).copied()).collect();
        match &op.outcome {
            Outcome::Appended(first) => {
                for (i, (id, f)) in ids.iter().zip(&found).enumerate() {
                    let want = (stream.as_str(), first + i as u64);
                    match f {
                        None => v(
                            "no lost acknowledged event",
                            format!("{id} acknowledged at {stream}@{} is not in the log", want.1),
                        ),
                        Some(got) if *got != want => v(
                            "no lost acknowledged event",
                            format!(
                                "{id} acknowledged at {stream}@{} is at {}@{}",
                                want.1, got.0, got.1
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
            Outcome::Conflict(_) => {
                if let Some((id, _)) = ids.iter().zip(&found).find(|(_, f)| f.is_some()) {
                    v(
                        "refused appends leave nothing",
                        format!("{id} was refused (wrong expected version) but is in the log"),
                    );
                }
            }
            Outcome::Unknown | Outcome::Read(_) => {
                let present = found.iter().filter(|f| f.is_some()).count();
                if present != 0 && present != ids.len() {
                    v(
                        "appends are atomic",
                        format!(
                            "{present} of {} events of one append are in the log",
                            ids.len()
                        ),
                    );
                }
            }
        }
    }
    for id in at.keys() {
        if !appended.contains(id) {
            v(
                "no phantom events",
                format!("{id} is in the log but no client appended it"),
            );
        }
    }
    out
}

/// Event records' timestamps (the hybrid logical clock) increase along the log, whatever the
/// nodes' clocks did and whichever node led: `records` are (position, timestamp) in log order.
pub fn check_timestamps(records: &[(u64, u64)]) -> Vec<Violation> {
    records
        .windows(2)
        .find(|w| w[1].1 <= w[0].1)
        .map(|w| Violation {
            property: "timestamps increase along the log",
            detail: format!(
                "record at {} has timestamp {} after {} at {}",
                w[1].0, w[1].1, w[0].1, w[0].0
            ),
        })
        .into_iter()
        .collect()
}

/// Where each event of the final log is: id → (stream, record position, record timestamp).
pub type EventPlaces = BTreeMap<String, (String, u64, u64)>;

/// The ids of `stream`'s events in the final log whose place `keep` admits, in order: what a
/// read as of a point must return.
pub fn log_prefix<'a>(
    last: &'a Final,
    places: &EventPlaces,
    stream: &str,
    keep: impl Fn(&(String, u64, u64)) -> bool,
) -> Vec<&'a str> {
    last.get(stream)
        .into_iter()
        .flatten()
        .filter(|(_, e)| places.get(e).is_some_and(&keep))
        .map(|(_, e)| e.as_str())
        .collect()
}

/// Reads of a stream as of an acknowledged append's position (on whichever node, across
/// leader changes and snapshot installs) equal the final log's prefix of that stream there.
pub fn check_as_of_reads(reads: &[AsOfRead], last: &Final, places: &EventPlaces) -> Vec<Violation> {
    let mut out = Vec::new();
    for (stream, position, ids, node) in reads {
        let want = log_prefix(last, places, stream, |p| p.1 <= *position);
        if ids.iter().map(String::as_str).collect::<Vec<_>>() != want {
            out.push(Violation {
                property: "as-of reads equal the log's prefix",
                detail: format!(
                    "n{node}: {stream} as of position {position} returned {} events, the log's prefix has {}",
                    ids.len(),
                    want.len()
                ),
            });
        }
    }
    out
}

/// Follower reads may lag, but must show a prefix of the final stream.
pub fn check_follower_reads(ops: &[Op], last: &Final) -> Vec<Violation> {
    let mut out = Vec::new();
    for op in ops {
        let (
            Input::Read {
                stream,
                follower: Some(node),
            },
            Outcome::Read(ids),
        ) = (&op.input, &op.outcome)
        else {
            continue;
        };
        let full: Vec<&str> = last.get(stream).map_or(Vec::new(), |e| {
            e.iter().map(|(_, id)| id.as_str()).collect()
        });
        let prefix = ids.len() <= full.len() && ids.iter().zip(&full).all(|(a, b)| a == b);
        if !prefix {
            out.push(Violation {
                property: "follower reads show committed prefixes",
                detail: format!("read of {stream} on n{node} returned {} events that are not a prefix of the log", ids.len()),
            });
        }
    }
    out
}

/// Each subscriber saw its stream in order from version 0, no gap, no duplicate, the same
/// events as the log.
pub fn check_subscribers(received: &[SubscriberLog], last: &Final) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, events) in received {
        for (i, (stream, version, id)) in events.iter().enumerate() {
            let ok_version = *version == i as u64;
            let in_log = last
                .get(stream)
                .and_then(|e| e.get(*version as usize))
                .is_some_and(|(_, lid)| lid == id);
            if !ok_version || !in_log {
                out.push(Violation {
                    property: "subscriptions: in order, no gap, no duplicate",
                    detail: format!(
                        "subscriber {name}: delivery {i} was {stream}@{version} ({id}){}",
                        if in_log {
                            ""
                        } else {
                            ", which is not that version in the log"
                        }
                    ),
                });
                break;
            }
        }
    }
    out
}

/// Operations of one stream, as the linearizability checker takes them.
fn stream_ops(ops: &[Op], stream: &str) -> Vec<Operation<StreamOp>> {
    ops.iter()
        .filter_map(|o| {
            let op = match (&o.input, &o.outcome) {
                (
                    Input::Append {
                        stream: s,
                        expected,
                        ids,
                    },
                    outcome,
                ) if s == stream => StreamOp::Append {
                    expected: *expected,
                    events: ids.clone(),
                    result: match outcome {
                        Outcome::Appended(first) => Some(Ok(*first)),
                        Outcome::Conflict(actual) => Some(Err(*actual)),
                        _ => None,
                    },
                },
                (
                    Input::Read {
                        stream: s,
                        follower: None,
                    },
                    Outcome::Read(ids),
                ) if s == stream => StreamOp::Read(Some(ids.clone())),
                _ => return None,
            };
            Some(Operation {
                client: o.client,
                op,
                call: o.call,
                ret: o.ret,
            })
        })
        .collect()
}

fn linearizable(ops: &[Operation<StreamOp>], time: Duration) -> Verdict {
    wgl::check(
        &Stream,
        ops,
        Budget {
            deadline: Instant::now() + time,
            states_max: 2_000_000,
        },
    )
}

/// Shrinks a non-linearizable history without making a violation up: first the shortest
/// prefix in time that still fails (operations still running at the cut become indeterminate,
/// which only allows more orders), then, one at a time, operations that cannot change the
/// stream — reads and refused appends. Dropping an acknowledged or indeterminate append would
/// leave later operations unexplained by a history that never happened.
fn shrink(ops: Vec<Operation<StreamOp>>) -> Vec<Operation<StreamOp>> {
    let fails = |h: &[Operation<StreamOp>]| {
        linearizable(h, Duration::from_millis(200)) == Verdict::NotLinearizable
    };
    let mut ends: Vec<usize> = ops.iter().filter_map(|o| o.ret).collect();
    ends.sort_unstable();
    ends.dedup();
    // Prefixes of a linearizable history are linearizable: the first failing cut is found by
    // bisection over the completion events.
    let (mut lo, mut hi) = (0, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let cut = ends.get(mid).map_or(usize::MAX, |e| e + 1);
        if fails(&prefix(&ops, cut)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut ops = prefix(&ops, ends.get(lo).map_or(usize::MAX, |e| e + 1));
    let mut i = 0;
    let mut tries = 0;
    while i < ops.len() && tries < 400 {
        let inert = match &ops[i].op {
            StreamOp::Read(_) => true,
            StreamOp::Append { result, .. } => matches!(result, Some(Err(_))),
        };
        if !inert {
            i += 1;
            continue;
        }
        tries += 1;
        let mut fewer = ops.clone();
        fewer.remove(i);
        if fails(&fewer) {
            ops = fewer;
        } else {
            i += 1;
        }
    }
    ops
}

/// The history as it stood just before event `cut`: operations called before it, those that
/// had not returned by then indeterminate.
fn prefix(ops: &[Operation<StreamOp>], cut: usize) -> Vec<Operation<StreamOp>> {
    ops.iter()
        .filter(|o| o.call < cut)
        .map(|o| {
            if o.ret.is_some_and(|r| r < cut) {
                return o.clone();
            }
            let op = match &o.op {
                StreamOp::Append {
                    expected, events, ..
                } => StreamOp::Append {
                    expected: *expected,
                    events: events.clone(),
                    result: None,
                },
                StreamOp::Read(_) => StreamOp::Read(None),
            };
            Operation {
                op,
                ret: None,
                ..o.clone()
            }
        })
        .collect()
}

/// Linearizability of appends and linearizable reads, stream by stream. Returns the violation
/// (with the shortest failing sub-history found) and how many streams were left unknown.
pub fn check_linearizable(ops: &[Op], time: Duration) -> (Vec<Violation>, usize) {
    let streams: BTreeSet<&str> = ops
        .iter()
        .map(|o| match &o.input {
            Input::Append { stream, .. } | Input::Read { stream, .. } => stream.as_str(),
        })
        .collect();
    let mut unknown = 0;
    for stream in streams {
        let part = stream_ops(ops, stream);
        match linearizable(&part, time) {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown += 1,
            Verdict::NotLinearizable => {
                let small = shrink(part);
                const SHOWN: usize = 24;
                let mut lines: Vec<String> = Vec::new();
                if small.len() > SHOWN {
                    lines.push(format!("  ({} earlier operations)", small.len() - SHOWN));
                }
                lines.extend(
                    small
                        .iter()
                        .skip(small.len().saturating_sub(SHOWN))
                        .map(|o| {
                            format!("  client {} [{}..{:?}] {:?}", o.client, o.call, o.ret, o.op)
                        }),
                );
                return (
                    vec![Violation {
                        property: "linearizable",
                        detail: format!(
                            "stream {stream}: {} operations, none of whose orders explains them:\n{}",
                            small.len(),
                            lines.join("\n")
                        ),
                    }],
                    unknown,
                );
            }
        }
    }
    (Vec::new(), unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(
        client: u64,
        stream: &str,
        ids: &[&str],
        outcome: Outcome,
        call: usize,
        ret: Option<usize>,
    ) -> Op {
        Op {
            client,
            input: Input::Append {
                stream: stream.into(),
                expected: None,
                ids: ids.iter().map(|s| s.to_string()).collect(),
            },
            outcome,
            call,
            ret,
        }
    }

    fn log(events: &[&str]) -> Final {
        Final::from([(
            "s".to_string(),
            events
                .iter()
                .enumerate()
                .map(|(i, id)| (i as u64, id.to_string()))
                .collect(),
        )])
    }

    fn properties(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.property).collect()
    }

    #[test]
    fn an_intact_log_passes() {
        let ops = vec![
            append(0, "s", &["a", "b"], Outcome::Appended(0), 0, Some(1)),
            append(1, "s", &["c"], Outcome::Unknown, 2, None),
        ];
        assert!(check_log(&ops, &log(&["a", "b", "c"])).is_empty());
        assert!(check_log(&ops, &log(&["a", "b"])).is_empty());
    }

    #[test]
    fn lost_misplaced_duplicated_partial_and_phantom_events_are_caught() {
        let acked = vec![append(
            0,
            "s",
            &["a", "b"],
            Outcome::Appended(0),
            0,
            Some(1),
        )];
        assert_eq!(
            properties(&check_log(&acked, &log(&["a"]))),
            ["no lost acknowledged event"]
        );
        assert_eq!(
            properties(&check_log(&acked, &log(&["x", "a", "b"]))),
            [
                "no lost acknowledged event",
                "no lost acknowledged event",
                "no phantom events"
            ]
        );
        assert!(properties(&check_log(&acked, &log(&["a", "b", "a"]))).contains(&"no duplicate"));
        let unknown = vec![append(0, "s", &["a", "b"], Outcome::Unknown, 0, None)];
        assert_eq!(
            properties(&check_log(&unknown, &log(&["a"]))),
            ["appends are atomic"]
        );
        let refused = vec![append(0, "s", &["a"], Outcome::Conflict(None), 0, Some(1))];
        assert_eq!(
            properties(&check_log(&refused, &log(&["a"]))),
            ["refused appends leave nothing"]
        );
        let gap = Final::from([(
            "s".to_string(),
            vec![(0, "a".to_string()), (2, "b".to_string())],
        )]);
        let both = vec![append(0, "s", &["a", "b"], Outcome::Unknown, 0, None)];
        assert_eq!(properties(&check_log(&both, &gap)), ["versions contiguous"]);
    }

    #[test]
    fn timestamps_must_increase() {
        assert!(check_timestamps(&[(0, 5), (10, 6), (20, 9)]).is_empty());
        assert_eq!(check_timestamps(&[(0, 5), (10, 5)]).len(), 1);
        assert_eq!(check_timestamps(&[(0, 5), (10, 4), (20, 3)]).len(), 1);
    }

    #[test]
    fn subscribers_and_follower_reads_are_checked_against_the_log() {
        let last = log(&["a", "b", "c"]);
        let good = vec![(
            "x".to_string(),
            vec![("s".into(), 0, "a".into()), ("s".into(), 1, "b".into())],
        )];
        assert!(check_subscribers(&good, &last).is_empty());
        let gap = vec![(
            "x".to_string(),
            vec![("s".into(), 0, "a".into()), ("s".into(), 2, "c".into())],
        )];
        assert_eq!(check_subscribers(&gap, &last).len(), 1);
        let wrong = vec![("x".to_string(), vec![("s".into(), 0, "b".into())])];
        assert_eq!(check_subscribers(&wrong, &last).len(), 1);
        let read = |ids: &[&str]| Op {
            client: 0,
            input: Input::Read {
                stream: "s".into(),
                follower: Some(2),
            },
            outcome: Outcome::Read(ids.iter().map(|s| s.to_string()).collect()),
            call: 0,
            ret: Some(1),
        };
        assert!(check_follower_reads(&[read(&["a", "b"])], &last).is_empty());
        assert_eq!(check_follower_reads(&[read(&["b"])], &last).len(), 1);
    }

    #[test]
    fn a_stale_linearizable_read_is_caught_and_shrunk() {
        // "a" is acknowledged before the read starts, yet the read misses it.
        let ops = vec![
            append(0, "s", &["a"], Outcome::Appended(0), 0, Some(1)),
            append(2, "s", &["z"], Outcome::Unknown, 2, None),
            Op {
                client: 1,
                input: Input::Read {
                    stream: "s".into(),
                    follower: None,
                },
                outcome: Outcome::Read(Vec::new()),
                call: 3,
                ret: Some(4),
            },
        ];
        let (found, unknown) = check_linearizable(&ops, Duration::from_secs(5));
        assert_eq!(unknown, 0);
        assert_eq!(properties(&found), ["linearizable"]);
        // The indeterminate append stays: dropping one could invent a violation (a read that
        // saw its events), so only reads and refused appends are dropped.
        assert!(
            found[0].detail.contains(": 3 operations"),
            "{}",
            found[0].detail
        );
    }

    fn linearizable_read(client: u64, ids: &[&str], call: usize, ret: usize) -> Op {
        Op {
            client,
            input: Input::Read {
                stream: "s".into(),
                follower: None,
            },
            outcome: Outcome::Read(ids.iter().map(|s| s.to_string()).collect()),
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn shrinking_keeps_the_appends_a_violation_needs() {
        // Only the last read is wrong (it misses "b"). Dropping an acknowledged append would
        // make the earlier read unexplained too, a violation of a history that never happened:
        // the shrunk history keeps both appends and the stale read, and drops the good read.
        let ops = vec![
            append(0, "s", &["a"], Outcome::Appended(0), 0, Some(1)),
            append(0, "s", &["b"], Outcome::Appended(1), 2, Some(3)),
            linearizable_read(1, &["a", "b"], 4, 5),
            linearizable_read(1, &["a"], 8, 9),
        ];
        let (found, _) = check_linearizable(&ops, Duration::from_secs(5));
        let detail = &found[0].detail;
        assert!(detail.contains(": 3 operations"), "{detail}");
        assert!(detail.contains("Read(Some([\"a\"]))"), "{detail}");
    }
}
