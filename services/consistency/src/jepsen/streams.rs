//! The stream-append workload: Strata's own model. Keys are streams (`stream-K` after the run's prefix, a
//! window of [`KEYS_ACTIVE`] moving on every [`OPS_PER_KEY_STEP`] operations so each stays
//! short); each client appends one or two events (unique values), half the time expecting the
//! last version it saw, else any version, and reads whole streams (linearizable). An append
//! answers its first version, or a wrong expected version with the stream's actual one; both
//! are checked. Checked stream by stream against `strata_check::models::Stream` with the WGL
//! search (streams are independent, so each is linearizable on its own or not at all).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use strata_check::models::StreamOp;
use strata_check::wgl::Operation;
use strata_client::{event, pb, Client, Error, ExpectedVersion};

use super::history::Kind;
use super::rng::Rng;
use super::workload::{certainly_not_written, Ended, Names, Place, Record, Workload};

/// The streams' names after the run's prefix: `stream-0`, `stream-1`, ….
pub const PREFIX: &str = "stream-";
/// Streams in use at once.
pub const KEYS_ACTIVE: u64 = 4;
/// Operations (of all clients) after which the window moves by one stream.
pub const OPS_PER_KEY_STEP: u64 = 100;

/// An operation.
#[derive(Debug, Clone)]
pub enum Input {
    /// Read stream `k` whole.
    Read(u64),
    /// Append these values to stream `k`, expecting this version (`None`: any).
    Append(u64, Option<Option<u64>>, Vec<String>),
}

/// What it observed: the checker's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    op: Option<StreamOp>,
}

/// One client's stream-append workload: the last version it saw of each stream.
pub struct Streams {
    begun: Arc<AtomicU64>,
    seen: HashMap<u64, Option<u64>>,
    names: Names,
}

impl Streams {
    /// A client's workload; `begun` is shared by all clients.
    pub fn new(begun: Arc<AtomicU64>, names: Names) -> Streams {
        Streams {
            begun,
            seen: HashMap::new(),
            names,
        }
    }

    fn name(&self, k: u64) -> String {
        self.names.of(format_args!("{PREFIX}{k}"))
    }
}

async fn read(client: &Client, stream: &str) -> Result<Vec<String>, Error> {
    let page = client
        .read(pb::ReadRequest {
            stream: stream.to_string(),
            limit: 4096,
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await;
    match page {
        Ok(p) if p.truncated || p.events.len() >= 4096 => Err(Error::LimitExceeded(format!(
            "{stream} holds more than a page"
        ))),
        Ok(p) => Ok(p
            .events
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect()),
        Err(Error::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn expected_wire(e: Option<Option<u64>>) -> ExpectedVersion {
    match e {
        None => ExpectedVersion::Any,
        Some(None) => ExpectedVersion::NoStream,
        Some(Some(v)) => ExpectedVersion::Exact(v),
    }
}

impl Workload for Streams {
    type Input = Input;
    type Outcome = Outcome;

    fn next(&mut self, rng: &mut Rng, fresh: u64) -> Input {
        let base = self.begun.fetch_add(1, Ordering::Relaxed) / OPS_PER_KEY_STEP;
        let k = base + rng.below(KEYS_ACTIVE);
        if rng.below(2) == 0 {
            return Input::Read(k);
        }
        let values = (0..1 + rng.below(2))
            .map(|i| (fresh * 4 + i).to_string())
            .collect();
        let expected = match (rng.below(2), self.seen.get(&k)) {
            (0, Some(v)) => Some(*v),
            _ => None,
        };
        Input::Append(k, expected, values)
    }

    fn describe(&self, input: &Input) -> (&'static str, serde_json::Value) {
        match input {
            Input::Read(k) => ("read", json!({ "stream": self.name(*k) })),
            Input::Append(k, e, vs) => (
                "append",
                json!({ "stream": self.name(*k), "expected": e, "events": vs }),
            ),
        }
    }

    fn writes(&self, input: &Input) -> bool {
        matches!(input, Input::Append(..))
    }

    async fn run(&mut self, client: &Client, input: Input) -> Ended<Outcome> {
        match input {
            Input::Read(k) => match read(client, &self.name(k)).await {
                Ok(events) => {
                    self.seen.insert(k, (events.len() as u64).checked_sub(1));
                    Ended {
                        kind: Kind::Ok,
                        value: json!(events),
                        outcome: Outcome {
                            op: Some(StreamOp::Read(Some(events))),
                        },
                    }
                }
                Err(e) => Ended {
                    kind: Kind::Fail,
                    value: json!(e.to_string()),
                    outcome: Outcome { op: None },
                },
            },
            Input::Append(k, expected, values) => {
                let events = values.iter().map(|v| event("append", v.clone())).collect();
                let answer = client
                    .append(&self.name(k), expected_wire(expected), events)
                    .await;
                let op = |result| StreamOp::Append {
                    expected,
                    events: values.clone(),
                    result,
                };
                match answer {
                    Ok(r) => {
                        let first = r.streams.first().map_or(0, |s| s.first_version);
                        self.seen.insert(k, Some(first + values.len() as u64 - 1));
                        Ended {
                            kind: Kind::Ok,
                            value: json!({ "first": first }),
                            outcome: Outcome {
                                op: Some(op(Some(Ok(first)))),
                            },
                        }
                    }
                    Err(Error::WrongExpectedVersion { actual, .. }) => {
                        self.seen.insert(k, actual);
                        Ended {
                            kind: Kind::Fail,
                            value: json!({ "actual": actual }),
                            outcome: Outcome {
                                op: Some(op(Some(Err(actual)))),
                            },
                        }
                    }
                    Err(e) if certainly_not_written(&e) => Ended {
                        kind: Kind::Fail,
                        value: json!(e.to_string()),
                        outcome: Outcome { op: None },
                    },
                    Err(e) => Ended {
                        kind: Kind::Info,
                        value: json!(e.to_string()),
                        outcome: Outcome { op: Some(op(None)) },
                    },
                }
            }
        }
    }

    fn record(&self, input: &Input, ended: &Ended<Outcome>, at: Place) -> Option<Record> {
        let k = match input {
            Input::Read(k) | Input::Append(k, ..) => *k,
        };
        let op = ended.outcome.op.clone()?;
        Some(Record::Stream(
            k,
            Operation {
                client: at.process,
                op,
                call: at.call,
                ret: (ended.kind != Kind::Info).then_some(at.ret),
            },
        ))
    }
}
