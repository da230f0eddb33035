//! Elle-style checking of list-append histories (Kingsbury & Alvaro, "Elle: Inferring
//! Isolation Anomalies from Experimental Observations", 2020).
//!
//! Each key holds a list; a transaction is a sequence of micro-operations, each an append of a
//! value unique to its key or a read of a key's whole list. Because every read returns a whole
//! list, the reads reveal each key's version order (the longest read; every other read must be
//! a prefix of it), and from that order the dependencies between transactions follow:
//!
//! ```text
//!   ww  T1 ──▶ T2   T2 appended the element right after T1's (to the same key)
//!   wr  T1 ──▶ T2   T2 read a list ending in T1's element
//!   rw  T1 ──▶ T2   T1 read a list of length n and T2 appended its element n+1
//!   rt  T1 ──▶ T2   T1 completed before T2 was invoked (real time; strict serializability)
//! ```
//!
//! A cycle of these is an anomaly; its class is named by its edges (Adya's taxonomy):
//!
//! | class      | cycle edges                               |
//! |------------|-------------------------------------------|
//! | G0         | ww only (write cycle)                     |
//! | G1c        | ww and wr, at least one wr                |
//! | G-single   | exactly one rw, the rest ww / wr          |
//! | G2         | two or more rw                            |
//! | *-realtime | the same, but closed only with rt edges   |
//!
//! Found without cycles: G1a (a read saw a failed transaction's element), G1b (a read ended
//! in an element its writer later followed with another of its own), lost updates (two
//! committed transactions read the same version of a key and both appended to it),
//! incompatible orders (two reads of a key neither a prefix of the other), duplicated and
//! garbage elements (read twice in one list; never appended by anyone).
//!
//! Transactions that ended `info` count as committed when a read saw one of their elements,
//! and are left out otherwise (they may never have happened). Each anomaly comes with a
//! witness: the few transactions that show it, and for a cycle the shortest one found, each
//! step explained.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

/// A key and a value (both small integers, as in Elle's examples).
pub type Key = u64;
/// An appended element, unique to its key.
pub type Value = u64;

/// One micro-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Appends `value` to `key`'s list.
    Append(Key, Value),
    /// Reads `key`'s whole list (`None`: not observed, e.g. the transaction did not complete).
    Read(Key, Option<Vec<Value>>),
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; its reads are what it saw.
    Ok,
    /// Certainly had no effect.
    Fail,
    /// Unknown: it may have committed, at any time after its invocation.
    Info,
}

/// One transaction of a history.
#[derive(Debug, Clone)]
pub struct Txn {
    /// The process that ran it.
    pub process: u64,
    /// Event index of its invocation (real-time order).
    pub call: usize,
    /// Event index of its completion (`None` for `info`).
    pub ret: Option<usize>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its micro-operations, in order.
    pub mops: Vec<Mop>,
}

/// A dependency between two transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edge {
    /// Write-write: the second appended right after the first.
    Ww,
    /// Write-read: the second read the first's element last.
    Wr,
    /// Read-write (anti-dependency): the second appended the element after what the first read.
    Rw,
    /// Real time: the first completed before the second began.
    Rt,
}

impl Edge {
    fn bit(self) -> u8 {
        match self {
            Edge::Ww => 1,
            Edge::Wr => 2,
            Edge::Rw => 4,
            Edge::Rt => 8,
        }
    }

    const ALL: [Edge; 4] = [Edge::Ww, Edge::Wr, Edge::Rw, Edge::Rt];
}

/// One step of a witness: `from` relates to `to` by `edge`, because `why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index of a transaction in the checked slice.
    pub from: usize,
    /// The next one.
    pub to: usize,
    /// How they relate.
    pub edge: Edge,
    /// In words.
    pub why: String,
}

/// One anomaly with its witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Its class: `G0`, `G1a`, `G1b`, `G1c`, `G-single`, `G2` (each also `-realtime`),
    /// `lost-update`, `incompatible-order`, `duplicate-elements`, `garbage-read`.
    pub class: String,
    /// The transactions involved (indices into the checked slice), fewest that show it.
    pub txns: Vec<usize>,
    /// For a cycle: its steps, closing back on the first transaction.
    pub cycle: Vec<Step>,
    /// In words.
    pub explanation: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.explanation)?;
        for s in &self.cycle {
            write!(f, "\n  T{} -{:?}-> T{}: {}", s.from, s.edge, s.to, s.why)?;
        }
        Ok(())
    }
}

/// Why a history cannot be checked at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

/// Most witnesses reported per anomaly class (the rest are counted).
pub const WITNESSES_PER_CLASS_MAX: usize = 8;
/// Most breadth-first searches for one class in one strongly connected component (bounds the
/// time spent on a history with one huge cycle).
const SEARCHES_MAX: usize = 2_000;

/// The verdict on a history.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Witnesses, at most [`WITNESSES_PER_CLASS_MAX`] per class.
    pub anomalies: Vec<Anomaly>,
    /// How many of each class were found (witnessed or not).
    pub counts: Vec<(String, usize)>,
    /// Transactions checked as committed (ok, or info and observed).
    pub committed: usize,
}

impl Verdict {
    /// No anomaly at all: the history is strict-serializable as far as it shows.
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    fn add(&mut self, a: Anomaly) {
        match self.counts.iter_mut().find(|(c, _)| *c == a.class) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((a.class.clone(), 1)),
        }
        let shown = self.anomalies.iter().filter(|x| x.class == a.class).count();
        if shown < WITNESSES_PER_CLASS_MAX {
            self.anomalies.push(a);
        }
    }
}

/// Where an element came from: its transaction, and whether that transaction appended again
/// to the key after it.
#[derive(Debug, Clone, Copy)]
struct Origin {
    txn: usize,
    intermediate: bool,
}

/// The history's facts, derived once.
struct Facts<'a> {
    txns: &'a [Txn],
    origin: HashMap<(Key, Value), Origin>,
    /// Each key's version order (its longest read).
    order: HashMap<Key, Vec<Value>>,
    committed: Vec<bool>,
}

/// Checks a list-append history (see the module docs).
pub fn check(txns: &[Txn]) -> Result<Verdict, InputError> {
    let mut verdict = Verdict::default();
    let origin = origins(txns)?;
    let mut facts = Facts {
        txns,
        origin,
        order: HashMap::new(),
        committed: vec![false; txns.len()],
    };
    element_anomalies(&facts, &mut verdict);
    facts.committed = committed(&facts);
    verdict.committed = facts.committed.iter().filter(|c| **c).count();
    facts.order = orders(&facts, &mut verdict);
    lost_updates(&facts, &mut verdict);
    let graph = Graph::build(&facts);
    cycles(&facts, &graph, &mut verdict);
    Ok(verdict)
}

/// Every appended element's origin; an element appended twice is an input error.
fn origins(txns: &[Txn]) -> Result<HashMap<(Key, Value), Origin>, InputError> {
    let mut origin = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for (m, mop) in t.mops.iter().enumerate() {
            let Mop::Append(k, v) = mop else { continue };
            let intermediate = t.mops[m + 1..]
                .iter()
                .any(|x| matches!(x, Mop::Append(k2, _) if k2 == k));
            if origin
                .insert(
                    (*k, *v),
                    Origin {
                        txn: i,
                        intermediate,
                    },
                )
                .is_some()
            {
                return Err(InputError(format!(
                    "element {v} is appended to key {k} twice: values must be unique per key"
                )));
            }
        }
    }
    Ok(origin)
}

/// The reads of committed (`ok`) transactions: (transaction, key, list).
fn ok_reads(txns: &[Txn]) -> impl Iterator<Item = (usize, Key, &Vec<Value>)> {
    txns.iter()
        .enumerate()
        .filter(|(_, t)| t.outcome == Outcome::Ok)
        .flat_map(|(i, t)| {
            t.mops.iter().filter_map(move |m| match m {
                Mop::Read(k, Some(list)) => Some((i, *k, list)),
                _ => None,
            })
        })
}

/// G1a, G1b, garbage and duplicated elements: facts of single reads.
fn element_anomalies(facts: &Facts, verdict: &mut Verdict) {
    for (r, k, list) in ok_reads(facts.txns) {
        let mut seen = HashSet::new();
        for v in list {
            if !seen.insert(*v) {
                verdict.add(single(
                    "duplicate-elements",
                    vec![r],
                    format!("T{r} read key {k} = {list:?}, holding {v} twice"),
                ));
            }
            match facts.origin.get(&(k, *v)) {
                None => verdict.add(single(
                    "garbage-read",
                    vec![r],
                    format!("T{r} read {v} in key {k}, which no transaction appended"),
                )),
                Some(o) if facts.txns[o.txn].outcome == Outcome::Fail => verdict.add(single(
                    "G1a",
                    vec![o.txn, r],
                    format!(
                        "T{r} read {v} in key {k}, appended by T{} which failed",
                        o.txn
                    ),
                )),
                Some(_) => {}
            }
        }
        if let Some(last) = list.last() {
            if let Some(o) = facts.origin.get(&(k, *last)) {
                if o.intermediate && o.txn != r {
                    verdict.add(single(
                        "G1b",
                        vec![o.txn, r],
                        format!(
                            "T{r} read key {k} ending in {last}, which T{} followed with another append of its own",
                            o.txn
                        ),
                    ));
                }
            }
        }
    }
}

fn single(class: &str, txns: Vec<usize>, explanation: String) -> Anomaly {
    Anomaly {
        class: class.into(),
        txns,
        cycle: Vec::new(),
        explanation,
    }
}

/// Which transactions count as committed: `ok` ones, and `info` ones a read observed.
fn committed(facts: &Facts) -> Vec<bool> {
    let mut committed: Vec<bool> = facts
        .txns
        .iter()
        .map(|t| t.outcome == Outcome::Ok)
        .collect();
    for (_, k, list) in ok_reads(facts.txns) {
        for v in list {
            if let Some(o) = facts.origin.get(&(k, *v)) {
                if facts.txns[o.txn].outcome == Outcome::Info {
                    committed[o.txn] = true;
                }
            }
        }
    }
    committed
}

/// Each key's version order: its longest read. A read that is not a prefix of it is an
/// incompatible order (reported once per key).
fn orders(facts: &Facts, verdict: &mut Verdict) -> HashMap<Key, Vec<Value>> {
    let mut longest: HashMap<Key, (usize, &Vec<Value>)> = HashMap::new();
    for (r, k, list) in ok_reads(facts.txns) {
        let e = longest.entry(k).or_insert((r, list));
        if list.len() > e.1.len() {
            *e = (r, list);
        }
    }
    let mut flagged = HashSet::new();
    for (r, k, list) in ok_reads(facts.txns) {
        let (l, long) = longest[&k];
        if !long.starts_with(list) && flagged.insert(k) {
            verdict.add(single(
                "incompatible-order",
                vec![r, l],
                format!("T{r} read key {k} = {list:?} but T{l} read {long:?}: neither is a prefix of the other"),
            ));
        }
    }
    longest
        .into_iter()
        .map(|(k, (_, l))| (k, l.clone()))
        .collect()
}

/// Two committed transactions that read the same version of a key and both appended to it.
fn lost_updates(facts: &Facts, verdict: &mut Verdict) {
    // (key, length read) → the first transaction that read it and then appended to the key.
    let mut readers: HashMap<(Key, usize), usize> = HashMap::new();
    for (i, t) in facts.txns.iter().enumerate() {
        if t.outcome != Outcome::Ok {
            continue;
        }
        for (m, mop) in t.mops.iter().enumerate() {
            let Mop::Read(k, Some(list)) = mop else {
                continue;
            };
            let appends = t.mops[m + 1..]
                .iter()
                .any(|x| matches!(x, Mop::Append(k2, _) if k2 == k));
            if !appends {
                continue;
            }
            match readers.get(&(*k, list.len())) {
                Some(&other) if other != i => verdict.add(single(
                    "lost-update",
                    vec![other, i],
                    format!(
                        "T{other} and T{i} both read key {k} = {list:?} and both appended to it"
                    ),
                )),
                Some(_) => {}
                None => {
                    readers.insert((*k, list.len()), i);
                }
            }
        }
    }
}

/// The dependency graph over committed transactions.
struct Graph {
    /// Outgoing edges: target and the set of edge kinds (bits).
    out: Vec<Vec<(usize, u8)>>,
    /// The first reason recorded for each (from, to, kind).
    why: HashMap<(usize, usize, Edge), String>,
}

impl Graph {
    fn build(facts: &Facts) -> Graph {
        let mut g = Graph {
            out: vec![Vec::new(); facts.txns.len()],
            why: HashMap::new(),
        };
        g.data_edges(facts);
        g.realtime_edges(facts);
        g
    }

    fn add(&mut self, from: usize, to: usize, edge: Edge, why: impl FnOnce() -> String) {
        if from == to {
            return;
        }
        let out = &mut self.out[from];
        match out.iter_mut().find(|(t, _)| *t == to) {
            Some((_, bits)) => *bits |= edge.bit(),
            None => out.push((to, edge.bit())),
        }
        self.why.entry((from, to, edge)).or_insert_with(why);
    }

    fn writer(facts: &Facts, k: Key, v: Value) -> Option<usize> {
        facts
            .origin
            .get(&(k, v))
            .map(|o| o.txn)
            .filter(|t| facts.committed[*t])
    }

    /// ww from each key's order; wr and rw from each committed read against it.
    fn data_edges(&mut self, facts: &Facts) {
        for (k, order) in &facts.order {
            for pair in order.windows(2) {
                if let (Some(a), Some(b)) = (
                    Self::writer(facts, *k, pair[0]),
                    Self::writer(facts, *k, pair[1]),
                ) {
                    self.add(a, b, Edge::Ww, || {
                        format!(
                            "T{a} appended {} to key {k}, T{b} appended {} next",
                            pair[0], pair[1]
                        )
                    });
                }
            }
        }
        for (r, k, list) in ok_reads(facts.txns) {
            let Some(order) = facts.order.get(&k) else {
                continue;
            };
            if !order.starts_with(list) {
                continue;
            }
            if let Some(w) = list.last().and_then(|v| Self::writer(facts, k, *v)) {
                self.add(w, r, Edge::Wr, || {
                    format!("T{r} read key {k} = {list:?}, ending in T{w}'s append")
                });
            }
            if let Some(next) = order.get(list.len()) {
                if let Some(w) = Self::writer(facts, k, *next) {
                    self.add(r, w, Edge::Rw, || {
                        format!(
                            "T{r} read key {k} = {list:?}, T{w} appended {next}, the next element"
                        )
                    });
                }
            }
        }
    }

    /// rt edges, transitively reduced: each committed transaction gets an edge from every
    /// completed transaction not already followed (in real time) by another completed one
    /// before it began.
    fn realtime_edges(&mut self, facts: &Facts) {
        // (event index, transaction, is completion), in real-time order.
        let mut events: Vec<(usize, usize, bool)> = Vec::new();
        for (i, t) in facts.txns.iter().enumerate() {
            if !facts.committed[i] {
                continue;
            }
            events.push((t.call, i, false));
            if let Some(ret) = t.ret {
                events.push((ret, i, true));
            }
        }
        events.sort_unstable();
        let mut frontier: Vec<usize> = Vec::new();
        for (_, i, completes) in events {
            if completes {
                let call = facts.txns[i].call;
                frontier.retain(|f| facts.txns[*f].ret.is_some_and(|r| r > call));
                frontier.push(i);
            } else {
                for f in frontier.clone() {
                    self.add(f, i, Edge::Rt, || {
                        format!("T{f} completed before T{i} began")
                    });
                }
            }
        }
    }
}

/// The classes searched for, in order: each with the edges it may use and how many rw
/// edges its cycle must have (`None`: at least one wr, no rw; `Some(1)`: exactly one).
const CLASSES: [(&str, &[Edge], RwCount); 8] = [
    ("G0", &[Edge::Ww], RwCount::Zero),
    ("G1c", &[Edge::Ww, Edge::Wr], RwCount::Zero),
    ("G-single", &[Edge::Ww, Edge::Wr, Edge::Rw], RwCount::One),
    ("G2", &[Edge::Ww, Edge::Wr, Edge::Rw], RwCount::Many),
    ("G0-realtime", &[Edge::Ww, Edge::Rt], RwCount::Zero),
    (
        "G1c-realtime",
        &[Edge::Ww, Edge::Wr, Edge::Rt],
        RwCount::Zero,
    ),
    (
        "G-single-realtime",
        &[Edge::Ww, Edge::Wr, Edge::Rw, Edge::Rt],
        RwCount::One,
    ),
    ("G2-realtime", &Edge::ALL, RwCount::Many),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RwCount {
    Zero,
    One,
    Many,
}

/// Finds, in each strongly connected component, the most severe class of cycle and reports
/// the shortest one found.
fn cycles(facts: &Facts, graph: &Graph, verdict: &mut Verdict) {
    for scc in tarjan(&graph.out) {
        if scc.len() < 2 {
            continue;
        }
        let inside: HashSet<usize> = scc.iter().copied().collect();
        for (class, edges, rw) in CLASSES {
            if let Some(cycle) = find_cycle(graph, &scc, &inside, edges, rw) {
                let txns: Vec<usize> = cycle.iter().map(|s| s.from).collect();
                verdict.add(Anomaly {
                    class: class.into(),
                    explanation: format!(
                        "a cycle of {} transactions ({} committed in all)",
                        txns.len(),
                        facts.committed.iter().filter(|c| **c).count()
                    ),
                    txns,
                    cycle,
                });
                break;
            }
        }
    }
}

fn mask(edges: &[Edge]) -> u8 {
    edges.iter().fold(0, |m, e| m | e.bit())
}

/// The shortest cycle found in the component using only `edges`, with the rw count `rw`.
fn find_cycle(
    graph: &Graph,
    scc: &[usize],
    inside: &HashSet<usize>,
    edges: &[Edge],
    rw: RwCount,
) -> Option<Vec<Step>> {
    let allowed = mask(edges);
    let no_rw = allowed & !Edge::Rw.bit();
    let mut best: Option<Vec<(usize, usize, Edge)>> = None;
    let mut searches = 0;
    let mut consider = |path: Vec<(usize, usize, Edge)>| {
        if best.as_ref().is_none_or(|b| path.len() < b.len()) {
            best = Some(path);
        }
    };
    for &a in scc {
        if searches >= SEARCHES_MAX {
            break;
        }
        for &(b, bits) in &graph.out[a] {
            if !inside.contains(&b) || bits & allowed == 0 || searches >= SEARCHES_MAX {
                continue;
            }
            searches += 1;
            // The first edge a → b, then a path back b ⇝ a.
            let (first, rest_mask) = match rw {
                RwCount::Zero if bits & no_rw != 0 => (first_kind(bits & no_rw), no_rw),
                RwCount::One | RwCount::Many if bits & Edge::Rw.bit() != 0 => {
                    (Edge::Rw, if rw == RwCount::One { no_rw } else { allowed })
                }
                _ => continue,
            };
            let Some(back) = bfs(graph, inside, b, a, rest_mask) else {
                continue;
            };
            let mut path = vec![(a, b, first)];
            path.extend(back);
            if acceptable(&path, edges, rw) {
                consider(path);
            }
        }
    }
    best.map(|p| {
        p.into_iter()
            .map(|(from, to, edge)| Step {
                from,
                to,
                edge,
                why: graph
                    .why
                    .get(&(from, to, edge))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    })
}

/// Whether a cycle belongs to the class: G0 must be all ww (realtime: ww and rt, one rt at
/// least); G1c needs a wr; the realtime classes need an rt; G2 needs two rw.
fn acceptable(path: &[(usize, usize, Edge)], edges: &[Edge], rw: RwCount) -> bool {
    let count = |e: Edge| path.iter().filter(|(_, _, x)| *x == e).count();
    let realtime = edges.contains(&Edge::Rt);
    if realtime && count(Edge::Rt) == 0 {
        return false;
    }
    match rw {
        RwCount::Zero => !edges.contains(&Edge::Wr) || count(Edge::Wr) > 0,
        RwCount::One => count(Edge::Rw) == 1,
        RwCount::Many => count(Edge::Rw) >= 2,
    }
}

/// The kind a step takes from an edge's bits, most specific first.
fn first_kind(bits: u8) -> Edge {
    Edge::ALL
        .into_iter()
        .find(|e| bits & e.bit() != 0)
        .unwrap_or(Edge::Rt)
}

/// Shortest path from `from` to `to` inside the component over edges in `allowed`; each step
/// names the kind it uses (data edges before rt, so witnesses prefer them).
fn bfs(
    graph: &Graph,
    inside: &HashSet<usize>,
    from: usize,
    to: usize,
    allowed: u8,
) -> Option<Vec<(usize, usize, Edge)>> {
    let mut prev: HashMap<usize, (usize, Edge)> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(n) = queue.pop_front() {
        if n == to {
            let mut path = Vec::new();
            let mut at = to;
            while at != from {
                let (p, e) = prev[&at];
                path.push((p, at, e));
                at = p;
            }
            path.reverse();
            return Some(path);
        }
        for &(m, bits) in &graph.out[n] {
            if bits & allowed != 0 && inside.contains(&m) && seen.insert(m) {
                prev.insert(m, (n, first_kind(bits & allowed)));
                queue.push_back(m);
            }
        }
    }
    None
}

/// Strongly connected components (Tarjan's algorithm, iterative).
fn tarjan(out: &[Vec<(usize, u8)>]) -> Vec<Vec<usize>> {
    let n = out.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut sccs = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0)];
        while let Some(&mut (v, ref mut e)) = work.last_mut() {
            if *e == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&(w, _)) = out[v].get(*e) {
                *e += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                sccs.push(scc);
            }
        }
    }
    sccs
}

#[cfg(test)]
mod tests;
