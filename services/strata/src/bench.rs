//! `strata bench append`: a load generator over real gRPC. N clients append K events of B bytes
//! per append, as fast as acknowledgements come back, for a fixed time; prints events/s, MiB/s
//! and append latency percentiles. Bounded: it stops at the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;

use crate::client::ServerArg;
use crate::{output, Failure};

/// `strata bench append`.
#[derive(Debug, clap::Args)]
pub struct BenchAppendArgs {
    /// Concurrent clients, each waiting for its append before sending the next.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Streams to spread the appends over (default: one per client).
    #[arg(long)]
    streams: Option<usize>,
    /// Total appends per second to offer (paced evenly over the clients); default: as fast as
    /// acknowledgements come back.
    #[arg(long)]
    rate: Option<f64>,
    /// Before starting, give every bench stream this max-count metadata, so retention (when the
    /// node runs it) has dead events to reclaim while the bench writes.
    #[arg(long)]
    max_count: Option<u64>,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata bench get-stream`: the gRPC path's own ceiling on this machine.
#[derive(Debug, clap::Args)]
pub struct BenchGetStreamArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[command(flatten)]
    server: ServerArg,
}

/// Which benchmark.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Durable appends.
    Append(BenchAppendArgs),
    /// A trivial call (GetStream of a missing stream): the transport's request rate ceiling.
    GetStream(BenchGetStreamArgs),
    /// ReadState of one large aggregate with periodic snapshots, at random past times.
    State(crate::bench_state::BenchStateArgs),
}

/// Clients share this many HTTP/2 connections.
const CONNECTIONS: usize = 4;

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> Result<(), Failure> {
    let args = match command {
        BenchCommand::Append(args) => args,
        BenchCommand::GetStream(args) => return get_stream(args).await,
        BenchCommand::State(args) => return crate::bench_state::run(args).await,
    };
    if args.clients == 0 || args.batch == 0 || args.duration == 0 {
        return Err(Failure {
            message: "--clients, --batch and --duration must be at least 1".into(),
            exit_code: 2,
        });
    }
    // On a replicated shard, load the leader.
    let server = crate::client::ServerArg {
        server: crate::cluster_cmd::leader_addr(&args.server.server).await?,
    };
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS.min(args.clients) {
        channels.push(crate::client::connect(&server).await?);
    }
    let streams = args.streams.unwrap_or(args.clients).max(1);
    let data = Arc::new(vec![0x5au8; args.event_bytes]);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let run = uuid::Uuid::new_v4().as_u128();
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Failure {
            message: "--rate must be a positive number of appends per second".into(),
            exit_code: 2,
        });
    }
    if let Some(max_count) = args.max_count {
        let mut client = channels[0].clone();
        for s in 0..streams {
            client
                .set_stream_metadata(pb::SetStreamMetadataRequest {
                    stream: format!("bench-{:x}-{s}", run as u32),
                    metadata: Some(pb::StreamMetadata {
                        max_age_us: None,
                        max_count: Some(max_count),
                        truncate_before: None,
                    }),
                    expected_metadata_version: None,
                })
                .await
                .map_err(crate::client::failure)?;
        }
    }
    // Each client sends one append per `period`, offset so the load is even.
    let period = args
        .rate
        .map(|r| Duration::from_secs_f64(args.clients as f64 / r));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let mut client: StreamsClient<_> = channels[c % channels.len()].clone();
            let data = data.clone();
            let batch = args.batch;
            let clients = args.clients as u32;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let stream = format!("bench-{:x}-{}", run as u32, c % streams);
                let mut next = period.map(|p| started + p * c as u32 / clients);
                while Instant::now() < deadline {
                    if let (Some(at), Some(p)) = (next.as_mut(), period) {
                        tokio::time::sleep_until((*at).into()).await;
                        *at += p;
                    }
                    let events = (0..batch)
                        .map(|_| pb::NewEvent {
                            id: String::new(),
                            r#type: "BenchEvent".into(),
                            data: data.to_vec(),
                            metadata: Vec::new(),
                        })
                        .collect();
                    let t = Instant::now();
                    match client
                        .append(pb::AppendRequest {
                            stream: stream.clone(),
                            expected: None,
                            events,
                        })
                        .await
                    {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t
            .await
            .map_err(|e| Failure::new(format!("a bench client failed: {e}")))?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    if latencies.is_empty() {
        return Err(Failure::new(format!(
            "no append succeeded ({errors} errors)"
        )));
    }
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    let events = (latencies.len() * args.batch) as f64;
    let summary = serde_json::json!({
        "clients": args.clients,
        "event_bytes": args.event_bytes,
        "events_per_append": args.batch,
        "seconds": elapsed,
        "appends": latencies.len(),
        "errors": errors,
        "events_per_s": (events / elapsed).round(),
        "mib_per_s": events * args.event_bytes as f64 / elapsed / (1 << 20) as f64,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "offered_rate": args.rate,
    });
    eprintln!(
        "strata    clients={} events_per_append={} event_bytes={}  events/s={:.0}  MiB/s={:.1}  append p50={:.2}ms p99={:.2}ms p99.9={:.2}ms  errors={}",
        args.clients, args.batch, args.event_bytes, events / elapsed, events * args.event_bytes as f64 / elapsed / (1 << 20) as f64, pct(0.5), pct(0.99), pct(0.999), errors
    );
    output::line(&summary);
    Ok(())
}

async fn get_stream(args: BenchGetStreamArgs) -> Result<(), Failure> {
    if args.clients == 0 || args.duration == 0 {
        return Err(Failure {
            message: "--clients and --duration must be at least 1".into(),
            exit_code: 2,
        });
    }
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS.min(args.clients) {
        channels.push(crate::client::connect(&args.server).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let mut client = channels[c % channels.len()].clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    if client
                        .get_stream(pb::GetStreamRequest {
                            stream: "bench-missing".into(),
                            consistency: pb::Consistency::Follower as i32,
                        })
                        .await
                        .is_ok()
                    {
                        calls += 1;
                    }
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for t in tasks {
        calls += t
            .await
            .map_err(|e| Failure::new(format!("a bench client failed: {e}")))?;
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "strata    clients={} get-stream calls/s={rate:.0}",
        args.clients
    );
    output::line(&serde_json::json!({ "clients": args.clients, "calls_per_s": rate.round() }));
    Ok(())
}
