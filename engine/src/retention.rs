//! Retention: reclaiming the space of dead events in the background, a segment at a time,
//! throttled, without ever blocking the writer.
//!
//! **The rule.** An event is *dead* when readers can no longer see it and will not again:
//! - its stream was hard-deleted (tombstone) before the as-of window began, or
//! - its version was below its stream's floor (truncate-before, max-count, max-age) as of the
//!   start of the as-of window (`now - as_of_window`), and the stream's metadata has not changed
//!   since (so no as-of read inside the window, and no read now, sees it);
//! - a closed-timestamp tick older than the window that is not its stream's newest.
//!
//! A stream's newest event is never dead (its version continues the stream, even when the
//! index is rebuilt from the log). Metadata, snapshots, policies and tombstones live as long
//! as their stream. A record is reclaimable when every event in it is dead; records without
//! events (Raft no-ops, membership) stay.
//!
//! **How.** A sealed segment whose reclaimable bytes reach `rewrite_dead_fraction` of its
//! records (or that is all dead) is rewritten: live records are copied byte for byte to the
//! same offsets of a new file, each run of dead records becomes one *hole* record
//! (`format::KIND_HOLE`: header, record count, then zeros never written, so the file is sparse),
//! a new footer seals it, and it is renamed over the old file. Positions never change. The
//! reclaimed ranges and the new as-of horizon go to the index *before* the rename, so a crash
//! in between leaves reads skipping events that were dead anyway. A prefix of segments holding
//! nothing but holes is then dropped whole (`LogWriter::drop_prefix`). Only segments that end
//! before `bound` are touched: the caller passes the lowest position an open subscription
//! still has to deliver (and, on a replicated shard, what Raft may still need to send).
//!
//! **What readers see.** Reads skip reclaimed events (they were invisible anyway); an as-of
//! read older than the horizon — the start of the window at the last pass that reclaimed
//! something — is refused rather than answered with events missing. The index keeps the stream
//! and id entries of reclaimed events (about 60 bytes each), so versions continue and retries of
//! reclaimed appends are still recognised (without a content check) until the index is rebuilt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{SEGMENT_FOOTER_BYTES, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::format::{self, RecordHeader, HOLE_PREFIX_BYTES};
use crate::fs::{read_exact_at, FileSystem, OpenMode};
use crate::index;
use crate::index_store::IndexBatch;
use crate::log::Segment;
use crate::reader::{AsOf, Reader};
pub use crate::reclaimed::Reclaimed;
use crate::segment::Footer;
use crate::system::{self, GroupPart, SystemStream};
use crate::views::StreamInfo;

/// Settings of retention.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// As-of reads within this long before now stay exact. Default 1 hour.
    pub as_of_window_us: u64,
    /// A segment is rewritten once this fraction of its record bytes is reclaimable. Default
    /// 0.5.
    pub rewrite_dead_fraction: f64,
    /// Most bytes per second a pass reads and writes (the throttle). Default 64 MiB/s.
    pub bytes_per_sec: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            as_of_window_us: 3_600_000_000,
            rewrite_dead_fraction: 0.5,
            bytes_per_sec: 64 << 20,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Sealed segments looked at.
    pub segments_examined: usize,
    /// Segments rewritten with holes.
    pub segments_rewritten: usize,
    /// Record bytes turned into holes.
    pub bytes_reclaimed: u64,
    /// As-of reads before this are refused (0: none reclaimed yet).
    pub horizon_us: u64,
}

/// One record of a segment as retention sees it.
#[derive(Debug, Clone, Copy)]
struct Planned {
    header: RecordHeader,
    len: u64,
    records: u64,
    dead: bool,
    hole: bool,
}

/// Decides which events are dead, caching each stream's state at the window's start and now.
struct Judge<'a> {
    reader: &'a Reader,
    window_start: u64,
    now_us: u64,
    streams: HashMap<String, (StreamInfo, StreamInfo)>,
    /// `$closed`'s last version, once asked.
    closed_head: Option<Option<u64>>,
}

impl Judge<'_> {
    fn infos(&mut self, stream: &str) -> Result<&(StreamInfo, StreamInfo)> {
        if !self.streams.contains_key(stream) {
            let then = self.reader.stream_info(
                stream,
                Some(AsOf::Timestamp(self.window_start)),
                self.window_start,
            )?;
            let now = self.reader.stream_info(stream, None, self.now_us)?;
            self.streams.insert(stream.to_string(), (then, now));
        }
        self.streams
            .get(stream)
            .ok_or_else(|| Error::Index("stream state vanished from the cache".into()))
    }

    fn dead(&mut self, e: &RecordedEvent) -> Result<bool> {
        match system::parse(&e.stream) {
            Some(SystemStream::Closed) => {
                let head = match self.closed_head {
                    Some(head) => head,
                    None => *self
                        .closed_head
                        .insert(self.reader.stream_version(system::CLOSED_STREAM)?),
                };
                Ok(head.is_some_and(|h| e.version < h) && e.timestamp_us < self.window_start)
            }
            Some(SystemStream::Meta(s) | SystemStream::Snapshot(s)) => {
                Ok(self.infos(s)?.0.hard_deleted)
            }
            Some(
                SystemStream::Deleted(_)
                | SystemStream::Settings
                | SystemStream::ClusterMap
                | SystemStream::Fences,
            ) => Ok(false),
            // Heartbeats and partition commits: only the newest matter; keep a history.
            Some(SystemStream::Group(_, GroupPart::Members | GroupPart::Partition(_))) => {
                let head = self.infos(&e.stream)?.1.head;
                Ok(
                    head.is_some_and(|h| e.version + system::GROUP_EVENTS_KEPT <= h)
                        && e.timestamp_us < self.window_start,
                )
            }
            Some(SystemStream::Group(..)) => Ok(false),
            None => {
                let (then, now) = self.infos(&e.stream)?;
                if now.head == Some(e.version) {
                    return Ok(false);
                }
                Ok(then.hard_deleted
                    || (then.meta_version == now.meta_version && e.version < then.floor))
            }
        }
    }
}

/// Retention over one store: its reader, file system and log directory. Cheap to clone; a
/// pass runs on whatever thread calls it, beside the writer.
#[derive(Debug, Clone)]
pub struct Retention {
    reader: Reader,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
}

impl Retention {
    pub(crate) fn new(reader: Reader, fs: Arc<dyn FileSystem>, dir: &Path) -> Retention {
        Retention {
            reader,
            fs,
            dir: dir.to_path_buf(),
        }
    }

    /// One pass over the sealed segments ending at or before `bound`, at time `now_us`.
    /// `pace(bytes)` is called after each record or hole with the bytes read and written, and
    /// may sleep to throttle.
    pub fn pass(
        &self,
        config: &RetentionConfig,
        now_us: u64,
        bound: Position,
        pace: &mut dyn FnMut(u64),
    ) -> Result<PassReport> {
        let reclaimed = &self.reader.reclaimed;
        let window_start = now_us
            .saturating_sub(config.as_of_window_us)
            .max(reclaimed.horizon_us());
        let mut report = PassReport::default();
        let segments = self.reader.segments();
        for (segment, footer) in segments.iter().filter_map(|s| Some((s, s.footer?))) {
            if footer.records_end + SEGMENT_FOOTER_BYTES > bound {
                break;
            }
            if self.reader.is_segment_reclaimed(segment) {
                continue;
            }
            report.segments_examined += 1;
            let mut judge = Judge {
                reader: &self.reader,
                window_start,
                now_us,
                streams: HashMap::new(),
                closed_head: None,
            };
            let plan = self.plan(segment, footer.records_end, &mut judge, pace)?;
            let total: u64 = plan.iter().map(|p| p.len).sum();
            let fresh: u64 = plan
                .iter()
                .filter(|p| p.dead && !p.hole)
                .map(|p| p.len)
                .sum();
            let all_dead = plan.iter().all(|p| p.dead);
            let worth = fresh > 0
                && (all_dead || fresh as f64 >= config.rewrite_dead_fraction * total as f64);
            if !worth {
                continue;
            }
            self.rewrite(segment, footer, &plan, window_start, pace)?;
            report.segments_rewritten += 1;
            report.bytes_reclaimed += fresh;
        }
        report.horizon_us = reclaimed.horizon_us();
        Ok(report)
    }

    /// Every record of `segment` with whether it is dead.
    fn plan(
        &self,
        segment: &Segment,
        records_end: Position,
        judge: &mut Judge<'_>,
        pace: &mut dyn FnMut(u64),
    ) -> Result<Vec<Planned>> {
        let mut plan = Vec::new();
        let mut at = segment.records_start();
        while at < records_end {
            let (raw, next) = self.reader.log.scan(at, records_end, 4096, 8 << 20)?;
            if raw.is_empty() {
                break;
            }
            for r in &raw {
                let kind = format::read_kind(&r.frame);
                let hole = kind == format::KIND_HOLE;
                let dead = if hole {
                    true
                } else if kind == format::KIND_EVENTS {
                    let events = r.events(&self.reader.log)?;
                    let mut all = true;
                    for e in &events {
                        if !judge.dead(e)? {
                            all = false;
                            break;
                        }
                    }
                    all
                } else {
                    false
                };
                plan.push(Planned {
                    header: r.header,
                    len: r.frame.len() as u64,
                    records: format::records_in(&r.frame),
                    dead,
                    hole,
                });
                pace(r.frame.len() as u64);
            }
            at = next;
        }
        Ok(plan)
    }

    /// Writes the segment again with each run of dead records as holes, records the runs and
    /// the horizon in the index, renames it over the old file and swaps it in for readers.
    fn rewrite(
        &self,
        segment: &Segment,
        old: Footer,
        plan: &[Planned],
        window_start: u64,
        pace: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let io = |what: &str, path: &Path| {
            let context = format!("{what} {}", path.display());
            move |e: std::io::Error| Error::io(context, e)
        };
        let tmp = segment.path.with_extension("rewrite");
        let file = self
            .fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(io("creating", &tmp))?;
        let mut header = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        read_exact_at(segment.file.as_ref(), &mut header, 0)
            .map_err(io("reading", &segment.path))?;
        file.write_all_at(&header, 0).map_err(io("writing", &tmp))?;
        let horizon = window_start.max(self.reader.reclaimed.horizon_us());
        let mut crc = crc32fast::Hasher::new();
        let mut runs: Vec<(Position, Position)> = Vec::new();
        let record_len_max = self.reader.limits.batch_bytes_max as u64;
        let mut i = 0;
        while i < plan.len() {
            let p = plan[i];
            let offset = p.header.position - segment.base;
            if !p.dead {
                let mut frame = vec![0u8; p.len as usize];
                read_exact_at(segment.file.as_ref(), &mut frame, offset)
                    .map_err(io("reading", &segment.path))?;
                file.write_all_at(&frame, offset)
                    .map_err(io("writing", &tmp))?;
                crc.update(&frame);
                pace(2 * p.len);
                i += 1;
                continue;
            }
            // A run of dead records, at most one record's maximum length per hole.
            let (mut len, mut records, mut j) = (0u64, 0u64, i);
            while j < plan.len() && plan[j].dead && (j == i || len + plan[j].len <= record_len_max)
            {
                len += plan[j].len;
                records += plan[j].records;
                j += 1;
            }
            let last = plan[j - 1].header;
            let hole_header = RecordHeader {
                timestamp_us: last.timestamp_us,
                flags: 0,
                ..p.header
            };
            let prefix = format::hole_prefix(hole_header, records, horizon, len as usize);
            file.write_all_at(&prefix, offset)
                .map_err(io("writing", &tmp))?;
            crc.update(&prefix);
            format::crc_zeros(&mut crc, len as usize - HOLE_PREFIX_BYTES);
            runs.push((p.header.position, p.header.position + len));
            pace(HOLE_PREFIX_BYTES as u64);
            i = j;
        }
        // The footer's checksum covers the record bytes as they now are.
        let footer = Footer {
            records_crc: crc.finalize(),
            ..old
        };
        let footer_at = old.records_end - segment.base;
        file.write_all_at(&footer.encode(), footer_at)
            .map_err(io("writing", &tmp))?;
        file.set_len(footer_at + SEGMENT_FOOTER_BYTES)
            .map_err(io("sizing", &tmp))?;
        file.sync_data().map_err(io("syncing", &tmp))?;
        drop(file);
        // The index learns of the holes before they exist: until the rename, reads skip
        // events that are dead anyway.
        let mut batch = IndexBatch::default();
        for (start, end) in &runs {
            index::add_hole(&mut batch, *start, *end, horizon);
        }
        self.reader.index.write(batch, true)?;
        self.reader.reclaimed.add(&runs, horizon);
        self.fs
            .rename(&tmp, &segment.path)
            .map_err(io("renaming", &tmp))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io("syncing", &self.dir))?;
        let reopened = self
            .fs
            .open(&segment.path, OpenMode::Read)
            .map_err(io("opening", &segment.path))?;
        self.reader.log.replace_sealed(Arc::new(Segment {
            base: segment.base,
            path: segment.path.clone(),
            file: reopened,
            first_seq: segment.first_seq,
            footer: Some(footer),
        }));
        Ok(())
    }
}

impl Reader {
    /// As-of reads at times before this are refused here (0: nothing reclaimed yet).
    pub fn retention_horizon_us(&self) -> u64 {
        self.reclaimed.horizon_us()
    }

    /// Whether `segment` is sealed and holds nothing but reclaimed records (a snapshot need
    /// not list it; retention may drop it).
    pub fn is_segment_reclaimed(&self, segment: &Segment) -> bool {
        segment.footer.is_some_and(|f| {
            self.reclaimed
                .covers(segment.records_start(), f.records_end)
        })
    }
}
