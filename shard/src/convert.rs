//! Conversions between the wire types (`strata.v1`) and the engine's types. Field names in
//! errors are the wire's (`events[2].id`, `streams[1].events[0].id`).

use bytes::Bytes;
use strata_engine::{
    AppendRequest, AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
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
                data: Bytes::from(e.data),
                metadata: Bytes::from(e.metadata),
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
    user_target("stream", &request.stream)?;
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
            user_target(&format!("streams[{i}].stream"), &s.stream)?;
            Ok(StreamAppend {
                events: events(&format!("streams[{i}]."), s.events, ids)?,
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

#[cfg(test)]
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
