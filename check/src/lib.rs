//! History checkers shared by the simulator (`strata-sim check-history`, its runs) and
//! `strata jepsen` (histories of real processes): [`wgl`] is the linearizability search,
//! [`models`] the sequential specifications and the history formats they read, [`elle`] the
//! Elle-style cycle search over list-append transactions, [`bank`] money conservation. std and
//! serde_json only, so depending on it pulls in none of the simulator's test-only features.

pub mod bank;
pub mod elle;
pub mod follower;
pub mod models;
pub mod wgl;
pub mod witness;
