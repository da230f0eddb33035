//! A saga's journal: the events of its stream. The orchestrator appends its decisions there;
//! participants append their replies there (with ids derived from the command's, so a
//! participant that handles a command twice replies once). Each event's store type is its
//! `type` tag; its data is the whole JSON object.

use serde::{Deserialize, Serialize};

/// One journal event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    /// The saga began.
    SagaStarted {
        /// Its type's name.
        saga_type: String,
        /// Its data.
        data: serde_json::Value,
        /// The creating request's idempotency key, if any.
        idempotency_key: Option<String>,
    },
    /// An attempt of a step (or of its compensation) was sent to its participant, in the same
    /// atomic append as this entry; it times out at `deadline_us`.
    StepRequested {
        /// The step.
        step: String,
        /// Whether it is the compensation.
        compensation: bool,
        /// 1 for the first attempt.
        attempt: u32,
        /// The command's id (`SAGA/STEP/a|c/ATTEMPT`).
        command_id: String,
        /// When it times out, µs since the Unix epoch.
        deadline_us: u64,
    },
    /// A participant did it.
    StepSucceeded {
        /// The step.
        step: String,
        /// Whether it was the compensation.
        compensation: bool,
        /// The command answered.
        command_id: String,
        /// What the participant says it did.
        result: serde_json::Value,
    },
    /// A participant could not do it.
    StepFailed {
        /// The step.
        step: String,
        /// Whether it was the compensation.
        compensation: bool,
        /// The command answered.
        command_id: String,
        /// Why.
        reason: String,
        /// Whether another attempt may succeed (a decline or no stock: no).
        retriable: bool,
    },
    /// The attempt's deadline passed without an answer.
    StepTimedOut {
        /// The step.
        step: String,
        /// Whether it was the compensation.
        compensation: bool,
        /// The command that went unanswered.
        command_id: String,
    },
    /// Another attempt is due at `not_before_us` (a durable timer).
    RetryScheduled {
        /// The step.
        step: String,
        /// Whether it is the compensation.
        compensation: bool,
        /// The attempt to come.
        attempt: u32,
        /// Not before this, µs since the Unix epoch.
        not_before_us: u64,
    },
    /// A step failed for good: what was done is being undone.
    SagaCompensating {
        /// Why.
        reason: String,
    },
    /// Every step succeeded.
    SagaCompleted,
    /// Every step that was requested has been undone.
    SagaCompensated,
    /// It cannot go on by itself (a compensation, or a step past the pivot, failed past its
    /// attempt cap): a person must look.
    SagaNeedsAttention {
        /// Why.
        reason: String,
    },
}

impl Entry {
    /// Its store event type (the `type` tag).
    pub fn event_type(&self) -> &'static str {
        match self {
            Entry::SagaStarted { .. } => "saga-started",
            Entry::StepRequested { .. } => "step-requested",
            Entry::StepSucceeded { .. } => "step-succeeded",
            Entry::StepFailed { .. } => "step-failed",
            Entry::StepTimedOut { .. } => "step-timed-out",
            Entry::RetryScheduled { .. } => "retry-scheduled",
            Entry::SagaCompensating { .. } => "saga-compensating",
            Entry::SagaCompleted => "saga-completed",
            Entry::SagaCompensated => "saga-compensated",
            Entry::SagaNeedsAttention { .. } => "saga-needs-attention",
        }
    }

    /// Its data in the store.
    pub fn data(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An entry from its data in the store.
    pub fn parse(data: &[u8]) -> Result<Entry, String> {
        serde_json::from_slice(data).map_err(|e| format!("a journal entry: {e}"))
    }
}

/// A saga's journal stream: `saga-{ID}` (the id is the routing key, shared with its command
/// streams, so a decision and its command are one atomic append on one shard).
pub fn journal_stream(saga: &str) -> String {
    format!("saga-{{{saga}}}")
}

/// The stream of `participant`'s commands for one saga: `PARTICIPANT-cmd-{ID}`.
pub fn command_stream(participant: &str, saga: &str) -> String {
    format!("{participant}-cmd-{{{saga}}}")
}

/// The prefix of every command stream of `participant` (its consumer group's target).
pub fn command_prefix(participant: &str) -> String {
    format!("{participant}-cmd-")
}

/// A command to a participant: appended to its command stream with the decision that sends
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// `SAGA/STEP/a|c/ATTEMPT`: the reply's id comes from it.
    pub command_id: String,
    /// The saga.
    pub saga_id: String,
    /// The step.
    pub step: String,
    /// What to do (`reserve`, `refund`, …).
    pub action: String,
    /// Whether it undoes the step.
    pub compensation: bool,
    /// The attempt.
    pub attempt: u32,
    /// The saga's data.
    pub data: serde_json::Value,
}

/// A command's id.
pub fn command_id(saga: &str, step: &str, compensation: bool, attempt: u32) -> String {
    let kind = if compensation { "c" } else { "a" };
    format!("{saga}/{step}/{kind}/{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_streams_share_the_saga_as_routing_key() {
        let e = Entry::StepFailed {
            step: "charge_payment".into(),
            compensation: false,
            command_id: "s/charge_payment/a/1".into(),
            reason: "declined".into(),
            retriable: false,
        };
        assert_eq!(e.event_type(), "step-failed");
        assert_eq!(Entry::parse(&e.data()), Ok(e));
        let data: serde_json::Value =
            serde_json::from_slice(&Entry::SagaCompleted.data()).unwrap_or_default();
        assert_eq!(data["type"], "saga-completed");
        assert_eq!(journal_stream("7f"), "saga-{7f}");
        assert_eq!(command_stream("payment", "7f"), "payment-cmd-{7f}");
        assert!(command_stream("payment", "7f").starts_with(&command_prefix("payment")));
        assert!(Entry::parse(b"{\"type\": \"saga-exploded\"}").is_err());
    }
}
