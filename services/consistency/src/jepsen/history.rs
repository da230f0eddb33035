//! A run's history: every operation's invocation and completion in real-time order, with
//! wall-clock offsets, as Jepsen records them. Completions are `ok` (it happened, with what it
//! observed), `fail` (it certainly did not happen) or `info` (unknown: it may happen at any
//! time after its invocation, or never). A process whose operation ended `info` never runs
//! another (its operation is still pending): its client goes on as a new process.
//!
//! Written as JSON lines (`history.jsonl`):
//! `{"index":7,"process":2,"type":"invoke","f":"cas","value":[3,9],"time_us":120443}`.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An operation begins.
    Invoke,
    /// It happened.
    Ok,
    /// It did not happen.
    Fail,
    /// Unknown.
    Info,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Its place in real-time order.
    pub index: usize,
    /// The process (a client's current process id).
    pub process: u64,
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The operation (`read`, `write`, `cas`, …).
    pub f: &'static str,
    /// Its argument (invocation) or what it observed (completion).
    pub value: serde_json::Value,
    /// Microseconds since the run began.
    pub time_us: u64,
}

/// Most events one run records (4 M: 8 bytes an event's index aside, a few hundred MB at
/// most); past it the workload stops invoking.
pub const EVENTS_MAX: usize = 4 << 20;

/// The history being recorded (shared by the clients).
#[derive(Debug)]
pub struct History {
    started: Instant,
    events: Mutex<Vec<Event>>,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Records an event; returns its index and time. `None` once [`EVENTS_MAX`] are recorded.
    pub fn record(
        &self,
        process: u64,
        kind: Kind,
        f: &'static str,
        value: serde_json::Value,
    ) -> Option<(usize, u64)> {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() >= EVENTS_MAX {
            return None;
        }
        let index = events.len();
        // Taken under the lock, so indexes and times agree on the order.
        let time_us = self.now_us();
        events.push(Event {
            index,
            process,
            kind,
            f,
            value,
            time_us,
        });
        Some((index, time_us))
    }

    /// The events recorded.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}
