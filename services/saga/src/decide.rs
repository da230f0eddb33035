//! The orchestrator's decisions: a pure function of a saga's state, its type and the time.
//! Every orchestrator (after a restart, or racing another) decides the same from the same
//! journal; the journal's expected version lets only one decision land.
//!
//! - An attempt awaiting its reply: wait until its deadline, then record it timed out.
//! - Going forward: request the first step not done; after a failure or a timeout, schedule a
//!   retry (a durable timer: backoff with jitter) while attempts remain and the failure may
//!   pass; past that, compensate — or, at or past the pivot, where nothing can be undone, ask
//!   for attention. Every step done: completed.
//! - Compensating: undo, last first, every step that was requested and has a compensation
//!   (a step whose action failed or timed out too: it may have happened anyway, and
//!   compensations are idempotent no-ops when there is nothing to undo); a compensation that
//!   fails is retried with backoff, past its cap the saga needs attention. All undone:
//!   compensated.

use crate::definition::{mix, Participant, RetryPolicy, SagaType};
use crate::journal::{command_id, Command, Entry};
use crate::state::{Saga, Side, Status};

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Append these entries (and the command, to its participant's stream, in the same atomic
    /// append), expecting the journal at the saga's version.
    Act {
        /// Journal entries.
        entries: Vec<Entry>,
        /// The command sent with them.
        command: Option<(Participant, Command)>,
    },
    /// Nothing until this time (a deadline or a retry), µs; `None`: until a reply comes.
    Wait(Option<u64>),
    /// The saga is over.
    Done,
}

fn act(entry: Entry) -> Decision {
    Decision::Act {
        entries: vec![entry],
        command: None,
    }
}

/// The next decision for `saga` of type `def` at `now_us`.
pub fn decide(def: &SagaType, saga: &Saga, now_us: u64) -> Decision {
    if saga.status.is_final() {
        return Decision::Done;
    }
    if let Some(p) = &saga.pending {
        if now_us < p.deadline_us {
            return Decision::Wait(Some(p.deadline_us));
        }
        let step = def.steps.get(p.step).map_or("", |s| s.name);
        return act(Entry::StepTimedOut {
            step: step.to_string(),
            compensation: p.compensation,
            command_id: p.command_id.clone(),
        });
    }
    match saga.status {
        Status::Compensating => backward(def, saga, now_us),
        _ => forward(def, saga, now_us),
    }
}

fn forward(def: &SagaType, saga: &Saga, now_us: u64) -> Decision {
    let Some(i) = saga.steps.iter().position(|s| !s.action.succeeded) else {
        return act(Entry::SagaCompleted);
    };
    match next_attempt(def, saga, (i, false), now_us) {
        Next::Decision(d) => d,
        Next::GaveUp(reason) if def.pivot().is_some_and(|p| i >= p) => {
            act(Entry::SagaNeedsAttention {
                reason: format!(
                    "{} past the point of no return: {reason}",
                    def.steps[i].name
                ),
            })
        }
        Next::GaveUp(reason) => act(Entry::SagaCompensating {
            reason: format!("{}: {reason}", def.steps[i].name),
        }),
    }
}

fn backward(def: &SagaType, saga: &Saga, now_us: u64) -> Decision {
    let undo = (0..saga.steps.len()).rev().find(|&j| {
        let s = &saga.steps[j];
        def.steps[j].compensation.is_some() && s.action.attempts > 0 && !s.compensation.succeeded
    });
    let Some(j) = undo else {
        return act(Entry::SagaCompensated);
    };
    match next_attempt(def, saga, (j, true), now_us) {
        Next::Decision(d) => d,
        Next::GaveUp(reason) => act(Entry::SagaNeedsAttention {
            reason: format!("undoing {}: {reason}", def.steps[j].name),
        }),
    }
}

enum Next {
    Decision(Decision),
    GaveUp(String),
}

/// The next move on one side of step `i` (not done, nothing awaited).
fn next_attempt(
    def: &SagaType,
    saga: &Saga,
    (i, compensation): (usize, bool),
    now_us: u64,
) -> Next {
    let d = &def.steps[i];
    let policy: RetryPolicy = if compensation {
        d.compensation_retry
    } else {
        d.retry
    };
    let side: &Side = match saga.side(i, compensation) {
        Some(s) => s,
        None => return Next::GaveUp("the journal and the saga type disagree".into()),
    };
    if side.attempts == 0 {
        return Next::Decision(request(def, saga, (i, compensation), 1, now_us));
    }
    if let Some((attempt, at)) = side.retry {
        return Next::Decision(if now_us >= at {
            request(def, saga, (i, compensation), attempt, now_us)
        } else {
            Decision::Wait(Some(at))
        });
    }
    let (reason, retriable) = side
        .failure
        .as_ref()
        .map_or(("no answer".to_string(), true), |f| {
            (f.reason.clone(), f.retriable)
        });
    if !retriable {
        return Next::GaveUp(reason);
    }
    if side.attempts >= policy.attempts_max {
        return Next::GaveUp(format!("{reason} ({} attempts)", side.attempts));
    }
    let next = side.attempts + 1;
    let seed = mix(hash(&saga.id) ^ u64::from(next) ^ u64::from(compensation));
    Next::Decision(act(Entry::RetryScheduled {
        step: d.name.to_string(),
        compensation,
        attempt: next,
        not_before_us: now_us + policy.delay_ms(next, seed) * 1000,
    }))
}

/// An attempt of one side of step `i`: the entry and its command.
fn request(
    def: &SagaType,
    saga: &Saga,
    (i, compensation): (usize, bool),
    attempt: u32,
    now_us: u64,
) -> Decision {
    let d = &def.steps[i];
    let id = command_id(&saga.id, d.name, compensation, attempt);
    let action = if compensation {
        d.compensation.unwrap_or(d.action)
    } else {
        d.action
    };
    Decision::Act {
        entries: vec![Entry::StepRequested {
            step: d.name.to_string(),
            compensation,
            attempt,
            command_id: id.clone(),
            deadline_us: now_us + d.timeout_ms * 1000,
        }],
        command: Some((
            d.participant,
            Command {
                command_id: id,
                saga_id: saga.id.clone(),
                step: d.name.to_string(),
                action: action.to_string(),
                compensation,
                attempt,
                data: saga.data.clone(),
            },
        )),
    }
}

/// FNV-1a of a saga id (the jitter's seed: the same on every orchestrator).
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
