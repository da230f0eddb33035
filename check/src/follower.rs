//! Checks of follower reads (`Consistency::Follower`: served by whichever node is asked, from
//! what it has applied):
//!
//! - *prefix consistency*: every read of a stream is a prefix of its longest read (the
//!   stream's order): a follower may be behind, never different (`not-a-prefix`);
//! - *monotonic reads*: one client, bound to one node, never sees a stream shrink
//!   (`went-back`);
//! - *closed timestamps*: a read as of time T whose answer says the shard is closed through T
//!   can never change: it must hold exactly the stream's events stamped at or before T
//!   (`closed-read-changed`), checked against the longest read when that reaches past T;
//! - *no phantoms*: every element read was appended by a write that did not fail
//!   (`phantom`).
//!
//! Staleness is measured, not judged (followers promise no bound): for each read, how long the
//! oldest acknowledged append it did not see had been acknowledged.

use std::collections::{HashMap, HashSet};

/// One append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The stream (key).
    pub key: u64,
    /// The value appended (unique per run).
    pub value: u64,
    /// Invoked, µs since the run began.
    pub call_us: u64,
    /// Acknowledged (µs); `None` unless it ended ok.
    pub ack_us: Option<u64>,
    /// Certainly not written.
    pub failed: bool,
}

/// One read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The client (bound to one node).
    pub client: u64,
    /// The stream (key).
    pub key: u64,
    /// Invoked, µs since the run began.
    pub call_us: u64,
    /// What it returned: each event's value and timestamp (µs since the Unix epoch).
    pub events: Vec<(u64, u64)>,
    /// Read as of this timestamp (µs since the Unix epoch), and the closed timestamp the
    /// answer carried.
    pub as_of: Option<(u64, u64)>,
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `not-a-prefix`, `went-back`, `closed-read-changed` or `phantom`.
    pub class: &'static str,
    /// In words.
    pub explanation: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.explanation)
    }
}

/// Most violations kept (all are counted).
pub const VIOLATIONS_MAX: usize = 16;

/// The verdict.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The first violations.
    pub violations: Vec<Violation>,
    /// How many of each class.
    pub counts: Vec<(String, usize)>,
    /// Reads checked, and of them as-of reads found closed.
    pub reads: usize,
    /// As-of reads checked against the stream (closed, and the stream read far enough).
    pub closed_checked: usize,
    /// Per read: ms the oldest acknowledged append it missed had been acknowledged (0: none
    /// missed), sorted.
    pub staleness_ms: Vec<f64>,
}

impl Verdict {
    /// No violation.
    pub fn valid(&self) -> bool {
        self.counts.is_empty()
    }

    fn add(&mut self, class: &'static str, explanation: String) {
        match self.counts.iter_mut().find(|(c, _)| c == class) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((class.to_string(), 1)),
        }
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation { class, explanation });
        }
    }
}

fn values(events: &[(u64, u64)]) -> Vec<u64> {
    events.iter().map(|(v, _)| *v).collect()
}

/// Checks the reads against each other and the writes (see the module docs).
pub fn check(writes: &[Write], reads: &[Read]) -> Verdict {
    let mut verdict = Verdict {
        reads: reads.len(),
        ..Verdict::default()
    };
    // Each stream's order: its longest plain read.
    let mut longest: HashMap<u64, &Read> = HashMap::new();
    for r in reads.iter().filter(|r| r.as_of.is_none()) {
        let e = longest.entry(r.key).or_insert(r);
        if r.events.len() > e.events.len() {
            *e = r;
        }
    }
    let written: HashSet<(u64, u64)> = writes
        .iter()
        .filter(|w| !w.failed)
        .map(|w| (w.key, w.value))
        .collect();
    let mut last_seen: HashMap<(u64, u64), usize> = HashMap::new();
    let mut ordered: Vec<&Read> = reads.iter().collect();
    ordered.sort_by_key(|r| r.call_us);
    for r in ordered {
        let got = values(&r.events);
        if let Some(v) = got.iter().find(|v| !written.contains(&(r.key, **v))) {
            verdict.add(
                "phantom",
                format!("client {} read {v} in stream {}, which no append that could have happened wrote", r.client, r.key),
            );
        }
        let Some(reference) = longest.get(&r.key) else {
            continue;
        };
        let order = values(&reference.events);
        match r.as_of {
            None => {
                if !order.starts_with(&got) {
                    verdict.add(
                        "not-a-prefix",
                        format!(
                            "client {} read stream {} = {got:?}, not a prefix of {order:?}",
                            r.client, r.key
                        ),
                    );
                }
                let seen = last_seen.entry((r.client, r.key)).or_insert(0);
                if got.len() < *seen {
                    verdict.add(
                        "went-back",
                        format!(
                            "client {} read {} events of stream {} after reading {}",
                            r.client,
                            got.len(),
                            r.key,
                            *seen
                        ),
                    );
                }
                *seen = (*seen).max(got.len());
                verdict.staleness_ms.push(staleness(writes, r));
            }
            Some((t, closed)) if closed >= t => {
                let reaches = reference.events.last().is_some_and(|(_, ts)| *ts >= t);
                if !reaches {
                    continue;
                }
                verdict.closed_checked += 1;
                let expected: Vec<u64> = reference
                    .events
                    .iter()
                    .filter(|(_, ts)| *ts <= t)
                    .map(|(v, _)| *v)
                    .collect();
                if got != expected {
                    verdict.add(
                        "closed-read-changed",
                        format!("client {} read stream {} as of {t} (closed through {closed}) = {got:?}, but the stream holds {expected:?} up to then", r.client, r.key),
                    );
                }
            }
            Some(_) => {}
        }
    }
    verdict
        .staleness_ms
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    verdict
}

/// How long (ms) the oldest acknowledged append `r` missed had been acknowledged when `r`
/// began; 0 when it missed none.
fn staleness(writes: &[Write], r: &Read) -> f64 {
    let got: HashSet<u64> = r.events.iter().map(|(v, _)| *v).collect();
    writes
        .iter()
        .filter(|w| w.key == r.key && !got.contains(&w.value))
        .filter_map(|w| w.ack_us.filter(|a| *a < r.call_us))
        .min()
        .map_or(0.0, |a| (r.call_us - a) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(value: u64, ack: u64) -> Write {
        Write {
            key: 1,
            value,
            call_us: ack - 1,
            ack_us: Some(ack),
            failed: false,
        }
    }

    fn r(client: u64, call_us: u64, events: &[(u64, u64)], as_of: Option<(u64, u64)>) -> Read {
        Read {
            client,
            key: 1,
            call_us,
            events: events.to_vec(),
            as_of,
        }
    }

    #[test]
    fn lagging_follower_reads_pass_and_each_violation_is_found() {
        let writes = [w(1, 10), w(2, 20), w(3, 30)];
        let good = [
            r(0, 15, &[(1, 100)], None),
            r(0, 35, &[(1, 100), (2, 200)], None),
            r(1, 40, &[(1, 100), (2, 200), (3, 300)], None),
            r(1, 50, &[(1, 100), (2, 200)], Some((250, 260))),
            // Not closed: not judged.
            r(1, 55, &[(1, 100)], Some((250, 0))),
        ];
        let v = check(&writes, &good);
        assert!(v.valid(), "{:?}", v.violations);
        assert_eq!(v.closed_checked, 1);
        // The second read missed write 3, acknowledged 5 µs before it began.
        assert!(v.staleness_ms.iter().any(|s| *s > 0.0));
        let class = |reads: &[Read]| {
            let v = check(&writes, reads);
            v.counts.into_iter().map(|(c, _)| c).collect::<Vec<_>>()
        };
        let order = r(1, 40, &[(1, 100), (2, 200), (3, 300)], None);
        assert_eq!(
            class(&[order.clone(), r(0, 15, &[(2, 200)], None)]),
            ["not-a-prefix"]
        );
        assert_eq!(
            class(&[
                order.clone(),
                r(0, 41, &[(1, 100), (2, 200)], None),
                r(0, 42, &[(1, 100)], None)
            ]),
            ["went-back"]
        );
        assert_eq!(
            class(&[order.clone(), r(0, 43, &[(1, 100)], Some((250, 250)))]),
            ["closed-read-changed"]
        );
        assert_eq!(
            class(&[order, r(0, 44, &[(9, 100)], None)]),
            ["phantom", "not-a-prefix"]
        );
    }
}
