//! Conversions between the wire types (`strata.v1`) and the engine's types. Field names in
//! errors are the wire's (`events[2].id`, `streams[1].events[0].id`).

use bytes::Bytes;
use strata_engine::{
    AppendRequest, AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
};
use strata_proto::v1 as pb;
use tonic::Status;
use uuid::Uuid;

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

fn events(prefix: &str, events: Vec<pb::NewEvent>) -> Result<Vec<NewEvent>, Status> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let id = if e.id.is_empty() {
                Uuid::new_v4()
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
                data: Bytes::from(e.data),
                metadata: Bytes::from(e.metadata),
            })
        })
        .collect()
}

/// An engine append for one stream.
pub fn append(request: pb::AppendRequest, timestamp_us: u64) -> Result<AppendRequest, Status> {
    user_target("stream", &request.stream)?;
    let events = events("", request.events)?;
    Ok(AppendRequest::single(
        request.stream,
        expected(request.expected),
        events,
        timestamp_us,
    ))
}

/// An engine append for several streams.
pub fn append_multi(
    request: pb::AppendMultiRequest,
    timestamp_us: u64,
) -> Result<AppendRequest, Status> {
    let streams = request
        .streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            user_target(&format!("streams[{i}].stream"), &s.stream)?;
            Ok(StreamAppend {
                events: events(&format!("streams[{i}]."), s.events)?,
                stream: s.stream,
                expected: expected(s.expected),
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(AppendRequest {
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
        data: e.data.to_vec(),
        metadata: e.metadata.to_vec(),
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
    filter.is_none_or(|f| {
        e.stream.starts_with(&f.stream_prefix)
            && (f.event_types.is_empty() || f.event_types.contains(&e.event_type))
    })
}

/// Refuses a system stream (`$…`) as an append target: the server writes those itself.
fn user_target(field: &str, stream: &str) -> Result<(), Status> {
    if stream.starts_with('$') {
        return Err(invalid(
            field,
            "names starting with '$' are reserved for the system",
        ));
    }
    Ok(())
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
