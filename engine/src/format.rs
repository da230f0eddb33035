//! The record format. One record is one atomic append batch. Lengths and integers are
//! little-endian. The CRC-32 (crc32fast) is checked right before a frame is written (in debug
//! builds) and on every read.
//!
//! ```text
//! record = { len: u32 | crc: u32 | header | body }          len = |header| + |body|
//!                                                           crc = crc32(header ++ body)
//! header = { magic: u32 = "STRr" | kind: u8 | flags: u8 | reserved: u16 = 0 |
//!            position: u64 | seq: u64 | synced_end: u64 | timestamp_us: u64 |
//!            term: u64 | leader: u64 }                                      (56 bytes)
//! body   = kind 1 (events):     { event_count: u32 | event * event_count }
//!          kind 2 (blank):      {}                (a Raft leader's no-op, or a rejected append)
//!          kind 3 (membership): opaque bytes      (a Raft membership change, JSON)
//!          kind 4 (gap):        {}                (an index skipped by the Raft log)
//!          kind 5 (hole):       { records: u64 | horizon_us: u64 | zeros }  (a run of records
//!                               retention reclaimed, and the as-of horizon it set; the zeros
//!                               are a hole in a sparse file, not disk blocks)
//! event  = { event_len: u32 | event_crc: u32 | stream_len: u16 | stream | version: u64 |
//!            id: [u8; 16] | timestamp_us: u64 | type_len: u16 | type |
//!            data_len: u32 | data | metadata_len: u32 | metadata }
//!          event_len = bytes after event_crc; event_crc = crc32 of those bytes
//! ```
//!
//! `flags`: bit 0 ([`FLAG_COPY`]) marks a record of events copied from another shard by a
//! slot-range move (their stream reads count them; `$all` leaves them out, since the source
//! shard's log still holds the originals); the other bits are 0.
//!
//! `position` is the record's own position, so a read at a position that is not a record
//! boundary is told apart from damage. `synced_end` is how far the log was known to be synced
//! (fdatasync returned) when this record was written: recovery uses it to tell a torn write
//! from corruption. Damage at P followed by an intact record whose `synced_end` is past P means
//! P had been synced, so it is corruption; otherwise P belongs to writes still in flight at the
//! crash, a torn tail. `seq` is the Raft log index and (`term`, `leader`) the Raft leader that
//! wrote the entry; a single node writes term 0. Each event has its own CRC so a stream
//! read can fetch and verify one event without reading the whole record.

// Bytes decoded here come from disks and peers: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use bytes::{Buf, Bytes};
use uuid::Uuid;

use crate::event::{Position, RecordedEvent};

/// Bytes of `len` + `crc`.
pub const FRAME_BYTES: usize = 8;
/// Bytes of the record header.
pub const HEADER_BYTES: usize = 56;
/// Record magic, "STRr".
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"STRr");
/// Kind of a record holding an append batch.
pub const KIND_EVENTS: u8 = 1;
/// Kind of a record without events: a Raft leader's no-op, or an append rejected at its log
/// index (the rejection is decided from the log before it, the same on every replica).
pub const KIND_BLANK: u8 = 2;
/// Kind of a record holding a Raft membership change (opaque bytes to the engine).
pub const KIND_MEMBERSHIP: u8 = 3;
/// Kind of a record standing for a Raft index that was never appended (a log that continues
/// past a gap); it is not a Raft entry and holds nothing.
pub const KIND_GAP: u8 = 4;
/// Kind of a record standing for a run of `records` consecutive records whose events were all
/// dead and were reclaimed by retention: same position, first sequence number and length as
/// the run, a body of zeros that the rewritten segment file leaves as a hole.
pub const KIND_HOLE: u8 = 5;
/// Bytes of a hole frame that are written (frame, header, record count, horizon); the rest is
/// zeros.
pub const HOLE_PREFIX_BYTES: usize = FRAME_BYTES + HEADER_BYTES + 16;
/// Header flag of a record whose events a slot-range move copied from another shard.
pub const FLAG_COPY: u8 = 1;
/// Fixed bytes of an event frame besides its variable fields.
pub const EVENT_FIXED_BYTES: usize = 4 + 4 + 2 + 8 + 16 + 8 + 2 + 4 + 4;

/// The parsed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record's own position.
    pub position: Position,
    /// Sequence number.
    pub seq: u64,
    /// How far the log was synced when this record was written.
    pub synced_end: Position,
    /// Timestamp of the append.
    pub timestamp_us: u64,
    /// Raft term of the leader that wrote the entry (0 on a single node).
    pub term: u64,
    /// Raft node id of that leader (0 on a single node).
    pub leader: u64,
    /// Flags ([`FLAG_COPY`]); 0 for records that are not copies.
    pub flags: u8,
}

impl RecordHeader {
    /// Whether the record is a slot-range move's copy (left out of `$all`).
    pub fn is_copy(&self) -> bool {
        self.flags & FLAG_COPY != 0
    }
}

/// Where one event sits inside its record (for the stream index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSlot {
    /// Offset of the event frame from the start of the record frame.
    pub offset: u32,
    /// Length of the event frame.
    pub len: u32,
}

/// An event to encode: borrowed fields.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Version.
    pub version: u64,
    /// Id.
    pub id: Uuid,
    /// Type name.
    pub event_type: &'a str,
    /// Payload.
    pub data: &'a [u8],
    /// Metadata.
    pub metadata: &'a [u8],
}

/// Encoded length of one event frame.
pub fn event_frame_len(stream: &str, event_type: &str, data: usize, metadata: usize) -> usize {
    EVENT_FIXED_BYTES + stream.len() + event_type.len() + data + metadata
}

/// Where each event of a record landed, in order: held in place for records of up to two
/// events (most appends), so encoding one allocates nothing for it.
pub type Slots = smallvec::SmallVec<[EventSlot; 2]>;

/// Appends one record frame to `out`; returns where each event landed.
#[allow(clippy::indexing_slicing)] // indexes only bytes it has just written
pub fn encode_record(out: &mut Vec<u8>, header: RecordHeader, events: &[EventFields<'_>]) -> Slots {
    let start = out.len();
    put_header(out, KIND_EVENTS, &header);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let mut slots = Slots::with_capacity(events.len());
    for e in events {
        let event_start = out.len();
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&(e.stream.len() as u16).to_le_bytes());
        out.extend_from_slice(e.stream.as_bytes());
        out.extend_from_slice(&e.version.to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&header.timestamp_us.to_le_bytes());
        out.extend_from_slice(&(e.event_type.len() as u16).to_le_bytes());
        out.extend_from_slice(e.event_type.as_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(e.data);
        out.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(e.metadata);
        let body = &out[event_start + 8..];
        let event_len = body.len() as u32;
        let event_crc = crc32fast::hash(body);
        out[event_start..event_start + 4].copy_from_slice(&event_len.to_le_bytes());
        out[event_start + 4..event_start + 8].copy_from_slice(&event_crc.to_le_bytes());
        slots.push(EventSlot {
            offset: (event_start - start) as u32,
            len: (out.len() - event_start) as u32,
        });
    }
    seal_frame(&mut out[start..]);
    slots
}

/// Appends one record frame without events: `kind` is [`KIND_BLANK`] (with an empty body) or
/// [`KIND_MEMBERSHIP`].
#[allow(clippy::indexing_slicing)] // indexes only bytes it has just written
pub fn encode_meta_record(out: &mut Vec<u8>, kind: u8, header: RecordHeader, body: &[u8]) {
    debug_assert!(matches!(kind, KIND_BLANK | KIND_MEMBERSHIP | KIND_GAP));
    let start = out.len();
    put_header(out, kind, &header);
    out.extend_from_slice(body);
    seal_frame(&mut out[start..]);
}

fn put_header(out: &mut Vec<u8>, kind: u8, header: &RecordHeader) {
    out.extend_from_slice(&[0u8; FRAME_BYTES]);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&[kind, header.flags, 0, 0]);
    out.extend_from_slice(&header.position.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.synced_end.to_le_bytes());
    out.extend_from_slice(&header.timestamp_us.to_le_bytes());
    out.extend_from_slice(&header.term.to_le_bytes());
    out.extend_from_slice(&header.leader.to_le_bytes());
}

/// Fills in `len` and `crc` of the frame that is all of `frame`.
#[allow(clippy::indexing_slicing)] // a frame built here is at least a header long
fn seal_frame(frame: &mut [u8]) {
    let len = (frame.len() - FRAME_BYTES) as u32;
    let crc = crc32fast::hash(&frame[FRAME_BYTES..]);
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(
        check_frame(frame, u32::MAX as usize),
        FrameCheck::Valid(frame.len())
    );
}

/// Gives a record frame copied from another replica this log's `position` and `synced_end`
/// (the only header fields that are local) and a fresh CRC. Event slots are relative to the
/// frame, so they stay valid.
#[allow(clippy::indexing_slicing)] // callers pass frames [`check_frame`] found valid
pub fn restamp(frame: &mut [u8], position: Position, synced_end: Position) {
    frame[FRAME_BYTES + 8..FRAME_BYTES + 16].copy_from_slice(&position.to_le_bytes());
    frame[FRAME_BYTES + 24..FRAME_BYTES + 32].copy_from_slice(&synced_end.to_le_bytes());
    seal_frame(frame);
}

/// The written prefix of a hole frame of `frame_len` bytes standing for `records` records
/// starting at `header` (its position and first sequence number), written by a retention pass
/// that set the as-of horizon `horizon_us`, with the CRC computed as if the zeros after it were
/// written too. `frame_len` is at least [`HOLE_PREFIX_BYTES`].
pub fn hole_prefix(
    header: RecordHeader,
    records: u64,
    horizon_us: u64,
    frame_len: usize,
) -> Vec<u8> {
    debug_assert!(frame_len >= HOLE_PREFIX_BYTES);
    let mut out = Vec::with_capacity(HOLE_PREFIX_BYTES);
    put_header(&mut out, KIND_HOLE, &header);
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&horizon_us.to_le_bytes());
    let len = (frame_len - FRAME_BYTES) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(out.get(FRAME_BYTES..).unwrap_or_default());
    crc_zeros(&mut crc, frame_len.saturating_sub(HOLE_PREFIX_BYTES));
    let mut prefix = len.to_le_bytes().to_vec();
    prefix.extend_from_slice(&crc.finalize().to_le_bytes());
    out.splice(0..FRAME_BYTES, prefix);
    out
}

/// Feeds `n` zero bytes (a hole's body) to a CRC.
pub fn crc_zeros(crc: &mut crc32fast::Hasher, mut n: usize) {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len());
        crc.update(ZEROS.get(..k).unwrap_or_default());
        n -= k;
    }
}

/// How many records a frame already checked by [`check_frame`] stands for: one, or a hole's
/// count.
pub fn records_in(frame: &[u8]) -> u64 {
    match u64_at(frame, FRAME_BYTES + HEADER_BYTES) {
        Some(records) if read_kind(frame) == KIND_HOLE => records,
        _ => 1,
    }
}

/// The as-of horizon a hole frame records (0 for any other frame).
pub fn hole_horizon(frame: &[u8]) -> u64 {
    match u64_at(frame, FRAME_BYTES + HEADER_BYTES + 8) {
        Some(horizon) if read_kind(frame) == KIND_HOLE => horizon,
        _ => 0,
    }
}

/// The kind of a frame already checked by [`check_frame`] (0, no kind, for bytes too short to
/// be a frame: a caller's bug, loud in debug builds).
pub fn read_kind(frame: &[u8]) -> u8 {
    let kind = frame.get(FRAME_BYTES + 4).copied();
    debug_assert!(kind.is_some(), "read_kind of {} bytes", frame.len());
    kind.unwrap_or(0)
}

/// The body of a frame already checked by [`check_frame`] (after the header; empty for bytes
/// too short to be a frame).
pub fn body(frame: &[u8]) -> &[u8] {
    let body = frame.get(FRAME_BYTES + HEADER_BYTES..);
    debug_assert!(body.is_some(), "body of {} bytes", frame.len());
    body.unwrap_or_default()
}

/// The bytes of a frame that every replica agrees on: all of it except the frame's CRC and
/// the header's local fields (`position`, `synced_end`). Replicas compare these.
#[allow(clippy::indexing_slicing)] // callers pass frames [`check_frame`] found valid
pub fn replicated_bytes(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[4..8].fill(0);
    out[FRAME_BYTES + 8..FRAME_BYTES + 16].fill(0);
    out[FRAME_BYTES + 24..FRAME_BYTES + 32].fill(0);
    out
}

/// What the bytes at a supposed record boundary hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// A whole, intact record frame of this many bytes.
    Valid(usize),
    /// The bytes end before the frame does.
    Incomplete,
    /// Not a record frame: wrong magic or impossible length.
    NotARecord,
    /// A record frame whose checksum does not match.
    BadChecksum,
}

/// Checks the frame starting at `buf[0]`. `len_max` bounds a plausible record length.
pub fn check_frame(buf: &[u8], len_max: usize) -> FrameCheck {
    let magic = u32_at(buf, FRAME_BYTES);
    let (Some(len), Some(crc), Some(RECORD_MAGIC)) = (u32_at(buf, 0), u32_at(buf, 4), magic) else {
        // A frame too short to hold its magic can only be incomplete if its bytes so far agree.
        return match magic {
            Some(_) => FrameCheck::NotARecord,
            None => FrameCheck::Incomplete,
        };
    };
    if buf.len() < FRAME_BYTES + HEADER_BYTES {
        return FrameCheck::Incomplete;
    }
    let len = len as usize;
    if !(HEADER_BYTES..=len_max).contains(&len) {
        return FrameCheck::NotARecord;
    }
    let Some(checked) = buf.get(FRAME_BYTES..FRAME_BYTES + len) else {
        return FrameCheck::Incomplete;
    };
    if crc32fast::hash(checked) != crc {
        return FrameCheck::BadChecksum;
    }
    FrameCheck::Valid(FRAME_BYTES + len)
}

/// Reads the header of a frame already checked by [`check_frame`] (zeros for bytes too short
/// to be a frame: a caller's bug, loud in debug builds).
pub fn read_header(frame: &[u8]) -> RecordHeader {
    debug_assert!(
        frame.len() >= FRAME_BYTES + HEADER_BYTES,
        "read_header of {} bytes",
        frame.len()
    );
    let field = |at: usize| u64_at(frame, FRAME_BYTES + at).unwrap_or(0);
    RecordHeader {
        position: field(8),
        seq: field(16),
        synced_end: field(24),
        timestamp_us: field(32),
        term: field(40),
        leader: field(48),
        flags: frame.get(FRAME_BYTES + 5).copied().unwrap_or(0),
    }
}

/// Why a checked frame could not be decoded: its contents contradict its structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Decodes the events of a valid record frame (`frame` is exactly the frame's bytes).
pub fn decode_events(frame: &Bytes) -> Result<Vec<RecordedEvent>, DecodeError> {
    Ok(decode_events_with_slots(frame)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// Decodes the events of a valid record frame, with where each sits in the frame.
pub fn decode_events_with_slots(
    frame: &Bytes,
) -> Result<Vec<(RecordedEvent, EventSlot)>, DecodeError> {
    let header = read_header(frame);
    match read_kind(frame) {
        KIND_EVENTS => {}
        KIND_BLANK | KIND_MEMBERSHIP | KIND_GAP | KIND_HOLE => return Ok(Vec::new()),
        kind => return Err(DecodeError(format!("unknown record kind {kind}"))),
    }
    let mut at = FRAME_BYTES + HEADER_BYTES;
    let count = u32_at(frame, at)
        .ok_or_else(|| DecodeError("events record too short for its event count".into()))?
        as usize;
    at += 4;
    // Each event takes at least its fixed bytes, so the count is bounded by the frame's length.
    let mut events = Vec::with_capacity(count.min(frame.len() / EVENT_FIXED_BYTES));
    for _ in 0..count {
        let past_end = || DecodeError("event frame past end of record".into());
        let len = 8 + u32_at(frame, at).ok_or_else(past_end)? as usize;
        if frame.len() < at + len {
            return Err(past_end());
        }
        let event = decode_event(frame.slice(at..at + len), header.position)?;
        events.push((
            event,
            EventSlot {
                offset: at as u32,
                len: len as u32,
            },
        ));
        at += len;
    }
    if at != frame.len() {
        return Err(DecodeError("bytes after the last event".into()));
    }
    Ok(events)
}

/// Checks that the body of a valid frame has the structure its kind says, without decoding or
/// checksumming the events (a follower copies a leader's frames only once they pass this, so
/// what enters its log also decodes when it is applied): events records hold exactly their
/// counted event frames, each at least its fixed fields long; hole frames hold their count and
/// horizon; blank and gap records are empty; membership bodies are opaque here.
pub fn check_structure(frame: &[u8]) -> Result<(), DecodeError> {
    let body = body(frame);
    match read_kind(frame) {
        KIND_EVENTS => {
            let count = u32_at(body, 0)
                .ok_or_else(|| DecodeError("events record too short for its event count".into()))?;
            let mut at = 4usize;
            for i in 0..count {
                let len = u32_at(body, at)
                    .map(|l| 8 + l as usize)
                    .filter(|len| *len >= EVENT_FIXED_BYTES && at + len <= body.len())
                    .ok_or_else(|| DecodeError(format!("event {i} does not fit its record")))?;
                at += len;
            }
            if at != body.len() {
                return Err(DecodeError("bytes after the last event".into()));
            }
            Ok(())
        }
        KIND_BLANK | KIND_GAP if body.is_empty() => Ok(()),
        KIND_HOLE if body.len() >= 16 => Ok(()),
        KIND_MEMBERSHIP => Ok(()),
        kind => Err(DecodeError(format!(
            "a record of kind {kind} with a body of {} bytes",
            body.len()
        ))),
    }
}

/// Decodes one event frame, checking its own CRC.
pub fn decode_event(frame: Bytes, position: Position) -> Result<RecordedEvent, DecodeError> {
    let short = || DecodeError("event frame too short".into());
    if frame.len() < EVENT_FIXED_BYTES {
        return Err(short());
    }
    let (Some(len), Some(crc)) = (u32_at(&frame, 0), u32_at(&frame, 4)) else {
        return Err(short());
    };
    let len = len as usize;
    if len + 8 != frame.len() {
        return Err(DecodeError(format!(
            "event length {len} does not match its frame"
        )));
    }
    if crc32fast::hash(frame.get(8..).unwrap_or_default()) != crc {
        return Err(DecodeError("event checksum mismatch".into()));
    }
    let mut b = frame.slice(8..);
    let stream = take_str(&mut b, 2).ok_or_else(short)?;
    if b.remaining() < 8 + 16 + 8 {
        return Err(short());
    }
    let version = b.get_u64_le();
    let mut id = [0u8; 16];
    b.copy_to_slice(&mut id);
    let timestamp_us = b.get_u64_le();
    let event_type = take_str(&mut b, 2).ok_or_else(short)?;
    let data = take_bytes(&mut b).ok_or_else(short)?;
    let metadata = take_bytes(&mut b).ok_or_else(short)?;
    if b.has_remaining() {
        return Err(DecodeError("bytes after event metadata".into()));
    }
    Ok(RecordedEvent {
        stream,
        version,
        id: Uuid::from_bytes(id),
        event_type,
        data,
        metadata,
        timestamp_us,
        position,
    })
}

fn take_str(b: &mut Bytes, len_bytes: usize) -> Option<String> {
    if b.remaining() < len_bytes {
        return None;
    }
    let len = b.get_u16_le() as usize;
    if b.remaining() < len {
        return None;
    }
    let s = b.split_to(len);
    String::from_utf8(s.to_vec()).ok()
}

fn take_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let len = b.get_u32_le() as usize;
    if b.remaining() < len {
        return None;
    }
    Some(b.split_to(len))
}

/// The `N` bytes at `at`, or `None` when `buf` ends before them.
pub fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Little-endian u32 at `at`, or `None` when `buf` ends before it.
pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    bytes_at(buf, at).map(u32::from_le_bytes)
}

/// Little-endian u64 at `at`, or `None` when `buf` ends before it.
pub fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    bytes_at(buf, at).map(u64::from_le_bytes)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn header_only_frame(kind: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        put_header(
            &mut frame,
            kind,
            &RecordHeader {
                flags: 0,
                position: 0,
                seq: 1,
                synced_end: 0,
                timestamp_us: 5,
                term: 1,
                leader: 1,
            },
        );
        seal_frame(&mut frame);
        frame
    }

    /// Regression: an events record whose length is exactly its header passed `check_frame`
    /// (its CRC is valid) and decoding then read the event count past the frame's end — a
    /// panic reachable from a peer's AppendEntries or a crafted segment.
    #[test]
    fn an_events_frame_with_only_a_header_is_a_decode_error_not_a_panic() {
        let frame = header_only_frame(KIND_EVENTS);
        assert_eq!(frame.len(), FRAME_BYTES + HEADER_BYTES);
        assert_eq!(check_frame(&frame, 1 << 20), FrameCheck::Valid(frame.len()));
        let error = decode_events(&Bytes::from(frame)).expect_err("no event count");
        assert!(error.0.contains("event count"), "{error:?}");
        // Other kinds with an empty body hold nothing, and say so without a panic.
        for kind in [KIND_BLANK, KIND_GAP, KIND_HOLE, KIND_MEMBERSHIP] {
            let frame = header_only_frame(kind);
            assert_eq!(records_in(&frame), 1);
            assert_eq!(hole_horizon(&frame), 0);
            assert!(decode_events(&Bytes::from(frame))
                .expect("no events")
                .is_empty());
        }
    }

    #[test]
    fn reads_past_the_end_are_none() {
        let buf = [1u8, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(u32_at(&buf, 4), Some(2));
        assert_eq!(u32_at(&buf, 5), None);
        assert_eq!(u64_at(&buf, 0), Some(0x2_0000_0001));
        assert_eq!(u64_at(&buf, 1), None);
        assert_eq!(u64_at(&buf, usize::MAX - 2), None);
    }

    #[test]
    fn a_hole_is_a_valid_frame_once_its_zeros_follow() {
        let header = RecordHeader {
            flags: 0,
            position: 4096,
            seq: 7,
            synced_end: 0,
            timestamp_us: 99,
            term: 2,
            leader: 1,
        };
        for len in [HOLE_PREFIX_BYTES, 5000, 70_000] {
            let mut frame = hole_prefix(header, 3, 1234, len);
            frame.resize(len, 0);
            assert_eq!(check_frame(&frame, 1 << 20), FrameCheck::Valid(len));
            assert_eq!(read_kind(&frame), KIND_HOLE);
            assert_eq!(read_header(&frame), header);
            assert_eq!((records_in(&frame), hole_horizon(&frame)), (3, 1234));
            assert!(decode_events(&Bytes::from(frame.clone()))
                .unwrap()
                .is_empty());
            // Any changed byte, in the hole too, is damage.
            frame[len - 1] ^= 1;
            assert_eq!(check_frame(&frame, 1 << 20), FrameCheck::BadChecksum);
        }
    }

    fn sample(out: &mut Vec<u8>, position: u64) -> Slots {
        let events = [
            EventFields {
                stream: "orders-1",
                version: 0,
                id: Uuid::from_u128(1),
                event_type: "Placed",
                data: b"{\"a\":1}",
                metadata: b"",
            },
            EventFields {
                stream: "orders-1",
                version: 1,
                id: Uuid::from_u128(2),
                event_type: "Paid",
                data: b"",
                metadata: b"m",
            },
        ];
        encode_record(
            out,
            RecordHeader {
                flags: 0,
                position,
                seq: 7,
                synced_end: position,
                timestamp_us: 99,
                term: 3,
                leader: 2,
            },
            &events,
        )
    }

    #[test]
    fn record_round_trips() {
        let mut out = Vec::new();
        let slots = sample(&mut out, 4096);
        assert_eq!(check_frame(&out, 1 << 20), FrameCheck::Valid(out.len()));
        let header = read_header(&out);
        assert_eq!(
            (header.position, header.seq, header.timestamp_us),
            (4096, 7, 99)
        );
        let frame = Bytes::from(out);
        let events = decode_events(&frame).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].event_type, "Paid");
        assert_eq!(&events[1].metadata[..], b"m");
        let one = decode_event(
            frame.slice(slots[0].offset as usize..(slots[0].offset + slots[0].len) as usize),
            4096,
        )
        .unwrap();
        assert_eq!(one, events[0]);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        sample(&mut out, 0);
        for byte in 0..out.len() {
            let mut damaged = out.clone();
            damaged[byte] ^= 0x10;
            assert_ne!(
                check_frame(&damaged, 1 << 20),
                FrameCheck::Valid(out.len()),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn a_cut_frame_is_incomplete() {
        let mut out = Vec::new();
        sample(&mut out, 0);
        for cut in 0..out.len() {
            assert_eq!(
                check_frame(&out[..cut], 1 << 20),
                FrameCheck::Incomplete,
                "cut at {cut}"
            );
        }
    }
}
