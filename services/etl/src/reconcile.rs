//! Reconciliation: for a window of append times, the rows the source says the sink should
//! hold against the rows it holds — a count and a checksum over the rows' keys on each side.
//!
//! The source side reads the store: the events of the window the pipeline takes (its prefix
//! and event types), less those its quarantine stream holds. The sink side asks the sink for
//! the rows whose time column falls in the window (ClickHouse without `FINAL`, so a row
//! inserted twice shows). The checksum is [`checksum`]: the sum, modulo 2⁶⁴, of
//! `version × 1,000,003 + length(stream)` — computable by each sink's SQL. Windows are whole
//! seconds (ClickHouse's `DateTime` is), so truncating a row's time keeps it in its window.
//!
//! The pipeline must write its events' `$stream`, `$version` and `$time` (checked when the
//! window is asked for). `POST /api/v1/pipelines/NAME/reconcile` runs one window on request;
//! `[quality] reconcile_window_s = N` runs each window of N seconds once it has settled (its
//! end is 10 s plus twice the pipeline's lag in the past), and exports
//! `strata_etl_reconcile_windows_total{result="match"|"mismatch"}` and the last window's
//! `strata_etl_reconcile_source_rows` / `_sink_rows`.

use std::collections::HashSet;

use serde::Serialize;
use strata_client::{pb, Client};

use crate::pipeline::{From, Meta, Pipeline};
use crate::sink::Sink;
pub use crate::sink::{checksum, WINDOW_EVENTS_MAX};

/// Longest window, seconds.
pub const WINDOW_SECONDS_MAX: u64 = 86_400;
/// Events per read of the store.
const PAGE: u32 = 1000;

/// One window's comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The window's start, µs since the epoch (inclusive).
    pub from_us: u64,
    /// Its end (exclusive).
    pub to_us: u64,
    /// Rows the source says the sink should hold.
    pub source_rows: u64,
    /// Their checksum.
    pub source_checksum: u64,
    /// Rows the sink holds.
    pub sink_rows: u64,
    /// Their checksum.
    pub sink_checksum: u64,
    /// Whether both agree.
    pub ok: bool,
}

/// The names of the columns the pipeline writes `$stream`, `$version` and `$time` to.
pub fn key_columns(p: &Pipeline) -> Result<(String, String, String), String> {
    let find = |m: Meta| {
        p.columns
            .iter()
            .find(|c| c.from == From::Meta(m))
            .map(|c| c.name.clone())
    };
    match (find(Meta::Stream), find(Meta::Version), find(Meta::Time)) {
        (Some(s), Some(v), Some(t)) => Ok((s, v, t)),
        _ => Err(format!(
            "pipeline {}: reconciliation needs columns from $stream, $version and $time",
            p.name
        )),
    }
}

/// Longest one window's reconciliation may take.
pub const WINDOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Compares window `[from_us, to_us)` (whole seconds) of pipeline `p` (within
/// [`WINDOW_TIMEOUT`]).
pub async fn window(
    p: &Pipeline,
    store: &Client,
    sink: &Sink,
    from_us: u64,
    to_us: u64,
) -> Result<Report, String> {
    tokio::time::timeout(WINDOW_TIMEOUT, compare(p, store, sink, from_us, to_us))
        .await
        .unwrap_or_else(|_| Err(format!("the window took over {WINDOW_TIMEOUT:?}")))
}

async fn compare(
    p: &Pipeline,
    store: &Client,
    sink: &Sink,
    from_us: u64,
    to_us: u64,
) -> Result<Report, String> {
    let columns = key_columns(p)?;
    if from_us % 1_000_000 != 0 || to_us % 1_000_000 != 0 || from_us >= to_us {
        return Err("a window is whole seconds, its start before its end".into());
    }
    if to_us - from_us > WINDOW_SECONDS_MAX * 1_000_000 {
        return Err(format!("a window is at most {WINDOW_SECONDS_MAX} s"));
    }
    let quarantined = quarantined_keys(p, store, from_us, to_us).await?;
    let mut source_rows = 0;
    let mut source_checksum = 0u64;
    let types = &p.source.event_types;
    for_each_event(store, &p.source.prefix, from_us, to_us, |e| {
        let wanted = types.is_empty() || types.contains(&e.r#type);
        let key = (e.stream.clone(), e.version);
        if wanted && e.stream != p.quarantine_stream() && !quarantined.contains(&key) {
            source_rows += 1;
            source_checksum =
                source_checksum.wrapping_add(checksum([(e.stream.as_str(), e.version)]));
        }
    })
    .await?;
    let (sink_rows, sink_checksum) = sink
        .tally(&columns, (from_us, to_us))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Report {
        from_us,
        to_us,
        source_rows,
        source_checksum,
        sink_rows,
        sink_checksum,
        ok: source_rows == sink_rows && source_checksum == sink_checksum,
    })
}

/// (stream, version) of the events quarantined from the window.
async fn quarantined_keys(
    p: &Pipeline,
    store: &Client,
    from_us: u64,
    to_us: u64,
) -> Result<HashSet<(String, u64)>, String> {
    let mut keys = HashSet::new();
    let stream = p.quarantine_stream();
    // Quarantined after their events were appended: from the window's start to now.
    for_each_event(store, &stream, from_us, u64::MAX, |e| {
        if e.stream != stream {
            return;
        }
        let Ok(q) = serde_json::from_slice::<serde_json::Value>(&e.data) else {
            return;
        };
        let at = q["appended_us"].as_u64().unwrap_or(0);
        if (from_us..to_us).contains(&at) {
            let s = q["stream"].as_str().unwrap_or_default().to_string();
            keys.insert((s, q["version"].as_u64().unwrap_or(0)));
        }
    })
    .await?;
    Ok(keys)
}

/// Calls `f` with each event of streams starting with `prefix` appended in `[from_us, to_us)`
/// (at most [`WINDOW_EVENTS_MAX`]).
async fn for_each_event(
    store: &Client,
    prefix: &str,
    from_us: u64,
    to_us: u64,
    mut f: impl FnMut(&pb::RecordedEvent),
) -> Result<(), String> {
    let log = store
        .get_log(Some(from_us))
        .await
        .map_err(|e| format!("store: {e}"))?;
    // A node of several shards answers with a cursor (then the position is 0), one of one
    // shard with a position.
    let position = |cursor: &[u8], at: u64| if cursor.is_empty() { at } else { 0 };
    let mut request = pb::ReadAllRequest {
        from_position: position(
            &log.cursor_at_or_after,
            log.first_position_at_or_after.unwrap_or(log.end_position),
        ),
        limit: PAGE,
        filter: Some(pb::Filter {
            stream_prefix: prefix.into(),
            event_types: Vec::new(),
            partitions: None,
        }),
        from_cursor: log.cursor_at_or_after.clone(),
        ..Default::default()
    };
    let mut seen = 0u64;
    let mut last = None;
    loop {
        let page = store
            .read_all(request.clone())
            .await
            .map_err(|e| format!("store: {e}"))?;
        // A filtered page can be empty and still move on (the store scans a bounded number of
        // records per page); at the end, reading from where the last page said to go on gives
        // an empty page saying the same place again.
        let next = (page.next_position, page.next_cursor.clone());
        if page.events.is_empty() && last.as_ref() == Some(&next) {
            return Ok(());
        }
        last = Some(next);
        for e in &page.events {
            if e.timestamp_us >= to_us {
                return Ok(());
            }
            if e.timestamp_us >= from_us {
                seen += 1;
                if seen > WINDOW_EVENTS_MAX {
                    return Err(format!(
                        "more than {WINDOW_EVENTS_MAX} events in the window: take a smaller one"
                    ));
                }
                f(e);
            }
        }
        request.from_position = position(&page.next_cursor, page.next_position);
        request.from_cursor = page.next_cursor.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_the_sum_the_sinks_compute() {
        assert_eq!(checksum([("ab", 3), ("c", 0)]), 3 * 1_000_003 + 2 + 1);
        assert_eq!(checksum([("", u64::MAX)]), u64::MAX.wrapping_mul(1_000_003));
    }
}
