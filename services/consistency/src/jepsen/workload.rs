//! What every workload shares: the client loop that invokes operations, records each
//! invocation and completion in the history, and keeps what the checker needs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use strata_check::models::{RegisterOp, StreamOp};
use strata_check::wgl::Operation;
use strata_check::{bank, elle, follower};
use strata_client::{Client, Error};

use super::history::{History, Kind};
use super::rng::Rng;

/// The names of a run's streams: each starts with the run's prefix — `jepsen-` on the run's
/// own cluster, `jepsen-SEED-` against given addresses (`--target`), so runs on one cluster
/// never read each other's streams.
#[derive(Debug, Clone)]
pub struct Names(Arc<str>);

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names(prefix.into())
    }

    /// The prefix's stream named `rest`.
    pub fn of(&self, rest: impl std::fmt::Display) -> String {
        format!("{}{rest}", self.0)
    }
}

/// What the checker gets of one operation.
#[derive(Debug, Clone)]
pub enum Record {
    /// A register operation (linearizability).
    Register(Operation<RegisterOp>),
    /// A list-append transaction (Elle).
    Txn(elle::Txn),
    /// A read of every bank account (conservation).
    Bank(bank::Read),
    /// An append to or read of stream K (linearizability, stream by stream).
    Stream(u64, Operation<StreamOp>),
    /// An append of the follower-read workload.
    FollowerWrite(follower::Write),
    /// A follower read.
    FollowerRead(follower::Read),
}

/// One operation as it ended, for the checker and the statistics.
#[derive(Debug, Clone)]
pub struct Done {
    /// The checker's view; `None` when it had no effect and observed nothing.
    pub record: Option<Record>,
    /// How it ended.
    pub kind: Kind,
    /// Whether it writes.
    pub writes: bool,
    /// Invocation, µs since the run began.
    pub call_us: u64,
    /// Completion, µs since the run began.
    pub ret_us: u64,
}

/// How an operation ended, as the workload tells it.
#[derive(Debug, Clone)]
pub struct Ended<O> {
    /// ok, fail or info.
    pub kind: Kind,
    /// What the history records with the completion.
    pub value: serde_json::Value,
    /// The workload's own account, for [`Workload::record`].
    pub outcome: O,
}

/// Where an operation sits in the history.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// Its process.
    pub process: u64,
    /// Its invocation's event index.
    pub call: usize,
    /// Its completion's event index.
    pub ret: usize,
    /// Its invocation, µs since the run began.
    pub call_us: u64,
    /// Its completion, µs since the run began.
    pub ret_us: u64,
}

/// One client's workload.
pub trait Workload: Send {
    /// An operation to run.
    type Input: Clone + Send;
    /// What came of it.
    type Outcome: Send;
    /// The next operation.
    fn next(&mut self, rng: &mut Rng, fresh: u64) -> Self::Input;
    /// Its name (`read`, `txn`, `transfer`, …) and argument, for the history.
    fn describe(&self, input: &Self::Input) -> (&'static str, serde_json::Value);
    /// Whether it writes (for the recovery time).
    fn writes(&self, input: &Self::Input) -> bool;
    /// Runs it.
    fn run(
        &mut self,
        client: &Client,
        input: Self::Input,
    ) -> impl Future<Output = Ended<Self::Outcome>> + Send;
    /// The checker's view of it (`None`: no effect, nothing observed).
    fn record(
        &self,
        input: &Self::Input,
        ended: &Ended<Self::Outcome>,
        at: Place,
    ) -> Option<Record>;
}

/// What a client needs to run.
pub struct Ctx {
    /// Its connection.
    pub client: Client,
    /// Its number (0-based) and how many there are.
    pub number: u64,
    /// How many clients run.
    pub clients: u64,
    /// The run's seed.
    pub seed: u64,
    /// The history.
    pub history: Arc<History>,
    /// Set when the run ends.
    pub stop: Arc<AtomicBool>,
}

/// Runs operations until `stop`, each recorded; returns them. A process whose operation ended
/// `info` never runs another: the client goes on as a new process.
pub async fn client_loop<W: Workload>(mut w: W, ctx: Ctx) -> Vec<Done> {
    let mut rng = Rng::new(ctx.seed ^ ctx.number.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut process = ctx.number;
    let mut done = Vec::new();
    let mut n: u64 = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        n += 1;
        // Unique per run: the client's number in the high digits.
        let fresh = (ctx.number + 1) * 1_000_000_000 + n;
        let input = w.next(&mut rng, fresh);
        let (f, arg) = w.describe(&input);
        let Some((call, call_us)) = ctx.history.record(process, Kind::Invoke, f, arg) else {
            break;
        };
        let ended = w.run(&ctx.client, input.clone()).await;
        let Some((ret, ret_us)) = ctx
            .history
            .record(process, ended.kind, f, ended.value.clone())
        else {
            break;
        };
        let at = Place {
            process,
            call,
            ret,
            call_us,
            ret_us,
        };
        done.push(Done {
            record: w.record(&input, &ended, at),
            kind: ended.kind,
            writes: w.writes(&input),
            call_us,
            ret_us,
        });
        if ended.kind == Kind::Info {
            process += ctx.clients;
        }
    }
    done
}

/// Whether an append's error means nothing was written.
pub fn certainly_not_written(e: &Error) -> bool {
    matches!(
        e,
        Error::WrongExpectedVersion { .. }
            | Error::InvalidArgument(_)
            | Error::LimitExceeded(_)
            | Error::NotFound(_)
            | Error::Deleted(_)
            | Error::IdempotencyConflict(_)
            | Error::Config(_)
    )
}
