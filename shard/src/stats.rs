//! The node's live counters: what `/metrics` reports, kept by the service and the retention
//! loop. A module of their own so the service, retention and metrics each import them without
//! importing each other.

use std::sync::atomic::AtomicU64;

use strata_engine::stats::LatencyHistogram;

/// Upper bounds of the append latency histogram, in microseconds (last is +Inf).
pub const APPEND_BUCKETS_US: [u64; 12] = [
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
    250_000,
    u64::MAX,
];

/// Live counters the metrics endpoint reports.
#[derive(Debug)]
pub struct ServiceStats {
    /// Open subscriptions.
    pub subscriptions: AtomicU64,
    /// Appends in flight on `AppendStream` calls now (every call).
    pub append_stream_in_flight: AtomicU64,
    /// The most appends one `AppendStream` call has had in flight (bounded by its window).
    pub append_stream_call_peak: AtomicU64,
    /// `AppendStream` calls opened (forwarded ones too).
    pub append_stream_calls: AtomicU64,
    /// Requests served, for request ids.
    pub requests: AtomicU64,
    /// Calls and `AppendStream` parts passed on to another node leading their shard.
    pub forwarded: AtomicU64,
    /// Leaderships this node's leader balancer handed over.
    pub handovers: AtomicU64,
    /// Replica moves this node's replica balancer finished.
    pub replica_moves: AtomicU64,
    /// Append latency, request to durable answer.
    pub append_latency: LatencyHistogram,
    /// What retention did.
    pub retention: RetentionStats,
}

impl Default for ServiceStats {
    fn default() -> Self {
        ServiceStats {
            subscriptions: AtomicU64::new(0),
            append_stream_in_flight: AtomicU64::new(0),
            append_stream_call_peak: AtomicU64::new(0),
            append_stream_calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            handovers: AtomicU64::new(0),
            replica_moves: AtomicU64::new(0),
            append_latency: LatencyHistogram::new(&APPEND_BUCKETS_US),
            retention: RetentionStats::default(),
        }
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Segments rewritten with holes.
    pub segments_rewritten: AtomicU64,
    /// Segments dropped whole.
    pub segments_dropped: AtomicU64,
    /// Record bytes reclaimed.
    pub bytes_reclaimed: AtomicU64,
    /// The as-of horizon, µs since the epoch (0: nothing reclaimed yet).
    pub horizon_us: AtomicU64,
}
