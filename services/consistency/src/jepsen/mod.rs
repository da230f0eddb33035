//! `strata jepsen`: Jepsen-style testing of real processes. It starts its own cluster of
//! `strata node` processes on loopback (Raft links through proxies it can cut), runs a
//! workload of concurrent clients for `--time` seconds while a nemesis injects faults,
//! records the history (invoke / ok / fail / info with times), heals, and checks it.
//!
//! Workloads: register (linearizability, the WGL search of `strata-check`), list-append
//! (transactions over several streams, checked Elle-style for strict serializability) and bank
//! (conservation of money). Nemeses: `none`, `partition`, `kill`, `pause`. Output in `--dir`: the nodes' data and
//! logs, `history.jsonl`, `report.json`, `report.html` (latency and throughput over time with
//! the faults shaded, the verdict, any witness); the last line printed names the verdict. Exit 0 when
//! linearizable (register) or valid (the others), 1 when not (or unknown within the checker's
//! budget), 2 for bad usage.

mod bank;
mod cluster;
mod follower;
mod history;
mod html;
mod judge;
mod listappend;
mod nemesis;
pub mod proxy;
mod register;
mod rng;
mod snapshot;
mod streams;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::test_build;
use serde::Serialize;
use strata_client::{Client, ClientConfig};

use self::cluster::LocalCluster;
use self::history::{History, Kind};
use self::nemesis::Fault;
pub use self::nemesis::NemesisKind;
use self::rng::Rng;
use self::workload::{client_loop, Ctx, Done, Names};
use crate::Failure;

/// Longest run (`--time`), seconds.
pub const TIME_MAX_SECS: u64 = 3600;
/// Most clients.
pub const CLIENTS_MAX: u64 = 64;
/// Most `--target` addresses.
pub const TARGETS_MAX: usize = 16;
/// Most shards of a run's own cluster.
pub const SHARDS_MAX: u32 = 8;
/// After the workload, with every fault healed: clients keep going this long, so the
/// history ends with the cluster whole.
const SETTLE: Duration = Duration::from_secs(3);

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One stream as a compare-and-set register (read, write, cas through expected versions);
    /// checked for linearizability.
    Register,
    /// Transactions over several streams: snapshot reads, `AppendMulti` appends and
    /// read-modify-writes through expected versions; checked Elle-style for strict
    /// serializability.
    ListAppend,
    /// Transfers between accounts; every snapshot of the balances must hold the same total.
    Bank,
    /// Appends with and without expected versions and whole-stream reads on a few streams;
    /// checked for linearizability against the stream model, stream by stream.
    Stream,
    /// Appends, and reads at follower consistency (whole streams, or as of a past time):
    /// prefix consistency, monotonic reads, closed timestamps; staleness measured.
    Follower,
}

/// `strata jepsen`.
#[derive(Debug, Clone, clap::Args)]
pub struct JepsenArgs {
    /// The workload.
    #[arg(long, value_enum, default_value = "register")]
    pub workload: Workload,
    /// The faults (see the nemesis list in the README).
    #[arg(long, value_enum, default_value = "partition")]
    pub nemesis: NemesisKind,
    /// Seconds of workload under faults (1 to 3600); 3 healed seconds follow.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Concurrent clients (1 to 64).
    #[arg(long, default_value_t = 5)]
    pub clients: u64,
    /// Nodes of the run's own cluster: 3 or 5 (not used with --target).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Shards of the run's own cluster, 1 to 8 (each a Raft group with a replica on every
    /// node); on more than one, the transactional workloads' streams share a routing key.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Runs against an existing cluster, at these client addresses (HOST:PORT, comma-separated,
    /// at most 16), instead of starting one: only `--nemesis none` (faults need the run's own
    /// processes and proxies). Its streams are named `jepsen-SEED-…`, so runs never meet.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// Seconds healthy between faults, and each fault's length (1 to 60).
    #[arg(long, default_value_t = 5)]
    pub fault_secs: u64,
    /// The seed of the run's choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the nodes, the history and the report go (default: a new directory under the
    /// system's temporary one, kept).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Test builds only: break one guarantee in every node (ack-before-fsync,
    /// read-without-read-index, skip-expected-version), to see the run catch it.
    #[arg(long)]
    pub planted_bug: Option<String>,
    /// Test builds only: the nodes' disks lose unsynced writes when killed (a power cut).
    #[arg(long)]
    pub lose_unsynced: bool,
    /// Whether this binary is a test build (set by the caller, not a flag).
    #[arg(skip)]
    pub test_build: bool,
}

impl JepsenArgs {
    /// Checks every argument: bad usage is exit status 2.
    pub fn validate(&self) -> Result<(), Failure> {
        let usage = |m: String| {
            Err(Failure {
                message: m,
                exit_code: 2,
            })
        };
        if !(1..=TIME_MAX_SECS).contains(&self.time) {
            return usage(format!(
                "--time: 1 to {TIME_MAX_SECS} seconds, not {}",
                self.time
            ));
        }
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            return usage(format!(
                "--clients: 1 to {CLIENTS_MAX}, not {}",
                self.clients
            ));
        }
        if !matches!(self.nodes, 3 | 5) {
            return usage(format!("--nodes: 3 or 5, not {}", self.nodes));
        }
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return usage(format!("--shards: 1 to {SHARDS_MAX}, not {}", self.shards));
        }
        if self.shards > 1 && self.nemesis == NemesisKind::Membership {
            return usage(
                "--nemesis membership: one shard only (on several, a node's replicas must move before it leaves)"
                    .into(),
            );
        }
        if !(1..=60).contains(&self.fault_secs) {
            return usage(format!("--fault-secs: 1 to 60, not {}", self.fault_secs));
        }
        if !self.target.is_empty() {
            self.validate_target().map_err(|m| Failure {
                message: m,
                exit_code: 2,
            })?;
        }
        let test_only =
            self.planted_bug.is_some() || self.lose_unsynced || self.nemesis == NemesisKind::Clock;
        if test_only && !self.test_build {
            return usage(
                "--planted-bug, --lose-unsynced and --nemesis clock need a test build (cargo test builds the \
                 strata binary with the planted-bugs feature); this one cannot plant anything"
                    .into(),
            );
        }
        if let Some(name) = &self.planted_bug {
            if !test_build::BUGS.contains(&name.as_str()) {
                return usage(format!(
                    "--planted-bug: one of {}, not {name:?}",
                    test_build::BUGS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// `--target`: addresses that parse, and no fault or planted bug (those need the run's own
    /// nodes).
    fn validate_target(&self) -> Result<(), String> {
        if self.target.len() > TARGETS_MAX {
            return Err(format!(
                "--target: at most {TARGETS_MAX} addresses, not {}",
                self.target.len()
            ));
        }
        for a in &self.target {
            let port = a
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(format!("--target: {a:?} is not HOST:PORT"));
            }
        }
        if self.nemesis != NemesisKind::None {
            return Err(format!(
                "--target: only --nemesis none (the faults need the run's own nodes and proxies), not {}",
                name(self.nemesis)
            ));
        }
        if self.planted_bug.is_some() || self.lose_unsynced || self.shards != 1 {
            return Err(
                "--target: --planted-bug, --lose-unsynced and --shards act on the run's own nodes"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether the nodes' clocks are to be skewed (`clock`, or `all` in a test build).
    fn clocks(&self) -> bool {
        self.nemesis == NemesisKind::Clock || (self.nemesis == NemesisKind::All && self.test_build)
    }

    /// The run's stream names: see [`Names`].
    fn names(&self, seed: u64) -> Names {
        if self.target.is_empty() {
            Names::new("jepsen-")
        } else {
            Names::new(&format!("jepsen-{seed}-"))
        }
    }

    /// What the nodes' environment gets.
    fn node_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(bug) = &self.planted_bug {
            env.push((test_build::BUG_VAR.to_string(), bug.clone()));
        }
        if self.lose_unsynced {
            env.push((
                test_build::DISK_VAR.to_string(),
                "lose-unsynced".to_string(),
            ));
        }
        env
    }
}

/// Latency percentiles of some operations, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Operations counted.
    pub ops: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

fn latency(mut us: Vec<u64>) -> Latency {
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us.get(i).map_or(0.0, |v| *v as f64 / 1000.0)
    };
    Latency {
        ops: us.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// What `report.json` holds (and the stdout line before the last).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The workload.
    pub workload: Workload,
    /// The nemesis.
    pub nemesis: NemesisKind,
    /// The cluster's client addresses when the run targeted an existing one (else empty).
    pub target: Vec<String>,
    /// Shards of the run's own cluster.
    pub shards: u32,
    /// The bug planted in the nodes, if any (test builds).
    pub planted_bug: Option<String>,
    /// Whether the nodes' disks lost unsynced writes when killed (test builds).
    pub lose_unsynced: bool,
    /// The seed.
    pub seed: u64,
    /// Seconds of workload.
    pub time_secs: u64,
    /// Operations invoked.
    pub ops: usize,
    /// Completed ok.
    pub ok: usize,
    /// Failed (certainly no effect).
    pub fail: usize,
    /// Unknown.
    pub info: usize,
    /// Latency of operations begun with no fault active.
    pub calm: Latency,
    /// Latency of operations begun during a fault.
    pub during_faults: Latency,
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// For each fault: ms from its start to the acknowledgement of the first write invoked
    /// after it began (how long writes were unavailable; `None`: none until the end).
    pub recovery_ms: Vec<Option<f64>>,
    /// `linearizable`, `not-linearizable` or `unknown` (register); `valid` or `invalid`
    /// (list-append: strict serializable or not; bank: money conserved or not).
    pub verdict: String,
    /// Anomalies found, each with its witness, in words (at most 8 of each class).
    pub anomalies: Vec<String>,
    /// How many anomalies of each class.
    pub anomaly_counts: Vec<(String, usize)>,
    /// What the workload measures besides (follower: reads checked, closed reads checked,
    /// staleness p50 / p99 / max in ms); null for the others.
    pub measured: serde_json::Value,
    /// Where the run's files are.
    pub dir: PathBuf,
}

impl Report {
    /// Whether the verdict is clean (`linearizable` or `valid`).
    pub fn clean(&self) -> bool {
        matches!(self.verdict.as_str(), "linearizable" | "valid")
    }
}

/// A flag value's name (`register`, `partition`, …).
pub fn name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// Runs `strata jepsen` (see the module docs).
/// Runs `strata jepsen` (see the module docs): prints the report line and the verdict line.
pub async fn run(args: JepsenArgs) -> Result<(), Failure> {
    eprintln!(
        "strata jepsen: {} under {} for {} s, {} clients, {} nodes{}{}",
        name(args.workload),
        name(args.nemesis),
        args.time,
        args.clients,
        args.nodes,
        args.planted_bug
            .as_ref()
            .map_or(String::new(), |b| format!(", planted bug {b}")),
        if args.lose_unsynced {
            ", disks losing unsynced writes"
        } else {
            ""
        }
    );
    let report = execute(&args).await?;
    println!(
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|e| e.to_string())
    );
    println!(
        "strata jepsen: {} under {}: {} ({} operations: {} ok, {} fail, {} info; seed {}; report {}/report.json)",
        name(args.workload),
        name(args.nemesis),
        report.verdict,
        report.ops,
        report.ok,
        report.fail,
        report.info,
        report.seed,
        report.dir.display()
    );
    for a in &report.anomalies {
        eprintln!("strata jepsen: {a}");
    }
    if report.clean() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "the history is {}; see {}/history.jsonl",
            report.verdict,
            report.dir.display()
        )))
    }
}

/// One run: checks the arguments, starts the cluster, drives the workload and the nemesis,
/// stops the cluster and checks the history; writes the run's files and returns the report.
pub async fn execute(args: &JepsenArgs) -> Result<Report, Failure> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("strata-jepsen-{seed}")));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::new(format!("creating {}: {e}", dir.display())))?;
    tracing::info!(
        workload = %name(args.workload),
        nemesis = %name(args.nemesis),
        time_secs = args.time,
        clients = args.clients,
        nodes = args.nodes,
        seed,
        dir = %dir.display(),
        planted_bug = ?args.planted_bug,
        lose_unsynced = args.lose_unsynced,
        "jepsen run starting"
    );
    let names = args.names(seed);
    let (history, done, faults) = if args.target.is_empty() {
        let mut cluster = LocalCluster::start(
            &dir,
            (args.nodes, args.shards),
            args.node_env(),
            args.clocks(),
        )
        .await?;
        let addrs = cluster.client_addrs();
        let outcome = drive(args, (seed, &names), addrs, Some(&mut cluster)).await;
        cluster.stop().await;
        outcome?
    } else {
        drive(args, (seed, &names), args.target.clone(), None).await?
    };
    // The checker's search runs for up to minutes: off the runtime's workers.
    let args = args.clone();
    tokio::task::spawn_blocking(move || judge(&args, seed, &dir, &history, &done, faults))
        .await
        .map_err(|e| Failure::new(format!("the checker failed: {e}")))?
}

type Driven = (Arc<History>, Vec<Done>, Vec<Fault>);

/// Runs the clients against `addrs` and, on the run's own cluster, the nemesis; heals;
/// returns the history.
async fn drive(
    args: &JepsenArgs,
    (seed, names): (u64, &Names),
    addrs: Vec<String>,
    cluster: Option<&mut LocalCluster>,
) -> Result<Driven, Failure> {
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Short timeouts, as Jepsen's clients have: an operation stuck behind a fault gives up
    // (info) within a second and the client goes on, so every node keeps being asked.
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(1),
        ..ClientConfig::new(addrs)
    };
    if args.workload == Workload::Bank {
        let client = Client::new(config.clone()).map_err(|e| Failure::new(e.to_string()))?;
        bank::open(&client, names)
            .await
            .map_err(|e| Failure::new(format!("opening the accounts: {e}")))?;
    }
    let begun = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for number in 0..args.clients {
        // Bound to one node as Jepsen's clients are (client i to node i mod n, whatever
        // happens to it): the node forwards to the leader, so a deposed leader still hears
        // from its clients, and a dead node's clients fail until it is back.
        let all = &config.addresses;
        let bound = ClientConfig {
            addresses: vec![all[number as usize % all.len()].clone()],
            follow_leaders: false,
            ..config.clone()
        };
        let ctx = Ctx {
            client: Client::new(bound).map_err(|e| Failure::new(e.to_string()))?,
            number,
            clients: args.clients,
            seed,
            history: history.clone(),
            stop: stop.clone(),
        };
        let names = names.clone();
        clients.push(match args.workload {
            Workload::Register => tokio::spawn(client_loop(register::Register::new(&names), ctx)),
            Workload::ListAppend => tokio::spawn(client_loop(
                listappend::ListAppend::new(begun.clone(), names),
                ctx,
            )),
            Workload::Bank => tokio::spawn(client_loop(bank::Bank::new(names), ctx)),
            Workload::Stream => tokio::spawn(client_loop(
                streams::Streams::new(begun.clone(), names),
                ctx,
            )),
            Workload::Follower => tokio::spawn(client_loop(
                follower::Followers::new(begun.clone(), number, names),
                ctx,
            )),
        });
    }
    let (faults, healed) = match cluster {
        Some(cluster) => {
            let faults = nemesis_loop(args, seed, cluster, &history).await;
            (faults, cluster.heal())
        }
        None => {
            tokio::time::sleep(Duration::from_secs(args.time)).await;
            (Ok(Vec::new()), Ok(()))
        }
    };
    tokio::time::sleep(SETTLE).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for c in clients {
        done.extend(
            c.await
                .map_err(|e| Failure::new(format!("a client: {e}")))?,
        );
    }
    healed?;
    Ok((history, done, faults?))
}

/// Faults until `--time` is up: healthy, fault, heal, … Returns them.
async fn nemesis_loop(
    args: &JepsenArgs,
    seed: u64,
    cluster: &mut LocalCluster,
    history: &History,
) -> Result<Vec<Fault>, Failure> {
    let mut rng = Rng::new(seed.rotate_left(17));
    let end = Instant::now() + Duration::from_secs(args.time);
    let step = Duration::from_secs(args.fault_secs);
    let mut faults = Vec::new();
    loop {
        tokio::time::sleep_until((Instant::now() + step).min(end).into()).await;
        if Instant::now() + step > end {
            tokio::time::sleep_until(end.into()).await;
            return Ok(faults);
        }
        let start_us = history.now_us();
        let kind = nemesis::turn(args.nemesis, faults.len(), args.clocks(), args.shards == 1);
        let Some((what, active)) = nemesis::begin(kind, cluster, &mut rng).await else {
            continue;
        };
        tracing::info!(fault = %what, "fault");
        tokio::time::sleep(step).await;
        let what = match nemesis::heal(active, cluster).await? {
            Some(note) => {
                tracing::warn!(note = %note, "healing");
                format!("{what}; {note}")
            }
            None => what,
        };
        faults.push(Fault {
            class: name(kind),
            what,
            start_us,
            end_us: history.now_us(),
        });
    }
}

/// Checks the history and sums the run up; writes `history.jsonl` and `report.json`.
fn judge(
    args: &JepsenArgs,
    seed: u64,
    dir: &std::path::Path,
    history: &History,
    done: &[Done],
    faults: Vec<Fault>,
) -> Result<Report, Failure> {
    let events = history.events();
    let mut lines = String::new();
    for e in &events {
        lines.push_str(&serde_json::to_string(e).unwrap_or_default());
        lines.push('\n');
    }
    let path = dir.join("history.jsonl");
    std::fs::write(&path, lines)
        .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
    let checked = judge::check(args.workload, done, &args.names(seed))?;
    let in_fault = |us: u64| faults.iter().any(|f| f.start_us <= us && us < f.end_us);
    let (during, calm): (Vec<&Done>, Vec<&Done>) = done.iter().partition(|d| in_fault(d.call_us));
    let took = |ds: Vec<&Done>| {
        latency(
            ds.iter()
                .filter(|d| d.kind != Kind::Info)
                .map(|d| d.ret_us - d.call_us)
                .collect(),
        )
    };
    let recovery_ms = faults
        .iter()
        .map(|f| {
            done.iter()
                .filter(|d| d.writes && d.kind == Kind::Ok && d.call_us >= f.start_us)
                .map(|d| (d.ret_us - f.start_us) as f64 / 1000.0)
                .reduce(f64::min)
        })
        .collect();
    let count = |k: Kind| done.iter().filter(|d| d.kind == k).count();
    let report = Report {
        workload: args.workload,
        nemesis: args.nemesis,
        target: args.target.clone(),
        shards: args.shards,
        planted_bug: args.planted_bug.clone(),
        lose_unsynced: args.lose_unsynced,
        seed,
        time_secs: args.time,
        ops: done.len(),
        ok: count(Kind::Ok),
        fail: count(Kind::Fail),
        info: count(Kind::Info),
        calm: took(calm),
        during_faults: took(during),
        faults,
        recovery_ms,
        verdict: checked.verdict,
        anomalies: checked.anomalies,
        anomaly_counts: checked.counts,
        measured: checked.measured,
        dir: dir.to_path_buf(),
    };
    let path = dir.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
    let path = dir.join("report.html");
    std::fs::write(&path, html::render(&report, done))
        .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
    Ok(report)
}
