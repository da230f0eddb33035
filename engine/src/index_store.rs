//! Where the indexes live: a small ordered key-value trait with two implementations.
//! [`RocksIndexStore`] is the production store (RocksDB over Debian's system library; only this
//! file knows about RocksDB). [`MemIndexStore`] is the in-memory store for tests and the
//! simulator; like RocksDB without a synced WAL it can lose its latest unsynced batches on a
//! simulated crash, always as a consistent prefix.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// One atomic batch of puts and deletes, their keys and values back to back in one buffer.
/// A record adds three to a hundred and more of them; one allocation per key and per value,
/// made on the writer thread and freed on the indexer's, cost both threads (mimalloc's
/// cross-thread frees) a few percent of a node's CPU.
#[derive(Debug, Default, Clone)]
pub struct IndexBatch {
    bytes: Vec<u8>,
    ops: Vec<Op>,
    /// Delete every key first (a rebuild).
    pub clear_all: bool,
}

/// One operation: its key's and (for a put) its value's range in [`IndexBatch`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct Op {
    key: (usize, usize),
    value: Option<(usize, usize)>,
}

impl IndexBatch {
    /// An empty batch that first deletes every key when `clear_all` (a rebuild).
    pub fn clearing(clear_all: bool) -> IndexBatch {
        IndexBatch {
            clear_all,
            ..IndexBatch::default()
        }
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_with(
            |b| b.extend_from_slice(key.as_ref()),
            |b| b.extend_from_slice(value.as_ref()),
        );
    }

    /// Adds a put whose key and value the closures append to the buffer they are given.
    pub fn put_with(&mut self, key: impl FnOnce(&mut Vec<u8>), value: impl FnOnce(&mut Vec<u8>)) {
        let key = self.append_with(key);
        let value = Some(self.append_with(value));
        self.ops.push(Op { key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.delete_with(|b| b.extend_from_slice(key.as_ref()));
    }

    /// Adds a delete of the key the closure appends.
    pub fn delete_with(&mut self, key: impl FnOnce(&mut Vec<u8>)) {
        let key = self.append_with(key);
        self.ops.push(Op { key, value: None });
    }

    fn append_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> (usize, usize) {
        let start = self.bytes.len();
        f(&mut self.bytes);
        (start, self.bytes.len())
    }

    /// Moves `other`'s operations to the end of this batch (its `clear_all` is not moved).
    pub fn append(&mut self, other: &mut IndexBatch) {
        let shift = self.bytes.len();
        let moved = |(start, end): (usize, usize)| (start + shift, end + shift);
        self.ops.extend(other.ops.drain(..).map(|op| Op {
            key: moved(op.key),
            value: op.value.map(moved),
        }));
        self.bytes.append(&mut other.bytes);
    }

    /// The operations in order: `(key, Some(value))` puts and `(key, None)` deletes.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.ops
            .iter()
            .map(|op| (self.slice(op.key), op.value.map(|v| self.slice(v))))
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations in key order (stable: operations on one key keep their order).
    fn sorted_ops(&self) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut ops: Vec<_> = self.ops().collect();
        ops.sort_by(|a, b| a.0.cmp(b.0));
        ops
    }

    fn slice(&self, (start, end): (usize, usize)) -> &[u8] {
        self.bytes.get(start..end).unwrap_or_default()
    }
}

/// An ordered key-value store for the indexes.
pub trait IndexStore: Send + Sync + std::fmt::Debug {
    /// The value of a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Applies a batch atomically; with `sync` it (and all before it) is durable when this
    /// returns. Without, a crash may lose it and later batches, never earlier ones.
    fn write(&self, batch: IndexBatch, sync: bool) -> Result<()>;
    /// Makes every write so far durable (on a clean close, so reopening needs no catch-up).
    fn flush(&self) -> Result<()>;
    /// Up to `limit` pairs with `start <= key < end`, ascending, or descending from the end.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Calls `f` with every key in `start <= key < end`, ascending, until it returns false (a
    /// whole-range pass, such as filling the id filter). By default in [`KEY_PASS_CHUNK`]-key
    /// `scan`s.
    fn for_each_key(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let mut from = start.to_vec();
        loop {
            let pairs = self.scan(&from, end, false, KEY_PASS_CHUNK)?;
            for (key, _) in &pairs {
                if !f(key) {
                    return Ok(());
                }
            }
            match pairs.last() {
                Some((last, _)) if pairs.len() == KEY_PASS_CHUNK => {
                    from = last.clone();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Keys read per `scan` by the default [`IndexStore::for_each_key`].
pub const KEY_PASS_CHUNK: usize = 4096;

/// The production index store: one RocksDB database, each busy key kind in a column family
/// of its own.
///
/// ```text
/// family     keys                     how new keys arrive
/// "ids"      "e" event id (UUIDv7)    near the end (ids are time-ordered)
/// "streams"  "s" stream 0x00 version  at each stream's end
/// "time"     "t" timestamp position   at the end (timestamps increase along the log)
/// "default"  "c" "v" "q" "r" "h"      few (checkpoint, format, Raft, reclaimed ranges)
/// ```
///
/// A memtable's skip list keeps one insert position (a splice) between inserts; an insert
/// near it skips the search from the top. In one family the three kinds took turns and every
/// insert of a small batch searched from the top; in families of their own, ids and times
/// always land next to the last insert. An SST of one family also covers a narrow key range,
/// so compactions of ids and times have little to merge. Writes are one atomic batch over the
/// families, and flushes are atomic (`atomic_flush`): there is no WAL, so a crash keeps, in
/// every family, the same prefix of batches. A scan stays within one kind (every caller's
/// does), so it reads one family.
pub struct RocksIndexStore {
    db: rocksdb::DB,
    /// Held shared by each write, exclusively by a flush: a flush goes family by family (the
    /// C API has no flush of several), and a write landing between two of them would reach the
    /// default family's flush (its checkpoint) but not an earlier family's (its entries); a
    /// crash then left a checkpoint covering entries no family held — stream versions missing
    /// from the middle of a stream, seen on replicas SIGKILLed under writers.
    flush_lock: std::sync::RwLock<()>,
}

/// The column families, by the first byte of the keys they hold (anything else: "default").
const FAMILIES: [(&str, u8); 3] = [("ids", b'e'), ("streams", b's'), ("time", b't')];

/// Most bytes of memtables one index holds, over its families, before they are flushed.
pub const INDEX_MEMTABLE_BYTES_MAX: usize = 128 << 20;

impl std::fmt::Debug for RocksIndexStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksIndexStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn rocks_err(e: rocksdb::Error) -> Error {
    Error::Index(e.into_string())
}

/// Turns RocksDB's per-thread performance counters off for the calling thread: every index
/// read and write otherwise bumps them through thread-local storage (a few percent of an
/// append's CPU, measured). Called by the engine's threads; nothing reads the counters.
pub fn quiet_thread() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// Bytes of RocksDB block cache an index gets (shared by every index opened with one
/// [`IndexCache`]).
pub const INDEX_CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// A block cache several indexes share: the shards of one node hold one between them, so the
/// node's cache memory does not grow with its shards.
#[derive(Clone)]
pub struct IndexCache(rocksdb::Cache);

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache").finish_non_exhaustive()
    }
}

impl IndexCache {
    /// An LRU cache of `bytes`.
    pub fn new(bytes: usize) -> Result<IndexCache> {
        rocksdb::Cache::new_lru_cache(bytes)
            .map(IndexCache)
            .map_err(rocks_err)
    }
}

impl RocksIndexStore {
    /// Opens (or creates) the index database in `dir` with a block cache of its own.
    pub fn open(dir: &Path) -> Result<RocksIndexStore> {
        RocksIndexStore::open_shared(dir, &IndexCache::new(INDEX_CACHE_BYTES_DEFAULT)?)
    }

    /// Opens (or creates) the index database in `dir` over a shared block cache.
    pub fn open_shared(dir: &Path, cache: &IndexCache) -> Result<RocksIndexStore> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        // Index writes are not synced: the log is the truth and the index checkpoint says how
        // far the index is known to cover; after a crash only the tail past it is re-indexed.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache.0);
        options.set_block_based_table_factory(&table);
        // No memtable bloom filter: the writer's id filter (`id_filter.rs`) answers the absent
        // ids that made it pay, and filling it cost every insert a hash and a cache miss in a
        // 6 MiB bit array. Without it, pipelined one-event appends (16 x 256) went from 152-173k
        // to 167-187k events/s and the node's CPU from 8.4-9.7 to 7.8-8.6 µs per event (4
        // alternating pairs, 15 s each); 16 x 100 unchanged within noise.
        options.set_atomic_flush(true);
        options.set_db_write_buffer_size(INDEX_MEMTABLE_BYTES_MAX);
        options.create_missing_column_families(true);
        let families = std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .chain(FAMILIES.iter().map(|(name, _)| *name))
            .map(|name| rocksdb::ColumnFamilyDescriptor::new(name, options.clone()));
        let db = rocksdb::DB::open_cf_descriptors(&options, dir, families).map_err(rocks_err)?;
        Ok(RocksIndexStore {
            db,
            flush_lock: std::sync::RwLock::new(()),
        })
    }

    /// The family holding keys that start with `key`'s first byte.
    fn family(&self, key: &[u8]) -> Result<&rocksdb::ColumnFamily> {
        let name = FAMILIES
            .iter()
            .find(|(_, kind)| key.first() == Some(kind))
            .map_or(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, |(name, _)| *name);
        self.family_named(name)
    }

    fn family_named(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Index(format!("the index has no column family {name:?}")))
    }

    /// Every family, the default (checkpoint and format) last.
    fn families(&self) -> Result<Vec<&rocksdb::ColumnFamily>> {
        FAMILIES
            .iter()
            .map(|(name, _)| *name)
            .chain(std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME))
            .map(|name| self.family_named(name))
            .collect()
    }
}

impl IndexStore for RocksIndexStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.family(key)?, key).map_err(rocks_err)
    }

    fn write(&self, batch: IndexBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        if batch.clear_all {
            for family in self.families()? {
                wb.delete_range_cf(family, &[0u8][..], &[0xffu8; 8][..]);
            }
        }
        // In key order (stable: operations on one key keep their order): the memtable's skip
        // list then finds each insert's place from the one before instead of from the top. A
        // group's keys interleave streams, random event ids and times; sorted, most of the
        // indexer's CPU (the skip list's splice search and its key comparisons) goes.
        for (key, value) in batch.sorted_ops() {
            let family = self.family(key)?;
            match value {
                Some(v) => wb.put_cf(family, key, v),
                None => wb.delete_cf(family, key),
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        // No WAL: the log is the write-ahead log. The checkpoint travels in the same batch, so
        // whatever survives a crash is a consistent prefix and open re-indexes the rest.
        options.disable_wal(true);
        {
            let _no_flush = self
                .flush_lock
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            self.db.write_opt(wb, &options).map_err(rocks_err)?;
        }
        if sync {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // RocksDB's C API flushes one family per call. The default family, which holds the
        // checkpoint, goes last: a crash between two calls leaves the other families holding
        // entries of records past the checkpoint — records already synced, which open
        // re-indexes anyway (the same keys again) — or, mid-truncation, a checkpoint past the
        // log's end, which open detects and rebuilds from (see `Store::truncate_from`). No write
        // lands between the calls: every family is flushed at one point of the batch order.
        let _no_writes = self
            .flush_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for family in self.families()? {
            self.db.flush_cf(family).map_err(rocks_err)?;
        }
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(start.to_vec());
        options.set_iterate_upper_bound(end.to_vec());
        let mode = if reverse {
            rocksdb::IteratorMode::End
        } else {
            rocksdb::IteratorMode::Start
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(self.family(start)?, options, mode) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(rocks_err)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn for_each_key(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        // One raw iterator that lends its keys (no copy per key) and leaves the block cache to
        // the reads that need it: a pass over millions of ids took ~1.1 µs per key through
        // `scan`.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(start.to_vec());
        options.set_iterate_upper_bound(end.to_vec());
        options.fill_cache(false);
        options.set_readahead_size(2 << 20);
        let mut it = self.db.raw_iterator_cf_opt(self.family(start)?, options);
        it.seek_to_first();
        while let Some(key) = it.key() {
            if !f(key) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(rocks_err)
    }
}

#[derive(Debug, Default)]
struct MemState {
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The in-memory index store. Cloning shares the same data.
#[derive(Debug, Default, Clone)]
pub struct MemIndexStore {
    state: Arc<Mutex<MemState>>,
}

impl MemIndexStore {
    /// An empty store.
    pub fn new() -> MemIndexStore {
        MemIndexStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        crate::sync::lock(&self.state)
    }

    /// Makes every write so far durable (as a RocksDB memtable flush would).
    pub fn persist(&self) {
        let mut state = self.lock();
        state.durable = state.current.clone();
    }

    /// Simulates a crash: unsynced, unpersisted writes are lost.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.current = state.durable.clone();
    }

    /// Loses everything (a wiped index directory).
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.current.clear();
        state.durable.clear();
    }
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &IndexBatch) {
    if batch.clear_all {
        map.clear();
    }
    for (key, value) in batch.ops() {
        match value {
            Some(v) => map.insert(key.to_vec(), v.to_vec()),
            None => map.remove(key),
        };
    }
}

impl IndexStore for MemIndexStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().current.get(key).cloned())
    }

    fn flush(&self) -> Result<()> {
        self.persist();
        Ok(())
    }

    fn write(&self, batch: IndexBatch, sync: bool) -> Result<()> {
        let mut state = self.lock();
        apply(&mut state.current, &batch);
        if sync {
            // A synced write persists everything before it too, as RocksDB's WAL does.
            state.durable = state.current.clone();
        }
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = self.lock();
        let range = state.current.range(start.to_vec()..end.to_vec());
        let pairs = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(pairs).collect()
        } else {
            range.take(limit).map(pairs).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(batch: &mut IndexBatch, key: &[u8], value: &[u8]) {
        batch.put(key, value);
    }

    #[test]
    fn a_batch_keeps_its_operations_in_order_across_an_append() {
        let mut a = IndexBatch::default();
        a.put(b"k1", b"v1");
        a.delete(b"k2");
        let mut b = IndexBatch::clearing(true);
        b.put_with(
            |k| k.extend_from_slice(b"k3"),
            |v| v.extend_from_slice(b"v3"),
        );
        b.delete_with(|k| k.extend_from_slice(b"k1"));
        a.append(&mut b);
        assert!(
            b.is_empty() && !a.clear_all,
            "append moves operations, not the clear"
        );
        let ops: Vec<_> = a.ops().collect();
        let expected: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"k1", Some(b"v1")),
            (b"k2", None),
            (b"k3", Some(b"v3")),
            (b"k1", None),
        ];
        assert_eq!(ops, expected);
        // Sorted stably: the put of k1 stays before its delete.
        let sorted: Vec<&[u8]> = a.sorted_ops().iter().map(|(k, _)| *k).collect();
        assert_eq!(sorted, vec![&b"k1"[..], b"k1", b"k2", b"k3"]);
        assert_eq!(
            a.sorted_ops().first().map(|op| op.1),
            Some(Some(&b"v1"[..]))
        );
    }

    /// One key of every kind: ids, streams, times and the default family's.
    const KEYS: [&[u8]; 6] = [b"e1", b"sa\0\x01", b"t\x02", b"c", b"v", b"h\x03"];

    #[test]
    fn keys_of_each_kind_survive_a_reopen_and_a_clear_empties_every_family() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksIndexStore::open(dir.path()).expect("open");
            let mut batch = IndexBatch::default();
            for (i, key) in KEYS.iter().enumerate() {
                put(&mut batch, key, &[i as u8]);
            }
            store.write(batch, true).expect("write");
        }
        let store = RocksIndexStore::open(dir.path()).expect("reopen");
        for (i, key) in KEYS.iter().enumerate() {
            assert_eq!(store.get(key).expect("get"), Some(vec![i as u8]), "{key:?}");
        }
        // A scan reads its kind's family, whatever the bounds past it.
        let times = store.scan(b"t", b"u", false, 10).expect("scan");
        assert_eq!(times, vec![(b"t\x02".to_vec(), vec![2])]);
        let ids = store.scan(b"e", b"f", true, 10).expect("scan");
        assert_eq!(ids, vec![(b"e1".to_vec(), vec![0])]);
        let mut seen = Vec::new();
        store
            .for_each_key(b"s", b"t", &mut |k| {
                seen.push(k.to_vec());
                true
            })
            .expect("pass");
        assert_eq!(seen, vec![b"sa\0\x01".to_vec()]);

        let mut clear = IndexBatch::clearing(true);
        put(&mut clear, b"c", b"new");
        store.write(clear, true).expect("clear");
        for key in KEYS.iter().filter(|k| **k != b"c") {
            assert_eq!(store.get(key).expect("get"), None, "{key:?}");
        }
        assert_eq!(store.get(b"c").expect("get"), Some(b"new".to_vec()));
    }

    #[test]
    fn an_index_with_every_key_in_the_default_family_opens_and_a_rebuild_clears_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // Format 2's layout: one family.
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            let db = rocksdb::DB::open(&options, dir.path()).expect("open v2");
            db.put(b"e1", b"old").expect("put");
            db.put(b"v", 2u32.to_le_bytes()).expect("put");
            db.flush().expect("flush");
        }
        {
            let store = RocksIndexStore::open(dir.path()).expect("open");
            // The old id sits where no id is looked for; the format key says rebuild.
            assert_eq!(store.get(b"e1").expect("get"), None);
            assert_eq!(
                store.get(b"v").expect("get"),
                Some(2u32.to_le_bytes().to_vec())
            );
            let clear = IndexBatch::clearing(true);
            store.write(clear, true).expect("clear");
        }
        let families =
            rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).expect("families");
        assert_eq!(families.len(), 1 + FAMILIES.len(), "{families:?}");
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &families)
            .expect("open all");
        assert_eq!(
            db.get(b"e1").expect("get"),
            None,
            "the rebuild cleared the default family"
        );
    }

    const CRASH_CHILD_DIR: &str = "STRATA_INDEX_CRASH_CHILD_DIR";

    /// The child of the crash test: one thread writes batches (an entry in each busy family
    /// and the checkpoint saying it is covered) while another flushes, until SIGKILLed.
    fn write_and_flush_until_killed(dir: &Path) -> ! {
        let store = Arc::new(RocksIndexStore::open(dir).expect("open"));
        let flusher = Arc::clone(&store);
        std::thread::spawn(move || loop {
            flusher.flush().expect("flush");
        });
        for i in 0u64.. {
            let mut batch = IndexBatch::default();
            for kind in [b'e', b's', b't'] {
                put(&mut batch, &[&[kind][..], &i.to_be_bytes()].concat(), b"");
            }
            put(&mut batch, b"c", &i.to_be_bytes());
            store.write(batch, false).expect("write");
        }
        unreachable!("the writer stops when it is killed")
    }

    /// Index writes are durable only through flushes: a process SIGKILLed while it writes and
    /// flushes keeps, in every family, at least the entries its checkpoint says are covered.
    #[test]
    fn a_kill_during_flushes_never_leaves_the_checkpoint_ahead_of_a_family() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
            write_and_flush_until_killed(Path::new(&dir));
        }
        let mut progressed = 0;
        for round in 0..6u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args([
                    "--exact",
                    "index_store::tests::a_kill_during_flushes_never_leaves_the_checkpoint_ahead_of_a_family",
                    "--test-threads=1",
                ])
                .env(CRASH_CHILD_DIR, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn");
            std::thread::sleep(std::time::Duration::from_millis(300 + 90 * round));
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
            let store = RocksIndexStore::open(dir.path()).expect("reopen");
            let Some(covered) = store.get(b"c").expect("get") else {
                continue;
            };
            let covered = u64::from_be_bytes(covered.try_into().expect("8 bytes"));
            progressed += 1;
            for kind in [b'e', b's', b't'] {
                let mut held = 0u64;
                let end = [&[kind][..], &(covered + 1).to_be_bytes()].concat();
                store
                    .for_each_key(&[kind], &end, &mut |_| {
                        held += 1;
                        true
                    })
                    .expect("pass");
                assert_eq!(
                    held,
                    covered + 1,
                    "round {round}: the checkpoint covers 0..={covered}, family {:?} holds {held} of them",
                    kind as char
                );
            }
        }
        assert!(
            progressed > 0,
            "no child flushed a checkpoint before it was killed"
        );
    }
}
