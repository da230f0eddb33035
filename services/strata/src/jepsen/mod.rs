//! `strata jepsen`: Jepsen-style testing of real processes. It starts its own cluster of
//! `strata node` processes on loopback (Raft links through proxies it can cut), runs a
//! workload of concurrent clients for `--time` seconds while a nemesis injects faults,
//! records the history (invoke / ok / fail / info with times), heals, and checks it.
//!
//! Built: the register workload (linearizability, the WGL search of `strata-check`) under
//! the `none`, `partition`, `kill` and `pause` nemeses. Output in `--dir`: the nodes' data and
//! logs, `history.jsonl`, `report.json`; the last line printed names the verdict. Exit 0 when
//! linearizable, 1 when not (or unknown within the checker's budget), 2 for bad usage.

mod cluster;
mod history;
mod nemesis;
pub mod proxy;
mod register;
mod rng;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_check::wgl::{self, Budget, Verdict};
use strata_client::{Client, ClientConfig};

use self::cluster::LocalCluster;
use self::history::{History, Kind};
use self::nemesis::Fault;
pub use self::nemesis::NemesisKind;
use self::register::Done;
use self::rng::Rng;
use crate::Failure;

/// Longest run (`--time`), seconds.
pub const TIME_MAX_SECS: u64 = 3600;
/// Most clients.
pub const CLIENTS_MAX: u64 = 64;
/// How long the checker may search, and the memoised states it may keep.
const CHECK_TIME: Duration = Duration::from_secs(120);
const CHECK_STATES_MAX: usize = 20_000_000;
/// After the workload, with every fault healed: clients keep going this long, so the
/// history ends with the cluster whole.
const SETTLE: Duration = Duration::from_secs(3);

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One stream as a compare-and-set register (read, write, cas through expected versions).
    Register,
}

/// `strata jepsen`.
#[derive(Debug, clap::Args)]
pub struct JepsenArgs {
    /// The workload.
    #[arg(long, value_enum, default_value = "register")]
    pub workload: Workload,
    /// The faults: none, partition, kill or pause.
    #[arg(long, value_enum, default_value = "partition")]
    pub nemesis: NemesisKind,
    /// Seconds of workload under faults (1 to 3600); 3 healed seconds follow.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Concurrent clients (1 to 64).
    #[arg(long, default_value_t = 5)]
    pub clients: u64,
    /// Nodes of the cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
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
}

impl JepsenArgs {
    fn validate(&self) -> Result<(), Failure> {
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
        if !(1..=60).contains(&self.fault_secs) {
            return usage(format!("--fault-secs: 1 to 60, not {}", self.fault_secs));
        }
        Ok(())
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
    /// `linearizable`, `not-linearizable` or `unknown`.
    pub verdict: String,
    /// Where the run's files are.
    pub dir: PathBuf,
}

/// A flag value's name (`register`, `partition`, …).
fn name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// Runs `strata jepsen` (see the module docs).
pub async fn run(args: JepsenArgs) -> Result<(), Failure> {
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
    eprintln!(
        "strata jepsen: {} under {} for {} s, {} clients, {} nodes, seed {seed}, in {}",
        name(args.workload),
        name(args.nemesis),
        args.time,
        args.clients,
        args.nodes,
        dir.display()
    );
    let mut cluster = LocalCluster::start(&dir, args.nodes).await?;
    let outcome = drive(&args, seed, &mut cluster).await;
    cluster.stop().await;
    let (history, done, faults) = outcome?;
    let report = judge(&args, seed, &dir, &history, &done, faults)?;
    println!(
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|e| e.to_string())
    );
    println!(
        "strata jepsen: {} under {}: {} ({} operations: {} ok, {} fail, {} info; seed {seed}; report {}/report.json)",
        name(args.workload),
        name(args.nemesis),
        report.verdict,
        report.ops,
        report.ok,
        report.fail,
        report.info,
        dir.display()
    );
    match report.verdict.as_str() {
        "linearizable" => Ok(()),
        _ => Err(Failure::new(format!(
            "the history is {}; see {}/history.jsonl",
            report.verdict,
            dir.display()
        ))),
    }
}

type Driven = (Arc<History>, Vec<Done>, Vec<Fault>);

/// Runs the clients and the nemesis; heals; returns the history.
async fn drive(
    args: &JepsenArgs,
    seed: u64,
    cluster: &mut LocalCluster,
) -> Result<Driven, Failure> {
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(3),
        ..ClientConfig::new(cluster.client_addrs())
    };
    let mut clients = Vec::new();
    for number in 0..args.clients {
        let client = Client::new(config.clone()).map_err(|e| Failure::new(e.to_string()))?;
        clients.push(tokio::spawn(register::client_loop(
            client,
            number,
            args.clients,
            seed,
            history.clone(),
            stop.clone(),
        )));
    }
    let faults = nemesis_loop(args, seed, cluster, &history).await;
    let healed = cluster.heal();
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
        let Some((what, active)) = nemesis::begin(args.nemesis, cluster, &mut rng).await else {
            continue;
        };
        eprintln!("strata jepsen: {what}");
        tokio::time::sleep(step).await;
        nemesis::heal(active, cluster)?;
        faults.push(Fault {
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
    let ops: Vec<_> = done.iter().filter_map(|d| d.op.clone()).collect();
    let budget = Budget {
        deadline: Instant::now() + CHECK_TIME,
        states_max: CHECK_STATES_MAX,
    };
    let verdict = match wgl::check(&strata_check::models::Register, &ops, budget) {
        Verdict::Linearizable => "linearizable",
        Verdict::NotLinearizable => "not-linearizable",
        Verdict::Unknown => "unknown",
    };
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
        verdict: verdict.into(),
        dir: dir.to_path_buf(),
    };
    let path = dir.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
    Ok(report)
}
