//! Counters the writer updates and a metrics exporter reads. Relaxed atomics: each counter is
//! exact, but a reader may see one counter a group ahead of another.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the fsync latency histogram in microseconds (the last is +Inf).
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

/// A fixed-bucket latency histogram in microseconds, updated without locks.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds_us: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these bucket upper bounds (ascending; make the last `u64::MAX`).
    pub fn new(bounds_us: &'static [u64]) -> LatencyHistogram {
        LatencyHistogram {
            bounds_us,
            buckets: bounds_us.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe_us(&self, us: u64) {
        let i = self
            .bounds_us
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(self.bounds_us.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds `other`'s observations (same bounds) to this one.
    pub fn add(&self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `(upper bound, count in that bucket)` for every bucket, and the sum of observations.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64) {
        let buckets = self
            .bounds_us
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        (buckets, self.sum_us.load(Ordering::Relaxed))
    }
}

/// Engine counters.
#[derive(Debug)]
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
    /// Time to sync each group (see [`FSYNC_BUCKETS_US`]).
    pub sync: LatencyHistogram,
    /// Requests waiting in the group-commit queue.
    pub queue_depth: AtomicU64,
    /// Appends that found the pipeline idle and were written, synced and indexed on their
    /// caller's thread (see [`crate::Engine::submit`]).
    pub appends_alone: AtomicU64,
    /// Event ids looked up in the index (the id filter could not rule them out, or is still
    /// being read at open).
    pub id_index_lookups: AtomicU64,
    /// Bytes of the event-id filter; 0 while it is read at open, or when it is off.
    pub id_filter_bytes: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            appends: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            events: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            sync: LatencyHistogram::new(&FSYNC_BUCKETS_US),
            queue_depth: AtomicU64::new(0),
            appends_alone: AtomicU64::new(0),
            id_index_lookups: AtomicU64::new(0),
            id_filter_bytes: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// The counters of several stores added up (a node's shards), as of now.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Stats>) -> Stats {
        let total = Stats::default();
        for s in all {
            // Every field named: a new counter must be added up here too.
            let Stats {
                appends,
                deduplicated,
                rejected,
                events,
                bytes_written,
                groups,
                sync,
                queue_depth,
                appends_alone,
                id_index_lookups,
                id_filter_bytes,
            } = s;
            for (t, v) in [
                (&total.appends, appends),
                (&total.deduplicated, deduplicated),
                (&total.rejected, rejected),
                (&total.events, events),
                (&total.bytes_written, bytes_written),
                (&total.groups, groups),
                (&total.queue_depth, queue_depth),
                (&total.appends_alone, appends_alone),
                (&total.id_index_lookups, id_index_lookups),
                (&total.id_filter_bytes, id_filter_bytes),
            ] {
                t.fetch_add(v.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            total.sync.add(sync);
        }
        total
    }

    pub(crate) fn record_sync(&self, ns: u64) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.sync.observe_us(ns / 1000);
    }
}
