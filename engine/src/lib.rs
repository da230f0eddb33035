//! strata-engine: one shard's storage on one node. An append-only log of checksummed records in
//! segment files (the data), RocksDB indexes derived from it (stream versions, event-id dedup,
//! time), group commit, crash recovery and offline verification. No Raft, no network: those
//! layers drive [`Store`] (synchronously) or [`Engine`] (a group-commit thread) from above.
//!
//! Every file access goes through [`fs::FileSystem`] and time never comes from the wall clock,
//! so the simulator can run this code over [`sim_fs::SimFs`] deterministically.

/// Asserts an invariant of stored state where the state changes: in debug builds (every test)
/// and whenever the calling crate's `invariants` feature is on (the simulator turns it on, so
/// its release-build sweeps check them too); compiled out of a production release build. A
/// failure is a bug in Strata, never bad input.
#[macro_export]
macro_rules! invariant {
    ($($arg:tt)*) => {
        if cfg!(any(debug_assertions, feature = "invariants")) {
            assert!($($arg)*);
        }
    };
}

pub mod cache_trim;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod event;
pub mod fence;
pub mod format;
pub mod fs;
pub mod id_filter;
pub mod index;
pub mod index_store;
pub mod log;
pub mod lossy_fs;
pub mod planted;
pub mod reader;
pub mod reclaimed;
pub mod retention;
pub mod rng;
pub mod segment;
pub mod sim_fs;
pub mod stats;
pub mod store;
pub mod sync;
pub mod sync_round;
pub mod system;
pub mod validate;
pub mod verify;
pub mod views;

pub use config::{EngineConfig, Limits, TailRecovery};
pub use engine::Engine;
pub use error::{Error, Result};
pub use event::{
    AppendRequest, AppendResult, Direction, ExpectedVersion, NewEvent, Position, Record,
    RecordedEvent, StreamAppend, StreamAppendResult, StreamCondition,
};
pub use reader::{AsOf, ReadAllBatch, Reader, StreamPage};
pub use store::{EntryBody, LogEntry, Store, SyncPoint, WrittenEntry};
pub use views::{State, StreamInfo};
