//! The store: one shard's log and indexes. An append goes through three stages:
//!
//! 1. **write** (`write_requests`, one owner): validate, decide (idempotent retry or expected-
//!    version check) against the index plus the effects of groups still in flight, encode,
//!    and write the group to the tail segment without syncing;
//! 2. **sync** ([`Finisher::sync`]): one fdatasync covers every group written so far;
//! 3. **finish** ([`Finisher::finish`]): index the synced groups, publish the new end to readers,
//!    and only then answer.
//!
//! [`Store::commit`] runs the three in a row (the simulator and the Raft state machine drive it
//! this way); [`crate::Engine`] runs them on three threads so that encoding, the disk and the
//! index overlap. Nothing here reads a clock except to time syncs for statistics.
//!
//! Invariants: a group is answered `Ok` only after an fdatasync that started after its write
//! returned; effects of written groups stay in `inflight` until their index batch is applied,
//! so decisions never miss them; the index checkpoint equals the published end after every
//! finish and truncation; a request's events are all in one record or not written.

use std::collections::VecDeque;

// The writer hashes every event id and stream name a few times per append: foldhash (seeded per
// process) instead of SipHash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{EngineConfig, SEGMENT_FOOTER_BYTES};
use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamAppend,
    StreamAppendResult,
};
use crate::fence::{FenceChange, Fences, FENCES_STREAM};
use crate::format::{self, EventFields, EventSlot, RecordHeader, FLAG_COPY};
use crate::fs::{FileHandle, FileSystem};
use crate::id_filter::KnownIds;
use crate::index::{self, Checkpoint, Index, IndexedEvent};
use crate::index_store::{IndexBatch, IndexStore};
use crate::log::{LogWriter, RecoveryReport};
use crate::reader::Reader;
use crate::stats::Stats;
use crate::validate::Validated;
use smallvec::SmallVec;

mod replica;
pub use replica::{EntryBody, LogEntry, WrittenEntry};

/// Most stream heads (last versions) the writer keeps in memory. Past it the cache starts over
/// and misses read the stream index. Default 100,000 streams (a few MiB).
pub const STREAM_HEADS_CACHED_MAX: usize = 100_000;

/// Capacity of a written group's buffer kept for the next group, bytes (8 MiB).
const GROUP_BUF_KEPT_MAX: usize = 8 << 20;

/// Records indexed per batch while catching the index up at open.
const CATCH_UP_RECORDS_MAX: usize = 1024;

/// What a decision about one request came to.
enum Plan {
    /// A retry of an append already committed: answer with the original result.
    Duplicate(AppendResult),
    /// Write it; the first version of each stream part.
    Write(FirstVersions),
}

/// The first version of each stream part of a request, in place for up to two parts (most
/// appends name one stream): deciding an append allocates nothing for it.
type FirstVersions = SmallVec<[u64; 2]>;

/// An event written but not yet indexed.
#[derive(Debug)]
struct PendingEvent {
    position: Position,
    /// Shared by the events of one stream in one append (one allocation, not one per event).
    stream: Arc<str>,
    version: u64,
    event: NewEvent,
}

/// What a written group changes, kept until its index batch is applied.
#[derive(Debug, Default)]
struct Effects {
    /// Position and sequence number of the group's first record.
    position: Position,
    seq: u64,
    heads: HashMap<String, u64>,
    ids: HashMap<Uuid, PendingEvent>,
    /// Changes to the write fences (`$fences` events), in order.
    fences: Vec<FenceChange>,
    /// The stream name the last pending events share, handed to the next append to the same
    /// stream instead of a fresh copy.
    last_stream: Option<Arc<str>>,
}

type Inflight = Arc<Mutex<VecDeque<Arc<Effects>>>>;

use crate::sync::lock;

/// The group being built by the writer.
struct Group<T> {
    buf: Vec<u8>,
    records: u64,
    events: u64,
    batch: IndexBatch,
    answers: Vec<(T, AppendResult)>,
    effects: Effects,
    /// Index keys held back until the group ends.
    index_keys: index::BatchKeys,
}

impl<T> Group<T> {
    /// An empty group for about `requests` appends: its maps are sized for one event and one
    /// stream each up front (growing them by rehashing was 1.6 % of a node's CPU pipelined).
    fn new(buf: Vec<u8>, requests: usize) -> Group<T> {
        debug_assert!(buf.is_empty());
        Group {
            buf,
            records: 0,
            events: 0,
            batch: IndexBatch::default(),
            answers: Vec::with_capacity(requests),
            index_keys: index::BatchKeys::default(),
            effects: Effects {
                heads: HashMap::with_capacity(requests),
                ids: HashMap::with_capacity(requests),
                ..Effects::default()
            },
        }
    }
}

/// Answers tagged with whatever identifies their callers.
pub type Answers<T> = Vec<(T, Result<AppendResult>)>;

/// A group written to the log file but not yet synced. `T` tags each answer with its caller.
#[derive(Debug)]
pub struct WrittenGroup<T> {
    file: Arc<dyn FileHandle>,
    end: Position,
    next_seq: u64,
    events: u64,
    bytes: u64,
    batch: IndexBatch,
    answers: Vec<(T, AppendResult)>,
    /// Holds a hole record (a log's unapplied tail copied or reopened after retention):
    /// finishing it updates the reclaimed ranges readers consult.
    holes: bool,
}

impl<T> WrittenGroup<T> {
    /// The callers' tags, for answering them when the group cannot go on.
    pub fn into_answers(self) -> Vec<(T, AppendResult)> {
        self.answers
    }

    /// What must be synced to make this group durable.
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            file: self.file.clone(),
            end: self.end,
        }
    }
}

/// A written group's file and end: what [`Finisher::sync_points`] needs, without the group.
#[derive(Debug, Clone)]
pub struct SyncPoint {
    file: Arc<dyn FileHandle>,
    end: Position,
}

/// Stages 2 and 3: syncs written groups, indexes them, publishes and answers. Cheap to clone;
/// may run on other threads than the writer.
#[derive(Debug, Clone)]
pub struct Finisher {
    reader: Reader,
    inflight: Inflight,
    stats: Arc<Stats>,
    clock: Arc<dyn Clock>,
    poison: Arc<OnceLock<String>>,
    synced_end: Arc<AtomicU64>,
    /// Woken whenever `synced_end` moves or a sync fails.
    synced: Arc<tokio::sync::Notify>,
}

impl Finisher {
    /// Stops the store for good (every later write fails with `why`): for damage found
    /// outside the write path, such as corruption in a sealed segment.
    pub fn stop(&self, why: String) {
        tracing::error!(reason = %why, "store stopped");
        let _ = self.poison.set(why);
        self.synced.notify_waiters();
    }

    /// Makes the groups durable: one fdatasync per file they were written to.
    pub fn sync<T>(&self, groups: &[WrittenGroup<T>]) -> Result<()> {
        let points: Vec<SyncPoint> = groups.iter().map(WrittenGroup::sync_point).collect();
        self.sync_points(&points)
    }

    /// [`Finisher::sync`] for groups held elsewhere (the Raft log syncs on its own thread).
    pub fn sync_points(&self, groups: &[SyncPoint]) -> Result<()> {
        if let Some(why) = self.poison.get() {
            return Err(Error::Poisoned(why.clone()));
        }
        let Some(last) = groups.last() else {
            return Ok(());
        };
        let started = self.clock.now_ns();
        let mut synced: Vec<&Arc<dyn FileHandle>> = Vec::with_capacity(2);
        for g in groups {
            if synced.iter().any(|f| Arc::ptr_eq(f, &g.file)) {
                continue;
            }
            if crate::planted::skip_sync() {
                // A planted bug (test builds only): acknowledged as synced, not synced.
                synced.push(&g.file);
                continue;
            }
            if let Err(e) = g.file.sync_data() {
                // After a failed fdatasync the kernel may have dropped the dirty pages: what is
                // on disk is unknown until a reopen recovers the log.
                let why = format!("fdatasync failed: {e}");
                tracing::error!(reason = %why, "log writer stopped");
                let _ = self.poison.set(why);
                self.synced.notify_waiters();
                return Err(Error::Poisoned(
                    self.poison.get().cloned().unwrap_or_default(),
                ));
            }
            synced.push(&g.file);
        }
        self.stats
            .record_sync(self.clock.now_ns().saturating_sub(started));
        // Before anything is answered: records written from now on may rely on it.
        self.synced_end.fetch_max(last.end, Ordering::AcqRel);
        self.synced.notify_waiters();
        Ok(())
    }

    /// Indexes synced groups, publishes the new end and returns the answers. With a failed
    /// sync every answer is that failure.
    pub fn finish<T>(
        &self,
        groups: Vec<WrittenGroup<T>>,
        synced: &Result<()>,
    ) -> Vec<(T, Result<AppendResult>)> {
        self.finish_with(groups, synced, IndexBatch::default())
    }

    /// Makes sure the groups are durable: returns at once when an earlier sync already covered
    /// them, else syncs. (A Raft leader may learn an entry is committed — a majority of
    /// followers flushed it — before its own sync of it finished; indexing it must still wait,
    /// because recovery treats everything below the index checkpoint as synced.)
    pub fn ensure_synced(&self, groups: &[SyncPoint]) -> Result<()> {
        let end = groups.iter().map(|g| g.end).max().unwrap_or(0);
        if self.synced_end.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        self.sync_points(groups)
    }

    /// Like [`Finisher::ensure_synced`] for groups some other thread is already syncing (the
    /// Raft log's syncer): waits for that sync instead of issuing a second fdatasync.
    pub async fn synced(&self, groups: &[SyncPoint]) -> Result<()> {
        let end = groups.iter().map(|g| g.end).max().unwrap_or(0);
        loop {
            // Created before the checks, so a sync finishing in between still wakes it.
            let woken = self.synced.notified();
            if let Some(why) = self.poison.get() {
                return Err(Error::Poisoned(why.clone()));
            }
            if self.synced_end.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            woken.await;
        }
    }

    /// A value stored with [`crate::index::set_meta`].
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.reader.index.meta(name)
    }

    /// Makes every index write so far durable (the index keeps no write-ahead log of its own:
    /// the log is the WAL, so index writes are otherwise durable only when RocksDB flushes).
    pub fn flush_index(&self) -> Result<()> {
        self.reader.index.flush()
    }

    /// Writes an index batch that holds no records (the Raft state machine's own state).
    pub fn write_meta(&self, batch: IndexBatch) -> Result<()> {
        self.reader.index.write(batch, false)
    }

    /// [`Finisher::finish`] that also writes `extra` (the Raft state machine's own state) in
    /// the same atomic index batch.
    pub fn finish_with<T>(
        &self,
        mut groups: Vec<WrittenGroup<T>>,
        synced: &Result<()>,
        extra: IndexBatch,
    ) -> Vec<(T, Result<AppendResult>)> {
        let mut out = Vec::new();
        let Some(last) = groups.last() else {
            return out;
        };
        let (end, next_seq) = (last.end, last.next_seq);
        crate::invariant!(
            groups
                .windows(2)
                .all(|w| w[0].end < w[1].end && w[0].next_seq <= w[1].next_seq),
            "groups finish in the order they were written"
        );
        if let Err(e) = synced {
            for g in groups {
                lock(&self.inflight).pop_front();
                out.extend(g.answers.into_iter().map(|(t, _)| (t, Err(e.duplicate()))));
            }
            return out;
        }
        let mut batch = extra;
        let (mut events, mut bytes) = (0, 0);
        let holes = groups.iter().any(|g| g.holes);
        for g in &mut groups {
            batch.append(&mut g.batch);
            events += g.events;
            bytes += g.bytes;
        }
        index::set_checkpoint(
            &mut batch,
            Checkpoint {
                next_position: end,
                next_seq,
            },
        );
        if let Err(e) = self.reader.index.write(batch, false) {
            // The records are durable, so their appends succeeded; but decisions need the index,
            // so stop writing until a reopen catches it up from the log.
            tracing::error!(error = %e, "index write failed after a durable group; stopping writes");
            let _ = self.poison.set(format!("index write failed: {e}"));
        } else if holes {
            if let Err(e) = self.reader.reclaimed.load(&self.reader.index) {
                tracing::error!(error = %e, "reloading reclaimed ranges failed; stopping writes");
                let _ = self
                    .poison
                    .set(format!("reloading reclaimed ranges failed: {e}"));
            }
        }
        crate::invariant!(
            end >= self.reader.log.end(),
            "the published end moves back on finish: {} -> {end}",
            self.reader.log.end()
        );
        self.reader.log.publish_end(end);
        {
            let mut inflight = lock(&self.inflight);
            for _ in &groups {
                inflight.pop_front();
            }
        }
        let appends: usize = groups.iter().map(|g| g.answers.len()).sum();
        self.stats
            .appends
            .fetch_add(appends as u64, Ordering::Relaxed);
        self.stats.events.fetch_add(events, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        for g in groups {
            out.extend(g.answers.into_iter().map(|(t, a)| (t, Ok(a))));
        }
        out
    }
}

/// One shard's store.
#[derive(Debug)]
pub struct Store {
    config: EngineConfig,
    log: LogWriter,
    reader: Reader,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    inflight: Inflight,
    finisher: Finisher,
    synced_end: Arc<AtomicU64>,
    /// Last versions of recently written streams, including groups not yet indexed. Only the
    /// writer changes streams, so an entry here is the truth.
    heads: HashMap<String, u64>,
    /// Streams the index was asked about and held no tombstone for. A tombstone written since
    /// is in `heads` (or in a group not yet written), and this set is cleared whenever `heads`
    /// is, so a stream here needs no index lookup. At most [`STREAM_HEADS_CACHED_MAX`].
    untombstoned: HashSet<String>,
    /// The name of a stream's tombstone stream, rebuilt in place for each append's check
    /// (allocating it per append was one of the writer's allocations per event).
    tombstone_name: String,
    /// A written group's buffer, cleared, for the next group (at most [`GROUP_BUF_KEPT_MAX`]
    /// bytes of capacity kept): growing a fresh one was 5 % of the writer's CPU.
    spare_buf: Vec<u8>,
    /// Every event id in the index or in flight (and some deleted since): an id it has never
    /// seen needs no index lookup. Read from the index at open by a thread of its own, and fed
    /// every group handed to the indexer (`publish`).
    ids: KnownIds,
    /// Whether the log is a Raft log (records are then also indexed by sequence number).
    raft: bool,
    /// The hybrid logical clock: the largest record timestamp in the log. A new record's
    /// timestamp is its requests' (the writer's wall clock) or one microsecond past this,
    /// whichever is later, so timestamps increase along the log whatever the clocks do.
    last_timestamp_us: AtomicU64,
    /// The write fences in force, including groups written and not yet indexed (`publish`).
    fences: Fences,
}

impl Store {
    /// Opens the store whose log is in `dir/log`, with its indexes in `index_store`: recovers
    /// the log's tail, then catches the index up with the log (or rebuilds it).
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        index_store: Box<dyn IndexStore>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Store> {
        let mut store = Store::open_log(fs, dir, index_store, config, clock)?;
        store.catch_up_index()?;
        store.load_id_filter();
        store.reload_reclaimed()?;
        // The clock resumes past the newest timestamp: the index now covers every record.
        store.saw_timestamp(store.reader.last_timestamp(store.log.next_position())?);
        store.reader.log.publish_end(store.log.next_position());
        store.reload_fences()?;
        Ok(store)
    }

    /// The fences in force: those of the indexed log (what readers see), then the groups in
    /// flight, in order. A change seen twice (indexed while still in flight) changes nothing
    /// more: the last change of each range decides.
    pub(crate) fn reload_fences(&mut self) -> Result<()> {
        let mut fences = crate::fence::read_fences(&self.reader)?;
        for effects in lock(&self.inflight).iter() {
            for change in &effects.fences {
                fences.apply(*change);
            }
        }
        self.fences = fences;
        Ok(())
    }

    /// The fences in force: [`Store::fences`]'s list.
    pub fn fences(&self) -> &Fences {
        &self.fences
    }

    /// The shard a write to `stream` must go to, when a fence in force or set earlier in the
    /// group being built (`current`) covers it.
    fn fenced(&self, stream: &str, current: &Effects) -> Option<u32> {
        if current.fences.is_empty() {
            return self.fences.fenced(stream);
        }
        let mut fences = self.fences.clone();
        for change in &current.fences {
            fences.apply(*change);
        }
        fences.fenced(stream)
    }

    /// Opens the log and the index without reconciling them.
    fn open_log(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        index_store: Box<dyn IndexStore>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Store> {
        config.validate()?;
        let index = Arc::new(Index::new(index_store));
        // Everything the index covered was synced before it was indexed: recovery treats damage
        // there as corruption even where it would otherwise look like a torn tail.
        let known_synced = index.checkpoint()?.map_or(0, |c| c.next_position);
        let (log, log_reader, recovery) =
            LogWriter::open(fs, &dir.join("log"), &config, known_synced)?;
        let reader = Reader {
            log: log_reader,
            index,
            limits: config.limits.clone(),
            reclaimed: Arc::default(),
        };
        let stats = Arc::new(Stats::default());
        let inflight: Inflight = Arc::default();
        let synced_end = Arc::new(AtomicU64::new(log.next_position()));
        let finisher = Finisher {
            reader: reader.clone(),
            inflight: inflight.clone(),
            stats: stats.clone(),
            clock,
            poison: log.poison_handle(),
            synced_end: synced_end.clone(),
            synced: Arc::default(),
        };
        let store = Store {
            config,
            log,
            reader,
            stats,
            recovery,
            inflight,
            finisher,
            synced_end,
            heads: HashMap::new(),
            untombstoned: HashSet::new(),
            tombstone_name: String::new(),
            spare_buf: Vec::new(),
            ids: KnownIds::off(),
            raft: false,
            last_timestamp_us: AtomicU64::new(0),
            fences: Fences::default(),
        };
        Ok(store)
    }

    /// The timestamp for a record of requests stamped `requested`: later than every record
    /// before it (see `last_timestamp_us`).
    fn next_timestamp(&self, requested: u64) -> u64 {
        let last = self.last_timestamp_us.load(Ordering::Acquire);
        let next = requested.max(last.saturating_add(1));
        self.last_timestamp_us.fetch_max(next, Ordering::AcqRel);
        next
    }

    /// Notes a record written with `timestamp_us` (a follower's copy of the leader's).
    pub(crate) fn saw_timestamp(&self, timestamp_us: u64) {
        self.last_timestamp_us
            .fetch_max(timestamp_us, Ordering::AcqRel);
    }

    fn catch_up_index(&self) -> Result<()> {
        let end = self.log.next_position();
        let next_seq = self.log.next_seq();
        let index = &self.reader.index;
        let mut from = match index.checkpoint()? {
            Some(c)
                if c.next_position == end
                    && c.next_seq == next_seq
                    && index.format_is_current()? =>
            {
                return Ok(())
            }
            Some(c) if self.checkpoint_fits(c)? => Some(c.next_position),
            Some(c) => {
                tracing::warn!(
                    checkpoint = c.next_position,
                    log_end = end,
                    "index does not match the log; rebuilding it"
                );
                None
            }
            None => None,
        };
        let mut clear = from.is_none();
        let mut position = from.take().unwrap_or(0);
        let mut records = 0u64;
        loop {
            let (raw, next) =
                self.reader
                    .log
                    .scan(position, end, CATCH_UP_RECORDS_MAX, 32 << 20)?;
            let mut batch = IndexBatch::clearing(clear);
            clear = false;
            let mut last_seq = None;
            let mut index_keys = index::BatchKeys::default();
            for r in &raw {
                let events = self.decode(&r.frame, r.header.position)?;
                index::add_record(
                    &mut batch,
                    (
                        r.header.position,
                        self.raft.then_some(r.header.seq),
                        r.header.timestamp_us,
                    ),
                    &index::indexed_events(&events),
                    &mut index_keys,
                );
                index::add_if_hole(&mut batch, r.header.position, &r.frame);
                last_seq = Some(r.header.seq + format::records_in(&r.frame) - 1);
            }
            index_keys.finish(&mut batch);
            records += raw.len() as u64;
            let done = raw.is_empty() || next >= end;
            let checkpoint = if done {
                Checkpoint {
                    next_position: end,
                    next_seq,
                }
            } else {
                Checkpoint {
                    next_position: next,
                    next_seq: last_seq.map_or(next_seq, |s| s + 1),
                }
            };
            index::set_checkpoint(&mut batch, checkpoint);
            index.write(batch, done)?;
            if done {
                if records > 0 {
                    tracing::info!(records, "index caught up with the log");
                }
                return Ok(());
            }
            position = next;
        }
    }

    /// Starts reading every id the index holds into the id filter (a replica's tail is
    /// absorbed after this and reaches the filter through `publish`).
    pub(crate) fn load_id_filter(&mut self) {
        self.ids = KnownIds::load(self.reader.index.clone(), self.config.id_filter_bytes_max);
    }

    /// Hands a written group's effects to the indexer's side (groups in flight), its ids to
    /// the filter first: an id leaves `inflight` only once indexed, and the filter has it by
    /// then.
    fn publish(&mut self, effects: Effects) {
        for change in &effects.fences {
            self.fences.apply(*change);
        }
        for id in effects.ids.keys() {
            self.ids.insert(*id);
        }
        self.stats
            .id_filter_bytes
            .store(self.ids.bytes() as u64, Ordering::Relaxed);
        lock(&self.inflight).push_back(Arc::new(effects));
    }

    /// Whether the index checkpoint describes a prefix of this log: it ends where the log does,
    /// or the record at its position is the one it expects next.
    /// An index in another layout (an older build's) fits no log: it is rebuilt.
    fn checkpoint_fits(&self, c: Checkpoint) -> Result<bool> {
        if !self.reader.index.format_is_current()? {
            return Ok(false);
        }
        let end = self.log.next_position();
        // A checkpoint at the end of a sealed segment continues at the next one's first
        // record (or at the log's end, when that segment is still empty).
        let at = self.reader.log.normalize(c.next_position);
        Ok(at == end && c.next_seq == self.log.next_seq() || at < end && self.continues_at(c)?)
    }

    /// A record's events with where each sits in it; damage is corruption at `position`.
    fn decode(&self, frame: &Bytes, position: Position) -> Result<Vec<(RecordedEvent, EventSlot)>> {
        format::decode_events_with_slots(frame)
            .map_err(|e| self.reader.log.corruption_at(position, e.0))
    }

    /// Whether the record at the checkpoint's position is the one it expects.
    fn continues_at(&self, c: Checkpoint) -> Result<bool> {
        // A checkpoint at the end of a sealed segment continues at the next one's first record.
        let at = self.reader.log.normalize(c.next_position);
        match self.reader.log.scan(at, self.log.next_position(), 1, 1) {
            Ok((raw, _)) => Ok(raw
                .first()
                .is_some_and(|r| r.header.position == at && r.header.seq == c.next_seq)),
            Err(Error::Corruption { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Retention over this store, to run beside it.
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention::new(self.reader.clone(), self.log.fs().clone(), self.log.dir())
    }

    /// Drops the prefix of sealed segments that hold nothing but reclaimed records and end at
    /// or before `limit`. Returns how many segments went.
    pub fn drop_reclaimed(&mut self, limit: Position) -> Result<usize> {
        let mut before = None;
        for segment in self.reader.segments() {
            let Some(footer) = segment.footer else { break };
            let end = footer.records_end + SEGMENT_FOOTER_BYTES;
            if end > limit || !self.reader.is_segment_reclaimed(&segment) {
                break;
            }
            before = Some(end);
        }
        match before {
            Some(before) => self.log.drop_prefix(before),
            None => Ok(0),
        }
    }

    /// Reloads the reclaimed ranges and horizon from the index (after records were indexed
    /// outside the store's own open, as a snapshot install does).
    pub fn reload_reclaimed(&self) -> Result<()> {
        self.reader.reclaimed.load(&self.reader.index)
    }

    /// The read side, to share with readers.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Stages 2 and 3, to run beside the writer.
    pub fn finisher(&self) -> Finisher {
        self.finisher.clone()
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// What recovery found when the store opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Position the next record will get.
    pub fn next_position(&self) -> Position {
        self.log.next_position()
    }

    /// How many groups are written but not yet finished.
    pub fn inflight_groups(&self) -> usize {
        lock(&self.inflight).len()
    }

    fn check_poison(&self) -> Result<()> {
        match self.log.poisoned() {
            Some(why) => Err(Error::Poisoned(why.to_string())),
            None => Ok(()),
        }
    }

    /// Appends a group of requests with as few fdatasyncs as possible (one, unless the group
    /// crosses a segment boundary). Each answer is final: `Ok` means durable and indexed.
    pub fn commit(&mut self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult>> {
        let count = requests.len();
        let (mut answers, written) =
            self.write_requests(requests.into_iter().enumerate().collect());
        let synced = self.finisher.sync(&written);
        answers.extend(self.finisher.finish(written, &synced));
        let mut ordered: Vec<Option<Result<AppendResult>>> = (0..count).map(|_| None).collect();
        for (i, answer) in answers {
            ordered[i] = Some(answer);
        }
        ordered
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Error::Poisoned("request left unanswered".into()))))
            .collect()
    }

    /// Stage 1: decides, encodes and writes the requests (rolling segments as needed) without
    /// syncing. Returns the answers known now (rejections, retries of committed appends) and
    /// the written groups, whose answers wait for [`Finisher::sync`] and [`Finisher::finish`].
    pub fn write_requests<T>(
        &mut self,
        requests: Vec<(T, AppendRequest)>,
    ) -> (Answers<T>, Vec<WrittenGroup<T>>) {
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(requests.len());
        for (tag, request) in requests {
            match Validated::new(request, &self.config.limits) {
                Ok(v) => valid.push((tag, v)),
                Err(e) => rejected.push((tag, Err(e))),
            }
        }
        self.stats
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        let (now, written) = self.write_validated(valid);
        rejected.extend(now);
        (rejected, written)
    }

    /// [`Store::write_requests`] for requests already validated.
    pub fn write_validated<T>(
        &mut self,
        requests: Vec<(T, Validated)>,
    ) -> (Answers<T>, Vec<WrittenGroup<T>>) {
        let mut now = Vec::new();
        let mut written = Vec::new();
        let expected = requests.len();
        let mut group = Group::new(std::mem::take(&mut self.spare_buf), expected);
        // Every append looks its ids up in the filter (`plan`): read their blocks first, all
        // at once (4.8 % of a node's CPU pipelined was those lookups waiting on memory).
        self.ids.poll();
        self.ids.warm(requests.iter().flat_map(|(_, v)| {
            v.request()
                .streams
                .iter()
                .flat_map(|part| part.events.iter().map(|e| e.id))
        }));
        for (tag, validated) in requests {
            if let Err(e) = self.check_poison() {
                now.push((tag, Err(e)));
                continue;
            }
            let size = validated.bytes();
            let mut request = validated.into_request();
            if request.copy {
                match self.strip_copied(request, &group.effects) {
                    Ok(Ok(rest)) => request = rest,
                    Ok(Err(present)) => {
                        now.push((tag, Ok(present)));
                        continue;
                    }
                    Err(e) => {
                        now.push((tag, Err(e)));
                        continue;
                    }
                }
            }
            let mut plan = self.plan(&request, &group.effects);
            if matches!(plan, Ok(Plan::Write(_)))
                && (group.buf.len() + size) as u64 > self.log.room()
            {
                let next = Group::new(std::mem::take(&mut self.spare_buf), expected);
                self.write_group(std::mem::replace(&mut group, next), &mut written, &mut now);
                if let Err(e) = self.log.roll() {
                    now.push((tag, Err(e)));
                    continue;
                }
                // Decide again: the group just written is in flight now, or failed and changed
                // nothing.
                plan = self.plan(&request, &group.effects);
            }
            match plan {
                Ok(Plan::Write(first_versions)) => {
                    self.encode(tag, request, first_versions, &mut group)
                }
                Ok(Plan::Duplicate(original)) => {
                    self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                    now.push((tag, Ok(original)));
                }
                Err(e) => now.push((tag, Err(e))),
            }
        }
        self.write_group(group, &mut written, &mut now);
        let rejected = now.iter().filter(|(_, a)| a.is_err()).count();
        self.stats
            .rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        (now, written)
    }

    fn write_group<T>(
        &mut self,
        group: Group<T>,
        written: &mut Vec<WrittenGroup<T>>,
        now: &mut Vec<(T, Result<AppendResult>)>,
    ) {
        if group.records == 0 {
            self.spare_buf = group.buf;
            return;
        }
        let mut group = group;
        group.index_keys.finish(&mut group.batch);
        group.effects.position = self.log.next_position();
        group.effects.seq = self.log.next_seq();
        match self.log.write(&group.buf, group.records) {
            Ok(file) => {
                if self.heads.len() + group.effects.heads.len() > STREAM_HEADS_CACHED_MAX {
                    self.heads.clear();
                    self.untombstoned.clear();
                }
                for (stream, version) in &group.effects.heads {
                    self.heads.insert(stream.clone(), *version);
                }
                self.publish(group.effects);
                written.push(WrittenGroup {
                    file,
                    end: self.log.next_position(),
                    next_seq: self.log.next_seq(),
                    events: group.events,
                    bytes: group.buf.len() as u64,
                    batch: group.batch,
                    answers: group.answers,
                    holes: false,
                });
            }
            Err(e) => now.extend(
                group
                    .answers
                    .into_iter()
                    .map(|(t, _)| (t, Err(e.duplicate()))),
            ),
        }
        let mut buf = group.buf;
        if buf.capacity() <= GROUP_BUF_KEPT_MAX {
            buf.clear();
            self.spare_buf = buf;
        }
    }

    /// Where an event id was written: the group being built, groups in flight, or the index.
    /// The id filter holds every id in flight too (`publish`), so it is asked before them.
    fn find_id(&self, id: Uuid, current: &Effects) -> Result<Option<(Position, u64, String)>> {
        let hit = |p: &PendingEvent| (p.position, p.version, p.stream.to_string());
        if let Some(p) = current.ids.get(&id) {
            return Ok(Some(hit(p)));
        }
        if self.ids.certainly_absent(id) {
            return Ok(None);
        }
        if let Some(p) = lock(&self.inflight)
            .iter()
            .rev()
            .find_map(|e| e.ids.get(&id).map(hit))
        {
            return Ok(Some(p));
        }
        self.stats.id_index_lookups.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .reader
            .index
            .event_by_id(id)?
            .map(|x| (x.position, x.version, x.stream)))
    }

    fn stream_head(&self, stream: &str, current: &Effects) -> Result<Option<u64>> {
        if let Some(v) = current.heads.get(stream).or_else(|| self.heads.get(stream)) {
            return Ok(Some(*v));
        }
        if let Some(v) = lock(&self.inflight)
            .iter()
            .rev()
            .find_map(|e| e.heads.get(stream).copied())
        {
            return Ok(Some(v));
        }
        Ok(self.reader.index.stream_head(stream)?.map(|(v, _)| v))
    }

    /// Whether `stream` has a tombstone written before the request being decided: in the
    /// group being built, in flight, or indexed (a point lookup: a bloom-filtered miss for
    /// nearly every stream).
    fn tombstoned(&mut self, stream: &str, current: &Effects) -> Result<bool> {
        let mut tombstone = std::mem::take(&mut self.tombstone_name);
        crate::system::deleted_stream_into(stream, &mut tombstone);
        let pending = current.heads.contains_key(&tombstone)
            || self.heads.contains_key(&tombstone)
            || lock(&self.inflight)
                .iter()
                .any(|e| e.heads.contains_key(&tombstone));
        self.tombstone_name = tombstone;
        if pending {
            return Ok(true);
        }
        if self.untombstoned.contains(stream) {
            return Ok(false);
        }
        let indexed = self.reader.tombstoned_before(stream, Position::MAX)?;
        if !indexed && self.untombstoned.len() < STREAM_HEADS_CACHED_MAX {
            self.untombstoned.insert(stream.to_string());
        }
        Ok(indexed)
    }

    fn position_of(
        &self,
        stream: &str,
        version: u64,
        current: &Effects,
    ) -> Result<Option<Position>> {
        // Only a retry's check asks this, so a scan of the unindexed events is fine.
        let find = |e: &Effects| {
            e.ids
                .values()
                .find(|p| &*p.stream == stream && p.version == version)
                .map(|p| p.position)
        };
        if let Some(p) = find(current) {
            return Ok(Some(p));
        }
        if let Some(p) = lock(&self.inflight).iter().rev().find_map(|e| find(e)) {
            return Ok(Some(p));
        }
        Ok(self
            .reader
            .index
            .stream_slot(stream, version)?
            .map(|s| s.position))
    }

    fn same_content(
        &self,
        event: &NewEvent,
        stream: &str,
        version: u64,
        current: &Effects,
    ) -> Result<bool> {
        let pending = current.ids.get(&event.id).map(|p| p.event == *event);
        let pending = pending.or_else(|| {
            lock(&self.inflight)
                .iter()
                .rev()
                .find_map(|e| e.ids.get(&event.id).map(|p| p.event == *event))
        });
        if let Some(same) = pending {
            return Ok(same);
        }
        let slot = self
            .reader
            .index
            .stream_slot(stream, version)?
            .ok_or_else(|| {
                Error::Index(format!(
                    "event {} has an id entry but no stream entry",
                    event.id
                ))
            })?;
        if self.reader.is_reclaimed(slot.position) {
            // Retention reclaimed the original (it was dead): its ids still count, its
            // content can no longer be compared.
            return Ok(true);
        }
        let stored = self.reader.log.read_event(slot.position, slot.slot)?;
        Ok(stored.id == event.id
            && stored.event_type == event.event_type
            && stored.data == event.data
            && stored.metadata == event.metadata)
    }

    /// Whether the written record at `position` is a slot-range move's copy (`false` for one
    /// not written yet).
    fn is_copy_record(&self, position: Position) -> Result<bool> {
        if position >= self.log.next_position() {
            return Ok(false);
        }
        Ok(self.reader.log.read_record_header(position)?.is_copy())
    }

    /// A copy without the events already here, at the same stream and version (a move tried
    /// again, or a step's events merged differently the second time); `Err` with the answer
    /// when all of them are. An id here at another stream or version is a conflict.
    fn strip_copied(
        &self,
        request: AppendRequest,
        current: &Effects,
    ) -> Result<std::result::Result<AppendRequest, AppendResult>> {
        let mut parts = Vec::with_capacity(request.streams.len());
        let mut seen_at = None;
        for part in request.streams {
            let first = match part.expected {
                ExpectedVersion::Exact(v) => v + 1,
                _ => 0,
            };
            let mut present = 0;
            for (k, e) in part.events.iter().enumerate() {
                let Some((position, version, stream)) = self.find_id(e.id, current)? else {
                    continue;
                };
                if stream != part.stream || version != first + k as u64 || k != present {
                    return Err(Error::IdempotencyConflict {
                        event_id: e.id,
                        reason: format!(
                            "a copy of {}@{} finds the id at {stream}@{version}",
                            part.stream,
                            first + k as u64
                        ),
                    });
                }
                present += 1;
                seen_at = Some(position);
            }
            if present == part.events.len() {
                continue;
            }
            let mut events = part.events;
            events.drain(..present);
            let next = first + present as u64;
            parts.push(StreamAppend {
                stream: part.stream,
                expected: match next {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v - 1),
                },
                events,
            });
        }
        if parts.is_empty() {
            return Ok(Err(AppendResult {
                position: seen_at.unwrap_or(0),
                streams: Vec::new(),
                deduplicated: true,
            }));
        }
        Ok(Ok(AppendRequest {
            streams: parts,
            ..request
        }))
    }

    /// Decides what to do with a request given everything written before it.
    fn plan(&mut self, request: &AppendRequest, current: &Effects) -> Result<Plan> {
        self.ids.poll();
        let mut found = Vec::new();
        let mut missing = None;
        for part in &request.streams {
            for e in &part.events {
                match self.find_id(e.id, current)? {
                    Some(entry) => found.push((e, entry)),
                    None => missing = missing.or(Some(e.id)),
                }
            }
        }
        if !found.is_empty() {
            if let Some(missing) = missing {
                return Err(Error::IdempotencyConflict {
                    event_id: found[0].0.id,
                    reason: format!("{} of the append's event ids were already committed but {missing} was not (partial overlap)", found.len()),
                });
            }
            return self
                .original_result(request, current, &found)
                .map(Plan::Duplicate);
        }
        let mut first_versions = FirstVersions::with_capacity(request.streams.len());
        for part in &request.streams {
            if !request.copy {
                if let Some(shard) = self.fenced(&part.stream, current) {
                    return Err(Error::Moved {
                        stream: part.stream.clone(),
                        shard,
                    });
                }
            }
            if part.stream == FENCES_STREAM {
                for e in &part.events {
                    FenceChange::decode(&e.event_type, &e.data)?;
                }
            }
            if let Some(base) = crate::system::deletable_base(&part.stream) {
                // Decided here, at apply time, like the version check: a tombstone committed
                // before this request (in this group, in flight or indexed) refuses it.
                if self.tombstoned(base, current)? {
                    return Err(Error::StreamDeleted {
                        stream: base.to_string(),
                    });
                }
            }
            first_versions.push(self.first_version(part, request.copy, current)?);
        }
        for c in &request.conditions {
            self.head_as_expected(&c.stream, c.expected, current)?;
        }
        Ok(Plan::Write(first_versions))
    }

    /// The version `part`'s first event gets. A copy starts where its `expected` says when
    /// that is past the stream's head here (or the stream is absent): the versions between
    /// were reclaimed at its source before the copy read them.
    fn first_version(&self, part: &StreamAppend, copy: bool, current: &Effects) -> Result<u64> {
        if copy {
            if let ExpectedVersion::Exact(v) = part.expected {
                if self
                    .stream_head(&part.stream, current)?
                    .is_none_or(|head| head <= v)
                {
                    return Ok(v + 1);
                }
            }
        }
        let head = self.head_as_expected(&part.stream, part.expected, current)?;
        Ok(head.map_or(0, |v| v + 1))
    }

    /// The stream's head (counting what `current` holds), if it is as `expected`.
    fn head_as_expected(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        current: &Effects,
    ) -> Result<Option<u64>> {
        let head = self.stream_head(stream, current)?;
        if !expected.matches(head) && !crate::planted::bug(crate::planted::Bug::SkipExpectedVersion)
        {
            return Err(Error::WrongExpectedVersion {
                stream: stream.to_string(),
                expected: expected.to_string(),
                actual: head,
            });
        }
        Ok(head)
    }

    /// Every event id of `request` is committed: answer with the original result if the request
    /// is exactly the committed one, or explain the conflict.
    fn original_result(
        &self,
        request: &AppendRequest,
        current: &Effects,
        found: &[(&NewEvent, (Position, u64, String))],
    ) -> Result<AppendResult> {
        let conflict = |id: Uuid, reason: String| Error::IdempotencyConflict {
            event_id: id,
            reason,
        };
        let position = (found[0].1).0;
        let mut streams = Vec::with_capacity(request.streams.len());
        let mut at = 0;
        for part in &request.streams {
            let entries = &found[at..at + part.events.len()];
            at += part.events.len();
            let first = (entries[0].1).1;
            for (k, (event, (pos, version, stream))) in entries.iter().enumerate() {
                if *stream != part.stream {
                    return Err(conflict(
                        event.id,
                        format!(
                            "already committed to stream `{stream}`, not `{}`",
                            part.stream
                        ),
                    ));
                }
                if *pos != position || *version != first + k as u64 {
                    return Err(conflict(
                        event.id,
                        "already committed, but as part of a different append or in another order"
                            .into(),
                    ));
                }
                if !self.same_content(event, stream, *version, current)? {
                    return Err(conflict(
                        event.id,
                        "already committed with different type, data or metadata".into(),
                    ));
                }
            }
            let last = first + part.events.len() as u64 - 1;
            // The original append must not have held more events of this stream.
            let before = match first.checked_sub(1) {
                Some(v) => self.position_of(&part.stream, v, current)?,
                None => None,
            };
            let after = self.position_of(&part.stream, last + 1, current)?;
            let more = before == Some(position) || after == Some(position);
            // A move's copy holds several source records' events of a stream: a retry of one
            // of those appends, arriving after the move, is answered as the original was.
            if more && !self.is_copy_record(position)? {
                return Err(conflict(
                    entries[0].0.id,
                    "the committed append held more events of this stream than the retry".into(),
                ));
            }
            streams.push(StreamAppendResult {
                stream: part.stream.clone(),
                first_version: first,
                last_version: last,
            });
        }
        Ok(AppendResult {
            position,
            streams,
            deduplicated: true,
        })
    }

    /// Encodes a planned request into the group.
    fn encode<T>(
        &self,
        tag: T,
        request: AppendRequest,
        first_versions: FirstVersions,
        group: &mut Group<T>,
    ) {
        self.encode_as(tag, request, first_versions, group, (0, 0))
    }

    /// [`Store::encode`] for a Raft entry of leader `(term, node id)`.
    fn encode_as<T>(
        &self,
        tag: T,
        request: AppendRequest,
        first_versions: FirstVersions,
        group: &mut Group<T>,
        leader: (u64, u64),
    ) {
        self.encode_many([(tag, request, first_versions)], group, leader)
    }

    /// Encodes planned requests (on distinct streams) as ONE record of the group: they share
    /// its position and commit together. The record's timestamp is the latest request's.
    fn encode_many<T, I>(&self, items: I, group: &mut Group<T>, (term, leader): (u64, u64))
    where
        // A Vec, or an array of one (no allocation for a lone append).
        I: AsRef<[(T, AppendRequest, FirstVersions)]>
            + IntoIterator<Item = (T, AppendRequest, FirstVersions)>,
    {
        let position = self.log.next_position() + group.buf.len() as u64;
        let seq = self.log.next_seq() + group.records;
        let synced_end = self.synced_end.load(Ordering::Acquire);
        let timestamp_us = self.next_timestamp(
            items
                .as_ref()
                .iter()
                .map(|(_, r, _)| r.timestamp_us)
                .max()
                .unwrap_or(0),
        );
        // A copy is written alone (the Raft path refuses to mix it with other appends).
        let copy = items.as_ref().iter().all(|(_, r, _)| r.copy);
        debug_assert!(copy || items.as_ref().iter().all(|(_, r, _)| !r.copy));
        // In place for records of up to two events (most appends): no allocation per record.
        let mut fields: SmallVec<[EventFields<'_>; 2]> = SmallVec::new();
        for (_, request, first_versions) in items.as_ref() {
            for (part, first) in request.streams.iter().zip(first_versions) {
                for (k, e) in part.events.iter().enumerate() {
                    fields.push(EventFields {
                        stream: &part.stream,
                        version: first + k as u64,
                        id: e.id,
                        event_type: &e.event_type,
                        data: &e.data,
                        metadata: &e.metadata,
                    });
                }
            }
        }
        let header = RecordHeader {
            position,
            seq,
            synced_end,
            timestamp_us,
            term,
            leader,
            flags: if copy { FLAG_COPY } else { 0 },
        };
        let slots = format::encode_record(&mut group.buf, header, &fields);
        let indexed: SmallVec<[IndexedEvent<'_>; 2]> = fields
            .iter()
            .zip(&slots)
            .map(|(f, slot)| IndexedEvent {
                stream: f.stream,
                version: f.version,
                id: f.id,
                slot: *slot,
            })
            .collect();
        let seq = self.raft.then_some(seq);
        index::add_record(
            &mut group.batch,
            (position, seq, timestamp_us),
            &indexed,
            &mut group.index_keys,
        );
        group.records += 1;
        group.events += fields.len() as u64;
        // They borrow `items`, which the effects take next.
        drop((indexed, fields));
        for (tag, request, first_versions) in items {
            let streams = note_effects(&mut group.effects, position, request, &first_versions);
            group.answers.push((
                tag,
                AppendResult {
                    position,
                    streams,
                    deduplicated: false,
                },
            ));
        }
    }

    /// Removes every record at or after `position` (a record position), from the log and the
    /// indexes. Nothing may be in flight (the engine drains its pipeline first).
    pub fn truncate_from(&mut self, position: Position) -> Result<()> {
        if !lock(&self.inflight).is_empty() {
            return Err(Error::invalid(
                "position",
                "cannot truncate while appends are in flight",
            ));
        }
        let end = self.log.next_position();
        if position < end && !self.reader.is_record_position(position)? || position > end {
            return Err(Error::invalid(
                "position",
                format!("{position} is not the position of a record in this log"),
            ));
        }
        self.truncate_inner(position).map(|_| ())
    }

    /// Removes every record at or after `position`: written-but-unfinished groups there are
    /// forgotten (their owner drops them; the count is returned), indexed records leave the
    /// index. Raft uses this to drop uncommitted entries that a new leader overrode.
    /// `position` must be a record's position (or the end).
    fn truncate_inner(&mut self, position: Position) -> Result<usize> {
        self.check_poison()?;
        if position == self.log.next_position() {
            return Ok(0);
        }
        let dropped = {
            let mut inflight = lock(&self.inflight);
            let before = inflight.len();
            // Groups written through `write_entries` hold one record each, so none straddles
            // `position`.
            while inflight.back().is_some_and(|e| e.position >= position) {
                inflight.pop_back();
            }
            before - inflight.len()
        };
        let indexed_end = self
            .reader
            .index
            .checkpoint()?
            .map_or(0, |c| c.next_position);
        let mut batch = IndexBatch::default();
        if position < indexed_end {
            // Readers first, so none reads what is about to go.
            self.reader.log.publish_end(position);
            let (raw, _) = self
                .reader
                .log
                .scan(position, indexed_end, usize::MAX, usize::MAX)?;
            // Each stream's first version going: an index entry spanning records may hold
            // versions before it too, which stay.
            let mut first_gone: HashMap<String, u64> = HashMap::new();
            for r in &raw {
                let events = self.decode(&r.frame, r.header.position)?;
                for (e, _) in &events {
                    first_gone.entry(e.stream.clone()).or_insert(e.version);
                }
                index::remove_record(
                    &mut batch,
                    r.header.position,
                    r.header.seq,
                    r.header.timestamp_us,
                    &index::indexed_events(&events),
                );
            }
            for (stream, version) in &first_gone {
                self.reader
                    .index
                    .keep_before(&mut batch, stream, *version)?;
            }
        }
        // Log first: a crash between the two leaves the index ahead of the log, which open
        // detects and repairs by rebuilding the index.
        self.log.truncate_from(position)?;
        // The log now ends at or before `position` (before it when the truncation undid a
        // segment roll); whatever is written from there has not been synced.
        let end = self.log.next_position();
        self.synced_end.fetch_min(end, Ordering::AcqRel);
        if position < indexed_end {
            self.reader.log.publish_end(end);
            index::set_checkpoint(
                &mut batch,
                Checkpoint {
                    next_position: end,
                    next_seq: self.log.next_seq(),
                },
            );
            self.reader.index.write(batch, true)?;
        }
        self.heads.clear();
        self.untombstoned.clear();
        self.reload_fences()?;
        Ok(dropped)
    }
}

/// Records what a planned request changes (stream heads, event ids at `position`) in
/// `effects`, so later decisions see it; returns its per-stream result.
fn note_effects(
    effects: &mut Effects,
    position: Position,
    request: AppendRequest,
    first_versions: &[u64],
) -> Vec<StreamAppendResult> {
    let mut streams = Vec::with_capacity(request.streams.len());
    for (part, first) in request.streams.into_iter().zip(first_versions) {
        let last = first + part.events.len() as u64 - 1;
        // A stream the group already wrote keeps its key (no copy of the name).
        match effects.heads.get_mut(part.stream.as_str()) {
            Some(head) => *head = last,
            None => {
                effects.heads.insert(part.stream.clone(), last);
            }
        }
        if part.stream == FENCES_STREAM {
            // Checked when planned.
            let changes = part.events.iter();
            effects
                .fences
                .extend(changes.filter_map(|e| FenceChange::decode(&e.event_type, &e.data).ok()));
        }
        let stream = match &effects.last_stream {
            Some(name) if **name == *part.stream => name.clone(),
            _ => {
                let name: Arc<str> = Arc::from(part.stream.as_str());
                effects.last_stream = Some(name.clone());
                name
            }
        };
        for (k, event) in part.events.into_iter().enumerate() {
            effects.ids.insert(
                event.id,
                PendingEvent {
                    position,
                    stream: stream.clone(),
                    version: first + k as u64,
                    event,
                },
            );
        }
        streams.push(StreamAppendResult {
            stream: part.stream,
            first_version: *first,
            last_version: last,
        });
    }
    streams
}

impl Drop for Store {
    fn drop(&mut self) {
        // A clean close persists the index so the next open needs no catch-up. After a crash
        // (no drop) open re-indexes the log tail past the index checkpoint instead.
        if let Err(e) = self.reader.index.flush() {
            tracing::warn!(error = %e, "flushing the index on close failed; the next open re-indexes the tail");
        }
    }
}
