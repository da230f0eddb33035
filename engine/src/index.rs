//! The indexes, derived from the log and rebuildable from it at any time:
//!
//! ```text
//! "c"                               -> { next_position: u64 | next_seq: u64 }   checkpoint
//! "s" stream 0x00 version: u64 BE   -> { position: u64 | offset: u32 | len: u32 }  stream index
//! "e" event_id: [u8; 16]            -> { position: u64 | version: u64 | stream }  idempotency
//! "t" timestamp_us: u64 BE position: u64 BE -> {}                                 time index
//! "q" seq: u64 BE                    -> { position: u64 }          Raft index (replicas only)
//! "r" name                           -> opaque                                   Raft state
//! "h" start: u64 BE                  -> { end: u64 | horizon_us: u64 }  a range of the log
//!                                       retention reclaimed, and the as-of horizon it set
//! ```
//! Values are little-endian. Stream names hold no control characters, so `0x00` ends a name
//! and keys of one stream sort by version. The checkpoint is written in the same atomic batch
//! as the entries it covers: the index always describes exactly the records before
//! `next_position`.

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Direction, Position, RecordedEvent};
use crate::format::{bytes_at, u32_at, u64_at, EventSlot};
use crate::index_store::{IndexBatch, IndexStore};

const CHECKPOINT_KEY: &[u8] = b"c";

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
    key.push(b's');
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn id_key(id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(b'e');
    key.extend_from_slice(id.as_bytes());
    key
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
    key.push(b't');
    key.extend_from_slice(&timestamp_us.to_be_bytes());
    key.extend_from_slice(&position.to_be_bytes());
    key
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

    /// The last version of a stream and the position holding it.
    pub fn stream_head(&self, stream: &str) -> Result<Option<(u64, Position)>> {
        Ok(self
            .stream_range(stream, None, Direction::Backwards, 1)?
            .first()
            .map(|(v, slot)| (*v, slot.position)))
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

    /// Where one version of a stream is.
    pub fn stream_slot(&self, stream: &str, version: u64) -> Result<Option<StreamSlot>> {
        self.store
            .get(&stream_key(stream, version))?
            .map(|v| decode_slot(&v))
            .transpose()
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
        let (start, end) = match (direction, from) {
            (Direction::Forwards, from) => (
                stream_key(stream, from.unwrap_or(0)),
                stream_key_end(stream),
            ),
            (Direction::Backwards, Some(from)) => match from.checked_add(1) {
                Some(next) => (stream_key(stream, 0), stream_key(stream, next)),
                None => (stream_key(stream, 0), stream_key_end(stream)),
            },
            (Direction::Backwards, None) => (stream_key(stream, 0), stream_key_end(stream)),
        };
        let reverse = direction == Direction::Backwards;
        self.store
            .scan(&start, &end, reverse, limit)?
            .into_iter()
            .map(|(k, v)| {
                let version = tail8(&k).ok_or_else(|| corrupt_index("a stream key"))?;
                Ok((version, decode_slot(&v)?))
            })
            .collect()
    }

    /// The first record whose timestamp is at or after `timestamp_us`.
    pub fn first_position_at_or_after(&self, timestamp_us: u64) -> Result<Option<Position>> {
        Ok(self.first_at_or_after(timestamp_us)?.map(|(_, p)| p))
    }

    /// The timestamp and position of the first record stamped at or after `timestamp_us`.
    pub fn first_at_or_after(&self, timestamp_us: u64) -> Result<Option<(u64, Position)>> {
        let found = self
            .store
            .scan(&time_key(timestamp_us, 0), b"u", false, 1)?;
        found.first().map(|(k, _)| time_key_fields(k)).transpose()
    }

    /// The largest timestamp in the time index.
    pub fn last_timestamp(&self) -> Result<Option<u64>> {
        let found = self.store.scan(&time_key(0, 0), b"u", true, 1)?;
        Ok(found
            .first()
            .map(|(k, _)| time_key_fields(k))
            .transpose()?
            .map(|(timestamp, _)| timestamp))
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

fn decode_slot(v: &[u8]) -> Result<StreamSlot> {
    match (v.len(), u64_at(v, 0), u32_at(v, 8), u32_at(v, 12)) {
        (16, Some(position), Some(offset), Some(len)) => Ok(StreamSlot {
            position,
            slot: EventSlot { offset, len },
        }),
        _ => Err(corrupt_index("a stream entry")),
    }
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

/// Adds a record's entries. Events of one stream must come in ascending versions.
/// `seq` is indexed only when given (a Raft log looks entries up by index; a single node never
/// does, and skipping the key saves a fourth of its index writes for one-event appends).
pub fn add_record(
    batch: &mut IndexBatch,
    position: Position,
    seq: Option<u64>,
    timestamp_us: u64,
    events: &[IndexedEvent<'_>],
) {
    if let Some(seq) = seq {
        batch.put(seq_key(seq), position.to_le_bytes().to_vec());
    }
    for e in events {
        let mut slot = Vec::with_capacity(16);
        slot.extend_from_slice(&position.to_le_bytes());
        slot.extend_from_slice(&e.slot.offset.to_le_bytes());
        slot.extend_from_slice(&e.slot.len.to_le_bytes());
        batch.put(stream_key(e.stream, e.version), slot);
        let mut id = Vec::with_capacity(16 + e.stream.len());
        id.extend_from_slice(&position.to_le_bytes());
        id.extend_from_slice(&e.version.to_le_bytes());
        id.extend_from_slice(e.stream.as_bytes());
        batch.put(id_key(e.id), id);
    }
    if !events.is_empty() {
        batch.put(time_key(timestamp_us, position), Vec::new());
    }
}

/// Removes a record's entries (log truncation).
pub fn remove_record(
    batch: &mut IndexBatch,
    position: Position,
    seq: u64,
    timestamp_us: u64,
    events: &[IndexedEvent<'_>],
) {
    batch.delete(seq_key(seq));
    for e in events {
        batch.delete(stream_key(e.stream, e.version));
        batch.delete(id_key(e.id));
    }
    if !events.is_empty() {
        batch.delete(time_key(timestamp_us, position));
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
    batch.put(CHECKPOINT_KEY.to_vec(), v);
}

/// Stores a value for the layer above, in the same atomic batch as the records it describes.
pub fn set_meta(batch: &mut IndexBatch, name: &str, value: Vec<u8>) {
    batch.put(meta_key(name), value);
}
