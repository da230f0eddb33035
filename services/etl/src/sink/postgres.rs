//! The PostgreSQL sink: a write is one transaction that locks the partition's row of
//! `strata_etl_checkpoints`, finds it at the write's `from` (else writes nothing), copies the
//! rows in (`COPY … FROM STDIN`, text format) and sets the checkpoint to `to`. Either all of it
//! commits or none; a commit whose answer was lost is found out from the checkpoints the next
//! time. Tested against PostgreSQL 15 (Debian's).
//!
//! Column types it writes into: text → `text`, `varchar`, `char`, `uuid`; int → `bigint`,
//! `integer`, `smallint`, `numeric`; float → `double precision`, `real`, `numeric`; bool →
//! `boolean`; time → `timestamptz`, `timestamp` (UTC); json → `jsonb`, `json`, `text`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use strata_client::group::Progress;
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

use super::{SinkError, Write, Written};
use crate::mapping::{Row, Value};
use crate::pipeline::{ColumnType, Pipeline};

/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one write (its whole transaction) may take before the connection is dropped (and
/// with it the transaction).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS strata_etl_checkpoints (
    pipeline text NOT NULL, part integer NOT NULL, progress text,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, part))";

/// A PostgreSQL sink.
pub struct Postgres {
    url: String,
    pipeline: String,
    /// The table, quoted.
    table: String,
    copy: String,
    conn: Mutex<Option<tokio_postgres::Client>>,
}

fn down(e: impl std::fmt::Display) -> SinkError {
    SinkError::Down(format!("postgres: {e}"))
}

/// A database error that this write will always meet (bad data, a constraint) or not.
fn classify(e: tokio_postgres::Error) -> SinkError {
    let class = e
        .code()
        .map(|c| c.code().get(..2).unwrap_or("").to_string());
    match class.as_deref() {
        Some("22") | Some("23") => SinkError::Rejected(format!("postgres: {}", error_text(&e))),
        _ => down(error_text(&e)),
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `"name"`, or `"schema"."name"`.
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

fn fits(ty: ColumnType, data_type: &str) -> bool {
    let ok: &[&str] = match ty {
        ColumnType::Text => &["text", "character varying", "character", "uuid"],
        ColumnType::Int => &["bigint", "integer", "smallint", "numeric"],
        ColumnType::Float => &["double precision", "real", "numeric"],
        ColumnType::Bool => &["boolean"],
        ColumnType::Time => &["timestamp with time zone", "timestamp without time zone"],
        ColumnType::Json => &["jsonb", "json", "text"],
    };
    ok.contains(&data_type)
}

impl Postgres {
    /// Connects, checks the table and its columns, and makes sure the checkpoint table has a
    /// row for each of the pipeline's partitions.
    pub async fn open(p: &Pipeline) -> Result<Postgres, SinkError> {
        let names: Vec<String> = p
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let sink = Postgres {
            url: p.sink.url.clone(),
            pipeline: p.name.clone(),
            table: quoted(&p.sink.table),
            copy: format!(
                "COPY {} ({}) FROM STDIN",
                quoted(&p.sink.table),
                names.join(", ")
            ),
            conn: Mutex::new(None),
        };
        let mut guard = sink.conn.lock().await;
        let client = sink.connected(&mut guard).await?;
        check_table(client, p).await?;
        if let Err(e) = client.batch_execute(CHECKPOINTS).await {
            // Two pipelines creating it at once: one of them loses the race; it exists.
            if e.code().map(|c| c.code()) != Some("23505") {
                return Err(down(error_text(&e)));
            }
        }
        let parts: Vec<i32> = (0..p.source.partitions as i32).collect();
        client
            .execute(
                "INSERT INTO strata_etl_checkpoints (pipeline, part) SELECT $1, unnest($2::int[]) ON CONFLICT DO NOTHING",
                &[&p.name, &parts],
            )
            .await
            .map_err(|e| down(error_text(&e)))?;
        drop(guard);
        Ok(sink)
    }

    async fn connected<'a>(
        &self,
        conn: &'a mut Option<tokio_postgres::Client>,
    ) -> Result<&'a mut tokio_postgres::Client, SinkError> {
        if conn.as_ref().is_some_and(|c| c.is_closed()) {
            *conn = None;
        }
        if conn.is_none() {
            let (client, connection) =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(&self.url, NoTls))
                    .await
                    .map_err(|_| down(format!("no connection within {CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| down(error_text(&e)))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            });
            *conn = Some(client);
        }
        conn.as_mut().ok_or_else(|| down("not connected"))
    }

    /// Each partition's checkpoint.
    pub async fn checkpoints(&self) -> Result<BTreeMap<u32, Progress>, SinkError> {
        let mut guard = self.conn.lock().await;
        let client = self.connected(&mut guard).await?;
        let rows = match client
            .query(
                "SELECT part, progress FROM strata_etl_checkpoints WHERE pipeline = $1 AND progress IS NOT NULL",
                &[&self.pipeline],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                *guard = None;
                return Err(down(error_text(&e)));
            }
        };
        let mut out = BTreeMap::new();
        for r in rows {
            let part: i32 = r.try_get(0).map_err(|e| down(error_text(&e)))?;
            let text: String = r.try_get(1).map_err(|e| down(error_text(&e)))?;
            out.insert(part as u32, progress(&text)?);
        }
        Ok(out)
    }

    /// One write, one transaction (see the module docs).
    pub async fn write(&self, w: Write<'_>) -> Result<Written, SinkError> {
        let mut guard = self.conn.lock().await;
        let client = self.connected(&mut guard).await?;
        let result = match tokio::time::timeout(WRITE_TIMEOUT, self.write_on(client, w)).await {
            Ok(r) => r,
            Err(_) => Err(down(format!("the write took over {WRITE_TIMEOUT:?}"))),
        };
        if matches!(result, Err(SinkError::Down(_))) {
            // Its transaction (if still open) dies with the connection.
            *guard = None;
        }
        result
    }

    async fn write_on(
        &self,
        client: &mut tokio_postgres::Client,
        w: Write<'_>,
    ) -> Result<Written, SinkError> {
        let tx = client.transaction().await.map_err(classify)?;
        let part = w.partition as i32;
        let row = tx
            .query_one(
                "SELECT progress FROM strata_etl_checkpoints WHERE pipeline = $1 AND part = $2 FOR UPDATE",
                &[&self.pipeline, &part],
            )
            .await
            .map_err(classify)?;
        let stored: Option<String> = row.try_get(0).map_err(|e| down(error_text(&e)))?;
        let stored = stored.as_deref().map(progress).transpose()?;
        if stored.as_ref() != w.from {
            return Ok(Written::Elsewhere(stored));
        }
        if !w.rows.is_empty() {
            let sink = tx.copy_in::<_, Bytes>(&self.copy).await.map_err(classify)?;
            futures_util::pin_mut!(sink);
            sink.send(Bytes::from(copy_text(w.rows)))
                .await
                .map_err(classify)?;
            sink.as_mut().finish().await.map_err(classify)?;
        }
        let to = serde_json::to_string(w.to).map_err(down)?;
        tx.execute(
            "UPDATE strata_etl_checkpoints SET progress = $3, updated_at = now() WHERE pipeline = $1 AND part = $2",
            &[&self.pipeline, &part, &to],
        )
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(Written::Done)
    }
}

impl Postgres {
    /// Rows and checksum ([`super::checksum`]) of a window.
    pub async fn tally(
        &self,
        (stream, version, time): &(String, String, String),
        (from_us, to_us): (u64, u64),
    ) -> Result<(u64, u64), SinkError> {
        let sql = format!(
            "SELECT count(*)::bigint, coalesce(sum(\"{version}\"::numeric * 1000003 + length(\"{stream}\")), 0)::text \
             FROM {} WHERE \"{time}\" >= to_timestamp($1::float8) AND \"{time}\" < to_timestamp($2::float8)",
            self.table
        );
        let (from, to) = (from_us as f64 / 1e6, to_us as f64 / 1e6);
        let mut guard = self.conn.lock().await;
        let client = self.connected(&mut guard).await?;
        let row = client.query_one(&sql, &[&from, &to]).await.map_err(|e| {
            *guard = None;
            down(error_text(&e))
        })?;
        let rows: i64 = row.try_get(0).map_err(|e| down(error_text(&e)))?;
        let sum: String = row.try_get(1).map_err(|e| down(error_text(&e)))?;
        let sum: u128 = sum
            .parse()
            .map_err(|_| down(format!("a checksum that is not a number: {sum}")))?;
        Ok((rows as u64, sum as u64))
    }

    /// The replication slot furthest behind on the sink's server and how far, in bytes of WAL
    /// from the server's current position to what the slot's consumer has confirmed (a logical
    /// slot) or needs kept (a physical one); `None` without slots. Writes add WAL every
    /// replica and logical consumer must take in: the throttle slows down while one lags.
    pub async fn slot_lag(&self) -> Result<Option<super::SlotLag>, SinkError> {
        const SQL: &str = "SELECT slot_name::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))::bigint \
             FROM pg_replication_slots WHERE coalesce(confirmed_flush_lsn, restart_lsn) IS NOT NULL \
             ORDER BY 2 DESC LIMIT 1";
        let mut guard = self.conn.lock().await;
        let client = self.connected(&mut guard).await?;
        let rows = client.query(SQL, &[]).await.map_err(|e| {
            *guard = None;
            down(error_text(&e))
        })?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let name: String = row.try_get(0).map_err(|e| down(error_text(&e)))?;
        let bytes: i64 = row.try_get(1).map_err(|e| down(error_text(&e)))?;
        Ok(Some(super::SlotLag {
            slot: name,
            bytes: bytes.max(0) as u64,
        }))
    }

    /// `TRUNCATE` of the table and the checkpoints set to none, in one transaction.
    pub async fn clear(&self) -> Result<(), SinkError> {
        let mut guard = self.conn.lock().await;
        let client = self.connected(&mut guard).await?;
        let result = async {
            let tx = client.transaction().await?;
            tx.batch_execute(&format!("TRUNCATE {}", self.table)).await?;
            tx.execute(
                "UPDATE strata_etl_checkpoints SET progress = NULL, updated_at = now() WHERE pipeline = $1",
                &[&self.pipeline],
            )
            .await?;
            tx.commit().await
        }
        .await;
        result.map_err(|e| {
            *guard = None;
            down(error_text(&e))
        })
    }
}

fn progress(text: &str) -> Result<Progress, SinkError> {
    serde_json::from_str(text)
        .map_err(|e| down(format!("a checkpoint that is not a position ({e}): {text}")))
}

async fn check_table(client: &tokio_postgres::Client, p: &Pipeline) -> Result<(), SinkError> {
    let (schema, table) = match p.sink.table.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, p.sink.table.clone()),
    };
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| down(error_text(&e)))?;
    let mut have = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(|e| down(error_text(&e)))?;
        let ty: String = r.try_get(1).map_err(|e| down(error_text(&e)))?;
        have.insert(name, ty);
    }
    super::check_columns(p, "PostgreSQL", &have, fits)
}

/// The rows in `COPY`'s text format: tab-separated, `\N` for NULL, backslash escapes.
pub fn copy_text(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 64);
    for r in rows {
        for (i, v) in r.values.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            field(&mut out, v);
        }
        out.push(b'\n');
    }
    out
}

fn field(out: &mut Vec<u8>, v: &Value) {
    use std::io::Write as _;
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Text(s) | Value::Json(s) => escaped(out, s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Time(us) => escaped(out, &strata_service::time::format_rfc3339_us(*us)),
    }
}

fn escaped(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let row = Row {
            values: vec![
                Value::Text("a\tb\\c\nd".into()),
                Value::Null,
                Value::Int(-3),
                Value::Bool(true),
                Value::Time(1_000_000),
            ],
            shard: 0,
            position: 0,
            stream: String::new(),
            version: 0,
            appended_us: 0,
        };
        let text = String::from_utf8(copy_text(&[row])).unwrap_or_default();
        assert_eq!(
            text,
            "a\\tb\\\\c\\nd\t\\N\t-3\tt\t1970-01-01T00:00:01.000000Z\n"
        );
    }
}
