//! The store: one shard's log and indexes, driven synchronously by one owner. `commit` takes a
//! group of append requests and, for each, decides (idempotent retry, expected-version check),
//! encodes, writes the group with one fdatasync, indexes it and only then answers. This core
//! holds no threads and reads no clock of its own, so the simulator and the Raft state machine
//! can drive it directly; [`crate::Engine`] wraps it with a group-commit thread.
//!
//! Invariants: the index checkpoint equals the log's next position after every `commit` and
//! `truncate_from`; a request's events are either all in one durable record or not written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use uuid::Uuid;

use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{
    AppendRequest, AppendResult, ExpectedVersion, NewEvent, Position, StreamAppendResult,
};
use crate::format::{self, EventFields, RecordHeader};
use crate::fs::FileSystem;
use crate::index::{self, Checkpoint, Index, IndexedEvent};
use crate::index_store::{IndexBatch, IndexStore};
use crate::log::{LogWriter, RecoveryReport};
use crate::reader::Reader;
use crate::stats::Stats;
use crate::validate::validate_request;

/// Records indexed per batch while catching the index up at open.
const CATCH_UP_RECORDS_MAX: usize = 1024;

/// What a decision about one request came to.
enum Plan {
    /// A retry of an append already committed: answer with the original result.
    Duplicate(AppendResult),
    /// Write it; the first version of each stream part.
    Write(Vec<u64>),
}

/// An event written in the current group but not yet indexed.
struct PendingEvent {
    position: Position,
    stream: String,
    version: u64,
    event: NewEvent,
}

/// The state of the group being built: bytes to write and what they change.
struct Group {
    buf: Vec<u8>,
    records: u64,
    batch: IndexBatch,
    answers: Vec<(usize, AppendResult)>,
    heads: HashMap<String, u64>,
    ids: HashMap<Uuid, PendingEvent>,
    events: u64,
}

impl Group {
    fn new() -> Group {
        Group {
            buf: Vec::new(),
            records: 0,
            batch: IndexBatch::default(),
            answers: Vec::new(),
            heads: HashMap::new(),
            ids: HashMap::new(),
            events: 0,
        }
    }
}

/// One shard's store.
#[derive(Debug)]
pub struct Store {
    config: EngineConfig,
    log: LogWriter,
    reader: Reader,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    poisoned: Option<String>,
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
        config.validate()?;
        let (log, log_reader, recovery) = LogWriter::open(fs, &dir.join("log"), &config)?;
        let reader = Reader {
            log: log_reader,
            index: Arc::new(Index::new(index_store)),
            limits: config.limits.clone(),
        };
        let store = Store {
            config,
            log,
            reader,
            clock,
            stats: Arc::new(Stats::default()),
            recovery,
            poisoned: None,
        };
        store.catch_up_index()?;
        store.reader.log.publish_end(store.log.next_position());
        Ok(store)
    }

    fn catch_up_index(&self) -> Result<()> {
        let end = self.log.next_position();
        let next_seq = self.log.next_seq();
        let index = &self.reader.index;
        let mut from = match index.checkpoint()? {
            Some(c) if c.next_position == end && c.next_seq == next_seq => return Ok(()),
            Some(c) if c.next_position < end && self.continues_at(c)? => Some(c.next_position),
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
            let mut batch = IndexBatch {
                clear_all: clear,
                ..IndexBatch::default()
            };
            clear = false;
            let mut last_seq = None;
            for r in &raw {
                let events = format::decode_events_with_slots(&r.frame)
                    .map_err(|e| self.reader.log.corruption_at(r.header.position, e.0))?;
                let indexed: Vec<IndexedEvent<'_>> = events
                    .iter()
                    .map(|(e, slot)| IndexedEvent {
                        stream: &e.stream,
                        version: e.version,
                        id: e.id,
                        slot: *slot,
                    })
                    .collect();
                index::add_record(
                    &mut batch,
                    r.header.position,
                    r.header.seq,
                    r.header.timestamp_us,
                    &indexed,
                );
                last_seq = Some(r.header.seq);
            }
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
                tracing::info!(records, "index caught up with the log");
                return Ok(());
            }
            position = next;
        }
    }

    /// Whether the record at the checkpoint's position is the one it expects.
    fn continues_at(&self, c: Checkpoint) -> Result<bool> {
        match self
            .reader
            .log
            .scan(c.next_position, self.log.next_position(), 1, 1)
        {
            Ok((raw, _)) => Ok(raw.first().is_some_and(|r| {
                r.header.position == c.next_position && r.header.seq == c.next_seq
            })),
            Err(Error::Corruption { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The read side, to share with readers.
    pub fn reader(&self) -> &Reader {
        &self.reader
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

    fn check_poison(&self) -> Result<()> {
        if let Some(why) = self
            .poisoned
            .as_ref()
            .map(String::as_str)
            .or(self.log.poisoned())
        {
            return Err(Error::Poisoned(why.to_string()));
        }
        Ok(())
    }

    /// Appends a group of requests with as few fdatasyncs as possible (one, unless the group
    /// crosses a segment boundary). Each answer is final: `Ok` means durable and indexed.
    pub fn commit(&mut self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult>> {
        let mut answers: Vec<Option<Result<AppendResult>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut group = Group::new();
        for (i, request) in requests.into_iter().enumerate() {
            if let Err(e) = self.check_poison() {
                answers[i] = Some(Err(e));
                continue;
            }
            let size = match validate_request(&request, &self.config.limits) {
                Ok(size) => size,
                Err(e) => {
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            let first_versions = match self.plan(&request, &group) {
                Ok(Plan::Write(first_versions)) => first_versions,
                Ok(Plan::Duplicate(original)) => {
                    self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                    answers[i] = Some(Ok(original));
                    continue;
                }
                Err(e) => {
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            if (group.buf.len() + size) as u64 > self.log.room() {
                self.flush(&mut group, &mut answers);
                group = Group::new();
                if let Err(e) = self.log.roll() {
                    answers[i] = Some(Err(e));
                    continue;
                }
                // Plan again: the flushed group is indexed now, or failed and changed nothing.
                match self.plan(&request, &group) {
                    Ok(Plan::Write(first_versions)) => {
                        self.encode(i, request, first_versions, &mut group)
                    }
                    Ok(Plan::Duplicate(original)) => answers[i] = Some(Ok(original)),
                    Err(e) => answers[i] = Some(Err(e)),
                }
                continue;
            }
            self.encode(i, request, first_versions, &mut group);
        }
        self.flush(&mut group, &mut answers);
        answers
            .into_iter()
            .map(|a| {
                let a = a.unwrap_or_else(|| Err(Error::Poisoned("request left unanswered".into())));
                if a.is_err() {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
                a
            })
            .collect()
    }

    /// Decides what to do with a request given the index and the group so far.
    fn plan(&self, request: &AppendRequest, group: &Group) -> Result<Plan> {
        let index = &self.reader.index;
        let mut found = Vec::new();
        let mut missing = None;
        for part in &request.streams {
            for e in &part.events {
                let entry = match group.ids.get(&e.id) {
                    Some(p) => Some((p.position, p.version, p.stream.clone())),
                    None => index
                        .event_by_id(e.id)?
                        .map(|x| (x.position, x.version, x.stream)),
                };
                match entry {
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
                .original_result(request, group, &found)
                .map(Plan::Duplicate);
        }
        let mut first_versions = Vec::with_capacity(request.streams.len());
        for part in &request.streams {
            let current = match group.heads.get(&part.stream) {
                Some(v) => Some(*v),
                None => index.stream_head(&part.stream)?.map(|(v, _)| v),
            };
            let ok = match part.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => current.is_none(),
                ExpectedVersion::StreamExists => current.is_some(),
                ExpectedVersion::Exact(v) => current == Some(v),
            };
            if !ok {
                return Err(Error::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: part.expected.to_string(),
                    actual: current,
                });
            }
            first_versions.push(current.map_or(0, |v| v + 1));
        }
        Ok(Plan::Write(first_versions))
    }

    /// Every event id of `request` is committed: answer with the original result if the request
    /// is exactly the committed one, or explain the conflict.
    fn original_result(
        &self,
        request: &AppendRequest,
        group: &Group,
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
                if !self.same_content(event, stream, *version, group)? {
                    return Err(conflict(
                        event.id,
                        "already committed with different type, data or metadata".into(),
                    ));
                }
            }
            let last = first + part.events.len() as u64 - 1;
            // The original append must not have held more events of this stream.
            let before = first
                .checked_sub(1)
                .map(|v| self.position_of(&part.stream, v, group))
                .transpose()?
                .flatten();
            let after = self.position_of(&part.stream, last + 1, group)?;
            if before == Some(position) || after == Some(position) {
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

    fn position_of(&self, stream: &str, version: u64, group: &Group) -> Result<Option<Position>> {
        if let Some(p) = group
            .ids
            .values()
            .find(|p| p.stream == stream && p.version == version)
        {
            return Ok(Some(p.position));
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
        group: &Group,
    ) -> Result<bool> {
        if let Some(pending) = group.ids.get(&event.id) {
            return Ok(pending.event == *event);
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
        let stored = self.reader.log.read_event(slot.position, slot.slot)?;
        Ok(stored.id == event.id
            && stored.event_type == event.event_type
            && stored.data == event.data
            && stored.metadata == event.metadata)
    }

    /// Encodes a planned request into the group.
    fn encode(
        &self,
        i: usize,
        request: AppendRequest,
        first_versions: Vec<u64>,
        group: &mut Group,
    ) {
        let position = self.log.next_position() + group.buf.len() as u64;
        let seq = self.log.next_seq() + group.records;
        let group_start = self.log.next_position();
        let mut fields = Vec::new();
        for (part, first) in request.streams.iter().zip(&first_versions) {
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
        let slots = format::encode_record(
            &mut group.buf,
            RecordHeader {
                position,
                seq,
                group_start,
                timestamp_us: request.timestamp_us,
            },
            &fields,
        );
        let indexed: Vec<IndexedEvent<'_>> = fields
            .iter()
            .zip(&slots)
            .map(|(f, slot)| IndexedEvent {
                stream: f.stream,
                version: f.version,
                id: f.id,
                slot: *slot,
            })
            .collect();
        index::add_record(
            &mut group.batch,
            position,
            seq,
            request.timestamp_us,
            &indexed,
        );
        group.records += 1;
        group.events += fields.len() as u64;
        let mut streams = Vec::with_capacity(request.streams.len());
        for (part, first) in request.streams.into_iter().zip(first_versions) {
            let last = first + part.events.len() as u64 - 1;
            group.heads.insert(part.stream.clone(), last);
            for (k, event) in part.events.into_iter().enumerate() {
                group.ids.insert(
                    event.id,
                    PendingEvent {
                        position,
                        stream: part.stream.clone(),
                        version: first + k as u64,
                        event,
                    },
                );
            }
            streams.push(StreamAppendResult {
                stream: part.stream,
                first_version: first,
                last_version: last,
            });
        }
        group.answers.push((
            i,
            AppendResult {
                position,
                streams,
                deduplicated: false,
            },
        ));
    }

    /// Writes, syncs and indexes the group, then answers its requests.
    fn flush(&mut self, group: &mut Group, answers: &mut [Option<Result<AppendResult>>]) {
        if group.records == 0 {
            return;
        }
        let started = self.clock.now_ns();
        if let Err(e) = self.log.write_group(&group.buf, group.records) {
            for (i, _) in group.answers.drain(..) {
                answers[i] = Some(Err(e.duplicate()));
            }
            return;
        }
        self.stats
            .record_sync(self.clock.now_ns().saturating_sub(started));
        let end = self.log.next_position();
        let mut batch = std::mem::take(&mut group.batch);
        index::set_checkpoint(
            &mut batch,
            Checkpoint {
                next_position: end,
                next_seq: self.log.next_seq(),
            },
        );
        if let Err(e) = self.reader.index.write(batch, false) {
            // The records are durable, so their appends succeeded; but decisions need the index,
            // so stop writing until a reopen catches it up from the log.
            tracing::error!(error = %e, "index write failed after a durable group; stopping writes");
            self.poisoned = Some(format!("index write failed: {e}"));
        }
        self.reader.log.publish_end(end);
        self.stats
            .appends
            .fetch_add(group.answers.len() as u64, Ordering::Relaxed);
        self.stats.events.fetch_add(group.events, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(group.buf.len() as u64, Ordering::Relaxed);
        for (i, answer) in group.answers.drain(..) {
            answers[i] = Some(Ok(answer));
        }
    }

    /// Removes every record at or after `position` (a record position), from the log and the
    /// indexes. Raft uses this to drop uncommitted entries that a new leader overrode.
    pub fn truncate_from(&mut self, position: Position) -> Result<()> {
        self.check_poison()?;
        let end = self.log.next_position();
        if position == end {
            return Ok(());
        }
        if position > end || self.reader.index.record_at(position)?.is_none() {
            return Err(Error::invalid(
                "position",
                format!("{position} is not the position of a record in this log"),
            ));
        }
        // Readers first, so none reads what is about to go.
        self.reader.log.publish_end(position);
        let (raw, _) = self
            .reader
            .log
            .scan(position, end, usize::MAX, usize::MAX)?;
        let mut batch = IndexBatch::default();
        let mut first_removed: HashMap<String, u64> = HashMap::new();
        for r in &raw {
            let events = r.events(&self.reader.log)?;
            let slots = format::decode_events_with_slots(&r.frame)
                .map_err(|e| self.reader.log.corruption_at(r.header.position, e.0))?;
            let indexed: Vec<IndexedEvent<'_>> = events
                .iter()
                .zip(&slots)
                .map(|(e, (_, slot))| IndexedEvent {
                    stream: &e.stream,
                    version: e.version,
                    id: e.id,
                    slot: *slot,
                })
                .collect();
            index::remove_record(
                &mut batch,
                r.header.position,
                r.header.timestamp_us,
                &indexed,
            );
            for e in &events {
                first_removed.entry(e.stream.clone()).or_insert(e.version);
            }
        }
        for (stream, first) in &first_removed {
            let head = match first.checked_sub(1) {
                Some(v) => self
                    .reader
                    .index
                    .stream_slot(stream, v)?
                    .map(|s| (v, s.position)),
                None => None,
            };
            index::set_stream_head(&mut batch, stream, head);
        }
        // Log first: a crash between the two leaves the index ahead of the log, which open
        // detects and repairs by rebuilding the index.
        self.log.truncate_from(position)?;
        index::set_checkpoint(
            &mut batch,
            Checkpoint {
                next_position: position,
                next_seq: self.log.next_seq(),
            },
        );
        self.reader.index.write(batch, true)?;
        Ok(())
    }
}
