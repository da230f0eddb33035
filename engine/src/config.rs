//! Engine settings and the limits every request is checked against. Each limit has a named,
//! documented default; a request over a limit is rejected whole before anything is written.

use crate::error::{Error, Result};

/// Bytes in a segment file's header. See `segment.rs`.
pub const SEGMENT_HEADER_BYTES: u64 = 40;
/// Bytes in a sealed segment's footer. See `segment.rs`.
pub const SEGMENT_FOOTER_BYTES: u64 = 56;

/// Limits on what one request may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest stream name in bytes (UTF-8). Default 256.
    pub stream_name_bytes_max: usize,
    /// Longest event type in bytes. Default 256.
    pub event_type_bytes_max: usize,
    /// Largest event (data + metadata + type + stream name). Default 1 MiB.
    pub event_bytes_max: usize,
    /// Most events in one append request (all streams together). Default 4096.
    pub batch_events_max: usize,
    /// Most streams in one atomic multi-stream append. Default 256.
    pub batch_streams_max: usize,
    /// Largest encoded append request (one record). Default 16 MiB.
    pub batch_bytes_max: usize,
    /// Requests waiting for the group-commit writer before callers wait or get `Busy`.
    /// Default 4096.
    pub queue_depth_max: usize,
    /// Most events one stream read returns. Default 4096.
    pub read_events_max: usize,
    /// Most records one read of the whole log returns. Default 4096.
    pub read_records_max: usize,
    /// Most bytes of records (a read of the whole log) or event frames (a stream read) one
    /// read takes from the log; at least one record or event, whatever its size. Default
    /// 4 MiB.
    pub read_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stream_name_bytes_max: 256,
            event_type_bytes_max: 256,
            event_bytes_max: 1 << 20,
            batch_events_max: 4096,
            batch_streams_max: 256,
            batch_bytes_max: 16 << 20,
            queue_depth_max: 4096,
            read_events_max: 4096,
            read_records_max: 4096,
            read_bytes_max: 4 << 20,
        }
    }
}

/// What recovery may do with a damaged tail segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TailRecovery {
    /// Truncate a torn tail: bad or incomplete records written by the last, unsynced group
    /// commit. Damage to anything written before it refuses to open. The default.
    #[default]
    TruncateTorn,
    /// Refuse to open on any damaged record, even a torn tail (for forensics).
    Refuse,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Segment files roll once they would exceed this size. Default 256 MiB.
    pub segment_bytes_max: u64,
    /// Most requests coalesced into one group commit (one write, one fdatasync). Default 1024.
    pub group_requests_max: usize,
    /// Most bytes coalesced into one group commit. Default 32 MiB.
    pub group_bytes_max: usize,
    /// Size of the reads used to scan the log forwards (reads, recovery, verification): with
    /// one record, the most a scan holds in memory. Default 1 MiB.
    pub read_chunk_bytes: usize,
    /// What recovery does with a damaged tail.
    pub tail_recovery: TailRecovery,
    /// Most bytes of memory the event-id filter may take (`id_filter.rs`: 16 bits per id, so
    /// 256 MiB covers ~134 million ids before its false-positive rate starts to rise). It
    /// spares the append path an index lookup per new event id; 0 turns it off (every new id
    /// is then a RocksDB get: the memtable's skip list, then each level's bloom filter). Built
    /// at open from the index (one scan of the ids). Default 256 MiB.
    pub id_filter_bytes_max: usize,
    /// Whether a lone append, with appenders coming one at a time, is written, synced and
    /// indexed by the appender's own thread ([`crate::Engine::submit`]): one client's latency
    /// drops by three thread hand-offs. Off where syncs are shared with other stores (a
    /// node's shards): there a runtime thread would wait for their rounds (throughput halved).
    /// (The writer thread finishes a group that finds the pipeline idle either way.) Default
    /// on.
    pub lone_appends: bool,
    /// Request limits.
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            segment_bytes_max: 256 << 20,
            group_requests_max: 1024,
            group_bytes_max: 32 << 20,
            read_chunk_bytes: 1 << 20,
            tail_recovery: TailRecovery::TruncateTorn,
            id_filter_bytes_max: 256 << 20,
            lone_appends: true,
            limits: Limits::default(),
        }
    }
}

impl EngineConfig {
    /// Checks that the settings fit together: a largest record must fit in an empty segment.
    pub fn validate(&self) -> Result<()> {
        let overhead = SEGMENT_HEADER_BYTES + SEGMENT_FOOTER_BYTES;
        if self.segment_bytes_max < overhead + self.limits.batch_bytes_max as u64 {
            return Err(Error::invalid(
                "segment_bytes_max",
                format!(
                    "{} is too small for batch_bytes_max {} plus {} bytes of header and footer",
                    self.segment_bytes_max, self.limits.batch_bytes_max, overhead
                ),
            ));
        }
        if self.limits.batch_bytes_max > u32::MAX as usize / 2 {
            return Err(Error::invalid("batch_bytes_max", "must be below 2 GiB"));
        }
        if self.limits.event_bytes_max > self.limits.batch_bytes_max {
            return Err(Error::invalid(
                "event_bytes_max",
                "must not exceed batch_bytes_max",
            ));
        }
        if self.group_requests_max == 0 || self.limits.queue_depth_max == 0 {
            return Err(Error::invalid(
                "group_requests_max",
                "group_requests_max and queue_depth_max must be at least 1",
            ));
        }
        if self.group_bytes_max < self.limits.batch_bytes_max {
            return Err(Error::invalid(
                "group_bytes_max",
                "must be at least batch_bytes_max",
            ));
        }
        if self.read_chunk_bytes < 4096 {
            return Err(Error::invalid("read_chunk_bytes", "must be at least 4096"));
        }
        Ok(())
    }
}
