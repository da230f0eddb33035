//! The names a test build of `strata node` reads from its environment (the engine's
//! `planted` module; the `strata` package checks in a test that both sides agree — a service
//! does not link the server's crates). Whether this binary *is* a test build the caller says
//! (`JepsenArgs::test_build`).

/// Names one planted bug.
pub const BUG_VAR: &str = "STRATA_PLANTED_BUG";
/// `lose-unsynced`: a disk that loses unsynced writes on a kill.
pub const DISK_VAR: &str = "STRATA_TEST_DISK";
/// A node's clock file (offset and drift).
pub const CLOCK_VAR: &str = "STRATA_TEST_CLOCK_FILE";
/// The bugs a test build can plant.
pub const BUGS: [&str; 3] = [
    "ack-before-fsync",
    "read-without-read-index",
    "skip-expected-version",
];
