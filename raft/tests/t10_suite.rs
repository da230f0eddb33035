//! openraft's own storage test suite against the real storage: engine log, RocksDB index,
//! hard-state file, on disk.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use strata_engine::clock::MonotonicClock;
use strata_engine::fs::StdFs;
use strata_engine::index_store::RocksIndexStore;
use strata_engine::EngineConfig;
use strata_raft::types::StorageError;
use strata_raft::{LogStore, Shard, ShardOptions, StateMachine, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let shard = Shard::open(ShardOptions {
            node_id: 0,
            dir: dir.path().to_path_buf(),
            engine: EngineConfig::default(),
            fs: Arc::new(StdFs),
            clock: Arc::new(MonotonicClock::default()),
            open_index: Arc::new(|p| Ok(Box::new(RocksIndexStore::open(p)?))),
            log_sync: Default::default(),
        })
        .expect("open shard");
        let (log, sm) = shard.split();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
