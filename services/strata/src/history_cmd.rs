//! The commands over a stream's history: metadata, deletion, snapshots, state, snapshot
//! policies and `diff`. JSON lines on stdout, like the other client commands.

use std::path::PathBuf;

use serde_json::{json, Map, Value};
use strata_proto::v1 as pb;

use crate::client::{self, failure, usage, AsOfArg, ConsistencyArg, ServerArg};
use crate::{output, Failure};
use strata_client::Client;

/// Events one `diff` reads between its two points at most (it says so when it stops).
pub const DIFF_EVENTS_MAX: usize = 100_000;

/// `strata stream-meta`.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// Stream name.
    stream: String,
    /// Hide events older than this many seconds.
    #[arg(long)]
    max_age: Option<f64>,
    /// Keep only the newest N events.
    #[arg(long)]
    max_count: Option<u64>,
    /// Hide versions below this one.
    #[arg(long)]
    truncate_before: Option<u64>,
    /// Only if the metadata is still at this version (see stream-info).
    #[arg(long)]
    expected_metadata_version: Option<u64>,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Stream name.
    stream: String,
    /// Tombstone it: appends are refused for good. Default: soft delete (appending again
    /// recreates it, continuing its versions).
    #[arg(long)]
    hard: bool,
    /// Expected version: any, no-stream, exists, or a version number. Checked when the
    /// deletion is written: an append that lands first makes it fail with exit status 3 (a
    /// soft delete with `any` reads again and retries, a few times).
    #[arg(long, default_value = "any")]
    expected: String,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Stream name.
    stream: String,
    /// The stream version the state includes.
    #[arg(long)]
    version: u64,
    /// Your snapshot format's version.
    #[arg(long, default_value_t = 1)]
    schema_version: u32,
    /// The state as JSON.
    #[arg(long, group = "payload", required_unless_present = "data_file")]
    data: Option<String>,
    /// Read the state from a file (any bytes).
    #[arg(long, group = "payload")]
    data_file: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata state`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// Stream name.
    stream: String,
    /// Most events after the snapshot (0: the server's default, 1000).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    #[command(flatten)]
    as_of: AsOfArg,
    #[command(flatten)]
    consistency: ConsistencyArg,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata snapshot-policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Stream name prefix ("" for every stream).
    prefix: String,
    /// Events between snapshots (0 turns them off).
    #[arg(long)]
    every: u64,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Stream name.
    stream: String,
    /// The earlier point: an RFC 3339 time, `version:N` or `position:P`.
    #[arg(long, value_parser = parse_point)]
    from: pb::AsOf,
    /// The later point (same forms).
    #[arg(long, value_parser = parse_point)]
    to: pb::AsOf,
    #[command(flatten)]
    server: ServerArg,
}

/// A point of `diff`: an RFC 3339 time, `version:N` or `position:P`.
pub fn parse_point(text: &str) -> Result<pb::AsOf, String> {
    use pb::as_of::Point;
    let number = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("`{n}` is not a number"))
    };
    let point = if let Some(v) = text.strip_prefix("version:") {
        Point::Version(number(v)?)
    } else if let Some(p) = text.strip_prefix("position:") {
        Point::Position(number(p)?)
    } else {
        Point::TimestampUs(
            client::parse_rfc3339_us(text)
                .map_err(|e| format!("{e}, or version:N, or position:P"))?,
        )
    };
    Ok(pb::AsOf { point: Some(point) })
}

/// `strata stream-meta`: prints the position of the metadata record.
pub async fn set_meta(args: MetaArgs) -> Result<(), Failure> {
    let max_age_us = match args.max_age {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(usage(format!(
                "--max-age must be a positive number of seconds, not {s}"
            )))
        }
        Some(s) => Some((s * 1e6) as u64),
        None => None,
    };
    let request = pb::SetStreamMetadataRequest {
        stream: args.stream,
        metadata: Some(pb::StreamMetadata {
            max_age_us,
            max_count: args.max_count,
            truncate_before: args.truncate_before,
        }),
        expected_metadata_version: args.expected_metadata_version,
    };
    let r = args
        .server
        .client()?
        .set_metadata(request)
        .await
        .map_err(failure)?;
    output::line(&json!({ "position": r.position }));
    Ok(())
}

/// `strata delete`.
pub async fn delete(args: DeleteArgs) -> Result<(), Failure> {
    let request = pb::DeleteStreamRequest {
        stream: args.stream,
        hard: args.hard,
        expected: Some(client::expected(&args.expected)?.wire()),
    };
    let r = args
        .server
        .client()?
        .delete(request)
        .await
        .map_err(failure)?;
    output::line(&json!({ "position": r.position, "hard": args.hard }));
    Ok(())
}

/// `strata snapshot`.
pub async fn save_snapshot(args: SnapshotArgs) -> Result<(), Failure> {
    let data = match (&args.data, &args.data_file) {
        (Some(text), _) => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| usage(format!("--data is not JSON: {e}")))?;
            value.to_string().into_bytes()
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => return Err(usage("give --data or --data-file")),
    };
    let request = pb::SaveSnapshotRequest {
        stream: args.stream,
        version: args.version,
        schema_version: args.schema_version,
        data: data.into(),
    };
    let r = args
        .server
        .client()?
        .save_snapshot(request)
        .await
        .map_err(failure)?;
    output::line(&json!({ "position": r.position }));
    Ok(())
}

async fn read_state(
    client: &Client,
    request: pb::ReadStateRequest,
) -> Result<pb::ReadStateResponse, Failure> {
    client.read_state(request).await.map_err(failure)
}

fn snapshot_json(s: &pb::Snapshot) -> Value {
    json!({
        "version": s.version,
        "schema_version": s.schema_version,
        "data": output::payload(&s.data),
        "timestamp_us": s.timestamp_us,
        "position": s.position,
    })
}

/// `strata state`: one line `{"snapshot", "version", "complete", "snapshot_due"}`, then the
/// events after the snapshot.
pub async fn state(args: StateArgs) -> Result<(), Failure> {
    let r = read_state(
        &args.server.client()?,
        pb::ReadStateRequest {
            stream: args.stream,
            as_of: args.as_of.wire(),
            limit: args.limit,
            consistency: args.consistency.wire() as i32,
        },
    )
    .await?;
    let version = if r.exists {
        json!(r.version)
    } else {
        Value::Null
    };
    output::line(&json!({
        "stream": r.stream,
        "snapshot": r.snapshot.as_ref().map(snapshot_json),
        "version": version,
        "complete": r.complete,
        "snapshot_due": r.snapshot_due,
        "events": r.events.len(),
    }));
    for e in &r.events {
        output::line(&output::event(e));
    }
    Ok(())
}

/// `strata snapshot-policy`: prints every policy in force.
pub async fn set_policy(args: PolicyArgs) -> Result<(), Failure> {
    let request = pb::SnapshotPolicy {
        stream_prefix: args.prefix,
        every: args.every,
    };
    let r = args
        .server
        .client()?
        .set_snapshot_policy(request)
        .await
        .map_err(failure)?;
    for p in r.policies {
        output::line(&json!({ "prefix": p.stream_prefix, "every": p.every }));
    }
    Ok(())
}

/// A stream's state at a point, reduced to JSON: the snapshot's JSON (or `{}` without one),
/// with each later event's JSON data applied as a merge patch (RFC 7386). `None` when a
/// payload is not JSON.
struct StateAt {
    version: Option<u64>,
    state: Option<Value>,
}

async fn state_at(client: &Client, stream: &str, point: &pb::AsOf) -> Result<StateAt, Failure> {
    let r = read_state(
        client,
        pb::ReadStateRequest {
            stream: stream.to_string(),
            as_of: Some(*point),
            limit: 0,
            consistency: pb::Consistency::Linearizable as i32,
        },
    )
    .await?;
    if !r.exists {
        return Ok(StateAt {
            version: None,
            state: Some(json!({})),
        });
    }
    let mut state = match &r.snapshot {
        Some(s) => serde_json::from_slice::<Value>(&s.data).ok(),
        None => Some(json!({})),
    };
    let mut events = r.events;
    let mut next = events.last().map(|e| e.version + 1);
    loop {
        for e in &events {
            state = match (state, serde_json::from_slice::<Value>(&e.data)) {
                (Some(s), Ok(patch)) => Some(merge_patch(s, patch)),
                _ => None,
            };
        }
        let Some(from) = next.filter(|n| *n <= r.version) else {
            break;
        };
        events = read_between(client, stream, from, point).await?;
        if events.is_empty() {
            break;
        }
        next = events.last().map(|e| e.version + 1);
    }
    Ok(StateAt {
        version: Some(r.version),
        state,
    })
}

async fn read_between(
    client: &Client,
    stream: &str,
    from: u64,
    to: &pb::AsOf,
) -> Result<Vec<pb::RecordedEvent>, Failure> {
    let request = pb::ReadRequest {
        stream: stream.to_string(),
        from_version: Some(from),
        direction: pb::Direction::Forwards as i32,
        limit: 1000,
        consistency: pb::Consistency::Linearizable as i32,
        as_of: Some(*to),
    };
    let r = client.read(request).await.map_err(failure)?;
    Ok(r.events)
}

/// RFC 7386: applies `patch` to `target`.
pub fn merge_patch(target: Value, patch: Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch;
    };
    let mut target = match target {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            let old = target.remove(&key).unwrap_or(Value::Null);
            target.insert(key, merge_patch(old, value));
        }
    }
    Value::Object(target)
}

/// The structural difference from `a` to `b` as JSON-Patch-like operations (RFC 6902 `add`,
/// `remove`, `replace`, with the old value beside the new), by JSON Pointer path. Objects are
/// compared key by key; anything else is replaced whole.
pub fn diff(a: &Value, b: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    diff_at(String::new(), a, b, &mut out);
    out
}

fn diff_at(path: String, a: &Value, b: &Value, out: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let pointer = |k: &str| format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
            for (k, old) in x {
                match y.get(k) {
                    Some(new) => diff_at(pointer(k), old, new, out),
                    None => out.push(json!({"op": "remove", "path": pointer(k), "old": old})),
                }
            }
            for (k, new) in y.iter().filter(|(k, _)| !x.contains_key(*k)) {
                out.push(json!({"op": "add", "path": pointer(k), "value": new}));
            }
        }
        _ if a == b => {}
        _ => out.push(json!({"op": "replace", "path": path, "old": a, "value": b})),
    }
}

/// `strata diff`: the events after `--from` up to `--to`, one per line, then one line
/// `{"from_version", "to_version", "diff"}` — `diff` is null unless both states are JSON.
pub async fn run_diff(args: DiffArgs) -> Result<(), Failure> {
    let server = &args.server.client()?;
    let before = state_at(server, &args.stream, &args.from).await?;
    let after = state_at(server, &args.stream, &args.to).await?;
    if before.version > after.version {
        return Err(usage(format!(
            "--from (version {:?}) is later than --to (version {:?})",
            before.version, after.version
        )));
    }
    let mut next = before.version.map_or(0, |v| v + 1);
    let mut listed = 0;
    while after.version.is_some_and(|v| next <= v) && listed < DIFF_EVENTS_MAX {
        let events = read_between(server, &args.stream, next, &args.to).await?;
        let Some(last) = events.last() else { break };
        next = last.version + 1;
        for e in &events {
            output::line(&output::event(e));
        }
        listed += events.len();
    }
    let structural = match (&before.state, &after.state) {
        (Some(a), Some(b)) => json!(diff(a, b)),
        _ => Value::Null,
    };
    output::line(&json!({
        "from_version": before.version,
        "to_version": after.version,
        "events": listed,
        "truncated": listed >= DIFF_EVENTS_MAX,
        "diff": structural,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let patch = json!({"a": "z", "c": {"f": null}});
        assert_eq!(
            merge_patch(target, patch),
            json!({"a": "z", "c": {"d": "e"}})
        );
        assert_eq!(merge_patch(json!({"a": 1}), json!([1])), json!([1]));
        assert_eq!(merge_patch(json!([1]), json!({"a": 1})), json!({"a": 1}));
    }

    #[test]
    fn diff_lists_adds_removes_and_replacements_by_pointer() {
        let a = json!({"balance": 10, "owner": {"name": "ann"}, "gone": true, "a/b": 1});
        let b = json!({"balance": 25, "owner": {"name": "ann", "city": "x"}, "a/b": 2});
        let d = diff(&a, &b);
        assert!(d.contains(&json!({"op": "replace", "path": "/balance", "old": 10, "value": 25})));
        assert!(d.contains(&json!({"op": "add", "path": "/owner/city", "value": "x"})));
        assert!(d.contains(&json!({"op": "remove", "path": "/gone", "old": true})));
        assert!(d.contains(&json!({"op": "replace", "path": "/a~1b", "old": 1, "value": 2})));
        assert_eq!(d.len(), 4);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn points_parse() {
        use pb::as_of::Point;
        assert_eq!(
            parse_point("version:7").unwrap().point,
            Some(Point::Version(7))
        );
        assert_eq!(
            parse_point("position:9").unwrap().point,
            Some(Point::Position(9))
        );
        assert_eq!(
            parse_point("1970-01-01T00:00:01Z").unwrap().point,
            Some(Point::TimestampUs(1_000_000))
        );
        assert!(parse_point("yesterday").is_err());
    }
}
