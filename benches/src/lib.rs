//! Helpers for Strata's benchmarks: workload builders and latency summaries. The benches
//! themselves are in `benches/`.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use strata_engine::{AppendRequest, ExpectedVersion, NewEvent, StreamAppend};
use uuid::Uuid;

/// Where benchmark data goes: `$STRATA_BENCH_DIR`, or the system temp directory. Measure the
/// disk's limits on the same directory (`../shared/bench/disk-limits.sh DIR`).
pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("STRATA_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("STRATA_BENCH_DIR is writable"),
        None => tempfile::tempdir().expect("the temp directory is writable"),
    }
}

/// `count` events of `bytes` bytes each, with ids made from `id_base`.
pub fn events(id_base: u128, count: usize, bytes: usize) -> Vec<NewEvent> {
    let data = Bytes::from(vec![0x5a; bytes]);
    (0..count as u128)
        .map(|i| NewEvent {
            id: Uuid::from_u128(id_base + i + 1),
            event_type: "BenchEvent".into(),
            data: data.clone(),
            metadata: Bytes::new(),
        })
        .collect()
}

/// An append of one event to each of `streams`.
pub fn one_each(streams: &[String], id_base: u128, bytes: usize) -> AppendRequest {
    let parts = streams
        .iter()
        .enumerate()
        .map(|(i, s)| StreamAppend {
            stream: s.clone(),
            expected: ExpectedVersion::Any,
            events: events(id_base + (i as u128) * 1_000_000, 1, bytes),
        })
        .collect();
    AppendRequest {
        copy: false,
        streams: parts,
        conditions: Vec::new(),
        timestamp_us: 0,
    }
}

/// Latencies gathered across a benchmark's samples.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Mutex<Vec<Duration>>,
    elapsed: Mutex<Duration>,
}

impl Latencies {
    /// Records operation latencies and the wall time they took together.
    pub fn record(&self, latencies: Vec<Duration>, elapsed: Duration) {
        strata_engine::sync::lock(&self.samples).extend(latencies);
        *strata_engine::sync::lock(&self.elapsed) += elapsed;
    }

    /// One line: operations, events/s, MiB/s, p50, p99, p99.9.
    pub fn summary(&self, name: &str, events_per_op: usize, bytes_per_event: usize) -> String {
        let mut samples = strata_engine::sync::lock(&self.samples).clone();
        let elapsed = *strata_engine::sync::lock(&self.elapsed);
        samples.sort();
        if samples.is_empty() || elapsed.is_zero() {
            return format!("{name}: no samples");
        }
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        let events = (samples.len() * events_per_op) as f64;
        let secs = elapsed.as_secs_f64();
        format!(
            "{name}: ops={} events/s={:.0} MiB/s={:.1} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms",
            samples.len(),
            events / secs,
            events * bytes_per_event as f64 / secs / (1 << 20) as f64,
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            pct(0.999).as_secs_f64() * 1e3,
        )
    }
}
