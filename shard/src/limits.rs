//! The node's limits across layers. Every size limit is derived from the engine's
//! ([`strata_engine::Limits`]) or checked against them when the node starts
//! ([`check`]), so the largest append the engine accepts always fits each message it travels
//! in and each answer that carries it back:
//!
//! ```text
//! append request (protobuf)  ≤ request_bytes_max  = batch_bytes_max
//!                                                  + batch_events_max × EVENT_REQUEST_OVERHEAD_BYTES
//!                                                  + batch_streams_max × (stream_name_bytes_max + STREAM_REQUEST_OVERHEAD_BYTES)
//!                                                  + MESSAGE_FIXED_BYTES
//! Raft AppendEntries         ≤ strata_raft::network::append_entries_bytes_max(batch_bytes_max)
//!                            ≤ strata_raft::network::MESSAGE_BYTES_MAX        (checked)
//! snapshot chunk (FetchLog)  = FETCH_CHUNK_BYTES (1 MiB) of segment bytes, whatever a record's size
//! read answer                ≤ response_bytes_max (default 4 MiB, gRPC's default receive limit),
//!                              or one event / one record alone when that is larger
//! one record in an answer    ≤ record_answer_bytes_max = 2 × batch_bytes_max + MESSAGE_FIXED_BYTES
//!                              (an event's protobuf form is at most twice its frame)
//! subscription frame         = one event ≤ record_answer_bytes_max
//! every message above        ≤ strata_proto::MESSAGE_BYTES_HARD_MAX (64 MiB)      (checked)
//! ```
//!
//! The `Streams` service decodes requests up to `request_bytes_max` (a larger batch up to it
//! is refused by the engine with `RESOURCE_EXHAUSTED` naming `batch_bytes_max`; beyond it the
//! transport refuses it) and encodes answers up to `encoded_answer_bytes_max`.

use strata_engine::{Error, Limits, Result};
use strata_proto::MESSAGE_BYTES_HARD_MAX;

/// Most bytes an event's protobuf form (`NewEvent`) adds to what its record frame holds of it:
/// the id as 36 characters (the frame holds 16 bytes), tags and length prefixes.
pub const EVENT_REQUEST_OVERHEAD_BYTES: usize = 64;
/// Most bytes a stream's part of a request adds besides its name (tags, lengths, expected
/// version).
pub const STREAM_REQUEST_OVERHEAD_BYTES: usize = 32;
/// Most bytes of a message besides its events (other fields, gRPC's frame).
pub const MESSAGE_FIXED_BYTES: usize = 4096;
/// Smallest `response_bytes_max` a node accepts.
pub const RESPONSE_BYTES_MIN: usize = 64 << 10;

/// The largest append request the engine's limits allow, encoded.
pub fn request_bytes_max(limits: &Limits) -> usize {
    limits.batch_bytes_max
        + limits.batch_events_max * EVENT_REQUEST_OVERHEAD_BYTES
        + limits.batch_streams_max * (limits.stream_name_bytes_max + STREAM_REQUEST_OVERHEAD_BYTES)
        + MESSAGE_FIXED_BYTES
}

/// The largest answer carrying one record whole (a `ReadAll` page of one record).
pub fn record_answer_bytes_max(limits: &Limits) -> usize {
    2 * limits.batch_bytes_max + MESSAGE_FIXED_BYTES
}

/// What the `Streams` service may encode: a page of `response_bytes_max`, or one record alone.
pub fn encoded_answer_bytes_max(limits: &Limits, response_bytes_max: usize) -> usize {
    response_bytes_max.max(record_answer_bytes_max(limits))
}

/// Refuses limits under which some accepted append would not fit a message it must travel in,
/// or an answer a client must read. `replicated`: also the Raft messages.
pub fn check(limits: &Limits, response_bytes_max: usize, replicated: bool) -> Result<()> {
    let over = |field: &'static str, what: &str, bytes: usize| {
        Err(Error::invalid(
            field,
            format!(
                "makes {what} of up to {bytes} bytes, above the {MESSAGE_BYTES_HARD_MAX}-byte message limit of Strata's clients"
            ),
        ))
    };
    if request_bytes_max(limits) > MESSAGE_BYTES_HARD_MAX {
        return over(
            "batch_bytes_max",
            "an append request",
            request_bytes_max(limits),
        );
    }
    if record_answer_bytes_max(limits) > MESSAGE_BYTES_HARD_MAX {
        let bytes = record_answer_bytes_max(limits);
        return over("batch_bytes_max", "an answer holding one record", bytes);
    }
    if !(RESPONSE_BYTES_MIN..=MESSAGE_BYTES_HARD_MAX).contains(&response_bytes_max) {
        return Err(Error::invalid(
            "response_bytes_max",
            format!(
                "{response_bytes_max} is outside {RESPONSE_BYTES_MIN}..={MESSAGE_BYTES_HARD_MAX}"
            ),
        ));
    }
    if replicated {
        strata_raft::network::check_limits(limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use strata_proto::v1 as pb;

    /// The largest append of one stream under `limits`, as the engine counts it and encoded.
    fn widest_request(limits: &Limits, events: usize) -> pb::AppendRequest {
        let stream = "s".repeat(limits.stream_name_bytes_max);
        let event_type = "t".repeat(limits.event_type_bytes_max);
        pb::AppendRequest {
            stream,
            expected: Some(pb::ExpectedVersion {
                kind: Some(pb::expected_version::Kind::Exact(u64::MAX)),
            }),
            events: (0..events)
                .map(|_| pb::NewEvent {
                    id: "5f0c3f4e-8a1b-4c2d-9e3f-0a1b2c3d4e5f".into(),
                    r#type: event_type.clone(),
                    data: vec![0xff; 1000].into(),
                    metadata: vec![0xff; 1000].into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_request_is_at_most_its_record_plus_the_overheads() {
        let limits = Limits::default();
        for events in [1, 10, 300] {
            let request = widest_request(&limits, events);
            let record = strata_engine::format::FRAME_BYTES
                + strata_engine::format::HEADER_BYTES
                + 4
                + events
                    * strata_engine::format::event_frame_len(
                        &request.stream,
                        &request.events[0].r#type,
                        1000,
                        1000,
                    );
            let bound = record
                + events * EVENT_REQUEST_OVERHEAD_BYTES
                + limits.stream_name_bytes_max
                + STREAM_REQUEST_OVERHEAD_BYTES
                + MESSAGE_FIXED_BYTES;
            assert!(request.encoded_len() + 5 <= bound, "{events} events");
        }
    }

    #[test]
    fn an_answer_is_at_most_twice_its_frames() {
        // The smallest event frame is where the protobuf form adds the most, relatively.
        let event = pb::RecordedEvent {
            stream: "s".into(),
            version: u64::MAX,
            id: "5f0c3f4e-8a1b-4c2d-9e3f-0a1b2c3d4e5f".into(),
            r#type: "t".into(),
            data: Default::default(),
            metadata: Default::default(),
            timestamp_us: u64::MAX,
            position: u64::MAX,
        };
        let frame = strata_engine::format::event_frame_len("s", "t", 0, 0);
        let answer = pb::ReadResponse {
            events: vec![event; 1000],
            closed_timestamp_us: u64::MAX,
            truncated: true,
        };
        assert!(answer.encoded_len() <= 2 * 1000 * frame + MESSAGE_FIXED_BYTES);
    }

    #[test]
    fn the_defaults_fit_and_a_batch_too_large_for_a_message_is_refused() {
        let limits = Limits::default();
        assert!(check(&limits, 4 << 20, true).is_ok());
        let too_large = Limits {
            batch_bytes_max: 40 << 20,
            ..Limits::default()
        };
        let refused = check(&too_large, 4 << 20, false).expect_err("an answer of 80 MiB");
        assert!(refused.to_string().contains("batch_bytes_max"), "{refused}");
        assert!(check(&limits, 1000, false).is_err());
    }
}
