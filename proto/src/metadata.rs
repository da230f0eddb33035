//! The gRPC metadata keys of the public API: what a server puts beside a status and a client
//! reads back. They live here, with the contract, so a client links only this crate.

/// Metadata key naming the kind of error (`invalid-argument`, `limit-exceeded`,
/// `wrong-expected-version`, `idempotency-conflict`, `busy`, `no-space`, `corruption`,
/// `closed`, `stopped`, `unavailable`, `stream-deleted`, `internal`, `not-leader`).
pub const ERROR_KIND_KEY: &str = "strata-error";
/// Metadata key carrying a stream's actual version ("none" when it does not exist) with a
/// wrong expected version.
pub const ACTUAL_VERSION_KEY: &str = "strata-actual-version";
/// Metadata key with the leader's client address, on `UNAVAILABLE` from a node that is not
/// the leader (clients retry there).
pub const LEADER_KEY: &str = "strata-leader";
/// Metadata key with the leader's node id, beside [`LEADER_KEY`].
pub const LEADER_ID_KEY: &str = "strata-leader-id";
/// Metadata key with the epoch of the cluster map a node of several shards routed a call by
/// (on its answers about one stream): a client whose table is older reads it again.
pub const MAP_EPOCH_KEY: &str = "strata-map-epoch";
/// Metadata key (and HTTP header) with the caller's correlation id: carried by every call a
/// service makes for one of its requests, in the store's logs of the call.
pub const REQUEST_ID_KEY: &str = "x-request-id";
/// The W3C trace-context key (and header); its trace id is the correlation id when no
/// [`REQUEST_ID_KEY`] is given.
pub const TRACEPARENT_KEY: &str = "traceparent";
/// Longest correlation id taken from a caller, bytes (longer ones are not taken).
pub const CORRELATION_BYTES_MAX: usize = 128;
/// The error kind of a request that is not valid.
pub const ERROR_KIND_INVALID_ARGUMENT: &str = "invalid-argument";
/// The error kind of a request over a limit.
pub const ERROR_KIND_LIMIT_EXCEEDED: &str = "limit-exceeded";

/// A status's metadata value under `key` as text (absent, or not text: `None`). What clients,
/// the service and the simulator read an error's kind, actual version and leader with.
pub fn text(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed and
/// not all zeros.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && parts.next().is_none()
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

/// Whether a caller's correlation id can be used as it is: printable ASCII, no spaces, at
/// most [`CORRELATION_BYTES_MAX`] bytes.
pub fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= CORRELATION_BYTES_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A call's correlation id: its [`REQUEST_ID_KEY`] if usable, else its `traceparent`'s trace
/// id; `None` without either.
pub fn correlation_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    if let Some(id) = text(REQUEST_ID_KEY).filter(|id| usable_id(id)) {
        return Some(id.to_string());
    }
    text(TRACEPARENT_KEY).and_then(trace_id).map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};

    #[test]
    fn the_correlation_id_is_the_request_id_else_the_trace_id() {
        let mut md = MetadataMap::new();
        assert_eq!(correlation_id(&md), None);
        md.insert(
            TRACEPARENT_KEY,
            MetadataValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            correlation_id(&md).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        md.insert(REQUEST_ID_KEY, MetadataValue::from_static("order-17"));
        assert_eq!(correlation_id(&md).as_deref(), Some("order-17"));
        // Unusable ids are not taken; malformed trace parents neither.
        let long = "x".repeat(CORRELATION_BYTES_MAX + 1);
        md.insert(REQUEST_ID_KEY, long.parse().unwrap());
        assert_eq!(
            correlation_id(&md).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-4bf92f35-00f067aa0ba902b7-01"), None);
    }
}
