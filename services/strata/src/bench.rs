//! `strata bench append`: a load generator over real gRPC. N clients append K events of B bytes
//! per append, as fast as acknowledgements come back, for a fixed time; prints events/s, MiB/s
//! and append latency percentiles (from a histogram of fixed size per client, within 1.6 %:
//! [`crate::latency`]). Bounded: it stops at the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::pb;

use crate::client::ServerArg;
use crate::latency::Latencies;
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
    /// Appends in flight per connection, pipelined on one AppendStream call (then --clients
    /// is the number of connections); 0: each client waits for its append (unary Append).
    #[arg(long, default_value_t = 0)]
    pipeline: usize,
    /// With --pipeline: microseconds to wait for more appends to batch into one message after
    /// the first (0: send what is queued at once).
    #[arg(long, default_value_t = 0)]
    linger_us: u64,
    /// Without --pipeline: each append its own unary Append call, instead of the client's
    /// default (a connection's appends share one AppendStream call, each waiting for its own
    /// answer).
    #[arg(long)]
    unary_calls: bool,
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
    /// A consumer group's workers handling events already written, committing positions.
    Group(BenchGroupArgs),
    /// The saga flow end to end: a node, the fake provider and the four services started here;
    /// sagas/s and latency at several client counts, then the orchestrator's recovery after a
    /// kill -9 with many sagas in flight.
    Sagas(crate::bench_sagas::BenchSagasArgs),
    /// Order events for the ETL benchmark (benches/etl.sh), as fast as they go or at a rate.
    Orders(crate::bench_orders::BenchOrdersArgs),
    /// A server that answers appends and stores nothing: what the append interface alone
    /// costs here, a floor under `strata bench append`'s numbers. Never a store.
    NullServer(crate::bench_null::NullServerArgs),
}

/// `strata bench group`.
#[derive(Debug, clap::Args)]
pub struct BenchGroupArgs {
    /// Events to write first and then handle.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Streams they are spread over.
    #[arg(long, default_value_t = 100)]
    streams: u64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_bytes: usize,
    /// Workers (in this process) sharing the group.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Events per batch: a position commit after each.
    #[arg(long, default_value_t = 100)]
    commit_every: usize,
    /// The group's partitions.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[command(flatten)]
    server: ServerArg,
}

/// Unpipelined clients share this many HTTP/2 connections.
const CONNECTIONS: usize = 4;

impl BenchCommand {
    /// How many tasks of the load generator are busy at once (clients or workers), when the
    /// benchmark has such a number: the process needs no more runtime threads than that.
    pub fn busy_tasks(&self) -> Option<usize> {
        match self {
            BenchCommand::Append(a) => Some(a.clients),
            BenchCommand::GetStream(a) => Some(a.clients),
            BenchCommand::Group(a) => Some(a.workers),
            BenchCommand::State(_)
            | BenchCommand::Sagas(_)
            | BenchCommand::Orders(_)
            | BenchCommand::NullServer(_) => None,
        }
    }
}

fn bad_usage(message: &str) -> Failure {
    Failure {
        message: message.into(),
        exit_code: 2,
    }
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> Result<(), Failure> {
    let args = match command {
        BenchCommand::Append(args) => args,
        BenchCommand::GetStream(args) => return get_stream(args).await,
        BenchCommand::State(args) => return crate::bench_state::run(args).await,
        BenchCommand::Group(args) => return group(args).await,
        BenchCommand::Sagas(args) => return crate::bench_sagas::run(args).await,
        BenchCommand::Orders(args) => return crate::bench_orders::run(args).await,
        BenchCommand::NullServer(args) => return crate::bench_null::run(args).await,
    };
    if args.clients == 0 || args.batch == 0 || args.duration == 0 {
        return Err(bad_usage(
            "--clients, --batch and --duration must be at least 1",
        ));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(bad_usage(
            "--rate must be a positive number of appends per second",
        ));
    }
    if args.pipeline > 0 && args.rate.is_some() {
        return Err(bad_usage(
            "--rate paces one append at a time; drop --pipeline",
        ));
    }
    // On a replicated shard, load the leader.
    let server = ServerArg {
        server: crate::cluster_cmd::leader_addr(&args.server).await?,
    };
    let nodes = node_addresses(&server).await?;
    let streams = args.streams.unwrap_or(args.clients).max(1);
    let run = uuid::Uuid::new_v4().as_u128() as u32;
    let stream_name = move |i: usize| format!("bench-{run:x}-{}", i % streams);
    if let Some(max_count) = args.max_count {
        let client = server.client()?;
        for s in 0..streams {
            client
                .set_metadata(pb::SetStreamMetadataRequest {
                    stream: stream_name(s),
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
    let load = Load {
        data: bytes::Bytes::from(vec![0x5au8; args.event_bytes]),
        batch: args.batch,
        deadline: Instant::now() + Duration::from_secs(args.duration),
    };
    let syncs_before = cluster_fdatasyncs(&server, &nodes).await;
    let cpu_before = (cluster_cpu_us(&server, &nodes).await, process_cpu_us());
    let started = Instant::now();
    let tasks = if args.pipeline > 0 {
        pipelined(&args, &server, &load, &stream_name)?
    } else {
        one_at_a_time(&args, &server, &load, &stream_name, started)?
    };
    let mut latencies = Latencies::default();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t
            .await
            .map_err(|e| Failure::new(format!("a bench client failed: {e}")))?;
        latencies.merge(&l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = (cluster_cpu_us(&server, &nodes).await, process_cpu_us());
    let syncs = match (syncs_before, cluster_fdatasyncs(&server, &nodes).await) {
        (Some(b), Some(a)) if a > b => Some(a - b),
        _ => None,
    };
    report(
        &args,
        latencies,
        errors,
        elapsed,
        (cpu_before, cpu_after),
        syncs,
    )
}

/// What every bench client sends.
struct Load {
    /// The payload the events of one task share (a reference, not a copy, per event).
    data: bytes::Bytes,
    batch: usize,
    deadline: Instant,
}

impl Load {
    /// The load for one more task, with a payload of its own: one payload shared by every
    /// task makes its reference count a cache line that every core writes twice per append,
    /// a cost of the load generator that no application with payloads of its own pays.
    fn for_task(&self) -> Load {
        Load {
            data: bytes::Bytes::copy_from_slice(&self.data),
            batch: self.batch,
            deadline: self.deadline,
        }
    }

    fn request(&self, stream: String) -> pb::AppendRequest {
        pb::AppendRequest {
            stream,
            expected: None,
            events: (0..self.batch)
                .map(|_| pb::NewEvent {
                    id: String::new(),
                    r#type: "BenchEvent".into(),
                    data: self.data.clone(),
                    metadata: Default::default(),
                })
                .collect(),
        }
    }
}

type ClientTask = tokio::task::JoinHandle<(Latencies, u64)>;

/// `--clients` tasks each waiting for its append before the next (unary `Append`), over
/// [`CONNECTIONS`] connections.
fn one_at_a_time(
    args: &BenchAppendArgs,
    server: &ServerArg,
    load: &Load,
    stream_name: &(impl Fn(usize) -> String + Clone + Send + 'static),
    started: Instant,
) -> Result<Vec<ClientTask>, Failure> {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS.min(args.clients) {
        clients.push(server.client_with(|c| c.append_over_stream = !args.unary_calls)?);
    }
    // Each client sends one append per `period`, offset so the load is even.
    let period = args
        .rate
        .map(|r| Duration::from_secs_f64(args.clients as f64 / r));
    Ok((0..args.clients)
        .map(|c| {
            let client = clients[c % clients.len()].clone();
            let load = load.for_task();
            let count = args.clients as u32;
            let stream = stream_name(c);
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let mut errors = 0u64;
                let mut next = period.map(|p| started + p * c as u32 / count);
                while Instant::now() < load.deadline {
                    if let (Some(at), Some(p)) = (next.as_mut(), period) {
                        tokio::time::sleep_until((*at).into()).await;
                        *at += p;
                    }
                    let t = Instant::now();
                    match client.append_request(load.request(stream.clone())).await {
                        Ok(_) => latencies.record(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect())
}

/// `--clients` connections, each one `AppendStream` call keeping `--pipeline` appends in
/// flight; latency is from queueing an append to its answer.
fn pipelined(
    args: &BenchAppendArgs,
    server: &ServerArg,
    load: &Load,
    stream_name: &(impl Fn(usize) -> String + Clone + Send + 'static),
) -> Result<Vec<ClientTask>, Failure> {
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let window = args.pipeline;
        let linger = Duration::from_micros(args.linger_us);
        let client = server.client_with(|config| {
            config.window = window;
            config.linger = linger;
        })?;
        let appender = client.appender();
        let load = load.for_task();
        let stream = stream_name(c);
        // Answers are awaited in order by a second task, so sending never waits on them
        // beyond the window.
        let (tx, mut rx) = tokio::sync::mpsc::channel(window);
        tokio::spawn(async move {
            loop {
                // One clock read per append: it is a measurable share of the client's CPU.
                let t = Instant::now();
                if t >= load.deadline {
                    break;
                }
                let Ok(pending) = appender.append_request(load.request(stream.clone())).await
                else {
                    break;
                };
                if tx.send((t, pending)).await.is_err() {
                    break;
                }
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut errors = 0u64;
            while let Some((t, pending)) = rx.recv().await {
                match pending.await {
                    Ok(_) => latencies.record(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    Ok(tasks)
}

/// The client addresses of every node of the shard `server` leads (itself alone when it runs
/// without replication).
async fn node_addresses(server: &ServerArg) -> Result<Vec<String>, Failure> {
    let client = server.client()?;
    let s = client
        .cluster_status(&server.server)
        .await
        .map_err(crate::client::failure)?;
    Ok(match s.node_id {
        0 => vec![server.server.clone()],
        _ => s.nodes.into_iter().map(|n| n.addr).collect(),
    })
}

/// A counter of every node's `Cluster.Status` added up (`None` when one does not answer).
async fn cluster_sum(
    server: &ServerArg,
    nodes: &[String],
    counter: fn(&pb::ClusterStatus) -> u64,
) -> Option<u64> {
    let client = server.client().ok()?;
    let mut total = 0;
    for n in nodes {
        total += counter(&client.cluster_status(n).await.ok()?);
    }
    Some(total)
}

/// CPU microseconds used so far by every node's process.
async fn cluster_cpu_us(server: &ServerArg, nodes: &[String]) -> Option<u64> {
    cluster_sum(server, nodes, |s| s.process_cpu_us).await
}

/// Log fdatasyncs issued so far by every node (0 where not counted).
async fn cluster_fdatasyncs(server: &ServerArg, nodes: &[String]) -> Option<u64> {
    cluster_sum(server, nodes, |s| s.log_fdatasyncs).await
}

fn process_cpu_us() -> u64 {
    strata_shard::cluster::process_cpu_us()
}

fn report(
    args: &BenchAppendArgs,
    latencies: Latencies,
    errors: u64,
    elapsed: f64,
    (cpu_before, cpu_after): ((Option<u64>, u64), (Option<u64>, u64)),
    fdatasyncs: Option<u64>,
) -> Result<(), Failure> {
    if latencies.is_empty() {
        return Err(Failure::new(format!(
            "no append succeeded ({errors} errors)"
        )));
    }
    let pct = |p: f64| latencies.percentile(p).unwrap_or_default().as_secs_f64() * 1e3;
    let events = latencies.len() as f64 * args.batch as f64;
    let per_event = |before: u64, after: u64| after.saturating_sub(before) as f64 / events;
    let server_us = match (cpu_before.0, cpu_after.0) {
        (Some(b), Some(a)) => Some(per_event(b, a)),
        _ => None,
    };
    let client_us = per_event(cpu_before.1, cpu_after.1);
    let mib = events * args.event_bytes as f64 / elapsed / (1 << 20) as f64;
    let summary = serde_json::json!({
        "clients": args.clients,
        "pipeline": args.pipeline,
        "linger_us": args.linger_us,
        "unary_calls": args.unary_calls,
        "event_bytes": args.event_bytes,
        "events_per_append": args.batch,
        "seconds": elapsed,
        "appends": latencies.len(),
        "errors": errors,
        "events_per_s": (events / elapsed).round(),
        "mib_per_s": mib,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "offered_rate": args.rate,
        "server_cpu_us_per_event": server_us,
        "client_cpu_us_per_event": client_us,
        "fdatasyncs_per_s": fdatasyncs.map(|n| (n as f64 / elapsed).round()),
    });
    eprintln!(
        "strata    clients={} pipeline={} linger_us={}{} events_per_append={} event_bytes={}  events/s={:.0}  MiB/s={:.1}  append p50={:.2}ms p99={:.2}ms p99.9={:.2}ms  server_cpu_us/event={}  client_cpu_us/event={:.1}  fdatasyncs/s={}  errors={}",
        args.clients, args.pipeline, args.linger_us, if args.unary_calls { " unary_calls" } else { "" }, args.batch, args.event_bytes, events / elapsed, mib, pct(0.5), pct(0.99), pct(0.999),
        server_us.map_or("?".to_string(), |u| format!("{u:.1}")), client_us,
        fdatasyncs.map_or("?".to_string(), |n| format!("{:.0}", n as f64 / elapsed)), errors
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
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS.min(args.clients) {
        clients.push(args.server.client()?);
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let client = clients[c % clients.len()].clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    if client
                        .stream_info("bench-missing", pb::Consistency::Follower)
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

/// Writes `--events` events (pipelined), then times `--workers` workers of a new group handling
/// them all with a commit every `--commit-every` events.
async fn group(args: BenchGroupArgs) -> Result<(), Failure> {
    use strata_client::group::{GroupTarget, Groups, Position, Worker, WorkerConfig};
    if args.events == 0 || args.streams == 0 || args.workers == 0 || args.commit_every == 0 {
        return Err(bad_usage(
            "--events, --streams, --workers and --commit-every must be at least 1",
        ));
    }
    let server = ServerArg {
        server: crate::cluster_cmd::leader_addr(&args.server).await?,
    };
    let client = server.client_with(|c| c.window = 4096)?;
    let run = uuid::Uuid::new_v4().as_u128() as u32;
    let prefix = format!("gb-{run:x}-");
    let data = vec![b'x'; args.event_bytes];
    let appender = client.appender();
    let mut pending = std::collections::VecDeque::new();
    let load_started = Instant::now();
    for i in 0..args.events {
        let stream = format!("{prefix}{}", i % args.streams);
        let e = strata_client::event("BenchEvent", data.clone());
        pending.push_back(
            appender
                .append(&stream, strata_client::ExpectedVersion::Any, vec![e])
                .await
                .map_err(crate::client::failure)?,
        );
        while pending.len() >= 4096 {
            if let Some(p) = pending.pop_front() {
                p.await.map_err(crate::client::failure)?;
            }
        }
    }
    for p in pending {
        p.await.map_err(crate::client::failure)?;
    }
    eprintln!(
        "loaded {} events in {:.1} s",
        args.events,
        load_started.elapsed().as_secs_f64()
    );
    let name = format!("gb-{run:x}");
    Groups::new(client.clone())
        .create(
            &name,
            GroupTarget::Prefix(prefix),
            args.partitions,
            Position::From(0),
        )
        .await
        .map_err(crate::client::failure)?;
    let nodes = node_addresses(&server).await?;
    let cpu_before = (cluster_cpu_us(&server, &nodes).await, process_cpu_us());
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.workers {
        let mut config = WorkerConfig::new(format!("bench-{w}"));
        config.batch_events_max = args.commit_every;
        config.buffer_events_max = config.buffer_events_max.max(args.commit_every * 4);
        let mut worker = Worker::join(client.clone(), &name, config)
            .await
            .map_err(crate::client::failure)?;
        let (handled, total) = (handled.clone(), args.events);
        tasks.push(tokio::spawn(async move {
            let mut commits = 0u64;
            while handled.load(std::sync::atomic::Ordering::Relaxed) < total {
                let batch = tokio::select! {
                    b = worker.next_batch() => b?,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                };
                worker.commit(&batch).await?;
                commits += 1;
                handled.fetch_add(
                    batch.events.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            worker.leave().await?;
            Ok::<u64, strata_client::Error>(commits)
        }));
    }
    let mut commits = 0;
    for t in tasks {
        commits += t
            .await
            .map_err(|e| Failure::new(format!("a worker failed: {e}")))?
            .map_err(crate::client::failure)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = (cluster_cpu_us(&server, &nodes).await, process_cpu_us());
    let events = handled.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let server_us = match (cpu_before.0, cpu_after.0) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / events),
        _ => None,
    };
    let client_us = cpu_after.1.saturating_sub(cpu_before.1) as f64 / events;
    eprintln!(
        "strata    group workers={} commit_every={} partitions={} event_bytes={}  events/s={:.0}  commits={commits}  server_cpu_us/event={}  client_cpu_us/event={client_us:.1}",
        args.workers, args.commit_every, args.partitions, args.event_bytes, events / secs,
        server_us.map_or("?".to_string(), |u| format!("{u:.1}"))
    );
    output::line(&serde_json::json!({
        "workers": args.workers,
        "commit_every": args.commit_every,
        "partitions": args.partitions,
        "event_bytes": args.event_bytes,
        "events": events,
        "seconds": secs,
        "events_per_s": (events / secs).round(),
        "commits": commits,
        "server_cpu_us_per_event": server_us,
        "client_cpu_us_per_event": client_us,
    }));
    Ok(())
}
