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
//!   would.

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
