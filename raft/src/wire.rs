//! What Raft entries carry and what applying them answers. The engine's types stay free of
//! serde; these mirror them.

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_engine::{
    AppendRequest, AppendResult, Error, ExpectedVersion, NewEvent, StreamAppend,
    StreamAppendResult, StreamCondition,
};
use uuid::Uuid;

/// The application data of a Raft entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Client appends on distinct streams, proposed together on the leader. The leader's log
    /// decides each (expected versions, idempotent retries) when it writes the entry, against
    /// the whole log before it; the accepted ones share one record.
    Append(Vec<WireAppend>),
    /// A record frame read back from a log: how entries travel to followers.
    Frame(Bytes),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append(a) => write!(f, "append({} requests)", a.len()),
            Command::Frame(b) => write!(f, "frame({} bytes)", b.len()),
        }
    }
}

/// An [`AppendRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireAppend {
    /// Per-stream parts.
    pub streams: Vec<WireStream>,
    /// Timestamp of every event.
    pub timestamp_us: u64,
    /// Version checks on streams the append does not write: `(stream, expected)`.
    pub conditions: Vec<(String, WireExpected)>,
    /// A slot-range move's copy ([`AppendRequest::copy`]); proposed alone in its entry.
    pub copy: bool,
}

/// A [`StreamAppend`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireStream {
    /// Stream name.
    pub stream: String,
    /// Expected version: `None` any, `Some(u64::MAX)` no stream, `Some(u64::MAX - 1)` stream
    /// exists, else exact.
    pub expected: WireExpected,
    /// Events.
    pub events: Vec<WireEvent>,
}

/// An [`ExpectedVersion`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum WireExpected {
    /// No check.
    Any,
    /// Must not exist.
    NoStream,
    /// Must exist.
    StreamExists,
    /// Exactly this last version.
    Exact(u64),
}

/// A [`NewEvent`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireEvent {
    /// Id.
    pub id: u128,
    /// Type.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// Metadata.
    pub metadata: Bytes,
}

impl From<ExpectedVersion> for WireExpected {
    fn from(e: ExpectedVersion) -> WireExpected {
        match e {
            ExpectedVersion::Any => WireExpected::Any,
            ExpectedVersion::NoStream => WireExpected::NoStream,
            ExpectedVersion::StreamExists => WireExpected::StreamExists,
            ExpectedVersion::Exact(v) => WireExpected::Exact(v),
        }
    }
}

impl From<WireExpected> for ExpectedVersion {
    fn from(e: WireExpected) -> ExpectedVersion {
        match e {
            WireExpected::Any => ExpectedVersion::Any,
            WireExpected::NoStream => ExpectedVersion::NoStream,
            WireExpected::StreamExists => ExpectedVersion::StreamExists,
            WireExpected::Exact(v) => ExpectedVersion::Exact(v),
        }
    }
}

impl From<AppendRequest> for WireAppend {
    fn from(r: AppendRequest) -> WireAppend {
        WireAppend {
            copy: r.copy,
            timestamp_us: r.timestamp_us,
            streams: r
                .streams
                .into_iter()
                .map(|s| WireStream {
                    stream: s.stream,
                    expected: s.expected.into(),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| WireEvent {
                            id: e.id.as_u128(),
                            event_type: e.event_type,
                            data: e.data,
                            metadata: e.metadata,
                        })
                        .collect(),
                })
                .collect(),
            conditions: r
                .conditions
                .into_iter()
                .map(|c| (c.stream, c.expected.into()))
                .collect(),
        }
    }
}

impl From<WireAppend> for AppendRequest {
    fn from(w: WireAppend) -> AppendRequest {
        AppendRequest {
            copy: w.copy,
            timestamp_us: w.timestamp_us,
            streams: w
                .streams
                .into_iter()
                .map(|s| StreamAppend {
                    stream: s.stream,
                    expected: s.expected.into(),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| NewEvent {
                            id: Uuid::from_u128(e.id),
                            event_type: e.event_type,
                            data: e.data,
                            metadata: e.metadata,
                        })
                        .collect(),
                })
                .collect(),
            conditions: w
                .conditions
                .into_iter()
                .map(|(stream, expected)| StreamCondition {
                    stream,
                    expected: expected.into(),
                })
                .collect(),
        }
    }
}

/// What applying an entry answers. Only the node that decided the appends (the leader that
/// wrote the entry) answers with their outcomes; every other entry answers [`Reply::None`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to report.
    #[default]
    None,
    /// One outcome per append of the entry, in order.
    Outcomes(Vec<Outcome>),
}

/// The outcome of one append.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// The append is committed (or was a retry of a committed one).
    Appended {
        /// Position of its record.
        position: u64,
        /// `(stream, first version, last version)` per stream.
        streams: Vec<(String, u64, u64)>,
        /// Whether it was a retry answered with the original result.
        deduplicated: bool,
    },
    /// The append was rejected at its log index.
    Rejected(WireError),
}

/// The errors an append can meet when its entry is written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    /// Expected version check failed.
    WrongExpectedVersion {
        /// Stream.
        stream: String,
        /// What the request expected.
        expected: String,
        /// The stream's actual last version.
        actual: Option<u64>,
    },
    /// An idempotency conflict.
    IdempotencyConflict {
        /// The event id.
        event_id: u128,
        /// Why.
        reason: String,
    },
    /// A field of the request is invalid.
    InvalidArgument {
        /// Field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Anything else (the message).
    Other(String),
    /// The stream is hard-deleted. (Added last: bincode numbers variants in order.)
    StreamDeleted {
        /// The stream.
        stream: String,
    },
    /// The stream's slot is fenced by a slot-range move. (Added last, like the one before.)
    Moved {
        /// The stream.
        stream: String,
        /// The shard its slot moves to.
        shard: u32,
    },
}

impl From<Result<AppendResult, Error>> for Outcome {
    fn from(r: Result<AppendResult, Error>) -> Outcome {
        match r {
            Ok(a) => Outcome::Appended {
                position: a.position,
                streams: a
                    .streams
                    .into_iter()
                    .map(|s| (s.stream, s.first_version, s.last_version))
                    .collect(),
                deduplicated: a.deduplicated,
            },
            Err(Error::WrongExpectedVersion {
                stream,
                expected,
                actual,
            }) => Outcome::Rejected(WireError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            }),
            Err(Error::IdempotencyConflict { event_id, reason }) => {
                Outcome::Rejected(WireError::IdempotencyConflict {
                    event_id: event_id.as_u128(),
                    reason,
                })
            }
            Err(Error::InvalidArgument { field, reason }) => {
                Outcome::Rejected(WireError::InvalidArgument { field, reason })
            }
            Err(Error::StreamDeleted { stream }) => {
                Outcome::Rejected(WireError::StreamDeleted { stream })
            }
            Err(Error::Moved { stream, shard }) => {
                Outcome::Rejected(WireError::Moved { stream, shard })
            }
            Err(e) => Outcome::Rejected(WireError::Other(e.to_string())),
        }
    }
}

impl Outcome {
    /// As the engine's result.
    pub fn into_result(self) -> Result<AppendResult, Error> {
        match self {
            Outcome::Appended {
                position,
                streams,
                deduplicated,
            } => Ok(AppendResult {
                position,
                streams: streams
                    .into_iter()
                    .map(|(stream, first_version, last_version)| StreamAppendResult {
                        stream,
                        first_version,
                        last_version,
                    })
                    .collect(),
                deduplicated,
            }),
            Outcome::Rejected(e) => Err(match e {
                WireError::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                } => Error::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                },
                WireError::IdempotencyConflict { event_id, reason } => Error::IdempotencyConflict {
                    event_id: Uuid::from_u128(event_id),
                    reason,
                },
                WireError::InvalidArgument { field, reason } => {
                    Error::InvalidArgument { field, reason }
                }
                WireError::Other(m) => Error::Unavailable(m),
                WireError::StreamDeleted { stream } => Error::StreamDeleted { stream },
                WireError::Moved { stream, shard } => Error::Moved { stream, shard },
            }),
        }
    }
}
