//! Helpers shared by the engine's integration tests.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_engine::clock::ManualClock;
use strata_engine::index_store::MemIndexStore;
use strata_engine::sim_fs::SimFs;
use strata_engine::{AppendRequest, EngineConfig, ExpectedVersion, NewEvent, Store};
use uuid::Uuid;

pub fn event(id: u128, data: &str) -> NewEvent {
    NewEvent {
        id: Uuid::from_u128(id),
        event_type: "Tested".into(),
        data: Bytes::copy_from_slice(data.as_bytes()),
        metadata: Bytes::new(),
    }
}

pub fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::single(stream, expected, events, 1_000)
}

/// Small segments so tests roll often.
pub fn small_config() -> EngineConfig {
    // Small segments so tests roll often; small reads so scans cross window boundaries.
    let mut config = EngineConfig {
        segment_bytes_max: 16 << 10,
        read_chunk_bytes: 4096,
        ..EngineConfig::default()
    };
    config.limits.batch_bytes_max = 8 << 10;
    config.limits.event_bytes_max = 4 << 10;
    config.group_bytes_max = 8 << 10;
    config
}

pub fn open_sim(
    fs: &SimFs,
    index: &MemIndexStore,
    config: EngineConfig,
) -> strata_engine::Result<Store> {
    Store::open(
        Arc::new(fs.clone()),
        Path::new("/data"),
        Box::new(index.clone()),
        config,
        Arc::new(ManualClock::default()),
    )
}

/// [`open_sim`] with the log's syncs going through a sync round
/// ([`strata_engine::sync_round::RoundFs`], as a node's shards share one).
pub fn open_sim_rounds(
    fs: &SimFs,
    index: &MemIndexStore,
    config: EngineConfig,
) -> strata_engine::Result<Store> {
    Store::open(
        Arc::new(strata_engine::sync_round::RoundFs::new(Arc::new(
            fs.clone(),
        ))),
        Path::new("/data"),
        Box::new(index.clone()),
        config,
        Arc::new(ManualClock::default()),
    )
}

/// Segment files in `dir`'s log.
pub fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}
