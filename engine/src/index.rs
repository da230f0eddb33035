//! The indexes, derived from the log and rebuildable from it at any time:
//!
//! ```text
//! "c"                               -> { next_position: u64 | next_seq: u64 }   checkpoint
//! "s" stream 0x00 last: u64 BE      -> { position: u64 | first: u64 |            stream index:
//!                                        (offset: u32 | len: u32) × (last-first+1) } one run
//!                                   or { u64::MAX | first: u64 | k: u32 |         (spanning
//!                                        (position: u64 | count: u32) × k |        k records)
//!                                        (offset: u32 | len: u32) × (last-first+1) }
//! "v"                               -> { format: u32 }               this layout's version
//! "e" event_id: [u8; 16]            -> { position: u64 | version: u64 | stream }  idempotency
//! "t" timestamp_us: u64 BE position: u64 BE -> {}                        time index (sparse)
//! "q" seq: u64 BE                    -> { position: u64 }          Raft index (replicas only)
//! "r" name                           -> opaque                                   Raft state
//! "h" start: u64 BE                  -> { end: u64 | horizon_us: u64 }  a range of the log
//!                                       retention reclaimed, and the as-of horizon it set
//! ```
//! Values are little-endian. Stream names hold no control characters, so `0x00` ends a name
//! and keys of one stream sort by version. A stream entry covers a *run*: the consecutive
//! versions of one stream that one record holds (an append's events), keyed by the run's last
//! version, each event's frame placed inside the record. An append of 100 events is one key,
//! not 100 (the memtable's insert cost is per key); the run holding version `v` is the first
//! key at or after `v`. Version 0 is always a run of its own, so a point lookup says whether
//! a stream exists.
//!
//! One write batch merges a stream's consecutive runs from several records into one entry
//! ([`BatchKeys`]), up to [`SPANNING_RUN_VERSIONS_MAX`] versions: its `k` pieces say which
//! record holds how many of its versions, in order. Pipelined one-event appends to a stream
//! then cost one key per write batch instead of one per append (a key per append was ~1.4 µs
//! of a node's 7–8 µs of CPU per pipelined 1 KiB append). A record's own run is never split;
//! an entry of one record keeps the first form. Log truncation inside a spanning entry
//! rewrites the part before it ([`Index::keep_before`]). An index written in another layout (no `"v"`, or another number) does
//! not fit the log and is rebuilt from it. The checkpoint is written in the same atomic batch
//! as the entries it covers: the index always describes exactly the records before
//! `next_position`.
//!
//! The time index is sparse: a record of events gets a `"t"` key when it is the first or the
//! last of its write batch or starts [`TIME_KEY_SPACING_BYTES`] or more after the last keyed
//! record of the batch ([`TimeKeys`]); the last key is thus always the last indexed record's.
//! Timestamps increase along the log, so the first record stamped at or after `t` lies between
//! the last key before `t` and the first key at or after it; the reader finds it by reading the
//! records between (`Reader::first_stamped_at_or_after`), at most about the spacing in bytes. A key per record was a third of the keys a single-event append
//! wrote, and ~1.1 µs of a node's 6.7 µs CPU per pipelined 1 KiB append.

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use foldhash::HashMap;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Direction, Position, RecordedEvent};
use crate::format::{bytes_at, u32_at, u64_at, EventSlot};
use crate::index_store::{IndexBatch, IndexStore};

const CHECKPOINT_KEY: &[u8] = b"c";
const FORMAT_KEY: &[u8] = b"v";
/// The layout described above. 1 had one stream key per event (and no `"v"` key); 2 kept
/// every kind of key in RocksDB's default column family (`RocksIndexStore` now keeps ids,
/// streams and times in families of their own; a 2 index is rebuilt, which clears them all);
/// 3 had a time key per record. A 3 index is a valid 4 one (a sparse index may hold any subset
/// of the keys) and is kept; the next checkpoint marks it 4, which an older build, trusting the
/// time keys alone, rebuilds instead of misreading. 4 had no stream entries spanning records;
/// a 3 or 4 index is a valid 5 one and kept the same way (an older build rebuilds a 5 index
/// rather than read a spanning entry's marker as a position).
const FORMAT: u32 = 5;
const FORMAT_KEPT: [u32; 2] = [3, 4];
/// Versions a stream entry spanning records holds at most (a record's own run may hold more:
/// it is never split, and merges with nothing): bounds such an entry's value to
/// 20 + 20 × 256 = 5,140 bytes and what a lookup of one of its versions decodes.
pub const SPANNING_RUN_VERSIONS_MAX: u64 = 256;
/// In place of a stream entry's position: the entry spans records (no record sits at the
/// log's last possible byte).
const SPANNING: u64 = u64::MAX;
/// Runs read per index scan while expanding a stream range.
const RUNS_PER_SCAN: usize = 64;
/// Bytes of log (64 KiB) after a keyed record within a write batch before another record gets
/// a time key: what a timestamp lookup reads at most beyond one record.
pub const TIME_KEY_SPACING_BYTES: u64 = 64 << 10;

/// Which records of events of one write batch get a time key: the first, each that starts
/// [`TIME_KEY_SPACING_BYTES`] or more after the last keyed one, and the last (put by [`BatchKeys::finish`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeKeys {
    keyed_at: Option<Position>,
    /// The batch's last record so far, when it has no key: `(timestamp_us, position)`.
    unkeyed_last: Option<(u64, Position)>,
}

impl TimeKeys {
    /// Whether the record at `position` gets a key (noting which did not).
    fn due(&mut self, position: Position, timestamp_us: u64) -> bool {
        let due = self
            .keyed_at
            .is_none_or(|at| position >= at.saturating_add(TIME_KEY_SPACING_BYTES));
        if due {
            self.keyed_at = Some(position);
            self.unkeyed_last = None;
        } else {
            self.unkeyed_last = Some((timestamp_us, position));
        }
        due
    }

    /// Keys the batch's last record if it has no key yet: the index's last time key is then
    /// always its last record's (the clock resumes past it at open).
    fn finish(&mut self, batch: &mut IndexBatch) {
        if let Some((timestamp_us, position)) = self.unkeyed_last.take() {
            batch.put_with(|key| write_time_key(key, timestamp_us, position), |_| {});
        }
    }
}

/// The keys of one write batch that [`add_record`] holds back until the batch ends
/// ([`BatchKeys::finish`]): which records get a time key ([`TimeKeys`]), and each stream's
/// entry while later records may extend it.
#[derive(Debug, Default)]
pub struct BatchKeys {
    times: TimeKeys,
    runs: HashMap<String, OpenRun>,
}

impl BatchKeys {
    /// Adds a record's run of one stream: to that stream's open entry when it goes on from
    /// it, else as a new one (putting the one it replaces). Version 0 is always a run of its
    /// own (see `Index::stream_slot`).
    fn add_run(&mut self, batch: &mut IndexBatch, position: Position, run: &[IndexedEvent<'_>]) {
        let Some(first) = run.first() else {
            return;
        };
        if first.version == 0 {
            OpenRun::of(position, run).put(batch, first.stream);
            return;
        }
        match self.runs.get_mut(first.stream) {
            Some(open)
                if open.last.checked_add(1) == Some(first.version)
                    && open.versions() + run.len() as u64 <= SPANNING_RUN_VERSIONS_MAX =>
            {
                open.extend(position, run);
            }
            Some(open) => {
                open.put(batch, first.stream);
                *open = OpenRun::of(position, run);
            }
            None => {
                self.runs
                    .insert(first.stream.to_owned(), OpenRun::of(position, run));
            }
        }
    }

    /// Puts what the batch's records held back: every open stream entry (in name order, so
    /// a batch's bytes follow from its records) and the last record's time key when due.
    pub fn finish(&mut self, batch: &mut IndexBatch) {
        self.times.finish(batch);
        if self.runs.len() <= 1 {
            // A lone append's group: no order to keep, nothing to sort.
            for (stream, run) in self.runs.drain() {
                run.put(batch, &stream);
            }
            return;
        }
        let mut runs: Vec<(String, OpenRun)> = self.runs.drain().collect();
        runs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (stream, run) in &runs {
            run.put(batch, stream);
        }
    }
}

/// How far the index covers the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Position after the last indexed record.
    pub next_position: Position,
    /// Sequence number of the next record.
    pub next_seq: u64,
}

/// Where one event of a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSlot {
    /// Position of its record.
    pub position: Position,
    /// Offset and length of the event frame inside the record.
    pub slot: EventSlot,
}

/// One stream entry: versions `first..=last` of a stream, in one record or several.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    /// `(first version, position)` of each record's part, in order (one for a record's run).
    pieces: Vec<(u64, Position)>,
    first: u64,
    last: u64,
    /// `(offset, len)` of each version's frame, little-endian u32 pairs.
    slots: Vec<u8>,
}

impl Run {
    fn slot(&self, version: u64) -> Option<StreamSlot> {
        if version > self.last {
            return None;
        }
        let i = usize::try_from(version.checked_sub(self.first)?).ok()?;
        let at = i.checked_mul(8)?;
        let piece = self
            .pieces
            .partition_point(|(v, _)| *v <= version)
            .checked_sub(1)?;
        Some(StreamSlot {
            position: self.pieces.get(piece)?.1,
            slot: EventSlot {
                offset: u32_at(&self.slots, at)?,
                len: u32_at(&self.slots, at.checked_add(4)?)?,
            },
        })
    }

    /// Its versions from `at` on in `direction` (all of them when `at` is outside the run).
    fn versions_from(&self, at: u64, direction: Direction) -> Box<dyn Iterator<Item = u64>> {
        match direction {
            Direction::Forwards => Box::new(at.max(self.first)..=self.last),
            Direction::Backwards => Box::new((self.first..=at.min(self.last)).rev()),
        }
    }

    /// Its versions before `version` (some, not all), as an entry of their own.
    fn before(&self, version: u64) -> OpenRun {
        let keep = version.saturating_sub(self.first);
        let mut run = OpenRun {
            first: self.first,
            last: version.saturating_sub(1),
            pieces: Vec::new(),
            slots: self
                .slots
                .get(..(keep as usize).saturating_mul(8))
                .unwrap_or_default()
                .to_vec(),
        };
        for (i, &(from, position)) in self.pieces.iter().enumerate() {
            let to = self
                .pieces
                .get(i + 1)
                .map_or(self.last + 1, |p| p.0)
                .min(version);
            if from < to {
                run.pieces.push((position, (to - from) as u32));
            }
        }
        run
    }
}

/// A stream entry being built: versions `first..=last`, `(position, count)` per record.
#[derive(Debug)]
struct OpenRun {
    first: u64,
    last: u64,
    pieces: Vec<(Position, u32)>,
    slots: Vec<u8>,
}

impl OpenRun {
    /// A record's run (consecutive versions of one stream, at least one).
    fn of(position: Position, run: &[IndexedEvent<'_>]) -> OpenRun {
        let mut open = OpenRun {
            first: run.first().map_or(0, |e| e.version),
            last: 0,
            pieces: Vec::with_capacity(1),
            slots: Vec::with_capacity(run.len() * 8),
        };
        open.extend(position, run);
        open
    }

    fn extend(&mut self, position: Position, run: &[IndexedEvent<'_>]) {
        debug_assert!(run
            .first()
            .is_some_and(|e| e.version == self.slots.len() as u64 / 8 + self.first));
        for e in run {
            self.slots.extend_from_slice(&e.slot.offset.to_le_bytes());
            self.slots.extend_from_slice(&e.slot.len.to_le_bytes());
        }
        self.last = self.first + self.slots.len() as u64 / 8 - 1;
        match self.pieces.last_mut() {
            Some((p, count)) if *p == position => *count += run.len() as u32,
            _ => self.pieces.push((position, run.len() as u32)),
        }
    }

    fn versions(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Puts it as the entry of `stream`.
    fn put(&self, batch: &mut IndexBatch, stream: &str) {
        batch.put_with(
            |key| write_stream_key(key, stream, self.last),
            |value| {
                if let [(position, _)] = self.pieces.as_slice() {
                    value.extend_from_slice(&position.to_le_bytes());
                    value.extend_from_slice(&self.first.to_le_bytes());
                } else {
                    value.extend_from_slice(&SPANNING.to_le_bytes());
                    value.extend_from_slice(&self.first.to_le_bytes());
                    value.extend_from_slice(&(self.pieces.len() as u32).to_le_bytes());
                    for (position, count) in &self.pieces {
                        value.extend_from_slice(&position.to_le_bytes());
                        value.extend_from_slice(&count.to_le_bytes());
                    }
                }
                value.extend_from_slice(&self.slots);
            },
        );
    }
}

/// The committed copy of an event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdEntry {
    /// Position of its record.
    pub position: Position,
    /// Its version.
    pub version: u64,
    /// Its stream.
    pub stream: String,
}

/// An event's index entries, as the writer knows them.
#[derive(Debug, Clone, Copy)]
pub struct IndexedEvent<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Version.
    pub version: u64,
    /// Id.
    pub id: Uuid,
    /// Where it sits in its record.
    pub slot: EventSlot,
}

fn corrupt_index(what: &str) -> Error {
    Error::Index(format!(
        "malformed index value for {what}; rebuild the index from the log"
    ))
}

/// Key of a stream index entry.
pub fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    write_stream_key(&mut key, stream, version);
    key
}

fn write_stream_key(key: &mut Vec<u8>, stream: &str, version: u64) {
    key.push(b's');
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
}

fn id_key(id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    write_id_key(&mut key, id);
    key
}

fn write_id_key(key: &mut Vec<u8>, id: Uuid) {
    key.push(b'e');
    key.extend_from_slice(id.as_bytes());
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(b'q');
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(b'r');
    key.extend_from_slice(name.as_bytes());
    key
}

fn hole_key(start: Position) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(b'h');
    key.extend_from_slice(&start.to_be_bytes());
    key
}

fn time_key(timestamp_us: u64, position: Position) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    write_time_key(&mut key, timestamp_us, position);
    key
}

fn write_time_key(key: &mut Vec<u8>, timestamp_us: u64, position: Position) {
    key.push(b't');
    key.extend_from_slice(&timestamp_us.to_be_bytes());
    key.extend_from_slice(&position.to_be_bytes());
}

/// The indexes over one index store.
#[derive(Debug)]
pub struct Index {
    store: Box<dyn IndexStore>,
}

impl Index {
    /// Indexes kept in `store`.
    pub fn new(store: Box<dyn IndexStore>) -> Index {
        Index { store }
    }

    /// How far the index covers the log, or `None` for an empty index.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(v) = self.store.get(CHECKPOINT_KEY)? else {
            return Ok(None);
        };
        match (v.len(), u64_at(&v, 0), u64_at(&v, 8)) {
            (16, Some(next_position), Some(next_seq)) => Ok(Some(Checkpoint {
                next_position,
                next_seq,
            })),
            _ => Err(corrupt_index("the checkpoint")),
        }
    }

    /// Whether the index is in this build's layout (an index with no checkpoint is empty, and
    /// in any layout).
    pub fn format_is_current(&self) -> Result<bool> {
        Ok(match self.store.get(FORMAT_KEY)? {
            Some(v) => {
                v.len() == 4
                    && u32_at(&v, 0).is_some_and(|f| f == FORMAT || FORMAT_KEPT.contains(&f))
            }
            None => self.checkpoint()?.is_none(),
        })
    }

    /// The last version of a stream and the position holding it.
    pub fn stream_head(&self, stream: &str) -> Result<Option<(u64, Position)>> {
        let found = self
            .store
            .scan(&stream_key(stream, 0), &stream_key_end(stream), true, 1)?;
        found
            .first()
            .map(|(k, v)| {
                Ok((
                    tail8(k).ok_or_else(|| corrupt_index("a stream key"))?,
                    run_position(v)?,
                ))
            })
            .transpose()
    }

    /// Where the committed event with this id is.
    pub fn event_by_id(&self, id: Uuid) -> Result<Option<IdEntry>> {
        let Some(v) = self.store.get(&id_key(id))? else {
            return Ok(None);
        };
        let (Some(position), Some(version), Some(stream)) =
            (u64_at(&v, 0), u64_at(&v, 8), v.get(16..))
        else {
            return Err(corrupt_index("an event id"));
        };
        let stream =
            String::from_utf8(stream.to_vec()).map_err(|_| corrupt_index("an event id"))?;
        Ok(Some(IdEntry {
            position,
            version,
            stream,
        }))
    }

    /// Calls `f` with every event id the index holds, in key order, until it returns false (one
    /// pass over the id keys: what filling the id filter costs).
    pub fn for_each_id(&self, mut f: impl FnMut(Uuid) -> bool) -> Result<()> {
        let mut bad = false;
        self.store.for_each_key(b"e", b"f", &mut |key| match key
            .get(1..17)
            .and_then(|b| Uuid::from_slice(b).ok())
        {
            Some(id) => f(id),
            None => {
                bad = true;
                false
            }
        })?;
        if bad {
            return Err(corrupt_index("an event id key"));
        }
        Ok(())
    }

    /// Where one version of a stream is. A point lookup when the version ends a run — a
    /// stream's head always does, and version 0 is always a run of its own, so whether a
    /// stream exists (a tombstone, say) is answered by the key's bloom filter — else a seek.
    pub fn stream_slot(&self, stream: &str, version: u64) -> Result<Option<StreamSlot>> {
        let key = stream_key(stream, version);
        if let Some(v) = self.store.get(&key)? {
            return Ok(decode_run(&key, &v)?.slot(version));
        }
        if version == 0 {
            return Ok(None);
        }
        Ok(self
            .runs(stream, version, Direction::Forwards, 1)?
            .first()
            .and_then(|run| run.slot(version)))
    }

    /// Up to `limit` events of a stream from `from` (inclusive) in `direction`; `None` starts
    /// at the first (forwards) or last (backwards) version.
    pub fn stream_range(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(u64, StreamSlot)>> {
        let mut out = Vec::new();
        let mut next = match (direction, from) {
            (_, Some(v)) => Some(v),
            (Direction::Forwards, None) => Some(0),
            (Direction::Backwards, None) => Some(u64::MAX),
        };
        while let Some(at) = next.filter(|_| out.len() < limit) {
            let chunk = (limit - out.len()).min(RUNS_PER_SCAN);
            let runs = self.runs(stream, at, direction, chunk)?;
            next = None;
            for run in &runs {
                let versions = run.versions_from(at, direction);
                out.extend(
                    versions
                        .take(limit - out.len())
                        .filter_map(|v| run.slot(v).map(|slot| (v, slot))),
                );
                next = match direction {
                    Direction::Forwards => run.last.checked_add(1),
                    Direction::Backwards => run.first.checked_sub(1),
                };
            }
            if runs.len() < chunk {
                break;
            }
        }
        Ok(out)
    }

    /// Before log truncation removes every record holding versions of `stream` from `version`
    /// on: when a stream entry spanning records holds `version` and versions before it, puts
    /// an entry of the versions before (the entry itself goes with its last record).
    pub fn keep_before(&self, batch: &mut IndexBatch, stream: &str, version: u64) -> Result<()> {
        let holding = self.runs(stream, version, Direction::Forwards, 1)?;
        if let Some(run) = holding
            .first()
            .filter(|r| r.first < version && version <= r.last)
        {
            run.before(version).put(batch, stream);
        }
        Ok(())
    }

    /// Up to `limit` runs of a stream in `direction`: the one holding `at` first (when one
    /// does), then the ones after it (forwards) or before it (backwards).
    fn runs(&self, stream: &str, at: u64, direction: Direction, limit: usize) -> Result<Vec<Run>> {
        let from = stream_key(stream, at);
        let decode = |found: Vec<(Vec<u8>, Vec<u8>)>| -> Result<Vec<Run>> {
            found.iter().map(|(k, v)| decode_run(k, v)).collect()
        };
        if direction == Direction::Forwards {
            // The first key at or after `at` is the run holding it, or the next one.
            return decode(
                self.store
                    .scan(&from, &stream_key_end(stream), false, limit)?,
            );
        }
        let mut runs = Vec::new();
        let holding = decode(self.store.scan(&from, &stream_key_end(stream), false, 1)?)?;
        // Runs before the one holding `at`, or before `at` when none holds it.
        let before = match holding.into_iter().next() {
            Some(run) if run.first <= at => {
                let first = run.first;
                runs.push(run);
                stream_key(stream, first)
            }
            _ => from,
        };
        let want = limit.saturating_sub(runs.len());
        if want > 0 {
            runs.extend(decode(self.store.scan(
                &stream_key(stream, 0),
                &before,
                true,
                want,
            )?)?);
        }
        Ok(runs)
    }

    /// The timestamp and position of the first time key at or after `timestamp_us` (the index
    /// is sparse: an unkeyed record before it may be stamped at or after `timestamp_us` too).
    pub fn time_key_at_or_after(&self, timestamp_us: u64) -> Result<Option<(u64, Position)>> {
        let found = self
            .store
            .scan(&time_key(timestamp_us, 0), b"u", false, 1)?;
        found.first().map(|(k, _)| time_key_fields(k)).transpose()
    }

    /// The timestamp and position of the last time key before `timestamp_us`.
    pub fn time_key_before(&self, timestamp_us: u64) -> Result<Option<(u64, Position)>> {
        let found = self
            .store
            .scan(&time_key(0, 0), &time_key(timestamp_us, 0), true, 1)?;
        found.first().map(|(k, _)| time_key_fields(k)).transpose()
    }

    /// Position of the indexed record with sequence number (Raft index) `seq`.
    pub fn position_of_seq(&self, seq: u64) -> Result<Option<Position>> {
        match self.store.get(&seq_key(seq))? {
            Some(v) if v.len() == 8 => Ok(u64_at(&v, 0)),
            Some(_) => Err(corrupt_index("a sequence number")),
            None => Ok(None),
        }
    }

    /// The greatest sequence number at or below `seq` that has a position, with it.
    pub fn seq_at_or_before(&self, seq: u64) -> Result<Option<(u64, Position)>> {
        let found = self
            .store
            .scan(&seq_key(0), &seq_key(seq.saturating_add(1)), true, 1)?;
        match found.first() {
            Some((k, v)) if k.len() == 9 && v.len() == 8 => Ok(tail8(k).zip(u64_at(v, 0))),
            Some(_) => Err(corrupt_index("a sequence number")),
            None => Ok(None),
        }
    }

    /// The ranges of the log retention reclaimed, `(start, end, horizon_us)`, in order.
    pub fn reclaimed_ranges(&self) -> Result<Vec<(Position, Position, u64)>> {
        self.store
            .scan(&hole_key(0), b"i", false, usize::MAX)?
            .into_iter()
            .map(
                |(k, v)| match (k.len(), tail8(&k), u64_at(&v, 0), u64_at(&v, 8), v.len()) {
                    (9, Some(start), Some(end), Some(horizon), 16) => Ok((start, end, horizon)),
                    _ => Err(corrupt_index("a reclaimed range")),
                },
            )
            .collect()
    }

    /// A value the layer above stored with [`set_meta`] (the Raft state machine's state).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(&meta_key(name))
    }

    /// Makes every index write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Applies a batch built with the functions below.
    pub fn write(&self, batch: IndexBatch, sync: bool) -> Result<()> {
        self.store.write(batch, sync)
    }
}

fn stream_key_end(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 2);
    key.push(b's');
    key.extend_from_slice(stream.as_bytes());
    key.push(1);
    key
}

/// The timestamp and position of a time index key (`"t"`, timestamp, position).
fn time_key_fields(k: &[u8]) -> Result<(u64, Position)> {
    match (k.len(), key_u64(k, 1), key_u64(k, 9)) {
        (17, Some(timestamp), Some(position)) => Ok((timestamp, position)),
        _ => Err(corrupt_index("a time key")),
    }
}

/// The big-endian u64 at `at` of an index key.
fn key_u64(k: &[u8], at: usize) -> Option<u64> {
    bytes_at(k, at).map(u64::from_be_bytes)
}

/// The big-endian u64 that ends an index key.
fn tail8(k: &[u8]) -> Option<u64> {
    key_u64(k, k.len().checked_sub(8)?)
}

/// A stream entry (its key ends with the run's last version).
fn decode_run(k: &[u8], v: &[u8]) -> Result<Run> {
    let bad = || corrupt_index("a stream entry");
    let last = tail8(k).ok_or_else(bad)?;
    let (Some(head), Some(first)) = (u64_at(v, 0), u64_at(v, 8)) else {
        return Err(bad());
    };
    let versions = last
        .checked_sub(first)
        .and_then(|d| d.checked_add(1))
        .ok_or_else(bad)?;
    let (pieces, slots_at) = if head == SPANNING {
        spanning_pieces(v, first, last).ok_or_else(bad)?
    } else {
        (vec![(first, head)], 16)
    };
    let slots = v.get(slots_at..).ok_or_else(bad)?;
    if slots.len() as u64 != versions.saturating_mul(8) {
        return Err(bad());
    }
    Ok(Run {
        pieces,
        first,
        last,
        slots: slots.to_vec(),
    })
}

/// A spanning entry's pieces as `(first version, position)`, and where its slots begin; `None`
/// when they do not add up to `first..=last`.
fn spanning_pieces(v: &[u8], first: u64, last: u64) -> Option<(Vec<(u64, Position)>, usize)> {
    let k = u32_at(v, 16)? as usize;
    let slots_at = k.checked_mul(12)?.checked_add(20)?;
    if k < 2 || slots_at > v.len() {
        return None;
    }
    let mut pieces = Vec::with_capacity(k);
    let mut next = first;
    for i in 0..k {
        let at = 20 + 12 * i;
        let (position, count) = (u64_at(v, at)?, u32_at(v, at + 8)?);
        if count == 0 {
            return None;
        }
        pieces.push((next, position));
        next = next.checked_add(u64::from(count))?;
    }
    (next.checked_sub(1) == Some(last)).then_some((pieces, slots_at))
}

/// The position of the record holding a stream entry's last version.
fn run_position(v: &[u8]) -> Result<Position> {
    let bad = || corrupt_index("a stream entry");
    let head = u64_at(v, 0).ok_or_else(bad)?;
    if head != SPANNING {
        return Ok(head);
    }
    let k = u32_at(v, 16).ok_or_else(bad)? as usize;
    k.checked_sub(1)
        .and_then(|i| u64_at(v, 20 + 12 * i))
        .ok_or_else(bad)
}

/// The runs of a record's events: `(start, end)` ranges of `events` that are consecutive
/// versions of one stream.
fn run_bounds<'a>(events: &'a [IndexedEvent<'a>]) -> impl Iterator<Item = (usize, usize)> + 'a {
    // An iterator, not a Vec: a single-event record's one run cost the writer an allocation
    // (freed on the indexer thread, so mimalloc collected it back: ~2 % of the writer).
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= events.len() {
            return None;
        }
        let mut end = start + 1;
        while let (Some(p), Some(e)) = (events.get(end - 1), events.get(end)) {
            // Version 0 is always a run of its own (see `Index::stream_slot`).
            let extends = p.stream == e.stream
                && p.version > 0
                && p.version.checked_add(1) == Some(e.version);
            if !extends {
                break;
            }
            end += 1;
        }
        let run = (start, end);
        start = end;
        Some(run)
    })
}

/// The index entries of a record's decoded events (as `format::decode_events_with_slots`
/// returns them).
pub fn indexed_events(decoded: &[(RecordedEvent, EventSlot)]) -> Vec<IndexedEvent<'_>> {
    decoded
        .iter()
        .map(|(e, slot)| IndexedEvent {
            stream: &e.stream,
            version: e.version,
            id: e.id,
            slot: *slot,
        })
        .collect()
}

/// Adds a record's entries (events of one stream in ascending versions); its time key if due.
/// Its stream entries, which later records of the batch may extend, are put by
/// [`BatchKeys::finish`], which every batch must end with. `seq` is indexed only when given (a
/// Raft log looks entries up by index; a single node never does, and skipping the key saves a
/// fourth of its index writes for one-event appends).
pub fn add_record(
    batch: &mut IndexBatch,
    (position, seq, timestamp_us): (Position, Option<u64>, u64),
    events: &[IndexedEvent<'_>],
    keys: &mut BatchKeys,
) {
    if let Some(seq) = seq {
        batch.put(seq_key(seq), position.to_le_bytes());
    }
    for (start, end) in run_bounds(events) {
        keys.add_run(batch, position, events.get(start..end).unwrap_or_default());
    }
    for e in events {
        batch.put_with(
            |key| write_id_key(key, e.id),
            |value| {
                value.extend_from_slice(&position.to_le_bytes());
                value.extend_from_slice(&e.version.to_le_bytes());
                value.extend_from_slice(e.stream.as_bytes());
            },
        );
    }
    if !events.is_empty() && keys.times.due(position, timestamp_us) {
        batch.put_with(|key| write_time_key(key, timestamp_us, position), |_| {});
    }
}

/// Removes a record's entries (log truncation, from this record to the log's end: a stream
/// entry spanning records goes with the record holding its last version, after
/// [`Index::keep_before`] kept its part before the truncation).
pub fn remove_record(
    batch: &mut IndexBatch,
    position: Position,
    seq: u64,
    timestamp_us: u64,
    events: &[IndexedEvent<'_>],
) {
    batch.delete(seq_key(seq));
    for (_, end) in run_bounds(events) {
        if let Some(last) = end.checked_sub(1).and_then(|i| events.get(i)) {
            batch.delete_with(|key| write_stream_key(key, last.stream, last.version));
        }
    }
    for e in events {
        batch.delete_with(|key| write_id_key(key, e.id));
    }
    if !events.is_empty() {
        batch.delete_with(|key| write_time_key(key, timestamp_us, position));
    }
}

/// Records that `[start, end)` of the log was reclaimed (a hole record stands there) by a
/// retention pass that set the as-of horizon `horizon_us`.
pub fn add_hole(batch: &mut IndexBatch, start: Position, end: Position, horizon_us: u64) {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&end.to_le_bytes());
    v.extend_from_slice(&horizon_us.to_le_bytes());
    batch.put(hole_key(start), v);
}

/// [`add_hole`] for the record frame at `position` when it is a hole (a log being indexed
/// from its records, or a copy of another replica's); nothing for any other record.
pub fn add_if_hole(batch: &mut IndexBatch, position: Position, frame: &[u8]) {
    if crate::format::read_kind(frame) == crate::format::KIND_HOLE {
        let end = position + frame.len() as u64;
        add_hole(batch, position, end, crate::format::hole_horizon(frame));
    }
}

/// Sets the checkpoint.
pub fn set_checkpoint(batch: &mut IndexBatch, checkpoint: Checkpoint) {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&checkpoint.next_position.to_le_bytes());
    v.extend_from_slice(&checkpoint.next_seq.to_le_bytes());
    batch.put(CHECKPOINT_KEY, v);
    batch.put(FORMAT_KEY, FORMAT.to_le_bytes());
}

/// Stores a value for the layer above, in the same atomic batch as the records it describes.
pub fn set_meta(batch: &mut IndexBatch, name: &str, value: Vec<u8>) {
    batch.put(meta_key(name), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index_store::MemIndexStore;

    /// `(stream, version)` events of one record; event `i`'s frame is at offset `100 + 10 i`.
    fn record(index: &Index, position: Position, events: &[(&str, u64)]) {
        let ids: Vec<Uuid> = events
            .iter()
            .map(|(s, v)| {
                Uuid::from_u128(position as u128 * 1_000_000 + *v as u128 + s.len() as u128)
            })
            .collect();
        let indexed: Vec<IndexedEvent<'_>> = events
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, ((stream, version), id))| IndexedEvent {
                stream,
                version: *version,
                id: *id,
                slot: EventSlot {
                    offset: 100 + 10 * i as u32,
                    len: 10,
                },
            })
            .collect();
        let mut batch = IndexBatch::default();
        let mut keys = BatchKeys::default();
        add_record(&mut batch, (position, None, position), &indexed, &mut keys);
        keys.finish(&mut batch);
        index.write(batch, false).expect("write");
    }

    /// Records `(position, events)` indexed in one write batch; event `i` of a record has its
    /// frame at offset `100 + 10 i`.
    fn batch_of(index: &Index, records: &[(Position, &[(&str, u64)])]) {
        let mut batch = IndexBatch::default();
        let mut keys = BatchKeys::default();
        for (position, events) in records {
            let indexed: Vec<IndexedEvent<'_>> = events
                .iter()
                .enumerate()
                .map(|(i, (stream, version))| IndexedEvent {
                    stream,
                    version: *version,
                    id: Uuid::from_u128(*position as u128 * 1000 + i as u128),
                    slot: EventSlot {
                        offset: 100 + 10 * i as u32,
                        len: 10,
                    },
                })
                .collect();
            add_record(
                &mut batch,
                (*position, None, *position),
                &indexed,
                &mut keys,
            );
        }
        keys.finish(&mut batch);
        index.write(batch, false).expect("write");
    }

    /// `(stream, version)` events as `remove_record` takes them (it needs no id or slot).
    fn unplaced<'a>(events: &[(&'a str, u64)]) -> Vec<IndexedEvent<'a>> {
        events
            .iter()
            .map(|(stream, version)| IndexedEvent {
                stream,
                version: *version,
                id: Uuid::nil(),
                slot: EventSlot { offset: 0, len: 0 },
            })
            .collect()
    }

    fn stream_keys(index: &Index, stream: &str) -> Vec<u64> {
        let keys = index
            .store
            .scan(
                &stream_key(stream, 0),
                &stream_key_end(stream),
                false,
                10_000,
            )
            .expect("scan");
        keys.iter().filter_map(|(k, _)| tail8(k)).collect()
    }

    /// `(version, position, offset)` of every version of `stream`, forwards.
    fn placed(index: &Index, stream: &str) -> Vec<(u64, Position, u32)> {
        index
            .stream_range(stream, None, Direction::Forwards, 10_000)
            .expect("range")
            .into_iter()
            .map(|(v, s)| (v, s.position, s.slot.offset))
            .collect()
    }

    #[test]
    fn a_write_batch_merges_a_streams_runs_across_records() {
        let index = Index::new(Box::new(MemIndexStore::new()));
        // x: 0 alone; 1-2 in record 10, 3 in 20 (with y 0), 4 in 30, 5-6 split by y in 40.
        batch_of(
            &index,
            &[
                (10, &[("x", 0), ("x", 1), ("x", 2)]),
                (20, &[("y", 0), ("x", 3)]),
                (30, &[("x", 4), ("y", 1)]),
                (40, &[("x", 5), ("y", 2), ("x", 6)]),
            ],
        );
        assert_eq!(stream_keys(&index, "x"), [0, 6]);
        assert_eq!(stream_keys(&index, "y"), [0, 2]);
        let x = [
            (0, 10, 100),
            (1, 10, 110),
            (2, 10, 120),
            (3, 20, 110),
            (4, 30, 100),
            (5, 40, 100),
            (6, 40, 120),
        ];
        assert_eq!(placed(&index, "x"), x);
        for (v, position, offset) in x {
            let slot = index.stream_slot("x", v).expect("slot").expect("found");
            assert_eq!(
                (slot.position, slot.slot.offset),
                (position, offset),
                "x {v}"
            );
        }
        assert_eq!(index.stream_slot("x", 7).expect("slot"), None);
        assert_eq!(
            placed(&index, "y"),
            [(0, 20, 100), (1, 30, 110), (2, 40, 110)]
        );
        assert_eq!(index.stream_head("x").expect("head"), Some((6, 40)));
        assert_eq!(index.stream_head("y").expect("head"), Some((2, 40)));
        let backwards: Vec<u64> = index
            .stream_range("x", Some(5), Direction::Backwards, 4)
            .expect("range")
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(backwards, [5, 4, 3, 2]);

        // The next batch starts entries of its own; a gap in versions starts one too.
        batch_of(
            &index,
            &[(50, &[("x", 7)]), (60, &[("x", 8)]), (70, &[("x", 10)])],
        );
        assert_eq!(stream_keys(&index, "x"), [0, 6, 8, 10]);
        assert_eq!(
            index.stream_slot("x", 8).expect("slot").map(|s| s.position),
            Some(60)
        );
    }

    #[test]
    fn a_spanning_entry_holds_at_most_its_maximum_and_a_record_is_never_split() {
        let index = Index::new(Box::new(MemIndexStore::new()));
        let max = SPANNING_RUN_VERSIONS_MAX;
        let singles: Vec<(Position, Vec<(&str, u64)>)> =
            (1..=max + 1).map(|v| (v * 10, vec![("s", v)])).collect();
        let big: Vec<(&str, u64)> = (max + 2..max + 2 + 2 * max).map(|v| ("s", v)).collect();
        let mut records: Vec<(Position, &[(&str, u64)])> =
            singles.iter().map(|(p, e)| (*p, e.as_slice())).collect();
        records.push((1_000_000, &big));
        batch_of(&index, &records);
        // 1..=max merged; max + 1 could not join it, and the big record is its own entry.
        assert_eq!(stream_keys(&index, "s"), [max, max + 1, 3 * max + 1]);
        let all = placed(&index, "s");
        assert_eq!(all.len() as u64, 3 * max + 1);
        assert!(all.iter().all(|&(v, p, _)| if v <= max + 1 {
            p == v * 10
        } else {
            p == 1_000_000
        }));
    }

    #[test]
    fn truncation_inside_a_spanning_entry_keeps_the_versions_before_it() {
        let index = Index::new(Box::new(MemIndexStore::new()));
        let records: [(Position, &[(&str, u64)]); 4] = [
            (10, &[("x", 1), ("x", 2)]),
            (20, &[("x", 3)]),
            (30, &[("x", 4), ("x", 5)]),
            (40, &[("x", 6)]),
        ];
        batch_of(&index, &records);
        assert_eq!(stream_keys(&index, "x"), [6]);
        // Remove the records from position 30 on, as `Store::truncate_from` does.
        let mut batch = IndexBatch::default();
        index.keep_before(&mut batch, "x", 4).expect("keep");
        for (seq, (position, events)) in records.iter().enumerate().skip(2) {
            remove_record(
                &mut batch,
                *position,
                seq as u64,
                *position,
                &unplaced(events),
            );
        }
        index.write(batch, false).expect("truncate");
        assert_eq!(stream_keys(&index, "x"), [3]);
        assert_eq!(
            placed(&index, "x"),
            [(1, 10, 100), (2, 10, 110), (3, 20, 100)]
        );
        assert_eq!(index.stream_head("x").expect("head"), Some((3, 20)));
        // Truncating at an entry's first version keeps nothing of it; at one record, the
        // first form.
        let mut batch = IndexBatch::default();
        index.keep_before(&mut batch, "x", 1).expect("keep");
        index.keep_before(&mut batch, "x", 9).expect("keep");
        assert!(batch.is_empty());
        index.keep_before(&mut batch, "x", 3).expect("keep");
        index.write(batch, false).expect("write");
        assert_eq!(stream_keys(&index, "x"), [2, 3]);
        let value = index
            .store
            .get(&stream_key("x", 2))
            .expect("get")
            .expect("kept");
        assert_eq!(u64_at(&value, 0), Some(10));
    }

    fn versions(found: Vec<(u64, StreamSlot)>) -> Vec<u64> {
        found.into_iter().map(|(v, _)| v).collect()
    }

    #[test]
    fn runs_place_every_version_and_ranges_cross_runs_both_ways() {
        let index = Index::new(Box::new(MemIndexStore::new()));
        record(&index, 1000, &[("x", 0), ("x", 1), ("x", 2)]);
        // Version 0 is a run of its own: [0], [1, 2].
        let keys = index
            .store
            .scan(&stream_key("x", 0), &stream_key_end("x"), false, 10)
            .expect("scan");
        let lasts: Vec<u64> = keys.iter().filter_map(|(k, _)| tail8(k)).collect();
        assert_eq!(lasts, [0, 2]);
        record(&index, 2000, &[("x", 3)]);
        // Streams interleaved in one record: x 4, y 0, x 5 are three runs.
        record(&index, 3000, &[("x", 4), ("y", 0), ("x", 5)]);
        let slot = |v| index.stream_slot("x", v).expect("slot");
        assert_eq!(
            slot(1),
            Some(StreamSlot {
                position: 1000,
                slot: EventSlot {
                    offset: 110,
                    len: 10
                }
            })
        );
        assert_eq!(
            slot(3).map(|s| (s.position, s.slot.offset)),
            Some((2000, 100))
        );
        assert_eq!(
            slot(5).map(|s| (s.position, s.slot.offset)),
            Some((3000, 120))
        );
        assert_eq!(slot(6), None);
        assert_eq!(
            index.stream_slot("y", 0).expect("y").map(|s| s.slot.offset),
            Some(110)
        );
        assert_eq!(index.stream_head("x").expect("head"), Some((5, 3000)));
        let range = |from, direction, limit| {
            versions(
                index
                    .stream_range("x", from, direction, limit)
                    .expect("range"),
            )
        };
        assert_eq!(range(Some(1), Direction::Forwards, 3), [1, 2, 3]);
        assert_eq!(range(None, Direction::Forwards, 100), [0, 1, 2, 3, 4, 5]);
        assert_eq!(range(Some(4), Direction::Backwards, 10), [4, 3, 2, 1, 0]);
        assert_eq!(range(Some(1), Direction::Backwards, 10), [1, 0]);
        assert_eq!(range(None, Direction::Backwards, 2), [5, 4]);
        assert_eq!(range(Some(9), Direction::Backwards, 2), [5, 4]);
        assert!(range(Some(6), Direction::Forwards, 2).is_empty());

        // Truncating the last record takes its runs away.
        let mut batch = IndexBatch::default();
        let gone = [("x", 4u64), ("y", 0), ("x", 5)];
        remove_record(&mut batch, 3000, 3, 3000, &unplaced(&gone));
        index.write(batch, false).expect("truncate");
        assert_eq!(index.stream_head("x").expect("head"), Some((3, 2000)));
        assert_eq!(index.stream_head("y").expect("head"), None);
    }

    #[test]
    fn long_ranges_go_on_past_a_scan_of_runs() {
        let index = Index::new(Box::new(MemIndexStore::new()));
        let singles = RUNS_PER_SCAN as u64 * 3 + 5;
        for v in 0..singles {
            record(&index, 10 + v, &[("s", v)]);
        }
        let long: Vec<(&str, u64)> = (singles..singles + 150).map(|v| ("s", v)).collect();
        record(&index, 100_000, &long);
        let all: Vec<u64> = (0..singles + 150).collect();
        let forwards = versions(
            index
                .stream_range("s", None, Direction::Forwards, 10_000)
                .expect("f"),
        );
        assert_eq!(forwards, all);
        let backwards = versions(
            index
                .stream_range("s", None, Direction::Backwards, 10_000)
                .expect("b"),
        );
        assert_eq!(backwards, all.iter().rev().copied().collect::<Vec<_>>());
        let middle = versions(
            index
                .stream_range("s", Some(singles + 10), Direction::Backwards, 20)
                .expect("m"),
        );
        assert_eq!(
            middle,
            (singles - 9..=singles + 10).rev().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_index_in_another_layout_is_not_current() {
        let store = MemIndexStore::new();
        let old_layout = {
            let mut batch = IndexBatch::default();
            let mut v = Vec::new();
            v.extend_from_slice(&5u64.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
            batch.put(CHECKPOINT_KEY, v);
            batch
        };
        store.write(old_layout, false).expect("write");
        let index = Index::new(Box::new(store));
        assert!(!index.format_is_current().expect("format"));
        let mut batch = IndexBatch::default();
        set_checkpoint(
            &mut batch,
            Checkpoint {
                next_position: 5,
                next_seq: 1,
            },
        );
        index.write(batch, false).expect("write");
        assert!(index.format_is_current().expect("format"));
        assert!(Index::new(Box::new(MemIndexStore::new()))
            .format_is_current()
            .expect("empty"));
        // A key per record (3) is a sparse index too, entries of one record each (4) are
        // spanning entries of one piece; 2 and 6 are not this layout.
        for (format, current) in [(2u32, false), (3, true), (4, true), (5, true), (6, false)] {
            let mut batch = IndexBatch::default();
            batch.put(FORMAT_KEY, format.to_le_bytes());
            index.write(batch, false).expect("write");
            assert_eq!(
                index.format_is_current().expect("format"),
                current,
                "{format}"
            );
        }
    }

    #[test]
    fn a_malformed_run_is_an_index_error() {
        let key = stream_key("x", 3);
        let mut value = Vec::new();
        value.extend_from_slice(&7u64.to_le_bytes());
        value.extend_from_slice(&1u64.to_le_bytes());
        value.extend_from_slice(&[0; 8]); // one slot, but versions 1..=3 need three
        assert!(decode_run(&key, &value).is_err());
        value.extend_from_slice(&[0; 16]);
        assert!(decode_run(&key, &value).is_ok());
        assert!(decode_run(&key, &value[..20]).is_err());

        // Spanning: versions 1..=3 as 2 + 1 in records 10 and 20.
        let spanning = |pieces: &[(u64, u32)], slots: usize| {
            let mut v = Vec::new();
            v.extend_from_slice(&SPANNING.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
            v.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
            for (p, c) in pieces {
                v.extend_from_slice(&p.to_le_bytes());
                v.extend_from_slice(&c.to_le_bytes());
            }
            v.extend_from_slice(&vec![0; slots * 8]);
            v
        };
        let good = spanning(&[(10, 2), (20, 1)], 3);
        let run = decode_run(&key, &good).expect("spanning");
        assert_eq!(run.slot(3).map(|s| s.position), Some(20));
        assert_eq!(run_position(&good).expect("position"), 20);
        for bad in [
            spanning(&[(10, 2), (20, 2)], 3), // the pieces hold 4 versions
            spanning(&[(10, 3), (20, 0)], 3), // an empty piece
            spanning(&[(10, 3)], 3),          // one piece is the first form's
            spanning(&[(10, 2), (20, 1)], 2), // a slot short
        ] {
            assert!(decode_run(&key, &bad).is_err(), "{bad:?}");
        }
        assert!(decode_run(&key, &good[..30]).is_err());
        assert!(run_position(&good[..20]).is_err());
    }
}
