//! Snapshots by segments. The log is the data, so a snapshot is not a copy of state: it is a
//! small manifest naming the log's byte ranges up to the last applied record (sealed segments
//! whole, then the start of the next one) and the node that holds them.
//!
//! Installing one on a replica (a new node, or one that lost its disk) happens in two steps:
//! 1. [`stage`] fetches every range from the source node in chunks of at most
//!    [`FETCH_CHUNK_BYTES`], writes them as segment files in a staging directory, and checks
//!    them: a sealed segment's records against its footer's CRC, the partial last segment
//!    record by record. Nothing live changes; a failure only leaves a staging directory.
//! 2. openraft's `install_snapshot` then moves the staged directory in as the replica's new data
//!    generation, indexes its records and stands the state machine at the snapshot's last log
//!    id. Entries after it arrive by normal replication.
//!
//! The index is rebuilt from the copied log rather than shipped: it is derived data.

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_engine::format::{check_frame, FrameCheck, FRAME_BYTES};
use strata_engine::fs::{read_exact_at, FileSystem, OpenMode};
use strata_engine::log::Segment;
use strata_engine::segment::{encode_manifest, segment_path, Footer, ManifestEntry, SegmentHeader};
use strata_engine::{Error, Result};

use crate::types::NodeId;

/// Most bytes one fetch asks for (and a node serves).
pub const FETCH_CHUNK_BYTES: usize = 1 << 20;
/// Bytes of a segment header and footer (the engine's format).
const SEGMENT_HEADER_BYTES: u64 = 40;
const SEGMENT_FOOTER_BYTES: u64 = 56;

/// One byte range of the source's log: `[base, base + len)` of the segment starting at `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The segment's base position.
    pub base: u64,
    /// Bytes to copy from its start.
    pub len: u64,
    /// Whether this is a whole sealed segment (footer included).
    pub sealed: bool,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// openraft's metadata: last log id, membership, id.
    pub meta: crate::types::SnapshotMeta,
    /// The node whose log the ranges are in.
    pub source: NodeId,
    /// The ranges, in log order; empty when the snapshot holds no records.
    pub segments: Vec<Range>,
}

impl Manifest {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A manifest of plain numbers and strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a manifest.
    pub fn decode(b: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(b)
            .map_err(|e| Error::invalid("snapshot", format!("not a snapshot manifest: {e}")))
    }

    /// Bytes the ranges hold.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|r| r.len).sum()
    }
}

/// The ranges covering the log up to `end` (the end of the last applied record).
pub fn ranges_up_to(segments: &[Arc<Segment>], end: u64) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for s in segments {
        if s.base >= end {
            break;
        }
        let file_len = s
            .file
            .len()
            .map_err(|e| Error::io(format!("sizing {}", s.path.display()), e))?;
        if s.footer.is_some() && s.base + file_len <= end {
            out.push(Range {
                base: s.base,
                len: file_len,
                sealed: true,
            });
        } else {
            out.push(Range {
                base: s.base,
                len: end - s.base,
                sealed: false,
            });
            break;
        }
    }
    Ok(out)
}

/// Where a snapshot is staged before it is installed; `attempt` makes each offer's directory
/// its own (a retried offer may stage while openraft still installs the first one).
pub fn staging_dir(data_dir: &Path, snapshot_id: &str, attempt: u64) -> PathBuf {
    let safe: String = snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join(format!("incoming-{safe}-{attempt}"))
}

/// Fetches and checks a snapshot's ranges into its staging directory. `fetch(position, len)`
/// returns up to `len` bytes of the source's log at `position`. `progress(done, total)` is
/// called after every chunk.
pub async fn stage<F, Fut>(
    fs: &dyn FileSystem,
    data_dir: &Path,
    attempt: u64,
    manifest: &Manifest,
    mut fetch: F,
    mut progress: impl FnMut(u64, u64),
) -> Result<PathBuf>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<Vec<u8>>>,
{
    let staged = staging_dir(data_dir, &manifest.meta.snapshot_id, attempt);
    let log_dir = staged.join("log");
    let io = |what: String| move |e| Error::io(what, e);
    fs.create_dir_all(&log_dir)
        .map_err(io(format!("creating {}", log_dir.display())))?;
    for name in fs
        .list(&log_dir)
        .map_err(io(format!("listing {}", log_dir.display())))?
    {
        fs.remove_file(&log_dir.join(&name))
            .map_err(io(format!("clearing {name}")))?;
    }
    let total = manifest.bytes();
    let mut done = 0u64;
    let mut entries = Vec::with_capacity(manifest.segments.len());
    for (i, range) in manifest.segments.iter().enumerate() {
        let last = i + 1 == manifest.segments.len();
        if range.sealed == last {
            return Err(Error::invalid(
                "snapshot",
                "every range but the last must be a sealed segment",
            ));
        }
        let path = segment_path(&log_dir, range.base);
        let file = fs
            .open(&path, OpenMode::CreateTruncate)
            .map_err(io(format!("creating {}", path.display())))?;
        let mut at = 0u64;
        while at < range.len {
            let want = FETCH_CHUNK_BYTES.min((range.len - at) as usize);
            let chunk = fetch(range.base + at, want).await?;
            if chunk.is_empty() || chunk.len() > want {
                return Err(Error::Unavailable(format!(
                    "snapshot source returned {} bytes for a {want}-byte fetch at {}",
                    chunk.len(),
                    range.base + at
                )));
            }
            file.write_all_at(&chunk, at)
                .map_err(io(format!("writing {}", path.display())))?;
            at += chunk.len() as u64;
            done += chunk.len() as u64;
            progress(done, total);
        }
        if range.sealed {
            check_sealed(file.as_ref(), &path, range.len)?;
        } else {
            check_records(file.as_ref(), &path, range.len)?;
        }
        file.sync_data()
            .map_err(io(format!("syncing {}", path.display())))?;
        entries.push(ManifestEntry {
            base_position: range.base,
            file_len: if range.sealed { range.len } else { 0 },
        });
    }
    let manifest_path = log_dir.join(strata_engine::segment::MANIFEST_NAME);
    let file = fs
        .open(&manifest_path, OpenMode::CreateTruncate)
        .map_err(io("creating the staged manifest".into()))?;
    file.write_all_at(&encode_manifest(&entries), 0)
        .and_then(|()| file.sync_data())
        .map_err(io("writing the staged manifest".into()))?;
    fs.sync_dir(&log_dir)
        .map_err(io(format!("syncing {}", log_dir.display())))?;
    fs.sync_dir(data_dir)
        .map_err(io(format!("syncing {}", data_dir.display())))?;
    Ok(staged)
}

fn read(
    file: &dyn strata_engine::fs::FileHandle,
    path: &Path,
    at: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, at)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// A segment's header must decode (its checksum): a copy carries its bytes, and a damaged one
/// fails the whole segment at open.
pub(crate) fn check_header(file: &dyn strata_engine::fs::FileHandle, path: &Path) -> Result<()> {
    SegmentHeader::decode(&read(file, path, 0, SEGMENT_HEADER_BYTES as usize)?, path).map(|_| ())
}

/// A sealed segment (copied, or about to be served): its header must decode and its records'
/// CRC must match its footer.
pub(crate) fn check_sealed(
    file: &dyn strata_engine::fs::FileHandle,
    path: &Path,
    len: u64,
) -> Result<()> {
    if len < SEGMENT_HEADER_BYTES + SEGMENT_FOOTER_BYTES {
        return Err(Error::corruption(
            path,
            0,
            "copied sealed segment is too short",
        ));
    }
    check_header(file, path)?;
    let footer_at = len - SEGMENT_FOOTER_BYTES;
    let footer = Footer::decode(
        &read(file, path, footer_at, SEGMENT_FOOTER_BYTES as usize)?,
        path,
        footer_at,
    )?;
    let mut crc = crc32fast::Hasher::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at < footer_at {
        let n = (footer_at - at).min(FETCH_CHUNK_BYTES as u64) as usize;
        crc.update(&read(file, path, at, n)?);
        at += n as u64;
    }
    if crc.finalize() != footer.records_crc {
        return Err(Error::corruption(
            path,
            SEGMENT_HEADER_BYTES,
            "copied segment's records do not match its footer's CRC",
        ));
    }
    Ok(())
}

/// A copied partial segment: whole, intact records up to exactly `len`.
fn check_records(file: &dyn strata_engine::fs::FileHandle, path: &Path, len: u64) -> Result<()> {
    check_header(file, path)?;
    let mut at = SEGMENT_HEADER_BYTES;
    while at < len {
        if len - at < FRAME_BYTES as u64 {
            return Err(Error::corruption(
                path,
                at,
                "copied log ends inside a record",
            ));
        }
        let head = read(file, path, at, FRAME_BYTES)?;
        let frame_len =
            FRAME_BYTES as u64 + u64::from(strata_engine::format::u32_at(&head, 0).unwrap_or(0));
        if at + frame_len > len {
            return Err(Error::corruption(
                path,
                at,
                "copied log ends inside a record",
            ));
        }
        let frame = read(file, path, at, frame_len as usize)?;
        match check_frame(&frame, frame.len()) {
            FrameCheck::Valid(n) if n as u64 == frame_len => {}
            other => {
                return Err(Error::corruption(
                    path,
                    at,
                    format!("copied record fails its check ({other:?})"),
                ))
            }
        }
        at += frame_len;
    }
    Ok(())
}
