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
