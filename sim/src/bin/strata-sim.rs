//! `strata-sim check-history --model cas-register|kv|stream FILE`: prints `linearizable`,
//! `not-linearizable` or `unknown` as its last line; exit status 0, 1 or 2 (and 3 for a file
//! that cannot be read or parsed).
//!
//! `strata-sim run --seed S`: replays one simulated run with its trace; the last line is
//! `trace-hash: HEX`. `--shards N` (2–8) simulates a sharded cluster whose slot ranges move.
//! `strata-sim run --seeds N`: a sweep; prints seeds/s, the fault classes
//! exercised, and every failing seed with the property it broke. Exit status 1 on a failure.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use strata_sim::run::{run, FaultSet, RunConfig, RunReport};
use strata_sim::wgl::Verdict;
use strata_sim::{check_history, Limits, ModelKind};

#[derive(Debug, Parser)]
#[command(
    name = "strata-sim",
    version,
    about = "Strata's deterministic simulator and history checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Model {
    CasRegister,
    Kv,
    Stream,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check one history for linearizability.
    CheckHistory {
        /// The sequential model (and so the file format).
        #[arg(long, value_enum)]
        model: Model,
        /// Seconds the search may take before answering `unknown`.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Most memoised search states per key (bounds memory; ~100 bytes each).
        #[arg(long, default_value_t = 20_000_000)]
        states_max: usize,
        /// The history file.
        file: PathBuf,
    },
    /// Simulate whole clusters: one seed with its trace, or a sweep of many.
    Run {
        /// Replay this seed, printing its trace; the last line is `trace-hash: HEX`.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Sweep this many seeds (from --first, else from a random start that is printed).
        #[arg(long)]
        seeds: Option<u64>,
        /// First seed of a sweep.
        #[arg(long)]
        first: Option<u64>,
        /// Stop a sweep after this many seconds (wall time), whatever --seeds says.
        #[arg(long)]
        time_limit: Option<u64>,
        /// Fault classes: all, none, or a comma list of network, partitions, crashes, disk,
        /// clock, membership.
        #[arg(long, default_value = "all")]
        faults: String,
        /// Simulated seconds of the safety phase (faults and clients).
        #[arg(long, default_value_t = 20)]
        safety_secs: u64,
        /// Simulated seconds the cluster has to recover in the liveness phase.
        #[arg(long, default_value_t = 30)]
        liveness_secs: u64,
        /// With --seed: no trace, only the summary and the hash.
        #[arg(long)]
        quiet: bool,
        /// Plant a bug: every disk acknowledges syncs without persisting (to see the checkers
        /// catch lost data).
        #[arg(long)]
        lying_disks: bool,
        /// Shards per node: 1 simulates one Raft group; 2 to 8 a sharded cluster (four
        /// nodes, a group of three per shard and the metadata group on all four) whose slot
        /// ranges move between the shards under the faults (network, partitions, crashes,
        /// clock).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
        shards: u32,
        /// With --shards: the mover driver moves replicas between the four nodes too (as CI's
        /// sharded sweep does).
        #[arg(long)]
        replica_moves: bool,
        /// With --seed: also print the nodes' own logs at this filter (e.g. `warn`,
        /// `openraft=debug`) to stderr.
        #[arg(long)]
        log: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckHistory {
            model,
            time_limit,
            states_max,
            file,
        } => check(model, time_limit, states_max, &file),
        Command::Run {
            seed,
            seeds,
            first,
            time_limit,
            faults,
            safety_secs,
            liveness_secs,
            quiet,
            log,
            lying_disks,
            shards,
            replica_moves,
        } => {
            if let Some(filter) = log {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .without_time()
                    .with_writer(std::io::stderr)
                    .init();
            }
            // What a failed seed of a sweep must be replayed with besides `--seed`.
            let defaults = RunConfig::new(0);
            let mut replay_flags = String::new();
            if faults != "all" {
                replay_flags += &format!(" --faults {faults}");
            }
            if Duration::from_secs(safety_secs) != defaults.safety {
                replay_flags += &format!(" --safety-secs {safety_secs}");
            }
            if Duration::from_secs(liveness_secs) != defaults.liveness {
                replay_flags += &format!(" --liveness-secs {liveness_secs}");
            }
            if lying_disks {
                replay_flags += " --lying-disks";
            }
            if shards != 1 {
                replay_flags += &format!(" --shards {shards}");
            }
            if replica_moves {
                replay_flags += " --replica-moves";
            }
            let faults = match FaultSet::parse(&faults) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: --faults: {e}");
                    return ExitCode::from(2);
                }
            };
            let config = |seed| RunConfig {
                faults,
                safety: Duration::from_secs(safety_secs),
                liveness: Duration::from_secs(liveness_secs),
                lying_disks,
                shards,
                replica_moves,
                ..RunConfig::new(seed)
            };
            match (seed, seeds) {
                (Some(seed), _) => replay(RunConfig {
                    print: !quiet,
                    ..config(seed)
                }),
                (None, Some(0)) => {
                    eprintln!("error: --seeds must be at least 1");
                    ExitCode::from(2)
                }
                (None, Some(n)) => sweep(
                    n,
                    first,
                    time_limit.map(Duration::from_secs),
                    config,
                    &replay_flags,
                ),
                (None, None) => {
                    eprintln!("error: give --seed S or --seeds N");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn print_violations(report: &RunReport) {
    for v in &report.violations {
        println!(
            "seed {}: VIOLATED {}: {}",
            report.seed, v.property, v.detail
        );
    }
}

fn replay(config: RunConfig) -> ExitCode {
    let report = run(&config);
    print_violations(&report);
    println!(
        "seed {}: {} · {} ops, {} acknowledged appends, {} entries, {:.1} s simulated, faults {:?}",
        report.seed,
        if report.violations.is_empty() {
            "ok"
        } else {
            "FAILED"
        },
        report.ops,
        report.acked,
        report.entries,
        report.simulated.as_secs_f64(),
        report.faults
    );
    println!("trace-hash: {:016x}", report.trace_hash);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Wall time one seed of a sweep may take before it counts as hung (a seed takes ~50 ms).
const SEED_WALL_MAX: Duration = Duration::from_secs(120);

fn sweep(
    count: u64,
    first: Option<u64>,
    time_limit: Option<Duration>,
    config: impl Fn(u64) -> RunConfig,
    replay_flags: &str,
) -> ExitCode {
    let first = first.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!(
        "sweep: seeds {first}..{} (at most {count})",
        first.wrapping_add(count)
    );
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    let (mut done, mut ops, mut unknown) = (0u64, 0usize, 0usize);
    for i in 0..count {
        if time_limit.is_some_and(|t| started.elapsed() >= t) {
            println!("sweep: time limit reached");
            break;
        }
        let seed = first.wrapping_add(i);
        // Each seed on its own thread, under a watchdog: a run that deadlocks is a failure
        // too (its thread is left behind).
        let (tx, rx) = std::sync::mpsc::channel();
        let one = config(seed);
        std::thread::spawn(move || {
            let _ = tx.send(run(&one));
        });
        let report = match rx.recv_timeout(SEED_WALL_MAX) {
            Ok(report) => report,
            Err(_) => {
                println!(
                    "seed {seed}: VIOLATED no hang: no result within {SEED_WALL_MAX:?} of wall time"
                );
                println!(
                    "seed {seed}: FAILED — replay with: strata-sim run --seed {seed}{replay_flags}"
                );
                failed.push(seed);
                done += 1;
                continue;
            }
        };
        done += 1;
        ops += report.ops;
        unknown += report.unknown_streams;
        for (class, n) in &report.faults {
            *faults.entry(class).or_default() += n;
        }
        if !report.violations.is_empty() {
            print_violations(&report);
            println!(
                "seed {seed}: FAILED — replay with: strata-sim run --seed {seed}{replay_flags}"
            );
            failed.push(seed);
        }
        // Progress: a line rewritten in place on a terminal, a line every 30 s in a log.
        let rate = done as f64 / started.elapsed().as_secs_f64();
        if tty && done % 10 == 0 {
            eprint!(
                "\r{done} seeds, {rate:.2} seeds/s, {} failed   ",
                failed.len()
            );
            let _ = std::io::stderr().flush();
        } else if !tty && last_line.elapsed() >= Duration::from_secs(30) {
            last_line = Instant::now();
            println!("{done} seeds, {rate:.2} seeds/s, {} failed", failed.len());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if tty {
        eprintln!();
    }
    println!(
        "sweep: {done} seeds in {secs:.1} s ({:.2} seeds/s), {ops} operations, {unknown} stream checks unknown",
        done as f64 / secs.max(1e-9)
    );
    println!("faults exercised:");
    for (class, n) in &faults {
        println!("  {class:<18} {n}");
    }
    if failed.is_empty() {
        println!("sweep: all {done} seeds passed");
        ExitCode::SUCCESS
    } else {
        println!("sweep: {} FAILED: {failed:?}", failed.len());
        ExitCode::from(1)
    }
}

fn check(model: Model, time_limit: u64, states_max: usize, file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading {}: {e}", file.display());
            return ExitCode::from(3);
        }
    };
    let model = match model {
        Model::CasRegister => ModelKind::CasRegister,
        Model::Kv => ModelKind::Kv,
        Model::Stream => ModelKind::Stream,
    };
    let limits = Limits {
        time: Duration::from_secs(time_limit.max(1)),
        states_max,
    };
    let report = match check_history(model, &text, limits) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(3);
        }
    };
    if let Some(part) = &report.culprit {
        eprintln!("partition: {part} (of {})", report.partitions);
    }
    let (word, code) = match report.verdict {
        Verdict::Linearizable => ("linearizable", 0),
        Verdict::NotLinearizable => ("not-linearizable", 1),
        Verdict::Unknown => ("unknown", 2),
    };
    println!("{word}");
    ExitCode::from(code)
}
