//! A participant's side: its consumer group on its command streams (`PARTICIPANT-cmd-…`),
//! each command handled by the participant's [`Handler`] and answered in the saga's journal,
//! and the group's position committed. A batch's sagas are handled at once, each saga's
//! commands in order. When the whole batch is handled within [`COMBINE_WITHIN`], its answers
//! and its commit are one atomic append (on one shard; the store refuses it across shards, and
//! then answers go alone); otherwise each saga is answered alone as soon as it is handled, and
//! the commit follows. Handled at least once; the effects are idempotent (each handler keys
//! them on the saga), and the reply's event id is derived from the command's, so a command
//! handled twice (a worker killed between its reply and its commit) replies once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use strata_client::group::{GroupTarget, Groups, Position, Worker, WorkerConfig};
use strata_client::{pb, Client, Error, ExpectedVersion};
use strata_service::server::stopped;
use tokio::sync::watch;

use crate::journal::{command_prefix, journal_stream, Command, Entry};

/// Partitions of a participant's group (how many workers can share its commands).
pub const PARTITIONS: u32 = 8;
/// How long a batch's answers wait to go with its commit in one append. Sagas handled within
/// it are answered together with the commit; past it, each is answered alone as soon as it is
/// handled (a slow provider call does not hold up the others' answers), then the commit.
pub const COMBINE_WITHIN: Duration = Duration::from_millis(50);
/// Tries of one command while its handler fails by itself.
pub const HANDLE_TRIES: u32 = 3;
/// How long a worker waits after the store failed it before it tries again.
const BACKOFF: Duration = Duration::from_millis(500);
/// The namespace of reply ids (derived from command ids).
const REPLY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x91d2_4c6a_7b3e_4f08_a5c1_3e9d_20b7_6f44);

/// A participant's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done (or found done: handlers are idempotent); what it did.
    Done(serde_json::Value),
    /// Not done, and why; `retriable` when another attempt may succeed.
    Failed {
        /// Why.
        reason: String,
        /// Whether another attempt may succeed.
        retriable: bool,
    },
}

/// What a participant does with a command. An `Err` is a failure of its own (the store or a
/// provider unreachable, with an unknown outcome): the command is handled again later, and must
/// then have the same effect once.
pub trait Handler: Send + Sync + 'static {
    /// Handles `command`, created under correlation id `correlation`.
    fn handle(
        &self,
        command: &Command,
        correlation: &str,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// The points of a command's handling where a crash can land (for crash tests: see
/// [`serve_with_crashes`]): with the command received and nothing done, with its handler's
/// effects done but no reply, with the reply appended but the group's position not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The command is in a batch; nothing done.
    Received,
    /// The handler ran (its effects written); no reply.
    Handled,
    /// The reply is in the journal; the batch is not committed (or, when the batch's answers
    /// went with its commit in one append, it is).
    Answered,
}

/// Decides where a worker crashes: a seam for tests; in service, [`NoCrashes`].
pub trait Crashes: Send + Sync + 'static {
    /// Whether `participant`'s worker crashes at `point` of handling `command`.
    fn at(&self, participant: &str, command: &Command, point: Point) -> bool;
}

/// Never crashes.
pub struct NoCrashes;

impl Crashes for NoCrashes {
    fn at(&self, _: &str, _: &Command, _: Point) -> bool {
        false
    }
}

/// Why a worker's run ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// The store failed it.
    #[error(transparent)]
    Store(#[from] Error),
    /// A crash was injected there.
    #[error("crashed at {0:?} of {1}")]
    Crashed(Point, String),
}

/// The reply's journal entry.
pub fn reply_entry(command: &Command, reply: &Reply) -> Entry {
    match reply {
        Reply::Done(result) => Entry::StepSucceeded {
            step: command.step.clone(),
            compensation: command.compensation,
            command_id: command.command_id.clone(),
            result: result.clone(),
        },
        Reply::Failed { reason, retriable } => Entry::StepFailed {
            step: command.step.clone(),
            compensation: command.compensation,
            command_id: command.command_id.clone(),
            reason: reason.clone(),
            retriable: *retriable,
        },
    }
}

/// The reply's event: its id derived from the command's, so it is written once whatever the
/// retries.
fn reply_event(command: &Command, reply: &Reply, correlation: &str) -> pb::NewEvent {
    let entry = reply_entry(command, reply);
    let id = uuid::Uuid::new_v5(&REPLY_NAMESPACE, command.command_id.as_bytes());
    pb::NewEvent {
        id: id.to_string(),
        r#type: entry.event_type().into(),
        data: entry.data().into(),
        metadata: serde_json::to_vec(&json!({ "correlation_id": correlation }))
            .unwrap_or_default()
            .into(),
    }
}

/// Appends `reply` to the command's saga journal (once, whatever the retries).
pub async fn answer(
    store: &Client,
    command: &Command,
    reply: &Reply,
    correlation: &str,
) -> Result<(), Error> {
    match store
        .append(
            &journal_stream(&command.saga_id),
            ExpectedVersion::Any,
            vec![reply_event(command, reply, correlation)],
        )
        .await
    {
        Ok(_) => Ok(()),
        // Replied before with other words (a handler that answered differently the second
        // time): the first answer stands.
        Err(Error::IdempotencyConflict(why)) => {
            tracing::warn!(command = %command.command_id, %why, "a command was answered before; the first answer stands");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The correlation id in an event's metadata.
pub fn correlation_of(e: &pb::RecordedEvent) -> String {
    serde_json::from_slice::<serde_json::Value>(&e.metadata)
        .ok()
        .and_then(|m| m["correlation_id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Handles `participant`'s commands as worker `member` until `stop`.
pub async fn serve<H: Handler>(
    store: Client,
    participant: &'static str,
    member: String,
    handler: Arc<H>,
    stop: watch::Receiver<bool>,
) {
    serve_with_crashes(
        store,
        participant,
        member,
        handler,
        Arc::new(NoCrashes),
        stop,
    )
    .await
}

/// [`serve`], crashing where `crashes` says: the worker's run ends there, as in a killed
/// process (nothing more written, the batch not committed, the worker gone without leaving),
/// and starts again after a pause, as a restarted process would.
pub async fn serve_with_crashes<H: Handler>(
    store: Client,
    participant: &'static str,
    member: String,
    handler: Arc<H>,
    crashes: Arc<dyn Crashes>,
    mut stop: watch::Receiver<bool>,
) {
    let stops = Stops {
        participant,
        crashes: crashes.as_ref(),
    };
    loop {
        let outcome = tokio::select! {
            r = work(&store, stops, &member, handler.as_ref()) => r,
            _ = stopped(&mut stop) => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(participant, error = %e, "handling commands failed; starting again");
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKOFF) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// A command handled, tried [`HANDLE_TRIES`] times while the handler fails by itself; then
/// answered as a failure that may pass (the saga's retry policy takes over: its next attempt is
/// the same idempotent command).
async fn handle<H: Handler>(handler: &H, command: &Command, correlation: &str) -> Reply {
    let mut why = String::new();
    for _ in 0..HANDLE_TRIES {
        match handler.handle(command, correlation).await {
            Ok(reply) => return reply,
            Err(e) => {
                tracing::warn!(command = %command.command_id, error = %e, "handling a command failed");
                why = e;
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
    Reply::Failed {
        reason: why,
        retriable: true,
    }
}

/// A participant's name and where its worker crashes.
#[derive(Clone, Copy)]
struct Stops<'a> {
    participant: &'static str,
    crashes: &'a dyn Crashes,
}

impl Stops<'_> {
    fn check(&self, command: &Command, point: Point) -> Result<(), Ended> {
        if self.crashes.at(self.participant, command, point) {
            return Err(Ended::Crashed(point, command.command_id.clone()));
        }
        Ok(())
    }
}

/// Joins the group and handles batches until the store fails it (or a crash is injected).
async fn work<H: Handler>(
    store: &Client,
    stops: Stops<'_>,
    member: &str,
    handler: &H,
) -> Result<(), Ended> {
    let participant = stops.participant;
    let target = GroupTarget::Prefix(command_prefix(participant));
    Groups::new(store.clone())
        .ensure(participant, target, PARTITIONS, Position::From(0))
        .await?;
    let mut worker = Worker::join(store.clone(), participant, WorkerConfig::new(member)).await?;
    // Answers go with the commit until the store says they cannot (other shards).
    let mut combined = true;
    loop {
        let batch = worker.next_batch().await?;
        // Commands of one saga in order; sagas at once (a slow provider call for one does not
        // hold up the others: measured, one at a time made queued commands outlive their
        // steps' deadlines under late provider answers).
        let mut by_saga: BTreeMap<&str, Vec<Command>> = BTreeMap::new();
        let mut correlations: HashMap<&str, String> = HashMap::new();
        for e in &batch.events {
            match serde_json::from_slice::<Command>(&e.data) {
                Ok(c) => {
                    correlations.insert(e.stream.as_str(), correlation_of(e));
                    by_saga.entry(e.stream.as_str()).or_default().push(c);
                }
                Err(err) => worker.park(e, &format!("not a command: {err}")).await?,
            }
        }
        let sagas = by_saga.into_iter().map(|(stream, commands)| {
            let correlation = correlations.get(stream).cloned().unwrap_or_default();
            async move {
                let mut answers = Vec::with_capacity(commands.len());
                for command in commands {
                    stops.check(&command, Point::Received)?;
                    let reply = handle(handler, &command, &correlation).await;
                    stops.check(&command, Point::Handled)?;
                    answers.push(Answer {
                        command,
                        reply,
                        correlation: correlation.clone(),
                    });
                }
                Ok::<Vec<Answer>, Ended>(answers)
            }
        });
        let mut pending: FuturesUnordered<_> = sagas.collect();
        let window = tokio::time::sleep(COMBINE_WITHIN);
        tokio::pin!(window);
        let (mut ready, mut alone) = (Vec::new(), false);
        loop {
            tokio::select! {
                next = pending.next() => match next {
                    Some(answers) if alone => answer_each(store, &answers?, stops).await?,
                    Some(answers) => ready.extend(answers?),
                    None => break,
                },
                _ = &mut window, if !alone => {
                    alone = true;
                    answer_each(store, &std::mem::take(&mut ready), stops).await?;
                }
            }
        }
        if alone || !combined {
            answer_each(store, &ready, stops).await?;
            worker.commit(&batch).await?;
        } else {
            combined = answer_with_commit(store, &mut worker, &batch, &ready, stops).await?;
        }
    }
}

/// A command handled, its reply to append.
struct Answer {
    command: Command,
    reply: Reply,
    correlation: String,
}

/// Appends each answer alone (crashing after each where planned).
async fn answer_each(store: &Client, answers: &[Answer], stops: Stops<'_>) -> Result<(), Ended> {
    for a in answers {
        let store = store.with_correlation_id(&a.correlation);
        answer(&store, &a.command, &a.reply, &a.correlation).await?;
        stops.check(&a.command, Point::Answered)?;
    }
    Ok(())
}

/// Appends a batch's answers and its commit in one atomic append; `Ok(false)` when the store
/// refuses that because the journals and the group's partition are on different shards (then,
/// and on an answer given before with other words, each answer goes alone, then the commit).
async fn answer_with_commit(
    store: &Client,
    worker: &mut Worker,
    batch: &strata_client::group::Batch,
    answers: &[Answer],
    stops: Stops<'_>,
) -> Result<bool, Ended> {
    let mut journals: BTreeMap<String, Vec<pb::NewEvent>> = BTreeMap::new();
    for a in answers {
        let event = reply_event(&a.command, &a.reply, &a.correlation);
        journals
            .entry(journal_stream(&a.command.saga_id))
            .or_default()
            .push(event);
    }
    let outputs = journals
        .into_iter()
        .map(|(stream, events)| pb::StreamAppend {
            stream,
            expected: Some(ExpectedVersion::Any.wire()),
            events,
        })
        .collect();
    let combined = match worker.commit_with(batch, outputs).await {
        Ok(_) => {
            for a in answers {
                stops.check(&a.command, Point::Answered)?;
            }
            return Ok(true);
        }
        Err(Error::Server { kind, .. }) if kind == "cross-shard" => {
            tracing::info!("the journals are on other shards than the group: answers go alone");
            false
        }
        Err(Error::IdempotencyConflict(_)) => true,
        Err(e) => return Err(e.into()),
    };
    answer_each(store, answers, stops).await?;
    worker.commit(batch).await?;
    Ok(combined)
}
