//! A saga's state: the fold of its journal. Nothing else is kept anywhere: an orchestrator
//! that starts (or another one racing it) reads the journal and knows all there is.

use serde::Serialize;

use crate::definition::SagaType;
use crate::journal::Entry;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Going forward.
    Running,
    /// Undoing what was done.
    Compensating,
    /// Every step done.
    Completed,
    /// Everything requested undone.
    Compensated,
    /// Stuck: a person must look.
    NeedsAttention,
}

impl Status {
    /// Whether it is final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::NeedsAttention
        )
    }

    /// Its name in the API (`running`, `needs_attention`, …).
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::NeedsAttention => "needs_attention",
        }
    }
}

/// Why the last attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// In words.
    pub reason: String,
    /// Whether another attempt may succeed.
    pub retriable: bool,
}

/// One side (the action, or its compensation) of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    /// Attempts requested so far.
    pub attempts: u32,
    /// Whether the participant did it (any attempt: they are one idempotent command).
    pub succeeded: bool,
    /// The last attempt's failure, when it failed or timed out.
    pub failure: Option<Failure>,
    /// A retry due: its attempt and not-before time (µs).
    pub retry: Option<(u32, u64)>,
}

/// One step's two sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepState {
    /// The step's name.
    pub name: String,
    /// Its action.
    pub action: Side,
    /// Its compensation.
    pub compensation: Side,
}

/// The attempt under way, awaiting its participant's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The step's index.
    pub step: usize,
    /// Whether it is the compensation.
    pub compensation: bool,
    /// Its command.
    pub command_id: String,
    /// When it times out (µs).
    pub deadline_us: u64,
}

/// A saga as its journal says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Saga {
    /// Its id.
    pub id: String,
    /// Its type's name.
    pub saga_type: String,
    /// Its data.
    pub data: serde_json::Value,
    /// The idempotency key it was created under.
    pub idempotency_key: Option<String>,
    /// Where it is.
    pub status: Status,
    /// Why it is compensating or needs attention.
    pub reason: Option<String>,
    /// Its steps.
    pub steps: Vec<StepState>,
    /// The attempt awaiting a reply.
    pub pending: Option<Pending>,
    /// The journal's last version (what the next decision expects).
    pub version: u64,
}

impl Saga {
    /// The side `compensation` says of step `i`.
    pub fn side(&self, i: usize, compensation: bool) -> Option<&Side> {
        self.steps.get(i).map(|s| {
            if compensation {
                &s.compensation
            } else {
                &s.action
            }
        })
    }

    fn side_mut(&mut self, step: &str, compensation: bool) -> Result<(usize, &mut Side), String> {
        let i = self
            .steps
            .iter()
            .position(|s| s.name == step)
            .ok_or_else(|| format!("the journal names a step {step:?} its type lacks"))?;
        let s = &mut self.steps[i];
        Ok((
            i,
            if compensation {
                &mut s.compensation
            } else {
                &mut s.action
            },
        ))
    }

    /// Whether the reply to `command_id` is the one awaited.
    fn answers(&self, command_id: &str) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.command_id == command_id)
    }
}

/// Folds a journal (`(version, entry)` in order) into its saga, checking it against `types`
/// (the saga type by name). An error names what does not fit.
pub fn fold(
    id: &str,
    types: impl Fn(&str) -> Option<SagaType>,
    journal: &[(u64, Entry)],
) -> Result<Saga, String> {
    let Some((
        _,
        Entry::SagaStarted {
            saga_type,
            data,
            idempotency_key,
        },
    )) = journal.first()
    else {
        return Err(format!(
            "saga {id}: the journal does not begin with saga-started"
        ));
    };
    let def = types(saga_type).ok_or_else(|| format!("saga {id}: unknown type {saga_type:?}"))?;
    let mut saga = Saga {
        id: id.to_string(),
        saga_type: saga_type.clone(),
        data: data.clone(),
        idempotency_key: idempotency_key.clone(),
        status: Status::Running,
        reason: None,
        steps: def
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.to_string(),
                action: Side::default(),
                compensation: Side::default(),
            })
            .collect(),
        pending: None,
        version: 0,
    };
    for (k, (version, entry)) in journal.iter().enumerate() {
        if k > 0 && matches!(entry, Entry::SagaStarted { .. }) {
            return Err(format!(
                "saga {id}: a second saga-started at version {version}"
            ));
        }
        apply(&mut saga, entry)?;
        saga.version = *version;
    }
    Ok(saga)
}

/// Folds the entries after `saga.version` (`(version, entry)` in order, each the next version)
/// onto it: the same saga [`fold`] gives for the whole journal.
pub fn extend(saga: &mut Saga, entries: &[(u64, Entry)]) -> Result<(), String> {
    for (version, entry) in entries {
        if *version != saga.version + 1 {
            return Err(format!(
                "saga {}: entry {version} after version {}",
                saga.id, saga.version
            ));
        }
        if matches!(entry, Entry::SagaStarted { .. }) {
            return Err(format!(
                "saga {}: a second saga-started at version {version}",
                saga.id
            ));
        }
        apply(saga, entry)?;
        saga.version = *version;
    }
    Ok(())
}

/// One entry's effect.
fn apply(saga: &mut Saga, entry: &Entry) -> Result<(), String> {
    match entry {
        Entry::SagaStarted { .. } => {}
        Entry::StepRequested {
            step,
            compensation,
            attempt,
            command_id,
            deadline_us,
        } => {
            let (i, side) = saga.side_mut(step, *compensation)?;
            side.attempts = *attempt;
            side.retry = None;
            saga.pending = Some(Pending {
                step: i,
                compensation: *compensation,
                command_id: command_id.clone(),
                deadline_us: *deadline_us,
            });
        }
        Entry::StepSucceeded {
            step,
            compensation,
            command_id,
            ..
        } => {
            // A late success of an earlier attempt counts (attempts are one idempotent
            // command), and ends the wait for a later one.
            let (i, side) = saga.side_mut(step, *compensation)?;
            side.succeeded = true;
            side.failure = None;
            side.retry = None;
            let same = |p: &Pending| p.step == i && p.compensation == *compensation;
            if saga.answers(command_id) || saga.pending.as_ref().is_some_and(same) {
                saga.pending = None;
            }
        }
        Entry::StepFailed {
            step,
            compensation,
            command_id,
            reason,
            retriable,
        } => {
            // A failure of an attempt no longer awaited says nothing new.
            if saga.answers(command_id) {
                saga.pending = None;
                let (_, side) = saga.side_mut(step, *compensation)?;
                side.failure = Some(Failure {
                    reason: reason.clone(),
                    retriable: *retriable,
                });
            }
        }
        Entry::StepTimedOut {
            step,
            compensation,
            command_id,
        } => {
            if saga.answers(command_id) {
                saga.pending = None;
                let (_, side) = saga.side_mut(step, *compensation)?;
                side.failure = Some(Failure {
                    reason: "timed out".into(),
                    retriable: true,
                });
            }
        }
        Entry::RetryScheduled {
            step,
            compensation,
            attempt,
            not_before_us,
        } => {
            let (_, side) = saga.side_mut(step, *compensation)?;
            side.retry = Some((*attempt, *not_before_us));
        }
        Entry::SagaCompensating { reason } => {
            saga.status = Status::Compensating;
            saga.reason = Some(reason.clone());
        }
        Entry::SagaCompleted => saga.status = Status::Completed,
        Entry::SagaCompensated => saga.status = Status::Compensated,
        Entry::SagaNeedsAttention { reason } => {
            saga.status = Status::NeedsAttention;
            saga.reason = Some(reason.clone());
        }
    }
    Ok(())
}
