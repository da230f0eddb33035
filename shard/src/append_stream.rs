//! `AppendStream`: many appends in flight on one call, answered in order.
//!
//! ```text
//!  client ──request messages──▶ read (while the window has room) ──▶ in flight (FIFO) ──▶ answers
//!          (1..=1024 appends)      each append handed on at once     ≤ window appends     ≤ 16 msgs
//!                                  (engine queue or Raft proposals)  ≤ window bytes
//! ```
//!
//! Each append goes the unary `Append`'s way (same checks, same errors), so the engine's group
//! commit or one Raft entry takes many of them together. The appends of a call are queued one
//! after another as they are read — not from futures polled in whatever order the runtime
//! chooses (tokio's cooperative budget can make a ready send wait) — so they are decided in
//! the order sent. Answers leave in that order too. Flow control is by not reading: once the appends (or bytes) in flight reach
//! the window, the call reads no further message until an answer leaves, and an answer waits
//! while the client leaves [`ANSWERS_BUFFERED`] answers unread — so HTTP/2 flow control stops
//! the client, and a call holds at most the window plus one message. A client that goes away
//! loses nothing acknowledged: appends already handed on still commit (their answers are
//! dropped); a retry with the same ids is answered with the original result.
//!
//! Once an append of a call fails in a way the client retries (refused, or its outcome
//! unknown), every later append of the call is refused untried (kind `not-tried`), so that a
//! retry, which the client sends after them, cannot land behind a later append of the same
//! stream (see [`strata_raft::fence`]). The call sets its fence when such an answer leaves and
//! passes it down, so the Raft proposer sets and checks it where it decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::stream::{FuturesOrdered, StreamExt};
use strata_proto::v1 as pb;
use strata_raft::Fence;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::stats::ServiceStats;
use crate::status::invalid;
use strata_proto::metadata::{ACTUAL_VERSION_KEY, ERROR_KIND_KEY, LEADER_KEY};

/// Most appends in one `AppendStreamRequest`.
pub const APPENDS_PER_MESSAGE_MAX: usize = 1024;
/// Answer messages a call buffers for a client that does not read them, before it stops.
pub const ANSWERS_BUFFERED: usize = 16;

/// How much one call may have in flight: see [`crate::ServiceConfig::append_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Appends.
    pub appends: usize,
    /// Bytes of appends, encoded.
    pub bytes: usize,
}

/// The answers of one call.
pub type AnswerStream = ReceiverStream<Result<pb::AppendStreamResponse, Status>>;

/// A boxed future.
pub type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Outcomes of a message's appends to come, in order.
pub type Outcomes = Boxed<'static, Vec<Result<pb::AppendResponse, Status>>>;

/// What serves a call's appends (the `Streams` service; a trait so this module does not
/// import the service that imports it).
pub trait Submit: Clone + Send + Sync + 'static {
    /// Checks and queues a message's appends one after another (resolving once they are
    /// queued) and returns their outcomes to come, in order; behind the call's order `fence`.
    fn submit_batch<'a>(
        &'a self,
        batch: Vec<pb::AppendRequest>,
        fence: &'a Fence,
    ) -> Boxed<'a, Outcomes>;

    /// The node's counters.
    fn stats(&self) -> &Arc<ServiceStats>;

    /// Set when the node stops (`None`: never): a call then takes no further message, answers
    /// what it holds and ends, so the server can drain.
    fn stop(&self) -> Option<watch::Receiver<bool>>;
}

/// The answer of an `AppendStream` call served by `service` within `window`.
pub fn respond(
    service: impl Submit,
    request: tonic::Request<Streaming<pb::AppendStreamRequest>>,
    window: Window,
) -> Result<tonic::Response<AnswerStream>, Status> {
    Ok(tonic::Response::new(start(
        service,
        request.into_inner(),
        window,
    )))
}

/// Starts serving one call.
pub fn start(
    service: impl Submit,
    inbound: Streaming<pb::AppendStreamRequest>,
    window: Window,
) -> AnswerStream {
    service
        .stats()
        .append_stream_calls
        .fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(ANSWERS_BUFFERED);
    tokio::spawn(run(service, inbound, tx, window));
    ReceiverStream::new(rx)
}

/// A request message's appends, checked for count; with their encoded size.
fn appends_of(message: pb::AppendStreamRequest) -> Result<(Vec<pb::AppendRequest>, usize), Status> {
    let n = message.appends.len();
    if n == 0 || n > APPENDS_PER_MESSAGE_MAX {
        return Err(invalid(
            "appends",
            format!("a message carries 1 to {APPENDS_PER_MESSAGE_MAX} appends, not {n}"),
        ));
    }
    let bytes = message
        .appends
        .iter()
        .map(prost::Message::encoded_len)
        .sum();
    Ok((message.appends, bytes))
}

async fn run(
    service: impl Submit,
    mut inbound: Streaming<pb::AppendStreamRequest>,
    tx: mpsc::Sender<Result<pb::AppendStreamResponse, Status>>,
    window: Window,
) {
    let mut count = InFlight {
        stats: service.stats().clone(),
        appends: 0,
        bytes: 0,
    };
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    let fence = Fence::new();
    let mut stop = service.stop();
    let mut ending = None;
    loop {
        let room = count.appends < window.appends && count.bytes < window.bytes;
        tokio::select! {
            biased;
            Some((answer, n, b)) = in_flight.next(), if !in_flight.is_empty() => {
                let answer: pb::AppendStreamResponse = answer;
                count.sub(n, b);
                if answer.results.iter().any(retried) {
                    fence.set();
                }
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            _ = stopping(&mut stop), if reading => {
                reading = false;
                ending = Some(Status::unavailable(
                    "the node is shutting down: the call ends once the appends it took are answered; send the others elsewhere (with the same ids)",
                ));
            }
            message = inbound.message(), if reading && room => match message.and_then(|m| m.map(appends_of).transpose()) {
                Ok(Some((batch, size))) => {
                    let n = batch.len();
                    count.add(n, size);
                    in_flight.push_back(submit(&service, batch, n, size, &fence).await);
                }
                Ok(None) => reading = false,
                Err(status) => {
                    // Answers already due go first; then the call ends with the error.
                    while let Some((answer, _, _)) = in_flight.next().await {
                        if tx.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            else => {
                if let Some(status) = ending {
                    let _ = tx.send(Err(status)).await;
                }
                return;
            }
        }
    }
}

/// Resolves once the node stops (at once if its stop is gone); never without one.
async fn stopping(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stopping| *stopping).await;
        }
        None => std::future::pending().await,
    }
}

/// What one call has in flight, mirrored in the node's gauges (also when the call ends with
/// appends still in flight: their answers are dropped).
struct InFlight {
    stats: Arc<ServiceStats>,
    appends: usize,
    bytes: usize,
}

impl InFlight {
    fn add(&mut self, appends: usize, bytes: usize) {
        self.appends += appends;
        self.bytes += bytes;
        let s = &self.stats;
        s.append_stream_in_flight
            .fetch_add(appends as u64, Ordering::Relaxed);
        s.append_stream_call_peak
            .fetch_max(self.appends as u64, Ordering::Relaxed);
    }

    fn sub(&mut self, appends: usize, bytes: usize) {
        self.appends -= appends;
        self.bytes -= bytes;
        self.stats
            .append_stream_in_flight
            .fetch_sub(appends as u64, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats
            .append_stream_in_flight
            .fetch_sub(self.appends as u64, Ordering::Relaxed);
    }
}

/// Queues a message's appends one after another (so they are decided in the order sent) and
/// returns their answer to come. The node's queue pushing back makes this wait.
async fn submit(
    service: &impl Submit,
    batch: Vec<pb::AppendRequest>,
    n: usize,
    size: usize,
    fence: &Fence,
) -> impl std::future::Future<Output = (pb::AppendStreamResponse, usize, usize)> {
    if fence.is_set() {
        let results = (0..n).map(|_| result(Err(not_tried()))).collect();
        let answer = (pb::AppendStreamResponse { results }, n, size);
        return Either::Left(std::future::ready(answer));
    }
    let answers = service.submit_batch(batch, fence).await;
    Either::Right(async move {
        let results = answers.await.into_iter().map(result).collect();
        (pb::AppendStreamResponse { results }, n, size)
    })
}

/// The answer of an append not tried because an earlier one of its call failed.
pub fn not_tried() -> Status {
    let mut status = Status::unavailable(strata_raft::ReplicaError::NotTried.to_string());
    if let Ok(kind) = "not-tried".parse() {
        status.metadata_mut().insert(ERROR_KIND_KEY, kind);
    }
    status
}

/// Whether a client sends this append again rather than taking its answer (what
/// `strata-client` does): a refusal, or an outcome unknown.
fn retried(result: &pb::AppendResult) -> bool {
    let Some(pb::append_result::Outcome::Error(e)) = &result.outcome else {
        return false;
    };
    match e.kind.as_str() {
        "wrong-expected-version" | "stream-deleted" | "idempotency-conflict" | "limit-exceeded" => {
            false
        }
        "not-leader" | "busy" | "not-tried" => true,
        _ => matches!(
            Code::from(e.code),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
    }
}

/// One append's outcome as the stream answers it.
fn result(outcome: Result<pb::AppendResponse, Status>) -> pb::AppendResult {
    use pb::append_result::Outcome;
    pb::AppendResult {
        outcome: Some(match outcome {
            Ok(r) => Outcome::Appended(r),
            Err(status) => Outcome::Error(append_error(&status)),
        }),
    }
}

/// A status as an [`pb::AppendError`]: the same code, message and metadata.
pub fn append_error(status: &Status) -> pb::AppendError {
    let md = |key: &str| strata_proto::metadata::text(status, key);
    pb::AppendError {
        code: status.code() as i32,
        message: status.message().to_string(),
        kind: md(ERROR_KIND_KEY).unwrap_or_default(),
        actual_version: md(ACTUAL_VERSION_KEY).and_then(|v| v.parse().ok()),
        leader: md(LEADER_KEY).unwrap_or_default(),
    }
}

/// An [`pb::AppendError`] as the status it stands for (what a node that passed an append on
/// answers with the leader's error): the inverse of [`append_error`].
pub fn status_of(e: &pb::AppendError) -> Status {
    let mut status = Status::new(tonic::Code::from(e.code), e.message.clone());
    let md = status.metadata_mut();
    let mut put = |key: &'static str, value: &str| {
        if let Ok(v) = value.parse() {
            md.insert(key, v);
        }
    };
    if !e.kind.is_empty() {
        put(ERROR_KIND_KEY, &e.kind);
    }
    match e.actual_version {
        Some(v) => put(ACTUAL_VERSION_KEY, &v.to_string()),
        None if e.kind == "wrong-expected-version" => put(ACTUAL_VERSION_KEY, "none"),
        None => {}
    }
    if !e.leader.is_empty() {
        put(LEADER_KEY, &e.leader);
    }
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Counts the messages handed on; answers every append with `answer`.
    #[derive(Clone)]
    struct Fake {
        submitted: Arc<std::sync::atomic::AtomicUsize>,
        answer: Result<pb::AppendResponse, Status>,
        stats: Arc<ServiceStats>,
    }

    impl Submit for Fake {
        fn submit_batch<'a>(
            &'a self,
            batch: Vec<pb::AppendRequest>,
            _fence: &'a Fence,
        ) -> Boxed<'a, Outcomes> {
            self.submitted.fetch_add(1, Ordering::Relaxed);
            let outcomes: Outcomes =
                Box::pin(std::future::ready(vec![self.answer.clone(); batch.len()]));
            Box::pin(std::future::ready(outcomes))
        }

        fn stats(&self) -> &Arc<ServiceStats> {
            &self.stats
        }

        fn stop(&self) -> Option<watch::Receiver<bool>> {
            None
        }
    }

    fn with_kind(code: Code, kind: &str) -> Status {
        let mut s = Status::new(code, "x");
        s.metadata_mut()
            .insert(ERROR_KIND_KEY, kind.parse().unwrap());
        s
    }

    #[tokio::test]
    async fn a_fenced_call_answers_not_tried_without_handing_the_message_on() {
        let fake = Fake {
            submitted: Arc::default(),
            answer: Ok(pb::AppendResponse::default()),
            stats: Arc::default(),
        };
        let appends = || vec![pb::AppendRequest::default(); 3];
        let fence = Fence::new();
        let (answer, _, _) = submit(&fake, appends(), 3, 30, &fence).await.await;
        assert!(answer.results.iter().all(|r| !retried(r)));
        assert_eq!(fake.submitted.load(Ordering::Relaxed), 1);
        fence.set();
        let (answer, n, bytes) = submit(&fake, appends(), 3, 30, &fence).await.await;
        assert_eq!((n, bytes), (3, 30));
        assert_eq!(fake.submitted.load(Ordering::Relaxed), 1, "not handed on");
        assert_eq!(answer.results.len(), 3);
        for r in &answer.results {
            assert!(retried(r));
            let Some(pb::append_result::Outcome::Error(e)) = &r.outcome else {
                panic!("{r:?}")
            };
            assert_eq!(
                (e.code, e.kind.as_str()),
                (Code::Unavailable as i32, "not-tried")
            );
        }
    }

    #[test]
    fn the_answers_a_client_retries_are_the_ones_that_fence_a_call() {
        let answer = |status: Status| result(Err(status));
        for (status, fences) in [
            (with_kind(Code::Unavailable, "not-leader"), true),
            (with_kind(Code::Unavailable, "busy"), true),
            (with_kind(Code::Unavailable, "moved"), true),
            (not_tried(), true),
            (Status::unavailable("the forwarded call ended"), true),
            (Status::deadline_exceeded("late"), true),
            (
                with_kind(Code::FailedPrecondition, "wrong-expected-version"),
                false,
            ),
            (with_kind(Code::FailedPrecondition, "stream-deleted"), false),
            (
                with_kind(Code::AlreadyExists, "idempotency-conflict"),
                false,
            ),
            (with_kind(Code::ResourceExhausted, "limit-exceeded"), false),
            (with_kind(Code::InvalidArgument, "invalid-argument"), false),
            (Status::internal("x"), false),
        ] {
            assert_eq!(retried(&answer(status.clone())), fences, "{status:?}");
        }
        assert!(!retried(&result(Ok(pb::AppendResponse::default()))));
    }

    #[test]
    fn an_append_error_turns_back_into_its_status() {
        let mut wrong = Status::failed_precondition("expected 3");
        let md = wrong.metadata_mut();
        md.insert(
            ERROR_KIND_KEY,
            "wrong-expected-version"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        md.insert(ACTUAL_VERSION_KEY, "none".parse().unwrap());
        let mut moved = Status::unavailable("not the leader");
        let md = moved.metadata_mut();
        md.insert(ERROR_KIND_KEY, "not-leader".parse().unwrap());
        md.insert(LEADER_KEY, "10.0.0.2:50051".parse().unwrap());
        for status in [wrong, moved, Status::internal("x")] {
            let back = status_of(&append_error(&status));
            assert_eq!(back.code(), status.code());
            assert_eq!(back.message(), status.message());
            for key in [ERROR_KIND_KEY, ACTUAL_VERSION_KEY, LEADER_KEY] {
                assert_eq!(
                    strata_proto::metadata::text(&back, key),
                    strata_proto::metadata::text(&status, key),
                    "{key}"
                );
            }
        }
    }
}
