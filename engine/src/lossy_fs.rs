//! A file system that loses unsynced writes when the process dies: the disk of a machine
//! whose power is cut. [`LoseUnsyncedFs`] wraps a real one; a file's writes stay in this
//! process's memory (shared by every handle on the same path, so readers see them) until
//! `sync_data` writes them through and fdatasyncs. A SIGKILL therefore loses exactly what a
//! power cut would lose from a disk without a volatile cache: every write not yet synced.
//!
//! ```text
//!   write_all_at ──▶ pending (memory) ──sync_data──▶ real file ──fdatasync──▶ durable
//!   read_at      ◀── real file, overlaid with pending writes in the order made
//! ```
//!
//! Not modelled: a `set_len` writes pending data through first (without a sync), so writes
//! before a truncation or extension survive a kill; directory operations (create, rename,
//! remove) are immediate. Used only by test builds (`crate::planted`), for `strata jepsen`'s
//! lossy-disk runs; the simulator's [`crate::sim_fs::SimFs`] models a disk in full.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fs::{FileHandle, FileSystem, OpenMode};
use crate::sync::lock;

/// Unsynced writes of one file, in the order made.
#[derive(Debug, Default)]
struct Pending {
    writes: Vec<(u64, Vec<u8>)>,
}

impl Pending {
    fn end(&self) -> u64 {
        self.writes
            .iter()
            .map(|(at, b)| at + b.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

type Shared = Arc<Mutex<Pending>>;

/// See the module docs.
pub struct LoseUnsyncedFs {
    inner: Arc<dyn FileSystem>,
    files: Mutex<HashMap<PathBuf, Shared>>,
}

impl fmt::Debug for LoseUnsyncedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoseUnsyncedFs")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl LoseUnsyncedFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn FileSystem>) -> LoseUnsyncedFs {
        LoseUnsyncedFs {
            inner,
            files: Mutex::new(HashMap::new()),
        }
    }
}

struct LossyFile {
    inner: Arc<dyn FileHandle>,
    pending: Shared,
}

impl fmt::Debug for LossyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossyFile")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl LossyFile {
    /// Writes the pending writes through to the real file (not synced).
    fn write_through(&self, pending: &mut Pending) -> io::Result<()> {
        for (at, bytes) in &pending.writes {
            self.inner.write_all_at(bytes, *at)?;
        }
        pending.writes.clear();
        Ok(())
    }
}

impl FileHandle for LossyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let pending = lock(&self.pending);
        let len = self.inner.len()?.max(pending.end());
        if offset >= len {
            return Ok(0);
        }
        let want = buf.len().min((len - offset) as usize);
        let out = &mut buf[..want];
        // The real file's bytes (zeros past its end), then the pending writes over them.
        let mut got = 0;
        while got < want {
            match self.inner.read_at(&mut out[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        out[got..].fill(0);
        let end = offset + want as u64;
        for (at, bytes) in &pending.writes {
            let w_end = at + bytes.len() as u64;
            if w_end <= offset || *at >= end {
                continue;
            }
            let from = offset.max(*at);
            let to = end.min(w_end);
            let src = &bytes[(from - at) as usize..(to - at) as usize];
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
        Ok(want)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        lock(&self.pending).writes.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut pending = lock(&self.pending);
        self.write_through(&mut pending)?;
        self.inner.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        let pending = lock(&self.pending);
        Ok(self.inner.len()?.max(pending.end()))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = lock(&self.pending);
        self.write_through(&mut pending)?;
        self.inner.set_len(len)
    }

    fn drop_cache(&self) {
        self.inner.drop_cache();
    }
}

impl FileSystem for LoseUnsyncedFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let inner = self.inner.open(path, mode)?;
        let mut files = lock(&self.files);
        let pending = files.entry(path.to_path_buf()).or_default().clone();
        if mode == OpenMode::CreateTruncate {
            lock(&pending).writes.clear();
        }
        Ok(Arc::new(LossyFile { inner, pending }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dirs(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)?;
        lock(&self.files).remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)?;
        lock(&self.files).retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        let mut files = lock(&self.files);
        let moved: Vec<PathBuf> = files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        files.retain(|p, _| !p.starts_with(to));
        for old in moved {
            if let (Some(state), Ok(rest)) = (files.remove(&old), old.strip_prefix(from)) {
                let new = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
                files.insert(new, state);
            }
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fs::StdFs;

    fn read(f: &dyn FileHandle, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        let got = f.read_at(&mut b, at).unwrap();
        b.truncate(got);
        b
    }

    #[test]
    fn unsynced_writes_are_seen_by_every_handle_and_lost_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let fs = LoseUnsyncedFs::new(Arc::new(StdFs));
        let w = fs.open(&path, OpenMode::CreateTruncate).unwrap();
        w.write_all_at(b"hello", 0).unwrap();
        w.sync_data().unwrap();
        w.write_all_at(b" world", 5).unwrap();
        w.write_all_at(b"W", 6).unwrap();
        // A second handle (a reader) sees the unsynced writes, in order.
        let r = fs.open(&path, OpenMode::Read).unwrap();
        assert_eq!(r.len().unwrap(), 11);
        assert_eq!(read(&*r, 0, 64), b"hello World");
        assert_eq!(read(&*r, 4, 3), b"o W");
        // The real file holds only what was synced: a kill now loses " World".
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        drop((w, r, fs));
        let again = LoseUnsyncedFs::new(Arc::new(StdFs));
        let f = again.open(&path, OpenMode::ReadWrite).unwrap();
        assert_eq!(read(&*f, 0, 64), b"hello");
        f.write_all_at(b"!", 5).unwrap();
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello!");
    }

    #[test]
    fn a_gap_reads_as_zeros_and_renames_keep_pending_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = LoseUnsyncedFs::new(Arc::new(StdFs));
        let a = dir.path().join("a");
        let f = fs.open(&a, OpenMode::CreateTruncate).unwrap();
        f.write_all_at(b"xy", 4).unwrap();
        assert_eq!(read(&*f, 0, 8), b"\0\0\0\0xy");
        let b = dir.path().join("b");
        fs.rename(&a, &b).unwrap();
        let g = fs.open(&b, OpenMode::Read).unwrap();
        assert_eq!(read(&*g, 4, 2), b"xy");
    }
}
