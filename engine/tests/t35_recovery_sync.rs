//! What a reopened store finds in its log it syncs before anything reads, indexes or
//! acknowledges it: records a process wrote and never synced (it died first, or the sync
//! failed) must not be served and then lost to a power cut.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{append, event, open_sim, small_config};
use strata_engine::index_store::MemIndexStore;
use strata_engine::sim_fs::{CrashMode, SimFs};
use strata_engine::{Direction, Error, ExpectedVersion, Store};

/// The process dies: no destructor runs, the page cache (the file system's unsynced data)
/// survives, and so does what the index wrote.
fn restart(store: Store, fs: &SimFs, index: &MemIndexStore) -> Store {
    std::mem::forget(store);
    fs.fence();
    index.persist();
    open_sim(fs, index, small_config()).expect("reopen after a process crash")
}

/// The power goes: unsynced data is lost.
fn power_cut(store: Store, fs: &SimFs, index: &MemIndexStore) -> Store {
    std::mem::forget(store);
    fs.crash(CrashMode::DropUnsynced);
    index.crash();
    open_sim(fs, index, small_config()).expect("reopen after a power cut")
}

fn versions(store: &Store) -> usize {
    store
        .reader()
        .read_stream("s", None, Direction::Forwards, 4096)
        .unwrap()
        .len()
}

/// Found by the simulator (seed 1795675940998637877): a roll wrote the segment's footer and its
/// sync failed; the restarted process found the footer, listed the segment as sealed in the
/// manifest (synced) without syncing the segment, and the next power cut left the segment
/// shorter than the manifest says.
#[test]
fn a_segment_sealed_by_a_failed_roll_is_synced_before_the_manifest_lists_it() {
    let fs = SimFs::new(7);
    let index = MemIndexStore::default();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    // 1 KiB events until less than 3 KiB of the 16 KiB segment is left.
    let mut acked = 0;
    while store.next_position() < 13 << 10 {
        acked += 1;
        store
            .commit(vec![append(
                "s",
                ExpectedVersion::Any,
                vec![event(acked as u128, &"x".repeat(1000))],
            )])
            .remove(0)
            .unwrap();
    }
    assert_eq!(store.reader().segments().len(), 1, "still one segment");
    // The next record does not fit: the log rolls, and the roll's sync fails.
    fs.fail_next_syncs(1);
    let answer = store
        .commit(vec![append(
            "s",
            ExpectedVersion::Any,
            vec![event(1_000, &"y".repeat(3_000))],
        )])
        .remove(0);
    fs.fail_next_syncs(0);
    assert!(matches!(answer, Err(Error::Poisoned(_))), "{answer:?}");
    let store = restart(store, &fs, &index);
    assert_eq!(versions(&store), acked);
    let store = power_cut(store, &fs, &index);
    assert_eq!(versions(&store), acked, "every acknowledged event survives");
}

/// A record whose sync failed is not acknowledged; if a restarted store serves it, it has
/// made it durable first.
#[test]
fn a_record_served_after_a_restart_survives_a_power_cut() {
    let fs = SimFs::new(8);
    let index = MemIndexStore::default();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    store
        .commit(vec![append("s", ExpectedVersion::Any, vec![event(1, "a")])])
        .remove(0)
        .unwrap();
    fs.fail_next_syncs(1);
    let answer = store
        .commit(vec![append("s", ExpectedVersion::Any, vec![event(2, "b")])])
        .remove(0);
    fs.fail_next_syncs(0);
    assert!(answer.is_err(), "{answer:?}");
    let store = restart(store, &fs, &index);
    let served = versions(&store);
    assert!(served == 1 || served == 2);
    let store = power_cut(store, &fs, &index);
    assert_eq!(versions(&store), served, "what was served is still there");
}
