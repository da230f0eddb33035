//! The linearizability search: Wing & Gong's algorithm with Lowe's memoisation (as in
//! Porcupine). Call and return events sit in one linked list in real-time order; the search
//! repeatedly linearizes the first pending call whose model step matches its observed output,
//! backtracks when it meets a return whose call is not linearized yet, and never revisits a
//! (set of linearized operations, model state) pair.
//!
//! An indeterminate operation (timed out, no known result) returns "after everything": it may
//! take effect at any point after its invocation, or never. Because its return event comes last,
//! reaching the first such return means every operation with a known result is linearized: the
//! history is linearizable.
//!
//! The search runs under a [`Budget`] (steps, memoised states, wall time) and answers
//! [`Verdict::Unknown`] instead of running away.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification.
pub trait Model {
    /// The model's state (hashable: memoised with the linearized set).
    type State: Clone + Eq + Hash;
    /// An operation: its input and, if it completed, its observed output.
    type Op;
    /// The initial state.
    fn init(&self) -> Self::State;
    /// Applies `op` to `state`: the next state if the observed output is what the model
    /// produces (or the output is unknown), `None` if the output contradicts the model.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<Op> {
    /// The process (client) that ran it.
    pub client: u64,
    /// Input and observed output.
    pub op: Op,
    /// Event index of its invocation.
    pub call: usize,
    /// Event index of its completion; `None` for an indeterminate operation.
    pub ret: Option<usize>,
}

impl<Op> Operation<Op> {
    /// An operation of `client`, invoked at event `call`, completed at `ret` (`None`: never,
    /// its outcome unknown).
    pub fn new(client: u64, op: Op, call: usize, ret: Option<usize>) -> Self {
        Operation {
            client,
            op,
            call,
            ret,
        }
    }
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations explains every observed result.
    Linearizable,
    /// No order does.
    NotLinearizable,
    /// The budget ran out first.
    Unknown,
}

/// Limits of one search.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Stop at this instant.
    pub deadline: Instant,
    /// Most memoised (linearized set, state) pairs (bounds memory).
    pub states_max: usize,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Checks one history (or one partition of it) against `model`.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Op>], budget: Budget) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events in real-time order; indeterminate returns after everything, in call order.
    let mut timed: Vec<(usize, usize, Event)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        timed.push((
            o.call,
            0,
            Event {
                op: i,
                is_call: true,
            },
        ));
        let ret = o.ret.unwrap_or(usize::MAX);
        timed.push((
            ret,
            1,
            Event {
                op: i,
                is_call: false,
            },
        ));
    }
    timed.sort_by_key(|(t, kind, e)| (*t, *kind, ops[e.op].call));
    let events: Vec<Event> = timed.into_iter().map(|(_, _, e)| e).collect();
    // Doubly linked list over events: index 0 is the head sentinel, event k is node k + 1.
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let end = len; // "no node"
    next[len - 1] = end;
    let mut ret_node = vec![0usize; n];
    for (k, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_node[e.op] = k + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = node;
        if nx != end {
            prev[nx] = node;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut node = next[0];
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps % 4096 == 0 && Instant::now() > budget.deadline {
            return Verdict::Unknown;
        }
        if node == end {
            return Verdict::Linearizable;
        }
        let e = events[node - 1];
        if e.is_call {
            let op = e.op;
            if let Some(new_state) = model.step(&state, &ops[op].op) {
                let mut set = linearized.clone();
                set[op / 64] |= 1 << (op % 64);
                let key = (set, new_state);
                if !cache.contains(&key) {
                    if cache.len() >= budget.states_max {
                        return Verdict::Unknown;
                    }
                    let (set, new_state) = key;
                    cache.insert((set.clone(), new_state.clone()));
                    stack.push((node, std::mem::replace(&mut state, new_state)));
                    linearized = set;
                    // Lift the call and its return out of the list.
                    unlink(&mut next, &mut prev, node);
                    unlink(&mut next, &mut prev, ret_node[op]);
                    node = next[0];
                    continue;
                }
            }
            node = next[node];
        } else {
            if ops[e.op].ret.is_none() {
                // Every operation with a known result is linearized; the indeterminate rest may
                // take effect later or never.
                return Verdict::Linearizable;
            }
            // A return whose call is still pending: undo the last linearization.
            let Some((call_node, saved)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            let op = events[call_node - 1].op;
            state = saved;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_node[op]);
            relink(&mut next, &mut prev, call_node);
            node = next[call_node];
        }
    }
}
