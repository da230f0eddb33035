//! The PostgreSQL outbox source: an application writes its business rows and an outbox row in
//! one transaction; Strata reads the outbox table by logical decoding and appends each row as
//! an event. Only committed transactions are decoded, so a rolled-back row never becomes an
//! event.
//!
//! How: a logical replication slot with the `wal2json` output plugin (Debian's
//! `postgresql-15-wal2json`; the server needs `wal_level = logical`), read through SQL —
//! `pg_logical_slot_peek_changes` reads the changes past the slot's confirmed position without
//! consuming them; each inserted row is appended to its stream with an event id derived from
//! the outbox's name and the row's `id` (so appending it again after a crash adds nothing:
//! the store deduplicates by id); only then is the slot advanced (`pg_replication_slot_advance`)
//! past those transactions. A crash anywhere re-reads from the slot's position and appends
//! what is not there yet: each committed row becomes exactly one event.
//!
//! The outbox table: `id bigint` (unique, e.g. `bigserial`), `stream text`, `type text`,
//! `data jsonb` (or `json`, `text`), and optionally `metadata jsonb`. Rows stay in the table;
//! deleting them after they are decoded is the application's choice (a delete is not an event).
//!
//! ```toml
//! name = "shop"                        # 1–64 of [a-z0-9_-]; the slot is strata_outbox_shop
//! url = "host=127.0.0.1 port=5432 user=postgres dbname=shop"
//! table = "public.outbox"              # with the columns above
//! batch_max = 1000                     # changes decoded per round (default 1,000; 1 to 100,000)
//! poll_ms = 100                        # wait when there was nothing (default 100; 1 to 60,000)
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_client::{pb, Client};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use toml::Spanned;

use crate::clock::now_us;
use crate::pipeline::{self, Lines, PipelineError};
use crate::runner::{append_idempotent, RETRY_MAX};

/// Most changes decoded in one round.
pub const BATCH_MAX: usize = 100_000;
/// Longest event data taken from a row, bytes (a longer row is reported, not appended).
pub const DATA_BYTES_MAX: usize = 1 << 20;
/// Most events of one append.
const APPEND_EVENTS_MAX: usize = 500;

const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x8a41_c2e7_5d09_4b63_9f1e_27b4_c6d8_0a35);

/// A checked outbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    /// Its name.
    pub name: String,
    /// The file.
    pub file: String,
    /// The PostgreSQL connection string.
    pub url: String,
    /// The outbox table.
    pub table: String,
    /// The table's line.
    pub table_line: usize,
    /// Changes per round.
    pub batch_max: usize,
    /// Idle wait, ms.
    pub poll_ms: u64,
}

impl Outbox {
    /// Its replication slot.
    pub fn slot(&self) -> String {
        format!("strata_outbox_{}", self.name.replace('-', "_"))
    }

    /// The table as wal2json's `add-tables` takes it.
    fn filter(&self) -> String {
        match self.table.contains('.') {
            true => self.table.clone(),
            false => format!("*.{}", self.table),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxToml {
    name: Spanned<String>,
    url: Spanned<String>,
    table: Spanned<String>,
    batch_max: Option<Spanned<usize>>,
    poll_ms: Option<Spanned<u64>>,
}

/// Reads and checks the outbox file at `path`.
pub fn load(path: &Path) -> Result<Outbox, PipelineError> {
    let (file, text) = pipeline::read(path)?;
    parse(&file, &text)
}

/// Checks outbox file `text`.
pub fn parse(file: &str, text: &str) -> Result<Outbox, PipelineError> {
    let at = Lines { file, text };
    let raw: OutboxToml = toml::from_str(text).map_err(|e| PipelineError {
        file: file.into(),
        line: e.span().map_or(0, |s| at.line(s.start)),
        message: e.message().trim().to_string(),
    })?;
    let name = pipeline::check_name(&at, &raw.name)?;
    if raw.url.get_ref().is_empty() || raw.url.get_ref().len() > 1024 {
        return at.err(
            &raw.url,
            "url: a PostgreSQL connection string, 1 to 1024 bytes",
        );
    }
    if !pipeline::table_name_ok(raw.table.get_ref()) {
        return at.err(
            &raw.table,
            format!(
                "table: [schema.]name of letters, digits and _, not {:?}",
                raw.table.get_ref()
            ),
        );
    }
    Ok(Outbox {
        name,
        file: file.into(),
        url: raw.url.into_inner(),
        table_line: at.line(raw.table.span().start),
        table: raw.table.into_inner(),
        batch_max: at.within("batch_max", raw.batch_max, (1, BATCH_MAX), 1000)?,
        poll_ms: at.within("poll_ms", raw.poll_ms, (1, 60_000), 100)?,
    })
}

/// Where an outbox is.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxStatus {
    /// Its name.
    pub name: String,
    /// `starting`, `running`, `waiting` (PostgreSQL or the store down), `refused`, `stopped`.
    pub state: &'static str,
    /// The last error.
    pub error: Option<String>,
    /// Errors so far.
    pub errors: u64,
    /// Rows appended as events (a row appended again after a crash counts again).
    pub events: u64,
    /// Rows that cannot be events (a stream name the store refuses, data over the bound).
    pub refused_rows: u64,
    /// The slot's position after the last round.
    pub lsn: String,
    /// WAL bytes between the server's current position and the slot's.
    pub lag_bytes: i64,
    /// When the last round appended something, µs since the epoch.
    pub last_append_us: u64,
}

/// A running outbox's status.
#[derive(Clone)]
pub struct OutboxHandle {
    /// The outbox.
    pub outbox: Arc<Outbox>,
    status: Arc<Mutex<OutboxStatus>>,
}

impl OutboxHandle {
    /// A copy of its status.
    pub fn status(&self) -> OutboxStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut OutboxStatus)) {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

/// Starts reading `outbox` into `store` in the background.
pub fn start(outbox: Outbox, store: Client, stopping: watch::Receiver<bool>) -> OutboxHandle {
    let handle = OutboxHandle {
        status: Arc::new(Mutex::new(OutboxStatus {
            name: outbox.name.clone(),
            state: "starting",
            error: None,
            errors: 0,
            events: 0,
            refused_rows: 0,
            lsn: String::new(),
            lag_bytes: 0,
            last_append_us: 0,
        })),
        outbox: Arc::new(outbox),
    };
    tokio::spawn(run(handle.clone(), store, stopping));
    handle
}

enum Stop {
    Stopped,
    Retry(String),
    Refused(String),
}

async fn run(h: OutboxHandle, store: Client, mut stopping: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let end = tokio::select! {
            end = session(&h, &store) => end,
            _ = stopping.wait_for(|s| *s) => Stop::Stopped,
        };
        match end {
            Stop::Stopped => break,
            Stop::Refused(why) => {
                tracing::error!(outbox = %h.outbox.name, error = %why, "outbox refused");
                h.update(|s| {
                    s.state = "refused";
                    s.error = Some(why);
                });
                let _ = stopping.wait_for(|s| *s).await;
                break;
            }
            Stop::Retry(why) => {
                tracing::warn!(outbox = %h.outbox.name, error = %why, "outbox waiting");
                h.update(|s| {
                    s.state = "waiting";
                    s.errors += 1;
                    s.error = Some(why);
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
    h.update(|s| s.state = "stopped");
}

fn pg(e: tokio_postgres::Error) -> Stop {
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Stop::Retry(format!("postgres: {text}"))
}

/// Connects, checks, creates the slot when missing, then rounds until something fails.
async fn session(h: &OutboxHandle, store: &Client) -> Stop {
    let o = &h.outbox;
    let (client, connection) = match tokio_postgres::connect(&o.url, NoTls).await {
        Ok(c) => c,
        Err(e) => return pg(e),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    if let Err(stop) = prepare(o, &client).await {
        return stop;
    }
    h.update(|s| {
        s.state = "running";
        s.error = None;
    });
    loop {
        match round(h, store, &client).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(o.poll_ms)).await,
            Ok(_) => {}
            Err(stop) => return stop,
        }
    }
}

/// `wal_level`, the table's columns, the slot.
async fn prepare(o: &Outbox, client: &tokio_postgres::Client) -> Result<(), Stop> {
    let refused = |line: usize, m: String| {
        Stop::Refused(
            PipelineError {
                file: o.file.clone(),
                line,
                message: m,
            }
            .to_string(),
        )
    };
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    if level != "logical" {
        return Err(refused(0, format!("the server's wal_level is {level}; logical decoding needs wal_level = logical (and a restart)")));
    }
    let (schema, table) = match o.table.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, o.table.clone()),
    };
    let rows = client
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2",
            &[&schema, &table],
        )
        .await
        .map_err(pg)?;
    let have: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
    for need in ["id", "stream", "type", "data"] {
        if !have.iter().any(|c| c == need) {
            let what = match have.is_empty() {
                true => format!("table: PostgreSQL has no table {}", o.table),
                false => format!(
                    "table: {} has no column {need} (an outbox has id, stream, type, data)",
                    o.table
                ),
            };
            return Err(refused(o.table_line, what));
        }
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&o.slot()],
        )
        .await
        .map_err(pg)?
        .is_some();
    if !exists {
        let created = client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'wal2json')",
                &[&o.slot()],
            )
            .await;
        match created {
            Ok(_) => tracing::info!(outbox = %o.name, slot = %o.slot(), "replication slot created"),
            // Created meanwhile (a second service): it exists now.
            Err(e) if e.code().map(|c| c.code()) == Some("42710") => {}
            Err(e) => return Err(pg(e)),
        }
    }
    Ok(())
}

/// One change row wal2json gives (format 2).
#[derive(Deserialize)]
struct Change {
    action: String,
    #[serde(default)]
    columns: Vec<ChangeColumn>,
}

#[derive(Deserialize)]
struct ChangeColumn {
    name: String,
    value: serde_json::Value,
}

/// An outbox row as an event.
struct Row {
    stream: String,
    event: pb::NewEvent,
}

/// Reads a round of changes, appends their rows, advances the slot; the changes read.
async fn round(
    h: &OutboxHandle,
    store: &Client,
    client: &tokio_postgres::Client,
) -> Result<usize, Stop> {
    let o = &h.outbox;
    let changes = client
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, 'format-version', '2', 'add-tables', $3)",
            &[&o.slot(), &(o.batch_max as i32), &o.filter()],
        )
        .await
        .map_err(pg)?;
    let Some(last) = changes.last() else {
        lag(h, client).await;
        return Ok(0);
    };
    let last_lsn: String = last.try_get(0).map_err(pg)?;
    let mut rows = Vec::new();
    let mut refused = 0;
    for c in &changes {
        let text: String = c.try_get(1).map_err(pg)?;
        let change: Change = serde_json::from_str(&text)
            .map_err(|e| Stop::Retry(format!("wal2json gave {text:?}: {e}")))?;
        if change.action != "I" {
            continue;
        }
        match row(o, &change) {
            Ok(r) => rows.push(r),
            Err(why) => {
                refused += 1;
                tracing::error!(outbox = %o.name, error = %why, "an outbox row that cannot be an event");
            }
        }
    }
    let appended = rows.len() as u64;
    append(store, rows).await?;
    client
        .query_one(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)::text",
            &[&o.slot(), &last_lsn],
        )
        .await
        .map_err(pg)?;
    h.update(|s| {
        s.events += appended;
        s.refused_rows += refused;
        s.lsn = last_lsn.clone();
        s.error = None;
        s.state = "running";
        if appended > 0 {
            s.last_append_us = now_us();
        }
    });
    lag(h, client).await;
    Ok(changes.len())
}

async fn lag(h: &OutboxHandle, client: &tokio_postgres::Client) {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&h.outbox.slot()],
        )
        .await;
    if let Ok(Some(r)) = row {
        if let Ok(bytes) = r.try_get::<_, i64>(0) {
            h.update(|s| s.lag_bytes = bytes);
        }
    }
}

/// The event of an inserted outbox row.
fn row(o: &Outbox, change: &Change) -> Result<Row, String> {
    let get = |name: &str| {
        change
            .columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.value)
    };
    let id = get("id")
        .and_then(|v| v.as_i64())
        .ok_or("a row without an integer id")?;
    let text = |name: &str| get(name).and_then(|v| v.as_str()).map(str::to_string);
    let stream = text("stream").ok_or(format!("row {id}: no stream"))?;
    if stream.is_empty() || stream.starts_with('$') {
        return Err(format!("row {id}: stream {stream:?} is not a user stream"));
    }
    let event_type = text("type").ok_or(format!("row {id}: no type"))?;
    let data = match get("data") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "null".into(),
    };
    if data.len() > DATA_BYTES_MAX {
        return Err(format!(
            "row {id}: data of {} bytes, more than {DATA_BYTES_MAX}",
            data.len()
        ));
    }
    let mut metadata = serde_json::json!({"outbox": o.name, "outbox_id": id});
    if let Some(serde_json::Value::String(m)) = get("metadata") {
        if let Ok(serde_json::Value::Object(extra)) = serde_json::from_str::<serde_json::Value>(m) {
            for (k, v) in extra {
                metadata[k] = v;
            }
        }
    }
    let key = format!("{}\n{}\n{id}", o.name, o.table);
    Ok(Row {
        stream,
        event: pb::NewEvent {
            id: uuid::Uuid::new_v5(&ID_NAMESPACE, key.as_bytes()).to_string(),
            r#type: event_type,
            data: data.into_bytes().into(),
            metadata: serde_json::to_vec(&metadata).unwrap_or_default().into(),
        },
    })
}

/// Appends the rows in order: runs of one stream, at most [`APPEND_EVENTS_MAX`] each.
async fn append(store: &Client, rows: Vec<Row>) -> Result<(), Stop> {
    let mut run: Vec<pb::NewEvent> = Vec::new();
    let mut stream = String::new();
    for r in rows {
        if (r.stream != stream || run.len() >= APPEND_EVENTS_MAX) && !run.is_empty() {
            append_idempotent(store, &stream, std::mem::take(&mut run))
                .await
                .map_err(|e| Stop::Retry(format!("store: {e}")))?;
        }
        stream = r.stream;
        run.push(r.event);
    }
    if !run.is_empty() {
        append_idempotent(store, &stream, run)
            .await
            .map_err(|e| Stop::Retry(format!("store: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_files_are_checked_with_their_line() {
        let good = "name = \"shop\"\nurl = \"host=x\"\ntable = \"public.outbox\"\n";
        let o = parse("o.toml", good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (o.slot(), o.filter(), o.batch_max),
            ("strata_outbox_shop".into(), "public.outbox".into(), 1000)
        );
        let bad = parse("o.toml", &good.replace("public.outbox", "a;b")).map_err(|e| e.to_string());
        assert_eq!(
            bad.err()
                .as_deref()
                .map(|e| e.starts_with("o.toml:3: table")),
            Some(true)
        );
        let bad = parse("o.toml", &format!("{good}poll_ms = 0\n")).map_err(|e| e.to_string());
        assert_eq!(
            bad.err()
                .as_deref()
                .map(|e| e.starts_with("o.toml:4: poll_ms")),
            Some(true)
        );
    }
}
