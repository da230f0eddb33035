//! How far behind a pipeline is, in events: those of its source (its streams and event types,
//! less its quarantine stream) past its group's positions — appended and not yet in the sink
//! (a write's events are committed to the group only after the sink has them; after a crash
//! between the two, the events the sink already holds count until they are passed over).
//!
//! Counted by reading the log from the earliest of the group's partition positions to the end
//! as it was when the count began, each event checked against its own partition's position. At
//! most [`COUNT_EVENTS_MAX`] events are read (a larger backlog is shown as "at least") within
//! [`COUNT_TIME_MAX`]; the service counts every [`COUNT_EVERY`], or [`COUNT_SPACING`] times as
//! long as the last count took when that is longer (the count's reading stays under a
//! twentieth of the time: a backlog of 100,000 events or more is counted every ~4 s).

use std::time::Duration;

use serde::Serialize;
use strata_client::group::protocol::partition_of;
use strata_client::group::{Groups, Progress};
use strata_client::{pb, Client, Error, Item, Start, Target};

use crate::pipeline::Pipeline;

/// Most events one count reads.
pub const COUNT_EVENTS_MAX: u64 = 100_000;
/// Longest one count reads for.
pub const COUNT_TIME_MAX: Duration = Duration::from_secs(10);
/// How often the service counts, at least.
pub const COUNT_EVERY: Duration = Duration::from_secs(2);
/// The pause after a count, at least this many times as long as the count took.
pub const COUNT_SPACING: u32 = 20;

/// A pipeline's backlog.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backlog {
    /// Events of the source not yet in the sink.
    pub events: u64,
    /// Whether the count stopped at its bound before the end (there may be more).
    pub at_least: bool,
    /// When the oldest of them was appended, µs since the epoch (`None`: none waiting).
    pub oldest_us: Option<u64>,
}

/// Counts `pipeline`'s backlog, reading at most `max` events; `Ok(None)` when its group does
/// not exist yet.
pub async fn count(
    store: &Client,
    pipeline: &Pipeline,
    max: u64,
) -> Result<Option<Backlog>, Error> {
    let info = match Groups::new(store.clone()).info(&pipeline.group()).await {
        Ok(info) => info,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let parts = info.definition.partitions;
    // Partitions 0..parts (the retry partition after them holds no source events of a
    // pipeline: nothing is parked).
    let positions: Vec<Progress> = info
        .partitions
        .into_iter()
        .filter(|p| p.number < parts)
        .map(|p| p.position)
        .collect();
    let Some(start) = Progress::earliest(&positions) else {
        return Ok(Some(Backlog::default()));
    };
    let filter = pb::Filter {
        stream_prefix: info.definition.target.filter_prefix().into(),
        event_types: pipeline.source.event_types.clone(),
        partitions: None,
    };
    let mut sub = store.subscribe(
        Target::All(Some(filter)),
        Start::Cursor(start.cursor().into()),
    );
    let quarantine = pipeline.quarantine_stream();
    let mut backlog = Backlog::default();
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + COUNT_TIME_MAX;
    loop {
        let item = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(item) => item?,
            Err(_) => {
                backlog.at_least = true;
                break;
            }
        };
        let e = match item {
            Item::CaughtUp => break,
            Item::Event(e) => e,
        };
        read += 1;
        let shard = sub.last_shard();
        let pending = info.definition.target.matches(&e.stream)
            && e.stream != quarantine
            && positions
                .get(partition_of(&e.stream, parts) as usize)
                .is_some_and(|p| p.wants(shard, e.position));
        if pending {
            backlog.events += 1;
            let oldest = backlog.oldest_us.get_or_insert(e.timestamp_us);
            *oldest = (*oldest).min(e.timestamp_us);
        }
        if read >= max {
            backlog.at_least = true;
            break;
        }
    }
    Ok(Some(backlog))
}
