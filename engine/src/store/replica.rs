//! The store as a Raft log (strata-raft drives it). Every Raft entry is one record: its `seq` is
//! the entry's index and its header names the leader (term, node) that wrote it, so the event
//! log *is* the Raft log, with no second copy.
//!
//! - **write** ([`Store::write_entries`]): each entry becomes one record, written without
//!   syncing. A client append (on the leader) is decided here against everything before it in
//!   the log, committed or not: exactly the prefix every replica holds before that index, so the
//!   decision is a function of the log and a leader change cannot break it. A rejected append,
//!   or a retry of a committed one, is written as a blank record and its answer travels in
//!   [`WrittenEntry::decided`]. Followers write the leader's frames ([`EntryBody::Frame`]) as
//!   they are, except for the header's local fields (position, synced end).
//! - **sync**: [`crate::store::Finisher::sync`] on the written groups, then Raft's flush
//!   callback.
//! - **apply**: [`crate::store::Finisher::finish_with`] on the groups of committed entries
//!   indexes them and publishes them; readers and subscriptions see only applied records.
//! - **truncate** ([`Store::truncate_entries`]): drops entries from an index on.
//! - **open** ([`Store::open_replica`]): never indexes past the checkpoint; the records after it
//!   come back as unfinished entries for Raft to apply once it knows they are committed.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{lock, note_effects, Effects, Group, PendingEvent, Plan, Store, WrittenGroup};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent, Position};
use crate::fence::{FenceChange, FENCES_STREAM};
use crate::format::{
    self, check_frame, FrameCheck, RecordHeader, FRAME_BYTES, HEADER_BYTES, KIND_BLANK, KIND_GAP,
    KIND_HOLE, KIND_MEMBERSHIP,
};
use crate::fs::FileSystem;
use crate::index;
use crate::index_store::{IndexBatch, IndexStore};
use crate::log::RawRecord;
use crate::validate::Validated;

/// Records read per scan while loading the unfinished tail at open.
const OPEN_SCAN_RECORDS_MAX: usize = 1024;
/// Largest gap of Raft indexes a write may skip (each skipped index becomes a gap record).
/// Raft appends contiguously; openraft's storage suite appends across small gaps.
pub const GAP_ENTRIES_MAX: u64 = 4096;

/// The outcomes of an entry's appends, when this node decided them.
type Decided = Option<Vec<Result<AppendResult>>>;

/// What a Raft entry holds.
#[derive(Debug)]
pub enum EntryBody {
    /// Client appends on distinct streams, proposed together on the leader: each is decided
    /// when written, and those accepted share one record.
    Appends(Vec<Validated>),
    /// A leader's no-op.
    Blank,
    /// A membership change (opaque bytes).
    Membership(Vec<u8>),
    /// A whole record frame as the leader wrote it (a follower replicating it).
    Frame(Bytes),
    /// Stands for an index the Raft log skipped (see `GAP_ENTRIES_MAX`).
    Gap,
}

/// One Raft entry to write.
#[derive(Debug)]
pub struct LogEntry {
    /// Raft log index; must follow the log's last entry (or start an empty log).
    pub seq: u64,
    /// Term of the leader that created it.
    pub term: u64,
    /// Node id of that leader.
    pub leader: u64,
    /// Contents.
    pub body: EntryBody,
}

/// An entry written to the log file, not yet synced or applied.
#[derive(Debug)]
pub struct WrittenEntry {
    /// Its Raft log index.
    pub seq: u64,
    /// The written record, to sync and later finish (apply).
    pub group: WrittenGroup<()>,
    /// For appends decided by this node: their outcomes in order, to answer the clients once
    /// the entry is committed and applied.
    pub decided: Decided,
}

impl Store {
    /// Opens a store whose log is a Raft log: the index is left at its checkpoint (the last
    /// applied entry) and every record after it is returned as an unfinished entry, durable
    /// (opening the log syncs what it finds).
    pub fn open_replica(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        index_store: Box<dyn IndexStore>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Store, Vec<WrittenEntry>)> {
        let mut store = Store::open_log(fs, dir, index_store, config, clock)?;
        store.raft = true;
        let end = store.log.next_position();
        let from = match store.reader.index.checkpoint()? {
            Some(c) if store.checkpoint_fits(c)? => c.next_position,
            Some(c) => {
                tracing::warn!(
                    checkpoint = c.next_position,
                    log_end = end,
                    "index does not match the log; dropping it (Raft re-applies the log)"
                );
                store.reader.index.write(IndexBatch::clearing(true), true)?;
                0
            }
            None => 0,
        };
        store.reader.log.publish_end(from);
        store.load_id_filter();
        store.reload_fences()?;
        // Opening the log synced the tail (and any segment it found sealed): every entry
        // handed back below is durable.
        let tail = store.log.tail_file();
        // The clock resumes past the newest timestamp: the indexed records', then the tail's.
        store.saw_timestamp(store.reader.last_timestamp(store.log.next_position())?);
        let mut out = Vec::new();
        let mut position = from;
        while position < end || (position == 0 && !store.log.is_empty()) {
            let (raw, next) =
                store
                    .reader
                    .log
                    .scan(position, end, OPEN_SCAN_RECORDS_MAX, 32 << 20)?;
            if raw.is_empty() {
                break;
            }
            for r in raw {
                store.saw_timestamp(r.header.timestamp_us);
                let (effects, batch, events) = store.absorb(&r.frame, r.header)?;
                let group = store.adopt(tail.clone(), &r, effects, batch, events);
                out.push(WrittenEntry {
                    seq: r.header.seq,
                    group,
                    decided: None,
                });
            }
            position = next;
        }
        // Holes before the checkpoint were indexed when they were applied.
        store.reload_reclaimed()?;
        Ok((store, out))
    }

    /// Writes entries, one record each, without syncing. Stops at the first failure (earlier
    /// entries stay written).
    pub fn write_entries(&mut self, entries: Vec<LogEntry>) -> Result<Vec<WrittenEntry>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            self.check_poison()?;
            // Refuse a bad frame before anything (a gap record) is written for it.
            let frame_header = match &entry.body {
                EntryBody::Frame(frame) => Some(self.check_copied_frame(frame, entry.seq)?),
                _ => None,
            };
            if entry.seq != self.log.next_seq() {
                if self.log.is_empty() {
                    self.log.restart_seq(entry.seq)?;
                } else if entry.seq > self.log.next_seq()
                    && entry.seq - self.log.next_seq() <= GAP_ENTRIES_MAX
                {
                    while self.log.next_seq() < entry.seq {
                        let gap = LogEntry {
                            seq: self.log.next_seq(),
                            term: entry.term,
                            leader: entry.leader,
                            body: EntryBody::Gap,
                        };
                        out.extend(self.write_entries(vec![gap])?);
                    }
                } else {
                    return Err(Error::invalid(
                        "seq",
                        format!(
                            "entry {} does not follow the log's last entry {}",
                            entry.seq,
                            self.log.next_seq().saturating_sub(1)
                        ),
                    ));
                }
            }
            let (group, decided) = self.build_entry(entry, frame_header)?;
            let mut written = Vec::with_capacity(1);
            let mut failed = Vec::new();
            let seq = self.log.next_seq();
            self.write_group(group, &mut written, &mut failed);
            if let Some((_, Err(e))) = failed.pop() {
                return Err(e);
            }
            let group = written
                .pop()
                .ok_or_else(|| Error::Poisoned(format!("entry {seq} was not written")))?;
            out.push(WrittenEntry {
                seq,
                group,
                decided,
            });
        }
        Ok(out)
    }

    /// Encodes one entry as a one-record group, rolling the segment first if it does not fit.
    /// `frame_header`: for a copied frame, its header as [`Store::check_copied_frame`] read it.
    fn build_entry(
        &mut self,
        entry: LogEntry,
        frame_header: Option<RecordHeader>,
    ) -> Result<(Group<()>, Decided)> {
        let leader = (entry.term, entry.leader);
        let blank_bytes = (FRAME_BYTES + HEADER_BYTES) as u64;
        let needed = match &entry.body {
            EntryBody::Appends(list) => {
                let overhead = blank_bytes + 4;
                overhead
                    + list
                        .iter()
                        .map(|v| v.bytes() as u64 - overhead)
                        .sum::<u64>()
            }
            EntryBody::Blank => blank_bytes,
            EntryBody::Membership(b) => blank_bytes + b.len() as u64,
            EntryBody::Gap => blank_bytes,
            // Followers roll where the leader's frame says it rolled.
            EntryBody::Frame(_) => 0,
        };
        if needed > self.log.room() {
            self.log.roll()?;
        }
        let requests = match &entry.body {
            EntryBody::Appends(list) => list.len(),
            _ => 1,
        };
        let mut group = Group::new(std::mem::take(&mut self.spare_buf), requests);
        let decided = match entry.body {
            EntryBody::Appends(list) => {
                let position = self.log.next_position();
                let mut decided: Vec<Option<Result<AppendResult>>> = Vec::with_capacity(list.len());
                let mut accepted = Vec::new();
                let alone = list.len() == 1;
                for validated in list {
                    let mut request = validated.into_request();
                    if request.copy && !alone {
                        // Its record must be flagged a copy as a whole.
                        decided.push(Some(Err(Error::invalid(
                            "copy",
                            "a slot-range move's copy must be alone in its Raft entry",
                        ))));
                        continue;
                    }
                    if request.copy {
                        match self.strip_copied(request, &group.effects) {
                            Ok(Ok(rest)) => request = rest,
                            Ok(Err(present)) => {
                                decided.push(Some(Ok(present)));
                                continue;
                            }
                            Err(e) => {
                                decided.push(Some(Err(e)));
                                continue;
                            }
                        }
                    }
                    match self.plan(&request, &group.effects) {
                        Ok(Plan::Write(first_versions)) => {
                            // Visible to the rest of the batch before the record is encoded.
                            note_effects(
                                &mut group.effects,
                                position,
                                request.clone(),
                                &first_versions,
                            );
                            decided.push(None);
                            accepted.push(((), request, first_versions));
                        }
                        Ok(Plan::Duplicate(original)) => decided.push(Some(Ok(original))),
                        Err(e) => decided.push(Some(Err(e))),
                    }
                }
                if accepted.is_empty() {
                    self.encode_meta(KIND_BLANK, &[], &mut group, leader);
                } else {
                    self.encode_many(accepted, &mut group, leader);
                    let mut answers = group.answers.iter().map(|(_, a)| a.clone());
                    for d in decided.iter_mut().filter(|d| d.is_none()) {
                        *d = answers.next().map(Ok);
                    }
                }
                Some(
                    decided
                        .into_iter()
                        .map(|d| {
                            d.unwrap_or_else(|| {
                                Err(Error::Poisoned("an accepted append lost its answer".into()))
                            })
                        })
                        .collect(),
                )
            }
            EntryBody::Blank => {
                self.encode_meta(KIND_BLANK, &[], &mut group, leader);
                None
            }
            EntryBody::Membership(body) => {
                self.encode_meta(KIND_MEMBERSHIP, &body, &mut group, leader);
                None
            }
            EntryBody::Gap => {
                self.encode_meta(KIND_GAP, &[], &mut group, leader);
                None
            }
            EntryBody::Frame(frame) => {
                let header = frame_header
                    .ok_or_else(|| Error::invalid("entry", "a copied frame was not checked"))?;
                self.copy_frame(&frame, header, &mut group)?;
                None
            }
        };
        Ok((group, decided))
    }

    fn header_here(&self, (term, leader): (u64, u64), timestamp_us: u64) -> RecordHeader {
        RecordHeader {
            position: self.log.next_position(),
            seq: self.log.next_seq(),
            synced_end: self.synced_end.load(std::sync::atomic::Ordering::Acquire),
            timestamp_us,
            term,
            leader,
            flags: 0,
        }
    }

    fn encode_meta(&self, kind: u8, body: &[u8], group: &mut Group<()>, leader: (u64, u64)) {
        let header = self.header_here(leader, 0);
        format::encode_meta_record(&mut group.buf, kind, header, body);
        index::add_record(
            &mut group.batch,
            (header.position, Some(header.seq), 0),
            &[],
            &mut index::BatchKeys::default(),
        );
        group.records = 1;
    }

    /// A leader's record frame, checked and given this log's local header fields.
    /// A leader's frame must be one intact record holding entry `seq`.
    fn check_copied_frame(&self, frame: &Bytes, seq: u64) -> Result<RecordHeader> {
        let bad = |why: String| Error::invalid("entry", why);
        match check_frame(frame, self.config.limits.batch_bytes_max) {
            FrameCheck::Valid(n) if n == frame.len() => {}
            other => return Err(bad(format!("not one intact record frame ({other:?})"))),
        }
        format::check_structure(frame).map_err(|e| bad(e.0))?;
        let header = format::read_header(frame);
        if header.seq != seq {
            return Err(bad(format!(
                "frame holds entry {} where entry {seq} was expected",
                header.seq
            )));
        }
        Ok(header)
    }

    /// Writes a checked leader frame (see [`Store::check_copied_frame`]) into the group.
    fn copy_frame(
        &mut self,
        frame: &Bytes,
        header: RecordHeader,
        group: &mut Group<()>,
    ) -> Result<()> {
        let bad = |why: String| Error::invalid("entry", why);
        if header.position < self.log.next_position() {
            // This log rolled where the leader's did not (the record that made it roll was
            // truncated or torn away): go back into the previous segment.
            self.log.unroll_to(header.position)?;
        }
        if header.position > self.log.next_position() && !self.log.tail_is_empty() {
            // The leader rolled its segment here; roll too, so positions stay the same on
            // every replica. (Never an empty tail: a roll is followed by a record, so a frame
            // further on means the logs differ, and rolling again would only pile up empty
            // segments on every retry.)
            self.log.roll()?;
        }
        if header.position != self.log.next_position() {
            return Err(bad(format!(
                "frame at position {} but this log continues at {} (every replica needs the same segment_bytes_max)",
                header.position,
                self.log.next_position()
            )));
        }
        self.saw_timestamp(header.timestamp_us);
        let mut buf = frame.to_vec();
        let here = self.header_here((header.term, header.leader), header.timestamp_us);
        format::restamp(&mut buf, here.position, here.synced_end);
        let stamped = format::read_header(&buf);
        let (effects, batch, events) = self
            .absorb(&Bytes::from(buf.clone()), stamped)
            .map_err(|e| bad(format!("undecodable record: {e}")))?;
        group.buf = buf;
        group.records = 1;
        group.events = events;
        group.batch = batch;
        group.effects = effects;
        Ok(())
    }

    /// What a record already encoded changes: index entries and in-flight effects.
    fn absorb(&self, frame: &Bytes, header: RecordHeader) -> Result<(Effects, IndexBatch, u64)> {
        let events = self.decode(frame, header.position)?;
        let mut batch = IndexBatch::default();
        let mut keys = index::BatchKeys::default();
        index::add_record(
            &mut batch,
            (header.position, Some(header.seq), header.timestamp_us),
            &index::indexed_events(&events),
            &mut keys,
        );
        // One record per entry here: the first and last of its write batch.
        keys.finish(&mut batch);
        // A run of records the source's retention reclaimed (copied with a snapshot).
        index::add_if_hole(&mut batch, header.position, frame);
        let mut effects = Effects::default();
        for (e, _) in &events {
            // A fence written by the leader binds this replica too once it leads (decided where
            // the leader decides expected versions: in the log, in order).
            if e.stream == FENCES_STREAM {
                effects
                    .fences
                    .extend(FenceChange::decode(&e.event_type, &e.data).ok());
            }
            effects.heads.insert(e.stream.clone(), e.version);
            effects.ids.insert(
                e.id,
                PendingEvent {
                    position: header.position,
                    stream: Arc::from(e.stream.as_str()),
                    version: e.version,
                    event: NewEvent {
                        id: e.id,
                        event_type: e.event_type.clone(),
                        data: e.data.clone(),
                        metadata: e.metadata.clone(),
                    },
                },
            );
        }
        Ok((effects, batch, events.len() as u64))
    }

    /// Takes a record found in the log at open as written and unfinished.
    fn adopt(
        &mut self,
        file: Arc<dyn crate::fs::FileHandle>,
        r: &RawRecord,
        mut effects: Effects,
        batch: IndexBatch,
        events: u64,
    ) -> WrittenGroup<()> {
        effects.position = r.header.position;
        effects.seq = r.header.seq;
        for (stream, version) in &effects.heads {
            self.heads.insert(stream.clone(), *version);
        }
        self.publish(effects);
        WrittenGroup {
            file,
            end: r.header.position + r.frame.len() as u64,
            next_seq: r.header.seq + format::records_in(&r.frame),
            events,
            bytes: r.frame.len() as u64,
            batch,
            answers: Vec::new(),
            holes: format::read_kind(&r.frame) == KIND_HOLE,
        }
    }

    /// Removes the entries from `seq` on; returns how many of them were unfinished (their
    /// [`WrittenEntry`]s must be dropped by the caller).
    pub fn truncate_entries(&mut self, seq: u64) -> Result<usize> {
        if seq >= self.log.next_seq() {
            return Ok(0);
        }
        match self.entry_position(seq)? {
            Some(position) => self.truncate_inner(position),
            None => Err(Error::invalid(
                "seq",
                format!("entry {seq} is before the log's first entry"),
            )),
        }
    }

    /// Sequence number of the log's first record, if it has any.
    pub fn first_seq(&self) -> Option<u64> {
        if self.log.is_empty() {
            return None;
        }
        self.reader.log.segments().first().map(|s| s.first_seq)
    }

    /// Sequence number the next entry must have.
    pub fn next_seq(&self) -> u64 {
        self.log.next_seq()
    }

    /// Where entry `seq` is, if the log holds it — for an entry retention reclaimed, where its
    /// hole is (or, on the node that reclaimed it, where the entry was: inside the hole).
    pub fn entry_position(&self, seq: u64) -> Result<Option<Position>> {
        if seq >= self.log.next_seq() || self.first_seq().is_none_or(|f| seq < f) {
            return Ok(None);
        }
        let anchor = lock(&self.inflight)
            .iter()
            .rev()
            .find(|e| e.seq <= seq)
            .map(|e| (e.position, e.seq));
        match anchor {
            Some((position, s)) if s == seq => Ok(Some(position)),
            Some((position, _)) => {
                // A multi-record group (the engine's pipeline): walk it.
                let (raw, _) = self.reader.log.scan(
                    position,
                    self.log.next_position(),
                    usize::MAX,
                    usize::MAX,
                )?;
                Ok(raw
                    .iter()
                    .find(|r| covers(r, seq))
                    .map(|r| r.header.position))
            }
            None => match self.reader.index.position_of_seq(seq)? {
                Some(position) => Ok(Some(position)),
                None => self.hole_of(seq),
            },
        }
    }

    /// The position of the hole holding entry `seq`, if retention reclaimed it: a log indexed
    /// from its records (a snapshot's copy, an index rebuild) knows only a hole's first entry.
    fn hole_of(&self, seq: u64) -> Result<Option<Position>> {
        let Some((_, position)) = self.reader.index.seq_at_or_before(seq)? else {
            return Ok(None);
        };
        let (raw, _) = self
            .reader
            .log
            .scan(position, self.log.next_position(), 1, usize::MAX)?;
        Ok(raw
            .first()
            .filter(|r| format::read_kind(&r.frame) == KIND_HOLE && covers(r, seq))
            .map(|r| r.header.position))
    }

    /// Entries `from..to` (clipped to what the log holds), at most `max_bytes` of them (but at
    /// least one). Records that hold no entry (gap records, holes) are left out.
    pub fn read_entries(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<RawRecord>> {
        let Some(first) = self.first_seq() else {
            return Ok(Vec::new());
        };
        let from = from.max(first);
        let to = to.min(self.log.next_seq());
        if from >= to {
            return Ok(Vec::new());
        }
        let Some(position) = self.entry_position(from)? else {
            return Err(Error::Index(format!("entry {from} has no position")));
        };
        // On the node that reclaimed it, an entry's indexed position lies inside its hole.
        let position = match self.reader.is_reclaimed(position) {
            true => self
                .reader
                .log
                .normalize(self.reader.reclaimed_end(position)),
            false => position,
        };
        let (mut raw, _) = self.reader.log.scan(
            position,
            self.log.next_position(),
            (to - from) as usize,
            max_bytes,
        )?;
        // Records that hold no entry: gap records (indexes the log skipped) and holes (entries
        // retention reclaimed).
        raw.retain(|r| {
            r.header.seq < to && !matches!(format::read_kind(&r.frame), KIND_GAP | KIND_HOLE)
        });
        Ok(raw)
    }

    /// The log's last index, whatever record holds it (an entry retention reclaimed is no
    /// entry to read, but the log holds it).
    pub fn last_seq(&self) -> Option<u64> {
        (!self.log.is_empty()).then(|| self.log.next_seq() - 1)
    }

    /// Header of the log's last entry (`None` too when it lies in a hole).
    pub fn last_entry(&self) -> Result<Option<RecordHeader>> {
        let Some(last) = self.last_seq() else {
            return Ok(None);
        };
        Ok(self
            .read_entries(last, last + 1, 1)?
            .first()
            .map(|r| r.header))
    }
}

/// Whether record `r` holds entry `seq` (a hole holds every entry it reclaimed).
fn covers(r: &RawRecord, seq: u64) -> bool {
    r.header.seq <= seq && seq < r.header.seq + format::records_in(&r.frame)
}
