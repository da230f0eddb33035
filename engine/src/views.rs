//! Streams as users see them: with their metadata applied (truncate-before, max count, max
//! age, deletion), their state rebuilt from the newest snapshot, and the closed timestamp.
//! Every view is taken as of a point (or now), from the system streams of [`crate::system`].

use crate::error::{Error, Result};
use crate::event::{Direction, Position, RecordedEvent};
use crate::reader::{AsOf, Reader};
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
    /// The end of the prefix `as_of` sees (`None`: the whole visible log).
    fn end_of(&self, as_of: Option<AsOf>) -> Result<Position> {
        match as_of {
            Some(point) => self.as_of_end(point),
            None => Ok(self.end()),
        }
    }

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
        crate::validate::validate_stream_name("stream", stream, &self.limits)?;
        let end = self.end_of(as_of)?;
        let mut head = self.version_before(stream, end)?;
        if let (Some(AsOf::Version(v)), Some(h)) = (as_of, head) {
            head = Some(v.min(h));
        }
        let hard_deleted = self
            .version_before(&system::deleted_stream(stream), end)?
            .is_some();
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
        Ok(StreamInfo {
            head,
            meta,
            meta_version: meta_event.map(|e| e.version),
            floor,
            hard_deleted,
        })
    }

    /// The first version of `stream` stamped at or after `timestamp_us` (`head + 1` if none).
    fn first_version_stamped_from(
        &self,
        stream: &str,
        timestamp_us: u64,
        end: Position,
        head: u64,
    ) -> Result<u64> {
        match self.index.first_position_at_or_after(timestamp_us)? {
            Some(p) if p < end => Ok(self.version_before(stream, p)?.map_or(0, |v| v + 1)),
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
    ) -> Result<Vec<RecordedEvent>> {
        let info = self.stream_info(stream, as_of, now_us)?;
        if info.hard_deleted {
            return Err(Error::StreamDeleted {
                stream: stream.to_string(),
            });
        }
        let from = match direction {
            Direction::Forwards => Some(from.unwrap_or(0).max(info.floor)),
            Direction::Backwards => from,
        };
        let mut events = self.read_stream_as_of(stream, from, direction, limit, as_of)?;
        events.retain(|e| e.version >= info.floor);
        Ok(events)
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
        let info = self.stream_info(stream, as_of, now_us)?;
        if info.hard_deleted {
            return Err(Error::StreamDeleted {
                stream: stream.to_string(),
            });
        }
        let end = self.end_of(as_of)?;
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
        // Every version up to `version` lies before the point (it is the last one there), so
        // reading as of that version is the same read without finding it again.
        let mut events = if start > version {
            Vec::new()
        } else {
            self.read_stream_as_of(
                stream,
                Some(start),
                Direction::Forwards,
                limit,
                Some(AsOf::Version(version)),
            )?
        };
        events.retain(|e| e.version <= version);
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
    /// policy with the longest matching prefix; a later policy for the same prefix wins.
    pub fn snapshot_every(&self, stream: &str, end: Position) -> Result<u64> {
        let policies = self.read_stream_as_of(
            system::SETTINGS_STREAM,
            None,
            Direction::Forwards,
            SNAPSHOT_POLICIES_MAX.min(self.limits.read_events_max),
            None,
        )?;
        let mut best: Option<SnapshotPolicy> = None;
        for e in policies.iter().filter(|e| e.position < end) {
            if e.event_type != system::POLICY_TYPE {
                continue;
            }
            let p = SnapshotPolicy::decode(&e.data)?;
            if stream.starts_with(&p.prefix)
                && best
                    .as_ref()
                    .is_none_or(|b| p.prefix.len() >= b.prefix.len())
            {
                best = Some(p);
            }
        }
        Ok(best.map_or(0, |p| p.every))
    }

    /// The snapshot policies in force now, one per prefix.
    pub fn snapshot_policies(&self) -> Result<Vec<SnapshotPolicy>> {
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
            .filter(|e| e.event_type == system::POLICY_TYPE)
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
            .index
            .first_at_or_after(timestamp_us)?
            .filter(|(_, p)| *p < self.end())
            .map(|(t, _)| t))
    }
}
