//! A fault-injecting, in-memory [`FileSystem`] for tests and the simulator. It keeps, for every
//! file, the bytes written and the bytes made durable by the last `sync_data`, and, for the
//! namespace, the entries made durable by the last `sync_dir`. A simulated crash throws away
//! what was not durable, optionally keeping a torn prefix of the unsynced bytes. Bit flips,
//! failing syncs and a full disk (ENOSPC) can be injected. All choices come from a seeded RNG.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{FileHandle, FileSystem, OpenMode};
use crate::rng::SplitMix64;

/// How a simulated crash treats bytes written but not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// All unsynced bytes are lost.
    DropUnsynced,
    /// A random prefix of each file's unsynced changes survives (a torn write), the old
    /// contents after it.
    TearUnsynced,
}

type FileId = u64;

#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct State {
    names: BTreeMap<PathBuf, FileId>,
    durable_names: BTreeMap<PathBuf, FileId>,
    dirs: BTreeSet<PathBuf>,
    files: HashMap<FileId, FileData>,
    next_id: FileId,
    rng: SplitMix64,
    space_bytes_max: Option<u64>,
    syncs_to_fail: u64,
    crashes: u64,
    /// Bumped by [`SimFs::fence`]: handles opened under an older epoch fail.
    epoch: u64,
    /// Directory renames (from, to) not yet made durable: a sync of the new parent does.
    pending_renames: Vec<(PathBuf, PathBuf)>,
    /// A disk that lies: `sync_data` succeeds without making anything durable (for checking
    /// that the simulator's checkers catch lost data).
    lying: bool,
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.files.get(id))
            .map(|f| f.current.len() as u64)
            .sum()
    }
}

/// The fault-injecting in-memory file system. Cloning shares the same disk.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    id: FileId,
    writable: bool,
    epoch: u64,
}

impl SimFile {
    /// The disk, unless this handle belongs to a process that crashed since it was opened.
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.epoch != self.epoch {
            return Err(io::Error::other(
                "stale file handle: its process crashed (simulated)",
            ));
        }
        Ok(state)
    }
}

/// Where `now` first differs from `durable` (the shorter one's length if one is a prefix of the
/// other), or `None` if they are equal.
fn first_difference(durable: &[u8], now: &[u8]) -> Option<usize> {
    match durable.iter().zip(now).position(|(a, b)| a != b) {
        Some(at) => Some(at),
        None if durable.len() != now.len() => Some(durable.len().min(now.len())),
        None => None,
    }
}

use crate::sync::lock;

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimFs {
    /// A new empty disk whose random choices (torn lengths) come from `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State {
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs: BTreeSet::new(),
                files: HashMap::new(),
                next_id: 1,
                rng: SplitMix64::new(seed),
                space_bytes_max: None,
                syncs_to_fail: 0,
                crashes: 0,
                epoch: 0,
                pending_renames: Vec::new(),
                lying: false,
            })),
        }
    }

    /// Simulates a power loss: unsynced data and unsynced directory entries are lost
    /// (or torn, per `mode`). Handles opened before keep working on the new contents.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = lock(&self.state);
        state.crashes += 1;
        state.names = state.durable_names.clone();
        state.pending_renames.clear();
        let mut ids: Vec<FileId> = state.files.keys().copied().collect();
        // In id order: the torn lengths drawn below must not depend on hash order.
        ids.sort_unstable();
        for id in ids {
            // Unsynced changes start at the first byte where the file differs from its
            // durable contents; a torn crash keeps a random prefix of them (writes reach the
            // disk in order), the old bytes after it.
            let changed = match mode {
                CrashMode::TearUnsynced => {
                    let file = &state.files[&id];
                    first_difference(&file.durable, &file.current)
                        .map(|at| (at, file.current.len() - at))
                }
                CrashMode::DropUnsynced => None,
            };
            let torn = changed.map(|(at, extra)| (at, state.rng.below(extra as u64 + 1) as usize));
            if let Some(file) = state.files.get_mut(&id) {
                if let Some((at, keep)) = torn {
                    let mut kept = file.current[..at + keep].to_vec();
                    if let Some(old) = file.durable.get(at + keep..) {
                        kept.extend_from_slice(old);
                    }
                    file.durable = kept;
                }
                file.current = file.durable.clone();
            }
        }
    }

    /// Flips one bit of a file, in its durable and its current contents.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = lock(&self.state);
        let id = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let file = state.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        let offset = offset as usize;
        if offset >= file.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past end",
            ));
        }
        file.current[offset] ^= 1 << (bit % 8);
        if offset < file.durable.len() {
            file.durable[offset] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Limits the total bytes of all files; writes past it fail with ENOSPC. `None` lifts it.
    pub fn set_space_limit(&self, bytes_max: Option<u64>) {
        lock(&self.state).space_bytes_max = bytes_max;
    }

    /// Makes the next `count` calls to `sync_data` fail with EIO (the data stays unsynced).
    pub fn fail_next_syncs(&self, count: u64) {
        lock(&self.state).syncs_to_fail = count;
    }

    /// Length of a file's current contents.
    pub fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = lock(&self.state);
        let id = state.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(state.files.get(id).map_or(0, |f| f.current.len() as u64))
    }

    /// Total bytes of all files' current contents (what the space limit counts).
    pub fn used_bytes(&self) -> u64 {
        lock(&self.state).used_bytes()
    }

    /// Makes every handle opened so far fail from now on, as a crashed process's handles are
    /// gone: whatever the old process still runs cannot touch the restarted one's files.
    pub fn fence(&self) {
        lock(&self.state).epoch += 1;
    }

    /// Makes `sync_data` succeed without making data durable (a disk that lies), or stops it.
    pub fn set_lying(&self, lying: bool) {
        lock(&self.state).lying = lying;
    }

    /// Paths of all files, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        lock(&self.state).names.keys().cloned().collect()
    }

    /// Number of simulated crashes so far.
    pub fn crashes(&self) -> u64 {
        lock(&self.state).crashes
    }
}

impl FileHandle for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.lock()?;
        let file = state
            .files
            .get(&self.id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let offset = offset as usize;
        if offset >= file.current.len() {
            return Ok(0);
        }
        let n = buf.len().min(file.current.len() - offset);
        buf[..n].copy_from_slice(&file.current[offset..offset + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        let mut state = self.lock()?;
        let end = offset as usize + buf.len();
        let len = state.files.get(&self.id).map_or(0, |f| f.current.len());
        if end > len {
            if let Some(max) = state.space_bytes_max {
                if state.used_bytes() + (end - len) as u64 > max {
                    return Err(io::Error::from(io::ErrorKind::StorageFull));
                }
            }
        }
        let file = state
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if end > file.current.len() {
            file.current.resize(end, 0);
        }
        file.current[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock()?;
        if state.syncs_to_fail > 0 {
            state.syncs_to_fail -= 1;
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        if state.lying {
            return Ok(());
        }
        let file = state
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.durable = file.current.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.lock()?;
        Ok(state
            .files
            .get(&self.id)
            .map_or(0, |f| f.current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        let mut state = self.lock()?;
        let file = state
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.current.resize(len as usize, 0);
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut state = lock(&self.state);
        let id = match (state.names.get(path).copied(), mode) {
            (Some(id), OpenMode::CreateTruncate) => {
                if let Some(file) = state.files.get_mut(&id) {
                    file.current.clear();
                }
                id
            }
            (Some(id), _) => id,
            (None, OpenMode::CreateTruncate) => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !state.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let id = state.next_id;
                state.next_id += 1;
                state.files.insert(id, FileData::default());
                state.names.insert(path.to_path_buf(), id);
                id
            }
            (None, _) => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            id,
            writable: mode != OpenMode::Read,
            epoch: state.epoch,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if let Some(id) = state.names.remove(from) {
            state.names.insert(to.to_path_buf(), id);
            return Ok(());
        }
        if !state.dirs.contains(from) {
            return Err(not_found(from));
        }
        // A directory: move it and everything under it.
        let moved = |p: &Path| p.strip_prefix(from).ok().map(|rest| to.join(rest));
        let names: Vec<(PathBuf, FileId)> = state
            .names
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in names {
            state.names.remove(&p);
            if let Some(q) = moved(&p) {
                state.names.insert(q, id);
            }
        }
        let dirs: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in dirs {
            state.dirs.remove(&d);
            if let Some(q) = moved(&d) {
                state.dirs.insert(q);
            }
        }
        state
            .pending_renames
            .push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .dirs
            .iter()
            .filter(|d| d.parent() == Some(dir))
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.names.retain(|p, _| !p.starts_with(dir));
        state.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        // Make this directory's entries durable; entries elsewhere keep their durable state.
        let mut durable: BTreeMap<PathBuf, FileId> = state
            .durable_names
            .iter()
            .filter(|(p, _)| p.parent() != Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in state.names.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            durable.insert(p.clone(), *id);
        }
        // A directory renamed into this one moves, durably, with everything durable in it.
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_renames)
            .into_iter()
            .partition(|(_, to)| to.parent() == Some(dir));
        state.pending_renames = pending;
        for (from, to) in done {
            let inside: Vec<PathBuf> = durable
                .keys()
                .filter(|p| p.starts_with(&from))
                .cloned()
                .collect();
            for p in inside {
                if let (Some(id), Ok(rest)) = (durable.remove(&p), p.strip_prefix(&from)) {
                    durable.insert(to.join(rest), id);
                }
            }
        }
        state.durable_names = durable;
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = lock(&self.state);
        Ok(state.names.contains_key(path) || state.dirs.contains(path))
    }
}
