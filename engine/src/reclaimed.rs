//! The read side of retention: the ranges of the log a retention pass reclaimed, and the as-of
//! horizon, shared by every reader of a log. Readers consult it; retention (`retention.rs`)
//! adds to it. Kept apart from both so neither imports the other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::error::Result;
use crate::event::Position;
use crate::index::Index;
use crate::sync::{read, write};

/// The reclaimed ranges of the log and the as-of horizon (the latest any of them set), shared
/// by every reader.
#[derive(Debug, Default)]
pub struct Reclaimed {
    ranges: RwLock<BTreeMap<Position, Position>>,
    horizon_us: AtomicU64,
}

impl Reclaimed {
    /// Loads what the index records.
    pub(crate) fn load(&self, index: &Index) -> Result<()> {
        let ranges = index.reclaimed_ranges()?;
        let horizon = ranges.iter().map(|(_, _, h)| *h).max().unwrap_or(0);
        let mut map = write(&self.ranges);
        map.clear();
        map.extend(ranges.into_iter().map(|(start, end, _)| (start, end)));
        self.horizon_us.store(horizon, Ordering::Release);
        Ok(())
    }

    /// Whether the record or event at `position` was reclaimed.
    pub fn contains(&self, position: Position) -> bool {
        self.end_of(position) > position
    }

    /// The end of the reclaimed range holding `position` (`position` if none does).
    pub(crate) fn end_of(&self, position: Position) -> Position {
        let map = read(&self.ranges);
        map.range(..=position)
            .next_back()
            .map_or(position, |(_, end)| (*end).max(position))
    }

    /// Whether all of `[start, end)` was reclaimed.
    pub(crate) fn covers(&self, start: Position, end: Position) -> bool {
        let map = read(&self.ranges);
        let mut at = start;
        for (s, e) in map.range(..end) {
            if *e <= at {
                continue;
            }
            if *s > at {
                return false;
            }
            at = *e;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// As-of reads at times before this are refused: events they saw may be gone.
    pub fn horizon_us(&self) -> u64 {
        self.horizon_us.load(Ordering::Acquire)
    }

    pub(crate) fn add(&self, ranges: &[(Position, Position)], horizon_us: u64) {
        let mut map = write(&self.ranges);
        map.extend(ranges.iter().copied());
        self.horizon_us.fetch_max(horizon_us, Ordering::AcqRel);
    }
}
