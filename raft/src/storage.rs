//! openraft's storage over the engine: [`LogStore`] (`RaftLogStorage`) and [`StateMachine`]
//! (`RaftStateMachine`) share one [`Shard`]. The Raft log *is* the event log: an entry is one
//! record, its index the record's `seq` (see `strata_engine::store::replica`).
//!
//! - `append` writes the entries (a client append is decided as it is written) and hands the
//!   fdatasync to the syncer thread, which calls openraft's flush callback only after it.
//! - `apply` indexes committed records (the engine's finish stage), in the same RocksDB batch
//!   as the state machine's own state (last applied log id, membership); only then do readers
//!   and subscriptions see them.
//! - `truncate` removes uncommitted records; `purge` only moves the purge mark: the log is the
//!   data and is never deleted by Raft.
//! - vote and purge mark live in [`crate::hard_state`] files, synced on every save; the
//!   committed log id in another, written on every commit but not synced.
//! - a snapshot is a manifest of log byte ranges (see [`crate::snapshot`]).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Vote,
};
use serde::{Deserialize, Serialize};
use strata_engine::clock::Clock;
use strata_engine::format::{self, KIND_BLANK, KIND_EVENTS, KIND_MEMBERSHIP};
use strata_engine::fs::FileSystem;
use strata_engine::index;
use strata_engine::index_store::{IndexBatch, IndexStore};
use strata_engine::log::RawRecord;
use strata_engine::store::Finisher;
use strata_engine::validate::Validated;
use strata_engine::{
    EngineConfig, EntryBody, Error, LogEntry, Reader, Result, Store, SyncPoint, WrittenEntry,
};

use crate::hard_state::{HardState, HardStateFile};
use crate::snapshot::{self, Manifest};
use crate::types::{Entry, LogId, NodeId, StorageError, StoredMembership, TypeConfig};
use crate::wire::{Command, Outcome, Reply};

/// Most bytes of entries one `limited_get_log_entries` returns (one AppendEntries message).
pub const ENTRIES_BYTES_MAX: usize = 4 << 20;
/// Most flush requests the syncer thread has queued; past it `append` waits.
pub const SYNC_QUEUE_MAX: usize = 1024;

const APPLIED_KEY: &str = "applied";
const SNAPSHOT_KEY: &str = "snapshot";

/// Opens an index store in a directory (RocksDB in production, in memory in tests).
pub type IndexOpener = Arc<dyn Fn(&Path) -> Result<Box<dyn IndexStore>> + Send + Sync>;

/// What the state machine keeps besides the index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
}

/// Where the log's fdatasyncs run (the flush callback follows each one).
#[derive(Clone, Default)]
pub enum LogSync {
    /// On a dedicated thread per shard: production.
    #[default]
    Thread,
    /// On a tokio task of the caller's runtime, each batch of syncs first waiting the latency
    /// this returns: the simulator's disk, where nothing may run outside its one thread.
    Task(Arc<dyn Fn() -> Duration + Send + Sync>),
}

/// Everything a shard's storage needs to (re)open its store.
#[derive(Clone)]
pub struct ShardOptions {
    /// This node.
    pub node_id: NodeId,
    /// The shard's data directory.
    pub dir: PathBuf,
    /// Engine settings (equal on every replica: segment boundaries must match).
    pub engine: EngineConfig,
    /// File system seam.
    pub fs: Arc<dyn FileSystem>,
    /// Clock seam.
    pub clock: Arc<dyn Clock>,
    /// Index store seam.
    pub open_index: IndexOpener,
    /// Where log syncs run.
    pub log_sync: LogSync,
    /// The incarnation a new replica records (see [`crate::StrataNode`]): 0 for a founder of
    /// the group, the epoch of the map that began the move for a replica move's target. A
    /// replica that exists keeps its own.
    pub incarnation: u64,
}

impl ShardOptions {
    /// A replica of node `node_id` in `dir` on the local disk (its own RocksDB index, the
    /// monotonic clock, syncs on a thread), with `engine`'s settings: for tools and tests that
    /// open one replica's storage by itself (a node shares an index cache between its shards).
    pub fn on_disk(node_id: NodeId, dir: &Path, engine: EngineConfig) -> ShardOptions {
        ShardOptions {
            node_id,
            dir: dir.to_path_buf(),
            engine,
            fs: Arc::new(strata_engine::fs::StdFs),
            clock: Arc::new(strata_engine::clock::MonotonicClock::default()),
            open_index: Arc::new(|p| {
                Ok(Box::new(strata_engine::index_store::RocksIndexStore::open(
                    p,
                )?))
            }),
            log_sync: LogSync::default(),
            incarnation: 0,
        }
    }
}

impl Debug for ShardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardOptions")
            .field("node_id", &self.node_id)
            .field("dir", &self.dir)
            .finish()
    }
}

struct State {
    store: Store,
    /// The state machine's own state, as last written to the index with the records it covers
    /// (kept here so applying never reads it back).
    applied: Applied,
    /// Written, not yet applied, oldest first (one record each).
    pending: VecDeque<WrittenEntry>,
    /// Which data generation (`gen-N`) is live; a snapshot install starts a new one.
    generation: u64,
}

struct Inner {
    options: ShardOptions,
    /// Which incarnation of this node's replica of the group this is (recorded in `hard`).
    incarnation: u64,
    state: Mutex<State>,
    hard: Mutex<HardStateFile>,
    committed: Mutex<HardStateFile>,
    /// The committed log id openraft saved since this shard was opened.
    committed_now: Mutex<Option<LogId>>,
    /// Held while a snapshot offer is fetched: offers (a retried or duplicated one, or a newer
    /// one) are staged one at a time.
    installing: tokio::sync::Mutex<()>,
    /// Numbers staging directories: each offer stages into its own.
    staging_attempts: std::sync::atomic::AtomicU64,
    /// Set when this replica found its own data corrupt outside the write path; the Raft
    /// node stops on it (see [`crate::replica::Replica::start`]).
    corrupt: tokio::sync::watch::Sender<Option<String>>,
    /// Fully staged snapshots by id, awaiting openraft's install (which may run after the
    /// offer that staged it was cancelled, while a retry stages again elsewhere).
    staged: Mutex<std::collections::BTreeMap<String, PathBuf>>,
    /// The live data generation; changes when a snapshot install replaces the store.
    generation: tokio::sync::watch::Sender<u64>,
    syncer: tokio::sync::mpsc::Sender<SyncJob>,
}

struct SyncJob {
    points: Vec<SyncPoint>,
    finisher: Finisher,
    callback: LogFlushed<TypeConfig>,
}

use strata_engine::sync::lock;

/// One replica of a shard's storage; cheap to clone.
#[derive(Clone)]
pub struct Shard {
    inner: Arc<Inner>,
}

/// A handle that does not keep a [`Shard`] open: says when every handle to it is gone (its
/// files closed, its index's lock released).
#[derive(Debug, Clone)]
pub struct ShardGone(std::sync::Weak<Inner>);

impl ShardGone {
    /// Whether the shard is closed.
    pub fn is_gone(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// How many handles still hold the shard open (for a message saying why it stays).
    pub fn holders(&self) -> usize {
        self.0.strong_count()
    }
}

impl Shard {
    /// A handle saying when this shard is closed.
    pub fn gone(&self) -> ShardGone {
        ShardGone(Arc::downgrade(&self.inner))
    }
}

impl Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("options", &self.inner.options)
            .finish()
    }
}

fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: Error) -> StorageError {
    StorageError::from_io_error(subject, verb, io::Error::other(e.to_string()))
}

fn log_error(e: Error) -> StorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn sm_error(e: Error) -> StorageError {
    storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn current_path(dir: &Path) -> PathBuf {
    dir.join("CURRENT")
}

/// The directory of data generation `generation`.
pub fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

/// Records `incarnation` in a replica that has none yet. A replica that never voted has
/// accepted nothing (a vote is saved before any entry), so it is new and takes `incarnation`;
/// one that voted before incarnations existed is a founder's (0).
fn record_incarnation(hard: &mut HardStateFile, incarnation: u64) -> Result<u64> {
    let state = hard.get();
    if let Some(recorded) = state.incarnation {
        tracing::debug!(incarnation = recorded, "this replica's incarnation");
        return Ok(recorded);
    }
    let mut state = state.clone();
    let recorded = if state.vote.is_none() { incarnation } else { 0 };
    tracing::info!(
        incarnation = recorded,
        new = state.vote.is_none(),
        "this replica records its incarnation"
    );
    state.incarnation = Some(recorded);
    hard.save(state)?;
    Ok(recorded)
}

fn read_generation(options: &ShardOptions) -> Result<u64> {
    let path = current_path(&options.dir);
    if !options
        .fs
        .exists(&path)
        .map_err(|e| Error::io("checking CURRENT", e))?
    {
        return Ok(0);
    }
    let file = options
        .fs
        .open(&path, strata_engine::fs::OpenMode::Read)
        .map_err(|e| Error::io("opening CURRENT", e))?;
    let len = file.len().map_err(|e| Error::io("sizing CURRENT", e))?;
    let mut buf = vec![0u8; len.min(64) as usize];
    strata_engine::fs::read_exact_at(file.as_ref(), &mut buf, 0)
        .map_err(|e| Error::io("reading CURRENT", e))?;
    String::from_utf8_lossy(&buf)
        .trim()
        .parse()
        .map_err(|_| Error::corruption(path, 0, "CURRENT does not hold a generation number"))
}

/// Durably makes `generation` the live one (write a temporary file, sync, rename, sync dir).
pub(crate) fn write_generation(options: &ShardOptions, generation: u64) -> Result<()> {
    let fs = &options.fs;
    let tmp = options.dir.join("CURRENT.tmp");
    let io = |what: &'static str| move |e| Error::io(what, e);
    let file = fs
        .open(&tmp, strata_engine::fs::OpenMode::CreateTruncate)
        .map_err(io("creating CURRENT.tmp"))?;
    file.write_all_at(format!("{generation}\n").as_bytes(), 0)
        .and_then(|()| file.sync_data())
        .map_err(io("writing CURRENT.tmp"))?;
    fs.rename(&tmp, &current_path(&options.dir))
        .map_err(io("renaming CURRENT.tmp"))?;
    fs.sync_dir(&options.dir)
        .map_err(io("syncing the data directory"))
}

/// Removes data generations a snapshot install replaced and snapshots left half-fetched.
fn remove_stale(options: &ShardOptions, live: u64) -> Result<()> {
    let fs = &options.fs;
    let names = fs
        .list_dirs(&options.dir)
        .map_err(|e| Error::io("listing the data directory", e))?;
    for name in names {
        let stale = match name.strip_prefix("gen-") {
            Some(n) => n.parse::<u64>().is_ok_and(|n| n != live),
            None => name.starts_with("incoming-"),
        };
        if stale {
            tracing::info!(dir = %name, "removing data left by an earlier snapshot install");
            fs.remove_dir_all(&options.dir.join(&name))
                .map_err(|e| Error::io(format!("removing {name}"), e))?;
        }
    }
    Ok(())
}

fn open_generation(options: &ShardOptions, generation: u64) -> Result<(Store, Vec<WrittenEntry>)> {
    let dir = generation_dir(&options.dir, generation);
    options
        .fs
        .create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let index = (options.open_index)(&dir.join("index"))?;
    Store::open_replica(
        options.fs.clone(),
        &dir,
        index,
        options.engine.clone(),
        options.clock.clone(),
    )
}

fn read_applied(store: &Store) -> Result<Applied> {
    match store.finisher().meta(APPLIED_KEY)? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Index(format!("malformed applied state: {e}"))),
        None => Ok(Applied::default()),
    }
}

/// The record holding entry `log_id` (same index and leader), if this log has it.
fn record_of(store: &Store, log_id: LogId) -> Result<Option<RawRecord>> {
    Ok(store
        .read_entries(log_id.index, log_id.index + 1, 1)?
        .into_iter()
        .next()
        .filter(|r| {
            r.header.term == log_id.leader_id.term && r.header.leader == log_id.leader_id.node_id
        }))
}

/// Calls `each` on the records of entries `from..to`, in order, until `max_bytes` of them
/// were read (at least one).
fn scan_entries(
    store: &Store,
    from: u64,
    to: u64,
    max_bytes: usize,
    mut each: impl FnMut(&RawRecord) -> Result<()>,
) -> Result<()> {
    let (mut at, mut bytes) = (from, 0usize);
    while at < to && bytes < max_bytes {
        let raw = store.read_entries(at, to, max_bytes - bytes)?;
        let Some(last) = raw.last() else { break };
        at = last.header.seq + 1;
        for r in &raw {
            bytes += r.frame.len();
            each(r)?;
        }
    }
    Ok(())
}

/// Indexes applied records together with the state machine's new state, in one index batch,
/// after making sure they are synced.
fn finish_applied(
    finisher: &Finisher,
    groups: Vec<strata_engine::store::WrittenGroup<()>>,
    applied: &Applied,
    mut extra: IndexBatch,
) -> Result<()> {
    index::set_meta(
        &mut extra,
        APPLIED_KEY,
        serde_json::to_vec(applied).map_err(|e| Error::Index(e.to_string()))?,
    );
    if groups.is_empty() {
        return finisher.write_meta(extra);
    }
    let points: Vec<SyncPoint> = groups.iter().map(|g| g.sync_point()).collect();
    finisher.ensure_synced(&points)?;
    for (_, answer) in finisher.finish_with(groups, &Ok(()), extra) {
        answer?;
    }
    Ok(())
}

/// Syncs a batch of jobs (one fdatasync covers them all: they share the store's poison flag
/// and synced end) and completes their flush callbacks.
fn sync_batch(batch: Vec<SyncJob>) {
    let points: Vec<SyncPoint> = batch
        .iter()
        .flat_map(|j| j.points.iter().cloned())
        .collect();
    let Some(first) = batch.first() else { return };
    let result = first.finisher.sync_points(&points);
    for job in batch {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        job.callback.log_io_completed(r);
    }
}

fn run_syncer_thread(mut jobs: tokio::sync::mpsc::Receiver<SyncJob>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        sync_batch(batch);
    }
}

async fn run_syncer_task(
    mut jobs: tokio::sync::mpsc::Receiver<SyncJob>,
    latency: Arc<dyn Fn() -> Duration + Send + Sync>,
) {
    while let Some(first) = jobs.recv().await {
        tokio::time::sleep(latency()).await;
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        sync_batch(batch);
    }
}

impl Shard {
    /// Opens (or creates) a replica's storage in `options.dir`.
    pub fn open(options: ShardOptions) -> Result<Shard> {
        options
            .fs
            .create_dir_all(&options.dir)
            .map_err(|e| Error::io(format!("creating {}", options.dir.display()), e))?;
        let generation = read_generation(&options)?;
        remove_stale(&options, generation)?;
        let (store, pending) = open_generation(&options, generation)?;
        let applied = read_applied(&store)?;
        tracing::debug!(
            dir = %options.dir.display(),
            generation,
            next = store.next_position(),
            "opened a replica's log"
        );
        if !pending.is_empty() {
            tracing::info!(
                entries = pending.len(),
                "log entries after the last applied one await Raft's commit"
            );
        }
        let mut hard =
            HardStateFile::open(options.fs.as_ref(), &options.dir.join("raft-state"), true)?;
        let purged = hard.get().purged;
        if purged.is_some_and(|p| applied.last.is_none_or(|a| a.index < p.index)) {
            // The index was dropped (it did not match the log) and with it the applied state:
            // Raft re-applies the log, so entries past what is applied are Raft entries again.
            // Purging only moved this mark; the entries are all in the log.
            tracing::warn!(
                purged = ?purged,
                applied = ?applied.last,
                "the purge mark is past what is applied; moving it back"
            );
            let mut state = hard.get().clone();
            state.purged = applied.last;
            hard.save(state)?;
        }
        let incarnation = record_incarnation(&mut hard, options.incarnation)?;
        let committed = HardStateFile::open(
            options.fs.as_ref(),
            &options.dir.join("raft-committed"),
            false,
        )?;
        let (syncer, jobs) = tokio::sync::mpsc::channel(SYNC_QUEUE_MAX);
        match &options.log_sync {
            LogSync::Thread => {
                std::thread::Builder::new()
                    .name(format!("raft-sync-{}", options.node_id))
                    .spawn(move || run_syncer_thread(jobs))
                    .map_err(|e| Error::io("starting the raft syncer thread", e))?;
            }
            LogSync::Task(latency) => {
                tokio::spawn(run_syncer_task(jobs, latency.clone()));
            }
        }
        Ok(Shard {
            inner: Arc::new(Inner {
                options,
                incarnation,
                state: Mutex::new(State {
                    store,
                    applied,
                    pending: pending.into(),
                    generation,
                }),
                hard: Mutex::new(hard),
                committed: Mutex::new(committed),
                committed_now: Mutex::new(None),
                installing: tokio::sync::Mutex::new(()),
                staging_attempts: std::sync::atomic::AtomicU64::new(0),
                corrupt: tokio::sync::watch::channel(None).0,
                staged: Mutex::new(std::collections::BTreeMap::new()),
                generation: tokio::sync::watch::channel(generation).0,
                syncer,
            }),
        })
    }

    /// The storage halves openraft takes.
    pub fn split(&self) -> (LogStore, StateMachine) {
        (
            LogStore {
                shard: self.clone(),
            },
            StateMachine {
                shard: self.clone(),
            },
        )
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.options.node_id
    }

    /// The options it was opened with.
    /// Which incarnation of this node's replica of the group this is (see
    /// [`crate::StrataNode`]).
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    pub fn options(&self) -> &ShardOptions {
        &self.inner.options
    }

    /// The read side: only applied (committed) records. Take a fresh one per request: a
    /// snapshot install replaces the store.
    pub fn reader(&self) -> Reader {
        lock(&self.inner.state).store.reader().clone()
    }

    /// Changes when a snapshot install replaces the store: readers taken before must be taken
    /// again (positions stay valid: the new store holds the same log bytes at the same
    /// positions, and more).
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Engine counters.
    pub fn stats(&self) -> Arc<strata_engine::stats::Stats> {
        lock(&self.inner.state).store.stats().clone()
    }

    /// How many entries are written but not applied.
    pub fn pending_entries(&self) -> usize {
        lock(&self.inner.state).pending.len()
    }

    /// Reads raw log bytes at `position` (segment headers, records and footers alike), at most
    /// `max_bytes`, never past the end of the last applied record: what a replica installing a
    /// snapshot fetches.
    pub fn read_log_bytes(&self, position: u64, max_bytes: usize) -> Result<Vec<u8>> {
        let reader = self.reader();
        let end = reader.end();
        let segment = reader
            .segment_at(position)
            .ok_or_else(|| Error::invalid("position", format!("{position} is not in this log")))?;
        let file_len = segment
            .file
            .len()
            .map_err(|e| Error::io("sizing a segment", e))?;
        let in_file = position - segment.base;
        if in_file == 0 {
            // Serving a segment from its start: check it first (a sealed one whole, the tail's
            // header). Damage found here stops this node (it would otherwise go on offering a
            // snapshot every replica refuses, and lead with corrupt data).
            let checked = match segment.footer {
                Some(_) => snapshot::check_sealed(segment.file.as_ref(), &segment.path, file_len),
                None => snapshot::check_header(segment.file.as_ref(), &segment.path),
            };
            if let Err(e) = checked {
                let why = format!("corruption found serving a snapshot: {e}");
                lock(&self.inner.state).store.finisher().stop(why.clone());
                self.inner.corrupt.send_replace(Some(why.clone()));
                return Err(Error::corruption(&segment.path, 0, why));
            }
        }
        let mut len = (file_len.saturating_sub(in_file)).min(max_bytes as u64);
        if segment.footer.is_none() {
            // The tail: only up to the applied end.
            len = len.min(end.saturating_sub(position));
        }
        let mut buf = vec![0u8; len as usize];
        strata_engine::fs::read_exact_at(segment.file.as_ref(), &mut buf, in_file)
            .map_err(|e| Error::io("reading a segment", e))?;
        Ok(buf)
    }

    /// Serves one `FetchLog` request: [`Shard::read_log_bytes`], at most
    /// [`crate::snapshot::FETCH_CHUNK_BYTES`] whatever was asked.
    pub fn fetch_chunk(&self, position: u64, max_bytes: u32) -> Result<Vec<u8>> {
        self.read_log_bytes(
            position,
            (max_bytes as usize).min(snapshot::FETCH_CHUNK_BYTES),
        )
    }

    /// The replicated bytes of applied entries `from..to` (see
    /// [`strata_engine::format::replicated_bytes`]): equal on every replica for the same range.
    /// Entries retention reclaimed here (each replica on its own clock) are left out.
    pub fn replicated_entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let state = lock(&self.inner.state);
        let applied = state.applied.last.map_or(0, |l| l.index + 1);
        let mut out = Vec::new();
        scan_entries(&state.store, from, to.min(applied), usize::MAX, |r| {
            out.push((r.header.seq, format::replicated_bytes(&r.frame)));
            Ok(())
        })?;
        Ok(out)
    }

    /// The committed log id openraft saved since this shard was opened, or a snapshot installed
    /// since covers (the file may hold an older one, or, after a power loss, one the log no
    /// longer has).
    pub fn committed(&self) -> Option<LogId> {
        *lock(&self.inner.committed_now)
    }

    /// Turns `Some(reason)` when this replica found its own data corrupt; the Raft node stops.
    pub fn watch_corruption(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.corrupt.subscribe()
    }

    /// A fresh staging directory number.
    pub(crate) fn next_staging_attempt(&self) -> u64 {
        self.inner
            .staging_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that snapshot `id` is fully staged in `dir`, ready to install.
    pub(crate) fn staged(&self, id: &str, dir: PathBuf) {
        // Staged twice (a retried offer): the copies are equal; keep one.
        let earlier = lock(&self.inner.staged).insert(id.to_string(), dir);
        self.remove_duplicate_staging(earlier);
    }

    fn remove_duplicate_staging(&self, dir: Option<PathBuf>) {
        let Some(dir) = dir else { return };
        if let Err(e) = self.inner.options.fs.remove_dir_all(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "removing a duplicate staged snapshot");
        }
    }

    /// Waits for any other snapshot offer being taken here to finish.
    pub(crate) async fn lock_install(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.installing.lock().await
    }

    /// The last entry's index in the log (written, maybe not yet committed).
    pub fn last_index(&self) -> Result<Option<u64>> {
        // Not the last entry's: the log of an installed snapshot can end inside a hole.
        Ok(lock(&self.inner.state).store.last_seq())
    }

    /// Whether this log holds the entry `log_id` (same index, same leader).
    pub fn holds(&self, log_id: LogId) -> Result<bool> {
        Ok(record_of(&lock(&self.inner.state).store, log_id)?.is_some())
    }

    /// Whether node `id` is a voter of the membership this replica last applied (`false`
    /// before it applied any: a new replica).
    pub fn is_voter(&self, id: NodeId) -> bool {
        lock(&self.inner.state)
            .applied
            .membership
            .membership()
            .voter_ids()
            .any(|v| v == id)
    }

    /// The vote this replica last saved (durably: it is saved before openraft acts on it).
    pub fn vote(&self) -> Option<openraft::Vote<NodeId>> {
        lock(&self.inner.hard).get().vote
    }

    fn hard(&self) -> HardState {
        lock(&self.inner.hard).get().clone()
    }

    fn save_hard(&self, change: impl FnOnce(&mut HardState)) -> Result<()> {
        let mut file = lock(&self.inner.hard);
        let mut state = file.get().clone();
        change(&mut state);
        file.save(state)
    }

    /// Entries `from..to` this log holds, from the purge point on (at most `max_bytes` of
    /// them, at least one).
    fn read_range(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        let purged_next = self.hard().purged.map_or(0, |p| p.index + 1);
        let from = from.max(purged_next);
        let state = lock(&self.inner.state);
        let mut out = Vec::new();
        scan_entries(&state.store, from, to, max_bytes, |r| {
            out.push(to_entry(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Entries for a replication stream, which sends what it gets as the entries right after
    /// `start - 1`: the unbroken run of entries from `start` on, or none. None when `start`
    /// is below the purge point — a replication task of a leader that has just stepped down
    /// may still ask (openraft holds back purging only while this node leads); answering with
    /// the entries after the purge point instead would make a follower fill the difference
    /// with gap records that no leader would ever correct.
    fn replication_range(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        let mut entries = self.read_range(start, end, ENTRIES_BYTES_MAX)?;
        let unbroken = entries
            .iter()
            .zip(start..)
            .take_while(|(e, index)| e.log_id.index == *index)
            .count();
        if unbroken < entries.len() {
            tracing::debug!(
                start,
                end,
                unbroken,
                "entries asked for are purged or missing here; sending only those before"
            );
            entries.truncate(unbroken);
        }
        Ok(entries)
    }
}

/// The openraft entry a record holds.
pub fn to_entry(r: &RawRecord) -> Result<Entry> {
    let log_id = LogId::new(
        CommittedLeaderId::new(r.header.term, r.header.leader),
        r.header.seq,
    );
    let payload = match format::read_kind(&r.frame) {
        // A blank record travels as its frame too: its place in the log (which segment) was
        // decided by the leader — a batch of appends whose estimate rolled the segment can end
        // up a small blank record when every append is refused — and followers must copy it.
        KIND_EVENTS | KIND_BLANK => EntryPayload::Normal(Command::Frame(r.frame.clone())),
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(format::body(&r.frame)).map_err(|e| {
                Error::corruption(
                    "<log>",
                    r.header.position,
                    format!("membership entry does not decode: {e}"),
                )
            })?,
        ),
        kind => {
            return Err(Error::corruption(
                "<log>",
                r.header.position,
                format!("unknown record kind {kind}"),
            ))
        }
    };
    Ok(Entry { log_id, payload })
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// The vote a node starts with: its own committed leadership is not resumed (see
/// `LogStore::read_vote`).
fn startup_vote(vote: Vote<NodeId>, me: NodeId) -> Vote<NodeId> {
    if vote.committed && vote.leader_id.node_id == me {
        Vote::new(vote.leader_id.term, me)
    } else {
        vote
    }
}

/// openraft's log storage over the shard's log.
#[derive(Clone, Debug)]
pub struct LogStore {
    shard: Shard,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        self.shard
            .read_range(from, to, usize::MAX)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        self.shard
            .replication_range(start, end)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let last = {
            let state = lock(&self.shard.inner.state);
            state
                .store
                .last_entry()
                .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
        };
        let last = last.map(|h| LogId::new(CommittedLeaderId::new(h.term, h.leader), h.seq));
        let purged = self.shard.hard().purged;
        let last_log_id = match (last, purged) {
            (Some(l), Some(p)) => Some(if l.index > p.index { l } else { p }),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> std::result::Result<(), StorageError> {
        let vote = *vote;
        self.shard
            .save_hard(|h| h.vote = Some(vote))
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    /// Read once, when openraft starts. A vote this node holds as the committed leader is
    /// handed back uncommitted, so a restarted leader stands for election in a new term instead
    /// of resuming its old one (openraft 0.9 resumes it at once, without an election). Resumed,
    /// it would know only the commit point it last wrote down (`raft-committed` is not synced):
    /// its read index would stand behind appends it acknowledged before the crash (a
    /// linearizable read missed acknowledged events: simulator seed 1796235047174965752), and
    /// after losing an unsynced entry a majority had committed it would propose a different
    /// entry under the same term and index. Elected afresh, it commits its blank entry of the
    /// new term first, and voters refuse it if its log is behind theirs. What the vote is for is
    /// unchanged: it still voted for itself in that term.
    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self
            .shard
            .hard()
            .vote
            .map(|v| startup_vote(v, self.shard.node_id())))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError> {
        let mut file = lock(&self.shard.inner.committed);
        let mut state = file.get().clone();
        state.committed = committed;
        file.save(state)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        *lock(&self.shard.inner.committed_now) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        let committed = lock(&self.shard.inner.committed).get().committed;
        let Some(c) = committed else {
            return Ok(None);
        };
        // The file is not synced: after a power cut it may name an entry the log lost. Then
        // claim nothing; the leader tells this node again how far the log is committed.
        let holds = self
            .shard
            .holds(c)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let purged = self.shard.hard().purged.is_some_and(|p| p.index >= c.index);
        Ok((holds || purged).then_some(c))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let limits = self.shard.inner.options.engine.limits.clone();
        // Per entry: the appends that failed validation, by their place in the entry.
        let mut invalid: Vec<(u64, Vec<(usize, Error)>)> = Vec::new();
        let mut batch = Vec::new();
        for entry in entries {
            let seq = entry.log_id.index;
            let body = match entry.payload {
                EntryPayload::Blank => EntryBody::Blank,
                EntryPayload::Normal(Command::Append(appends)) => {
                    let mut valid = Vec::with_capacity(appends.len());
                    let mut bad = Vec::new();
                    for (i, append) in appends.into_iter().enumerate() {
                        match Validated::new(append.into(), &limits) {
                            Ok(v) => valid.push(v),
                            Err(e) => bad.push((i, e)),
                        }
                    }
                    if !bad.is_empty() {
                        invalid.push((seq, bad));
                    }
                    EntryBody::Appends(valid)
                }
                EntryPayload::Normal(Command::Frame(frame)) => EntryBody::Frame(frame),
                EntryPayload::Membership(m) => EntryBody::Membership(
                    serde_json::to_vec(&m)
                        .map_err(|e| log_error(Error::invalid("membership", e.to_string())))?,
                ),
            };
            batch.push(LogEntry {
                seq,
                term: entry.log_id.leader_id.term,
                leader: entry.log_id.leader_id.node_id,
                body,
            });
        }
        let (points, finisher) = {
            let mut state = lock(&self.shard.inner.state);
            let written = state.store.write_entries(batch).map_err(log_error)?;
            let mut points = Vec::with_capacity(written.len());
            for mut w in written {
                if let Some(i) = invalid.iter().position(|(s, _)| *s == w.seq) {
                    // Put the validation failures back in their places.
                    let mut decided = w.decided.take().unwrap_or_default();
                    for (at, e) in invalid.swap_remove(i).1 {
                        decided.insert(at.min(decided.len()), Err(e));
                    }
                    w.decided = Some(decided);
                }
                points.push(w.group.sync_point());
                state.pending.push_back(w);
            }
            (points, state.store.finisher())
        };
        self.shard
            .inner
            .syncer
            .send(SyncJob {
                points,
                finisher,
                callback,
            })
            .await
            .map_err(|_| log_error(Error::Closed))
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let mut state = lock(&self.shard.inner.state);
        strata_engine::invariant!(
            state.applied.last.is_none_or(|a| a.index < log_id.index),
            "truncating applied (so committed) entries: from {} with {:?} applied",
            log_id.index,
            state.applied.last
        );
        let dropped = state
            .store
            .truncate_entries(log_id.index)
            .map_err(log_error)?;
        let before = state.pending.len();
        state.pending.retain(|p| p.seq < log_id.index);
        debug_assert_eq!(before - state.pending.len(), dropped);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        // The entries stay in the log: they are the data. They only stop being Raft entries.
        // (No "purged ≤ applied" check here: openraft purges up to a snapshot it is installing
        // from its core while its state machine worker may not have installed it yet. Purging
        // deletes nothing, so that order is harmless.)
        self.shard
            .save_hard(|h| {
                if h.purged.is_none_or(|p| p.index < log_id.index) {
                    h.purged = Some(log_id);
                }
            })
            .map_err(log_error)
    }
}

/// openraft's state machine: the shard's indexes.
#[derive(Clone, Debug)]
pub struct StateMachine {
    shard: Shard,
}

/// Committed entries taken out of the pending queue, ready to index.
struct Committed {
    groups: Vec<strata_engine::store::WrittenGroup<()>>,
    replies: Vec<Reply>,
    /// The state machine's state after them.
    applied: Applied,
    finisher: Finisher,
}

impl StateMachine {
    /// Takes the written records of committed `entries` out of the pending queue, with each
    /// entry's reply.
    fn take_committed(&self, entries: impl IntoIterator<Item = Entry>) -> Result<Committed> {
        let mut state = lock(&self.shard.inner.state);
        let mut applied = state.applied.clone();
        let mut groups = Vec::new();
        let mut replies = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            strata_engine::invariant!(
                applied.last.is_none_or(|a| a.index < index),
                "applied goes back or repeats: {:?} then {index}",
                applied.last
            );
            // Gap records before it are no entries; they are applied with it.
            while state.pending.front().is_some_and(|p| p.seq < index) {
                if let Some(w) = state.pending.pop_front() {
                    groups.push(w.group);
                }
            }
            let written = match state.pending.front() {
                Some(p) if p.seq == index => state.pending.pop_front(),
                _ => None,
            };
            match (written, &entry.payload) {
                (Some(w), _) => {
                    groups.push(w.group);
                    replies.push(match w.decided {
                        Some(d) => Reply::Outcomes(d.into_iter().map(Outcome::from).collect()),
                        None => Reply::None,
                    });
                }
                (None, EntryPayload::Normal(_)) => {
                    return Err(Error::Index(format!(
                        "committed entry {index} is not in this replica's log"
                    )));
                }
                // Blank and membership entries carry no data: the state machine only notes them.
                (None, _) => replies.push(Reply::None),
            }
            if let EntryPayload::Membership(m) = &entry.payload {
                applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            applied.last = Some(entry.log_id);
        }
        Ok(Committed {
            groups,
            replies,
            applied,
            finisher: state.store.finisher(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = lock(&self.shard.inner.state).applied.clone();
        Ok((a.last, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let Committed {
            groups,
            replies,
            applied,
            finisher,
        } = self.take_committed(entries).map_err(sm_error)?;
        // The store's lock is not held from here: readers and the Raft log go on meanwhile.
        // A leader learns an entry committed once followers flushed it, possibly before its own
        // syncer has: wait for that sync (never index unsynced bytes), without a second one.
        let points: Vec<SyncPoint> = groups.iter().map(|g| g.sync_point()).collect();
        finisher.synced(&points).await.map_err(sm_error)?;
        finish_applied(&finisher, groups, &applied, IndexBatch::default()).map_err(sm_error)?;
        lock(&self.shard.inner.state).applied = applied;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &crate::types::SnapshotMeta,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let manifest = Manifest::decode(snapshot.get_ref()).map_err(sm_error)?;
        self.shard.install(meta, &manifest).map_err(|e| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let finisher = lock(&self.shard.inner.state).store.finisher();
        let Some(bytes) = finisher.meta(SNAPSHOT_KEY).map_err(sm_error)? else {
            return Ok(None);
        };
        let manifest = Manifest::decode(&bytes).map_err(sm_error)?;
        Ok(Some(Snapshot {
            meta: manifest.meta.clone(),
            snapshot: Box::new(std::io::Cursor::new(bytes)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<TypeConfig>, StorageError> {
        let manifest = self.shard.build_manifest().map_err(sm_error)?;
        let bytes = manifest.encode();
        let mut batch = IndexBatch::default();
        index::set_meta(&mut batch, SNAPSHOT_KEY, bytes.clone());
        let finisher = lock(&self.shard.inner.state).store.finisher();
        finisher.write_meta(batch).map_err(sm_error)?;
        // openraft purges up to a snapshot once it is built: the applied state it covers must
        // survive a crash from now on (the hard state's purge mark does).
        finisher.flush_index().map_err(sm_error)?;
        Ok(Snapshot {
            meta: manifest.meta,
            snapshot: Box::new(std::io::Cursor::new(bytes)),
        })
    }
}

impl Shard {
    /// One retention pass over this replica's log (`strata_engine::retention`), then the drop
    /// of its reclaimed prefix. A pass stays below the purge point — the purged entry and
    /// everything after it may still be sent to a follower as entries — and below `pinned`;
    /// the drop stays below the first segment the current snapshot lists (a follower may be
    /// fetching it). Each replica reclaims on its own clock; what a replica decides is never
    /// affected (a stream's newest event and tombstones are never reclaimed).
    pub fn retention_pass(
        &self,
        config: &strata_engine::retention::RetentionConfig,
        now_us: u64,
        pinned: u64,
        pace: &mut dyn FnMut(u64),
    ) -> Result<(strata_engine::retention::PassReport, usize)> {
        let Some(purged) = self.hard().purged else {
            return Ok(Default::default());
        };
        let (retention, bound, generation) = {
            let state = lock(&self.inner.state);
            let bound = state.store.entry_position(purged.index)?.unwrap_or(0);
            (state.store.retention(), bound.min(pinned), state.generation)
        };
        let report = retention.pass(config, now_us, bound, pace)?;
        let mut state = lock(&self.inner.state);
        if state.generation != generation {
            // A snapshot install replaced the store meanwhile.
            return Ok((report, 0));
        }
        let listed = match state.store.finisher().meta(SNAPSHOT_KEY)? {
            Some(bytes) => Manifest::decode(&bytes)?
                .segments
                .first()
                .map_or(0, |r| r.base),
            None => 0,
        };
        let dropped = state.store.drop_reclaimed(listed)?;
        Ok((report, dropped))
    }

    /// A snapshot of everything applied: the log's byte ranges up to the last applied record.
    fn build_manifest(&self) -> Result<Manifest> {
        let state = lock(&self.inner.state);
        let applied = state.applied.clone();
        let end = match applied.last {
            Some(last) => {
                record_of(&state.store, last)?.map(|r| r.header.position + r.frame.len() as u64)
            }
            None => None,
        };
        // Segments retention left holding nothing but holes are not shipped: a receiver needs
        // no record in them, and the next drop here removes them.
        let reader = state.store.reader();
        let live: Vec<_> = reader
            .segments()
            .into_iter()
            .skip_while(|s| reader.is_segment_reclaimed(s))
            .collect();
        let segments = match end {
            Some(end) => snapshot::ranges_up_to(&live, end)?,
            None => Vec::new(),
        };
        let id = format!(
            "{}-{}-g{}",
            applied.last.map_or(0, |l| l.leader_id.term),
            applied.last.map_or(0, |l| l.index),
            state.generation
        );
        Ok(Manifest {
            meta: crate::types::SnapshotMeta {
                last_log_id: applied.last,
                last_membership: applied.membership,
                snapshot_id: id,
            },
            source: self.inner.options.node_id,
            segments,
        })
    }

    /// Installs a snapshot whose segments were staged by [`crate::snapshot::stage`] (or that
    /// needs none): the staged generation becomes the live one, its records are indexed, and
    /// the state machine stands at the snapshot's last log id.
    fn install(&self, meta: &crate::types::SnapshotMeta, manifest: &Manifest) -> Result<()> {
        let mut state = lock(&self.inner.state);
        let options = &self.inner.options;
        let last = meta.last_log_id;
        // If this log already holds the snapshot's last entry, it holds everything before it:
        // apply up to there in place.
        let holds_last = match last {
            Some(l) => record_of(&state.store, l)?.is_some(),
            None => true,
        };
        let generation = if holds_last || manifest.segments.is_empty() {
            // Nothing to copy: this log already holds the snapshot's records (or the snapshot
            // holds none).
            state.generation
        } else {
            let next = state.generation + 1;
            let staged = lock(&self.inner.staged).remove(&meta.snapshot_id);
            let target = generation_dir(&options.dir, next);
            let Some(staged) = staged else {
                return Err(Error::invalid(
                    "snapshot",
                    format!(
                        "snapshot {} was not staged before install",
                        meta.snapshot_id
                    ),
                ));
            };
            options
                .fs
                .rename(&staged, &target)
                .map_err(|e| Error::io("moving the staged snapshot into place", e))?;
            let (store, pending) = open_generation(options, next)?;
            state.store = store;
            state.pending = pending.into();
            write_generation(options, next)?;
            state.generation = next;
            next
        };
        // Apply (index) every record up to the snapshot's last entry.
        let upto = last.map_or(0, |l| l.index + 1);
        let mut groups = Vec::new();
        while state.pending.front().is_some_and(|p| p.seq < upto) {
            if let Some(w) = state.pending.pop_front() {
                groups.push(w.group);
            }
        }
        let applied = Applied {
            last,
            membership: meta.last_membership.clone(),
        };
        let mut extra = IndexBatch::default();
        index::set_meta(&mut extra, SNAPSHOT_KEY, manifest.encode());
        let finisher = state.store.finisher();
        finish_applied(&finisher, groups, &applied, extra)?;
        finisher.flush_index()?;
        state.store.reload_reclaimed()?;
        state.applied = applied;
        drop(state);
        // A retried offer may have staged the same snapshot again meanwhile.
        let duplicate = lock(&self.inner.staged).remove(&meta.snapshot_id);
        self.remove_duplicate_staging(duplicate);
        // A snapshot holds committed entries only: openraft saves no commit for it.
        let mut committed = lock(&self.inner.committed_now);
        *committed = (*committed).max(last);
        drop(committed);
        self.inner.generation.send_replace(generation);
        tracing::info!(snapshot = %meta.snapshot_id, generation, "snapshot installed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Shard {
        open_with(dir, 0)
    }

    fn open_with(dir: &Path, incarnation: u64) -> Shard {
        Shard::open(ShardOptions {
            incarnation,
            ..ShardOptions::on_disk(1, dir, EngineConfig::default())
        })
        .expect("open shard")
    }

    fn write_blanks(shard: &Shard, seqs: impl IntoIterator<Item = u64>) {
        let entries = seqs
            .into_iter()
            .map(|seq| LogEntry {
                seq,
                term: 1,
                leader: 1,
                body: EntryBody::Blank,
            })
            .collect();
        lock(&shard.inner.state)
            .store
            .write_entries(entries)
            .expect("write");
    }

    fn indexes(entries: Vec<Entry>) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn a_new_replica_records_its_incarnation_and_keeps_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let new = tmp.path().join("new");
        assert_eq!(open_with(&new, 9).incarnation(), 9);
        // Reopened where the map no longer records its move (0 asked): still 9.
        assert_eq!(open_with(&new, 0).incarnation(), 9);
        // A replica from before incarnations (it voted, none recorded) is a founder's.
        let old = tmp.path().join("old");
        let shard = open_with(&old, 0);
        shard
            .save_hard(|h| {
                h.vote = Some(Vote::new(3, 1));
                h.incarnation = None;
            })
            .expect("save");
        drop(shard);
        assert_eq!(open_with(&old, 5).incarnation(), 0);
    }

    #[test]
    fn a_restarted_leader_does_not_resume_its_term() {
        let mine = Vote::new_committed(7, 1);
        let started = startup_vote(mine, 1);
        assert_eq!(
            (started.leader_id, started.committed),
            (mine.leader_id, false)
        );
        let theirs = Vote::new_committed(7, 2);
        assert_eq!(startup_vote(theirs, 1), theirs);
        let candidate = Vote::new(8, 1);
        assert_eq!(startup_vote(candidate, 1), candidate);
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Found by the simulator (seed 1795675209575810142): a leader that had just stepped down
    /// purged while its replication task still sent from below the purge point, and got the
    /// entries after it — which the follower took as following the earlier entry.
    #[test]
    fn replication_gets_the_entries_asked_for_or_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let shard = open(dir.path());
        write_blanks(&shard, 0..10);
        assert_eq!(
            indexes(shard.replication_range(3, 10).unwrap()),
            (3..10).collect::<Vec<_>>()
        );
        shard.save_hard(|h| h.purged = Some(log_id(5))).unwrap();
        // openraft's own reads leave purged entries out ("an entry not found is allowed").
        assert_eq!(
            indexes(shard.read_range(3, 10, usize::MAX).unwrap()),
            (6..10).collect::<Vec<_>>()
        );
        assert!(shard.replication_range(3, 10).unwrap().is_empty());
        assert_eq!(
            indexes(shard.replication_range(6, 10).unwrap()),
            (6..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_gap_record_holds_no_entry_and_replication_stops_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let shard = open(dir.path());
        write_blanks(&shard, [0, 1, 5]);
        assert!(shard.holds(log_id(1)).unwrap());
        assert!(!shard.holds(log_id(3)).unwrap(), "index 3 is a gap record");
        assert!(shard.holds(log_id(5)).unwrap());
        assert_eq!(indexes(shard.replication_range(0, 6).unwrap()), vec![0, 1]);
        assert!(shard.replication_range(2, 6).unwrap().is_empty());
    }
}
