//! The client's one error type: what a caller can act on, read from the server's status code
//! and its `strata-error` metadata (or an `AppendError` of a pipelined append), and whether a
//! call may be tried again.

use std::time::Duration;

use strata_proto::metadata::{ACTUAL_VERSION_KEY, ERROR_KIND_KEY, LEADER_KEY};
use strata_proto::v1 as pb;
use tonic::Code;

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The stream was not at the expected version; nothing was written.
    #[error("wrong expected version (actual: {}): {message}", actual.map_or("no stream".to_string(), |v| v.to_string()))]
    WrongExpectedVersion {
        /// The stream's version then; `None` when it did not exist.
        actual: Option<u64>,
        /// The server's words.
        message: String,
    },
    /// What was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The stream is hard-deleted (a tombstone): appends and reads are refused for good.
    #[error("stream deleted: {0}")]
    Deleted(String),
    /// The request is not valid (the message names the field); nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is over a limit of the node (the message names it); nothing was written.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The same event ids were used before with different content.
    #[error("idempotency conflict: {0}")]
    IdempotencyConflict(String),
    /// No node could serve the call within the retries allowed. For an append, its outcome
    /// may be unknown: retrying it with the same event ids is safe (never a duplicate).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call's deadline passed (after this many attempts).
    #[error("deadline of {deadline:?} passed after {attempts} attempts: {last}")]
    DeadlineExceeded {
        /// The deadline.
        deadline: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The client is configured wrongly (the message names the setting).
    #[error("bad client configuration: {0}")]
    Config(String),
    /// A consumer group worker no longer holds the partition it tried to commit: another
    /// worker claimed it, or the group was reset. Nothing of the commit was written.
    #[error("fenced: {0}")]
    Fenced(String),
    /// What the store cannot do yet in its present shape (consumer groups on a store of
    /// several shards).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A pipelined appender is closed, or its window is full (`try_append`).
    #[error("appender: {0}")]
    Appender(String),
    /// Any other server answer, as it came.
    #[error("{code:?} ({kind}): {message}")]
    Server {
        /// The gRPC code.
        code: Code,
        /// The `strata-error` kind ("" when absent).
        kind: String,
        /// The server's words.
        message: String,
    },
}

/// Whether a failed attempt may be made again, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Not at all: the answer is final.
    No,
    /// The node refused without doing anything (not the leader, busy): safe for every call.
    /// With the leader's address when the node named it.
    Refused { leader: Option<String> },
    /// The outcome is unknown (the connection broke, a timeout, Raft did not answer): safe
    /// only for idempotent calls (reads, appends whose events all carry ids).
    Unknown,
    /// The outcome is unknown, and the node named the leader to retry at: a call it forwarded
    /// to a leader that no longer leads (it learnt of the new one while the call waited).
    /// Retried, like [`Retry::Unknown`], only when idempotent — there, at once.
    Moved { leader: String },
}

/// One failed attempt: the error it would be, and whether to retry.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) retry: Retry,
}

impl Failed {
    /// A gRPC status, read.
    pub(crate) fn from_status(status: &tonic::Status) -> Failed {
        let md = |key: &str| strata_proto::metadata::text(status, key);
        let actual = md(ACTUAL_VERSION_KEY).and_then(|v| v.parse().ok());
        classify(
            status.code(),
            md(ERROR_KIND_KEY).unwrap_or_default(),
            status.message().to_string(),
            actual,
            md(LEADER_KEY),
        )
    }

    /// One append's error from an `AppendStream` answer.
    pub(crate) fn from_append_error(e: pb::AppendError) -> Failed {
        let leader = (!e.leader.is_empty()).then_some(e.leader);
        classify(
            Code::from_i32(e.code),
            e.kind,
            e.message,
            e.actual_version,
            leader,
        )
    }
}

fn classify(
    code: Code,
    kind: String,
    message: String,
    actual: Option<u64>,
    leader: Option<String>,
) -> Failed {
    let error = |error| Failed {
        error,
        retry: Retry::No,
    };
    let refused = |leader| Failed {
        error: Error::Unavailable(message.clone()),
        retry: Retry::Refused { leader },
    };
    match (code, kind.as_str()) {
        (_, "wrong-expected-version") => error(Error::WrongExpectedVersion { actual, message }),
        (_, "stream-deleted") => error(Error::Deleted(message)),
        (_, "idempotency-conflict") => error(Error::IdempotencyConflict(message)),
        (Code::InvalidArgument, _) => error(Error::InvalidArgument(message)),
        (_, "limit-exceeded") => error(Error::LimitExceeded(message)),
        (Code::NotFound, _) => error(Error::NotFound(message)),
        (_, "not-leader") => refused(leader),
        (_, "busy") => refused(None),
        // Not tried: an earlier append of the same pipelined call failed (see the node's
        // order fence); it is sent again after that one.
        (_, "not-tried") => refused(None),
        // The node is stopping, Raft did not answer in time, the connection broke, or the
        // attempt's own timeout passed: the call may or may not have taken effect.
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown, _) => {
            Failed {
                error: Error::Unavailable(message),
                retry: match leader {
                    Some(leader) => Retry::Moved { leader },
                    None => Retry::Unknown,
                },
            }
        }
        _ => error(Error::Server {
            code,
            kind,
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status(code: Code, kind: &'static str) -> tonic::Status {
        let mut s = tonic::Status::new(code, "words");
        s.metadata_mut()
            .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind));
        s
    }

    #[test]
    fn statuses_become_typed_errors_with_the_right_retry() {
        let mut s = status(Code::FailedPrecondition, "wrong-expected-version");
        s.metadata_mut()
            .insert(ACTUAL_VERSION_KEY, MetadataValue::from_static("7"));
        let f = Failed::from_status(&s);
        assert_eq!(
            f.error,
            Error::WrongExpectedVersion {
                actual: Some(7),
                message: "words".into()
            }
        );
        assert_eq!(f.retry, Retry::No);
        let mut s = status(Code::FailedPrecondition, "wrong-expected-version");
        s.metadata_mut()
            .insert(ACTUAL_VERSION_KEY, MetadataValue::from_static("none"));
        assert!(matches!(
            Failed::from_status(&s).error,
            Error::WrongExpectedVersion { actual: None, .. }
        ));
        let mut s = status(Code::Unavailable, "not-leader");
        s.metadata_mut()
            .insert(LEADER_KEY, MetadataValue::from_static("10.0.0.2:50051"));
        assert_eq!(
            Failed::from_status(&s).retry,
            Retry::Refused {
                leader: Some("10.0.0.2:50051".into())
            }
        );
        for kind in ["busy", "not-tried"] {
            assert_eq!(
                Failed::from_status(&status(Code::Unavailable, kind)).retry,
                Retry::Refused { leader: None },
                "{kind}"
            );
        }
        let broken = Failed::from_status(&tonic::Status::unavailable("connection reset"));
        assert_eq!(broken.retry, Retry::Unknown);
        let mut moved = tonic::Status::unavailable("the leader changed while forwarded");
        moved
            .metadata_mut()
            .insert(LEADER_KEY, MetadataValue::from_static("10.0.0.3:50051"));
        assert_eq!(
            Failed::from_status(&moved).retry,
            Retry::Moved {
                leader: "10.0.0.3:50051".into()
            }
        );
        for (s, want) in [
            (
                status(Code::ResourceExhausted, "limit-exceeded"),
                Error::LimitExceeded("words".into()),
            ),
            (
                status(Code::InvalidArgument, "invalid-argument"),
                Error::InvalidArgument("words".into()),
            ),
            (
                status(Code::FailedPrecondition, "stream-deleted"),
                Error::Deleted("words".into()),
            ),
            (
                tonic::Status::not_found("words"),
                Error::NotFound("words".into()),
            ),
        ] {
            let f = Failed::from_status(&s);
            assert_eq!((f.error, f.retry), (want, Retry::No));
        }
    }

    #[test]
    fn a_pipelined_appends_error_reads_like_its_status() {
        let f = Failed::from_append_error(pb::AppendError {
            code: Code::Unavailable as i32,
            message: "not the leader".into(),
            kind: "not-leader".into(),
            actual_version: None,
            leader: "h:1".into(),
        });
        assert_eq!(
            f.retry,
            Retry::Refused {
                leader: Some("h:1".into())
            }
        );
    }
}
