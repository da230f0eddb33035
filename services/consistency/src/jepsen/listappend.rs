//! The list-append workload (Elle's): keys are streams (`{la}-K` after the run's prefix), a key's list is its
//! events' data, and each client runs transactions of three shapes:
//!
//! - read: a snapshot of 1–3 keys ([`super::snapshot`]);
//! - append: one `AppendMulti` of 1–2 fresh values to each of 1–3 keys, any version;
//! - read-modify-write: a snapshot of 1–2 keys, then one `AppendMulti` of a fresh value to
//!   each, expecting the versions read — it commits only if no other append came in between.
//!
//! The keys in use slide along as transactions accumulate (a window of [`KEYS_ACTIVE`] keys,
//! moving on every [`TXNS_PER_KEY_STEP`] transactions), so each list stays short. The history
//! is checked for strict serializability with `strata_check::elle`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use strata_check::elle::{Key, Mop, Outcome as TxnOutcome, Txn, Value};
use strata_client::{event, pb, Client, ExpectedVersion};

use super::history::Kind;
use super::rng::Rng;
use super::snapshot::Snapshots;
use super::workload::{certainly_not_written, Ended, Names, Place, Record, Workload};

/// The keys' streams after the run's prefix: `{la}-0`, `{la}-1`, … (one routing key: one
/// shard, so a snapshot is one log's prefix and an `AppendMulti` over them is atomic).
pub const PREFIX: &str = "{la}-";
/// Keys in use at once.
pub const KEYS_ACTIVE: u64 = 6;
/// Transactions (of all clients) after which the window of keys moves by one.
pub const TXNS_PER_KEY_STEP: u64 = 64;

fn stream(names: &Names, k: Key) -> String {
    names.of(format_args!("{PREFIX}{k}"))
}

/// A transaction to run.
#[derive(Debug, Clone)]
pub enum Input {
    /// A snapshot of these keys.
    Read(Vec<Key>),
    /// Appends of these values to these keys.
    Append(Vec<(Key, Vec<Value>)>),
    /// A snapshot of these keys, then one value appended to each at the versions read.
    Rmw(Vec<(Key, Value)>),
}

/// What it did: its micro-operations as they ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    mops: Vec<Mop>,
}

/// One client's list-append workload.
pub struct ListAppend {
    snapshots: Snapshots,
    /// Transactions begun by all clients.
    begun: Arc<AtomicU64>,
    names: Names,
}

impl ListAppend {
    /// A client's workload; `begun` is shared by all clients.
    pub fn new(begun: Arc<AtomicU64>, names: Names) -> ListAppend {
        ListAppend {
            snapshots: Snapshots::new(&names.of(PREFIX)),
            begun,
            names,
        }
    }

    /// 1 to `most` distinct keys of the current window.
    fn keys(&self, rng: &mut Rng, most: u64) -> Vec<Key> {
        let base = self.begun.fetch_add(1, Ordering::Relaxed) / TXNS_PER_KEY_STEP;
        let n = 1 + rng.below(most);
        let mut keys: Vec<Key> = Vec::new();
        while (keys.len() as u64) < n {
            let k = base + rng.below(KEYS_ACTIVE);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    /// A snapshot of `keys`: a read of each, and each one's version (`None`: no stream).
    async fn snapshot(
        &mut self,
        client: &Client,
        keys: &[Key],
    ) -> Result<(Vec<Mop>, Vec<Option<u64>>), String> {
        let names: Vec<String> = keys.iter().map(|k| stream(&self.names, *k)).collect();
        let states = self
            .snapshots
            .read(client, &names, false)
            .await
            .map_err(|e| e.to_string())?;
        let versions = states.iter().map(|s| s.version).collect();
        let reads = keys
            .iter()
            .zip(states)
            .map(|(k, s)| Mop::Read(*k, Some(s.data.iter().map(|d| parse(d)).collect())))
            .collect();
        Ok((reads, versions))
    }
}

/// An element's value (`u64::MAX` for data that is not one: a garbage read).
fn parse(data: &[u8]) -> Value {
    std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX)
}

fn mops_json(mops: &[Mop]) -> serde_json::Value {
    mops.iter()
        .map(|m| match m {
            Mop::Append(k, v) => json!(["append", k, v]),
            Mop::Read(k, l) => json!(["r", k, l]),
        })
        .collect()
}

/// One `AppendMulti`: ok, certainly not written (fail), or unknown (info).
async fn append(
    client: &Client,
    names: &Names,
    appends: Vec<(Key, Vec<Value>, ExpectedVersion)>,
) -> Kind {
    let request = pb::AppendMultiRequest {
        streams: appends
            .into_iter()
            .map(|(k, values, expected)| pb::StreamAppend {
                stream: stream(names, k),
                expected: Some(expected.wire()),
                events: values
                    .iter()
                    .map(|v| event("append", v.to_string()))
                    .collect(),
            })
            .collect(),
    };
    match client.append_multi(request).await {
        Ok(_) => Kind::Ok,
        Err(e) if certainly_not_written(&e) => Kind::Fail,
        Err(_) => Kind::Info,
    }
}

fn unobserved(mops: &[Mop]) -> Vec<Mop> {
    mops.iter()
        .map(|m| match m {
            Mop::Read(k, _) => Mop::Read(*k, None),
            other => other.clone(),
        })
        .collect()
}

impl Workload for ListAppend {
    type Input = Input;
    type Outcome = Outcome;

    fn next(&mut self, rng: &mut Rng, fresh: u64) -> Input {
        // Room for a few values per transaction.
        let value = |i: u64| fresh * 8 + i;
        match rng.below(10) {
            0..=3 => Input::Read(self.keys(rng, 3)),
            4..=6 => {
                let mut i = 0;
                let keys = self.keys(rng, 3);
                Input::Append(
                    keys.into_iter()
                        .map(|k| {
                            let n = 1 + rng.below(2);
                            let vs = (i..i + n).map(value).collect();
                            i += n;
                            (k, vs)
                        })
                        .collect(),
                )
            }
            _ => Input::Rmw(
                self.keys(rng, 2)
                    .into_iter()
                    .zip(0..)
                    .map(|(k, i)| (k, value(i)))
                    .collect(),
            ),
        }
    }

    fn describe(&self, input: &Input) -> (&'static str, serde_json::Value) {
        let mops: Vec<Mop> = match input {
            Input::Read(keys) => keys.iter().map(|k| Mop::Read(*k, None)).collect(),
            Input::Append(appends) => appends
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(|v| Mop::Append(*k, *v)))
                .collect(),
            Input::Rmw(kvs) => kvs
                .iter()
                .map(|(k, _)| Mop::Read(*k, None))
                .chain(kvs.iter().map(|(k, v)| Mop::Append(*k, *v)))
                .collect(),
        };
        ("txn", mops_json(&mops))
    }

    fn writes(&self, input: &Input) -> bool {
        !matches!(input, Input::Read(_))
    }

    async fn run(&mut self, client: &Client, input: Input) -> Ended<Outcome> {
        let (kind, mops, why) = match input {
            Input::Read(keys) => match self.snapshot(client, &keys).await {
                Ok((mops, _)) => (Kind::Ok, mops, None),
                Err(e) => (Kind::Fail, Vec::new(), Some(e)),
            },
            Input::Append(appends) => {
                let mops = appends
                    .iter()
                    .flat_map(|(k, vs)| vs.iter().map(|v| Mop::Append(*k, *v)))
                    .collect();
                let with = appends
                    .into_iter()
                    .map(|(k, vs)| (k, vs, ExpectedVersion::Any))
                    .collect();
                (append(client, &self.names, with).await, mops, None)
            }
            Input::Rmw(kvs) => self.rmw(client, kvs).await,
        };
        let value = match (&why, kind) {
            (Some(e), _) => json!(e),
            (None, Kind::Info) => mops_json(&unobserved(&mops)),
            (None, _) => mops_json(&mops),
        };
        Ended {
            kind,
            value,
            outcome: Outcome { mops },
        }
    }

    fn record(&self, _input: &Input, ended: &Ended<Outcome>, at: Place) -> Option<Record> {
        if ended.outcome.mops.is_empty() {
            return None;
        }
        let (outcome, ret, mops) = match ended.kind {
            Kind::Ok => (TxnOutcome::Ok, Some(at.ret), ended.outcome.mops.clone()),
            Kind::Fail => (TxnOutcome::Fail, Some(at.ret), ended.outcome.mops.clone()),
            _ => (TxnOutcome::Info, None, unobserved(&ended.outcome.mops)),
        };
        Some(Record::Txn(Txn {
            process: at.process,
            call: at.call,
            ret,
            outcome,
            mops,
        }))
    }
}

impl ListAppend {
    /// A snapshot of the keys, then one append to each at the versions read.
    async fn rmw(
        &mut self,
        client: &Client,
        kvs: Vec<(Key, Value)>,
    ) -> (Kind, Vec<Mop>, Option<String>) {
        let keys: Vec<Key> = kvs.iter().map(|(k, _)| *k).collect();
        let (mut mops, versions) = match self.snapshot(client, &keys).await {
            Ok(s) => s,
            Err(e) => return (Kind::Fail, Vec::new(), Some(e)),
        };
        mops.extend(kvs.iter().map(|(k, v)| Mop::Append(*k, *v)));
        let with = kvs
            .iter()
            .zip(versions)
            .map(|((k, v), version)| {
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                (*k, vec![*v], expected)
            })
            .collect();
        let kind = append(client, &self.names, with).await;
        (kind, mops, None)
    }
}
