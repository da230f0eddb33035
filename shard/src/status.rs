//! How engine errors reach gRPC clients: a precise status code, a message naming the field or
//! limit, and machine-readable metadata (`strata-error`, and `strata-actual-version` for a
//! wrong expected version).

use strata_engine::Error;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

pub use strata_proto::metadata::{ACTUAL_VERSION_KEY, ERROR_KIND_KEY};

fn with_kind(code: Code, message: String, kind: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind));
    status
}

/// The gRPC status for an engine error.
pub fn to_status(error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::InvalidArgument { .. } => {
            with_kind(Code::InvalidArgument, message, "invalid-argument")
        }
        Error::LimitExceeded { .. } => {
            with_kind(Code::ResourceExhausted, message, "limit-exceeded")
        }
        Error::WrongExpectedVersion { actual, .. } => {
            let mut status = with_kind(Code::FailedPrecondition, message, "wrong-expected-version");
            let actual = actual.map_or_else(|| "none".to_string(), |v| v.to_string());
            if let Ok(value) = actual.parse() {
                status.metadata_mut().insert(ACTUAL_VERSION_KEY, value);
            }
            status
        }
        Error::IdempotencyConflict { .. } => {
            with_kind(Code::AlreadyExists, message, "idempotency-conflict")
        }
        Error::Busy { .. } => with_kind(Code::Unavailable, message, "busy"),
        Error::NoSpace { .. } => with_kind(Code::ResourceExhausted, message, "no-space"),
        Error::Corruption { .. } => with_kind(Code::DataLoss, message, "corruption"),
        Error::Closed => with_kind(Code::Unavailable, message, "closed"),
        Error::Poisoned(_) => with_kind(Code::Unavailable, message, "stopped"),
        Error::Unavailable(_) => with_kind(Code::Unavailable, message, "unavailable"),
        Error::StreamDeleted { .. } => {
            with_kind(Code::FailedPrecondition, message, "stream-deleted")
        }
        // Retryable: the write pause of a slot-range move ends when the map switches.
        Error::Moved { .. } => with_kind(Code::Unavailable, message, "moved"),
        Error::Io { .. } | Error::Index(_) => with_kind(Code::Internal, message, "internal"),
    }
}

/// Like [`to_status`], for a single-stream `Append`: fields are named as that request names
/// them (`stream`, `events[1].id`), not as parts of a multi-stream append.
pub fn to_single_append_status(error: Error) -> Status {
    match error {
        Error::InvalidArgument { field, reason } => {
            let field = field
                .strip_prefix("streams[0].")
                .map(str::to_string)
                .unwrap_or(field);
            to_status(Error::InvalidArgument { field, reason })
        }
        other => to_status(other),
    }
}

/// An `InvalidArgument` status naming a request field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    with_kind(
        Code::InvalidArgument,
        format!("invalid argument `{field}`: {reason}"),
        "invalid-argument",
    )
}
