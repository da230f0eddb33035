//! Planted bugs and disk faults for testing the testers (`strata jepsen`). Compiled in only
//! with the `planted-bugs` feature, which only test builds turn on (the `strata` package's
//! dev-dependencies; `cargo build --release` never has it): without it, [`bug`] is always
//! `false` and [`lose_unsynced_writes`] always `false`, whatever the environment says.
//!
//! With the feature, a node reads two variables once, at its first question:
//!
//! - `STRATA_PLANTED_BUG`: one [`Bug`] by name (`ack-before-fsync`,
//!   `read-without-read-index`, `skip-expected-version`), or unset for none;
//! - `STRATA_TEST_DISK=lose-unsynced`: the node's log files keep every write in memory until
//!   it is synced ([`crate::lossy_fs::LoseUnsyncedFs`]), so a SIGKILL loses what a power cut
//!   would;
//! - `STRATA_TEST_CLOCK_FILE`: a file whose offset and drift skew the node's wall clock
//!   ([`clock_offset_us`]). A test-only offset rather than libfaketime: it moves the wall clock
//!   alone (libfaketime also fakes the monotonic clock unless told not to, and re-reading its
//!   file costs a `stat` per clock read), and it needs no package on the machine.

/// Whether this build can plant bugs at all.
pub const AVAILABLE: bool = cfg!(feature = "planted-bugs");

/// The environment variable naming the bug to plant.
pub const BUG_VAR: &str = "STRATA_PLANTED_BUG";
/// The environment variable asking for a disk that loses unsynced writes.
pub const DISK_VAR: &str = "STRATA_TEST_DISK";

/// One broken guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The log's fdatasyncs are skipped but for one every [`LATE_SYNC_MS`] ([`skip_sync`]),
    /// as a store syncing "periodically" does, yet flushes are acknowledged as done: an
    /// acknowledged append may live only in memory (the page cache) for that long.
    AckBeforeFsync,
    /// Linearizable reads skip the leader's read index (the quorum check that it still leads):
    /// a deposed leader serves what it has.
    ReadWithoutReadIndex,
    /// Appends are applied without checking their expected version.
    SkipExpectedVersion,
}

/// How late the fdatasync runs under [`Bug::AckBeforeFsync`], milliseconds.
pub const LATE_SYNC_MS: u64 = 200;

impl Bug {
    /// Every bug, by its name in [`BUG_VAR`].
    pub const ALL: [(&'static str, Bug); 3] = [
        ("ack-before-fsync", Bug::AckBeforeFsync),
        ("read-without-read-index", Bug::ReadWithoutReadIndex),
        ("skip-expected-version", Bug::SkipExpectedVersion),
    ];

    /// The bug named `name`.
    pub fn named(name: &str) -> Option<Bug> {
        Bug::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

#[cfg(feature = "planted-bugs")]
fn planted() -> Option<Bug> {
    static PLANTED: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| {
        let bug = std::env::var(BUG_VAR).ok().and_then(|n| Bug::named(&n));
        if let Some(b) = bug {
            tracing::warn!(bug = ?b, "a bug is planted in this node (test build)");
        }
        bug
    })
}

/// Whether `b` is planted in this process.
pub fn bug(b: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        planted() == Some(b)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = b;
        false
    }
}

/// Under [`Bug::AckBeforeFsync`]: whether the log's fdatasync due now is skipped — every one
/// is, except the first after [`LATE_SYNC_MS`] without one. Always `false` otherwise.
pub fn skip_sync() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        use std::time::{Duration, Instant};
        static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        if !bug(Bug::AckBeforeFsync) {
            return false;
        }
        let mut last = crate::sync::lock(&LAST);
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < Duration::from_millis(LATE_SYNC_MS) => true,
            _ => {
                *last = Some(now);
                false
            }
        }
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        false
    }
}

/// The environment variable naming a node's clock file (`strata jepsen --nemesis clock`).
pub const CLOCK_VAR: &str = "STRATA_TEST_CLOCK_FILE";
/// How often the clock file is read again, milliseconds.
pub const CLOCK_REREAD_MS: u64 = 50;

/// Microseconds to add to this node's wall clock: from the file [`CLOCK_VAR`] names, holding
/// `OFFSET_US [DRIFT_PPM]` — a step of the clock, and a drift rate (parts per million, since
/// the file was written). Read at most every [`CLOCK_REREAD_MS`]; 0 without the file, and
/// always 0 in a build without the feature. Monotonic time (Raft's timers) is not skewed: a
/// machine's clock skew moves its wall clock only.
pub fn clock_offset_us() -> i64 {
    #[cfg(feature = "planted-bugs")]
    {
        clock::offset_us()
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        0
    }
}

#[cfg(feature = "planted-bugs")]
mod clock {
    use std::time::{Duration, Instant, SystemTime};

    #[derive(Clone, Copy)]
    struct Skew {
        read_at: Instant,
        offset_us: i64,
        drift_ppm: i64,
        written: SystemTime,
    }

    pub(super) fn offset_us() -> i64 {
        static SKEW: std::sync::Mutex<Option<Skew>> = std::sync::Mutex::new(None);
        let Some(path) = std::env::var_os(super::CLOCK_VAR) else {
            return 0;
        };
        let mut skew = crate::sync::lock(&SKEW);
        let stale = skew
            .is_none_or(|s| s.read_at.elapsed() >= Duration::from_millis(super::CLOCK_REREAD_MS));
        if stale {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut words = text
                .split_whitespace()
                .map(|w| w.parse::<i64>().unwrap_or(0));
            let written = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            *skew = Some(Skew {
                read_at: Instant::now(),
                offset_us: words.next().unwrap_or(0),
                drift_ppm: words.next().unwrap_or(0),
                written,
            });
        }
        skew.map_or(0, |s| {
            let since_us = s.written.elapsed().map_or(0, |d| d.as_micros() as i64);
            s.offset_us + since_us.saturating_mul(s.drift_ppm) / 1_000_000
        })
    }
}

/// Whether this node's disk should lose unsynced writes when the process dies.
pub fn lose_unsynced_writes() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        std::env::var(DISK_VAR).is_ok_and(|v| v == "lose-unsynced")
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bugs_are_found_by_name_and_unknown_names_plant_nothing() {
        for (name, b) in Bug::ALL {
            assert_eq!(Bug::named(name), Some(b));
        }
        assert_eq!(Bug::named("ack-before-fsync "), None);
        assert_eq!(Bug::named(""), None);
    }
}
