//! The node's source of event timestamps: wall-clock microseconds, never going backwards on
//! this node (a clock step back repeats the last value plus one). Behind a trait so tests and
//! the simulator can drive time. (A hybrid logical clock replaces this with replication.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Timestamps for appends.
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch, strictly increasing across calls.
    fn now_us(&self) -> u64;
}

/// The system clock, made monotonic.
#[derive(Debug, Default)]
pub struct SystemWallClock {
    last_us: AtomicU64,
}

impl WallClock for SystemWallClock {
    fn now_us(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
            // A skewed clock in a test build (`strata jepsen --nemesis clock`); 0 otherwise.
            .saturating_add_signed(strata_engine::planted::clock_offset_us());
        let mut last = self.last_us.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_us.compare_exchange_weak(
                last,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}
