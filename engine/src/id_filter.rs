//! Which event ids the log may hold, in memory: the writer asks it before the index.
//!
//! Every append looks each of its event ids up (idempotency: a retry is answered with the
//! original result, a partly repeated append is refused). Nearly every id is new, and the
//! index answers "absent" only after a RocksDB get (memtable, then every level's filter): 16 %
//! of a node's CPU on 100-event appends, and on the writer thread, which every append waits
//! for. This filter answers "absent" for all but a small fraction of new ids with one cache
//! line read; "maybe" falls back to the index, so it can only make a lookup slower, never
//! wrong.
//!
//! ```text
//! segment: blocks of 8 × u64 (64 bytes, one cache line)
//!   id --hash--> (h1, h2)
//!   block = h1 · blocks / 2^64             (multiply-shift: no modulo, any block count)
//!   word i of the block gets bit (h2 >> 6i) & 63, i = 0..8   (8 bits per id, one per word)
//! a chain of segments: ids go into the newest; a lookup asks every segment
//! ```
//!
//! The invariant: once [`KnownIds`] is complete, every id in the index or in flight is in its
//! filter. At open a thread of its own reads the ids the index holds into a base filter (a pass
//! over the id keys, ~0.6 µs per id: a minute for 100 million), while the store inserts every id
//! it hands to the indexer into a live one; until the base arrives every lookup goes to the
//! index, so opening does not wait for the pass. Deleted ids (retention, truncation) stay set:
//! false positives only. Sized at [`BITS_PER_ID`] bits per id, a full
//! segment answers "maybe" for ~0.1–0.2 % of new ids. A full segment is followed by one four
//! times its size while the chain stays within its byte bound; past the bound the last segment
//! keeps filling and its false-positive rate rises (lookups slow down, answers do not change).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use uuid::Uuid;

use crate::error::Result;
use crate::index::Index;

/// Bits of filter per id a segment is sized for.
pub const BITS_PER_ID: usize = 16;
/// Ids the first segment is sized for (2 MiB).
pub const FIRST_SEGMENT_IDS: usize = 1 << 20;
/// Each new segment holds this many times the ids of the one before.
const GROWTH: usize = 4;
/// u64 words per block: one 64-byte cache line.
const WORDS: usize = 8;

/// The chain of segments. `bytes_max` = 0 turns the filter off (every id is "maybe").
#[derive(Debug)]
pub struct IdFilter {
    segments: Vec<Segment>,
    bytes_max: usize,
}

#[derive(Debug)]
struct Segment {
    blocks: Vec<[u64; WORDS]>,
    /// Ids inserted; the segment is full at `capacity`.
    ids: usize,
    capacity: usize,
}

impl IdFilter {
    /// An empty filter whose segments together stay within `bytes_max` bytes (the first
    /// segment is made smaller to fit; below one block the filter is off).
    pub fn new(bytes_max: usize) -> IdFilter {
        let mut filter = IdFilter {
            segments: Vec::new(),
            bytes_max,
        };
        filter.grow(FIRST_SEGMENT_IDS);
        filter
    }

    /// Whether the filter answers anything but "maybe".
    pub fn is_on(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Bytes the segments take.
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(Segment::bytes).sum()
    }

    /// Notes `id` as (possibly) in the log.
    pub fn insert(&mut self, id: Uuid) {
        let full = self.segments.last().is_some_and(|s| s.ids >= s.capacity);
        if full {
            let next = self
                .segments
                .last()
                .map_or(FIRST_SEGMENT_IDS, |s| s.capacity.saturating_mul(GROWTH));
            self.grow(next);
        }
        if let Some(segment) = self.segments.last_mut() {
            segment.insert(hash(id));
        }
    }

    /// False when `id` was certainly never inserted; true when it may have been (or the
    /// filter is off).
    pub fn may_contain(&self, id: Uuid) -> bool {
        let h = hash(id);
        !self.is_on() || self.segments.iter().any(|s| s.may_contain(h))
    }

    /// Reads the block of each of `ids` in every segment, ahead of asking about them one by
    /// one: these reads do not wait for each other, so their cache misses (one per id and
    /// segment, the filter being larger than the caches) overlap, where lookups one after
    /// another wait for each in turn. Changes nothing.
    pub fn warm(&self, ids: impl Iterator<Item = Uuid>) {
        if !self.is_on() {
            return;
        }
        let mut seen = 0u64;
        for id in ids {
            let (h1, _) = hash(id);
            for s in &self.segments {
                seen ^= s.blocks.get(s.block(h1)).map_or(0, |b| b[0]);
            }
        }
        // Keeps the reads: nothing else uses what they read.
        std::hint::black_box(seen);
    }

    /// Adds a segment for `ids` ids, smaller if the byte bound requires; none if not even one
    /// block fits (the last segment then keeps filling).
    fn grow(&mut self, ids: usize) {
        let room = self.bytes_max.saturating_sub(self.bytes());
        let wanted = ids.saturating_mul(BITS_PER_ID) / 8;
        let bytes = wanted.min(room);
        let blocks = bytes / (WORDS * 8);
        if blocks > 0 {
            self.segments.push(Segment {
                blocks: vec![[0; WORDS]; blocks],
                ids: 0,
                capacity: blocks * WORDS * 64 / BITS_PER_ID,
            });
        } else if let Some(last) = self.segments.last_mut() {
            // At the bound: keep filling the last one (its false-positive rate rises).
            last.capacity = usize::MAX;
        }
    }
}

/// The ids the log may hold: the base read from the index at open (by a thread of its own),
/// then every id written since. Answers "certainly absent" only once the base is in.
#[derive(Debug)]
pub struct KnownIds {
    filter: IdFilter,
    complete: bool,
    base: Option<Receiver<Result<IdFilter>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KnownIds {
    /// No filter: every lookup goes to the index.
    pub fn off() -> KnownIds {
        KnownIds {
            filter: IdFilter::new(0),
            complete: false,
            base: None,
            stop: Arc::default(),
            thread: None,
        }
    }

    /// Starts reading the index's ids into a filter of at most `bytes_max` bytes (0: off).
    pub fn load(index: Arc<Index>, bytes_max: usize) -> KnownIds {
        let mut known = KnownIds::off();
        if bytes_max == 0 {
            return known;
        }
        known.filter = IdFilter::new(bytes_max);
        let (tx, rx) = channel();
        let stop = known.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-ids".into())
            .spawn(move || {
                let mut base = IdFilter::new(bytes_max);
                let read = index.for_each_id(|id| {
                    base.insert(id);
                    !stop.load(Ordering::Relaxed)
                });
                let _ = tx.send(read.map(|()| base));
            });
        match spawned {
            Ok(thread) => {
                known.base = Some(rx);
                known.thread = Some(thread);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start reading the event ids; every id is looked up in the index")
            }
        }
        known
    }

    /// Takes the base in if it has been read (the writer calls this before deciding).
    pub fn poll(&mut self) {
        let Some(rx) = &self.base else { return };
        match rx.try_recv() {
            Err(TryRecvError::Empty) => return,
            Ok(Ok(base)) => self.take_base(base),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the event ids failed; every id is looked up in the index");
            }
            Err(TryRecvError::Disconnected) => {}
        }
        self.base = None;
    }

    /// Puts the base read from the index before the live segments. Its empty segments are
    /// dropped (a fresh log's base is one empty 2 MiB segment: every lookup would read a cache
    /// line of it for nothing).
    fn take_base(&mut self, mut base: IdFilter) {
        base.segments.retain(|s| s.ids > 0);
        base.segments.append(&mut self.filter.segments);
        self.filter.segments = base.segments;
        self.complete = true;
    }

    /// Notes `id` as (possibly) in the log.
    pub fn insert(&mut self, id: Uuid) {
        if self.filter.is_on() {
            self.filter.insert(id);
        }
    }

    /// [`IdFilter::warm`], once the base is in (lookups go to the index before).
    pub fn warm(&self, ids: impl Iterator<Item = Uuid>) {
        if self.complete {
            self.filter.warm(ids);
        }
    }

    /// True only when `id` is certainly not in the log (nor in flight).
    pub fn certainly_absent(&self, id: Uuid) -> bool {
        self.complete && !self.filter.may_contain(id)
    }

    /// Bytes of the filter once the base is in; 0 before (or when off).
    pub fn bytes(&self) -> usize {
        if self.complete {
            self.filter.bytes()
        } else {
            0
        }
    }
}

impl Drop for KnownIds {
    fn drop(&mut self) {
        // The thread holds the index (RocksDB's lock): a reopen in this process needs it gone.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Segment {
    fn bytes(&self) -> usize {
        self.blocks.len() * WORDS * 8
    }

    fn block(&self, h1: u64) -> usize {
        ((h1 as u128 * self.blocks.len() as u128) >> 64) as usize
    }

    fn insert(&mut self, (h1, h2): (u64, u64)) {
        let b = self.block(h1);
        if let Some(block) = self.blocks.get_mut(b) {
            for (i, word) in block.iter_mut().enumerate() {
                *word |= 1 << ((h2 >> (6 * i)) & 63);
            }
            self.ids += 1;
        }
    }

    fn may_contain(&self, (h1, h2): (u64, u64)) -> bool {
        self.blocks.get(self.block(h1)).is_some_and(|block| {
            block
                .iter()
                .enumerate()
                .all(|(i, word)| word & (1 << ((h2 >> (6 * i)) & 63)) != 0)
        })
    }
}

/// Two independent-looking 64-bit hashes of an id. Ids may be UUIDv7 (a time prefix) or
/// chosen by clients: both halves are mixed into both hashes. A client that crafts colliding
/// ids only makes its own lookups fall back to the index.
fn hash(id: Uuid) -> (u64, u64) {
    let (hi, lo) = id.as_u64_pair();
    let h1 = mix(hi ^ mix(lo));
    let h2 = mix(h1 ^ lo.rotate_left(32));
    (h1, h2)
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n.wrapping_mul(0x2545_F491_4F6C_DD1D_9E37_79B9_7F4A_7C15))
    }

    #[test]
    fn warming_changes_no_answer() {
        let mut f = IdFilter::new(1 << 22);
        for n in 0..1000 {
            f.insert(id(n));
        }
        let before: Vec<bool> = (0..4000).map(|n| f.may_contain(id(n))).collect();
        f.warm((0..4000).map(id));
        let after: Vec<bool> = (0..4000).map(|n| f.may_contain(id(n))).collect();
        assert_eq!(before, after);
        assert!(after[..1000].iter().all(|&m| m), "inserted ids are found");
        IdFilter::new(0).warm((0..10).map(id)); // off: nothing to read
    }

    #[test]
    fn an_inserted_id_is_always_found() {
        let mut f = IdFilter::new(64 << 20);
        for n in 0..300_000 {
            f.insert(id(n));
        }
        assert!((0..300_000).all(|n| f.may_contain(id(n))));
    }

    #[test]
    fn most_new_ids_are_answered_absent_at_capacity() {
        let mut f = IdFilter::new(64 << 20);
        for n in 0..FIRST_SEGMENT_IDS as u128 {
            f.insert(id(n));
        }
        assert_eq!(f.segments.len(), 1, "the first segment holds its capacity");
        let probes = 200_000u128;
        let maybe = (0..probes)
            .filter(|n| f.may_contain(id(1 << 40 | n)))
            .count();
        // ~0.1–0.2 % expected at 16 bits per id; 1 % would mean a broken hash or layout.
        assert!(maybe < probes as usize / 100, "{maybe} false positives");
        // Sequential ids (v7-like: a shared prefix, a counter) spread as well.
        let mut seq = IdFilter::new(64 << 20);
        for n in 0..100_000u128 {
            seq.insert(Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0000 | n,
            ));
        }
        let maybe = (100_000..300_000u128)
            .filter(|n| {
                seq.may_contain(Uuid::from_u128(
                    0x0190_0000_0000_7000_8000_0000_0000_0000 | n,
                ))
            })
            .count();
        assert!(maybe < 2_000, "{maybe} false positives on sequential ids");
    }

    #[test]
    fn a_full_segment_is_followed_by_a_larger_one_within_the_bound() {
        let bound = 10 << 20;
        let mut f = IdFilter::new(bound);
        for n in 0..(FIRST_SEGMENT_IDS as u128 * 3) {
            f.insert(id(n));
        }
        assert_eq!(f.segments.len(), 2);
        assert!(f.bytes() <= bound, "{} bytes over the bound", f.bytes());
        // The second segment was cut to the 8 MiB left; when it fills, none follows.
        for n in 0..(FIRST_SEGMENT_IDS as u128 * 4) {
            f.insert(id(1 << 50 | n));
        }
        assert_eq!(f.segments.len(), 2);
        assert!(f.bytes() <= bound);
        assert!((0..FIRST_SEGMENT_IDS as u128 * 3).all(|n| f.may_contain(id(n))));
    }

    #[test]
    fn an_empty_base_adds_no_segment_and_a_filled_one_goes_first() {
        let bound = 64 << 20;
        let mut known = KnownIds::off();
        known.filter = IdFilter::new(bound);
        known.insert(id(1));
        known.take_base(IdFilter::new(bound));
        assert_eq!(known.filter.segments.len(), 1, "the empty base was kept");
        assert!(known.certainly_absent(id(2)) && !known.certainly_absent(id(1)));

        let mut known = KnownIds::off();
        known.filter = IdFilter::new(bound);
        known.insert(id(1));
        let mut base = IdFilter::new(bound);
        base.insert(id(7));
        known.take_base(base);
        assert_eq!(known.filter.segments.len(), 2);
        assert_eq!(known.filter.segments[0].ids, 1);
        assert!(!known.certainly_absent(id(7)) && !known.certainly_absent(id(1)));
        // New ids go into the live segment, the last one.
        known.insert(id(9));
        assert_eq!(known.filter.segments[1].ids, 2);
    }

    #[test]
    fn a_filter_of_no_bytes_is_off_and_answers_maybe() {
        let mut f = IdFilter::new(0);
        f.insert(id(1));
        assert!(!f.is_on());
        assert!(f.may_contain(id(2)));
        assert_eq!(f.bytes(), 0);
    }
}
