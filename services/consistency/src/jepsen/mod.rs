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
use strata_check::wgl::{self, Budget, Verdict};
use strata_check::{bank as bank_check, elle};
use strata_client::{Client, ClientConfig};

use self::cluster::LocalCluster;
use self::history::{History, Kind};
use self::nemesis::Fault;
pub use self::nemesis::NemesisKind;
use self::rng::Rng;
use self::workload::{client_loop, Ctx, Done, Record};
use crate::Failure;

/// Longest run (`--time`), seconds.
pub const TIME_MAX_SECS: u64 = 3600;
/// Most clients.
pub const CLIENTS_MAX: u64 = 64;
/// How long the checker may search, and the memoised states it may keep.
const CHECK_TIME: Duration = Duration::from_secs(120);
const CHECK_STATES_MAX: usize = 20_000_000;
/// How long the search for a small witness of a register violation may take.
const WITNESS_TIME: Duration = Duration::from_secs(30);
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
        if !(1..=60).contains(&self.fault_secs) {
            return usage(format!("--fault-secs: 1 to 60, not {}", self.fault_secs));
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
    let clocks = args.nemesis == NemesisKind::Clock;
    let mut cluster = LocalCluster::start(&dir, args.nodes, args.node_env(), clocks).await?;
    let outcome = drive(args, seed, &mut cluster).await;
    cluster.stop().await;
    let (history, done, faults) = outcome?;
    judge(args, seed, &dir, &history, &done, faults)
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
    // Short timeouts, as Jepsen's clients have: an operation stuck behind a fault gives up
    // (info) within a second and the client goes on, so every node keeps being asked.
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(1),
        ..ClientConfig::new(cluster.client_addrs())
    };
    if args.workload == Workload::Bank {
        let client = Client::new(config.clone()).map_err(|e| Failure::new(e.to_string()))?;
        bank::open(&client)
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
        clients.push(match args.workload {
            Workload::Register => tokio::spawn(client_loop(register::Register::default(), ctx)),
            Workload::ListAppend => {
                tokio::spawn(client_loop(listappend::ListAppend::new(begun.clone()), ctx))
            }
            Workload::Bank => tokio::spawn(client_loop(bank::Bank::new(), ctx)),
            Workload::Stream => {
                tokio::spawn(client_loop(streams::Streams::new(begun.clone()), ctx))
            }
            Workload::Follower => tokio::spawn(client_loop(
                follower::Followers::new(begun.clone(), number),
                ctx,
            )),
        });
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
    let checked = check(args.workload, done)?;
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

/// A checker's answer.
struct Checked {
    verdict: String,
    anomalies: Vec<String>,
    counts: Vec<(String, usize)>,
    measured: serde_json::Value,
}

/// Checks the operations with the workload's checker.
fn check(workload: Workload, done: &[Done]) -> Result<Checked, Failure> {
    let records = done.iter().filter_map(|d| d.record.clone());
    Ok(match workload {
        Workload::Register => {
            let ops: Vec<_> = records
                .filter_map(|r| match r {
                    Record::Register(op) => Some(op),
                    _ => None,
                })
                .collect();
            let ops = strata_check::models::prune_unobserved_writes(ops);
            let budget = Budget {
                deadline: Instant::now() + CHECK_TIME,
                states_max: CHECK_STATES_MAX,
            };
            let verdict = match wgl::check(&strata_check::models::Register, &ops, budget) {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable => "not-linearizable",
                Verdict::Unknown => "unknown",
            };
            let anomalies = if verdict == "not-linearizable" {
                strata_check::witness::reduce(&ops, Instant::now() + WITNESS_TIME)
                    .map(|w| register_witness(&w))
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            };
            Checked {
                verdict: verdict.into(),
                counts: vec![("not-linearizable".to_string(), anomalies.len())],
                anomalies,
                measured: serde_json::Value::Null,
            }
        }
        Workload::ListAppend => {
            let txns: Vec<_> = records
                .filter_map(|r| match r {
                    Record::Txn(t) => Some(t),
                    _ => None,
                })
                .collect();
            let v = elle::check(&txns).map_err(|e| Failure::new(e.0))?;
            Checked {
                verdict: if v.valid() { "valid" } else { "invalid" }.into(),
                anomalies: v.anomalies.iter().map(|a| witness(a, &txns)).collect(),
                counts: v.counts,
                measured: serde_json::Value::Null,
            }
        }
        Workload::Stream => {
            let mut by_stream: std::collections::BTreeMap<u64, Vec<_>> = Default::default();
            for r in records {
                if let Record::Stream(k, op) = r {
                    by_stream.entry(k).or_default().push(op);
                }
            }
            let deadline = Instant::now() + CHECK_TIME;
            let mut verdict = "linearizable";
            let mut anomalies = Vec::new();
            for (k, ops) in &by_stream {
                let budget = Budget {
                    deadline,
                    states_max: CHECK_STATES_MAX,
                };
                match wgl::check(&strata_check::models::Stream, ops, budget) {
                    Verdict::Linearizable => {}
                    Verdict::NotLinearizable => {
                        verdict = "not-linearizable";
                        anomalies.push(format!(
                            "not linearizable: stream {}{k} ({} operations; its lines in history.jsonl)",
                            streams::PREFIX,
                            ops.len()
                        ));
                    }
                    Verdict::Unknown if verdict == "linearizable" => verdict = "unknown",
                    Verdict::Unknown => {}
                }
            }
            Checked {
                verdict: verdict.into(),
                counts: vec![("not-linearizable".to_string(), anomalies.len())],
                anomalies,
                measured: serde_json::Value::Null,
            }
        }
        Workload::Follower => {
            let (mut writes, mut reads) = (Vec::new(), Vec::new());
            for r in records {
                match r {
                    Record::FollowerWrite(w) => writes.push(w),
                    Record::FollowerRead(r) => reads.push(r),
                    _ => {}
                }
            }
            let v = strata_check::follower::check(&writes, &reads);
            let at = |q: f64| {
                let n = v.staleness_ms.len();
                v.staleness_ms
                    .get(((n as f64 - 1.0) * q).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            Checked {
                verdict: if v.valid() { "valid" } else { "invalid" }.into(),
                anomalies: v
                    .violations
                    .iter()
                    .map(|x| format!("{}: {}", x.class, x.explanation))
                    .collect(),
                measured: serde_json::json!({
                    "reads": v.reads,
                    "closed_reads_checked": v.closed_checked,
                    "staleness_ms": { "p50": at(0.5), "p99": at(0.99), "max": at(1.0) },
                }),
                counts: v.counts,
            }
        }
        Workload::Bank => {
            let reads: Vec<_> = records
                .filter_map(|r| match r {
                    Record::Bank(read) => Some(read),
                    _ => None,
                })
                .collect();
            let v = bank_check::check(&reads, bank::ACCOUNTS as usize, bank::TOTAL);
            Checked {
                verdict: if v.valid() { "valid" } else { "invalid" }.into(),
                anomalies: v
                    .violations
                    .iter()
                    .map(|x| format!("{}: {}", x.class, x.explanation))
                    .collect(),
                counts: v.counts,
                measured: serde_json::Value::Null,
            }
        }
    })
}

/// An anomaly with the transactions that show it, as the history has them.
fn witness(a: &elle::Anomaly, txns: &[elle::Txn]) -> String {
    let mut out = a.to_string();
    for t in &a.txns {
        if let Some(txn) = txns.get(*t) {
            let mops: Vec<String> = txn
                .mops
                .iter()
                .map(|m| match m {
                    elle::Mop::Append(k, v) => format!("append {k} {v}"),
                    elle::Mop::Read(k, Some(l)) => format!("r {k} {l:?}"),
                    elle::Mop::Read(k, None) => format!("r {k} ?"),
                })
                .collect();
            out.push_str(&format!(
                "\n  T{t} = process {}, history events {}..{}, {:?}: [{}]",
                txn.process,
                txn.call,
                txn.ret
                    .map_or("(no completion)".to_string(), |r| r.to_string()),
                txn.outcome,
                mops.join(", ")
            ));
        }
    }
    out
}

/// A register witness in words: its operations in the order invoked, with their history
/// events (`history.jsonl`'s `index`).
fn register_witness(ops: &[wgl::Operation<strata_check::models::RegisterOp>]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let mut out = format!(
        "not linearizable: no order of these {} operations explains what they saw",
        ops.len()
    );
    for o in &ops {
        out.push_str(&format!(
            "\n  process {}, history events {}..{}: {:?}",
            o.client,
            o.call,
            o.ret
                .map_or("(no completion)".to_string(), |r| r.to_string()),
            o.op
        ));
    }
    out
}
