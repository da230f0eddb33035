//! The decisions driven to the end against scripted participants: each saga's whole journal,
//! as an orchestrator would write it, checked for its outcome and for the commands sent.

use std::collections::HashMap;

use crate::decide::{decide, Decision};
use crate::definition::{order_processing, saga_type};
use crate::journal::{Command, Entry};
use crate::state::{extend, fold, Status};

/// How a participant answers one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Ok,
    Fail { retriable: bool },
    Silent,
}

/// A saga driven to its end: replies scripted by (step, compensation, attempt), `Ok` when not
/// scripted. Returns the journal and the commands sent, in order.
fn drive(script: &HashMap<(&str, bool, u32), Reply>) -> (Vec<(u64, Entry)>, Vec<Command>) {
    let mut journal = vec![(
        0,
        Entry::SagaStarted {
            saga_type: "order_processing".into(),
            data: serde_json::json!({"order_id": "o1", "sku": "a", "quantity": 1, "amount": 100}),
            idempotency_key: None,
        },
    )];
    let def = order_processing();
    let mut now = 1_000_000u64;
    let mut commands = Vec::new();
    for _ in 0..1000 {
        let saga = fold("s1", saga_type, &journal).unwrap();
        match decide(&def, &saga, now) {
            Decision::Done => return (journal, commands),
            Decision::Wait(Some(t)) => now = t,
            Decision::Wait(None) => panic!("waiting for nothing: {journal:#?}"),
            Decision::Act { entries, command } => {
                for e in entries {
                    journal.push((journal.len() as u64, e));
                }
                let Some((_, c)) = command else { continue };
                let reply = script
                    .get(&(c.step.as_str(), c.compensation, c.attempt))
                    .copied()
                    .unwrap_or(Reply::Ok);
                let (step, compensation, command_id) =
                    (c.step.clone(), c.compensation, c.command_id.clone());
                commands.push(c);
                now += 1000;
                let answer = match reply {
                    Reply::Silent => continue,
                    Reply::Ok => Entry::StepSucceeded {
                        step,
                        compensation,
                        command_id,
                        result: serde_json::Value::Null,
                    },
                    Reply::Fail { retriable } => Entry::StepFailed {
                        step,
                        compensation,
                        command_id,
                        reason: "no".into(),
                        retriable,
                    },
                };
                journal.push((journal.len() as u64, answer));
            }
        }
    }
    panic!("no end in 1000 decisions");
}

fn outcome(journal: &[(u64, Entry)]) -> Status {
    fold("s1", saga_type, journal).unwrap().status
}

fn actions(commands: &[Command]) -> Vec<&str> {
    commands.iter().map(|c| c.action.as_str()).collect()
}

#[test]
fn every_step_done_once_completes_the_saga() {
    let (journal, commands) = drive(&HashMap::new());
    assert_eq!(outcome(&journal), Status::Completed);
    assert_eq!(
        actions(&commands),
        ["reserve", "charge", "commit", "notify"]
    );
}

#[test]
fn a_declined_charge_undoes_the_charge_then_the_reservation() {
    let script = HashMap::from([(
        ("charge_payment", false, 1),
        Reply::Fail { retriable: false },
    )]);
    let (journal, commands) = drive(&script);
    assert_eq!(outcome(&journal), Status::Compensated);
    assert_eq!(
        actions(&commands),
        ["reserve", "charge", "refund", "release"]
    );
}

#[test]
fn no_stock_undoes_the_reservation_it_asked_for_and_nothing_else() {
    let script = HashMap::from([(
        ("reserve_stock", false, 1),
        Reply::Fail { retriable: false },
    )]);
    let (journal, commands) = drive(&script);
    assert_eq!(outcome(&journal), Status::Compensated);
    assert_eq!(actions(&commands), ["reserve", "release"]);
}

#[test]
fn timeouts_are_retried_with_growing_backoff_until_an_attempt_answers() {
    let script = HashMap::from([
        (("charge_payment", false, 1), Reply::Silent),
        (
            ("charge_payment", false, 2),
            Reply::Fail { retriable: true },
        ),
    ]);
    let (journal, commands) = drive(&script);
    assert_eq!(outcome(&journal), Status::Completed);
    assert_eq!(
        actions(&commands),
        ["reserve", "charge", "charge", "charge", "commit", "notify"]
    );
    let waits: Vec<u64> = journal
        .iter()
        .filter_map(|(_, e)| match e {
            Entry::RetryScheduled { not_before_us, .. } => Some(*not_before_us),
            _ => None,
        })
        .collect();
    assert_eq!(waits.len(), 2);
    assert!(waits[0] < waits[1]);
}

#[test]
fn a_compensation_that_keeps_failing_parks_the_saga_for_attention() {
    let mut script = HashMap::from([(
        ("charge_payment", false, 1),
        Reply::Fail { retriable: false },
    )]);
    for a in 1..=20 {
        script.insert(("charge_payment", true, a), Reply::Fail { retriable: true });
    }
    let (journal, commands) = drive(&script);
    let saga = fold("s1", saga_type, &journal).unwrap();
    assert_eq!(saga.status, Status::NeedsAttention);
    assert!(saga.reason.unwrap().contains("undoing charge_payment"));
    assert_eq!(
        actions(&commands)
            .iter()
            .filter(|a| **a == "refund")
            .count(),
        8
    );
    assert!(
        !actions(&commands).contains(&"release"),
        "stops at the stuck one"
    );
}

#[test]
fn past_the_pivot_nothing_is_undone_and_a_stuck_step_parks_the_saga() {
    let script = HashMap::from([(("commit_stock", false, 1), Reply::Fail { retriable: false })]);
    let (journal, commands) = drive(&script);
    assert_eq!(outcome(&journal), Status::NeedsAttention);
    assert_eq!(actions(&commands), ["reserve", "charge", "commit"]);
}

#[test]
fn a_late_success_counts_and_a_stale_failure_does_not() {
    // Attempt 1 is silent (times out; a retry is sent); its success then arrives late, after
    // attempt 2 was sent; attempt 2's failure arrives after that.
    let def = order_processing();
    let mut journal = vec![(
        0,
        Entry::SagaStarted {
            saga_type: "order_processing".into(),
            data: serde_json::json!({}),
            idempotency_key: None,
        },
    )];
    let push = |j: &mut Vec<(u64, Entry)>, e: Entry| j.push((j.len() as u64, e));
    let requested = |attempt: u32| Entry::StepRequested {
        step: "reserve_stock".into(),
        compensation: false,
        attempt,
        command_id: format!("s1/reserve_stock/a/{attempt}"),
        deadline_us: 10,
    };
    push(&mut journal, requested(1));
    push(
        &mut journal,
        Entry::StepTimedOut {
            step: "reserve_stock".into(),
            compensation: false,
            command_id: "s1/reserve_stock/a/1".into(),
        },
    );
    push(&mut journal, requested(2));
    push(
        &mut journal,
        Entry::StepSucceeded {
            step: "reserve_stock".into(),
            compensation: false,
            command_id: "s1/reserve_stock/a/1".into(),
            result: serde_json::Value::Null,
        },
    );
    push(
        &mut journal,
        Entry::StepFailed {
            step: "reserve_stock".into(),
            compensation: false,
            command_id: "s1/reserve_stock/a/2".into(),
            reason: "late".into(),
            retriable: false,
        },
    );
    let saga = fold("s1", saga_type, &journal).unwrap();
    assert!(saga.steps[0].action.succeeded);
    assert_eq!(saga.pending, None);
    match decide(&def, &saga, 20) {
        Decision::Act {
            command: Some((_, c)),
            ..
        } => assert_eq!(c.action, "charge"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn any_prefix_of_a_journal_leads_to_the_same_next_decision() {
    // What an orchestrator restarted after any journal write decides: the entry it wrote next.
    let script = HashMap::from([
        (("charge_payment", false, 1), Reply::Silent),
        (
            ("charge_payment", false, 2),
            Reply::Fail { retriable: false },
        ),
    ]);
    let (journal, _) = drive(&script);
    let (again, _) = drive(&script);
    assert_eq!(journal, again, "deterministic");
    let def = order_processing();
    for k in 1..journal.len() {
        let saga = fold("s1", saga_type, &journal[..k]).unwrap();
        let next = &journal[k].1;
        let by_orchestrator =
            !matches!(next, Entry::StepSucceeded { .. } | Entry::StepFailed { .. });
        if !by_orchestrator || saga.pending.is_some() {
            continue;
        }
        match decide(&def, &saga, u64::MAX / 2) {
            Decision::Act { entries, .. } => {
                assert_eq!(
                    entries[0].event_type(),
                    next.event_type(),
                    "after {k} entries"
                )
            }
            other => panic!("after {k} entries: {other:?}"),
        }
    }
}

#[test]
fn a_journal_that_does_not_fit_its_type_is_an_error() {
    let started = Entry::SagaStarted {
        saga_type: "order_processing".into(),
        data: serde_json::json!({}),
        idempotency_key: None,
    };
    assert!(fold("s", saga_type, &[]).is_err());
    assert!(fold("s", saga_type, &[(0, Entry::SagaCompleted)]).is_err());
    assert!(fold(
        "s",
        saga_type,
        &[(0, started.clone()), (1, started.clone())]
    )
    .is_err());
    let unknown = Entry::RetryScheduled {
        step: "teleport".into(),
        compensation: false,
        attempt: 2,
        not_before_us: 0,
    };
    assert!(fold("s", saga_type, &[(0, started), (1, unknown)]).is_err());
}

#[test]
fn a_state_extended_from_any_prefix_is_the_whole_journal_fold() {
    // The orchestrator's cache: a saga folded to some version, then the rest folded on.
    let script = HashMap::from([
        (("charge_payment", false, 1), Reply::Silent),
        (
            ("charge_payment", false, 2),
            Reply::Fail { retriable: false },
        ),
    ]);
    let (journal, _) = drive(&script);
    let whole = fold("s1", saga_type, &journal).unwrap();
    for k in 1..journal.len() {
        let mut saga = fold("s1", saga_type, &journal[..k]).unwrap();
        extend(&mut saga, &journal[k..]).unwrap();
        assert_eq!(saga, whole, "extended after {k} entries");
    }
    // Not the next version, or a second start: refused.
    let mut saga = fold("s1", saga_type, &journal[..2]).unwrap();
    assert!(extend(&mut saga, &journal[3..]).is_err());
    assert!(extend(&mut saga, &journal[..1]).is_err());
}
