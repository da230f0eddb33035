//! The file-system seam. Every byte the log reads or writes goes through [`FileSystem`], so the
//! simulator and the fault-injection tests ([`crate::sim_fs::SimFs`]) can drive the real code.
//! [`StdFs`] is the production implementation over `std::fs` (positional I/O, `fdatasync`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cache_trim::{CacheTrim, CACHE_KEEP_BYTES_DEFAULT};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; the file is created empty, or truncated if it exists.
    CreateTruncate,
}

/// An open file with positional reads and writes, shareable between threads.
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing the file's dirty pages to its device, without waiting and without
    /// flushing the device's cache (`sync_file_range(WRITE)`). `Ok(false)`: not supported here,
    /// so whoever wanted the writeback must `sync_data` instead (the default; [`SimFs`]'s
    /// files model durability per file only).
    ///
    /// [`SimFs`]: crate::sim_fs::SimFs
    fn start_writeback(&self) -> io::Result<bool> {
        Ok(false)
    }
    /// Waits until every page dirty when it is called has reached the device (which may
    /// still hold it in a volatile cache: only a flush, such as an fdatasync's, makes it
    /// durable). Only after [`FileHandle::start_writeback`] returned `Ok(true)`.
    fn wait_writeback(&self) -> io::Result<()> {
        Ok(())
    }
    /// The device the file lives on (`st_dev`), when known: one device flush covers every
    /// file on it whose pages reached it.
    fn device(&self) -> Option<u64> {
        None
    }
    /// Drops the file's synced pages from the OS page cache (a hint that changes no byte:
    /// later reads go to the device). Only for a file written for good (a sealed segment).
    fn drop_cache(&self) {}
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A file system: the only way the log touches storage.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>>;
    /// Names of the files in a directory, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Names of the directories in a directory, sorted.
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it (no error if it does not exist).
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Atomically renames a file, or a directory with everything in it, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
}

/// Removes `dir` and everything in it so that a power cut cannot bring any of it back. A
/// removal is only durable once its parent directory is synced, and the entries inside a
/// removed tree have no parent left to sync: after a crash, part of the tree could reappear
/// (a replica's files where the node had deleted it). So `dir` is first renamed to
/// [`removed_name`] and the rename synced — from then on `dir` is durably gone — and only
/// then deleted. A leftover from an interrupted removal is deleted too.
pub fn remove_dir_durably(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let tomb = removed_name(dir);
    fs.remove_dir_all(&tomb)?;
    if !fs.exists(dir)? {
        return Ok(());
    }
    fs.rename(dir, &tomb)?;
    if let Some(parent) = dir.parent() {
        fs.sync_dir(parent)?;
    }
    fs.remove_dir_all(&tomb)
}

/// Where [`remove_dir_durably`] moves `dir` before deleting it: `DIR.removed` beside it.
pub fn removed_name(dir: &Path) -> std::path::PathBuf {
    let mut name = dir.as_os_str().to_os_string();
    name.push(".removed");
    std::path::PathBuf::from(name)
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn FileHandle, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The production file system over `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile {
    file: File,
    device: Option<u64>,
    /// What of it the page cache keeps once synced (see [`crate::cache_trim`]).
    cache: CacheTrim,
}

/// Bytes of each file's newest synced data the page cache keeps, for files opened from now
/// on (0: all of it, as the kernel decides). Set once at start from the node's configuration.
static CACHE_KEEP_BYTES: AtomicU64 = AtomicU64::new(CACHE_KEEP_BYTES_DEFAULT);

/// Sets how many bytes of each file's newest synced data the page cache keeps, for files
/// opened from now on (0: no trimming). See [`crate::cache_trim`].
pub fn set_cache_keep_bytes(bytes: u64) {
    CACHE_KEEP_BYTES.store(bytes, Ordering::Relaxed);
}

impl StdFile {
    /// Drops the pages a sync covering up to `synced_end` made due (a hint: failures ignored).
    fn trim_cache(&self, synced_end: u64) {
        #[cfg(target_os = "linux")]
        if let Some((offset, len)) = self.cache.due(synced_end) {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return;
            };
            // SAFETY: the descriptor is open while `self.file` lives; the range and advice are
            // plain values, and DONTNEED only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
    }
}

/// `sync_file_range(2)` over the whole file.
#[cfg(target_os = "linux")]
fn sync_file_range(file: &File, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed; offset 0 and
    // length 0 mean "to the end of the file", and the flags are sync_file_range's own.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl FileHandle for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        self.cache.wrote(offset.saturating_add(buf.len() as u64));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let covers = self.cache.sync_covers();
        self.file.sync_data()?;
        self.trim_cache(covers);
        Ok(())
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self) -> io::Result<bool> {
        sync_file_range(&self.file, libc::SYNC_FILE_RANGE_WRITE).map(|()| true)
    }
    #[cfg(target_os = "linux")]
    fn wait_writeback(&self) -> io::Result<()> {
        let covers = self.cache.sync_covers();
        sync_file_range(
            &self.file,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
        // Its pages are on the device (maybe in its volatile cache: the round's flush makes
        // them durable); clean, they can leave the page cache.
        self.trim_cache(covers);
        Ok(())
    }
    fn device(&self) -> Option<u64> {
        self.device
    }
    fn drop_cache(&self) {
        self.trim_cache(u64::MAX);
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.cache.truncated(len);
        Ok(())
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateTruncate => options.read(true).write(true).create(true).truncate(true),
        };
        let file = options.open(path)?;
        let device = {
            use std::os::unix::fs::MetadataExt;
            file.metadata().ok().map(|m| m.dev())
        };
        Ok(Arc::new(StdFile {
            file,
            device,
            cache: CacheTrim::new(CACHE_KEEP_BYTES.load(Ordering::Relaxed)),
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_fs::{CrashMode, SimFs};

    /// Pages of `[offset, offset + len)` of the file at `path` in the page cache (`mincore`).
    #[cfg(target_os = "linux")]
    fn cached_pages(path: &Path, offset: u64, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        // SAFETY: a read-only shared mapping of an open file, unmapped before returning;
        // mincore writes one byte per page into a vector of that many.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(at, libc::MAP_FAILED);
            let mut pages = vec![0u8; len.div_ceil(4096)];
            assert_eq!(libc::mincore(at, len, pages.as_mut_ptr()), 0);
            libc::munmap(at, len);
            pages.iter().filter(|p| *p & 1 == 1).count()
        }
    }

    /// A file written and synced past the keep window keeps only its newest bytes cached, and
    /// drops every page once written for good; its bytes stay what was written.
    #[cfg(target_os = "linux")]
    #[test]
    fn synced_pages_past_the_keep_window_leave_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: statfs fills the struct it is given for a valid C path.
        let tmpfs = unsafe {
            let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
        };
        let path = dir.path().join("segment");
        let file = StdFs.open(&path, OpenMode::CreateTruncate).unwrap();
        const MIB: usize = 1 << 20;
        let total = CACHE_KEEP_BYTES_DEFAULT as usize + 32 * MIB;
        for i in 0..total / MIB {
            file.write_all_at(&vec![i as u8; MIB], (i * MIB) as u64)
                .unwrap();
            if i % 8 == 7 {
                file.sync_data().unwrap();
            }
        }
        if tmpfs {
            return; // tmpfs pages are the file itself: they cannot be dropped.
        }
        let (head, tail) = (
            cached_pages(&path, 0, 16 * MIB),
            cached_pages(&path, (total - 16 * MIB) as u64, 16 * MIB),
        );
        assert!(head < 64, "{head} pages of the oldest 16 MiB still cached");
        assert!(
            tail > 4096 - 64,
            "only {tail} pages of the newest 16 MiB cached"
        );
        file.drop_cache();
        assert!(
            cached_pages(&path, 0, total) < 64,
            "cached after drop_cache"
        );
        let mut buf = vec![0u8; MIB];
        for i in [0, total / MIB / 2, total / MIB - 1] {
            read_exact_at(file.as_ref(), &mut buf, (i * MIB) as u64).unwrap();
            assert!(buf.iter().all(|b| *b == i as u8), "MiB {i}");
        }
    }

    /// A synced file in a synced directory `/n/shards/1`.
    fn replica_dir(fs: &SimFs) -> std::path::PathBuf {
        let dir = Path::new("/n/shards/1");
        fs.create_dir_all(dir).unwrap();
        let file = fs
            .open(&dir.join("raft-state"), OpenMode::CreateTruncate)
            .unwrap();
        file.write_all_at(b"vote", 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.sync_dir(Path::new("/n/shards")).unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn a_durable_removal_stays_removed_through_a_power_cut() {
        // A plain removal does not: the files come back.
        let fs = SimFs::new(1);
        let dir = replica_dir(&fs);
        fs.remove_dir_all(&dir).unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert!(fs.exists(&dir.join("raft-state")).unwrap());

        let fs = SimFs::new(2);
        let dir = replica_dir(&fs);
        remove_dir_durably(&fs, &dir).unwrap();
        fs.crash(CrashMode::DropUnsynced);
        assert!(!fs.exists(&dir.join("raft-state")).unwrap());
        // What the crash may leave of the renamed tree goes with the next removal.
        remove_dir_durably(&fs, &dir).unwrap();
        assert!(!fs.exists(&removed_name(&dir).join("raft-state")).unwrap());
        assert_eq!(removed_name(&dir), Path::new("/n/shards/1.removed"));
    }
}
