//! Consistency testing of real clusters: `strata jepsen` ([`jepsen`]) and the consistency
//! service ([`service`], `strata serve consistency`, port 8095) that starts runs over HTTP,
//! follows them and serves their reports. It starts `strata node` processes (this binary) and
//! talks to them, and to the store it records runs in, only through `strata-client`.

pub mod jepsen;
pub mod service;
pub mod test_build;

pub use strata_service::Failure;
