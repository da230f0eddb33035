//! The follower-read workload: a few streams (`follower-K` after the run's prefix, a window of
//! [`KEYS_ACTIVE`] moving on every [`OPS_PER_KEY_STEP`] operations) that clients append to
//! (through their node, forwarded to the leader) and read at `Consistency::Follower` from the
//! node they are bound to — whole streams, or as of a timestamp [`AS_OF_LAG_MS`] in the past
//! (then the answer's closed timestamp says whether it is final). Checked with
//! `strata_check::follower`: prefix consistency, monotonic reads per client, closed reads that
//! match the stream, no phantoms; staleness measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use strata_check::follower;
use strata_client::{event, pb, Client, Error, ExpectedVersion};

use super::history::Kind;
use super::rng::Rng;
use super::workload::{certainly_not_written, Ended, Names, Place, Record, Workload};

/// The streams' names after the run's prefix: `follower-0`, `follower-1`, ….
pub const PREFIX: &str = "follower-";
/// Streams in use at once.
pub const KEYS_ACTIVE: u64 = 2;
/// Operations (of all clients) after which the window moves by one stream.
pub const OPS_PER_KEY_STEP: u64 = 300;
/// How far in the past an as-of read looks, milliseconds.
pub const AS_OF_LAG_MS: u64 = 1000;

/// An operation.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    /// Append a value to stream K.
    Append(u64, u64),
    /// Read stream K at follower consistency.
    Read(u64),
    /// Read stream K as of a time `AS_OF_LAG_MS` ago, at follower consistency.
    ReadAsOf(u64),
}

/// What came of it.
#[derive(Debug, Clone)]
pub struct Outcome {
    events: Vec<(u64, u64)>,
    as_of: Option<(u64, u64)>,
}

/// One client's follower-read workload.
pub struct Followers {
    begun: Arc<AtomicU64>,
    client: u64,
    names: Names,
}

impl Followers {
    /// A client's workload; `begun` is shared by all clients.
    pub fn new(begun: Arc<AtomicU64>, client: u64, names: Names) -> Followers {
        Followers {
            begun,
            client,
            names,
        }
    }

    fn name(&self, k: u64) -> String {
        self.names.of(format_args!("{PREFIX}{k}"))
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn read(
    client: &Client,
    stream: &str,
    as_of: Option<u64>,
) -> Result<pb::ReadResponse, Error> {
    let r = client
        .read(pb::ReadRequest {
            stream: stream.to_string(),
            limit: 4096,
            consistency: pb::Consistency::Follower as i32,
            as_of: as_of.map(|t| pb::AsOf {
                point: Some(pb::as_of::Point::TimestampUs(t)),
            }),
            ..Default::default()
        })
        .await;
    match r {
        Ok(p) if p.truncated || p.events.len() >= 4096 => Err(Error::LimitExceeded(format!(
            "{stream} holds more than a page"
        ))),
        Err(Error::NotFound(_)) => Ok(pb::ReadResponse::default()),
        other => other,
    }
}

impl Workload for Followers {
    type Input = Input;
    type Outcome = Outcome;

    fn next(&mut self, rng: &mut Rng, fresh: u64) -> Input {
        let base = self.begun.fetch_add(1, Ordering::Relaxed) / OPS_PER_KEY_STEP;
        let k = base + rng.below(KEYS_ACTIVE);
        match rng.below(20) {
            0..=7 => Input::Append(k, fresh),
            8..=16 => Input::Read(k),
            _ => Input::ReadAsOf(k),
        }
    }

    fn describe(&self, input: &Input) -> (&'static str, serde_json::Value) {
        match input {
            Input::Append(k, v) => ("append", json!({ "stream": self.name(*k), "value": v })),
            Input::Read(k) => ("read", json!({ "stream": self.name(*k) })),
            Input::ReadAsOf(k) => ("read-as-of", json!({ "stream": self.name(*k) })),
        }
    }

    fn writes(&self, input: &Input) -> bool {
        matches!(input, Input::Append(..))
    }

    async fn run(&mut self, client: &Client, input: Input) -> Ended<Outcome> {
        let none = Outcome {
            events: Vec::new(),
            as_of: None,
        };
        let (k, as_of) = match input {
            Input::Append(k, v) => {
                let answer = client
                    .append(
                        &self.name(k),
                        ExpectedVersion::Any,
                        vec![event("append", v.to_string())],
                    )
                    .await;
                let kind = match &answer {
                    Ok(_) => Kind::Ok,
                    Err(e) if certainly_not_written(e) => Kind::Fail,
                    Err(_) => Kind::Info,
                };
                let value = match answer {
                    Ok(_) => json!(v),
                    Err(e) => json!(e.to_string()),
                };
                return Ended {
                    kind,
                    value,
                    outcome: none,
                };
            }
            Input::Read(k) => (k, None),
            Input::ReadAsOf(k) => (k, Some(now_us().saturating_sub(AS_OF_LAG_MS * 1000))),
        };
        match read(client, &self.name(k), as_of).await {
            Ok(page) => {
                let events: Vec<(u64, u64)> = page
                    .events
                    .iter()
                    .map(|e| {
                        let v = std::str::from_utf8(&e.data)
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(u64::MAX);
                        (v, e.timestamp_us)
                    })
                    .collect();
                let value = json!({
                    "values": events.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
                    "as_of": as_of,
                    "closed": page.closed_timestamp_us,
                });
                Ended {
                    kind: Kind::Ok,
                    value,
                    outcome: Outcome {
                        events,
                        as_of: as_of.map(|t| (t, page.closed_timestamp_us)),
                    },
                }
            }
            Err(e) => Ended {
                kind: Kind::Fail,
                value: json!(e.to_string()),
                outcome: none,
            },
        }
    }

    fn record(&self, input: &Input, ended: &Ended<Outcome>, at: Place) -> Option<Record> {
        match *input {
            Input::Append(key, value) => Some(Record::FollowerWrite(follower::Write {
                key,
                value,
                call_us: at.call_us,
                ack_us: (ended.kind == Kind::Ok).then_some(at.ret_us),
                failed: ended.kind == Kind::Fail,
            })),
            Input::Read(key) | Input::ReadAsOf(key) if ended.kind == Kind::Ok => {
                Some(Record::FollowerRead(follower::Read {
                    client: self.client,
                    key,
                    call_us: at.call_us,
                    events: ended.outcome.events.clone(),
                    as_of: ended.outcome.as_of,
                }))
            }
            _ => None,
        }
    }
}
