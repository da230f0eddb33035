//! The segmented log of one shard: the write side ([`LogWriter`], one owner), the read side
//! ([`LogReader`], shared by every reader) and recovery.
//!
//! Invariants: records are contiguous from the first segment's header to the tail's end;
//! sequence numbers increase by one per record; everything before `LogWriter::next_position`
//! was fsynced before it was acknowledged; readers never see past `LogReader::end`, which the
//! store advances only after a group is durable and indexed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{EngineConfig, TailRecovery, SEGMENT_FOOTER_BYTES, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::format::{
    self, check_frame, read_header, EventSlot, FrameCheck, RecordHeader, FRAME_BYTES, HEADER_BYTES,
    RECORD_MAGIC,
};
use crate::fs::{read_exact_at, FileHandle, FileSystem, OpenMode};
use crate::segment::{
    decode_manifest, encode_manifest, parse_segment_file_name, segment_path, Footer, ManifestEntry,
    SegmentHeader, MANIFEST_NAME,
};

/// Zeros the writer keeps written ahead of the tail's records. A write inside them changes
/// neither the file's size nor its block map, so its fdatasync flushes data alone — no journal
/// commit, about 40 % less latency on ext4 — and the size changes once per this many bytes
/// instead of on every sync. The file therefore runs up to this much past the records; the
/// zeros are no records (recovery ends the log at them), and a roll cuts them off before the
/// footer, so a sealed segment ends exactly at its footer.
pub const PREALLOCATE_BYTES: u64 = 256 << 10;

/// One segment file as the log knows it.
#[derive(Debug)]
pub struct Segment {
    /// Position of the file's first byte.
    pub base: Position,
    /// The file's path.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<dyn FileHandle>,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// The footer, once sealed.
    pub footer: Option<Footer>,
}

impl Segment {
    /// Position of the first record.
    pub fn records_start(&self) -> Position {
        self.base + SEGMENT_HEADER_BYTES
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Where a torn tail was cut off (file, byte offset), if it was.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Bytes removed with the torn tail.
    pub torn_bytes: u64,
    /// Segment files left behind by an interrupted truncation and removed.
    pub stale_files_removed: usize,
}

/// The shared read side of the log.
#[derive(Debug)]
pub struct LogReader {
    segments: RwLock<Vec<Arc<Segment>>>,
    end: AtomicU64,
    end_tx: watch::Sender<Position>,
    record_len_max: usize,
    read_chunk_bytes: usize,
}

/// A record read from the log: its header and its whole frame.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The parsed header.
    pub header: RecordHeader,
    /// The frame's bytes (length, checksum, header, body).
    pub frame: Bytes,
}

impl RawRecord {
    /// The record's events, or `Corruption` naming where it sits.
    pub fn events(&self, reader: &LogReader) -> Result<Vec<RecordedEvent>> {
        format::decode_events(&self.frame)
            .map_err(|e| reader.corruption_at(self.header.position, e.0))
    }
}

use crate::sync::{read as read_lock, write as write_lock};

impl LogReader {
    /// The end of what readers may see: every record before it is durable and indexed.
    pub fn end(&self) -> Position {
        self.end.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever `end` moves (forwards on commit, back on truncation).
    pub fn watch_end(&self) -> watch::Receiver<Position> {
        self.end_tx.subscribe()
    }

    pub(crate) fn publish_end(&self, end: Position) {
        self.end.store(end, Ordering::Release);
        self.end_tx.send_replace(end);
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        read_lock(&self.segments).clone()
    }

    /// The segment holding `position`.
    pub fn segment_at(&self, position: Position) -> Option<Arc<Segment>> {
        let segments = read_lock(&self.segments);
        let i = segments.partition_point(|s| s.base <= position);
        i.checked_sub(1).map(|i| segments[i].clone())
    }

    /// Position of the first segment's first byte: 0, unless retention dropped segments
    /// before it.
    pub fn first_base(&self) -> Position {
        read_lock(&self.segments).first().map_or(0, |s| s.base)
    }

    /// Position of the first record in the log.
    pub fn start(&self) -> Position {
        read_lock(&self.segments)
            .first()
            .map_or(SEGMENT_HEADER_BYTES, |s| s.records_start())
    }

    /// Puts a rewritten sealed segment (same base, same length) in place of the old one.
    /// Readers that hold the old one keep reading its file, which the rewrite only renamed over.
    pub(crate) fn replace_sealed(&self, segment: Arc<Segment>) {
        let mut segments = write_lock(&self.segments);
        if let Some(slot) = segments
            .iter_mut()
            .find(|s| s.base == segment.base && s.footer.is_some())
        {
            *slot = segment;
        }
    }

    pub(crate) fn corruption_at(&self, position: Position, reason: impl Into<String>) -> Error {
        match self.segment_at(position) {
            Some(s) => Error::corruption(&s.path, position - s.base, reason),
            None => Error::corruption("<log>", position, reason),
        }
    }

    /// The canonical form of a position: the end of a sealed segment's records and the next
    /// segment's first record are the same point of the log; this returns the latter.
    pub fn normalize(&self, position: Position) -> Position {
        let segments = read_lock(&self.segments);
        let i = segments.partition_point(|s| s.base <= position);
        match i
            .checked_sub(1)
            .map(|i| (&segments[i], segments.get(i + 1)))
        {
            Some((segment, Some(next)))
                if segment.footer.is_some_and(|f| position == f.records_end) =>
            {
                next.records_start()
            }
            _ => position,
        }
    }

    /// The header of the record at `position` (a record position), as written.
    pub fn read_record_header(&self, position: Position) -> Result<format::RecordHeader> {
        let segment = self
            .segment_at(position)
            .ok_or_else(|| Error::corruption("<log>", position, "no segment holds the record"))?;
        let mut buf = vec![0u8; format::FRAME_BYTES + format::HEADER_BYTES];
        read_exact_at(segment.file.as_ref(), &mut buf, position - segment.base)
            .map_err(|e| Error::io(format!("reading {}", segment.path.display()), e))?;
        let header = format::read_header(&buf);
        if header.position != position {
            return Err(self.corruption_at(position, "no record header at this position"));
        }
        Ok(header)
    }

    /// Reads and verifies one event frame.
    pub fn read_event(&self, position: Position, slot: EventSlot) -> Result<RecordedEvent> {
        let segment = self
            .segment_at(position)
            .ok_or_else(|| Error::corruption("<log>", position, "index points outside the log"))?;
        let offset = position - segment.base + slot.offset as u64;
        let mut buf = vec![0u8; slot.len as usize];
        read_exact_at(segment.file.as_ref(), &mut buf, offset)
            .map_err(|e| Error::io(format!("reading {}", segment.path.display()), e))?;
        format::decode_event(Bytes::from(buf), position)
            .map_err(|e| Error::corruption(&segment.path, offset, e.0))
    }

    /// Reads and verifies several event frames of the record at `position` with one read of
    /// the bytes spanning them (`slots` in ascending offset order).
    pub fn read_events(
        &self,
        position: Position,
        slots: &[EventSlot],
    ) -> Result<Vec<RecordedEvent>> {
        let (Some(first), Some(last)) = (slots.first(), slots.last()) else {
            return Ok(Vec::new());
        };
        if slots.len() == 1 {
            return self.read_event(position, *first).map(|e| vec![e]);
        }
        let segment = self
            .segment_at(position)
            .ok_or_else(|| Error::corruption("<log>", position, "index points outside the log"))?;
        let start = first.offset as u64;
        let end = last.offset as u64 + last.len as u64;
        if end < start || end - start > self.record_len_max as u64 {
            return Err(Error::corruption(
                &segment.path,
                position - segment.base,
                "index slots out of order",
            ));
        }
        let offset = position - segment.base + start;
        let mut buf = vec![0u8; (end - start) as usize];
        read_exact_at(segment.file.as_ref(), &mut buf, offset)
            .map_err(|e| Error::io(format!("reading {}", segment.path.display()), e))?;
        let buf = Bytes::from(buf);
        slots
            .iter()
            .map(|slot| {
                let at = (slot.offset as u64 - start) as usize;
                let frame = buf
                    .get(at..at + slot.len as usize)
                    .map(|b| buf.slice_ref(b))
                    .ok_or_else(|| {
                        Error::corruption(&segment.path, offset, "index slots out of order")
                    })?;
                format::decode_event(frame, position)
                    .map_err(|e| Error::corruption(&segment.path, offset + at as u64, e.0))
            })
            .collect()
    }

    /// Reads records forwards from `from` (a record position, a segment boundary or 0 for the
    /// start) up to `end`, at most `max_records` and at most `max_bytes` of frames — or one
    /// record, whatever its size, when the first is larger. Returns the records and the
    /// position to continue from. (Raft messages and read answers are sized from this bound.)
    pub fn scan(
        &self,
        from: Position,
        end: Position,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<RawRecord>, Position)> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut pos = if from == 0 { self.start() } else { from };
        let segments = self.segments();
        let mut i = segments
            .partition_point(|s| s.base <= pos)
            .saturating_sub(1);
        while out.len() < max_records && bytes < max_bytes && pos < end {
            let Some(segment) = segments.get(i) else {
                break;
            };
            if pos < segment.records_start() {
                pos = segment.records_start();
            }
            let segment_end = segment.footer.map_or(end, |f| f.records_end.min(end));
            if pos >= segment_end {
                if segment.footer.is_some() && i + 1 < segments.len() {
                    i += 1;
                    pos = segments[i].records_start();
                    continue;
                }
                break;
            }
            let want = (segment_end - pos).min(self.read_chunk_bytes as u64);
            let chunk = self.read_chunk(segment, pos, want as usize)?;
            let mut at = 0usize;
            while at < chunk.len() && out.len() < max_records && bytes < max_bytes {
                match check_frame(&chunk[at..], self.record_len_max) {
                    FrameCheck::Valid(n) if !out.is_empty() && bytes + n > max_bytes => {
                        return Ok((out, pos));
                    }
                    FrameCheck::Valid(n) => {
                        let header = read_header(&chunk[at..]);
                        if header.position != pos {
                            return Err(Error::corruption(
                                &segment.path,
                                pos - segment.base,
                                format!("record claims position {} ", header.position),
                            ));
                        }
                        out.push(RawRecord {
                            header,
                            frame: chunk.slice(at..at + n),
                        });
                        at += n;
                        pos += n as u64;
                        bytes += n;
                    }
                    FrameCheck::Incomplete if at > 0 => break,
                    FrameCheck::Incomplete => {
                        // A record larger than the chunk: read exactly its frame (unless it
                        // would take the answer past `max_bytes`: it starts the next one).
                        let len = format::u32_at(&chunk[at..], 0).map_or(0, |l| l as usize);
                        if !out.is_empty() && bytes + FRAME_BYTES + len > max_bytes {
                            return Ok((out, pos));
                        }
                        let frame = self.read_frame(segment, pos, segment_end)?;
                        let header = read_header(&frame);
                        bytes += frame.len();
                        pos += frame.len() as u64;
                        out.push(RawRecord { header, frame });
                        break;
                    }
                    FrameCheck::NotARecord => {
                        return Err(Error::corruption(
                            &segment.path,
                            pos - segment.base,
                            "expected a record here (bad magic or length)",
                        ))
                    }
                    FrameCheck::BadChecksum => {
                        return Err(Error::corruption(
                            &segment.path,
                            pos - segment.base,
                            "record checksum mismatch",
                        ))
                    }
                }
            }
        }
        Ok((out, pos))
    }

    fn read_chunk(&self, segment: &Segment, pos: Position, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        read_exact_at(segment.file.as_ref(), &mut buf, pos - segment.base)
            .map_err(|e| Error::io(format!("reading {}", segment.path.display()), e))?;
        Ok(Bytes::from(buf))
    }

    fn read_frame(&self, segment: &Segment, pos: Position, segment_end: Position) -> Result<Bytes> {
        let prefix =
            self.read_chunk(segment, pos, FRAME_BYTES.min((segment_end - pos) as usize))?;
        let offset = pos - segment.base;
        if prefix.len() < FRAME_BYTES {
            return Err(Error::corruption(&segment.path, offset, "record cut short"));
        }
        let len = FRAME_BYTES + format::u32_at(&prefix, 0).unwrap_or(0) as usize;
        if len > self.record_len_max + FRAME_BYTES || pos + len as u64 > segment_end {
            return Err(Error::corruption(
                &segment.path,
                offset,
                "record length out of bounds",
            ));
        }
        let frame = self.read_chunk(segment, pos, len)?;
        match check_frame(&frame, self.record_len_max) {
            FrameCheck::Valid(n) if n == len && read_header(&frame).position == pos => Ok(frame),
            FrameCheck::BadChecksum => Err(Error::corruption(
                &segment.path,
                offset,
                "record checksum mismatch",
            )),
            _ => Err(Error::corruption(&segment.path, offset, "malformed record")),
        }
    }
}

/// Facts about a segment's records gathered by scanning it.
#[derive(Debug, Clone)]
struct SegmentScan {
    /// Offset just past the last good record.
    records_len: u64,
    record_count: u64,
    crc: crc32fast::Hasher,
    /// A valid footer found right after the records.
    footer: Option<Footer>,
    /// Offset of a torn (cut off) tail.
    torn_at: Option<u64>,
}

impl SegmentScan {
    /// Records that end cleanly at `records_len`, with no footer.
    fn ended(records_len: u64, record_count: u64, crc: crc32fast::Hasher) -> SegmentScan {
        SegmentScan {
            records_len,
            record_count,
            crc,
            footer: None,
            torn_at: None,
        }
    }
}

/// Bytes of a segment file read through a bounded window, so scanning a segment holds at most
/// about `max(read_chunk_bytes, one record)` in memory however large the segment.
struct Window<'a> {
    file: &'a dyn FileHandle,
    path: &'a Path,
    len: u64,
    start: u64,
    buf: Vec<u8>,
    window_bytes: usize,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn FileHandle, path: &'a Path, len: u64, window_bytes: usize) -> Window<'a> {
        Window {
            file,
            path,
            len,
            start: 0,
            buf: Vec::new(),
            window_bytes,
        }
    }

    /// The bytes `[off, off + n)`, fewer only where the file ends.
    fn get(&mut self, off: u64, n: usize) -> Result<&[u8]> {
        let end = (off + n as u64).min(self.len);
        if off < self.start || end > self.start + self.buf.len() as u64 {
            let read = (self.len - off).min(n.max(self.window_bytes) as u64) as usize;
            self.buf.resize(read, 0);
            read_exact_at(self.file, &mut self.buf, off)
                .map_err(io_err(format!("reading {}", self.path.display())))?;
            self.start = off;
        }
        let from = (off - self.start) as usize;
        Ok(&self.buf[from..from + (end - off) as usize])
    }

    /// Whether every byte from `off` to the end of the file is zero.
    fn zeros_from(&mut self, mut off: u64) -> Result<bool> {
        while off < self.len {
            let n = self.window_bytes.max(1);
            let bytes = self.get(off, n)?;
            if bytes.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            off += bytes.len() as u64;
        }
        Ok(true)
    }

    /// The frame that starts at `off` (as much of it as the file holds), checked.
    fn frame(&mut self, off: u64, record_len_max: usize) -> Result<(FrameCheck, &[u8])> {
        let head = self.get(off, FRAME_BYTES + HEADER_BYTES)?;
        let want = match format::u32_at(head, 0) {
            Some(len) => (len as usize).min(record_len_max) + FRAME_BYTES,
            None => head.len(),
        };
        let frame = self.get(off, want.max(FRAME_BYTES + HEADER_BYTES))?;
        Ok((check_frame(frame, record_len_max), frame))
    }
}

/// Scans a segment file. Damage that cannot be a torn last write is an error.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    file: &dyn FileHandle,
    len: u64,
    window_bytes: usize,
    path: &Path,
    base: Position,
    first_seq: u64,
    record_len_max: usize,
    tail_recovery: TailRecovery,
    known_synced: Position,
) -> Result<SegmentScan> {
    let mut window = Window::new(file, path, len, window_bytes);
    let mut off = SEGMENT_HEADER_BYTES;
    let mut seq = first_seq;
    let mut crc = crc32fast::Hasher::new();
    let mut record_count = 0;
    loop {
        if off == len {
            return Ok(SegmentScan::ended(off, record_count, crc));
        }
        let reason = match footer_at(&mut window, off, base, record_count)? {
            FooterAt::Sealed(footer) => {
                return Ok(SegmentScan {
                    records_len: off,
                    record_count,
                    crc,
                    footer: Some(footer),
                    torn_at: None,
                })
            }
            FooterAt::Damaged(reason) => reason,
            FooterAt::Absent => {
                match next_record(&mut window, off, base, seq, record_len_max, &mut crc)? {
                    Ok((n, records)) => {
                        off += n;
                        seq += records;
                        record_count += records;
                        continue;
                    }
                    Err(reason) => reason,
                }
            }
        };
        if window.zeros_from(off)? {
            // Preallocated zeros (see PREALLOCATE_BYTES), or a last write none of which
            // reached the disk: the records end here.
            return Ok(SegmentScan::ended(off, record_count, crc));
        }
        let position = base + off;
        if tail_recovery == TailRecovery::Refuse {
            return Err(Error::corruption(
                path,
                off,
                format!("{reason} (tail recovery is set to refuse)"),
            ));
        }
        if position < known_synced {
            return Err(Error::corruption(
                path,
                off,
                format!("{reason}; the index already covered it, so it had been synced"),
            ));
        }
        // A torn write can only damage bytes not yet synced. An intact record written after
        // the damaged bytes were synced proves it: that is corruption, not a tear.
        if let Some(later) =
            record_written_after_sync(&mut window, base, off, position, record_len_max)?
        {
            return Err(Error::corruption(
                path,
                off,
                format!("{reason}; synced records follow it (next intact record at byte {later})"),
            ));
        }
        return Ok(SegmentScan {
            records_len: off,
            record_count,
            crc,
            footer: None,
            torn_at: Some(off),
        });
    }
}

/// What ends a segment's records at `off`, if anything but the next record does.
enum FooterAt {
    /// No footer: a record, damage or the end of the file follows.
    Absent,
    /// A footer that checks and matches the records before it: the segment is sealed.
    Sealed(Footer),
    /// Footer-shaped bytes that do not check: a roll writes the footer after the records and
    /// syncs it before the manifest lists the segment as sealed, so a crash in between can tear
    /// it (records that end exactly where the writer's preallocated zeros did leave the file
    /// its full length). A sealed segment's footer is checked by `open_sealed` instead.
    Damaged(String),
}

/// Looks for a footer at `off`: one can only sit in the file's last `SEGMENT_FOOTER_BYTES`.
/// A footer whose checksum holds but which disagrees with the records is corruption.
fn footer_at(
    window: &mut Window<'_>,
    off: u64,
    base: Position,
    record_count: u64,
) -> Result<FooterAt> {
    if off + SEGMENT_FOOTER_BYTES != window.len {
        return Ok(FooterAt::Absent);
    }
    let path = window.path;
    let bytes = window.get(off, SEGMENT_FOOTER_BYTES as usize)?;
    if !Footer::looks_like_footer(bytes) {
        return Ok(FooterAt::Absent);
    }
    let footer = match Footer::decode(bytes, path, off) {
        Ok(footer) => footer,
        Err(e) => return Ok(FooterAt::Damaged(format!("damaged footer ({e})"))),
    };
    if footer.records_end != base + off || footer.record_count != record_count {
        return Err(Error::corruption(
            path,
            off,
            "footer does not match the segment's records",
        ));
    }
    Ok(FooterAt::Sealed(footer))
}

/// The record at `off`: its length and event count (its bytes join `crc`), or why it is no
/// record of this segment.
fn next_record(
    window: &mut Window<'_>,
    off: u64,
    base: Position,
    seq: u64,
    record_len_max: usize,
    crc: &mut crc32fast::Hasher,
) -> Result<std::result::Result<(u64, u64), String>> {
    let (check, frame) = window.frame(off, record_len_max)?;
    Ok(match check {
        FrameCheck::Valid(n) => {
            let header = read_header(frame);
            if header.position != base + off {
                Err(format!("record claims position {}", header.position))
            } else if header.seq != seq {
                Err(format!(
                    "record has sequence number {}, expected {seq}",
                    header.seq
                ))
            } else {
                crc.update(&frame[..n]);
                Ok((n as u64, format::records_in(&frame[..n])))
            }
        }
        FrameCheck::Incomplete => Err("record cut short".to_string()),
        FrameCheck::NotARecord => Err("bad record magic or length".to_string()),
        FrameCheck::BadChecksum => Err("record checksum mismatch".to_string()),
    })
}

/// The offset of an intact record after `off` written once `position` had been synced.
fn record_written_after_sync(
    window: &mut Window<'_>,
    base: Position,
    off: u64,
    position: Position,
    record_len_max: usize,
) -> Result<Option<u64>> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let min_frame = (FRAME_BYTES + HEADER_BYTES) as u64;
    let mut from = off + 1;
    while from + min_frame <= window.len {
        // Candidates in [from, to): offsets whose magic bytes match.
        let to = (from + window.window_bytes as u64).min(window.len - min_frame + 1);
        let bytes = window.get(from, (to - from) as usize + FRAME_BYTES + 4)?;
        let candidates: Vec<u64> = (0..(to - from) as usize)
            .filter(|i| bytes.get(i + FRAME_BYTES..i + FRAME_BYTES + 4) == Some(&magic[..]))
            .map(|i| from + i as u64)
            .collect();
        for o in candidates {
            if let (FrameCheck::Valid(_), frame) = window.frame(o, record_len_max)? {
                let h = read_header(frame);
                if h.position == base + o && h.synced_end > position {
                    return Ok(Some(o));
                }
            }
        }
        from = to;
    }
    Ok(None)
}

/// The single writer of the log.
#[derive(Debug)]
pub struct LogWriter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes_max: u64,
    record_len_max: usize,
    tail: Arc<Segment>,
    tail_len: u64,
    /// The tail file's length: its records, then zeros (see [`PREALLOCATE_BYTES`]).
    tail_file_len: u64,
    tail_records: u64,
    tail_crc: crc32fast::Hasher,
    next_seq: u64,
    manifest: Vec<ManifestEntry>,
    reader: Arc<LogReader>,
    poisoned: Arc<OnceLock<String>>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// Opens a segment file and reads its header; returns the file, its length and the header.
fn open_segment(
    fs: &dyn FileSystem,
    path: &Path,
    mode: OpenMode,
) -> Result<(Arc<dyn FileHandle>, u64, SegmentHeader)> {
    let file = fs
        .open(path, mode)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let len = file
        .len()
        .map_err(io_err(format!("sizing {}", path.display())))?;
    let mut header = vec![0u8; len.min(SEGMENT_HEADER_BYTES) as usize];
    read_exact_at(file.as_ref(), &mut header, 0)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let header = SegmentHeader::decode(&header, path)?;
    Ok((file, len, header))
}

fn read_whole(fs: &dyn FileSystem, path: &Path) -> Result<(Arc<dyn FileHandle>, Vec<u8>)> {
    let file = fs
        .open(path, OpenMode::ReadWrite)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let len = file
        .len()
        .map_err(io_err(format!("sizing {}", path.display())))?;
    let mut buf = vec![0u8; len as usize];
    read_exact_at(file.as_ref(), &mut buf, 0)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok((file, buf))
}

impl LogWriter {
    /// Opens the log in `dir` (creating it if empty), recovering the tail.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        config: &EngineConfig,
        known_synced: Position,
    ) -> Result<(LogWriter, Arc<LogReader>, RecoveryReport)> {
        fs.create_dir_all(dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let record_len_max = config.limits.batch_bytes_max;
        let names = fs
            .list(dir)
            .map_err(io_err(format!("listing {}", dir.display())))?;
        let manifest_path = dir.join(MANIFEST_NAME);
        let on_disk: Vec<Position> = names
            .iter()
            .filter_map(|n| parse_segment_file_name(n))
            .collect();
        if !names.iter().any(|n| n == MANIFEST_NAME) {
            // Creating a new log writes segment 0's header, then the first manifest, and no
            // record before both: a lone segment 0 holding at most a header is an interrupted
            // creation, so start over.
            let interrupted_creation = on_disk == [0]
                && fs
                    .open(&segment_path(dir, 0), OpenMode::Read)
                    .and_then(|f| f.len())
                    .is_ok_and(|len| len <= SEGMENT_HEADER_BYTES);
            if !on_disk.is_empty() && !interrupted_creation {
                return Err(Error::corruption(
                    &manifest_path,
                    0,
                    "manifest is missing but segment files exist",
                ));
            }
            return LogWriter::create(fs, dir, config);
        }
        let (_, manifest_bytes) = read_whole(fs.as_ref(), &manifest_path)?;
        let entries = decode_manifest(&manifest_bytes, &manifest_path)?;
        let Some((tail_entry, sealed_entries)) = entries.split_last() else {
            return Err(Error::corruption(
                &manifest_path,
                0,
                "manifest lists no segments",
            ));
        };
        // Segments retention dropped (the manifest no longer lists them) whose files a crash
        // left behind.
        for base in on_disk.iter().filter(|b| **b < entries[0].base_position) {
            let path = segment_path(dir, *base);
            tracing::warn!(file = %path.display(), "removing a segment retention dropped");
            fs.remove_file(&path)
                .map_err(io_err(format!("removing {}", path.display())))?;
        }
        let mut segments = Vec::with_capacity(entries.len());
        let mut expected_base = entries[0].base_position;
        let mut next_seq = 1;
        for entry in sealed_entries {
            let expected_seq = if segments.is_empty() {
                None
            } else {
                Some(next_seq)
            };
            let segment = open_sealed(fs.as_ref(), dir, *entry, expected_base, expected_seq)?;
            next_seq = segment.footer.map_or(next_seq, |f| f.last_seq + 1);
            expected_base = entry.base_position + entry.file_len;
            segments.push(Arc::new(segment));
        }
        if tail_entry.base_position != expected_base {
            return Err(Error::corruption(
                &manifest_path,
                0,
                "manifest's tail does not follow its last sealed segment",
            ));
        }
        let mut report = RecoveryReport::default();
        let mut tail_base = tail_entry.base_position;
        let mut manifest = sealed_entries.to_vec();
        loop {
            let path = segment_path(dir, tail_base);
            let (file, len, header) = open_segment(fs.as_ref(), &path, OpenMode::ReadWrite)?;
            if header.base_position != tail_base
                || (!segments.is_empty() && header.first_seq != next_seq)
            {
                return Err(Error::corruption(
                    &path,
                    0,
                    "segment header does not continue the log",
                ));
            }
            let scan = scan_segment(
                file.as_ref(),
                len,
                config.read_chunk_bytes,
                &path,
                tail_base,
                header.first_seq,
                record_len_max,
                config.tail_recovery,
                known_synced,
            )?;
            if let Some(footer) = scan.footer {
                // Sealed, but the manifest was not rewritten before a crash: the next segment
                // is the tail, or must be created. The roll's sync may have failed or never
                // run (the process died between the footer and the sync): the records and the
                // footer reach the disk before the manifest lists the segment as sealed.
                file.sync_data()
                    .map_err(io_err(format!("syncing {}", path.display())))?;
                manifest.push(ManifestEntry {
                    base_position: tail_base,
                    file_len: len,
                });
                segments.push(Arc::new(Segment {
                    base: tail_base,
                    path,
                    file,
                    first_seq: header.first_seq,
                    footer: Some(footer),
                }));
                next_seq = footer.last_seq + 1;
                tail_base += len;
                // Records go to a new segment only once the manifest lists it, so a successor
                // the manifest does not list holds none: if its creation was interrupted (no
                // complete header), make it again. A complete one is kept: it may be the rest
                // of the log left by an interrupted truncation, which then did not happen.
                let next = segment_path(dir, tail_base);
                let exists = fs
                    .exists(&next)
                    .map_err(io_err(format!("checking {}", dir.display())))?;
                let complete = exists
                    && open_segment(fs.as_ref(), &next, OpenMode::Read).is_ok_and(|(_, _, h)| {
                        h.base_position == tail_base && h.first_seq == next_seq
                    });
                if !complete {
                    if exists {
                        tracing::warn!(file = %next.display(), "recreating a segment whose creation was interrupted");
                    }
                    create_segment(fs.as_ref(), dir, tail_base, next_seq)?;
                }
                continue;
            }
            let stale: Vec<Position> = on_disk.iter().copied().filter(|b| *b > tail_base).collect();
            if let Some(torn) = scan.torn_at {
                if !stale.is_empty() {
                    return Err(Error::corruption(
                        &path,
                        torn,
                        "damaged record in a segment that later segments follow",
                    ));
                }
                tracing::warn!(file = %path.display(), offset = torn, bytes = len - torn, "truncating torn tail");
                file.set_len(torn)
                    .map_err(io_err(format!("truncating {}", path.display())))?;
                report.torn_tail = Some((path.clone(), torn));
                report.torn_bytes = len - torn;
            }
            // The tail's records may have been written and never synced (the process died
            // before its sync, or the sync failed): sync them (and a truncation) before anything
            // reads, indexes or acknowledges them.
            file.sync_data()
                .map_err(io_err(format!("syncing {}", path.display())))?;
            for base in &stale {
                let stale_path = segment_path(dir, *base);
                tracing::warn!(file = %stale_path.display(), "removing segment left by an interrupted truncation");
                fs.remove_file(&stale_path)
                    .map_err(io_err(format!("removing {}", stale_path.display())))?;
                report.stale_files_removed += 1;
            }
            if !stale.is_empty() {
                fs.sync_dir(dir)
                    .map_err(io_err(format!("syncing {}", dir.display())))?;
            }
            let tail = Arc::new(Segment {
                base: tail_base,
                path,
                file,
                first_seq: header.first_seq,
                footer: None,
            });
            segments.push(tail.clone());
            manifest.push(ManifestEntry {
                base_position: tail_base,
                file_len: 0,
            });
            let next_position = tail_base + scan.records_len;
            report.segments = segments.len();
            let reader = Arc::new(LogReader {
                segments: RwLock::new(segments),
                end: AtomicU64::new(0),
                end_tx: watch::channel(0).0,
                record_len_max,
                read_chunk_bytes: config.read_chunk_bytes,
            });
            let writer = LogWriter {
                fs,
                dir: dir.to_path_buf(),
                segment_bytes_max: config.segment_bytes_max,
                record_len_max,
                tail,
                tail_len: scan.records_len,
                tail_file_len: scan.torn_at.unwrap_or(len),
                tail_records: scan.record_count,
                tail_crc: scan.crc,
                next_seq: header.first_seq + scan.record_count,
                manifest,
                reader: reader.clone(),
                poisoned: Arc::new(OnceLock::new()),
            };
            // Recovery may have sealed a tail or added a segment; otherwise the manifest on
            // disk is already right and opening writes nothing.
            if writer.manifest != entries {
                writer.write_manifest()?;
            }
            debug_assert_eq!(writer.next_position(), next_position);
            return Ok((writer, reader, report));
        }
    }

    fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        config: &EngineConfig,
    ) -> Result<(LogWriter, Arc<LogReader>, RecoveryReport)> {
        let (path, file) = create_segment(fs.as_ref(), dir, 0, 1)?;
        let tail = Arc::new(Segment {
            base: 0,
            path,
            file,
            first_seq: 1,
            footer: None,
        });
        let reader = Arc::new(LogReader {
            segments: RwLock::new(vec![tail.clone()]),
            end: AtomicU64::new(0),
            end_tx: watch::channel(0).0,
            record_len_max: config.limits.batch_bytes_max,
            read_chunk_bytes: config.read_chunk_bytes,
        });
        let writer = LogWriter {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes_max: config.segment_bytes_max,
            record_len_max: config.limits.batch_bytes_max,
            tail,
            tail_len: SEGMENT_HEADER_BYTES,
            tail_file_len: SEGMENT_HEADER_BYTES,
            tail_records: 0,
            tail_crc: crc32fast::Hasher::new(),
            next_seq: 1,
            manifest: vec![ManifestEntry {
                base_position: 0,
                file_len: 0,
            }],
            reader: reader.clone(),
            poisoned: Arc::new(OnceLock::new()),
        };
        writer.write_manifest()?;
        Ok((
            writer,
            reader,
            RecoveryReport {
                segments: 1,
                ..RecoveryReport::default()
            },
        ))
    }

    /// The file system the log lives on.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the sealed segments that end at or before `before` from the log, durably: the
    /// manifest stops listing them first, then their files go. Returns how many went. (Retention
    /// drops a prefix of segments holding nothing but reclaimed records.)
    pub fn drop_prefix(&mut self, before: Position) -> Result<usize> {
        self.check_poison()?;
        let sealed = self.manifest.len() - 1;
        let count = self.manifest[..sealed]
            .iter()
            .take_while(|e| e.base_position + e.file_len <= before)
            .count();
        if count == 0 {
            return Ok(0);
        }
        let dropped: Vec<ManifestEntry> = self.manifest.drain(..count).collect();
        if let Err(e) = self.write_manifest() {
            return Err(self.poison(format!("dropping segments failed: {e}")));
        }
        write_lock(&self.reader.segments).drain(..count);
        for entry in dropped {
            let path = segment_path(&self.dir, entry.base_position);
            // Not listed any more: a file left behind is removed again at the next drop.
            if let Err(e) = self.fs.remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a dropped segment");
            }
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))?;
        Ok(count)
    }

    /// Position the next record will get.
    pub fn next_position(&self) -> Position {
        self.tail.base + self.tail_len
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the log holds no record at all.
    pub fn is_empty(&self) -> bool {
        self.manifest.len() == 1 && self.tail_records == 0
    }

    /// Whether the tail segment holds no record yet (a fresh log, or just rolled).
    pub fn tail_is_empty(&self) -> bool {
        self.tail_records == 0
    }

    /// The tail segment's file (to sync records found there at open).
    pub fn tail_file(&self) -> Arc<dyn FileHandle> {
        self.tail.file.clone()
    }

    /// Makes an empty log's first record get sequence number `first_seq` (a Raft log may
    /// start at any index). Fails if the log holds records.
    pub fn restart_seq(&mut self, first_seq: u64) -> Result<()> {
        self.check_poison()?;
        if !self.is_empty() {
            return Err(Error::invalid(
                "seq",
                "only an empty log can restart its sequence numbers",
            ));
        }
        if first_seq == self.next_seq {
            return Ok(());
        }
        let header = SegmentHeader {
            base_position: self.tail.base,
            first_seq,
        }
        .encode();
        let path = self.tail.path.clone();
        self.tail
            .file
            .write_all_at(&header, 0)
            .and_then(|()| self.tail.file.sync_data())
            .map_err(io_err(format!("rewriting header of {}", path.display())))?;
        let tail = Arc::new(Segment {
            base: self.tail.base,
            path,
            file: self.tail.file.clone(),
            first_seq,
            footer: None,
        });
        if let Some(last) = write_lock(&self.reader.segments).last_mut() {
            *last = tail.clone();
        }
        self.tail = tail;
        self.next_seq = first_seq;
        Ok(())
    }

    /// Bytes that still fit in the tail segment before it must roll.
    pub fn room(&self) -> u64 {
        self.segment_bytes_max
            .saturating_sub(self.tail_len + SEGMENT_FOOTER_BYTES)
    }

    /// Why the writer stopped, if it did.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.get().map(String::as_str)
    }

    fn check_poison(&self) -> Result<()> {
        match self.poisoned.get() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, why: String) -> Error {
        tracing::error!(reason = %why, "log writer stopped");
        let _ = self.poisoned.set(why);
        Error::Poisoned(self.poisoned.get().cloned().unwrap_or_default())
    }

    /// Writes one group of encoded records at `next_position`, without syncing. The caller
    /// must `sync_data` the returned file before acknowledging any of them, and on failure
    /// poison the log through [`LogWriter::poison_handle`].
    pub fn write(&mut self, buf: &[u8], records: u64) -> Result<Arc<dyn FileHandle>> {
        self.check_poison()?;
        debug_assert!(
            self.tail_len + buf.len() as u64 + SEGMENT_FOOTER_BYTES <= self.segment_bytes_max
        );
        let offset = self.tail_len;
        if let Err(e) = self.tail.file.write_all_at(buf, offset) {
            // Cut off whatever part did land so the next group starts on a record boundary.
            if let Err(undo) = self.tail.file.set_len(offset) {
                return Err(self.poison(format!("could not undo a failed write: {undo}")));
            }
            self.tail_file_len = offset;
            return Err(Error::io(
                format!("writing {}", self.tail.path.display()),
                e,
            ));
        }
        self.tail_len += buf.len() as u64;
        self.tail_file_len = self.tail_file_len.max(self.tail_len);
        self.preallocate();
        self.tail_records += records;
        self.tail_crc.update(buf);
        self.next_seq += records;
        Ok(self.tail.file.clone())
    }

    /// Writes zeros past the records when the file has none left ahead of them (see
    /// [`PREALLOCATE_BYTES`]). Best effort: on failure the file is cut back to its records
    /// and the next write extends it as before.
    fn preallocate(&mut self) {
        if self.tail_file_len > self.tail_len {
            return;
        }
        let target = (self.tail_len + PREALLOCATE_BYTES).min(self.segment_bytes_max);
        if target <= self.tail_file_len {
            return;
        }
        let zeros = vec![0u8; (target - self.tail_file_len) as usize];
        match self.tail.file.write_all_at(&zeros, self.tail_file_len) {
            Ok(()) => self.tail_file_len = target,
            Err(e) => {
                tracing::warn!(file = %self.tail.path.display(), error = %e, "could not preallocate the tail segment");
                if self.tail.file.set_len(self.tail_file_len).is_err() {
                    // Some zeros may have landed: they are no records, and a roll cuts the
                    // file back to its records whatever its length.
                    self.tail_file_len = target;
                }
            }
        }
    }

    /// The shared stop flag: set once, by the writer or by whoever syncs its writes.
    pub fn poison_handle(&self) -> Arc<OnceLock<String>> {
        self.poisoned.clone()
    }

    /// Seals the tail with its footer and starts a new tail segment.
    pub fn roll(&mut self) -> Result<()> {
        self.check_poison()?;
        match self.try_roll() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.poison(format!("rolling segment failed: {e}"))),
        }
    }

    fn try_roll(&mut self) -> Result<()> {
        let first_seq = self.tail.first_seq;
        let footer = Footer {
            record_count: self.tail_records,
            first_seq,
            last_seq: first_seq + self.tail_records - 1,
            records_end: self.next_position(),
            records_crc: self.tail_crc.clone().finalize(),
        };
        let path = self.tail.path.clone();
        // A sealed segment ends at its footer: cut the preallocated zeros first, so a crash
        // leaves either the records alone or the records and the footer.
        if self.tail_file_len > self.tail_len {
            self.tail
                .file
                .set_len(self.tail_len)
                .map_err(io_err(format!("truncating {}", path.display())))?;
            self.tail_file_len = self.tail_len;
        }
        self.tail
            .file
            .write_all_at(&footer.encode(), self.tail_len)
            .map_err(io_err(format!("writing footer of {}", path.display())))?;
        self.tail
            .file
            .sync_data()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        // Written for good: its pages leave the page cache (readers of it go to the device),
        // so the new segment's writes reuse them instead of taking fresh memory (see
        // `cache_trim`).
        self.tail.file.drop_cache();
        let file_len = self.tail_len + SEGMENT_FOOTER_BYTES;
        let new_base = self.tail.base + file_len;
        let (new_path, new_file) =
            create_segment(self.fs.as_ref(), &self.dir, new_base, self.next_seq)?;
        let sealed = Arc::new(Segment {
            base: self.tail.base,
            path,
            file: self.tail.file.clone(),
            first_seq,
            footer: Some(footer),
        });
        if let Some(last) = self.manifest.last_mut() {
            last.file_len = file_len;
        }
        self.manifest.push(ManifestEntry {
            base_position: new_base,
            file_len: 0,
        });
        self.write_manifest()?;
        let tail = Arc::new(Segment {
            base: new_base,
            path: new_path,
            file: new_file,
            first_seq: self.next_seq,
            footer: None,
        });
        {
            let mut segments = write_lock(&self.reader.segments);
            if let Some(last) = segments.last_mut() {
                *last = sealed;
            }
            segments.push(tail.clone());
        }
        self.tail = tail;
        self.tail_len = SEGMENT_HEADER_BYTES;
        self.tail_file_len = SEGMENT_HEADER_BYTES;
        self.tail_records = 0;
        self.tail_crc = crc32fast::Hasher::new();
        Ok(())
    }

    /// Removes every record at or after `position` (a record position), durably. Readers must
    /// already have been moved back before `position`.
    pub fn truncate_from(&mut self, position: Position) -> Result<()> {
        self.check_poison()?;
        match self.try_truncate(position) {
            Ok(()) => Ok(()),
            Err(e @ Error::InvalidArgument { .. }) => Err(e),
            Err(e) => Err(self.poison(format!("truncation failed: {e}"))),
        }
    }

    /// Undoes the roll that started an empty tail segment when the log is to continue at
    /// `position`, the end of the previous (sealed) segment's records: a follower whose own
    /// roll was not followed by a record (it was truncated or torn) while the leader's log
    /// went on in that segment. Returns whether it did.
    pub fn unroll_to(&mut self, position: Position) -> Result<bool> {
        let segments = self.reader.segments();
        let [.., previous, tail] = segments.as_slice() else {
            return Ok(false);
        };
        let empty_tail = self.tail_records == 0 && self.next_position() == tail.records_start();
        if !empty_tail || previous.footer.is_none_or(|f| f.records_end != position) {
            return Ok(false);
        }
        self.truncate_from(tail.records_start())?;
        Ok(true)
    }

    fn try_truncate(&mut self, position: Position) -> Result<()> {
        let segments = self.reader.segments();
        let mut i = segments
            .partition_point(|s| s.base <= position)
            .saturating_sub(1);
        let mut position = position;
        // Truncating at a segment's first record also undoes the roll that started it (rolls
        // happen only when a record does not fit), so the log is exactly as it was when the
        // last kept record was written — as on every other replica.
        if i > 0 && position == segments[i].records_start() {
            if let Some(footer) = segments[i - 1].footer {
                i -= 1;
                position = footer.records_end;
            }
        }
        if position >= self.next_position() {
            return Ok(());
        }
        let segment = segments[i].clone();
        if position < segment.records_start() {
            return Err(Error::invalid(
                "position",
                format!("{position} is not a record position"),
            ));
        }
        let offset = position - segment.base;
        if i + 1 < segments.len() {
            // Reaching back into a sealed segment: make it the tail in the manifest first, so a
            // crash either keeps the old log whole or finishes the truncation on open.
            self.manifest.truncate(i + 1);
            if let Some(last) = self.manifest.last_mut() {
                last.file_len = 0;
            }
            self.write_manifest()?;
        }
        // A sealed segment was opened read-only; as the tail it needs a writable handle.
        let file = match segment.footer {
            Some(_) => self
                .fs
                .open(&segment.path, OpenMode::ReadWrite)
                .map_err(io_err(format!("opening {}", segment.path.display())))?,
            None => segment.file.clone(),
        };
        file.set_len(offset)
            .map_err(io_err(format!("truncating {}", segment.path.display())))?;
        file.sync_data()
            .map_err(io_err(format!("syncing {}", segment.path.display())))?;
        for later in &segments[i + 1..] {
            self.fs
                .remove_file(&later.path)
                .map_err(io_err(format!("removing {}", later.path.display())))?;
        }
        if i + 1 < segments.len() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err(format!("syncing {}", self.dir.display())))?;
        }
        let scan = scan_segment(
            file.as_ref(),
            offset,
            self.reader.read_chunk_bytes,
            &segment.path,
            segment.base,
            segment.first_seq,
            self.record_len_max,
            TailRecovery::Refuse,
            0,
        )?;
        let tail = Arc::new(Segment {
            base: segment.base,
            path: segment.path.clone(),
            file,
            first_seq: segment.first_seq,
            footer: None,
        });
        {
            let mut shared = write_lock(&self.reader.segments);
            shared.truncate(i);
            shared.push(tail.clone());
        }
        self.tail = tail;
        self.tail_len = offset;
        self.tail_file_len = offset;
        self.tail_records = scan.record_count;
        self.tail_crc = scan.crc;
        self.next_seq = segment.first_seq + scan.record_count;
        Ok(())
    }

    fn write_manifest(&self) -> Result<()> {
        let tmp = self.dir.join(format!("{MANIFEST_NAME}.tmp"));
        let path = self.dir.join(MANIFEST_NAME);
        let file = self
            .fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(io_err(format!("creating {}", tmp.display())))?;
        file.write_all_at(&encode_manifest(&self.manifest), 0)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        file.sync_data()
            .map_err(io_err(format!("syncing {}", tmp.display())))?;
        self.fs
            .rename(&tmp, &path)
            .map_err(io_err(format!("renaming {}", tmp.display())))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))
    }
}

fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    base: Position,
    first_seq: u64,
) -> Result<(PathBuf, Arc<dyn FileHandle>)> {
    let path = segment_path(dir, base);
    let file = fs
        .open(&path, OpenMode::CreateTruncate)
        .map_err(io_err(format!("creating {}", path.display())))?;
    let header = SegmentHeader {
        base_position: base,
        first_seq,
    }
    .encode();
    file.write_all_at(&header, 0)
        .map_err(io_err(format!("writing {}", path.display())))?;
    file.sync_data()
        .map_err(io_err(format!("syncing {}", path.display())))?;
    fs.sync_dir(dir)
        .map_err(io_err(format!("syncing {}", dir.display())))?;
    Ok((path, file))
}

fn open_sealed(
    fs: &dyn FileSystem,
    dir: &Path,
    entry: ManifestEntry,
    expected_base: Position,
    expected_seq: Option<u64>,
) -> Result<Segment> {
    let path = segment_path(dir, entry.base_position);
    if entry.base_position != expected_base {
        return Err(Error::corruption(
            dir.join(MANIFEST_NAME),
            0,
            format!(
                "segment {} does not follow the previous one",
                path.display()
            ),
        ));
    }
    let file = fs
        .open(&path, OpenMode::Read)
        .map_err(io_err(format!("opening sealed segment {}", path.display())))?;
    let len = file
        .len()
        .map_err(io_err(format!("sizing {}", path.display())))?;
    if len != entry.file_len || len < SEGMENT_HEADER_BYTES + SEGMENT_FOOTER_BYTES {
        return Err(Error::corruption(
            &path,
            len,
            format!(
                "sealed segment is {len} bytes, manifest says {}",
                entry.file_len
            ),
        ));
    }
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    read_exact_at(file.as_ref(), &mut header, 0)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let header = SegmentHeader::decode(&header, &path)?;
    let mut footer = [0u8; SEGMENT_FOOTER_BYTES as usize];
    let footer_at = len - SEGMENT_FOOTER_BYTES;
    read_exact_at(file.as_ref(), &mut footer, footer_at)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let footer = Footer::decode(&footer, &path, footer_at)?;
    if header.base_position != entry.base_position
        || footer.records_end != entry.base_position + footer_at
        || footer.first_seq != header.first_seq
    {
        return Err(Error::corruption(
            &path,
            footer_at,
            "segment header and footer disagree",
        ));
    }
    if expected_seq.is_some_and(|s| s != header.first_seq) {
        return Err(Error::corruption(
            &path,
            0,
            "segment's first sequence number does not continue the log",
        ));
    }
    Ok(Segment {
        base: entry.base_position,
        path,
        file,
        first_seq: header.first_seq,
        footer: Some(footer),
    })
}

/// Checks a whole segment for `verify`: every record, and a sealed one's footer against its
/// records. Returns the record count and where a torn tail starts, if there is one.
pub(crate) fn verify_segment(
    fs: &dyn FileSystem,
    window_bytes: usize,
    path: &Path,
    base: Position,
    expected_first_seq: Option<u64>,
    sealed: bool,
    record_len_max: usize,
) -> Result<(u64, u64, Option<u64>)> {
    let (file, len, header) = open_segment(fs, path, OpenMode::Read)?;
    if header.base_position != base {
        return Err(Error::corruption(
            path,
            0,
            "header's base position does not match the file name",
        ));
    }
    if expected_first_seq.is_some_and(|s| s != header.first_seq) {
        return Err(Error::corruption(
            path,
            0,
            "first sequence number does not continue the previous segment",
        ));
    }
    let scan = scan_segment(
        file.as_ref(),
        len,
        window_bytes,
        path,
        base,
        header.first_seq,
        record_len_max,
        TailRecovery::TruncateTorn,
        0,
    )?;
    if sealed {
        let Some(footer) = scan.footer else {
            let at = scan.torn_at.unwrap_or(scan.records_len);
            return Err(Error::corruption(
                path,
                at,
                "sealed segment's records or footer are damaged",
            ));
        };
        if footer.records_crc != scan.crc.finalize() {
            return Err(Error::corruption(
                path,
                scan.records_len,
                "footer's records checksum does not match the records",
            ));
        }
        return Ok((header.first_seq, scan.record_count, None));
    }
    Ok((header.first_seq, scan.record_count, scan.torn_at))
}
