//! Reads: streams by version through the stream index, the whole log by position. Readers
//! share the log and the index with the writer and never see past the log's visible end.

use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::event::{Direction, Position, Record, RecordedEvent};
use crate::format;
use crate::index::Index;
use crate::log::{LogReader, RawRecord};
use crate::validate::validate_stream_name;

/// A batch of records read from the whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAllBatch {
    /// The records, in log order.
    pub records: Vec<Record>,
    /// Where to continue reading.
    pub next: Position,
}

/// A point in a log's history that a read can be taken as of: it returns exactly what a
/// reader at that point saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A stream as it was when its event `version` was its last (stream reads only).
    Version(u64),
    /// The log as it was once the record at `position` (and every one before it) was in it.
    Position(Position),
    /// The log as it was at `timestamp_us`: records stamped at or before it. Timestamps
    /// increase along the log (the store's hybrid logical clock), so this is a prefix too.
    Timestamp(u64),
}

/// Records and bytes one log read of a timestamp lookup takes (it reads about
/// `index::TIME_KEY_SPACING_BYTES` in all).
const STAMP_SCAN_RECORDS: usize = 256;
const STAMP_SCAN_BYTES: usize = 256 << 10;

/// The read side of a store; cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Reader {
    pub(crate) log: Arc<LogReader>,
    pub(crate) index: Arc<Index>,
    pub(crate) limits: Limits,
    pub(crate) reclaimed: Arc<crate::reclaimed::Reclaimed>,
}

impl Reader {
    /// The log's segments, oldest first (for copying the log whole: snapshots by segments).
    pub fn segments(&self) -> Vec<Arc<crate::log::Segment>> {
        self.log.segments()
    }

    /// The segment holding `position`.
    pub fn segment_at(&self, position: Position) -> Option<Arc<crate::log::Segment>> {
        self.log.segment_at(position)
    }

    /// Reads up to `limit` events of `stream` starting at version `from` (inclusive). `None`
    /// starts at the first version forwards, or the last one backwards.
    pub fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_stream_as_of(stream, from, direction, limit, None)
    }

    /// The end of the log prefix a read as of `point` sees: records before it (for
    /// [`AsOf::Version`], the whole visible log; the version bounds the stream instead).
    pub fn as_of_end(&self, point: AsOf) -> Result<Position> {
        let end = self.log.end();
        Ok(match point {
            AsOf::Version(_) => end,
            AsOf::Position(p) => {
                if self.is_reclaimed(p) {
                    return Err(self.before_horizon("as_of_position", p));
                }
                if p >= end {
                    return Err(Error::invalid(
                        "as_of_position",
                        format!(
                            "{p} is not in this log yet (not written, or not yet applied on this node)"
                        ),
                    ));
                } else {
                    // The record at `p` is in: the prefix ends where the next one starts.
                    let Some((record, next)) = self.record_at(self.log.normalize(p))? else {
                        return Err(Error::invalid(
                            "as_of_position",
                            format!("{p} is not the position of a record in this log"),
                        ));
                    };
                    if record.header.timestamp_us < self.reclaimed.horizon_us() {
                        return Err(self.before_horizon("as_of_position", p));
                    }
                    next
                }
            }
            AsOf::Timestamp(t) if t < self.reclaimed.horizon_us() => {
                return Err(self.before_horizon("as_of.timestamp_us", t));
            }
            AsOf::Timestamp(t) => match t.checked_add(1) {
                Some(after) => self.position_at_or_after(after)?.unwrap_or(end),
                None => end,
            },
        })
    }

    /// The end of the prefix `as_of` sees (`None`: the whole visible log).
    pub(crate) fn end_of(&self, as_of: Option<AsOf>) -> Result<Position> {
        match as_of {
            Some(point) => self.as_of_end(point),
            None => Ok(self.log.end()),
        }
    }

    fn before_horizon(&self, field: &str, point: u64) -> Error {
        Error::invalid(
            field,
            format!(
                "{point} is before the retention horizon (timestamp {} µs): events a reader saw then may have been reclaimed",
                self.reclaimed.horizon_us()
            ),
        )
    }

    /// Whether the event or record at `position` was reclaimed by retention (dead, its bytes
    /// gone): reads skip it.
    pub fn is_reclaimed(&self, position: Position) -> bool {
        position < self.log.first_base() || self.reclaimed.contains(position)
    }

    /// Where reading continues from a reclaimed `position`.
    pub(crate) fn reclaimed_end(&self, position: Position) -> Position {
        if position < self.log.first_base() {
            self.log.start()
        } else {
            self.reclaimed.end_of(position)
        }
    }

    /// The last version of `stream` whose event lies before `end`, found by binary search
    /// over the stream index (versions and positions increase together).
    pub(crate) fn version_before(&self, stream: &str, end: Position) -> Result<Option<u64>> {
        let Some((head, head_position)) = self.index.stream_head(stream)? else {
            return Ok(None);
        };
        if head_position < end {
            return Ok(Some(head));
        }
        // The position of `v`, or of the first version after it that has an entry: versions
        // retention reclaimed have none once the index was rebuilt from the log (the stream's
        // newest always has one).
        let position_of = |v: u64| -> Result<Position> {
            if let Some(slot) = self.index.stream_slot(stream, v)? {
                return Ok(slot.position);
            }
            self.index
                .stream_range(stream, Some(v), Direction::Forwards, 1)?
                .first()
                .map(|(_, s)| s.position)
                .ok_or_else(|| Error::Index(format!("{stream}@{v} has no stream entry")))
        };
        // Invariant: every version < lo is before `end`; every version >= hi is not.
        let (mut lo, mut hi) = (0u64, head);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if position_of(mid)? < end {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo.checked_sub(1))
    }

    /// [`Reader::read_stream`] as of a point in the log's history (`None`: now). Bounded by
    /// `read_bytes_max` too: [`Reader::read_stream_page`] says whether that cut the answer.
    pub fn read_stream_as_of(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        as_of: Option<AsOf>,
    ) -> Result<Vec<RecordedEvent>> {
        let bytes_max = self.limits.read_bytes_max;
        self.read_stream_page(stream, from, direction, limit, bytes_max, as_of)
            .map(|page| page.events)
    }

    /// Up to `limit` events of `stream` as of a point, and at most `bytes_max` bytes of event
    /// frames (always at least one event): the page stops before the event that would pass
    /// either bound, and says when the bytes cut it. Nothing past the bound is read.
    pub fn read_stream_page(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        bytes_max: usize,
        as_of: Option<AsOf>,
    ) -> Result<StreamPage> {
        validate_stream_name("stream", stream, &self.limits)?;
        if limit > self.limits.read_events_max {
            return Err(Error::LimitExceeded {
                limit: "read_events_max",
                value: limit as u64,
                max: self.limits.read_events_max as u64,
            });
        }
        let end = self.end_of(as_of)?;
        // The stream's last version visible as of the point.
        let last = match as_of {
            Some(AsOf::Version(v)) => Some(v),
            Some(_) => match self.version_before(stream, end)? {
                Some(v) => Some(v),
                None => return Ok(StreamPage::default()),
            },
            None => None,
        };
        let from = match (direction, last) {
            (Direction::Backwards, Some(last)) => Some(from.map_or(last, |f| f.min(last))),
            _ => from,
        };
        // Forwards as of a version: nothing past it is wanted, so do not scan for it.
        let limit = match (direction, last) {
            (Direction::Forwards, Some(l)) => match l.checked_sub(from.unwrap_or(0)) {
                Some(span) => limit.min(
                    usize::try_from(span)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1),
                ),
                None => return Ok(StreamPage::default()),
            },
            _ => limit,
        };
        let slots: Vec<(u64, crate::index::StreamSlot)> = self
            .index
            .stream_range(stream, from, direction, limit)?
            .into_iter()
            // Past the point read as of; or being truncated, or indexed a moment before it
            // became visible; or dead and reclaimed.
            .filter(|(version, slot)| {
                slot.position < end
                    && last.is_none_or(|l| *version <= l)
                    && !self.is_reclaimed(slot.position)
            })
            .collect();
        let (slots, cut) = within_bytes(slots, bytes_max);
        let mut events = Vec::with_capacity(slots.len());
        // Events of one record that sit next to each other are read with one read.
        for run in
            slots.chunk_by(|a, b| a.1.position == b.1.position && a.1.slot.offset < b.1.slot.offset)
        {
            let position = run[0].1.position;
            let frames: Vec<_> = run.iter().map(|(_, s)| s.slot).collect();
            let read = self.log.read_events(position, &frames)?;
            for ((version, _), event) in run.iter().zip(read) {
                if event.stream != stream || event.version != *version {
                    return Err(self.log.corruption_at(
                        position,
                        format!(
                            "index says {stream}@{version}, log holds {}@{}",
                            event.stream, event.version
                        ),
                    ));
                }
                events.push(event);
            }
        }
        Ok(StreamPage { events, cut })
    }

    /// Reads up to `limit` records from `from` (0 for the start, or a position returned by an
    /// earlier read or append).
    pub fn read_all(&self, from: Position, limit: usize) -> Result<ReadAllBatch> {
        self.read_all_as_of(from, limit, None)
    }

    /// [`Reader::read_all`] as of a point (a position or a timestamp; `None`: now): the log
    /// ends there for this read.
    pub fn read_all_as_of(
        &self,
        from: Position,
        limit: usize,
        as_of: Option<AsOf>,
    ) -> Result<ReadAllBatch> {
        if let Some(AsOf::Version(_)) = as_of {
            return Err(Error::invalid(
                "as_of_version",
                "is for stream reads; read the whole log as of a position or a timestamp",
            ));
        }
        if limit > self.limits.read_records_max {
            return Err(Error::LimitExceeded {
                limit: "read_records_max",
                value: limit as u64,
                max: self.limits.read_records_max as u64,
            });
        }
        let end = self.log.end();
        // Before the log's first segment (dropped by retention) or inside a reclaimed run:
        // everything there was dead, so continue from the next record.
        let mut from = from;
        while from != 0 && self.is_reclaimed(from) {
            let next = self.log.normalize(self.reclaimed_end(from));
            if next == from {
                break;
            }
            from = next;
        }
        let from = self.log.normalize(from);
        let at_end = from == self.log.normalize(end);
        if from != 0 && !at_end && !self.is_record_position(from)? {
            return Err(Error::invalid(
                "position",
                format!("{from} is not the position of a record in this log"),
            ));
        }
        let upto = match as_of {
            Some(point) => self.as_of_end(point)?,
            None => end,
        };
        if from >= upto {
            return Ok(ReadAllBatch {
                records: Vec::new(),
                next: from,
            });
        }
        let (raw, next) = self
            .log
            .scan(from, upto, limit, self.limits.read_bytes_max)?;
        let mut records = Vec::with_capacity(raw.len());
        for r in raw {
            let events = r.events(&self.log)?;
            records.push(Record {
                position: r.header.position,
                seq: r.header.seq,
                timestamp_us: r.header.timestamp_us,
                events,
                copy: r.header.is_copy(),
            });
        }
        Ok(ReadAllBatch { records, next })
    }

    /// Whether a record starts at `position`: an intact frame is there and the stream index
    /// places its first event there. (A frame forged inside some event's data fails this.)
    pub fn is_record_position(&self, position: Position) -> Result<bool> {
        Ok(self.record_at(position)?.is_some())
    }

    /// The record starting at `position` (as [`Reader::is_record_position`] decides) and the
    /// position after it.
    fn record_at(&self, position: Position) -> Result<Option<(RawRecord, Position)>> {
        let end = self.log.end();
        if position >= end {
            return Ok(None);
        }
        let Ok((mut raw, next)) = self.log.scan(position, end, 1, 1) else {
            return Ok(None);
        };
        let Some(record) = raw.pop() else {
            return Ok(None);
        };
        let Ok(events) = format::decode_events_with_slots(&record.frame) else {
            return Ok(None);
        };
        if record.header.position != position {
            return Ok(None);
        }
        let here = match events.first() {
            Some((first, _)) => self
                .index
                .stream_slot(&first.stream, first.version)?
                .is_some_and(|s| s.position == position),
            // A record without events (a new Raft leader's blank entry, a membership change):
            // its seq entry places it, where the log keeps one (a replica's always does). A
            // caught-up `$all` subscription resumes at exactly such a record after a failover.
            None => self.index.position_of_seq(record.header.seq)? == Some(position),
        };
        Ok(here.then_some((record, next)))
    }

    /// The last version of a stream, or `None` if it has no events.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        validate_stream_name("stream", stream, &self.limits)?;
        Ok(self
            .index
            .stream_head(stream)?
            .filter(|(_, p)| *p < self.log.end())
            .map(|(v, _)| v))
    }

    /// The committed event with this id, if any.
    pub fn event_by_id(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        let Some(entry) = self.index.event_by_id(id)? else {
            return Ok(None);
        };
        let Some(slot) = self.index.stream_slot(&entry.stream, entry.version)? else {
            return Err(Error::Index(format!(
                "event {id} has an id entry but no stream entry"
            )));
        };
        if slot.position >= self.log.end() || self.is_reclaimed(slot.position) {
            return Ok(None);
        }
        self.log.read_event(slot.position, slot.slot).map(Some)
    }

    /// Position of the first record whose timestamp is at or after `timestamp_us`.
    pub fn position_at_or_after(&self, timestamp_us: u64) -> Result<Option<Position>> {
        Ok(self
            .first_stamped_at_or_after(timestamp_us)?
            .map(|(_, p)| p)
            .filter(|p| *p < self.log.end()))
    }

    /// The timestamp and position of the first record of events stamped at or after
    /// `timestamp_us` (possibly past the end readers see: callers compare). The time index
    /// is sparse (`index::TimeKeys`): the records between the last key before `timestamp_us`
    /// and the first at or after it are read, about `TIME_KEY_SPACING_BYTES` at most.
    pub fn first_stamped_at_or_after(&self, timestamp_us: u64) -> Result<Option<(u64, Position)>> {
        let after = self.index.time_key_at_or_after(timestamp_us)?;
        let from = self
            .index
            .time_key_before(timestamp_us)?
            .map_or(0, |(_, p)| p);
        let to = after.map_or(self.log.end(), |(_, p)| p.min(self.log.end()));
        let mut found = None;
        self.scan_stamps(from, to, |t, p| {
            if t >= timestamp_us {
                found = Some((t, p));
            }
            found.is_none()
        })?;
        Ok(found.or(after))
    }

    /// The newest timestamp of the records before `end` (0 if none): the last time key's (the
    /// last indexed record's, see `index::BatchKeys::finish`) and those of the records after
    /// it, not indexed yet (a replica's unapplied tail).
    pub(crate) fn last_timestamp(&self, end: Position) -> Result<u64> {
        let last_key = self.index.time_key_before(u64::MAX)?;
        let mut last = last_key.map_or(0, |(t, _)| t);
        self.scan_stamps(last_key.map_or(0, |(_, p)| p), end, |t, _| {
            last = last.max(t);
            true
        })?;
        Ok(last)
    }

    /// Calls `f` with the timestamp and position of each record of events in `from..to`
    /// that is still in the log (reclaimed runs are skipped) until it returns false.
    fn scan_stamps(
        &self,
        from: Position,
        to: Position,
        mut f: impl FnMut(u64, Position) -> bool,
    ) -> Result<()> {
        let mut at = from;
        while at != 0 && at < to && self.is_reclaimed(at) {
            let next = self.reclaimed_end(at);
            if next <= at {
                break;
            }
            at = next;
        }
        while at < to {
            let (raw, next) = self
                .log
                .scan(at, to, STAMP_SCAN_RECORDS, STAMP_SCAN_BYTES)?;
            for r in &raw {
                let events = format::read_kind(&r.frame) == format::KIND_EVENTS;
                if events && !f(r.header.timestamp_us, r.header.position) {
                    return Ok(());
                }
            }
            if raw.is_empty() || next <= at {
                break;
            }
            at = next;
        }
        Ok(())
    }

    /// The end of the log as readers see it: every record before it is durable.
    pub fn end(&self) -> Position {
        self.log.end()
    }

    /// Changes whenever `end` moves; live subscriptions wait on it instead of polling.
    pub fn watch_end(&self) -> watch::Receiver<Position> {
        self.log.watch_end()
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// One page of a stream read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamPage {
    /// The events, in the read's direction.
    pub events: Vec<RecordedEvent>,
    /// The byte bound stopped the page before its event limit: more events may follow.
    pub cut: bool,
}

/// The longest prefix of `slots` whose event frames fit in `bytes_max` (at least one), and
/// whether that left any out.
fn within_bytes(
    mut slots: Vec<(u64, crate::index::StreamSlot)>,
    bytes_max: usize,
) -> (Vec<(u64, crate::index::StreamSlot)>, bool) {
    let mut bytes = 0usize;
    let keep = slots
        .iter()
        .position(|(_, s)| {
            bytes = bytes.saturating_add(s.slot.len as usize);
            bytes > bytes_max
        })
        .map_or(slots.len(), |over| over.max(1));
    let cut = keep < slots.len();
    slots.truncate(keep);
    (slots, cut)
}
