//! The map a node routes by: the cell its router and services share ([`MapCell`]) and the
//! file that keeps it in the data directory ([`write_map`]). Below both `shards` (which
//! opens the directory) and `meta` (which replaces the map when the cluster's changes).

use std::path::Path;
use std::sync::{Arc, RwLock};

use strata_engine::fs::{FileSystem, OpenMode};
use strata_proto::routing::ClusterMap;

/// Why a map was not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// It is not and never will be (another map took its epoch, or it was never sent).
    #[error("{0}")]
    Refused(String),
    /// It may still be: the metadata group did not answer (the proposal may commit later).
    #[error("{0}")]
    Unknown(String),
}

/// The map's file in a data directory of several shards.
pub const MAP_FILE: &str = "cluster.map";

/// Writes `map` as `dir`'s map (to a temporary file, synced, renamed, the directory synced: a
/// crash leaves the old map or the new one, whole).
pub fn write_map(dir: &Path, map: &ClusterMap) -> Result<(), String> {
    write_map_with(&strata_engine::fs::StdFs, dir, map)
}

/// [`write_map`] through the file system seam `fs` (the simulator's disks).
pub fn write_map_with(fs: &dyn FileSystem, dir: &Path, map: &ClusterMap) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
    fs.create_dir_all(dir)
        .map_err(|e| io("creating the directory", e))?;
    let tmp = dir.join(format!("{MAP_FILE}.tmp"));
    let text = map.encode();
    let file = fs
        .open(&tmp, OpenMode::CreateTruncate)
        .map_err(|e| io("creating the map", e))?;
    file.write_all_at(text.as_bytes(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| io("writing the map", e))?;
    drop(file);
    fs.rename(&tmp, &dir.join(MAP_FILE))
        .map_err(|e| io("naming the map", e))?;
    fs.sync_dir(dir).map_err(|e| io("syncing the directory", e))
}

/// The map `dir` holds through `fs` (`None`: none written).
pub fn read_map_with(fs: &dyn FileSystem, dir: &Path) -> Result<Option<ClusterMap>, String> {
    let path = dir.join(MAP_FILE);
    let io = |e: std::io::Error| format!("reading {}: {e}", path.display());
    if !fs.exists(&path).map_err(io)? {
        return Ok(None);
    }
    let file = fs.open(&path, OpenMode::Read).map_err(io)?;
    let len = file.len().map_err(io)?;
    let mut bytes =
        vec![0; usize::try_from(len).map_err(|_| format!("{} is too large", path.display()))?];
    strata_engine::fs::read_exact_at(file.as_ref(), &mut bytes, 0).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    ClusterMap::decode(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The map a node routes by, shared by its router and services; replaced whole when the
/// metadata group records a newer one (readers take the `Arc` of the moment). A node that
/// finds it cannot route by the cluster's map (another shard count, a shard it lacks) holds a
/// refusal instead, and its router answers every call with it until a map it can take comes.
#[derive(Debug, Clone)]
pub struct MapCell(Arc<RwLock<Held>>, Arc<tokio::sync::watch::Sender<u64>>);

#[derive(Debug)]
struct Held {
    map: Arc<ClusterMap>,
    refusal: Option<Arc<str>>,
}

impl MapCell {
    /// A cell holding `map`.
    pub fn new(map: ClusterMap) -> MapCell {
        let epoch = map.epoch();
        MapCell(
            Arc::new(RwLock::new(Held {
                map: Arc::new(map),
                refusal: None,
            })),
            Arc::new(tokio::sync::watch::Sender::new(epoch)),
        )
    }

    /// The epoch of the map held, changing whenever [`MapCell::advance`] takes one.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The map now (whether or not the node may route by it).
    pub fn get(&self) -> Arc<ClusterMap> {
        self.read().map.clone()
    }

    /// The map to route by, or why this node must not route.
    pub fn routable(&self) -> Result<Arc<ClusterMap>, Arc<str>> {
        let held = self.read();
        match &held.refusal {
            Some(why) => Err(why.clone()),
            None => Ok(held.map.clone()),
        }
    }

    /// Replaces the map with a newer one (a later epoch), lifting any refusal; an older or
    /// equal one is ignored. Returns whether it was taken.
    pub fn advance(&self, map: ClusterMap) -> bool {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.epoch() <= held.map.epoch() {
            return false;
        }
        let epoch = map.epoch();
        *held = Held {
            map: Arc::new(map),
            refusal: None,
        };
        drop(held);
        self.1.send_replace(epoch);
        true
    }

    /// Stops routing: every call is answered `why` until [`MapCell::advance`] takes a map.
    pub fn refuse(&self, why: String) {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.refusal = Some(why.into());
    }
}
