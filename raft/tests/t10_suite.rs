//! openraft's own storage test suite against the real storage: engine log, RocksDB index,
//! hard-state file, on disk.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openraft::testing::{StoreBuilder, Suite};
use strata_engine::EngineConfig;
use strata_raft::types::StorageError;
use strata_raft::{LogStore, Shard, ShardOptions, StateMachine, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ShardOptions::on_disk(0, dir.path(), EngineConfig::default());
        let shard = Shard::open(options).expect("open shard");
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
