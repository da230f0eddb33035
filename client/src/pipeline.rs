//! Pipelined appends: an [`Appender`] keeps up to `window` appends in flight on one
//! `AppendStream` call and batches those that arrive within `linger` into one message — while
//! appends are out only (Nagle's rule): with nothing sent and unanswered an append goes at
//! once, and what lingers goes as soon as the last answer comes.
//!
//! ```text
//!  append() ──(window: a semaphore)──▶ queue ──▶ pending ──linger/full──▶ outbox ──▶ call ──▶ node
//!     ▲                                                                              │
//!     └──────────────── PendingAppend resolves ◀── in flight (FIFO) ◀── answers ◀────┘
//! ```
//!
//! One task owns the call. It never waits on one side only: it sends while it reads answers
//! (a node that stops reading is waiting for us to read its answers). Answers come in the
//! order sent, so the oldest in-flight batch is the one answered. An append the node refused
//! (not the leader, busy) and every append in flight on a call that broke go back, in order,
//! to the front of the next call (to the named leader, or the next node) with the same event
//! ids, so a retry of one that did commit is answered with its original result. An append is
//! given up after `attempts_max` calls or when the appender's calls keep failing past the
//! `deadline` (then `Unavailable`: it may have committed; the same ids can be retried).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use strata_proto::codec::StrictCodec;
use strata_proto::shared::SharedAppends;
use strata_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant as TokioInstant;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::Connections;
use crate::error::{Error, Failed, Retry};
use crate::events::{with_ids, ExpectedVersion};

/// Messages handed to the transport and not yet sent.
const MESSAGES_QUEUED: usize = 4;
/// How long a call with nothing in flight stays open for the next append (appends made one
/// after another, as [`crate::Client::append`]'s are, then share one call instead of each
/// opening its own).
pub const IDLE_CALL_KEPT: std::time::Duration = std::time::Duration::from_secs(10);

type Reply = oneshot::Sender<Result<pb::AppendResponse, Error>>;

/// One append on its way. Shared with the messages that carry it: it is kept until answered
/// (to be sent again on a broken call) and sending it costs no copy.
struct Item {
    request: Arc<pb::AppendRequest>,
    bytes: usize,
    reply: Reply,
    /// Calls it was in flight on that failed.
    attempts: u32,
    _room: OwnedSemaphorePermit,
}

/// The result of one pipelined append, once the node answers it.
pub struct PendingAppend(oneshot::Receiver<Result<pb::AppendResponse, Error>>);

impl Future for PendingAppend {
    type Output = Result<pb::AppendResponse, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Error::Appender("the appender stopped".into()))))
    }
}

/// Pipelined appends over one connection. Cheap to clone (clones share the call and the
/// window); the call ends when the last clone is dropped and every append is answered.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
    window: usize,
    deadline: std::time::Duration,
}

impl Appender {
    pub(crate) fn start(conn: Connections) -> Appender {
        // Unbounded in type, bounded by `room`: every queued item holds a window permit.
        let (queue, rx) = mpsc::unbounded_channel();
        let window = conn.config().window;
        let deadline = conn.config().deadline;
        let room = Arc::new(Semaphore::new(window));
        tokio::spawn(Pipeline::new(conn, rx).run());
        Appender {
            queue,
            room,
            window,
            deadline,
        }
    }

    /// Queues an append of `events` to `stream` at `expected` once the window has room, and
    /// returns its answer to come. Events without an id get one.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<pb::NewEvent>,
    ) -> Result<PendingAppend, Error> {
        self.append_request(pb::AppendRequest {
            stream: stream.to_string(),
            expected: Some(expected.wire()),
            events,
        })
        .await
    }

    /// [`Appender::append`] of a request as the wire has it.
    pub async fn append_request(&self, request: pb::AppendRequest) -> Result<PendingAppend, Error> {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Appender("closed".into()))?;
        self.queue_with(request, room)
    }

    /// Like [`Appender::append_request`], but fails at once when the window is full.
    pub fn try_append_request(&self, request: pb::AppendRequest) -> Result<PendingAppend, Error> {
        let room = self.room.clone().try_acquire_owned().map_err(|_| {
            Error::Appender("the window is full (appends in flight reached `window`)".into())
        })?;
        self.queue_with(request, room)
    }

    fn queue_with(
        &self,
        mut request: pb::AppendRequest,
        room: OwnedSemaphorePermit,
    ) -> Result<PendingAppend, Error> {
        with_ids(&mut request.events);
        let (reply, answer) = oneshot::channel();
        let bytes = prost_len(&request);
        self.queue
            .send(Item {
                request: Arc::new(request),
                bytes,
                reply,
                attempts: 0,
                _room: room,
            })
            .map_err(|_| Error::Appender("the appender stopped".into()))?;
        Ok(PendingAppend(answer))
    }

    /// Appends in flight (queued, sent or being retried) now.
    pub fn in_flight(&self) -> usize {
        self.window.saturating_sub(self.room.available_permits())
    }
}

/// The appender a [`crate::Client`]'s appends share, started by the first of them. It lives
/// as long as the client's handles (its task holds only the connections); one whose task has
/// gone (its runtime shut down) is replaced by the next append.
#[derive(Clone, Default)]
pub(crate) struct SharedAppender(Arc<std::sync::Mutex<Option<Appender>>>);

impl std::fmt::Debug for SharedAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAppender").finish_non_exhaustive()
    }
}

impl SharedAppender {
    pub(crate) fn get_or_start(&self, conn: &Connections) -> Appender {
        // A plain cache: a panic elsewhere cannot leave it inconsistent.
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(a) if !a.queue.is_closed() => a.clone(),
            _ => slot.insert(Appender::start(conn.clone())).clone(),
        }
    }
}

impl Appender {
    /// Appends and waits for the answer, within the client's `deadline` (past it the append
    /// may still commit: a retry with the same event ids is answered with its result).
    pub(crate) async fn append_and_wait(
        &self,
        request: pb::AppendRequest,
    ) -> Result<pb::AppendResponse, Error> {
        let deadline = self.deadline;
        let answer = async { self.append_request(request).await?.await };
        tokio::time::timeout(deadline, answer)
            .await
            .unwrap_or_else(|_| {
                Err(Error::DeadlineExceeded {
                    deadline,
                    attempts: 1,
                    last: "no answer on the shared append stream".into(),
                })
            })
    }
}

/// Opens an `AppendStream` call sending the messages `rx` gives: the generated client's
/// `append_stream`, but with [`SharedAppends`] for the request messages (the same bytes).
async fn open_call(
    client: &mut crate::conn::RawApi,
    rx: mpsc::Receiver<SharedAppends>,
) -> Result<tonic::Response<tonic::Streaming<pb::AppendStreamResponse>>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the connection is not ready: {e}")))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("strata.v1.Streams", "AppendStream"));
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/strata.v1.Streams/AppendStream");
    client
        .streaming(
            request,
            path,
            StrictCodec::<SharedAppends, pb::AppendStreamResponse>::default(),
        )
        .await
}

fn prost_len(request: &pb::AppendRequest) -> usize {
    prost::Message::encoded_len(request)
}

/// The task behind an [`Appender`].
struct Pipeline {
    conn: Connections,
    queue: mpsc::UnboundedReceiver<Item>,
    queue_open: bool,
    /// Queued items being lingered over, in order.
    pending: Vec<Item>,
    /// When `pending` goes out at the latest.
    flush_at: Option<TokioInstant>,
    /// Batches ready to send, in order (retries first).
    outbox: VecDeque<Vec<Item>>,
    /// Batches sent on the current call, oldest first.
    in_flight: VecDeque<Vec<Item>>,
    /// Consecutive failed calls, and since when.
    failures: u32,
    failing_since: Option<Instant>,
}

impl Pipeline {
    fn new(conn: Connections, queue: mpsc::UnboundedReceiver<Item>) -> Pipeline {
        Pipeline {
            conn,
            queue,
            queue_open: true,
            pending: Vec::new(),
            flush_at: None,
            outbox: VecDeque::new(),
            in_flight: VecDeque::new(),
            failures: 0,
            failing_since: None,
        }
    }

    /// Nothing sent and unanswered, nothing waiting to be sent: the linger only waits while
    /// appends are out (as Nagle's rule does), so a lone append goes at once.
    fn nothing_out(&self) -> bool {
        self.in_flight.is_empty() && self.outbox.is_empty()
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && self.outbox.is_empty() && self.in_flight.is_empty()
    }

    async fn run(mut self) {
        loop {
            if self.idle() {
                if !self.queue_open {
                    return;
                }
                // No call is kept open longer than IDLE_CALL_KEPT with nothing to send.
                match self.queue.recv().await {
                    Some(item) => self.take(item),
                    None => return,
                }
            }
            let addr = self.conn.target();
            let failed = self.call(&addr).await;
            if let Some(failed) = failed {
                self.after_failure(&addr, failed).await;
            }
        }
    }

    /// Adds a queued item (and whatever else is queued now) to `pending`; flushes when full or
    /// when there is no linger.
    fn take(&mut self, item: Item) {
        self.pending.push(item);
        while self.pending.len() < self.conn.config().batch_appends_max {
            match self.queue.try_recv() {
                Ok(item) => self.pending.push(item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.queue_open = false;
                    break;
                }
            }
        }
        let linger = self.conn.config().linger;
        let full = self.pending.len() >= self.conn.config().batch_appends_max;
        if linger.is_zero() || full || self.nothing_out() {
            self.flush();
        } else if self.flush_at.is_none() {
            self.flush_at = Some(TokioInstant::now() + linger);
        }
    }

    /// Moves `pending` into batches within the count and byte bounds.
    fn flush(&mut self) {
        let config = self.conn.config();
        let mut batch: Vec<Item> = Vec::new();
        let mut bytes = 0;
        for item in self.pending.drain(..) {
            if !batch.is_empty()
                && (batch.len() >= config.batch_appends_max
                    || bytes + item.bytes > config.batch_bytes_max)
            {
                self.outbox.push_back(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += item.bytes;
            batch.push(item);
        }
        if !batch.is_empty() {
            self.outbox.push_back(batch);
        }
        self.flush_at = None;
    }

    /// Runs one call until it breaks (`Some`) or there is nothing left to do (`None`).
    async fn call(&mut self, addr: &str) -> Option<Failed> {
        let mut client = match self.conn.grpc(addr) {
            Ok(c) => c,
            Err(error) => {
                return Some(Failed {
                    error,
                    retry: Retry::No,
                })
            }
        };
        let (tx, rx) = mpsc::channel(MESSAGES_QUEUED);
        let opened = tokio::time::timeout(
            self.conn.config().attempt_timeout,
            open_call(&mut client, rx),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Some(Failed::from_status(&status)),
            Err(_) => {
                return Some(Failed {
                    error: Error::Unavailable(format!("{addr} did not open the append stream")),
                    retry: Retry::Unknown,
                })
            }
        };
        // Two timers, each registered once and moved only when its deadline changes: a new
        // timer per turn of the loop would wake the runtime's I/O driver (a syscall and an
        // extra poll) on every answer.
        let mut flush_timer = Timer::new();
        // Armed for the end of an idle spell and left alone when appends come and go: when it
        // fires it looks at `idle_since` (at most once per IDLE_CALL_KEPT while busy).
        let mut idle_timer = Timer::new();
        let mut idle_since: Option<TokioInstant> = None;
        loop {
            if self.idle() && !self.queue_open {
                return None;
            }
            flush_timer.set(self.flush_at);
            if let (Some(since), false) = (idle_since, idle_timer.armed()) {
                idle_timer.set(Some(since + IDLE_CALL_KEPT));
            }
            tokio::select! {
                biased;
                answer = answers.message() => {
                    if idle_since.is_some() {
                        // Nothing in flight: the node ended (or broke) an idle call; nothing
                        // is lost, and the next append opens a new one.
                        return None;
                    }
                    let failed = match answer {
                        Ok(Some(answer)) => self.answered(answer),
                        Ok(None) => Some(Failed { error: Error::Unavailable(format!("{addr} ended the append stream")), retry: Retry::Unknown }),
                        Err(status) => Some(Failed::from_status(&status)),
                    };
                    if failed.is_some() {
                        return failed;
                    }
                    // A good answer: the node serves us.
                    self.failures = 0;
                    self.failing_since = None;
                    if self.nothing_out() && !self.pending.is_empty() {
                        // The last answer came: what lingers goes now.
                        self.flush();
                    }
                }
                permit = tx.reserve(), if !self.outbox.is_empty() => {
                    let Ok(permit) = permit else {
                        return Some(Failed { error: Error::Unavailable("the append stream closed".into()), retry: Retry::Unknown });
                    };
                    if let Some(batch) = self.outbox.pop_front() {
                        let appends = batch.iter().map(|i| i.request.clone()).collect();
                        permit.send(SharedAppends(appends));
                        self.in_flight.push_back(batch);
                    }
                }
                item = self.queue.recv(), if self.queue_open => match item {
                    Some(item) => self.take(item),
                    None => {
                        self.queue_open = false;
                        self.flush();
                    }
                },
                () = flush_timer.fired(), if flush_timer.armed() => self.flush(),
                () = idle_timer.fired(), if idle_timer.armed() => {
                    // Idle for IDLE_CALL_KEPT: end this call; the next append opens a new one.
                    if idle_since.is_some_and(|s| s + IDLE_CALL_KEPT <= TokioInstant::now()) {
                        return None;
                    }
                }
            }
            idle_since = match (self.idle(), idle_since) {
                (false, _) => None,
                (true, None) => Some(TokioInstant::now()),
                (true, since) => since,
            };
        }
    }

    /// Answers the oldest batch in flight; `Some` when the call must be given up (an append
    /// was refused and must go elsewhere, or the answer does not fit).
    fn answered(&mut self, answer: pb::AppendStreamResponse) -> Option<Failed> {
        let Some(batch) = self.in_flight.pop_front() else {
            return Some(Failed {
                error: Error::Unavailable("an answer came with nothing in flight".into()),
                retry: Retry::Unknown,
            });
        };
        if answer.results.len() != batch.len() {
            let failed = Failed {
                error: Error::Unavailable(format!(
                    "{} results answered a batch of {}",
                    answer.results.len(),
                    batch.len()
                )),
                retry: Retry::Unknown,
            };
            self.in_flight.push_front(batch);
            return Some(failed);
        }
        let mut refused: Option<Failed> = None;
        let mut again = Vec::new();
        for (item, result) in batch.into_iter().zip(answer.results) {
            use pb::append_result::Outcome;
            let failed = match result.outcome {
                Some(Outcome::Appended(r)) => {
                    let _ = item.reply.send(Ok(r));
                    continue;
                }
                Some(Outcome::Error(e)) => Failed::from_append_error(e),
                None => Failed {
                    error: Error::Unavailable("an empty result".into()),
                    retry: Retry::Unknown,
                },
            };
            match failed.retry {
                Retry::No => {
                    let _ = item.reply.send(Err(failed.error));
                }
                _ => {
                    again.push(item);
                    refused.get_or_insert(failed);
                }
            }
        }
        if !again.is_empty() {
            // They go first on the next call, before what is still in flight here.
            self.in_flight.push_front(again);
        }
        refused
    }

    /// A call broke: what was in flight goes back to the front, in order, each counting an
    /// attempt; then the target moves and the task waits as for any call.
    async fn after_failure(&mut self, addr: &str, failed: Failed) {
        let attempts_max = self.conn.config().attempts_max;
        let mut back: Vec<Item> = Vec::new();
        for item in self.in_flight.drain(..).flatten() {
            let mut item = item;
            item.attempts += 1;
            if item.attempts >= attempts_max {
                let _ = item.reply.send(Err(Error::Unavailable(format!(
                    "gave up after {} attempts (it may have committed; retry with the same event ids): {}",
                    item.attempts, failed.error
                ))));
            } else {
                back.push(item);
            }
        }
        // Re-batched within the bounds: in flight first, then what was waiting to go.
        back.extend(self.outbox.drain(..).flatten());
        back.append(&mut self.pending);
        self.pending = back;
        self.flush();
        self.failures += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        tracing::debug!(%addr, failures = self.failures, error = %failed.error, "append stream broke");
        if let Err(error) = self
            .conn
            .after_failure(addr, failed, true, self.failures, since)
            .await
        {
            // Out of attempts or time: everything waiting fails; later appends start afresh.
            self.flush();
            for item in self.outbox.drain(..).flatten() {
                let _ = item.reply.send(Err(error.clone()));
            }
            self.failures = 0;
            self.failing_since = None;
        }
    }
}

/// A deadline kept registered with the runtime's timer across turns of a loop: setting the
/// deadline it already has does nothing.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    at: Option<TokioInstant>,
}

impl Timer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(TokioInstant::now())),
            at: None,
        }
    }

    fn armed(&self) -> bool {
        self.at.is_some()
    }

    /// Arms it for `at`, or disarms it with `None`.
    fn set(&mut self, at: Option<TokioInstant>) {
        if at != self.at {
            if let Some(at) = at {
                self.sleep.as_mut().reset(at);
            }
            self.at = at;
        }
    }

    /// Resolves at the deadline and disarms; poll only while armed.
    async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_at_its_deadline_keeps_it_when_set_again_and_can_be_disarmed() {
        let start = TokioInstant::now();
        let mut timer = Timer::new();
        assert!(!timer.armed());
        timer.set(Some(start + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(2)).await;
        // The same deadline again keeps it: it fires at 5 s, not 2 + 5.
        timer.set(Some(start + Duration::from_secs(5)));
        timer.fired().await;
        assert_eq!(TokioInstant::now() - start, Duration::from_secs(5));
        assert!(!timer.armed(), "fired disarms");
        timer.set(Some(start + Duration::from_secs(9)));
        timer.set(None);
        assert!(!timer.armed());
        // Re-armed, a later deadline is the one it keeps.
        timer.set(Some(start + Duration::from_secs(7)));
        timer.set(Some(start + Duration::from_secs(8)));
        timer.fired().await;
        assert_eq!(TokioInstant::now() - start, Duration::from_secs(8));
    }
}
