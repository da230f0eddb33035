//! Where the indexes live: a small ordered key-value trait with two implementations.
//! [`RocksIndexStore`] is the production store (RocksDB over Debian's system library; only this
//! file knows about RocksDB). [`MemIndexStore`] is the in-memory store for tests and the
//! simulator; like RocksDB without a synced WAL it can lose its latest unsynced batches on a
//! simulated crash, always as a consistent prefix.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// One atomic batch of puts and deletes.
#[derive(Debug, Default, Clone)]
pub struct IndexBatch {
    /// `(key, Some(value))` puts, `(key, None)` deletes, applied in order.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Delete every key first (a rebuild).
    pub clear_all: bool,
}

impl IndexBatch {
    /// Adds a put.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Adds a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
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

/// The production index store: one RocksDB database.
pub struct RocksIndexStore {
    db: rocksdb::DB,
}

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
        let db = rocksdb::DB::open(&options, dir).map_err(rocks_err)?;
        Ok(RocksIndexStore { db })
    }
}

impl IndexStore for RocksIndexStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(rocks_err)
    }

    fn write(&self, batch: IndexBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        if batch.clear_all {
            wb.delete_range(&[0u8][..], &[0xffu8; 8][..]);
        }
        // In key order (stable: operations on one key keep their order): the memtable's skip
        // list then finds each insert's place from the one before instead of from the top. A
        // group's keys interleave streams, random event ids and times; sorted, most of the
        // indexer's CPU (the skip list's splice search and its key comparisons) goes.
        let mut ops = batch.ops;
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in ops {
            match value {
                Some(v) => wb.put(key, v),
                None => wb.delete(key),
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        // No WAL: the log is the write-ahead log. The checkpoint travels in the same batch, so
        // whatever survives a crash is a consistent prefix and open re-indexes the rest.
        options.disable_wal(true);
        self.db.write_opt(wb, &options).map_err(rocks_err)?;
        if sync {
            self.db.flush().map_err(rocks_err)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(rocks_err)
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
        for item in self.db.iterator_opt(mode, options) {
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
        let mut it = self.db.raw_iterator_opt(options);
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
    for (key, value) in &batch.ops {
        match value {
            Some(v) => map.insert(key.clone(), v.clone()),
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
