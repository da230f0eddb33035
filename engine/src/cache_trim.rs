//! How much of a file the OS page cache keeps once it is on the device.
//!
//! A file written through the page cache takes a fresh page of memory for every 4 KiB. On a
//! virtual machine whose host takes back the guest's free memory (virtio-balloon's free page
//! reporting, as on the machines this was measured on), touching such a page the first time
//! faults on the host: writing through the cache ran at ~420–550 MiB/s of one core's time
//! where the same writes into pages the cache had just given back ran at ~1.9 GiB/s
//! (`python3` writing 3 GiB in 1 MiB writes with an fdatasync per 16 MiB, 2026-12-06). The
//! log's writer paid it in every run: 17 % of a node's samples (two cores) in the kernel's
//! page-cache copy when pipelined appends wrote 200 MiB/s.
//!
//! So a written file keeps only its newest [`CACHE_KEEP_BYTES_DEFAULT`] bytes cached once they
//! are on the device: after each sync (or writeback) that moves the synced end
//! [`TRIM_STEP_BYTES`] past the last trim, the pages more than the keep window behind it are
//! dropped (`posix_fadvise(DONTNEED)`; they are clean, so nothing is written), and the next
//! writes reuse them. Tailing readers stay in the window; older reads go to the device (and
//! its readahead). Dropping pages changes no byte of any file: it is a hint, and its failure
//! is ignored.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a file's newest synced data the page cache keeps (64 MiB: a quarter of a log
/// segment; the newest events, which tailing subscribers and followers read, stay cached).
pub const CACHE_KEEP_BYTES_DEFAULT: u64 = 64 << 20;
/// Bytes the synced end moves before the next trim (one `posix_fadvise` per 16 MiB).
pub const TRIM_STEP_BYTES: u64 = 16 << 20;

/// One file's trimming state.
#[derive(Debug)]
pub(crate) struct CacheTrim {
    /// The end of the bytes written so far.
    written_end: AtomicU64,
    /// Everything before this offset has been dropped (or was never there).
    trimmed_to: AtomicU64,
    keep: u64,
}

impl CacheTrim {
    pub(crate) fn new(keep: u64) -> CacheTrim {
        CacheTrim {
            written_end: AtomicU64::new(0),
            trimmed_to: AtomicU64::new(0),
            keep,
        }
    }

    /// Notes a write of `[offset, end)`.
    pub(crate) fn wrote(&self, end: u64) {
        self.written_end.fetch_max(end, Ordering::AcqRel);
    }

    /// Notes a truncation to `len`: the range past it may be written again.
    pub(crate) fn truncated(&self, len: u64) {
        self.written_end.fetch_min(len, Ordering::AcqRel);
        self.trimmed_to.fetch_min(len, Ordering::AcqRel);
    }

    /// The end a sync starting now covers (read before the sync).
    pub(crate) fn sync_covers(&self) -> u64 {
        self.written_end.load(Ordering::Acquire)
    }

    /// The range to drop once everything before `synced_end` is on the device, if it is due
    /// (a step past the window; `u64::MAX`: a file written for good, all of it at once);
    /// claims it, so concurrent syncs do not drop it twice.
    pub(crate) fn due(&self, synced_end: u64) -> Option<(u64, u64)> {
        if self.keep == 0 {
            return None;
        }
        let everything = synced_end == u64::MAX;
        let upto = if everything {
            // A file written for good: to the end of what was written, however little.
            self.written_end.load(Ordering::Acquire)
        } else {
            synced_end.checked_sub(self.keep)?
        };
        let from = self.trimmed_to.load(Ordering::Acquire);
        let step = if everything { 1 } else { TRIM_STEP_BYTES };
        if upto < from.saturating_add(step) {
            return None;
        }
        self.trimmed_to
            .compare_exchange(from, upto, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| (from, upto - from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_range_is_due_once_the_synced_end_is_a_step_past_the_window() {
        let t = CacheTrim::new(256 * MIB);
        t.wrote(200 * MIB);
        assert_eq!(t.due(t.sync_covers()), None, "within the window");
        t.wrote(256 * MIB + 15 * MIB);
        assert_eq!(t.due(t.sync_covers()), None, "less than a step past it");
        t.wrote(256 * MIB + 20 * MIB);
        assert_eq!(t.due(t.sync_covers()), Some((0, 20 * MIB)));
        assert_eq!(t.due(t.sync_covers()), None, "claimed once");
        t.wrote(256 * MIB + 40 * MIB);
        assert_eq!(t.due(t.sync_covers()), Some((20 * MIB, 20 * MIB)));
    }

    #[test]
    fn a_truncation_lets_the_range_be_dropped_again_and_zero_keeps_everything() {
        let t = CacheTrim::new(16 * MIB);
        t.wrote(64 * MIB);
        assert_eq!(t.due(64 * MIB), Some((0, 48 * MIB)));
        t.truncated(20 * MIB);
        assert_eq!(t.sync_covers(), 20 * MIB);
        t.wrote(60 * MIB);
        assert_eq!(t.due(60 * MIB), Some((20 * MIB, 24 * MIB)));
        // A file written for good drops all of it, less than a step too.
        t.wrote(65 * MIB);
        assert_eq!(t.due(u64::MAX), Some((44 * MIB, 21 * MIB)));
        assert_eq!(t.due(u64::MAX), None, "nothing left");
        let off = CacheTrim::new(0);
        off.wrote(1 << 40);
        assert_eq!(off.due(1 << 40), None);
    }
}
