//! Where rows go, and each sink's exactly-once rule. A pipeline hands a sink deterministic
//! writes: the rows of one group partition's events from checkpoint `from` to checkpoint `to`
//! (a [`Progress`]: a position in each shard's log), in log order, ending at a record's end.
//! The same range always gives the same rows. A sink keeps, with the rows, which ranges it
//! holds, and says where each partition is ([`Sink::checkpoints`]); the pipeline passes over
//! events the sink already holds, so an event is in the sink once however often it is handed
//! out (a crash, a group rebalance, a sink restart):
//!
//! - [`postgres`]: the rows (by `COPY`) and the partition's checkpoint row in one transaction,
//!   which first locks that checkpoint and finds it at `from` (else it writes nothing: another
//!   writer got there first).
//! - [`mongo`]: documents keyed by their event (`STREAM/VERSION`) and the checkpoint in one
//!   transaction, found at `from` first; without transactions, unordered inserts where a
//!   duplicate `_id` counts as written, then the checkpoint.
//! - [`clickhouse`]: no transactions, but one `INSERT` into one table partition is one part,
//!   all or nothing. Each row carries its group partition, shard and position; inserts go in
//!   log order, one per run of rows in the same table partition; a partition's checkpoint is
//!   the greatest position its rows hold (and, for events that gave no row, a checkpoint row
//!   written after them). `ReplacingMergeTree` keyed by the event collapses what two writers
//!   racing (a paused worker whose lease passed) could both insert; read it with `FINAL`.

pub mod clickhouse;
#[cfg(feature = "mongo")]
pub mod mongo;
pub mod postgres;

use std::collections::BTreeMap;

use strata_client::group::Progress;

use crate::mapping::Row;
use crate::pipeline::{ColumnType, Pipeline, PipelineError, SinkKind};

/// What a sink could not do.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkError {
    /// The pipeline does not fit the sink (a missing table or column, a wrong type): it cannot
    /// run until its file or the sink's tables change.
    Refused(PipelineError),
    /// The sink is down or failed the write (nothing of it, or all of it, is in the sink):
    /// wait and try again, from the sink's checkpoints.
    Down(String),
    /// The sink refuses these rows and always will (a value it cannot store, a constraint):
    /// nothing of the write is in the sink. The pipeline writes the rows record by record and
    /// quarantines those refused alone.
    Rejected(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Refused(e) => write!(f, "{e}"),
            SinkError::Down(why) => write!(f, "sink unavailable: {why}"),
            SinkError::Rejected(why) => write!(f, "sink refused the rows: {why}"),
        }
    }
}

/// One write: partition `partition`'s rows from checkpoint `from` to `to`.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The group partition.
    pub partition: u32,
    /// The checkpoint the sink is expected at (`None`: none yet).
    pub from: Option<&'a Progress>,
    /// The checkpoint after these rows.
    pub to: &'a Progress,
    /// The rows, in log order (events that gave none still move the checkpoint).
    pub rows: &'a [Row],
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The rows and the checkpoint are in the sink.
    Done,
    /// The sink was not at `from` (another writer moved it): nothing written; it is here.
    Elsewhere(Option<Progress>),
}

/// A replication slot's lag: how many bytes of WAL its consumer is behind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotLag {
    /// The slot's name.
    pub slot: String,
    /// Bytes of WAL behind.
    pub bytes: u64,
}

/// What a sink says of its strain (see [`Sink::strain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Strain {
    /// ClickHouse: the table's active parts.
    pub parts: Option<u64>,
    /// PostgreSQL: the slot furthest behind, if the server has slots.
    pub slot: Option<SlotLag>,
}

/// A sink of one pipeline.
pub enum Sink {
    /// PostgreSQL.
    Postgres(postgres::Postgres),
    /// ClickHouse.
    ClickHouse(clickhouse::ClickHouse),
    /// MongoDB.
    #[cfg(feature = "mongo")]
    Mongo(mongo::Mongo),
}

impl Sink {
    /// Connects to `pipeline`'s sink and checks that its table fits the columns (creating the
    /// sink's own checkpoint table when missing).
    pub async fn open(pipeline: &Pipeline) -> Result<Sink, SinkError> {
        Ok(match pipeline.sink.kind {
            SinkKind::Postgres => Sink::Postgres(postgres::Postgres::open(pipeline).await?),
            SinkKind::ClickHouse => Sink::ClickHouse(clickhouse::ClickHouse::open(pipeline).await?),
            #[cfg(feature = "mongo")]
            SinkKind::Mongo => Sink::Mongo(mongo::Mongo::open(pipeline).await?),
            #[cfg(not(feature = "mongo"))]
            SinkKind::Mongo => {
                return Err(SinkError::Refused(pipeline.error_at(
                    0,
                    "sink.kind: this strata was built without the mongo feature",
                )))
            }
        })
    }

    /// Where each partition is, as the sink holds it (a partition not named has nothing).
    pub async fn checkpoints(&self) -> Result<BTreeMap<u32, Progress>, SinkError> {
        match self {
            Sink::Postgres(s) => s.checkpoints().await,
            Sink::ClickHouse(s) => s.checkpoints().await,
            #[cfg(feature = "mongo")]
            Sink::Mongo(s) => s.checkpoints().await,
        }
    }

    /// Writes `w` (see the module docs for each sink's rule).
    pub async fn write(&self, w: Write<'_>) -> Result<Written, SinkError> {
        match self {
            Sink::Postgres(s) => s.write(w).await,
            Sink::ClickHouse(s) => s.write(w).await,
            #[cfg(feature = "mongo")]
            Sink::Mongo(s) => s.write(w).await,
        }
    }

    /// Empties the table and forgets every partition's checkpoint (a reset to the start).
    pub async fn clear(&self, partitions: u32) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.clear().await,
            Sink::ClickHouse(s) => s.clear(partitions).await,
            #[cfg(feature = "mongo")]
            Sink::Mongo(s) => s.clear().await,
        }
    }

    /// The sink's own measures of strain besides write latency: ClickHouse's active parts of
    /// the table; PostgreSQL's replication slot furthest behind.
    pub async fn strain(&self) -> Result<Strain, SinkError> {
        Ok(match self {
            Sink::ClickHouse(s) => Strain {
                parts: Some(s.active_parts().await?),
                slot: None,
            },
            Sink::Postgres(s) => Strain {
                parts: None,
                slot: s.slot_lag().await?,
            },
            #[cfg(feature = "mongo")]
            Sink::Mongo(_) => Strain::default(),
        })
    }

    /// Rows and checksum ([`checksum`]) of the rows whose time column
    /// (`columns`: the stream, version and time columns) is in `[from_us, to_us)`.
    pub async fn tally(
        &self,
        columns: &(String, String, String),
        window: (u64, u64),
    ) -> Result<(u64, u64), SinkError> {
        match self {
            Sink::Postgres(s) => s.tally(columns, window).await,
            Sink::ClickHouse(s) => s.tally(columns, window).await,
            #[cfg(feature = "mongo")]
            Sink::Mongo(s) => s.tally(columns, window).await,
        }
    }

    /// Drops what is past the pipeline's TTL (ClickHouse partitions older than `ttl_days`);
    /// the partitions dropped.
    pub async fn expire(&self, now_us: u64) -> Result<Vec<String>, SinkError> {
        match self {
            Sink::ClickHouse(s) => s.expire(now_us).await,
            _ => Ok(Vec::new()),
        }
    }
}

/// Checks that the table (`have`: its columns' names and types as `server` names them) has
/// each of the pipeline's columns with a type `fits` says takes its values; the refusal names
/// the line of the table or of the column.
pub(crate) fn check_columns(
    p: &Pipeline,
    server: &str,
    have: &BTreeMap<String, String>,
    fits: fn(ColumnType, &str) -> bool,
) -> Result<(), SinkError> {
    let refused = |line: usize, m: String| Err(SinkError::Refused(p.error_at(line, m)));
    if have.is_empty() {
        let t = &p.sink.table;
        return refused(
            p.sink.table_line,
            format!("sink.table: {server} has no table {t} (create it first)"),
        );
    }
    for c in &p.columns {
        match have.get(&c.name) {
            None => {
                let t = &p.sink.table;
                return refused(
                    c.line,
                    format!("column {}: table {t} has no such column", c.name),
                );
            }
            Some(t) if !fits(c.ty, t) => {
                let what = c.ty.name();
                return refused(
                    c.line,
                    format!("column {}: a {t} column cannot take {what} values", c.name),
                );
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Most rows one window's reconciliation reads, on either side (a larger window is refused:
/// take a smaller one).
pub const WINDOW_EVENTS_MAX: u64 = 2_000_000;

/// The checksum of rows by their keys: the sum, modulo 2⁶⁴, of `version × 1,000,003 +
/// length(stream)` — what each sink's SQL computes for [`Sink::tally`] (see
/// [`crate::reconcile`]).
pub fn checksum<'a>(keys: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    keys.into_iter().fold(0u64, |acc, (stream, version)| {
        acc.wrapping_add(
            version
                .wrapping_mul(1_000_003)
                .wrapping_add(stream.len() as u64),
        )
    })
}
