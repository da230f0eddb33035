//! `strata`: run a node (`dev`), talk to one (append, read, read-all, subscribe,
//! stream-info), or check a data directory offline. Client commands print JSON lines on
//! stdout. Exit status: 0 success, 3 wrong expected version (the actual version goes to
//! stderr), 1 any other error (the server's message goes to stderr), 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata::{
    bench, client, cluster_cmd, dev_cluster, group_cmd, history_cmd, node_config, output,
    serve_cmd, Failure,
};
use strata_consistency::jepsen;

/// mimalloc instead of glibc's allocator: requests, answers and index batches allocate per
/// event, and glibc's malloc/free took ~8 % of a node's CPU under pipelined appends. Its v2
/// line (the `v2` feature) rather than v3, the crate's default: 16 × 256 pipelined 1 KiB
/// appends, 10 alternating pairs (A B B A) of fresh-node runs, node 5.88 against 6.12 µs of CPU
/// per event (lower in 9 of the 10 pairs), 220k against 214k events/s; one client, 64 clients
/// and 16 × 100-event appends within run-to-run noise. perf did not show where: the
/// allocator's own share of the node's samples was 12–13 % with either.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most threads serving reads (tokio's blocking pool) in one process.
const BLOCKING_THREADS_MAX: usize = 64;

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Strata: an event-log store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single embedded node with data in a local folder, or a local cluster (--nodes 3).
    Dev {
        /// Data directory (a cluster puts node N under DIR/node-N).
        #[arg(long, default_value = "./strata-data")]
        data: PathBuf,
        /// gRPC address (a cluster puts node N on this port + N − 1: 50051, 50052, …).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// HTTP address of /metrics and /health (node N of a cluster: this port + N − 1), or
        /// `off`.
        #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics)]
        metrics: Metrics,
        /// Nodes: 1 runs one engine without replication; 3 (or 5) runs a replicated cluster
        /// of that many local processes.
        #[arg(long, default_value_t = 1)]
        nodes: u64,
        /// Shards (1-64): streams spread over them by slot, each shard its own engine (with
        /// --nodes, its own Raft group with a replica on every node), all of a node's shards
        /// sharing one fdatasync per round. A new data directory gets this many; an existing
        /// one keeps what it holds.
        #[arg(long)]
        shards: Option<u32>,
        /// Also start every service (consistency on 8095, …) over this node.
        #[arg(long)]
        services: bool,
    },
    /// Run a node for deployments, configured by --config FILE (TOML) and flags.
    Node(Box<node_config::NodeArgs>),
    /// Append events to a stream (one atomic append).
    Append(client::AppendArgs),
    /// Read a stream.
    Read(client::ReadArgs),
    /// Read all streams in log order.
    ReadAll(client::ReadAllArgs),
    /// Follow a stream or all streams: catch up, then live.
    Subscribe(client::SubscribeArgs),
    /// Show a stream's current version.
    StreamInfo(client::StreamInfoArgs),
    /// Set a stream's metadata: max age, max count, truncate-before.
    StreamMeta(history_cmd::MetaArgs),
    /// Delete a stream: soft (appending recreates it) or --hard (a tombstone).
    Delete(history_cmd::DeleteArgs),
    /// Store a snapshot of a stream's aggregate state at a version.
    Snapshot(history_cmd::SnapshotArgs),
    /// A stream's state at a point: its newest snapshot and the events after it.
    State(history_cmd::StateArgs),
    /// Set how often streams with a name prefix should be snapshotted.
    SnapshotPolicy(history_cmd::PolicyArgs),
    /// The events between two points of a stream and a structural diff of its JSON state.
    Diff(history_cmd::DiffArgs),
    /// Load generators over real gRPC.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Membership and status of a replicated shard.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Consumer groups: create, list, info, reset, parked events, and a worker.
    #[command(subcommand)]
    Group(group_cmd::GroupCommand),
    /// Jepsen-style testing: a local cluster of real nodes, a workload, faults, a checked
    /// history (exit 0 when linearizable or valid, 1 when not).
    Jepsen(jepsen::JepsenArgs),
    /// Run a service: saga (8080), inventory (8081), payment (8082), notification (8083),
    /// gateway (8090), consistency (8095).
    Serve(serve_cmd::ServeArgs),
    /// The fake payment provider for tests and the demo: charges, refunds and a ledger, with
    /// faults on request (`PUT /faults`).
    FakeProvider {
        /// Where it listens.
        #[arg(long, default_value = serve_cmd::FAKE_PROVIDER)]
        listen: std::net::SocketAddr,
        /// The seed of its random faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Verify a data directory offline (every segment, record and footer).
    Check {
        /// The node's data directory.
        dir: PathBuf,
    },
}

/// `--metrics`: an address, or none (`off`).
type Metrics = Option<std::net::SocketAddr>;

fn parse_metrics(value: &str) -> Result<Metrics, String> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("expected HOST:PORT or `off`: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A service sets up its own logs (JSON by default) once its settings are known.
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    // Reads run on the blocking pool; bound it (tokio's default allows 512 threads).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads(&cli.command) {
        builder.worker_threads(n);
    }
    let runtime = match builder
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .on_thread_start(strata_engine::index_store::quiet_thread)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev {
                data,
                listen,
                metrics,
                nodes,
                shards,
                services,
            } if nodes > 1 => {
                if services {
                    serve_cmd::start_all_for_dev(listen);
                }
                dev_cluster::run(data, listen, metrics, nodes, shards).await
            }
            Command::Dev {
                data,
                listen,
                metrics,
                nodes,
                shards,
                services,
            } => {
                if services {
                    serve_cmd::start_all_for_dev(listen);
                }
                if nodes == 0 {
                    return Err(Failure {
                        message: "--nodes must be at least 1".into(),
                        exit_code: 2,
                    });
                }
                let config = strata_shard::NodeConfig {
                    data_dir: data,
                    listen,
                    engine: Default::default(),
                    service: Default::default(),
                    metrics_listen: metrics,
                    cluster: None,
                    shards,
                };
                serve(config, "strata dev").await
            }
            Command::Node(args) => match node_config::resolve(*args) {
                Ok(config) => serve(config, "strata node").await,
                Err(e) => Err(e),
            },
            Command::Append(args) => client::append(args).await,
            Command::Read(args) => client::read(args).await,
            Command::ReadAll(args) => client::read_all(args).await,
            Command::Subscribe(args) => client::subscribe(args).await,
            Command::StreamInfo(args) => client::stream_info(args).await,
            Command::StreamMeta(args) => history_cmd::set_meta(args).await,
            Command::Delete(args) => history_cmd::delete(args).await,
            Command::Snapshot(args) => history_cmd::save_snapshot(args).await,
            Command::State(args) => history_cmd::state(args).await,
            Command::SnapshotPolicy(args) => history_cmd::set_policy(args).await,
            Command::Diff(args) => history_cmd::run_diff(args).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Cluster(command) => cluster_cmd::run(command).await,
            Command::Group(command) => group_cmd::run(command).await,
            Command::Jepsen(mut args) => {
                args.test_build = strata_engine::planted::AVAILABLE;
                jepsen::run(args).await
            }
            Command::Serve(args) => serve_cmd::run(args).await,
            Command::FakeProvider { listen, seed } => {
                serve_cmd::run_fake_provider(Some(listen), seed).await
            }
            Command::Check { dir } => check(dir),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}

/// Runtime worker threads for a command, or `None` for tokio's default (one per core): a
/// load generator gets no more than it has busy tasks. With more workers than tasks an answer
/// read on one thread wakes its task on another, and idle workers spin looking for work:
/// measured on 2 vCPUs, one client's unary append p50 went from 0.43 to 0.30 ms and the
/// client's CPU per append from 181 to 87 µs with one worker instead of two.
fn worker_threads(command: &Command) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match command {
        Command::Bench(bench) => bench.busy_tasks().map(|n| n.clamp(1, cores)),
        _ => None,
    }
}

/// Runs a node until SIGTERM or SIGINT.
async fn serve(config: strata_shard::NodeConfig, name: &str) -> Result<(), Failure> {
    let data = config.data_dir.clone();
    let node = strata_shard::Node::bind(config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let addr = node.local_addr().map_err(|e| Failure::new(e.to_string()))?;
    for (_, backend) in node.backends() {
        if let strata_shard::Backend::Single(engine) = backend {
            let recovery = engine.recovery();
            if let Some((file, offset)) = &recovery.torn_tail {
                tracing::warn!(file = %file.display(), offset, bytes = recovery.torn_bytes, "a torn tail was truncated on open");
            }
        }
    }
    println!("{name}: serving gRPC on {addr}, data in {}", data.display());
    if let Some(raft) = node.raft_addr() {
        println!("  raft traffic on {raft}");
    }
    if let Some(metrics) = node.metrics_addr() {
        println!("  metrics: http://{metrics}/metrics   health: http://{metrics}/health");
    }
    println!("  try: strata --help; strata append orders-1 --type OrderPlaced --data '{{\"total\": 42}}' --server {addr}");
    println!("       strata read orders-1 --server {addr}");
    println!("       grpcurl -plaintext {addr} list");
    println!("  stop with Ctrl-C (or SIGTERM)");
    node.serve(strata_shard::termination_signal())
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    eprintln!("{name}: stopped cleanly");
    Ok(())
}

fn check(dir: PathBuf) -> Result<(), Failure> {
    use std::io::Write;
    let config = strata_engine::EngineConfig::default();
    let report = strata_engine::verify::verify(&strata_engine::fs::StdFs, &dir, &config, |p| {
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rchecking: {}/{} segments, {:.1} MiB",
            p.segments_done,
            p.segments_total,
            p.bytes_done as f64 / (1 << 20) as f64
        );
        if p.segments_done == p.segments_total {
            let _ = writeln!(err);
        }
    })
    .map_err(|e| Failure::new(e.to_string()))?;
    output::line(&serde_json::json!({
        "segments": report.segments,
        "records": report.records,
        "bytes": report.bytes,
        "clean": report.is_clean(),
        "torn_tail": report.torn_tail.as_ref().map(|p| serde_json::json!({"file": p.file.display().to_string(), "offset": p.offset, "reason": p.reason})),
        "corruption": report.corruption.iter().map(|p| serde_json::json!({"file": p.file.display().to_string(), "offset": p.offset, "reason": p.reason})).collect::<Vec<_>>(),
    }));
    if report.is_clean() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{} damaged place(s) found",
            report.corruption.len()
        )))
    }
}
