//! A node's shards: where their data lives, and the set the node serves.
//!
//! The data directory's layout:
//!
//! ```text
//!   one shard (the default, and every directory made before sharding):
//!     DIR/log/  DIR/index/                     the engine (see ARCHITECTURE.md)
//!   several shards (`--shards N`, N > 1, on a new directory):
//!     DIR/cluster.map                          the map: slots → shards (ClusterMap::encode),
//!                                              written (synced) before any shard; on a
//!                                              replicated node, the cache of the newest map
//!                                              the metadata group committed
//!     DIR/shards/<id>/log/  DIR/shards/<id>/index/   one engine per shard
//!     DIR/meta/                                a replicated node's replica of the metadata
//!                                              group (see `crate::meta`)
//! ```
//!
//! A directory keeps the shards it was made with: `--shards` on an existing directory must
//! match it (moving streams between shards is a slot-range move), unless its map has changed
//! since (a split adds shards: the map says which there are). A shard added while the node
//! runs lives in `DIR/shards/<id>/` like the others. The shards of a node share
//! one sync round ([`strata_engine::sync_round::RoundFs`]: one fdatasync per device per round
//! whatever the shards) and one index block cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use strata_engine::stats::Stats;
use strata_engine::sync_round::RoundFs;
use strata_proto::routing::{ClusterMap, ShardId, SLOTS_DEFAULT};

use crate::backend::Backend;
pub use crate::map_cell::{write_map, MapCell, MAP_FILE};
use crate::shard_set::ShardSet;

/// What a directory of one shard holds (an engine's log; a replica's generation pointer or
/// Raft state): a directory with one of these and no map is a one-shard store.
const ONE_SHARD_MARKS: [&str; 3] = ["log", "CURRENT", "raft-state"];
/// Most shards one node opens: each has three pipeline threads and a RocksDB of its own.
pub const SHARDS_PER_NODE_MAX: u32 = 64;

/// Where a node's shards live: the map and each shard's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The map (for one shard, all slots on shard 0, not stored).
    pub map: ClusterMap,
    /// Each shard's data directory, by id.
    pub dirs: Vec<(ShardId, PathBuf)>,
}

/// Finds (or, for a new directory, decides and records) the shards in `dir`. `shards`:
/// `None` takes what is there (one shard if nothing is); `Some(n)` must match it.
pub fn layout(dir: &Path, shards: Option<u32>) -> Result<Layout, String> {
    let map_file = dir.join(MAP_FILE);
    let one = |dir: &Path| -> Result<Layout, String> {
        Ok(Layout {
            map: ClusterMap::even(SLOTS_DEFAULT, 1).map_err(|e| e.to_string())?,
            dirs: vec![(ShardId(0), dir.to_path_buf())],
        })
    };
    if let Some(n) = shards {
        if n == 0 || n > SHARDS_PER_NODE_MAX {
            return Err(format!(
                "--shards must be 1 to {SHARDS_PER_NODE_MAX}, not {n}"
            ));
        }
    }
    let map = if map_file.exists() {
        let text = std::fs::read_to_string(&map_file)
            .map_err(|e| format!("reading {}: {e}", map_file.display()))?;
        ClusterMap::decode(&text).map_err(|e| format!("{}: {e}", map_file.display()))?
    } else if ONE_SHARD_MARKS.iter().any(|m| dir.join(m).exists()) {
        return match shards {
            None | Some(1) => one(dir),
            Some(n) => Err(format!(
                "{} holds a one-shard store; spreading its streams over {n} shards is a slot-range move, which is not built yet: start without --shards, or give a new directory",
                dir.display()
            )),
        };
    } else {
        match shards.unwrap_or(1) {
            1 => return one(dir),
            n => create(dir, n)?,
        }
    };
    let have = map.shards().len();
    // A map changed since creation (a split) holds the shards it holds, whatever `--shards`
    // first made.
    if let (Some(n), 1) = (shards, map.epoch()) {
        if n as usize != have {
            return Err(format!(
                "{} holds {have} shards ({}), not {n}: start with --shards {have}, or give a new directory",
                dir.display(),
                map_file.display()
            ));
        }
    }
    let dirs = map
        .shards()
        .into_iter()
        .map(|id| (id, dir.join("shards").join(id.0.to_string())))
        .collect();
    Ok(Layout { map, dirs })
}

/// Records the map of a new directory of `n` shards.
fn create(dir: &Path, n: u32) -> Result<ClusterMap, String> {
    let map = ClusterMap::even(SLOTS_DEFAULT, n).map_err(|e| e.to_string())?;
    write_map(dir, &map)?;
    Ok(map)
}

/// The shards a node serves, with its map and their shared sync round.
#[derive(Debug, Clone)]
pub struct LocalShards {
    /// By id; grows when a split adds a shard.
    pub set: ShardSet,
    /// The map routing streams to them.
    pub map: MapCell,
    /// The sync round their logs share (`None`: a replica, which syncs on its own).
    pub round: Option<RoundFs>,
    /// The node's replica of the metadata group, on a replicated node of several shards.
    pub meta: Option<crate::meta::Meta>,
}

impl LocalShards {
    /// Every shard's engine counters added up.
    pub fn stats(&self) -> Stats {
        let all: Vec<Arc<Stats>> = self.backends().iter().map(|(_, b)| b.stats()).collect();
        Stats::sum(all.iter().map(|s| s.as_ref()))
    }

    /// fdatasyncs issued for the shards' logs so far (0 when not counted).
    pub fn fdatasyncs(&self) -> u64 {
        self.round
            .as_ref()
            .map_or(0, |r| r.stats().fdatasyncs.load(Ordering::Relaxed))
    }

    /// The shards' storage now, by id.
    pub fn backends(&self) -> Vec<(ShardId, Backend)> {
        self.set.backends()
    }

    /// The replicas, by shard id, on a replicated node (empty on one without replication).
    pub fn replicas(&self) -> Vec<strata_raft::Replica> {
        self.backends()
            .into_iter()
            .filter_map(|(_, b)| match b {
                Backend::Replicated(r) => Some(*r),
                Backend::Single(_) => None,
            })
            .collect()
    }

    /// The first shard's replica (the node's Raft view in one-shard terms), on a replicated
    /// node.
    pub fn replica(&self) -> Option<strata_raft::Replica> {
        self.replicas().into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_directory_keeps_the_shards_it_was_made_with() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let made = layout(&dir, Some(4)).unwrap();
        assert_eq!(made.dirs.len(), 4);
        assert_eq!(made.dirs[2], (ShardId(2), dir.join("shards").join("2")));
        assert_eq!(layout(&dir, None).unwrap(), made);
        assert_eq!(layout(&dir, Some(4)).unwrap(), made);
        let e = layout(&dir, Some(8)).unwrap_err();
        assert!(
            e.contains("holds 4 shards") && e.contains("--shards 4"),
            "{e}"
        );
        // After a split the map says which shards there are; `--shards` is what made them.
        let split = made.map.with_shard_added(ShardId(4)).unwrap();
        write_map(&dir, &split).unwrap();
        let grown = layout(&dir, Some(4)).unwrap();
        assert_eq!(grown.dirs.len(), 5);
        assert_eq!(grown.dirs[4], (ShardId(4), dir.join("shards").join("4")));
        for n in [0, SHARDS_PER_NODE_MAX + 1] {
            let e = layout(&tmp.path().join("new"), Some(n)).unwrap_err();
            assert!(e.contains("--shards must be 1 to 64"), "{e}");
        }
    }

    #[test]
    fn a_one_shard_directory_keeps_its_layout_and_refuses_more_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let one = layout(tmp.path(), None).unwrap();
        assert_eq!(one.dirs, vec![(ShardId(0), tmp.path().to_path_buf())]);
        assert!(!tmp.path().join(MAP_FILE).exists());
        std::fs::create_dir_all(tmp.path().join("log")).unwrap();
        assert_eq!(layout(tmp.path(), Some(1)).unwrap(), one);
        let e = layout(tmp.path(), Some(8)).unwrap_err();
        assert!(e.contains("one-shard store"), "{e}");
        assert!(!tmp.path().join(MAP_FILE).exists(), "nothing written");
    }

    #[test]
    fn a_damaged_map_is_refused_naming_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MAP_FILE), "strata-cluster-map 1\nepoch 1\n").unwrap();
        let e = layout(tmp.path(), None).unwrap_err();
        assert!(e.contains(MAP_FILE) && e.contains("no slots line"), "{e}");
    }
}
