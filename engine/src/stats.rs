//! Counters the writer updates and a metrics exporter reads. Relaxed atomics: each counter is
//! exact, but a reader may see one counter a group ahead of another.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the fsync latency histogram: upper bounds in microseconds (last is +inf).
pub const FSYNC_BUCKETS_US: [u64; 12] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    u64::MAX,
];

/// Engine counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Append requests that wrote a record.
    pub appends: AtomicU64,
    /// Append requests answered from the idempotency index without writing.
    pub deduplicated: AtomicU64,
    /// Append requests rejected (bad input, wrong version, conflicts, failures).
    pub rejected: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
    /// Record bytes written.
    pub bytes_written: AtomicU64,
    /// Group commits (each one write and one fdatasync).
    pub groups: AtomicU64,
    /// Total time spent writing and syncing groups.
    pub sync_ns_total: AtomicU64,
    /// Group commits per latency bucket (see [`FSYNC_BUCKETS_US`]).
    pub sync_buckets: [AtomicU64; 12],
    /// Requests waiting in the group-commit queue.
    pub queue_depth: AtomicU64,
}

impl Stats {
    pub(crate) fn record_sync(&self, ns: u64) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.sync_ns_total.fetch_add(ns, Ordering::Relaxed);
        let us = ns / 1000;
        let bucket = FSYNC_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(FSYNC_BUCKETS_US.len() - 1);
        self.sync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}
