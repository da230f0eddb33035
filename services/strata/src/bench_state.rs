//! `strata bench state`: one aggregate of `--events` events with a snapshot every
//! `--snapshot-every` events, then `ReadState` as of random past times, timed one at a time.
//! Beside it, the same number of plain `Read`s of `--snapshot-every` events from random
//! versions: what rebuilding a state between two snapshots costs without the snapshot lookup.
//! Prints p50/p99/p99.9 of both and their ratio. Timing starts after a settle pause and an
//! untimed warm-up.

use std::time::{Duration, Instant};

use strata_client::{pb, Client};

use crate::client::ServerArg;
use crate::{output, Failure};

/// Events per append while loading.
const LOAD_BATCH: usize = 500;

/// `strata bench state`.
#[derive(Debug, clap::Args)]
pub struct BenchStateArgs {
    /// Events in the aggregate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// A snapshot after every this many events.
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
    /// Bytes of data per event (JSON).
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// ReadState calls to time.
    #[arg(long, default_value_t = 5000)]
    reads: usize,
    /// Seed of the random points (same seed, same points).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds to wait after loading before timing (the index's background compactions of
    /// the load share the machine's cores with the reads otherwise).
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    #[command(flatten)]
    server: ServerArg,
}

fn failed(what: &str) -> impl Fn(strata_client::Error) -> Failure + '_ {
    move |e| Failure::new(format!("{what}: {e}"))
}

/// A small deterministic generator (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn percentiles(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(0.999))
}

async fn load(client: &Client, stream: &str, args: &BenchStateArgs) -> Result<(u64, u64), Failure> {
    let filler = "x".repeat(args.event_bytes.saturating_sub(24));
    let mut written = 0u64;
    let started = Instant::now();
    let mut last_report = Instant::now();
    while written < args.events {
        let n = (LOAD_BATCH as u64)
            .min(args.events - written)
            .min(args.snapshot_every - written % args.snapshot_every);
        let events = (0..n)
            .map(|i| pb::NewEvent {
                id: String::new(),
                r#type: "Deposited".into(),
                data: format!("{{\"n\":{},\"f\":\"{filler}\"}}", written + i)
                    .into_bytes()
                    .into(),
                metadata: Default::default(),
            })
            .collect();
        client
            .append_request(pb::AppendRequest {
                stream: stream.into(),
                expected: None,
                events,
            })
            .await
            .map_err(failed("loading"))?;
        written += n;
        if written % args.snapshot_every == 0 {
            client
                .save_snapshot(pb::SaveSnapshotRequest {
                    stream: stream.into(),
                    version: written - 1,
                    schema_version: 1,
                    data: format!("{{\"n\":{}}}", written - 1).into_bytes().into(),
                })
                .await
                .map_err(failed("saving a snapshot"))?;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "loading: {written}/{} events ({:.0} events/s)",
                args.events,
                written as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let ts = |version: u64| {
        let client = client.clone();
        let stream = stream.to_string();
        async move {
            client
                .read(pb::ReadRequest {
                    stream,
                    from_version: Some(version),
                    direction: pb::Direction::Forwards as i32,
                    limit: 1,
                    consistency: pb::Consistency::Linearizable as i32,
                    as_of: None,
                })
                .await
                .map_err(failed("reading a timestamp"))
                .map(|r| r.events.first().map_or(0, |e| e.timestamp_us))
        }
    };
    Ok((ts(0).await?, ts(args.events - 1).await?))
}

/// Runs the benchmark.
pub async fn run(args: BenchStateArgs) -> Result<(), Failure> {
    if args.events == 0 || args.snapshot_every == 0 || args.reads == 0 {
        return Err(Failure {
            message: "--events, --snapshot-every and --reads must be at least 1".into(),
            exit_code: 2,
        });
    }
    let client = args.server.client()?;
    let stream = format!("bench-agg-{:x}", uuid::Uuid::new_v4().as_u128() as u32);
    let load_started = Instant::now();
    let (first_ts, last_ts) = load(&client, &stream, &args).await?;
    let load_secs = load_started.elapsed().as_secs_f64();
    eprintln!(
        "loaded in {load_secs:.1} s; settling for {} s",
        args.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let mut rng = Rng(args.seed.max(1));
    // ReadState as of a random time between the first and the last event.
    let mut state_at_random_time = |client: &Client| {
        let t = first_ts + rng.below(last_ts - first_ts + 1);
        let request = pb::ReadStateRequest {
            stream: stream.clone(),
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::TimestampUs(t)),
            }),
            limit: 4096,
            consistency: pb::Consistency::Linearizable as i32,
        };
        let client = client.clone();
        async move {
            let r = client
                .read_state(request)
                .await
                .map_err(failed("ReadState"));
            r.map(|r| (t, r))
        }
    };
    // Warm-up: a tenth as many reads, untimed (page cache, connection, allocator).
    for _ in 0..args.reads / 10 {
        state_at_random_time(&client).await?;
    }
    let mut state_latencies = Vec::with_capacity(args.reads);
    let mut events_returned = 0u64;
    for _ in 0..args.reads {
        let started = Instant::now();
        let (t, r) = state_at_random_time(&client).await?;
        state_latencies.push(started.elapsed());
        if !r.complete {
            return Err(Failure::new(format!(
                "ReadState as of {t} was cut short at {} events",
                r.events.len()
            )));
        }
        events_returned += r.events.len() as u64;
    }
    let mut read_latencies = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let from = rng.below(args.events.saturating_sub(args.snapshot_every).max(1));
        let started = Instant::now();
        client
            .read(pb::ReadRequest {
                stream: stream.clone(),
                from_version: Some(from),
                direction: pb::Direction::Forwards as i32,
                limit: (args.snapshot_every as u32).min(4096),
                consistency: pb::Consistency::Linearizable as i32,
                as_of: None,
            })
            .await
            .map_err(failed("Read"))?;
        read_latencies.push(started.elapsed());
    }
    let (s50, s99, s999) = percentiles(state_latencies);
    let (r50, r99, r999) = percentiles(read_latencies);
    eprintln!(
        "strata    ReadState of a {}-event aggregate (snapshot every {}): p50={s50:.2}ms p99={s99:.2}ms p99.9={s999:.2}ms, {:.0} events per answer; plain Read of {} events: p50={r50:.2}ms p99={r99:.2}ms; ReadState p99 / Read p99 = {:.2}",
        args.events,
        args.snapshot_every,
        events_returned as f64 / args.reads as f64,
        args.snapshot_every,
        s99 / r99
    );
    output::line(&serde_json::json!({
        "events": args.events,
        "snapshot_every": args.snapshot_every,
        "event_bytes": args.event_bytes,
        "load_seconds": load_secs,
        "reads": args.reads,
        "events_per_answer": events_returned as f64 / args.reads as f64,
        "read_state_p50_ms": s50,
        "read_state_p99_ms": s99,
        "read_state_p999_ms": s999,
        "plain_read_p50_ms": r50,
        "plain_read_p99_ms": r99,
        "plain_read_p999_ms": r999,
        "read_state_p99_over_plain_read_p99": s99 / r99,
        "target_p99_ms": 2.0,
    }));
    Ok(())
}
