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

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::clock::MonotonicClock;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{AppendRequest, AppendResult, Position};
use crate::fs::StdFs;
use crate::index_store::RocksIndexStore;
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

/// An open store with its group-commit pipeline.
#[derive(Debug)]
pub struct Engine {
    reader: Reader,
    tx: mpsc::Sender<Command>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    queue_depth_max: usize,
    retention: crate::retention::Retention,
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
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let index = RocksIndexStore::open(&dir.join("index"))?;
        let store = Store::open(
            Arc::new(StdFs),
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
        let writer = spawn("strata-writer", move || {
            run_writer(store, &writer_finisher, rx, to_syncer, &config)
        })?;
        Ok(Engine {
            reader,
            tx,
            threads: Mutex::new(vec![writer, syncer, indexer]),
            stats,
            recovery,
            queue_depth_max,
            retention,
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
        let (reply, answer) = oneshot::channel();
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        Ok((
            Command::Append {
                request,
                reply: Reply::One(reply),
            },
            answer,
        ))
    }

    /// Undoes the queue count of a command that was not queued.
    fn not_queued(&self) {
        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// Appends atomically; resolves once durable. Waits while the queue is full.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.submit(request).await?.await
    }

    /// Queues an append (waiting while the queue is full) and returns its answer to come,
    /// resolving once durable. Appends submitted one after another are decided in that order.
    pub async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<impl std::future::Future<Output = Result<AppendResult>> + Send + 'static> {
        let (command, answer) = self.command(request)?;
        if self.tx.send(command).await.is_err() {
            self.not_queued();
            return Err(Error::Closed);
        }
        Ok(async move { answer.await.map_err(|_| Error::Closed)? })
    }

    /// Queues several independent appends one after another (each decided on its own, in
    /// this order; an invalid one is answered at once) and returns all their answers to come,
    /// together: one wake-up for the batch instead of one per append.
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
            self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
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
        self.tx
            .send(Command::Truncate { position, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
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
        self.tx
            .send(Command::DropReclaimed { reply })
            .await
            .map_err(|_| Error::Closed)?;
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
        // because `close` may run inside an async runtime (e.g. on drop).
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
    mut store: Store,
    finisher: &Finisher,
    mut rx: mpsc::Receiver<Command>,
    to_syncer: std_mpsc::SyncSender<ToSyncer>,
    config: &EngineConfig,
) {
    let stats = store.stats().clone();
    let mut next = None;
    loop {
        let command = match next.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match command {
            Command::Shutdown => break,
            Command::Truncate { position, reply } => {
                drain(&to_syncer);
                let _ = reply.send(store.truncate_from(position));
            }
            Command::DropReclaimed { reply } => {
                let _ = reply.send(store.drop_reclaimed(Position::MAX));
            }
            Command::Append { request, reply } => {
                let mut group_bytes = request.bytes();
                let mut requests = vec![(reply, request)];
                while requests.len() < config.group_requests_max
                    && group_bytes < config.group_bytes_max
                {
                    match rx.try_recv() {
                        Ok(Command::Append { request, reply }) => {
                            group_bytes += request.bytes();
                            requests.push((reply, request));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                stats
                    .queue_depth
                    .fetch_sub(requests.len() as u64, Ordering::Relaxed);
                let (now, written) = store.write_validated(requests);
                for (reply, answer) in now {
                    // The caller may have stopped waiting; nothing to do then.
                    reply.send(answer);
                }
                // Alone in an idle pipeline (nothing else in flight or queued): sync and
                // finish here, sparing a lone appender two thread hops. Order is kept: no other
                // group is between the writer and the answers.
                if written.len() == 1 && store.inflight_groups() == 1 && rx.is_empty() {
                    let synced = finisher.sync(&written);
                    for (reply, answer) in finisher.finish(written, &synced) {
                        reply.send(answer);
                    }
                    continue;
                }
                for group in written {
                    if let Err(std_mpsc::SendError(ToSyncer::Written(group))) =
                        to_syncer.send(ToSyncer::Written(group))
                    {
                        // The syncer is gone (it only stops when this thread does).
                        for (reply, _) in group.into_answers() {
                            reply.send(Err(Error::Closed));
                        }
                    }
                }
            }
        }
    }
    // Let every written group finish before the store (and its index) is closed.
    drain(&to_syncer);
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
