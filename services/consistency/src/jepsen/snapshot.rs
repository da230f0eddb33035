//! Consistent multi-stream reads for the transactional workloads. A shard's log is one
//! sequence, so a prefix of it is a snapshot: the reader finds the position of the last
//! record holding one of its streams (paging a linearizable `ReadAll` filtered by the
//! workload's prefix from where it last stopped, until a page comes back empty), then reads
//! each stream as of that position. The empty page is the snapshot's moment: every append
//! acknowledged before the read began is in it, and nothing of the workload's after it.
//!
//! The workload's streams must share one shard (on a cluster of several, their names share a
//! routing key: `…{bank}-N`), so the position is one log's; the `ReadAll` pages by cursor,
//! which a cluster of any number of shards takes.
//!
//! The cursor only saves re-reading: the streams themselves are read from the log every time,
//! so a node that lost acknowledged records shows it.

use strata_client::{pb, Client, Error};

/// Most events read per stream (a workload retires keys well before).
pub const STREAM_EVENTS_MAX: usize = 4096;

/// A client's reader of snapshots of the streams named `prefix…`.
#[derive(Debug)]
pub struct Snapshots {
    prefix: String,
    /// Where the next `ReadAll` page starts (a `next_cursor`; empty: the start).
    cursor: Vec<u8>,
    /// The position of the last record seen with one of the streams.
    last: Option<u64>,
}

/// One stream in a snapshot: its events' data (or only the last one's) and its last version
/// (`None`: no stream).
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// The events' data, in order.
    pub data: Vec<Vec<u8>>,
    /// The last event's version.
    pub version: Option<u64>,
}

impl Snapshots {
    /// A reader of the streams whose names start with `prefix`.
    pub fn new(prefix: &str) -> Snapshots {
        Snapshots {
            prefix: prefix.into(),
            cursor: Vec::new(),
            last: None,
        }
    }

    /// Where the workload's streams end now (linearizable).
    async fn end(&mut self, client: &Client) -> Result<Option<u64>, Error> {
        loop {
            let page = client
                .read_all(pb::ReadAllRequest {
                    from_cursor: self.cursor.clone().into(),
                    limit: 4096,
                    filter: Some(pb::Filter {
                        stream_prefix: self.prefix.clone(),
                        event_types: Vec::new(),
                        partitions: None,
                    }),
                    consistency: pb::Consistency::Linearizable as i32,
                    ..Default::default()
                })
                .await;
            let page = match page {
                Ok(p) => p,
                Err(Error::InvalidArgument(_)) if !self.cursor.is_empty() => {
                    // The log no longer reaches the cursor (it lost records): start over.
                    self.cursor.clear();
                    self.last = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(e) = page.events.last() {
                self.last = Some(e.position);
            }
            if page.next_cursor[..] == self.cursor[..] {
                return Ok(self.last);
            }
            self.cursor = page.next_cursor.to_vec();
        }
    }

    /// The streams `names` as of one moment between the call and its return: each one's
    /// events, or only its last one with `last_only`.
    pub async fn read(
        &mut self,
        client: &Client,
        names: &[String],
        last_only: bool,
    ) -> Result<Vec<StreamState>, Error> {
        let Some(at) = self.end(client).await? else {
            return Ok(vec![StreamState::default(); names.len()]);
        };
        // The streams are read at once: one round trip, not one per stream.
        let reads: Vec<_> = names
            .iter()
            .map(|name| tokio::spawn(read_one(client.clone(), name.clone(), at, last_only)))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for r in reads {
            out.push(
                r.await
                    .map_err(|e| Error::Unavailable(format!("a read: {e}")))??,
            );
        }
        Ok(out)
    }
}

/// One stream as of `at`: all its events, or its last one.
async fn read_one(
    client: Client,
    name: String,
    at: u64,
    last_only: bool,
) -> Result<StreamState, Error> {
    let page = client
        .read(pb::ReadRequest {
            stream: name.clone(),
            limit: if last_only {
                1
            } else {
                STREAM_EVENTS_MAX as u32
            },
            direction: if last_only {
                pb::Direction::Backwards
            } else {
                pb::Direction::Forwards
            } as i32,
            as_of: Some(pb::AsOf {
                point: Some(pb::as_of::Point::Position(at)),
            }),
            ..Default::default()
        })
        .await;
    let events = match page {
        Ok(p) if !last_only && (p.truncated || p.events.len() >= STREAM_EVENTS_MAX) => {
            return Err(Error::LimitExceeded(format!(
                "{name} holds more than one page of events"
            )))
        }
        Ok(p) => p.events,
        Err(Error::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(StreamState {
        version: events.last().map(|e| e.version),
        data: events.into_iter().map(|e| e.data.to_vec()).collect(),
    })
}
