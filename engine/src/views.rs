//! Streams as users see them: with their metadata applied (truncate-before, max count, max
//! age, deletion), their state rebuilt from the newest snapshot, and the closed timestamp.
//! Every view is taken as of a point (or now), from the system streams of [`crate::system`].

use crate::error::{Error, Result};
use crate::event::{Direction, Position, RecordedEvent};
use crate::reader::{AsOf, Reader, StreamPage};
use crate::system::{self, SnapshotInfo, SnapshotPolicy, StreamMeta};

/// Snapshot policies read at most; later ones past it are ignored (documented bound).
pub const SNAPSHOT_POLICIES_MAX: usize = 1024;
/// Snapshots examined, newest first, looking for one at or below the version read as of.
pub const SNAPSHOTS_SCANNED_MAX: usize = 1024;

/// A stream's state of affairs at a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its last version (deleted or not), if it ever had an event.
    pub head: Option<u64>,
    /// Its metadata.
    pub meta: StreamMeta,
    /// The version of its metadata stream (`$meta:S`), for conditional updates.
    pub meta_version: Option<u64>,
    /// The lowest version readers see.
    pub floor: u64,
    /// Whether it has a tombstone.
    pub hard_deleted: bool,
}

impl StreamInfo {
    /// Soft-deleted (or truncated or expired whole): it has versions, none visible. Appending
    /// recreates it, continuing its versions.
    pub fn soft_deleted(&self) -> bool {
        !self.hard_deleted && self.head.is_some_and(|h| self.floor > h)
    }
}

/// An aggregate's state at a point: its newest snapshot at or before it and the events after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The snapshot (what it covers, and the snapshot event holding the bytes).
    pub snapshot: Option<(SnapshotInfo, RecordedEvent)>,
    /// Events after the snapshot (or from the first visible one), in order, up to `version`.
    pub events: Vec<RecordedEvent>,
    /// The stream's last version at the point (`None`: no events then).
    pub version: Option<u64>,
    /// `events` reach `version` (false: the limit cut them; read on from the last one).
    pub complete: bool,
    /// The stream's snapshot policy says a new snapshot is due at `version`.
    pub snapshot_due: bool,
}

impl Reader {
    /// The last event of `stream` before `end`.
    fn last_event_before(&self, stream: &str, end: Position) -> Result<Option<RecordedEvent>> {
        let Some(version) = self.version_before(stream, end)? else {
            return Ok(None);
        };
        // No entry: retention reclaimed it and the index was rebuilt since.
        let Some(slot) = self.index.stream_slot(stream, version)? else {
            return Ok(None);
        };
        if self.is_reclaimed(slot.position) {
            return Ok(None);
        }
        self.log.read_event(slot.position, slot.slot).map(Some)
    }

    /// `stream`'s head, metadata and visible floor as of `as_of` (`None`: now). Max age is
    /// measured back from the timestamp read as of, or from `now_us` for other points.
    pub fn stream_info(
        &self,
        stream: &str,
        as_of: Option<AsOf>,
        now_us: u64,
    ) -> Result<StreamInfo> {
        Ok(self.stream_info_and_end(stream, as_of, now_us)?.0)
    }

    /// [`Reader::stream_info`] and the end of the prefix it was taken over.
    fn stream_info_and_end(
        &self,
        stream: &str,
        as_of: Option<AsOf>,
        now_us: u64,
    ) -> Result<(StreamInfo, Position)> {
        crate::validate::validate_stream_name("stream", stream, &self.limits)?;
        let end = self.end_of(as_of)?;
        let mut head = self.version_before(stream, end)?;
        if let (Some(AsOf::Version(v)), Some(h)) = (as_of, head) {
            head = Some(v.min(h));
        }
        let hard_deleted = self.tombstoned_before(stream, end)?;
        let meta_event = self.last_event_before(&system::meta_stream(stream), end)?;
        let meta = match &meta_event {
            Some(e) => StreamMeta::decode(&e.data)?,
            None => StreamMeta::default(),
        };
        let floor = match head {
            None => 0,
            Some(h) => {
                let young_from = match meta.max_age_us {
                    None => None,
                    Some(age) => {
                        let now = match as_of {
                            Some(AsOf::Timestamp(t)) => t,
                            _ => now_us,
                        };
                        Some(self.first_version_stamped_from(
                            stream,
                            now.saturating_sub(age),
                            end,
                            h,
                        )?)
                    }
                };
                meta.floor(h, young_from)
            }
        };
        let info = StreamInfo {
            head,
            meta,
            meta_version: meta_event.map(|e| e.version),
            floor,
            hard_deleted,
        };
        Ok((info, end))
    }

    /// Whether `stream`'s tombstone lies before `end`. A tombstone is always version 0 of
    /// `$deleted:S` (the only append to it expects no stream), so this is a point lookup.
    pub(crate) fn tombstoned_before(&self, stream: &str, end: Position) -> Result<bool> {
        Ok(self
            .index
            .stream_slot(&system::deleted_stream(stream), 0)?
            .is_some_and(|s| s.position < end))
    }

    /// [`Reader::stream_info_and_end`] for a read of the stream's visible events: a
    /// hard-deleted stream is an error.
    fn readable_info(
        &self,
        stream: &str,
        as_of: Option<AsOf>,
        now_us: u64,
    ) -> Result<(StreamInfo, Position)> {
        let (info, end) = self.stream_info_and_end(stream, as_of, now_us)?;
        if info.hard_deleted {
            return Err(Error::StreamDeleted {
                stream: stream.to_string(),
            });
        }
        Ok((info, end))
    }

    /// The first version of `stream` stamped at or after `timestamp_us` (`head + 1` if none).
    fn first_version_stamped_from(
        &self,
        stream: &str,
        timestamp_us: u64,
        end: Position,
        head: u64,
    ) -> Result<u64> {
        match self.first_stamped_at_or_after(timestamp_us)? {
            Some((_, p)) if p < end => Ok(self.version_before(stream, p)?.map_or(0, |v| v + 1)),
            _ => Ok(head + 1),
        }
    }

    /// [`Reader::read_stream_as_of`] with the stream's metadata applied: versions below its
    /// floor are not returned; a hard-deleted stream is an error.
    pub fn read_stream_visible(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        as_of: Option<AsOf>,
        now_us: u64,
    ) -> Result<StreamPage> {
        let (info, _) = self.readable_info(stream, as_of, now_us)?;
        let Some(head) = info.head else {
            return Ok(StreamPage::default());
        };
        let from = match direction {
            Direction::Forwards => Some(from.unwrap_or(0).max(info.floor)),
            Direction::Backwards => from,
        };
        // Every version up to `head` lies before the point (it is the last one there), so
        // reading as of that version is the same read without finding the point again.
        let mut page = self.read_stream_page(
            stream,
            from,
            direction,
            limit,
            self.limits.read_bytes_max,
            Some(AsOf::Version(head)),
        )?;
        page.events.retain(|e| e.version >= info.floor);
        Ok(page)
    }

    /// The state of `stream` as of a point: the newest snapshot stored at or before it whose
    /// version is at most the stream's version there, and up to `limit` events after it.
    pub fn read_state(
        &self,
        stream: &str,
        as_of: Option<AsOf>,
        limit: usize,
        now_us: u64,
    ) -> Result<State> {
        let (info, end) = self.readable_info(stream, as_of, now_us)?;
        let Some(version) = info.head.filter(|h| *h >= info.floor) else {
            return Ok(State {
                snapshot: None,
                events: Vec::new(),
                version: info.head,
                complete: true,
                snapshot_due: false,
            });
        };
        let snapshot = self.snapshot_at_or_below(stream, version, end)?;
        let start = snapshot
            .as_ref()
            .map_or(info.floor, |(s, _)| (s.version + 1).max(info.floor));
        // As in `read_stream_visible`: as of `version`, the last one at the point. The
        // snapshot's bytes count against the answer's byte bound.
        let snapshot_bytes = snapshot.as_ref().map_or(0, |(_, e)| e.data.len());
        let events = if start > version {
            Vec::new()
        } else {
            self.read_stream_page(
                stream,
                Some(start),
                Direction::Forwards,
                limit,
                self.limits.read_bytes_max.saturating_sub(snapshot_bytes),
                Some(AsOf::Version(version)),
            )?
            .events
        };
        let complete = start > version || events.last().is_some_and(|e| e.version == version);
        let every = self.snapshot_every(stream, end)?;
        let since = snapshot
            .as_ref()
            .map_or(version + 1, |(s, _)| version - s.version);
        Ok(State {
            snapshot,
            events,
            version: Some(version),
            complete,
            snapshot_due: every > 0 && since >= every,
        })
    }

    /// The newest snapshot of `stream` before `end` covering at most `version`.
    fn snapshot_at_or_below(
        &self,
        stream: &str,
        version: u64,
        end: Position,
    ) -> Result<Option<(SnapshotInfo, RecordedEvent)>> {
        let snapshots = system::snapshot_stream(stream);
        let Some(mut next) = self.version_before(&snapshots, end)? else {
            return Ok(None);
        };
        for _ in 0..SNAPSHOTS_SCANNED_MAX {
            let slot = self
                .index
                .stream_slot(&snapshots, next)?
                .ok_or_else(|| Error::Index(format!("{snapshots}@{next} has no stream entry")))?;
            let event = self.log.read_event(slot.position, slot.slot)?;
            let info = SnapshotInfo::decode(&event.metadata)?;
            if info.version <= version {
                return Ok(Some((info, event)));
            }
            match next.checked_sub(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(None)
    }

    /// Events between snapshots the policy asks for `stream` (0: none), as of `end`: the
    /// policy with the longest matching prefix.
    pub fn snapshot_every(&self, stream: &str, end: Position) -> Result<u64> {
        Ok(self
            .policies_before(end)?
            .into_iter()
            .filter(|p| stream.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
            .map_or(0, |p| p.every))
    }

    /// The snapshot policies in force now, one per prefix.
    pub fn snapshot_policies(&self) -> Result<Vec<SnapshotPolicy>> {
        self.policies_before(self.end())
    }

    /// The snapshot policies stored before `end`, one per prefix (the later one wins), by
    /// prefix.
    fn policies_before(&self, end: Position) -> Result<Vec<SnapshotPolicy>> {
        let events = self.read_stream_as_of(
            system::SETTINGS_STREAM,
            None,
            Direction::Forwards,
            SNAPSHOT_POLICIES_MAX.min(self.limits.read_events_max),
            None,
        )?;
        let mut policies: Vec<SnapshotPolicy> = Vec::new();
        for e in events
            .iter()
            .filter(|e| e.position < end && e.event_type == system::POLICY_TYPE)
        {
            let p = SnapshotPolicy::decode(&e.data)?;
            policies.retain(|q| q.prefix != p.prefix);
            policies.push(p);
        }
        policies.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(policies)
    }

    /// Whether this log is closed at `timestamp_us`: a committed record is stamped at or
    /// after it, so no record stamped at or before it can follow (timestamps increase along
    /// the log). Returns that record's timestamp: the log is closed through it.
    pub fn closed_through(&self, timestamp_us: u64) -> Result<Option<u64>> {
        Ok(self
            .first_stamped_at_or_after(timestamp_us)?
            .filter(|(_, p)| *p < self.end())
            .map(|(t, _)| t))
    }
}
