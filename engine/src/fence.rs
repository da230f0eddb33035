//! Write fences of slot-range moves. Moving slots `A..B` from this shard to shard T ends with
//! a fence: an event in this shard's `$fences` stream, after which the log refuses every
//! append to a stream of those slots (decided where the expected version is, so on every
//! replica at the same record, and after a leader change too) with [`Error::Moved`] naming T.
//! No append this shard acknowledges can then come after the mover's last catch-up read. A
//! move that does not finish lifts its fence with a later event; a finished one keeps it, so a
//! writer that still routes by an older map is told where the slots went.
//!
//! ```text
//! $fences  "$fence"    "slots 4096 range 0 512 to 3"   slots 0..512 (of 4096) fenced for shard 3
//!          "$unfence"  "slots 4096 range 0 512"        the fence of exactly that range lifted
//! ```
//!
//! A stream's slot is its routing key's ([`strata_slots::slot_of`]); a system stream about a
//! stream (`$meta:S`, `$snap:S`, `$deleted:S`) is fenced with S, a consumer group's streams
//! with their group's name, the shard's own ones (`$closed`, `$settings`, `$fences`, …)
//! never ([`crate::system::slot_base`]). Copies (`AppendRequest::copy`) pass fences:
//! they are the mover's own writes into the target.

use crate::error::{Error, Result};
use crate::system::slot_base;
pub use crate::system::{FENCES_STREAM, FENCE_TYPE, UNFENCE_TYPE};

/// Slots `start..end` of `slots` fenced: their writes go to shard `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The cluster's slot count.
    pub slots: u32,
    /// First fenced slot.
    pub start: u32,
    /// One past the last fenced slot.
    pub end: u32,
    /// The shard the slots move to.
    pub to: u32,
}

/// One event of `$fences`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceChange {
    /// A fence set.
    Set(Fence),
    /// The fence of `slots` slots `start..end` lifted.
    Lift { slots: u32, start: u32, end: u32 },
}

impl FenceChange {
    /// The event type and data that record this change.
    pub fn encode(&self) -> (&'static str, String) {
        match self {
            FenceChange::Set(f) => (
                FENCE_TYPE,
                format!("slots {} range {} {} to {}", f.slots, f.start, f.end, f.to),
            ),
            FenceChange::Lift { slots, start, end } => {
                (UNFENCE_TYPE, format!("slots {slots} range {start} {end}"))
            }
        }
    }

    /// The change an event of `$fences` records (an event that is not one is refused: the
    /// stream holds nothing else).
    pub fn decode(event_type: &str, data: &[u8]) -> Result<FenceChange> {
        let bad = |why: &str| {
            Error::invalid(
                "$fences",
                format!("{why}: {:?}", String::from_utf8_lossy(data)),
            )
        };
        let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
        let words: Vec<&str> = text.split(' ').collect();
        let num = |k: usize| -> Result<u32> {
            words
                .get(k)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| bad("a number is missing or malformed"))
        };
        let shape_ok = |n: usize| {
            words.len() == n && words.first() == Some(&"slots") && words.get(2) == Some(&"range")
        };
        let (slots, start, end) = match event_type {
            FENCE_TYPE if shape_ok(7) && words.get(5) == Some(&"to") => (num(1)?, num(3)?, num(4)?),
            UNFENCE_TYPE if shape_ok(5) => (num(1)?, num(3)?, num(4)?),
            _ => return Err(bad(&format!("not a fence change of type {event_type}"))),
        };
        if slots == 0 || start >= end || end > slots {
            return Err(bad("the range is empty or past the slots"));
        }
        Ok(match event_type {
            FENCE_TYPE => FenceChange::Set(Fence {
                slots,
                start,
                end,
                to: num(6)?,
            }),
            _ => FenceChange::Lift { slots, start, end },
        })
    }
}

/// Events of `$fences` read per index lookup by [`read_fences`].
const READ_PAGE: usize = 256;

/// The fences in force as `reader` sees the log (its published end): the changes of
/// `$fences` replayed.
pub fn read_fences(reader: &crate::reader::Reader) -> Result<Fences> {
    let mut fences = Fences::default();
    let mut from = Some(0);
    while let Some(version) = from {
        let page = reader.read_stream(
            FENCES_STREAM,
            Some(version),
            crate::event::Direction::Forwards,
            READ_PAGE,
        )?;
        for e in &page {
            fences.apply(FenceChange::decode(&e.event_type, &e.data)?);
        }
        from = match page.last() {
            Some(e) if page.len() == READ_PAGE => Some(e.version + 1),
            _ => None,
        };
    }
    Ok(fences)
}

/// The fences in force: at most one per slot range moved away (a range moved back is lifted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences(Vec<Fence>);

impl Fences {
    /// Applies one change (in log order). Setting a range again replaces its target.
    pub fn apply(&mut self, change: FenceChange) {
        match change {
            FenceChange::Set(f) => {
                self.0
                    .retain(|g| (g.slots, g.start, g.end) != (f.slots, f.start, f.end));
                self.0.push(f);
            }
            FenceChange::Lift { slots, start, end } => {
                self.0
                    .retain(|g| (g.slots, g.start, g.end) != (slots, start, end));
            }
        }
    }

    /// The shard a write to `stream` must go to instead, when a fence covers it.
    pub fn fenced(&self, stream: &str) -> Option<u32> {
        if self.0.is_empty() {
            return None;
        }
        let base = slot_base(stream)?;
        self.0.iter().find_map(|f| {
            let slot = strata_slots::slot_of(base, f.slots);
            (f.start..f.end).contains(&slot).then_some(f.to)
        })
    }

    /// The fences, in the order set.
    pub fn list(&self) -> &[Fence] {
        &self.0
    }

    /// Whether none is in force.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn changes_round_trip_and_bad_ones_are_refused() {
        let set = FenceChange::Set(Fence {
            slots: 4096,
            start: 0,
            end: 512,
            to: 3,
        });
        let lift = FenceChange::Lift {
            slots: 4096,
            start: 0,
            end: 512,
        };
        for c in [set, lift] {
            let (t, d) = c.encode();
            assert_eq!(FenceChange::decode(t, d.as_bytes()).unwrap(), c);
        }
        for (t, d) in [
            (FENCE_TYPE, "slots 4096 range 0 512"),
            (FENCE_TYPE, "slots 4096 range 512 512 to 3"),
            (FENCE_TYPE, "slots 4096 range 0 5000 to 3"),
            (UNFENCE_TYPE, "slots 4096 range 0 512 to 3"),
            ("$other", "slots 4096 range 0 512"),
            (FENCE_TYPE, "slots x range 0 512 to 3"),
        ] {
            assert!(FenceChange::decode(t, d.as_bytes()).is_err(), "{t} {d}");
        }
    }

    #[test]
    fn a_fence_covers_its_slots_and_the_streams_about_them_only() {
        let mut fences = Fences::default();
        let slot = strata_slots::slot_of("order-{42}", 16);
        fences.apply(FenceChange::Set(Fence {
            slots: 16,
            start: slot,
            end: slot + 1,
            to: 7,
        }));
        for s in [
            "order-{42}",
            "order-{42}-payments",
            "$meta:order-{42}",
            "$deleted:order-{42}",
        ] {
            assert_eq!(fences.fenced(s), Some(7), "{s}");
        }
        assert_eq!(fences.fenced("$settings"), None);
        assert_eq!(fences.fenced("$fences"), None);
        let other = (0..100)
            .map(|k| format!("o-{k}"))
            .find(|s| strata_slots::slot_of(s, 16) != slot)
            .unwrap();
        assert_eq!(fences.fenced(&other), None);
        fences.apply(FenceChange::Lift {
            slots: 16,
            start: slot,
            end: slot + 1,
        });
        assert!(fences.is_empty());
        assert_eq!(fences.fenced("order-{42}"), None);
    }
}
