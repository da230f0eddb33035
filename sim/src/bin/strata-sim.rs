//! `strata-sim check-history --model cas-register|kv|stream FILE`: prints `linearizable`,
//! `not-linearizable` or `unknown` as its last line; exit status 0, 1 or 2 (and 3 for a file
//! that cannot be read or parsed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use strata_sim::wgl::Verdict;
use strata_sim::{check_history, Limits, ModelKind};

#[derive(Debug, Parser)]
#[command(name = "strata-sim", version, about = "Strata's history checkers")]
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
}

fn main() -> ExitCode {
    let Command::CheckHistory {
        model,
        time_limit,
        states_max,
        file,
    } = Cli::parse().command;
    let text = match std::fs::read_to_string(&file) {
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
