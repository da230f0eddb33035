//! History checkers shared by the simulator (`strata-sim check-history`, its runs) and
//! `strata jepsen` (histories of real processes): [`wgl`] is the linearizability search,
//! [`models`] the sequential specifications and the history formats they read. std and
//! serde_json only, so depending on it pulls in none of the simulator's test-only features.

pub mod models;
pub mod wgl;
