//! The bank workload: [`ACCOUNTS`] accounts, each a stream (`{bank}-N` after the run's prefix) whose last event
//! holds its balance (so a read costs one event per account however long the run). Set up
//! with one `AppendMulti` opening each with [`OPENING`]. Each client then runs:
//!
//! - read: a snapshot of every account ([`super::snapshot`]) — the balances;
//! - transfer: a snapshot of two accounts; if the first holds at least the amount (1 to
//!   [`AMOUNT_MAX`]), one `AppendMulti` of both new balances, expecting the versions read (so
//!   no concurrent transfer can overdraw the account or be overwritten by another).
//!
//! Checked with `strata_check::bank`: every read sums to `ACCOUNTS × OPENING`, none negative.

use serde_json::json;
use strata_check::bank;
use strata_client::{event, pb, Client, Error, ExpectedVersion};

use super::history::Kind;
use super::rng::Rng;
use super::snapshot::Snapshots;
use super::workload::{certainly_not_written, Ended, Names, Place, Record, Workload};

/// The accounts' streams, after the run's prefix: `{bank}-0`, `{bank}-1`, … (one routing key:
/// one shard, so a snapshot is one log's prefix).
pub const PREFIX: &str = "{bank}-";
/// How many accounts.
pub const ACCOUNTS: u64 = 5;
/// Each account's opening balance.
pub const OPENING: i64 = 10;
/// The largest transfer.
pub const AMOUNT_MAX: u64 = 5;
/// Money in the bank, always.
pub const TOTAL: i64 = ACCOUNTS as i64 * OPENING;

fn stream(names: &Names, a: u64) -> String {
    names.of(format_args!("{PREFIX}{a}"))
}

fn amount(data: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::InvalidArgument(format!("an account holds {data:?}")))
}

/// Opens the accounts (once: a second run's opening finds them open). Retries until the
/// cluster answers.
pub async fn open(client: &Client, names: &Names) -> Result<(), Error> {
    let request = pb::AppendMultiRequest {
        streams: (0..ACCOUNTS)
            .map(|a| pb::StreamAppend {
                stream: stream(names, a),
                expected: Some(ExpectedVersion::NoStream.wire()),
                events: vec![event("deposit", OPENING.to_string())],
            })
            .collect(),
    };
    let mut last = None;
    for _ in 0..20 {
        match client.append_multi(request.clone()).await {
            Ok(_) | Err(Error::WrongExpectedVersion { .. }) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Err(last.unwrap_or_else(|| Error::Unavailable("the accounts could not be opened".into())))
}

/// An operation.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    /// Every balance.
    Read,
    /// Move `amount` from one account to another.
    Transfer {
        /// From.
        from: u64,
        /// To.
        to: u64,
        /// How much.
        amount: i64,
    },
}

/// What a read saw (the balances), if it was a read that completed.
#[derive(Debug, Clone)]
pub struct Outcome {
    balances: Option<Vec<i64>>,
}

/// One client's bank workload.
pub struct Bank {
    snapshots: Snapshots,
    names: Names,
}

impl Bank {
    /// A client's workload.
    pub fn new(names: Names) -> Bank {
        Bank {
            snapshots: Snapshots::new(&names.of(PREFIX)),
            names,
        }
    }

    /// Balances and versions of `accounts`, as of one moment.
    async fn balances(
        &mut self,
        client: &Client,
        accounts: &[u64],
    ) -> Result<Vec<(i64, Option<u64>)>, Error> {
        let names: Vec<String> = accounts.iter().map(|a| stream(&self.names, *a)).collect();
        let states = self.snapshots.read(client, &names, true).await?;
        states
            .into_iter()
            .map(|s| match s.data.last() {
                Some(d) => Ok((amount(d)?, s.version)),
                None => Err(Error::NotFound("an account is not open".into())),
            })
            .collect()
    }

    async fn transfer(
        &mut self,
        client: &Client,
        from: u64,
        to: u64,
        amount: i64,
    ) -> Ended<Outcome> {
        let ended = |kind, value| Ended {
            kind,
            value,
            outcome: Outcome { balances: None },
        };
        let read = match self.balances(client, &[from, to]).await {
            Ok(r) => r,
            Err(e) => return ended(Kind::Fail, json!(e.to_string())),
        };
        let [(balance, v_from), (to_balance, v_to)] = read[..] else {
            return ended(Kind::Fail, json!("two accounts read, not two answers"));
        };
        if balance < amount {
            return ended(Kind::Fail, json!(format!("insufficient: {balance}")));
        }
        let leg = |a: u64, version: Option<u64>, balance: i64| pb::StreamAppend {
            stream: stream(&self.names, a),
            expected: Some(
                version
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                    .wire(),
            ),
            events: vec![event("balance", balance.to_string())],
        };
        let request = pb::AppendMultiRequest {
            streams: vec![
                leg(from, v_from, balance - amount),
                leg(to, v_to, to_balance + amount),
            ],
        };
        match client.append_multi(request).await {
            Ok(_) => ended(Kind::Ok, json!([from, to, amount])),
            Err(e) if certainly_not_written(&e) => ended(Kind::Fail, json!(e.to_string())),
            Err(e) => ended(Kind::Info, json!(e.to_string())),
        }
    }
}

impl Workload for Bank {
    type Input = Input;
    type Outcome = Outcome;

    fn next(&mut self, rng: &mut Rng, _fresh: u64) -> Input {
        if rng.below(2) == 0 {
            return Input::Read;
        }
        let from = rng.below(ACCOUNTS);
        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        Input::Transfer {
            from,
            to,
            amount: 1 + rng.below(AMOUNT_MAX) as i64,
        }
    }

    fn describe(&self, input: &Input) -> (&'static str, serde_json::Value) {
        match input {
            Input::Read => ("read", json!(null)),
            Input::Transfer { from, to, amount } => ("transfer", json!([from, to, amount])),
        }
    }

    fn writes(&self, input: &Input) -> bool {
        matches!(input, Input::Transfer { .. })
    }

    async fn run(&mut self, client: &Client, input: Input) -> Ended<Outcome> {
        match input {
            Input::Read => {
                let all: Vec<u64> = (0..ACCOUNTS).collect();
                match self.balances(client, &all).await {
                    Ok(b) => {
                        let balances: Vec<i64> = b.into_iter().map(|(sum, _)| sum).collect();
                        Ended {
                            kind: Kind::Ok,
                            value: json!(balances),
                            outcome: Outcome {
                                balances: Some(balances),
                            },
                        }
                    }
                    Err(e) => Ended {
                        kind: Kind::Fail,
                        value: json!(e.to_string()),
                        outcome: Outcome { balances: None },
                    },
                }
            }
            Input::Transfer { from, to, amount } => self.transfer(client, from, to, amount).await,
        }
    }

    fn record(&self, _input: &Input, ended: &Ended<Outcome>, at: Place) -> Option<Record> {
        ended.outcome.balances.clone().map(|balances| {
            Record::Bank(bank::Read {
                index: at.ret,
                balances,
            })
        })
    }
}
