//! One durable round for many files, so that the shards of one node share their fdatasyncs:
//! with eight shards a node syncs about as often as with one (issue 15).
//!
//! [`RoundFs`] wraps a file system. Every `sync_data` on a file it opened joins a *round*: the
//! first caller to find no round running leads one for every file queued by then and wakes the
//! others when it is done; callers arriving meanwhile queue for the next. No timer: a lone
//! caller leads its own round at once, and rounds follow each other back to back.
//!
//! How a round makes the files of one device durable with one fdatasync (measured by
//! `benches/sync-round.py`: 8 files in ~300 µs against ~600 µs for an fdatasync each):
//!
//! ```text
//!   files queued on device D:   a   b   c   d        (c grew since its last fdatasync)
//!   1. writeback                a   b       d'       sync_file_range(WRITE), then wait for
//!                                                    each (WAIT_BEFORE|WRITE|WAIT_AFTER):
//!                                                    their pages reached D, maybe its cache
//!   2. fdatasync                        c            its data, its metadata (journal commit)
//!                                                    and then a flush of D's cache, which
//!                                                    makes step 1's pages durable too
//!   (d' : when no file needs its own fdatasync, the last one gets it instead of writeback)
//! ```
//!
//! Step 1 moves data, not metadata. A file whose size or block map may have changed since its
//! last fdatasync (written past its known length, `set_len`, or newly opened for writing) is
//! fdatasynced in step 2 itself. The log keeps zeros written ahead of its records
//! ([`crate::log::PREALLOCATE_BYTES`]), so most of its syncs change neither. The flush's
//! reach is the device: files are grouped by `st_dev` ([`FileHandle::device`]), each group a
//! round of its own; a file that cannot write back (the simulator's) is fdatasynced.
//!
//! Rounds are timed on the monotonic clock (a leader may linger, see `Round::linger`): this
//! is a component for real disks, like the engine's threads. Over the simulator's file system
//! a store syncs one file at a time, so no leader ever waits and runs stay deterministic.
//!
//! Crash windows: nothing is answered before step 2 has returned for the caller's device, so a
//! crash during a round loses only unanswered writes. A failure anywhere in a device's group
//! fails every caller in it (whether the flush covered their pages is unknown); their stores
//! stop as after any failed fdatasync.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fs::{FileHandle, FileSystem, OpenMode};
use crate::sync::lock;

/// What the rounds have done, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct RoundStats {
    /// Rounds run.
    pub rounds: AtomicU64,
    /// `sync_data` calls the rounds answered.
    pub requests: AtomicU64,
    /// fdatasyncs issued.
    pub fdatasyncs: AtomicU64,
    /// Files written back without an fdatasync of their own.
    pub writebacks: AtomicU64,
}

/// A file system whose files' syncs share rounds (see the module's text).
#[derive(Debug, Clone)]
pub struct RoundFs {
    inner: Arc<dyn FileSystem>,
    round: Arc<Round>,
}

impl RoundFs {
    /// Wraps `inner`; every file opened through the result (or a clone) shares one round.
    pub fn new(inner: Arc<dyn FileSystem>) -> RoundFs {
        RoundFs {
            inner,
            round: Arc::default(),
        }
    }

    /// The rounds' counters.
    pub fn stats(&self) -> &RoundStats {
        &self.round.stats
    }
}

/// A file and what the round must know of it.
#[derive(Debug)]
struct Core {
    file: Arc<dyn FileHandle>,
    /// The file's length as far as this handle knows (writes past it grow the file).
    len: AtomicU64,
    /// Whether its size or block map may have changed since its last fdatasync.
    grown: AtomicBool,
}

#[derive(Debug)]
struct RoundFile {
    core: Arc<Core>,
    round: Arc<Round>,
}

impl FileHandle for RoundFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.core.file.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if self.core.len.fetch_max(end, Ordering::AcqRel) < end {
            self.core.grown.store(true, Ordering::Release);
        }
        self.core.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.round.sync(&self.core)
    }
    fn drop_cache(&self) {
        self.core.file.drop_cache();
    }
    fn len(&self) -> io::Result<u64> {
        self.core.file.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.core.grown.store(true, Ordering::Release);
        self.core.len.store(len, Ordering::Release);
        self.core.file.set_len(len)
    }
}

impl FileSystem for RoundFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let file = self.inner.open(path, mode)?;
        if mode == OpenMode::Read {
            return Ok(file);
        }
        let len = file.len()?;
        Ok(Arc::new(RoundFile {
            core: Arc::new(Core {
                file,
                len: AtomicU64::new(len),
                // Its length may not be durable yet: the first sync is a full fdatasync.
                grown: AtomicBool::new(true),
            }),
            round: self.round.clone(),
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dirs(dir)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
}

/// A failed round's error, kept for each of its callers (`io::Error` is not `Clone`).
type Outcome = Result<(), (io::ErrorKind, String)>;

#[derive(Debug, Default)]
struct Round {
    state: Mutex<State>,
    done: Condvar,
    /// Woken when a file joins the queue while a leader lingers.
    arrived: Condvar,
    stats: RoundStats,
}

#[derive(Debug, Default)]
struct State {
    /// Files waiting for the next round, with their callers' tickets.
    queue: Vec<(u64, Arc<Core>)>,
    next_ticket: u64,
    running: bool,
    /// Callers waiting on `done` for a round to end (a wake-up with none is a syscall for
    /// nothing: std's condition variable does not count its waiters).
    waiting: usize,
    /// A leader is waiting for the files of the last round to queue again.
    lingering: bool,
    /// Distinct files of each of the last [`ROUNDS_REMEMBERED`] rounds, newest last: a leader
    /// waits for as many as the largest.
    last_files: VecDeque<usize>,
    /// How long the last round's syncs took.
    last_round: Duration,
    /// Outcomes not yet collected by their callers, by ticket.
    outcomes: HashMap<u64, Outcome>,
}

/// Longest a round's leader waits for the files of recent rounds to queue again.
pub const LINGER_MAX: Duration = Duration::from_micros(1000);
/// Rounds whose file counts a leader remembers.
const ROUNDS_REMEMBERED: usize = 8;

/// Distinct files among `queue`.
fn distinct(queue: &[(u64, Arc<Core>)]) -> usize {
    let mut seen: Vec<&Arc<Core>> = Vec::with_capacity(queue.len());
    for (_, core) in queue {
        if !seen.iter().any(|c| Arc::ptr_eq(c, core)) {
            seen.push(core);
        }
    }
    seen.len()
}

impl Round {
    /// Makes `core`'s written data durable: joins the next round, leading it if none runs.
    fn sync(&self, core: &Arc<Core>) -> io::Result<()> {
        let mut state = lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push((ticket, core.clone()));
        if state.lingering {
            self.arrived.notify_one();
        }
        loop {
            if let Some(outcome) = state.outcomes.remove(&ticket) {
                return outcome.map_err(|(kind, message)| io::Error::new(kind, message));
            }
            if state.running {
                state.waiting += 1;
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                state.waiting -= 1;
                continue;
            }
            state.running = true;
            state = self.linger(state);
            let batch = std::mem::take(&mut state.queue);
            if state.last_files.len() == ROUNDS_REMEMBERED {
                state.last_files.pop_front();
            }
            let files = distinct(&batch);
            state.last_files.push_back(files);
            drop(state);
            let started = Instant::now();
            let outcomes = self.run(&batch);
            state = lock(&self.state);
            state.last_round = started.elapsed();
            state.running = false;
            state.outcomes.extend(outcomes);
            if state.waiting > 0 {
                self.done.notify_all();
            }
        }
    }

    /// Before a round: waits until as many files are queued as the last round had, for at most
    /// half the last round's time and [`LINGER_MAX`]. Shards whose round just ended need a
    /// moment to write their next group; a round started at once would take only the others,
    /// and rounds would alternate between two halves of the shards, each paying an fdatasync.
    /// A lone file (one shard) never waits.
    fn linger<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let want = state.last_files.iter().copied().max().unwrap_or(0);
        if distinct(&state.queue) >= want {
            return state;
        }
        let deadline = Instant::now() + state.last_round.min(LINGER_MAX);
        state.lingering = true;
        while distinct(&state.queue) < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .arrived
                .wait_timeout(state, left)
                .map_or_else(|p| p.into_inner().0, |(s, _)| s);
        }
        state.lingering = false;
        state
    }

    /// One round over `batch`: a group per device, each answered as a whole.
    fn run(&self, batch: &[(u64, Arc<Core>)]) -> Vec<(u64, Outcome)> {
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut groups: Vec<(Option<u64>, Vec<&Arc<Core>>)> = Vec::new();
        for (_, core) in batch {
            let device = core.file.device();
            let at = match groups
                .iter()
                .position(|(d, _)| device.is_some() && *d == device)
            {
                Some(at) => at,
                None => {
                    groups.push((device, Vec::new()));
                    groups.len() - 1
                }
            };
            let files = &mut groups[at].1;
            if !files.iter().any(|f| Arc::ptr_eq(f, core)) {
                files.push(core);
            }
        }
        let results: Vec<(Vec<&Arc<Core>>, Outcome)> = groups
            .into_iter()
            .map(|(_, files)| {
                let outcome = self
                    .sync_device(&files)
                    .map_err(|e| (e.kind(), e.to_string()));
                (files, outcome)
            })
            .collect();
        batch
            .iter()
            .map(|(ticket, core)| {
                let outcome = results
                    .iter()
                    .find(|(files, _)| files.iter().any(|f| Arc::ptr_eq(f, core)))
                    .map_or(Ok(()), |(_, o)| o.clone());
                (*ticket, outcome)
            })
            .collect()
    }

    /// Steps 1 and 2 for the distinct files of one device.
    fn sync_device(&self, files: &[&Arc<Core>]) -> io::Result<()> {
        let (mut own, mut clean): (Vec<&Arc<Core>>, Vec<&Arc<Core>>) = files
            .iter()
            .partition(|c| c.grown.swap(false, Ordering::AcqRel));
        if own.is_empty() {
            own.extend(clean.pop());
        }
        let mut started = Vec::with_capacity(clean.len());
        for core in clean {
            if core.file.start_writeback()? {
                started.push(core);
            } else {
                own.push(core);
            }
        }
        for core in &started {
            core.file.wait_writeback()?;
        }
        self.stats
            .writebacks
            .fetch_add(started.len() as u64, Ordering::Relaxed);
        for core in own {
            if let Err(e) = core.file.sync_data() {
                core.grown.store(true, Ordering::Release);
                return Err(e);
            }
            self.stats.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    fn open(fs: &RoundFs, dir: &Path, name: &str) -> Arc<dyn FileHandle> {
        fs.open(&dir.join(name), OpenMode::CreateTruncate).unwrap()
    }

    #[test]
    fn files_on_one_device_share_one_fdatasync_unless_they_grew() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RoundFs::new(Arc::new(StdFs));
        let files: Vec<_> = (0..4)
            .map(|i| open(&fs, dir.path(), &format!("f{i}")))
            .collect();
        for f in &files {
            f.write_all_at(&[1; 8192], 0).unwrap();
            f.sync_data().unwrap();
        }
        // Each grew (new, then written past its length): an fdatasync each.
        assert_eq!(fs.stats().fdatasyncs.load(Ordering::Relaxed), 4);
        // Overwrites inside the known length, synced in one round: one fdatasync.
        let round = fs.round.clone();
        let cores: Vec<Arc<Core>> = (0..4)
            .map(|i| {
                let core = Arc::new(Core {
                    file: StdFs
                        .open(&dir.path().join(format!("f{i}")), OpenMode::ReadWrite)
                        .unwrap(),
                    len: AtomicU64::new(8192),
                    grown: AtomicBool::new(false),
                });
                core.file.write_all_at(&[2; 4096], 0).unwrap();
                core
            })
            .collect();
        let batch: Vec<(u64, Arc<Core>)> = cores
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (i as u64, c))
            .collect();
        let outcomes = round.run(&batch);
        assert!(outcomes.iter().all(|(_, o)| o.is_ok()));
        assert_eq!(fs.stats().fdatasyncs.load(Ordering::Relaxed), 5);
        assert_eq!(fs.stats().writebacks.load(Ordering::Relaxed), 3);
        // One that grew gets its own fdatasync, which is then the flush for the others.
        cores[1].grown.store(true, Ordering::Release);
        let outcomes = round.run(&batch);
        assert!(outcomes.iter().all(|(_, o)| o.is_ok()));
        assert_eq!(fs.stats().fdatasyncs.load(Ordering::Relaxed), 6);
        assert_eq!(fs.stats().writebacks.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_write_past_the_known_length_or_a_set_len_marks_the_file_grown() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RoundFs::new(Arc::new(StdFs));
        let core = Arc::new(Core {
            file: StdFs
                .open(&dir.path().join("f"), OpenMode::CreateTruncate)
                .unwrap(),
            len: AtomicU64::new(0),
            grown: AtomicBool::new(false),
        });
        let f = RoundFile {
            core: core.clone(),
            round: fs.round.clone(),
        };
        f.write_all_at(&[1; 100], 0).unwrap();
        assert!(
            core.grown.load(Ordering::Acquire),
            "written past its length"
        );
        f.sync_data().unwrap();
        assert!(
            !core.grown.load(Ordering::Acquire),
            "its fdatasync covered it"
        );
        f.write_all_at(&[2; 50], 50).unwrap();
        assert!(!core.grown.load(Ordering::Acquire), "inside its length");
        f.write_all_at(&[2; 50], 51).unwrap();
        assert!(
            core.grown.load(Ordering::Acquire),
            "one byte past its length"
        );
        f.sync_data().unwrap();
        f.set_len(10).unwrap();
        assert!(core.grown.load(Ordering::Acquire), "cut");
        f.sync_data().unwrap();
        assert_eq!(fs.stats().fdatasyncs.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn concurrent_callers_are_all_answered_and_share_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RoundFs::new(Arc::new(StdFs));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let f = open(&fs, dir.path(), &format!("f{i}"));
                std::thread::spawn(move || {
                    f.write_all_at(&[1; 65536], 0).unwrap();
                    for round in 0..50u8 {
                        f.write_all_at(&[round; 4096], u64::from(round) * 512)
                            .unwrap();
                        f.sync_data().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = fs.stats();
        assert_eq!(s.requests.load(Ordering::Relaxed), 400);
        assert!(s.rounds.load(Ordering::Relaxed) <= 400);
        // Every request was covered by an fdatasync or a writeback in its round.
        let covered = s.fdatasyncs.load(Ordering::Relaxed) + s.writebacks.load(Ordering::Relaxed);
        assert_eq!(covered, 400);
    }
}
