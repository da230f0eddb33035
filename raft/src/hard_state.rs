//! The Raft state that is not in the log: the vote, the committed log id and how far the log
//! is purged. Kept in a small file with two slots written alternately, each with a counter and
//! a CRC, so a torn write leaves the other slot intact.
//!
//! Two such files: `raft-state` (vote and purge mark) is fdatasync'ed on every save before it
//! returns — losing a vote could elect two leaders in one term. `raft-committed` (the committed
//! log id) is written on every commit but not synced: it only tells a restarting node how far
//! it may re-apply before hearing from the leader, so losing it to a power cut costs nothing but
//! that head start, and never syncing it keeps an fdatasync off every commit. (An unsynced save
//! may only ever overwrite other unsynced saves, which is why the two live in separate files.)
//!
//! ```text
//! slot (4 KiB) = { magic: u64 = "STRRAFT1" | counter: u64 | len: u32 | crc: u32 | json }
//!                crc = crc32(counter ++ len ++ json)
//! ```

// Bytes decoded here come from disk: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_engine::format::{bytes_at, u32_at, u64_at};
use strata_engine::fs::{read_exact_at, FileHandle, FileSystem, OpenMode};
use strata_engine::{Error, Result};

use crate::types::{LogId, NodeId};

const MAGIC: &[u8; 8] = b"STRRAFT1";
const SLOT_BYTES: usize = 4096;
const SLOT_HEADER_BYTES: usize = 24;

/// The persisted values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The last vote cast or seen.
    pub vote: Option<openraft::Vote<NodeId>>,
    /// The last log id known committed.
    pub committed: Option<LogId>,
    /// Entries up to here are no longer Raft log entries (they stay in the log as data).
    pub purged: Option<LogId>,
    /// Which incarnation of this node's replica of the group this is (see
    /// [`crate::StrataNode`]); recorded when the replica is created (`None`: a replica from
    /// before incarnations, or one not yet opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

/// The file holding a [`HardState`].
#[derive(Debug)]
pub struct HardStateFile {
    file: Arc<dyn FileHandle>,
    counter: u64,
    state: HardState,
    durable: bool,
}

impl HardStateFile {
    /// Opens (or creates) the file at `path`; with `durable`, every save is fdatasync'ed.
    pub fn open(fs: &dyn FileSystem, path: &Path, durable: bool) -> Result<HardStateFile> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |e| Error::io(what, e)
        };
        if let Some(dir) = path.parent() {
            fs.create_dir_all(dir)
                .map_err(io("creating the directory of"))?;
        }
        let exists = fs.exists(path).map_err(io("checking"))?;
        let file = if exists {
            fs.open(path, OpenMode::ReadWrite).map_err(io("opening"))?
        } else {
            let f = fs
                .open(path, OpenMode::CreateTruncate)
                .map_err(io("creating"))?;
            if let Some(dir) = path.parent() {
                fs.sync_dir(dir).map_err(io("syncing the directory of"))?;
            }
            f
        };
        if durable {
            // A slot the last process wrote may never have been synced (its fsync failed, or
            // it died first) and still be in the page cache: what open reads must be what a
            // power cut would keep, or a vote or purge mark could be acted on and then lost.
            file.sync_data().map_err(io("syncing"))?;
        }
        let len = file.len().map_err(io("sizing"))?;
        let mut best: Option<(u64, HardState)> = None;
        for slot in 0..2u64 {
            let at = slot * SLOT_BYTES as u64;
            if len < at + SLOT_HEADER_BYTES as u64 {
                continue;
            }
            let mut buf = vec![0u8; SLOT_BYTES.min((len - at) as usize)];
            read_exact_at(file.as_ref(), &mut buf, at).map_err(io("reading"))?;
            if let Some((counter, state)) = decode_slot(&buf) {
                if best.as_ref().is_none_or(|(c, _)| counter > *c) {
                    best = Some((counter, state));
                }
            }
        }
        let (counter, state) = best.unwrap_or_default();
        Ok(HardStateFile {
            file,
            counter,
            state,
            durable,
        })
    }

    /// The current values.
    pub fn get(&self) -> &HardState {
        &self.state
    }

    /// Replaces the values (durably when the file is durable).
    pub fn save(&mut self, state: HardState) -> Result<()> {
        if state == self.state {
            return Ok(());
        }
        let counter = self.counter + 1;
        let json =
            serde_json::to_vec(&state).map_err(|e| Error::invalid("hard state", e.to_string()))?;
        if json.len() > SLOT_BYTES - SLOT_HEADER_BYTES {
            return Err(Error::invalid("hard state", "too large for its slot"));
        }
        let mut buf = Vec::with_capacity(SLOT_HEADER_BYTES + json.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&counter.to_le_bytes());
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&counter.to_le_bytes());
        crc.update(&(json.len() as u32).to_le_bytes());
        crc.update(&json);
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(&json);
        let at = (counter % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&buf, at)
            .and_then(|()| {
                if self.durable {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| Error::io("saving the Raft hard state", e))?;
        self.counter = counter;
        self.state = state;
        Ok(())
    }
}

/// A slot's counter and state, or `None` for a slot that is empty, torn or damaged.
pub fn decode_slot(buf: &[u8]) -> Option<(u64, HardState)> {
    if bytes_at::<8>(buf, 0).as_ref() != Some(MAGIC) {
        return None;
    }
    let counter = u64_at(buf, 8)?;
    let len = u32_at(buf, 16)? as usize;
    let crc = u32_at(buf, 20)?;
    let json = buf.get(SLOT_HEADER_BYTES..SLOT_HEADER_BYTES.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(buf.get(8..20)?);
    hasher.update(json);
    if hasher.finalize() != crc {
        return None;
    }
    Some((counter, serde_json::from_slice(json).ok()?))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use strata_engine::fs::StdFs;

    #[test]
    fn survives_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft").join("state");
        let mut f = HardStateFile::open(&StdFs, &path, true).unwrap();
        assert_eq!(f.get(), &HardState::default());
        let one = HardState {
            vote: Some(openraft::Vote::new(3, 1)),
            ..HardState::default()
        };
        f.save(one.clone()).unwrap();
        let two = HardState {
            committed: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 9)),
            ..one.clone()
        };
        f.save(two.clone()).unwrap();
        drop(f);
        assert_eq!(
            HardStateFile::open(&StdFs, &path, true).unwrap().get(),
            &two
        );
        // Tear the newer slot (counter 2 lives in slot 0): the older one wins.
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        raw.write_all_at(b"garbage", 30).unwrap();
        assert_eq!(
            HardStateFile::open(&StdFs, &path, true).unwrap().get(),
            &one
        );
    }

    /// A save whose fsync failed leaves its slot in the page cache; a restarted process
    /// reading it must make it durable before acting on it, or a power cut takes back a vote
    /// (or purge mark) that was already used.
    #[test]
    fn what_open_reads_survives_a_power_cut() {
        use strata_engine::sim_fs::{CrashMode, SimFs};
        let fs = SimFs::new(7);
        let path = Path::new("/n1/raft-state");
        let mut f = HardStateFile::open(&fs, path, true).unwrap();
        let one = HardState {
            vote: Some(openraft::Vote::new(3, 1)),
            ..HardState::default()
        };
        f.save(one.clone()).unwrap();
        let two = HardState {
            vote: Some(openraft::Vote::new(4, 2)),
            ..HardState::default()
        };
        fs.fail_next_syncs(1);
        assert!(f.save(two).is_err());
        drop(f);
        // The process restarts (the page cache keeps the unsynced slot), reads, and a power
        // cut follows.
        let seen = HardStateFile::open(&fs, path, true).unwrap().get().clone();
        fs.crash(CrashMode::DropUnsynced);
        assert_eq!(HardStateFile::open(&fs, path, true).unwrap().get(), &seen);
    }
}
