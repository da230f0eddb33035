//! A pipeline file: where events come from, how they become rows, where the rows go. Every
//! value is checked when the file is read; a bad one is refused with the file, the line it is
//! on and what is wrong (`orders.toml:14: sink.kind: "postgre" is not a sink (postgres,
//! clickhouse)`).
//!
//! ```toml
//! name = "orders"                # 1–64 of [a-z0-9_-]; its consumer group is `etl-orders`
//!
//! [source]
//! prefix = "order-"              # streams starting with this ("" = every user stream)
//! event_types = ["OrderPlaced"]  # only these types (default: all); others are passed over
//! partitions = 4                 # the group's partitions (default 4, 1 to 64)
//! start = "start"                # a new pipeline begins at the log's "start" (default) or "end"
//!
//! [batch]
//! events_max = 1000              # events per sink write (default 1,000; 1 to 100,000)
//! bytes_max = 4194304            # bytes of event data per write (default 4 MiB; 1 KiB to 64 MiB)
//! linger_ms = 20                 # wait this long for more before a short write (default 20; ≤ 10,000)
//!
//! [sink]
//! kind = "clickhouse"            # postgres | clickhouse | mongo
//! url = "http://127.0.0.1:8123"  # postgres: a connection string ("host=… port=… user=… dbname=…");
//!                                # mongo: mongodb://HOST:PORT/DATABASE?replicaSet=…
//! table = "orders"               # must exist, with the columns below (mongo: a collection)
//! ttl_days = 90                  # clickhouse, a table partitioned by day or month: partitions
//!                                # older than this are dropped (18.16 has no TTL clause)
//!
//! [[column]]                     # one per column written, in order
//! name = "order_id"
//! from = "/order_id"             # a JSON pointer into the event's data, or one of the event's
//!                                # own fields: $stream $version $position $shard $type $id $time
//! type = "text"                  # text | int | float | bool | time | json
//! required = true                # quality: an event without it is quarantined (default: NULL)
//! min = 0                        # quality, int and float columns: the least allowed value
//! max = 1000000                  # quality: the greatest
//!
//! [quality]
//! unique = "order_id"            # a column whose values must not repeat …
//! unique_window = 10000          # … within this many of the pipeline's events (default 10,000)
//! reconcile_window_s = 60        # compare each minute's rows, source against sink (needs columns
//!                                # from $stream, $version and $time; see crate::reconcile)
//!
//! [throttle]
//! latency_target_ms = 1000       # a write slower than this slows the pipeline (default 1,000)
//! parts_max = 300                # clickhouse: active parts of the table above this slow it
//! pace_max_ms = 5000             # the longest pause between writes when slowed (default 5,000)
//! slot_lag_max_bytes = 1073741824 # postgres: a replication slot of the sink's server further
//!                                # behind than this many bytes of WAL slows it (default 1 GiB)
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// Largest pipeline file, bytes.
pub const FILE_BYTES_MAX: u64 = 1 << 20;
/// Most columns of a pipeline.
pub const COLUMNS_MAX: usize = 256;
/// Most event types a source names.
pub const EVENT_TYPES_MAX: usize = 256;
/// Most partitions of a pipeline's group.
pub const PARTITIONS_MAX: u32 = 64;
/// Most events of one sink write.
pub const BATCH_EVENTS_MAX: usize = 100_000;
/// Most bytes (of event data) of one sink write.
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// Fewest bytes a batch may be bounded to.
pub const BATCH_BYTES_MIN: usize = 1024;
/// Longest linger, milliseconds.
pub const LINGER_MS_MAX: u64 = 10_000;
/// Largest uniqueness window, events.
pub const UNIQUE_WINDOW_MAX: usize = 1_000_000;
/// Longest pause between writes the throttle may be set to, milliseconds.
pub const PACE_MS_MAX: u64 = 60_000;

/// Least replication slot lag a throttle may be set to, bytes.
pub const SLOT_LAG_BYTES_MIN: u64 = 64 * 1024;
/// Greatest, bytes.
pub const SLOT_LAG_BYTES_MAX: u64 = 1 << 40;

/// A pipeline file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    /// The file.
    pub file: String,
    /// Its line (1-based), 0 when the whole file is meant.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            n => write!(f, "{}:{n}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for PipelineError {}

/// Which sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// PostgreSQL (rows and checkpoint in one transaction).
    Postgres,
    /// ClickHouse over HTTP (atomic inserts, resumed from what the table holds).
    ClickHouse,
    /// MongoDB (documents by deterministic `_id`, checkpoint in the same transaction).
    Mongo,
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// A string.
    Text,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// true or false.
    Bool,
    /// A point in time (RFC 3339 in the event; microseconds inside).
    Time,
    /// Any JSON value, as its text.
    Json,
}

impl ColumnType {
    fn parse(name: &str) -> Option<ColumnType> {
        Some(match name {
            "text" => ColumnType::Text,
            "int" => ColumnType::Int,
            "float" => ColumnType::Float,
            "bool" => ColumnType::Bool,
            "time" => ColumnType::Time,
            "json" => ColumnType::Json,
            _ => return None,
        })
    }

    /// Its name in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Bool => "bool",
            ColumnType::Time => "time",
            ColumnType::Json => "json",
        }
    }
}

/// One of the event's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// Its stream.
    Stream,
    /// Its version in the stream.
    Version,
    /// Its position in its shard's log.
    Position,
    /// Its shard.
    Shard,
    /// Its type.
    Type,
    /// Its id.
    Id,
    /// When it was appended.
    Time,
}

impl Meta {
    fn parse(name: &str) -> Option<Meta> {
        Some(match name {
            "$stream" => Meta::Stream,
            "$version" => Meta::Version,
            "$position" => Meta::Position,
            "$shard" => Meta::Shard,
            "$type" => Meta::Type,
            "$id" => Meta::Id,
            "$time" => Meta::Time,
            _ => return None,
        })
    }

    /// The column type it fits.
    pub fn column_type(self) -> ColumnType {
        match self {
            Meta::Stream | Meta::Type | Meta::Id => ColumnType::Text,
            Meta::Version | Meta::Position | Meta::Shard => ColumnType::Int,
            Meta::Time => ColumnType::Time,
        }
    }
}

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// A JSON pointer into the event's data.
    Pointer(String),
    /// The event's own field.
    Meta(Meta),
}

/// A column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Its name in the sink.
    pub name: String,
    /// Where its value comes from.
    pub from: From,
    /// Its type.
    pub ty: ColumnType,
    /// An event without it is quarantined (else the column is NULL).
    pub required: bool,
    /// The least allowed value (int and float).
    pub min: Option<f64>,
    /// The greatest allowed value.
    pub max: Option<f64>,
    /// Its line in the file (for errors found when the sink is opened).
    pub line: usize,
}

/// Where a new pipeline starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The log's start.
    Start,
    /// The log's end when the pipeline is first run.
    End,
}

/// The source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// A stream prefix ("" = every user stream).
    pub prefix: String,
    /// Only these types (empty = all).
    pub event_types: Vec<String>,
    /// The group's partitions.
    pub partitions: u32,
    /// Where a new pipeline starts.
    pub start: Start,
}

/// How writes are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most events per write.
    pub events_max: usize,
    /// Most bytes of event data per write.
    pub bytes_max: usize,
    /// How long to wait for more before a short write, milliseconds.
    pub linger_ms: u64,
}

/// The sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// Which.
    pub kind: SinkKind,
    /// Where (a PostgreSQL connection string or ClickHouse's HTTP URL).
    pub url: String,
    /// The table written (MongoDB: the collection).
    pub table: String,
    /// The url's line in the file.
    pub url_line: usize,
    /// The table's line in the file.
    pub table_line: usize,
    /// ClickHouse: partitions older than this many days are dropped.
    pub ttl_days: Option<u32>,
}

/// Quality rules beyond the columns' own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quality {
    /// A column whose values must not repeat within `unique_window` events.
    pub unique: Option<usize>,
    /// The window, events.
    pub unique_window: usize,
    /// Reconcile each window of this many seconds once settled (see [`crate::reconcile`]).
    pub reconcile_window_s: Option<u64>,
}

/// The throttle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// A write slower than this slows the pipeline, milliseconds.
    pub latency_target_ms: u64,
    /// ClickHouse: more active parts than this slows the pipeline.
    pub parts_max: u64,
    /// The longest pause between writes, milliseconds.
    pub pace_max_ms: u64,
    /// PostgreSQL: a replication slot further behind than this, bytes of WAL, slows the
    /// pipeline.
    pub slot_lag_max_bytes: u64,
}

/// A checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// The source.
    pub source: Source,
    /// Write sizes.
    pub batch: Batching,
    /// The sink.
    pub sink: Sink,
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// Quality rules.
    pub quality: Quality,
    /// The throttle.
    pub throttle: Throttle,
}

impl Pipeline {
    /// Its consumer group.
    pub fn group(&self) -> String {
        format!("etl-{}", self.name)
    }

    /// Its quarantine stream.
    pub fn quarantine_stream(&self) -> String {
        format!("etl-quarantine-{}", self.name)
    }

    /// An error at `line` of its file (for what the sink finds when opened).
    pub fn error_at(&self, line: usize, message: impl Into<String>) -> PipelineError {
        PipelineError {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    name: Spanned<String>,
    source: SourceToml,
    #[serde(default)]
    batch: BatchToml,
    sink: SinkToml,
    #[serde(default)]
    column: Vec<Spanned<ColumnToml>>,
    #[serde(default)]
    quality: QualityToml,
    #[serde(default)]
    throttle: ThrottleToml,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceToml {
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    event_types: Option<Spanned<Vec<String>>>,
    partitions: Option<Spanned<u32>>,
    start: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchToml {
    events_max: Option<Spanned<usize>>,
    bytes_max: Option<Spanned<usize>>,
    linger_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkToml {
    kind: Spanned<String>,
    url: Spanned<String>,
    table: Spanned<String>,
    ttl_days: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnToml {
    name: Spanned<String>,
    from: Spanned<String>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    #[serde(default)]
    required: bool,
    min: Option<Spanned<f64>>,
    max: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QualityToml {
    unique: Option<Spanned<String>>,
    unique_window: Option<Spanned<usize>>,
    reconcile_window_s: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThrottleToml {
    latency_target_ms: Option<Spanned<u64>>,
    parts_max: Option<Spanned<u64>>,
    pace_max_ms: Option<Spanned<u64>>,
    slot_lag_max_bytes: Option<Spanned<u64>>,
}

/// Reads and checks the pipeline file at `path`.
pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
    let (file, text) = read(path)?;
    parse(&file, &text)
}

/// A configuration file's name and text, at most [`FILE_BYTES_MAX`] bytes.
pub(crate) fn read(path: &Path) -> Result<(String, String), PipelineError> {
    let file = path.display().to_string();
    let whole = |message: String| PipelineError {
        file: file.clone(),
        line: 0,
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| whole(format!("cannot read it: {e}")))?
        .len();
    if size > FILE_BYTES_MAX {
        return Err(whole(format!(
            "{size} bytes; a file is at most {FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
    Ok((file, text))
}

/// Checks pipeline file `text` (named `file` in errors).
pub fn parse(file: &str, text: &str) -> Result<Pipeline, PipelineError> {
    let at = Lines { file, text };
    let raw: FileToml = toml::from_str(text).map_err(|e| PipelineError {
        file: file.into(),
        line: e.span().map_or(0, |s| at.line(s.start)),
        message: e.message().trim().to_string(),
    })?;
    let name = check_name(&at, &raw.name)?;
    let source = source(&at, raw.source)?;
    let batch = batching(&at, raw.batch)?;
    let sink = sink(&at, raw.sink)?;
    let columns = columns(&at, raw.column)?;
    let quality = quality(&at, raw.quality, &columns)?;
    let throttle = throttle(&at, raw.throttle)?;
    Ok(Pipeline {
        name,
        file: file.into(),
        source,
        batch,
        sink,
        columns,
        quality,
        throttle,
    })
}

/// Turns byte offsets into lines of one file.
pub(crate) struct Lines<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Lines<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    pub(crate) fn err<T, V>(
        &self,
        at: &Spanned<V>,
        message: impl Into<String>,
    ) -> Result<T, PipelineError> {
        Err(PipelineError {
            file: self.file.into(),
            line: self.line(at.span().start),
            message: message.into(),
        })
    }

    /// `value` within `lo..=hi`, or `default` when absent.
    pub(crate) fn within<V: PartialOrd + Copy + std::fmt::Display>(
        &self,
        key: &str,
        value: Option<Spanned<V>>,
        (lo, hi): (V, V),
        default: V,
    ) -> Result<V, PipelineError> {
        match value {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => self.err(&v, format!("{key}: {lo} to {hi}, not {}", v.get_ref())),
        }
    }
}

pub(crate) fn check_name(at: &Lines, name: &Spanned<String>) -> Result<String, PipelineError> {
    let n = name.get_ref();
    let ok = (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return at.err(
            name,
            format!("name: 1 to 64 of a-z, 0-9, _ and -, not {n:?}"),
        );
    }
    Ok(n.clone())
}

fn source(at: &Lines, s: SourceToml) -> Result<Source, PipelineError> {
    if let Some(p) = s.prefix.as_ref().filter(|p| p.get_ref().starts_with('$')) {
        return at.err(
            p,
            "source.prefix: a user stream prefix (not starting with '$')",
        );
    }
    let prefix = s.prefix.map(Spanned::into_inner).unwrap_or_default();
    let event_types = match s.event_types {
        None => Vec::new(),
        Some(t)
            if t.get_ref().len() > EVENT_TYPES_MAX || t.get_ref().iter().any(String::is_empty) =>
        {
            return at.err(
                &t,
                format!("source.event_types: at most {EVENT_TYPES_MAX}, none empty"),
            )
        }
        Some(t) => t.into_inner(),
    };
    let partitions = at.within("source.partitions", s.partitions, (1, PARTITIONS_MAX), 4)?;
    let start = match s.start {
        None => Start::Start,
        Some(v) => match v.get_ref().as_str() {
            "start" => Start::Start,
            "end" => Start::End,
            other => {
                return at.err(
                    &v,
                    format!("source.start: \"start\" or \"end\", not {other:?}"),
                )
            }
        },
    };
    Ok(Source {
        prefix,
        event_types,
        partitions,
        start,
    })
}

fn batching(at: &Lines, b: BatchToml) -> Result<Batching, PipelineError> {
    Ok(Batching {
        events_max: at.within(
            "batch.events_max",
            b.events_max,
            (1, BATCH_EVENTS_MAX),
            1000,
        )?,
        bytes_max: at.within(
            "batch.bytes_max",
            b.bytes_max,
            (BATCH_BYTES_MIN, BATCH_BYTES_MAX),
            4 << 20,
        )?,
        linger_ms: at.within("batch.linger_ms", b.linger_ms, (0, LINGER_MS_MAX), 20)?,
    })
}

/// A table name both sinks take unquoted: a letter or `_`, then letters, digits and `_`
/// (ClickHouse: an optional `database.` before it).
pub(crate) fn table_name_ok(name: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    let mut parts = name.split('.');
    let n = name.split('.').count();
    n <= 2 && parts.all(part_ok)
}

fn sink(at: &Lines, s: SinkToml) -> Result<Sink, PipelineError> {
    let kind = match s.kind.get_ref().as_str() {
        "postgres" => SinkKind::Postgres,
        "clickhouse" => SinkKind::ClickHouse,
        "mongo" => SinkKind::Mongo,
        other => {
            return at.err(
                &s.kind,
                format!("sink.kind: {other:?} is not a sink (postgres, clickhouse, mongo)"),
            )
        }
    };
    if kind == SinkKind::Mongo && !s.url.get_ref().starts_with("mongodb://") {
        return at.err(
            &s.url,
            format!(
                "sink.url: a MongoDB URI, mongodb://HOST:PORT/DATABASE, not {:?}",
                s.url.get_ref()
            ),
        );
    }
    let url = s.url.get_ref();
    if kind == SinkKind::ClickHouse && !url.starts_with("http://") {
        return at.err(
            &s.url,
            format!("sink.url: ClickHouse's HTTP address, http://HOST:PORT, not {url:?}"),
        );
    }
    if url.is_empty() || url.len() > 1024 {
        return at.err(&s.url, "sink.url: 1 to 1024 bytes");
    }
    if !table_name_ok(s.table.get_ref()) {
        return at.err(
            &s.table,
            format!(
                "sink.table: a letter or _, then letters, digits and _ (at most 63), not {:?}",
                s.table.get_ref()
            ),
        );
    }
    let ttl_days = match s.ttl_days {
        Some(t) if kind != SinkKind::ClickHouse => {
            return at.err(&t, "sink.ttl_days: only for the clickhouse sink")
        }
        Some(t) if *t.get_ref() == 0 => return at.err(&t, "sink.ttl_days: at least 1"),
        t => t.map(Spanned::into_inner),
    };
    Ok(Sink {
        kind,
        url_line: at.line(s.url.span().start),
        url: url.clone(),
        table_line: at.line(s.table.span().start),
        table: s.table.into_inner(),
        ttl_days,
    })
}

fn columns(at: &Lines, raw: Vec<Spanned<ColumnToml>>) -> Result<Vec<Column>, PipelineError> {
    if raw.is_empty() {
        return Err(PipelineError {
            file: at.file.into(),
            line: 0,
            message: "no [[column]]: a pipeline writes at least one column".into(),
        });
    }
    let mut out: Vec<Column> = Vec::new();
    for c in raw {
        let line = at.line(c.span().start);
        if out.len() == COLUMNS_MAX {
            return at.err(&c, format!("at most {COLUMNS_MAX} columns"));
        }
        let c = c.into_inner();
        let col = column(at, c, line)?;
        if out.iter().any(|o| o.name == col.name) {
            return Err(PipelineError {
                file: at.file.into(),
                line,
                message: format!("column {:?} is named twice", col.name),
            });
        }
        out.push(col);
    }
    Ok(out)
}

fn column(at: &Lines, c: ColumnToml, line: usize) -> Result<Column, PipelineError> {
    if !table_name_ok(c.name.get_ref()) || c.name.get_ref().contains('.') {
        return at.err(
            &c.name,
            format!(
                "column name: a letter or _, then letters, digits and _, not {:?}",
                c.name.get_ref()
            ),
        );
    }
    let Some(ty) = ColumnType::parse(c.ty.get_ref()) else {
        return at.err(
            &c.ty,
            format!(
                "column type: text, int, float, bool, time or json, not {:?}",
                c.ty.get_ref()
            ),
        );
    };
    let f = c.from.get_ref();
    let from = if f.starts_with('$') {
        let Some(m) = Meta::parse(f) else {
            return at.err(&c.from, format!("column from: {f:?} is not an event field ($stream $version $position $shard $type $id $time)"));
        };
        if m.column_type() != ty && ty != ColumnType::Json {
            return at.err(
                &c.ty,
                format!(
                    "column {}: {f} is {}, not {}",
                    c.name.get_ref(),
                    m.column_type().name(),
                    ty.name()
                ),
            );
        }
        From::Meta(m)
    } else if f.is_empty() || f.starts_with('/') {
        From::Pointer(f.clone())
    } else {
        return at.err(
            &c.from,
            format!(
                "column from: a JSON pointer (\"/a/b\") or an event field ($stream …), not {f:?}"
            ),
        );
    };
    let number = matches!(ty, ColumnType::Int | ColumnType::Float);
    for bound in [&c.min, &c.max].into_iter().flatten() {
        if !number || !bound.get_ref().is_finite() {
            return at.err(
                bound,
                "min and max: finite numbers, only on int and float columns",
            );
        }
    }
    if let (Some(lo), Some(hi)) = (&c.min, &c.max) {
        if lo.get_ref() > hi.get_ref() {
            return at.err(
                hi,
                format!("max ({}) is below min ({})", hi.get_ref(), lo.get_ref()),
            );
        }
    }
    Ok(Column {
        name: c.name.into_inner(),
        from,
        ty,
        required: c.required,
        min: c.min.map(Spanned::into_inner),
        max: c.max.map(Spanned::into_inner),
        line,
    })
}

fn quality(at: &Lines, q: QualityToml, columns: &[Column]) -> Result<Quality, PipelineError> {
    let unique = match &q.unique {
        None => None,
        Some(name) => match columns.iter().position(|c| &c.name == name.get_ref()) {
            Some(i) => Some(i),
            None => {
                return at.err(
                    name,
                    format!("quality.unique: no column {:?}", name.get_ref()),
                )
            }
        },
    };
    let reconcile_window_s = match q.reconcile_window_s {
        None => None,
        Some(w) => {
            let meta = |m: Meta| columns.iter().any(|c| c.from == From::Meta(m));
            if !(meta(Meta::Stream) && meta(Meta::Version) && meta(Meta::Time)) {
                return at.err(&w, "quality.reconcile_window_s: the pipeline must write columns from $stream, $version and $time");
            }
            Some(at.within("quality.reconcile_window_s", Some(w), (1, 86_400), 60)?)
        }
    };
    Ok(Quality {
        unique,
        unique_window: at.within(
            "quality.unique_window",
            q.unique_window,
            (1, UNIQUE_WINDOW_MAX),
            10_000,
        )?,
        reconcile_window_s,
    })
}

fn throttle(at: &Lines, t: ThrottleToml) -> Result<Throttle, PipelineError> {
    Ok(Throttle {
        latency_target_ms: at.within(
            "throttle.latency_target_ms",
            t.latency_target_ms,
            (1, PACE_MS_MAX),
            1000,
        )?,
        parts_max: at.within("throttle.parts_max", t.parts_max, (1, 100_000), 300)?,
        pace_max_ms: at.within(
            "throttle.pace_max_ms",
            t.pace_max_ms,
            (0, PACE_MS_MAX),
            5000,
        )?,
        slot_lag_max_bytes: at.within(
            "throttle.slot_lag_max_bytes",
            t.slot_lag_max_bytes,
            (SLOT_LAG_BYTES_MIN, SLOT_LAG_BYTES_MAX),
            1 << 30,
        )?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"name = "orders"
[source]
prefix = "order-"
event_types = ["OrderPlaced"]
[sink]
kind = "postgres"
url = "host=127.0.0.1"
table = "orders"
[[column]]
name = "id"
from = "$stream"
type = "text"
[[column]]
name = "amount"
from = "/amount"
type = "float"
required = true
min = 0
[quality]
unique = "id"
"#;

    fn error(text: &str) -> String {
        parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_has_its_defaults() {
        let p = parse("p.toml", GOOD).unwrap();
        assert_eq!(p.group(), "etl-orders");
        assert_eq!(p.source.partitions, 4);
        assert_eq!(p.batch.events_max, 1000);
        assert_eq!(p.columns[1].from, From::Pointer("/amount".into()));
        assert_eq!(p.columns[1].line, 13);
        assert_eq!(p.sink.table_line, 8);
        assert_eq!(p.quality.unique, Some(0));
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let e = error(&GOOD.replace("\"postgres\"", "\"postgre\""));
        assert_eq!(
            e,
            "p.toml:6: sink.kind: \"postgre\" is not a sink (postgres, clickhouse, mongo)"
        );
        let e = error(&GOOD.replace("\"float\"", "\"decimal\""));
        assert!(e.starts_with("p.toml:16: column type"), "{e}");
        let e = error(&GOOD.replace("\"/amount\"", "\"amount\""));
        assert!(e.starts_with("p.toml:15: column from"), "{e}");
        let e = error(&GOOD.replace("\"$stream\"", "\"$streem\""));
        assert!(e.starts_with("p.toml:11:"), "{e}");
        let e = error(&GOOD.replace("unique = \"id\"", "unique = \"nope\""));
        assert!(e.starts_with("p.toml:20: quality.unique"), "{e}");
        let e = error(&GOOD.replace("[source]", "[source]\npartitions = 0"));
        assert!(e.starts_with("p.toml:3: source.partitions: 1 to 64"), "{e}");
        let e = error(&GOOD.replace("table = \"orders\"", "table = \"orders; drop\""));
        assert!(e.starts_with("p.toml:8: sink.table"), "{e}");
        let e = error(&GOOD.replace("min = 0", "min = 0\nmax = -1"));
        assert!(e.starts_with("p.toml:19: max"), "{e}");
        let e = error(&GOOD.replace("[source]", "[source]\nprefx = \"a\""));
        assert!(e.starts_with("p.toml:3:") && e.contains("prefx"), "{e}");
        let e = error(&GOOD.replace(
            "from = \"$stream\"\ntype = \"text\"",
            "from = \"$version\"\ntype = \"text\"",
        ));
        assert!(
            e.starts_with("p.toml:12: column id: $version is int"),
            "{e}"
        );
        let e = error(&format!("{GOOD}[throttle]\nslot_lag_max_bytes = 1000\n"));
        assert_eq!(
            e,
            "p.toml:22: throttle.slot_lag_max_bytes: 65536 to 1099511627776, not 1000"
        );
        let p = parse("p.toml", GOOD).unwrap();
        assert_eq!(p.throttle.slot_lag_max_bytes, 1 << 30);
    }
}
