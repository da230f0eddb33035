//! The group-commit pipeline around a [`Store`]. Callers on any thread or task queue append
//! requests on a bounded channel; three threads carry them through the store's stages:
//!
//! ```text
//! callers ──queue (queue_depth_max)──▶ writer ──(PIPELINE_GROUPS_MAX)──▶ syncer ──▶ indexer ──▶ answers
//!            decide, encode, write()          one fdatasync for all        index, publish end
//! ```
//!
//! The writer drains whatever is queued (up to `group_requests_max` requests and
//! `group_bytes_max` bytes) into one group and writes it without waiting for the disk; the
//! syncer covers every group written so far with one fdatasync; the indexer applies their index
//! batches and only then answers. So encoding, the disk and the index work overlap, and every
//! caller is answered only after its bytes are synced. A full queue makes `append` wait
//! (backpressure) and `append_or_busy` fail with `Busy`.
//!
//! A lone append skips the threads: when nothing is queued, being written or in flight,
//! [`Engine::submit`] writes, syncs and indexes it on the caller's own thread (holding the
//! store, as the writer would). Each hand-off between threads costs a wake-up of a sleeping
//! thread — tens of µs on a virtual machine — and an idle pipeline has nothing to overlap, so
//! one appender waiting for each answer is answered sooner. At most one caller at a time
//! does this, for one group's write and fdatasync; anything submitted meanwhile queues behind
//! it, so order is kept. Only while appenders come one at a time: after a group of more than
//! one request, or an append that found another under way, appends queue until
//! `LONE_AFTER_SINGLES` groups of one in a row say the load is gone.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::clock::MonotonicClock;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{AppendRequest, AppendResult, Position};
use crate::fs::{FileSystem, StdFs};
use crate::index_store::{IndexCache, RocksIndexStore, INDEX_CACHE_BYTES_DEFAULT};
use crate::log::RecoveryReport;
use crate::reader::Reader;
use crate::stats::Stats;
use crate::store::{Finisher, Store, WrittenGroup};
use crate::validate::Validated;

/// Most groups written but not yet answered. Bounds the memory of index batches in flight;
/// past it the writer waits for the disk.
pub const PIPELINE_GROUPS_MAX: usize = 64;

/// Where an append's answer goes: its own caller, or one slot of a batch submitted together
/// (answered with one wake-up when its last append is, not one per append).
enum Reply {
    One(oneshot::Sender<Result<AppendResult>>),
    Part(Arc<Gather>, usize),
}

impl Reply {
    /// Hands the answer on (a caller that stopped waiting is no error).
    fn send(self, answer: Result<AppendResult>) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Part(gather, slot) => gather.put(slot, answer),
        }
    }
}

/// The answers of a batch of appends submitted together, sent once all are in.
struct Gather {
    slots: Mutex<Vec<Option<Result<AppendResult>>>>,
    left: std::sync::atomic::AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Vec<Result<AppendResult>>>>>,
}

impl Gather {
    fn new(n: usize, done: oneshot::Sender<Vec<Result<AppendResult>>>) -> Gather {
        Gather {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            left: std::sync::atomic::AtomicUsize::new(n),
            done: Mutex::new(Some(done)),
        }
    }

    fn put(&self, slot: usize, answer: Result<AppendResult>) {
        if let Some(s) = crate::sync::lock(&self.slots).get_mut(slot) {
            *s = Some(answer);
        }
        // The last answer in sends them all (AcqRel: every earlier put is visible to it).
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let answers = std::mem::take(&mut *crate::sync::lock(&self.slots))
                .into_iter()
                .map(|a| a.unwrap_or(Err(Error::Closed)))
                .collect();
            if let Some(done) = crate::sync::lock(&self.done).take() {
                let _ = done.send(answers);
            }
        }
    }
}

enum Command {
    Append {
        request: Validated,
        reply: Reply,
    },
    Truncate {
        position: Position,
        reply: oneshot::Sender<Result<()>>,
    },
    DropReclaimed {
        reply: oneshot::Sender<Result<usize>>,
    },
    Shutdown,
}

/// What the writer hands the syncer.
enum ToSyncer {
    Written(WrittenGroup<Reply>),
    /// Everything sent before it has been answered once this is acknowledged.
    Barrier(std_mpsc::SyncSender<()>),
}

/// What the syncer hands the indexer.
enum ToIndexer {
    Synced(Vec<WrittenGroup<Reply>>, Result<()>),
    Barrier(std_mpsc::SyncSender<()>),
}

/// The store, shared by the writer thread and a lone appender ([`Engine::submit`]).
struct Shared {
    /// `None` once the writer has stopped (and dropped it, flushing the index).
    store: Mutex<Option<Store>>,
    /// Commands sent to the writer that it has not finished handling (it counts a group
    /// finished before sending the answers it decided), plus one while a lone append runs (and one for ever once shutdown is sent). A lone append starts only by
    /// moving this from 0 to 1, so it never overtakes a command sent before it, and nothing
    /// sent after it is handled before it is answered (the writer waits for the store).
    unhandled: AtomicUsize,
    /// Groups in a row that held one request (formed by the writer, or run alone), capped at
    /// [`LONE_AFTER_SINGLES`]; reset by a group of more than one and by an append that found
    /// another one under way. A lone append runs only after that many singles: while
    /// appenders arrive together it would block its caller's thread (a gRPC runtime thread)
    /// for an fdatasync while the others queue behind it anyway, and forgo group commit.
    /// Measured: 4 clients lost 12–25 % of their throughput when one group of one was enough,
    /// 2 clients ~9 % without the reset on contention (docs/ARCHITECTURE.md).
    single_groups: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("unhandled", &self.unhandled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Groups of one request in a row after which an append may run alone
/// ([`Shared::single_groups`]).
const LONE_AFTER_SINGLES: usize = 4;

impl Shared {
    /// Counts a group of `n` requests towards (or against) the lone path.
    fn count_group(&self, n: usize) {
        let singles = match n {
            1 => (self.single_groups.load(Ordering::Relaxed) + 1).min(LONE_AFTER_SINGLES),
            _ => 0,
        };
        self.single_groups.store(singles, Ordering::Relaxed);
    }
}

/// An append's answer to come: decided already (a lone append), or from the pipeline.
enum Answer {
    Now(Result<AppendResult>),
    Later(oneshot::Receiver<Result<AppendResult>>),
}

impl Answer {
    async fn get(self) -> Result<AppendResult> {
        match self {
            Answer::Now(answer) => answer,
            Answer::Later(rx) => rx.await.map_err(|_| Error::Closed)?,
        }
    }
}

/// An open store with its group-commit pipeline.
#[derive(Debug)]
pub struct Engine {
    reader: Reader,
    shared: Arc<Shared>,
    finisher: Finisher,
    tx: mpsc::Sender<Command>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    queue_depth_max: usize,
    retention: crate::retention::Retention,
    /// [`EngineConfig::lone_appends`].
    lone_appends: bool,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            crate::index_store::quiet_thread();
            f()
        })
        .map_err(|e| Error::io(format!("starting thread {name}"), e))
}

impl Engine {
    /// Opens (or creates) a store in `dir`: the log in `dir/log`, the RocksDB index in
    /// `dir/index`, on the real file system.
    pub fn open_dir(dir: &Path, config: EngineConfig) -> Result<Engine> {
        let cache = IndexCache::new(INDEX_CACHE_BYTES_DEFAULT)?;
        Engine::open_dir_with(dir, config, Arc::new(StdFs), &cache)
    }

    /// [`Engine::open_dir`] over a file system of the caller's (a node's shards share one
    /// whose syncs go in rounds, [`crate::sync_round::RoundFs`]) and a shared index cache.
    pub fn open_dir_with(
        dir: &Path,
        config: EngineConfig,
        fs: Arc<dyn FileSystem>,
        cache: &IndexCache,
    ) -> Result<Engine> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let index = RocksIndexStore::open_shared(&dir.join("index"), cache)?;
        let store = Store::open(
            fs,
            dir,
            Box::new(index),
            config,
            Arc::new(MonotonicClock::default()),
        )?;
        Engine::start(store)
    }

    /// Starts the pipeline threads over an open store.
    pub fn start(store: Store) -> Result<Engine> {
        let config = store.config().clone();
        let (tx, rx) = mpsc::channel(config.limits.queue_depth_max);
        let reader = store.reader().clone();
        let stats = store.stats().clone();
        let recovery = store.recovery().clone();
        let finisher = store.finisher();
        let writer_finisher = store.finisher();
        let finisher_for_callers = store.finisher();
        let retention = store.retention();
        let (to_syncer, syncer_rx) = std_mpsc::sync_channel(PIPELINE_GROUPS_MAX);
        let (to_indexer, indexer_rx) = std_mpsc::sync_channel(PIPELINE_GROUPS_MAX);
        let indexer = {
            let finisher = finisher.clone();
            spawn("strata-indexer", move || run_indexer(&finisher, indexer_rx))?
        };
        let syncer = spawn("strata-syncer", move || {
            run_syncer(&finisher, syncer_rx, to_indexer)
        })?;
        let queue_depth_max = config.limits.queue_depth_max;
        let lone_appends = config.lone_appends;
        let shared = Arc::new(Shared {
            store: Mutex::new(Some(store)),
            unhandled: AtomicUsize::new(0),
            single_groups: AtomicUsize::new(0),
        });
        let writer = {
            let shared = shared.clone();
            let stats = stats.clone();
            spawn("strata-writer", move || {
                run_writer(&shared, &stats, &writer_finisher, rx, to_syncer, &config)
            })?
        };
        Ok(Engine {
            reader,
            shared,
            finisher: finisher_for_callers,
            tx,
            threads: Mutex::new(vec![writer, syncer, indexer]),
            stats,
            recovery,
            queue_depth_max,
            retention,
            lone_appends,
        })
    }

    /// Validates a request (in the caller's thread, so bad input never occupies the queue)
    /// and builds its command, counted as queued.
    fn command(
        &self,
        request: AppendRequest,
    ) -> Result<(Command, oneshot::Receiver<Result<AppendResult>>)> {
        let request = Validated::new(request, self.reader.limits()).inspect_err(|_| {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(self.queued(request))
    }

    /// The command of a validated append, counted as queued.
    fn queued(&self, request: Validated) -> (Command, oneshot::Receiver<Result<AppendResult>>) {
        let (reply, answer) = oneshot::channel();
        self.counted(1);
        (
            Command::Append {
                request,
                reply: Reply::One(reply),
            },
            answer,
        )
    }

    /// Counts `n` appends about to be sent to the writer.
    fn counted(&self, n: usize) {
        self.stats
            .queue_depth
            .fetch_add(n as u64, Ordering::Relaxed);
        self.shared.unhandled.fetch_add(n, Ordering::AcqRel);
    }

    /// Undoes the queue count of a command that was not queued.
    fn not_queued(&self) {
        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        self.shared.unhandled.fetch_sub(1, Ordering::AcqRel);
    }

    /// Writes, syncs and indexes `request` on this thread if the pipeline is idle (nothing
    /// queued, being written or in flight) and appenders come one at a time (the writer's last
    /// group held one request); gives it back otherwise.
    fn append_alone(
        &self,
        request: Validated,
    ) -> std::result::Result<Result<AppendResult>, Validated> {
        let unhandled = &self.shared.unhandled;
        if !self.lone_appends
            || self.shared.single_groups.load(Ordering::Relaxed) < LONE_AFTER_SINGLES
        {
            return Err(request);
        }
        if unhandled
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another append is queued or under way: appenders are arriving together.
            self.shared.single_groups.store(0, Ordering::Relaxed);
            return Err(request);
        }
        let answer = {
            let mut store = crate::sync::lock(&self.shared.store);
            match store.as_mut() {
                None => Ok(Err(Error::Closed)),
                // Groups the writer handed on are still being synced or indexed.
                Some(store) if store.inflight_groups() > 0 => Err(request),
                Some(store) => {
                    self.stats.appends_alone.fetch_add(1, Ordering::Relaxed);
                    self.shared.count_group(1);
                    Ok(write_alone(store, &self.finisher, request))
                }
            }
        };
        unhandled.fetch_sub(1, Ordering::AcqRel);
        answer
    }

    /// Appends atomically; resolves once durable. Waits while the queue is full.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.submit(request).await?.await
    }

    /// Queues an append (waiting while the queue is full) and returns its answer to come,
    /// resolving once durable. Appends submitted one after another are decided in that order.
    /// An append alone in an idle pipeline is decided on the caller's thread before this
    /// returns (see the module's notes).
    pub async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<impl std::future::Future<Output = Result<AppendResult>> + Send + 'static> {
        let request = Validated::new(request, self.reader.limits()).inspect_err(|_| {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        })?;
        let answer = match self.append_alone(request) {
            Ok(answer) => Answer::Now(answer),
            Err(request) => {
                let (command, answer) = self.queued(request);
                if self.tx.send(command).await.is_err() {
                    self.not_queued();
                    return Err(Error::Closed);
                }
                Answer::Later(answer)
            }
        };
        Ok(answer.get())
    }

    /// Queues several independent appends one after another (each decided on its own, in
    /// this order; an invalid one is answered at once) and returns all their answers to come,
    /// together: one wake-up for the batch instead of one per append. A single append alone
    /// in an idle pipeline is decided on the caller's thread, as [`Engine::submit`] does.
    pub async fn submit_many(
        &self,
        requests: Vec<AppendRequest>,
    ) -> impl std::future::Future<Output = Vec<Result<AppendResult>>> + Send + 'static {
        let n = requests.len();
        let (done, answers) = oneshot::channel();
        let gather = Arc::new(Gather::new(n, done));
        for (slot, request) in requests.into_iter().enumerate() {
            let request = match Validated::new(request, self.reader.limits()) {
                Ok(r) => r,
                Err(e) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    gather.put(slot, Err(e));
                    continue;
                }
            };
            // One append alone in an idle pipeline is decided here, as `submit` decides it.
            let request = if n == 1 {
                match self.append_alone(request) {
                    Ok(answer) => {
                        gather.put(slot, answer);
                        continue;
                    }
                    Err(request) => request,
                }
            } else {
                request
            };
            self.counted(1);
            let command = Command::Append {
                request,
                reply: Reply::Part(gather.clone(), slot),
            };
            if let Err(mpsc::error::SendError(command)) = self.tx.send(command).await {
                self.not_queued();
                if let Command::Append { reply, .. } = command {
                    reply.send(Err(Error::Closed));
                }
            }
        }
        async move {
            answers
                .await
                .unwrap_or_else(|_| (0..n).map(|_| Err(Error::Closed)).collect())
        }
    }

    /// Like [`Engine::append`], but fails with `Busy` instead of waiting when the queue is full.
    pub async fn append_or_busy(&self, request: AppendRequest) -> Result<AppendResult> {
        let (command, answer) = self.command(request)?;
        if let Err(e) = self.tx.try_send(command) {
            self.not_queued();
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => Error::Busy {
                    queue_depth_max: self.queue_depth_max,
                },
                mpsc::error::TrySendError::Closed(_) => Error::Closed,
            });
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Appends from a plain thread (not from inside an async runtime); blocks until durable.
    pub fn append_blocking(&self, request: AppendRequest) -> Result<AppendResult> {
        let (command, answer) = self.command(request)?;
        if self.tx.blocking_send(command).is_err() {
            self.not_queued();
            return Err(Error::Closed);
        }
        answer.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Removes every record at or after `position`, after the appends queued before it.
    pub async fn truncate_from(&self, position: Position) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send_other(Command::Truncate { position, reply })
            .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Sends a command other than an append, counted as unhandled until the writer is done.
    async fn send_other(&self, command: Command) -> Result<()> {
        self.shared.unhandled.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(command).await.is_err() {
            self.shared.unhandled.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Retention over this store: run [`crate::retention::Retention::pass`] beside the
    /// writer, then [`Engine::drop_reclaimed`].
    pub fn retention(&self) -> &crate::retention::Retention {
        &self.retention
    }

    /// Drops the prefix of sealed segments retention left holding nothing but holes (on the
    /// writer's thread, between groups). Returns how many went.
    pub async fn drop_reclaimed(&self) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.send_other(Command::DropReclaimed { reply }).await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The read side.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// What recovery found at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Finishes every queued request, then stops the pipeline and flushes the index. Later
    /// appends fail with `Closed`.
    pub fn close(&self) {
        let threads = std::mem::take(&mut *crate::sync::lock(&self.threads));
        if threads.is_empty() {
            return;
        }
        // Queued behind every pending request, so they finish first. Sent from a plain thread
        // because `close` may run inside an async runtime (e.g. on drop). Counted as unhandled
        // for ever: no lone append starts after it.
        self.shared.unhandled.fetch_add(1, Ordering::AcqRel);
        let tx = self.tx.clone();
        let sender = std::thread::spawn(move || {
            // If the writer is already gone there is nothing to stop.
            let _ = tx.blocking_send(Command::Shutdown);
        });
        if sender.join().is_err() {
            tracing::error!("shutdown sender panicked");
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits until everything sent down the pipeline so far has been answered.
fn drain(to_syncer: &std_mpsc::SyncSender<ToSyncer>) {
    let (done, wait) = std_mpsc::sync_channel(1);
    if to_syncer.send(ToSyncer::Barrier(done)).is_ok() {
        // An error means the pipeline is gone, so nothing is in flight either.
        let _ = wait.recv();
    }
}

fn run_writer(
    shared: &Shared,
    stats: &Stats,
    finisher: &Finisher,
    mut rx: mpsc::Receiver<Command>,
    to_syncer: std_mpsc::SyncSender<ToSyncer>,
    config: &EngineConfig,
) {
    let mut next = None;
    loop {
        let command = match next.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        let (handled, answers) = match command {
            Command::Shutdown => break,
            Command::Truncate { position, reply } => {
                drain(&to_syncer);
                let _ = reply.send(with_store(shared, |s| s.truncate_from(position)));
                (1, Vec::new())
            }
            Command::DropReclaimed { reply } => {
                let _ = reply.send(with_store(shared, |s| s.drop_reclaimed(Position::MAX)));
                (1, Vec::new())
            }
            Command::Append { request, reply } => {
                let requests = gather(vec![(reply, request)], &mut rx, &mut next, config);
                let n = requests.len();
                shared.count_group(n);
                stats.queue_depth.fetch_sub(n as u64, Ordering::Relaxed);
                let mut store = crate::sync::lock(&shared.store);
                match store.as_mut() {
                    Some(store) => {
                        // Idle (nothing queued): the writer finishes the group itself. With
                        // syncs shared among a node's shards it may wait for their round here;
                        // appends queue meanwhile and go as one larger group next (measured:
                        // ~10-20 % less CPU per event on 8 shards than handing it on).
                        let alone = rx.is_empty();
                        (n, write(store, finisher, requests, &to_syncer, alone))
                    }
                    None => (
                        n,
                        requests
                            .into_iter()
                            .map(|(reply, _)| (reply, Err(Error::Closed)))
                            .collect(),
                    ),
                }
            }
        };
        // Handled before the answers go: an appender answered here may submit its next append
        // at once, and should find the pipeline idle (free to run alone) if nothing else is.
        shared.unhandled.fetch_sub(handled, Ordering::AcqRel);
        for (reply, answer) in answers {
            // The caller may have stopped waiting; nothing to do then.
            reply.send(answer);
        }
    }
    // Let every written group finish before the store (and its index) is closed.
    drain(&to_syncer);
    drop(crate::sync::lock(&shared.store).take());
}

/// Runs `f` on the store, or answers `Closed` once it is gone.
fn with_store<R>(shared: &Shared, f: impl FnOnce(&mut Store) -> Result<R>) -> Result<R> {
    crate::sync::lock(&shared.store)
        .as_mut()
        .map_or(Err(Error::Closed), f)
}

/// Adds whatever appends are queued behind the first to its group, within the group's bounds;
/// a command of another kind is kept in `next`.
fn gather(
    mut requests: Vec<(Reply, Validated)>,
    rx: &mut mpsc::Receiver<Command>,
    next: &mut Option<Command>,
    config: &EngineConfig,
) -> Vec<(Reply, Validated)> {
    let mut group_bytes: usize = requests.iter().map(|(_, r)| r.bytes()).sum();
    while requests.len() < config.group_requests_max && group_bytes < config.group_bytes_max {
        match rx.try_recv() {
            Ok(Command::Append { request, reply }) => {
                group_bytes += request.bytes();
                requests.push((reply, request));
            }
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    requests
}

/// Writes one group of requests and hands what was written to the syncer, or (alone in an
/// idle pipeline) syncs and finishes it here. Returns the answers decided here, for the
/// caller to send once it has counted the group handled.
fn write(
    store: &mut Store,
    finisher: &Finisher,
    requests: Vec<(Reply, Validated)>,
    to_syncer: &std_mpsc::SyncSender<ToSyncer>,
    idle: bool,
) -> Vec<(Reply, Result<AppendResult>)> {
    let (mut answers, written) = store.write_validated(requests);
    // Alone in an idle pipeline (nothing else in flight or queued): sync and finish here,
    // sparing the appenders two thread hops. Order is kept: no other group is between the
    // writer and the answers.
    if written.len() == 1 && store.inflight_groups() == 1 && idle {
        let synced = finisher.sync(&written);
        answers.extend(finisher.finish(written, &synced));
        return answers;
    }
    for group in written {
        if let Err(std_mpsc::SendError(ToSyncer::Written(group))) =
            to_syncer.send(ToSyncer::Written(group))
        {
            // The syncer is gone (it only stops when the writer does).
            for (reply, _) in group.into_answers() {
                reply.send(Err(Error::Closed));
            }
        }
    }
    answers
}

/// A lone append, on the caller's thread: write, sync, index, answer.
fn write_alone(store: &mut Store, finisher: &Finisher, request: Validated) -> Result<AppendResult> {
    let (now, written) = store.write_validated(vec![((), request)]);
    if let Some((_, answer)) = now.into_iter().next() {
        return answer;
    }
    let synced = finisher.sync(&written);
    finisher
        .finish(written, &synced)
        .into_iter()
        .next()
        .map_or(Err(Error::Closed), |(_, answer)| answer)
}

fn run_syncer(
    finisher: &Finisher,
    rx: std_mpsc::Receiver<ToSyncer>,
    to_indexer: std_mpsc::SyncSender<ToIndexer>,
) {
    while let Ok(first) = rx.recv() {
        let mut groups = Vec::new();
        let mut barrier = None;
        let mut stage = Some(first);
        while let Some(s) = stage.take() {
            match s {
                ToSyncer::Written(g) => groups.push(g),
                ToSyncer::Barrier(b) => {
                    barrier = Some(b);
                    break;
                }
            }
            if groups.len() < PIPELINE_GROUPS_MAX {
                stage = rx.try_recv().ok();
            }
        }
        if !groups.is_empty() {
            let synced = finisher.sync(&groups);
            if to_indexer.send(ToIndexer::Synced(groups, synced)).is_err() {
                return;
            }
        }
        if let Some(b) = barrier {
            if to_indexer.send(ToIndexer::Barrier(b)).is_err() {
                return;
            }
        }
    }
}

fn run_indexer(finisher: &Finisher, rx: std_mpsc::Receiver<ToIndexer>) {
    while let Ok(stage) = rx.recv() {
        match stage {
            ToIndexer::Synced(groups, synced) => {
                for (reply, answer) in finisher.finish(groups, &synced) {
                    reply.send(answer);
                }
            }
            ToIndexer::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}
