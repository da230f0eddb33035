//! The engine's one error type. `Corruption` (data on disk is wrong) is kept apart from `Io`
//! (the operating system failed), and "try again" (`Busy`) apart from "full" (`NoSpace`), so
//! callers can map each to the right response without parsing messages.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the engine reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system failed an operation; `context` says which.
    #[error("i/o error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what was written. Never silently dropped.
    #[error("corruption in {file} at byte {offset}: {reason}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The disk is full; nothing of the failed request was written.
    #[error("no space left on device while {context}")]
    NoSpace { context: String },
    /// The write queue is full; retry later.
    #[error("write queue full ({queue_depth_max} requests); retry later")]
    Busy { queue_depth_max: usize },
    /// A request field is malformed; `field` names it.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A request exceeds a documented limit.
    #[error("limit `{limit}` exceeded: {value} > {max}")]
    LimitExceeded {
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// The stream is not at the expected version. `actual` is `None` when it does not exist.
    #[error("wrong expected version for stream `{stream}`: expected {expected}, actual {}", display_version(*.actual))]
    WrongExpectedVersion {
        stream: String,
        expected: String,
        actual: Option<u64>,
    },
    /// Event ids of the request were already committed, but not as this exact request.
    #[error("idempotency conflict for event {event_id}: {reason}")]
    IdempotencyConflict { event_id: Uuid, reason: String },
    /// The engine stopped accepting writes after a failure whose outcome on disk is unknown
    /// (a failed fsync). Reopen the store to recover from the log.
    #[error("engine is stopped after an earlier failure ({0}); reopen to recover")]
    Poisoned(String),
    /// The engine was closed.
    #[error("engine is closed")]
    Closed,
    /// The index (RocksDB) failed.
    #[error("index error: {0}")]
    Index(String),
    /// The stream was hard-deleted (it has a tombstone); nothing can be appended to it again.
    #[error("stream `{stream}` is hard-deleted: it can neither be read nor appended to again (reads as of a point before the delete still answer)")]
    StreamDeleted { stream: String },
    /// The stream's slot is fenced: a slot-range move hands (or has handed) it to another
    /// shard, whose writes go there; retry after the cluster map changes.
    #[error("stream `{stream}` is in slots being moved to shard {shard} (write fence); retry once the cluster map moves them")]
    Moved { stream: String, shard: u32 },
    /// The replicated shard could not take the request now (no leader, leadership lost,
    /// replication failed); the message says why. Retrying later, or at the leader, may work.
    #[error("shard unavailable: {0}")]
    Unavailable(String),
}

fn display_version(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "no stream".to_string(),
    }
}

impl Error {
    /// Wraps an I/O error, mapping ENOSPC to [`Error::NoSpace`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::StorageFull {
            return Error::NoSpace {
                context: context.into(),
            };
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Corruption`].
    pub fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy for fanning one failure out to every caller of a group. `io::Error` is not
    /// `Clone`, so the copy keeps its kind and message.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::NoSpace { context } => Error::NoSpace {
                context: context.clone(),
            },
            Error::Busy { queue_depth_max } => Error::Busy {
                queue_depth_max: *queue_depth_max,
            },
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::LimitExceeded { limit, value, max } => Error::LimitExceeded {
                limit,
                value: *value,
                max: *max,
            },
            Error::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected: expected.clone(),
                actual: *actual,
            },
            Error::IdempotencyConflict { event_id, reason } => Error::IdempotencyConflict {
                event_id: *event_id,
                reason: reason.clone(),
            },
            Error::Poisoned(why) => Error::Poisoned(why.clone()),
            Error::Closed => Error::Closed,
            Error::Index(why) => Error::Index(why.clone()),
            Error::Unavailable(why) => Error::Unavailable(why.clone()),
            Error::StreamDeleted { stream } => Error::StreamDeleted {
                stream: stream.clone(),
            },
            Error::Moved { stream, shard } => Error::Moved {
                stream: stream.clone(),
                shard: *shard,
            },
        }
    }
}
