//! Engine benchmarks (criterion): durable appends of 1 KiB events at several concurrencies,
//! reading the last 100 events of one stream among 100,000, reading the whole log, and
//! reading a long stream whose index entries span records beside one whose entries do not.
//! Run: `cargo bench -p strata-benches --bench engine`. Besides criterion's report, each bench
//! prints a summary line with events/s, MiB/s and latency percentiles; compare appends with
//! the disk's own limits measured on the same directory (`../shared/bench/disk-limits.sh`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_benches::{bench_dir, events, one_each, Latencies};
use strata_engine::rng::SplitMix64;
use strata_engine::{AppendRequest, Direction, Engine, EngineConfig, ExpectedVersion};

const EVENT_BYTES: usize = 1024;

fn durable_appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    let mut summaries = Vec::new();
    for (clients, per_append) in [(1usize, 1usize), (16, 1), (64, 1), (16, 100)] {
        let dir = bench_dir();
        let engine =
            Arc::new(Engine::open_dir(dir.path(), EngineConfig::default()).expect("open engine"));
        let ids = Arc::new(AtomicU64::new(1));
        let latencies = Arc::new(Latencies::default());
        group.throughput(Throughput::Elements(per_append as u64));
        let id = BenchmarkId::new(
            format!("events_per_append_{per_append}"),
            format!("{clients}_appenders"),
        );
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let per_client = iters.div_ceil(clients as u64);
                let start = Instant::now();
                let threads: Vec<_> = (0..clients)
                    .map(|client| {
                        let engine = engine.clone();
                        let ids = ids.clone();
                        std::thread::spawn(move || {
                            let stream = format!("client-{client}");
                            let mut lat = Vec::with_capacity(per_client as usize);
                            for _ in 0..per_client {
                                let base =
                                    ids.fetch_add(per_append as u64, Ordering::Relaxed) as u128;
                                let request = AppendRequest::single(
                                    &stream,
                                    ExpectedVersion::Any,
                                    events(base << 20, per_append, EVENT_BYTES),
                                    base as u64,
                                );
                                let t = Instant::now();
                                engine.append_blocking(request).expect("durable append");
                                lat.push(t.elapsed());
                            }
                            lat
                        })
                    })
                    .collect();
                let lat: Vec<Duration> = threads
                    .into_iter()
                    .flat_map(|t| t.join().expect("appender thread"))
                    .collect();
                let elapsed = start.elapsed();
                latencies.record(lat, elapsed);
                // Criterion divides by iters; scale for the rounding up per client.
                elapsed.mul_f64(iters as f64 / (per_client * clients as u64) as f64)
            })
        });
        summaries.push(latencies.summary(
            &format!("append {clients} appenders x {per_append} events"),
            per_append,
            EVENT_BYTES,
        ));
    }
    group.finish();
    for s in summaries {
        println!("SUMMARY {s}");
    }
}

/// Reads a stream's last 100 events (it has at least that many).
fn read_last_100(engine: &Engine, stream: &str) {
    let got = engine
        .reader()
        .read_stream(stream, None, Direction::Backwards, 100)
        .expect("read stream");
    assert_eq!(got.len(), 100);
}

/// Runs `op` `iters` times, each one timed into `latencies`; the whole run's time.
fn timed(iters: u64, latencies: &Latencies, mut op: impl FnMut()) -> Duration {
    let mut lat = Vec::with_capacity(iters as usize);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        op();
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    latencies.record(lat, elapsed);
    elapsed
}

fn reads(c: &mut Criterion) {
    let dir = bench_dir();
    let engine = Engine::open_dir(dir.path(), EngineConfig::default()).expect("open engine");
    // 100,000 streams: 100 hot ones get an event in each of 100 rounds (so their events are
    // spread over 100 records), 99,900 cold ones get one event each.
    let hot: Vec<String> = (0..100).map(|i| format!("hot-{i}")).collect();
    let mut id = 1u128;
    for round in 0..100 {
        engine
            .append_blocking(one_each(&hot, id << 40, EVENT_BYTES))
            .expect("append hot");
        id += 1;
        for chunk in 0..10 {
            let cold: Vec<String> = (0..100)
                .map(|i| format!("cold-{}", (round * 10 + chunk) * 100 + i))
                .collect();
            if !cold.is_empty() {
                engine
                    .append_blocking(one_each(&cold, id << 40, EVENT_BYTES))
                    .expect("append cold");
            }
            id += 1;
        }
    }
    let log_bytes = engine.reader().end();
    let mut group = c.benchmark_group("read");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let latencies = Latencies::default();
    let mut rng = SplitMix64::new(7);
    group.throughput(Throughput::Elements(100));
    group.bench_function("last_100_events_of_1_in_100k_streams", |b| {
        b.iter_custom(|iters| {
            timed(iters, &latencies, || {
                read_last_100(&engine, &hot[rng.below(hot.len() as u64) as usize])
            })
        })
    });
    let all = Latencies::default();
    group.throughput(Throughput::Bytes(log_bytes));
    group.bench_function("read_all_from_page_cache", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let t = Instant::now();
                let mut from = 0;
                let mut records = 0;
                loop {
                    let batch = engine.reader().read_all(from, 4096).expect("read all");
                    if batch.records.is_empty() {
                        break;
                    }
                    records += batch.records.len();
                    from = batch.next;
                }
                assert_eq!(records, 1100);
                all.record(vec![t.elapsed()], t.elapsed());
            }
            start.elapsed()
        })
    });
    group.finish();
    println!(
        "SUMMARY {}",
        latencies.summary("read last 100 of 1 stream among 100,000", 100, EVENT_BYTES)
    );
    let per_scan = all.summary("read all", 1, 1);
    println!(
        "SUMMARY {per_scan} (one op = a scan of {:.1} MiB)",
        log_bytes as f64 / (1 << 20) as f64
    );
}

/// Versions of each stream `spanning_entries` reads.
const LONG_STREAM_EVENTS: u64 = 10_240;

/// Reads of a stream whose index entries span records (one-event appends from 64 threads at
/// once: a write group merges each stream's consecutive runs, up to 256 versions per entry)
/// beside one whose entries are one record each (the same appends from one thread): the last
/// 100 events, and one event at a random version (the lookup decodes its whole entry).
fn spanning_entries(c: &mut Criterion) {
    let dir = bench_dir();
    let engine = Arc::new(Engine::open_dir(dir.path(), EngineConfig::default()).expect("open"));
    let ids = Arc::new(AtomicU64::new(1));
    let append = |engine: &Engine, ids: &AtomicU64, stream: &str| {
        let base = ids.fetch_add(1, Ordering::Relaxed) as u128;
        let request = AppendRequest::single(
            stream,
            ExpectedVersion::Any,
            events(base << 20, 1, EVENT_BYTES),
            0,
        );
        engine.append_blocking(request).expect("append");
    };
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (engine, ids) = (engine.clone(), ids.clone());
            std::thread::spawn(move || {
                for _ in 0..LONG_STREAM_EVENTS / 64 {
                    append(&engine, &ids, "spanning");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender thread");
    }
    for _ in 0..LONG_STREAM_EVENTS {
        append(&engine, &ids, "separate");
    }
    let mut group = c.benchmark_group("read_long_stream");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let mut summaries = Vec::new();
    for stream in ["spanning", "separate"] {
        let last = Latencies::default();
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("last_100_events_{stream}"), |b| {
            b.iter_custom(|iters| timed(iters, &last, || read_last_100(&engine, stream)))
        });
        let one = Latencies::default();
        let mut rng = SplitMix64::new(11);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("one_event_at_a_random_version_{stream}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &one, || {
                    let version = rng.below(LONG_STREAM_EVENTS);
                    let got = engine
                        .reader()
                        .read_stream(stream, Some(version), Direction::Forwards, 1)
                        .expect("read");
                    assert_eq!(got.first().map(|e| e.version), Some(version));
                })
            })
        });
        summaries.push(last.summary(&format!("read last 100 of `{stream}`"), 100, EVENT_BYTES));
        summaries.push(one.summary(
            &format!("read 1 at a random version of `{stream}`"),
            1,
            EVENT_BYTES,
        ));
    }
    group.finish();
    for s in summaries {
        println!("SUMMARY {s}");
    }
}

criterion_group!(benches, durable_appends, reads, spanning_entries);
criterion_main!(benches);
