//! The ClickHouse sink, over ClickHouse's HTTP interface (`JSONEachRow` inserts). Tested
//! against ClickHouse 18.16.1 (Debian's); it uses nothing newer (no insert deduplication
//! tokens, no `TTL` clause, no `DateTime64`), so later servers take it as well.
//!
//! Exactly once without transactions: one `INSERT` into one table partition is one part, all
//! or nothing. Every row carries three columns besides the pipeline's —
//! `_strata_partition UInt32, _strata_shard UInt32, _strata_position UInt64` (its group
//! partition and its event's place in the log) — and a write's rows go in log order, one
//! insert per run of rows in the same table partition. So whatever a crash leaves, a
//! partition's rows are exactly its events up to the greatest position they hold: that is its
//! checkpoint, with a row of `strata_etl_checkpoints` (a `ReplacingMergeTree`) for events that
//! gave no row. Tables are partitioned by nothing, or by `toYYYYMMDD(c)` or `toYYYYMM(c)` of
//! a time column `c` the pipeline writes; one pipeline writes a table. The table should be a
//! `ReplacingMergeTree` ordered by the event's key (stream and version): that collapses rows two
//! writers racing could both insert (a worker paused past its lease); read it with `FINAL`.
//! Materialized views on the table see each row once except in that race.
//!
//! TTL: 18.16 has no `TTL` clause, so with `ttl_days` the sink drops whole partitions older
//! than that (`ALTER TABLE … DROP PARTITION`) — a day's or a month's rows at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use strata_client::group::Progress;
use strata_service::http_client::HttpClient;
use strata_service::time::{civil_from_days, days_from_civil};

use super::{SinkError, Write, Written};
use crate::clock::now_us;
use crate::mapping::{Row, Value};
use crate::pipeline::{ColumnType, Pipeline};

/// Longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The columns every row carries besides the pipeline's, with their types.
pub const POSITION_COLUMNS: [(&str, &str); 3] = [
    ("_strata_partition", "UInt32"),
    ("_strata_shard", "UInt32"),
    ("_strata_position", "UInt64"),
];

const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS strata_etl_checkpoints (pipeline String, part UInt32, progress String, written_us UInt64) ENGINE = ReplacingMergeTree(written_us) ORDER BY (pipeline, part)";

/// How the table is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// Not at all.
    None,
    /// By day of the column at this index.
    Day(usize),
    /// By month of it.
    Month(usize),
}

/// A ClickHouse sink.
pub struct ClickHouse {
    http: HttpClient,
    url: String,
    pipeline: String,
    table: String,
    /// The INSERT's head: `INSERT INTO t (a, b, …) FORMAT JSONEachRow`.
    insert: String,
    names: Vec<String>,
    /// Whether each column is a `Date` (else times go as DateTime seconds).
    dates: Vec<bool>,
    parts: Parts,
    ttl_days: Option<u32>,
}

fn down(e: impl std::fmt::Display) -> SinkError {
    SinkError::Down(format!("clickhouse: {e}"))
}

/// Whether a ClickHouse type is `Date` (not `DateTime`), nullable or not.
fn is_date(t: &str) -> bool {
    t.trim_start_matches("Nullable(").trim_end_matches(')') == "Date"
}

/// Percent-encodes a query string value.
fn encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn fits(ty: ColumnType, ch: &str) -> bool {
    let ch = ch
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(ch);
    match ty {
        ColumnType::Text => {
            ch == "String" || ch.starts_with("FixedString(") || ch.starts_with("Enum")
        }
        ColumnType::Int => ch.starts_with("Int") || ch.starts_with("UInt"),
        ColumnType::Float => ch.starts_with("Float") || ch.starts_with("Decimal"),
        ColumnType::Bool => ch == "UInt8",
        ColumnType::Time => ch == "DateTime" || ch == "Date",
        ColumnType::Json => ch == "String",
    }
}

impl ClickHouse {
    /// Checks the table (its columns, the position columns, its partitioning) and creates
    /// the checkpoint table when missing.
    pub async fn open(p: &Pipeline) -> Result<ClickHouse, SinkError> {
        let names: Vec<String> = p.columns.iter().map(|c| c.name.clone()).collect();
        let mut head: Vec<String> = names.clone();
        head.extend(POSITION_COLUMNS.iter().map(|(n, _)| n.to_string()));
        let mut sink = ClickHouse {
            http: HttpClient::new(),
            url: p.sink.url.trim_end_matches('/').to_string(),
            pipeline: p.name.clone(),
            table: p.sink.table.clone(),
            insert: format!(
                "INSERT INTO {} ({}) FORMAT JSONEachRow",
                p.sink.table,
                head.join(", ")
            ),
            names,
            dates: Vec::new(),
            parts: Parts::None,
            ttl_days: p.sink.ttl_days,
        };
        let have = sink.columns().await?;
        let refused = |line: usize, m: String| SinkError::Refused(p.error_at(line, m));
        super::check_columns(p, "ClickHouse", &have, fits)?;
        sink.dates = p
            .columns
            .iter()
            .map(|c| have.get(&c.name).is_some_and(|t| is_date(t)))
            .collect();
        for (n, ty) in POSITION_COLUMNS {
            if have.get(n).map(String::as_str) != Some(ty) {
                return Err(refused(
                    p.sink.table_line,
                    format!("sink.table: {} needs the column {n} {ty} (each row's place in the log; ALTER TABLE {} ADD COLUMN {n} {ty})", p.sink.table, p.sink.table),
                ));
            }
        }
        let key = sink.partition_key().await?;
        sink.parts = partitioning(p, &key).ok_or_else(|| {
            refused(
                p.sink.table_line,
                format!("sink.table: {} is partitioned by {key:?}; the sink takes no partition key, or toYYYYMMDD(c) or toYYYYMM(c) of a time column c it writes (each insert into one partition is atomic)", p.sink.table),
            )
        })?;
        if p.sink.ttl_days.is_some() && sink.parts == Parts::None {
            return Err(refused(
                p.sink.table_line,
                "sink.ttl_days: the table must be partitioned by day or month of a time column"
                    .into(),
            ));
        }
        sink.run(CHECKPOINTS, Bytes::new()).await?;
        Ok(sink)
    }

    /// Runs `sql` (its data, if any, in `body`); the answer's text.
    async fn run(&self, sql: &str, body: Bytes) -> Result<String, SinkError> {
        let (url, body) = if body.is_empty() {
            (format!("{}/", self.url), Bytes::from(sql.to_string()))
        } else {
            (format!("{}/?query={}", self.url, encoded(sql)), body)
        };
        let (status, answer) = self
            .http
            .call_raw("POST", &url, body, REQUEST_TIMEOUT)
            .await
            .map_err(down)?;
        let text = String::from_utf8_lossy(&answer).trim().to_string();
        match status {
            200 => Ok(text),
            _ if rejected(&text) => Err(SinkError::Rejected(format!("clickhouse: {text}"))),
            _ => Err(down(format!("{status}: {text}"))),
        }
    }

    fn where_table(&self) -> String {
        match self.table.split_once('.') {
            Some((db, t)) => format!("database = '{db}' AND table = '{t}'"),
            None => format!("database = currentDatabase() AND table = '{}'", self.table),
        }
    }

    async fn columns(&self) -> Result<BTreeMap<String, String>, SinkError> {
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE {} FORMAT TSV",
            self.where_table()
        );
        let text = self.run(&sql, Bytes::new()).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect())
    }

    async fn partition_key(&self) -> Result<String, SinkError> {
        let sql = format!(
            "SELECT partition_key FROM system.tables WHERE {} FORMAT TSV",
            self.where_table().replace("table =", "name =")
        );
        self.run(&sql, Bytes::new()).await
    }

    /// Each partition's checkpoint: the later of its checkpoint row and its rows' greatest
    /// positions.
    pub async fn checkpoints(&self) -> Result<BTreeMap<u32, Progress>, SinkError> {
        let mut out: BTreeMap<u32, Progress> = BTreeMap::new();
        let sql = format!("SELECT part, progress FROM strata_etl_checkpoints FINAL WHERE pipeline = '{}' FORMAT TSV", self.pipeline);
        for line in self.run(&sql, Bytes::new()).await?.lines() {
            let Some((part, text)) = line.split_once('\t') else {
                continue;
            };
            if text.is_empty() {
                // Cleared by a reset.
                continue;
            }
            let part: u32 = part
                .parse()
                .map_err(|_| down(format!("a checkpoint row {line:?}")))?;
            let progress: Progress = serde_json::from_str(text)
                .map_err(|e| down(format!("a checkpoint that is not a position ({e}): {text}")))?;
            out.insert(part, progress);
        }
        let sql = format!("SELECT _strata_partition, _strata_shard, max(_strata_position) FROM {} GROUP BY _strata_partition, _strata_shard FORMAT TSV", self.table);
        for line in self.run(&sql, Bytes::new()).await?.lines() {
            let f: Vec<u64> = line.split('\t').filter_map(|v| v.parse().ok()).collect();
            let [part, shard, position] = f[..] else {
                return Err(down(format!("a position row {line:?}")));
            };
            out.entry(part as u32)
                .or_insert_with(|| Progress::from(strata_client::group::Position::From(0)))
                .handled(shard as u32, position);
        }
        Ok(out)
    }

    /// The write's rows, one insert per run of one table partition, in order; then its
    /// checkpoint row when its last events gave no row.
    pub async fn write(&self, w: Write<'_>) -> Result<Written, SinkError> {
        let mut start = 0;
        while start < w.rows.len() {
            let key = self.part_of(&w.rows[start]);
            let len = w.rows[start..]
                .iter()
                .take_while(|r| self.part_of(r) == key)
                .count();
            let body = self.json_rows(w.partition, &w.rows[start..start + len]);
            self.run(&self.insert, Bytes::from(body)).await?;
            start += len;
        }
        let mut reached = w
            .from
            .cloned()
            .unwrap_or_else(|| Progress::from(strata_client::group::Position::From(0)));
        for r in w.rows {
            reached.handled(r.shard, r.position);
        }
        if &reached != w.to {
            let to = serde_json::to_string(w.to).map_err(down)?;
            self.put_checkpoints([(w.partition, to)]).await?;
        }
        Ok(Written::Done)
    }

    /// Rows of `strata_etl_checkpoints`, one insert: each partition's progress as JSON, ""
    /// for none.
    async fn put_checkpoints(
        &self,
        progress: impl IntoIterator<Item = (u32, String)>,
    ) -> Result<(), SinkError> {
        let written_us = now_us();
        let mut rows = String::new();
        for (part, progress) in progress {
            let row = json!({"pipeline": self.pipeline, "part": part, "progress": progress, "written_us": written_us});
            rows.push_str(&row.to_string());
            rows.push('\n');
        }
        if rows.is_empty() {
            return Ok(());
        }
        let sql = "INSERT INTO strata_etl_checkpoints (pipeline, part, progress, written_us) FORMAT JSONEachRow";
        self.run(sql, Bytes::from(rows)).await.map(|_| ())
    }

    /// Empties the table after checkpoint rows saying "none" for every partition (a crash
    /// between leaves the rows, and their greatest positions as the checkpoints).
    pub async fn clear(&self, partitions: u32) -> Result<(), SinkError> {
        self.put_checkpoints((0..partitions).map(|part| (part, String::new())))
            .await?;
        self.run(&format!("TRUNCATE TABLE {}", self.table), Bytes::new())
            .await
            .map(|_| ())
    }

    /// The table partition a row goes to (days or months since 1970; 0 unpartitioned).
    fn part_of(&self, r: &Row) -> i64 {
        let day = |i: usize| match r.values.get(i) {
            Some(Value::Time(us)) => (*us / 86_400_000_000) as i64,
            _ => 0,
        };
        match self.parts {
            Parts::None => 0,
            Parts::Day(i) => day(i),
            Parts::Month(i) => {
                let (y, m, _) = civil_from_days(day(i));
                y * 12 + m
            }
        }
    }

    fn json_rows(&self, partition: u32, rows: &[Row]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rows.len() * 128);
        for r in rows {
            let mut o = serde_json::Map::with_capacity(self.names.len() + 3);
            for ((name, v), date) in self.names.iter().zip(&r.values).zip(&self.dates) {
                let j = match v {
                    Value::Null => continue,
                    Value::Text(s) | Value::Json(s) => json!(s),
                    Value::Int(i) => json!(i),
                    Value::Float(f) => json!(f),
                    Value::Bool(b) => json!(u8::from(*b)),
                    Value::Time(us) if *date => {
                        let (y, m, d) = civil_from_days((*us / 86_400_000_000) as i64);
                        json!(format!("{y:04}-{m:02}-{d:02}"))
                    }
                    Value::Time(us) => json!(us / 1_000_000),
                };
                o.insert(name.clone(), j);
            }
            o.insert("_strata_partition".into(), json!(partition));
            o.insert("_strata_shard".into(), json!(r.shard));
            o.insert("_strata_position".into(), json!(r.position));
            if serde_json::to_writer(&mut out, &o).is_ok() {
                out.push(b'\n');
            }
        }
        out
    }

    /// Rows and checksum ([`super::checksum`]) of a window, without `FINAL`.
    pub async fn tally(
        &self,
        (stream, version, time): &(String, String, String),
        (from_us, to_us): (u64, u64),
    ) -> Result<(u64, u64), SinkError> {
        let sql = format!(
            "SELECT count(), sum(toUInt64({version}) * 1000003 + length({stream})) FROM {} \
             WHERE {time} >= toDateTime({}) AND {time} < toDateTime({}) FORMAT TSV",
            self.table,
            from_us / 1_000_000,
            to_us / 1_000_000
        );
        let text = self.run(&sql, Bytes::new()).await?;
        let f: Vec<u64> = text
            .split('\t')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        match f[..] {
            [rows, sum] => Ok((rows, sum)),
            _ => Err(down(format!("a tally {text:?}"))),
        }
    }

    /// Active parts of the table.
    pub async fn active_parts(&self) -> Result<u64, SinkError> {
        let sql = format!(
            "SELECT count() FROM system.parts WHERE {} AND active",
            self.where_table()
        );
        let text = self.run(&sql, Bytes::new()).await?;
        text.parse()
            .map_err(|_| down(format!("a part count {text:?}")))
    }

    /// Drops partitions whose last day is more than `ttl_days` before `now_us`.
    pub async fn expire(&self, now_us: u64) -> Result<Vec<String>, SinkError> {
        let Some(ttl) = self.ttl_days else {
            return Ok(Vec::new());
        };
        let cutoff = (now_us / 86_400_000_000) as i64 - i64::from(ttl);
        let sql = format!(
            "SELECT DISTINCT partition FROM system.parts WHERE {} AND active FORMAT TSV",
            self.where_table()
        );
        let parts = self.run(&sql, Bytes::new()).await?;
        let old: Vec<&str> = parts
            .lines()
            .filter(|part| last_day(part).is_some_and(|d| d < cutoff))
            .collect();
        if old.is_empty() {
            return Ok(Vec::new());
        }
        // The checkpoints first, as rows of their own: a partition's dropped rows may hold
        // its greatest positions, and a checkpoint gone back would have them written again.
        let mut held = Vec::new();
        for (part, progress) in self.checkpoints().await? {
            held.push((part, serde_json::to_string(&progress).map_err(down)?));
        }
        self.put_checkpoints(held).await?;
        let mut dropped = Vec::new();
        for part in old {
            self.run(
                &format!("ALTER TABLE {} DROP PARTITION {part}", self.table),
                Bytes::new(),
            )
            .await?;
            dropped.push(part.to_string());
        }
        Ok(dropped)
    }
}

/// The last day (since 1970) of a partition named `YYYYMMDD` or `YYYYMM`.
fn last_day(partition: &str) -> Option<i64> {
    if !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = partition.parse().ok()?;
    match partition.len() {
        8 => Some(days_from_civil(n / 10_000, n / 100 % 100, n % 100)),
        6 => {
            let (y, m) = (n / 100, n % 100);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some(days_from_civil(ny, nm, 1) - 1)
        }
        _ => None,
    }
}

/// The pipeline's partitioning of the table from its `partition_key`, if the sink takes it.
fn partitioning(p: &Pipeline, key: &str) -> Option<Parts> {
    let key = key.trim();
    if key.is_empty() || key == "tuple()" {
        return Some(Parts::None);
    }
    let time_column = |inner: &str| {
        p.columns
            .iter()
            .position(|c| c.name == inner && c.ty == ColumnType::Time)
    };
    if let Some(inner) = key
        .strip_prefix("toYYYYMMDD(")
        .and_then(|k| k.strip_suffix(')'))
    {
        return time_column(inner).map(Parts::Day);
    }
    if let Some(inner) = key
        .strip_prefix("toYYYYMM(")
        .and_then(|k| k.strip_suffix(')'))
    {
        return time_column(inner).map(Parts::Month);
    }
    None
}

/// Whether an error answer is about the data (it will fail again) rather than the server.
fn rejected(text: &str) -> bool {
    const DATA_CODES: [&str; 6] = [
        "Code: 6,",
        "Code: 26,",
        "Code: 27,",
        "Code: 53,",
        "Code: 69,",
        "Code: 70,",
    ];
    DATA_CODES.iter().any(|c| text.starts_with(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_end_on_their_last_day() {
        assert_eq!(last_day("19700101"), Some(0));
        assert_eq!(last_day("197001"), Some(30));
        assert_eq!(last_day("197012"), Some(364));
        assert_eq!(last_day("tuple()"), None);
        assert_eq!(last_day("2026"), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encoded("INSERT INTO t (a) FORMAT X"),
            "INSERT%20INTO%20t%20%28a%29%20FORMAT%20X"
        );
    }
}
