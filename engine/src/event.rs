//! The engine's public data types: what callers append and what they read back.

use bytes::Bytes;
use uuid::Uuid;

/// A log position: the byte offset of a record in the shard's log, across all segments.
/// Ordered and monotonic; clients treat it as opaque. Position 0 means "the start".
pub type Position = u64;

/// The version a stream must be at for an append to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (`None`: no events) is as expected.
    pub fn matches(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id; appending the same ids again is an idempotent retry.
    pub id: Uuid,
    /// Application-defined type name.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// Application-defined metadata.
    pub metadata: Bytes,
}

/// Events for one stream inside an append request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// Stream name (UTF-8, no control characters, not starting with `$`).
    pub stream: String,
    /// Version check applied atomically with the write.
    pub expected: ExpectedVersion,
    /// Events, in order; at least one.
    pub events: Vec<NewEvent>,
}

/// A version check on a stream the append writes nothing to, decided with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCondition {
    /// Stream name.
    pub stream: String,
    /// The version it must be at when the append is written.
    pub expected: ExpectedVersion,
}

/// One atomic append: one or more streams, written as one record or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendRequest {
    /// Per-stream parts; stream names must be distinct.
    pub streams: Vec<StreamAppend>,
    /// Checks on other streams, decided atomically with the write like the parts' expected
    /// versions (the server uses them: a deletion writes to `$meta:S` or `$deleted:S` only if
    /// `S` is at the version it was read at). Names distinct from the parts'.
    pub conditions: Vec<StreamCondition>,
    /// Timestamp given to every event of the request (microseconds since the Unix epoch, or a
    /// hybrid-logical-clock value); the engine never reads a clock itself.
    pub timestamp_us: u64,
    /// A slot-range move's copy of another shard's record (only the mover sets it): each
    /// part's `expected` is `Exact(first − 1)` (`NoStream` for version 0), and its events take
    /// those versions whenever the stream's head here is at or before `first − 1` (or the
    /// stream is absent: the source had reclaimed the versions between); write fences do not
    /// apply; the record is flagged [`crate::format::FLAG_COPY`],
    /// which leaves it out of `$all`. Retried, it deduplicates like any append.
    pub copy: bool,
}

impl AppendRequest {
    /// A request appending `events` to one stream.
    pub fn single(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        timestamp_us: u64,
    ) -> AppendRequest {
        AppendRequest {
            streams: vec![StreamAppend {
                stream: stream.into(),
                expected,
                events,
            }],
            conditions: Vec::new(),
            timestamp_us,
            copy: false,
        }
    }

    /// This request, written only if `stream` is at `expected` (see
    /// [`AppendRequest::conditions`]).
    pub fn on_condition(mut self, stream: impl Into<String>, expected: ExpectedVersion) -> Self {
        self.conditions.push(StreamCondition {
            stream: stream.into(),
            expected,
        });
        self
    }
}

/// The outcome for one stream of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppendResult {
    /// Stream name.
    pub stream: String,
    /// Version of the first appended event.
    pub first_version: u64,
    /// Version of the last appended event (the stream's new current version).
    pub last_version: u64,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Position of the record holding the events.
    pub position: Position,
    /// Per-stream versions, in request order.
    pub streams: Vec<StreamAppendResult>,
    /// True when the request was a retry of an append already committed: nothing new was
    /// written and this is the original result.
    pub deduplicated: bool,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Stream name.
    pub stream: String,
    /// Version within the stream (0, 1, 2, …).
    pub version: u64,
    /// Event id.
    pub id: Uuid,
    /// Type name.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// Metadata.
    pub metadata: Bytes,
    /// Timestamp given by the appender.
    pub timestamp_us: u64,
    /// Position of the record holding the event.
    pub position: Position,
}

/// One record of the log: one atomic append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position of the record.
    pub position: Position,
    /// Sequence number: records are numbered 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Timestamp of the append.
    pub timestamp_us: u64,
    /// The events, in append order.
    pub events: Vec<RecordedEvent>,
    /// Whether it is a slot-range move's copy (`$all` leaves it out).
    pub copy: bool,
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending versions.
    Forwards,
    /// Descending versions.
    Backwards,
}
