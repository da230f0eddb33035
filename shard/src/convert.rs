//! Conversions between the wire types (`strata.v1`) and the engine's types. Field names in
//! errors are the wire's (`events[2].id`, `streams[1].events[0].id`).

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use strata_engine::{
    AppendRequest, AppendResult, Direction, ExpectedVersion, NewEvent, Record, RecordedEvent,
    StreamAppend,
};
use strata_proto::v1 as pb;
use tonic::Status;
use uuid::Uuid;

use crate::ids::IdSource;
use crate::status::invalid;

/// The engine's expected version; absent means any.
pub fn expected(version: Option<pb::ExpectedVersion>) -> ExpectedVersion {
    use pb::expected_version::Kind;
    match version.and_then(|v| v.kind) {
        None | Some(Kind::Any(_)) => ExpectedVersion::Any,
        Some(Kind::NoStream(_)) => ExpectedVersion::NoStream,
        Some(Kind::StreamExists(_)) => ExpectedVersion::StreamExists,
        Some(Kind::Exact(v)) => ExpectedVersion::Exact(v),
    }
}

fn events(
    prefix: &str,
    events: Vec<pb::NewEvent>,
    ids: &dyn IdSource,
) -> Result<Vec<NewEvent>, Status> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let id = if e.id.is_empty() {
                ids.new_id()
            } else {
                Uuid::parse_str(&e.id).map_err(|err| {
                    invalid(
                        &format!("{prefix}events[{i}].id"),
                        format!("not a UUID: {err}"),
                    )
                })?
            };
            Ok(NewEvent {
                id,
                event_type: e.r#type,
                data: e.data,
                metadata: e.metadata,
            })
        })
        .collect()
}

/// An engine append for one stream (events without an id get one from `ids`).
pub fn append(
    request: pb::AppendRequest,
    timestamp_us: u64,
    ids: &dyn IdSource,
) -> Result<AppendRequest, Status> {
    user_target("stream", &request.stream, "", &request.events)?;
    let events = events("", request.events, ids)?;
    Ok(AppendRequest::single(
        request.stream,
        expected(request.expected),
        events,
        timestamp_us,
    ))
}

/// An engine append for several streams (events without an id get one from `ids`).
pub fn append_multi(
    request: pb::AppendMultiRequest,
    timestamp_us: u64,
    ids: &dyn IdSource,
) -> Result<AppendRequest, Status> {
    let streams = request
        .streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let prefix = format!("streams[{i}].");
            user_target(&format!("{prefix}stream"), &s.stream, &prefix, &s.events)?;
            Ok(StreamAppend {
                events: events(&format!("streams[{i}]."), s.events, ids)?,
                stream: s.stream,
                expected: expected(s.expected),
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(AppendRequest {
        copy: false,
        streams,
        conditions: Vec::new(),
        timestamp_us,
    })
}

/// The wire answer to an append.
pub fn append_response(result: AppendResult) -> pb::AppendResponse {
    pb::AppendResponse {
        position: result.position,
        streams: result
            .streams
            .into_iter()
            .map(|s| pb::StreamResult {
                stream: s.stream,
                first_version: s.first_version,
                last_version: s.last_version,
            })
            .collect(),
        deduplicated: result.deduplicated,
    }
}

/// The wire form of a stored event.
pub fn recorded(e: RecordedEvent) -> pb::RecordedEvent {
    pb::RecordedEvent {
        stream: e.stream,
        version: e.version,
        id: e.id.to_string(),
        r#type: e.event_type,
        data: e.data,
        metadata: e.metadata,
        timestamp_us: e.timestamp_us,
        position: e.position,
    }
}

/// Whether an event passes a filter (absent filter: every event of a user stream). Events of
/// system streams (`$meta:…`, `$closed`, …) pass only a filter whose prefix starts with `$`.
pub fn matches(filter: Option<&pb::Filter>, e: &RecordedEvent) -> bool {
    let prefix = filter.map_or("", |f| f.stream_prefix.as_str());
    if e.stream.starts_with('$') && !prefix.starts_with('$') {
        return false;
    }
    passes(filter, e)
}

/// Whether `filter` passes `e` (its stream prefix, types and partitions): what a stream
/// subscription applies. The stream was named, so a system stream's events are not hidden.
/// `filter` has passed [`check_filter`].
pub fn passes(filter: Option<&pb::Filter>, e: &RecordedEvent) -> bool {
    filter.is_none_or(|f| {
        e.stream.starts_with(&f.stream_prefix)
            && (f.event_types.is_empty() || f.event_types.contains(&e.event_type))
            && f.partitions
                .as_ref()
                .is_none_or(|p| strata_proto::groups::holds(p, &e.stream))
    })
}

/// Checks a request's filter before anything is read (its partitions: see
/// [`strata_proto::groups::check`]).
pub fn check_filter(filter: Option<&pb::Filter>) -> Result<(), Status> {
    match filter.and_then(|f| f.partitions.as_ref()) {
        Some(p) => strata_proto::groups::check(p).map_err(|e| invalid("filter.partitions", e)),
        None => Ok(()),
    }
}

/// The events of `record` that `$all` (`ReadAll`, `$all` subscriptions) shows through
/// `filter`: none of a slot-range move's copy, whose originals the source shard's log holds
/// (so a merged `$all` holds each event once, across moves).
pub fn all_events(record: Record, filter: Option<&pb::Filter>) -> Vec<RecordedEvent> {
    if record.copy {
        return Vec::new();
    }
    record
        .events
        .into_iter()
        .filter(|e| matches(filter, e))
        .collect()
}

/// Refuses a system stream (`$…`) as an append target: the server writes those itself.
/// Clients append to their own streams and to consumer groups' streams (checked by
/// [`crate::groups::check_events`]); every other `$` name is the server's.
fn user_target(
    field: &str,
    stream: &str,
    prefix: &str,
    events: &[pb::NewEvent],
) -> Result<(), Status> {
    if let Some(strata_engine::system::SystemStream::Group(_, part)) =
        strata_engine::system::parse(stream)
    {
        return crate::groups::check_events(part, stream, prefix, events);
    }
    if stream.starts_with('$') {
        return Err(invalid(
            field,
            "names starting with '$' are reserved for the system",
        ));
    }
    Ok(())
}

/// Events or records a read returns when the request's limit is 0.
pub const READ_LIMIT_DEFAULT: u32 = 1000;

/// A read's direction. Every enum of a request is checked the same way: an unknown value is
/// refused naming its field, before anything else happens.
pub fn direction(value: i32) -> Result<Direction, Status> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Forwards) => Ok(Direction::Forwards),
        Ok(pb::Direction::Backwards) => Ok(Direction::Backwards),
        Err(_) => Err(invalid("direction", format!("unknown direction {value}"))),
    }
}

/// A read's consistency (refused when unknown on every node, a single one too).
pub fn consistency(value: i32) -> Result<pb::Consistency, Status> {
    pb::Consistency::try_from(value)
        .map_err(|_| invalid("consistency", format!("unknown consistency {value}")))
}

/// The events (or records) a read may return: `requested`, 0 meaning [`READ_LIMIT_DEFAULT`];
/// above `max` is refused naming the limit.
pub fn read_limit(requested: u32, max: usize) -> Result<usize, Status> {
    let limit = match requested {
        0 => READ_LIMIT_DEFAULT,
        n => n,
    } as usize;
    if limit > max {
        return Err(crate::status::to_status(
            strata_engine::Error::LimitExceeded {
                limit: "read_limit_max",
                value: limit as u64,
                max: max as u64,
            },
        ));
    }
    Ok(limit)
}

/// Whether [`fit_events`] left events out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Events were left out to keep the answer within its bound.
    pub cut: bool,
}

/// Bytes `event` takes in an answer's repeated field (its tag and length prefix too).
pub(crate) fn answer_bytes(event: &pb::RecordedEvent) -> usize {
    let len = prost::Message::encoded_len(event);
    1 + prost::length_delimiter_len(len) + len
}

/// Keeps the longest prefix of `events` whose encoded size fits `bytes_max` (at least one).
pub fn fit_events(events: &mut Vec<pb::RecordedEvent>, bytes_max: usize) -> Fit {
    let mut bytes = 0usize;
    let keep = events
        .iter()
        .position(|e| {
            bytes = bytes.saturating_add(answer_bytes(e));
            bytes > bytes_max
        })
        .map_or(events.len(), |over| over.max(1));
    let cut = keep < events.len();
    events.truncate(keep);
    Fit { cut }
}

/// A `ReadAll` page: the filtered events of `batch`'s records, whole records only, within
/// `bytes_max` encoded (at least one record), and where to go on — past the last record kept.
pub fn read_all_page(
    batch: strata_engine::ReadAllBatch,
    filter: Option<&pb::Filter>,
    bytes_max: usize,
) -> (Vec<pb::RecordedEvent>, u64) {
    let mut events = Vec::new();
    let mut bytes = 0usize;
    for (i, record) in batch.records.into_iter().enumerate() {
        let position = record.position;
        let kept: Vec<_> = all_events(record, filter)
            .into_iter()
            .map(recorded)
            .collect();
        let record_bytes: usize = kept.iter().map(answer_bytes).sum();
        if i > 0 && bytes.saturating_add(record_bytes) > bytes_max {
            return (events, position);
        }
        bytes = bytes.saturating_add(record_bytes);
        events.extend(kept);
    }
    (events, batch.next)
}

/// The point a read is taken as of (`None`: now).
pub fn as_of(as_of: Option<pb::AsOf>) -> Option<strata_engine::AsOf> {
    use pb::as_of::Point;
    Some(match as_of?.point? {
        Point::Version(v) => strata_engine::AsOf::Version(v),
        Point::Position(p) => strata_engine::AsOf::Position(p),
        Point::TimestampUs(t) => strata_engine::AsOf::Timestamp(t),
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::ids::SeededIds;

    fn request(ids: &[&str]) -> pb::AppendRequest {
        pb::AppendRequest {
            stream: "orders-1".into(),
            events: ids
                .iter()
                .map(|id| pb::NewEvent {
                    id: id.to_string(),
                    r#type: "Placed".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn events_without_an_id_are_named_by_the_id_source_and_given_ids_are_kept() {
        let given = "5f0c3f4e-8a1b-4c2d-9e3f-0a1b2c3d4e5f";
        let ids_of = |seed| {
            append(request(&["", given, ""]), 1, &SeededIds::new(seed))
                .map(|r| r.streams[0].events.iter().map(|e| e.id).collect::<Vec<_>>())
        };
        let a = ids_of(3).expect("a valid request");
        assert_eq!(a[1].to_string(), given);
        let expected = SeededIds::new(3);
        assert_eq!(a[0], expected.new_id());
        assert_eq!(a[2], expected.new_id());
        assert_eq!(a, ids_of(3).expect("a valid request"));
        assert_ne!(a[0], ids_of(4).expect("a valid request")[0]);
        let bad = append(request(&["not-a-uuid"]), 1, &SeededIds::new(3))
            .expect_err("a bad id is refused");
        assert!(bad.message().contains("events[0].id"), "{}", bad.message());
    }
}
