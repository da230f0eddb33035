//! Offline verification of a store's log (`strata check`): reads every segment, checks every
//! record's checksum, position and sequence number, and every footer against its records.
//! It only reads; a torn tail is reported (open would truncate it), never changed.

use std::path::{Path, PathBuf};

use crate::config::{EngineConfig, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::fs::{read_exact_at, FileSystem, OpenMode};
use crate::log::verify_segment;
use crate::segment::{decode_manifest, segment_path, MANIFEST_NAME};

/// Progress of a verification, reported after each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Segments checked so far.
    pub segments_done: usize,
    /// Segments in all.
    pub segments_total: usize,
    /// Bytes checked so far.
    pub bytes_done: u64,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Intact records found.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damage to data that was synced: the store refuses to open or to read it.
    pub corruption: Vec<Problem>,
    /// A torn tail that opening the store would truncate.
    pub torn_tail: Option<Problem>,
}

impl VerifyReport {
    /// True when no corruption was found (a torn tail is not corruption).
    pub fn is_clean(&self) -> bool {
        self.corruption.is_empty()
    }
}

/// Verifies the log of the store in `dir` (the directory given to `Store::open`).
pub fn verify(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &EngineConfig,
    mut progress: impl FnMut(VerifyProgress),
) -> Result<VerifyReport> {
    let log_dir = dir.join("log");
    let manifest_path = log_dir.join(MANIFEST_NAME);
    let manifest_file = fs
        .open(&manifest_path, OpenMode::Read)
        .map_err(|e| Error::io(format!("opening {}", manifest_path.display()), e))?;
    let len = manifest_file
        .len()
        .map_err(|e| Error::io("sizing the manifest", e))?;
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(manifest_file.as_ref(), &mut bytes, 0)
        .map_err(|e| Error::io("reading the manifest", e))?;
    let entries = decode_manifest(&bytes, &manifest_path)?;
    let mut report = VerifyReport::default();
    let mut next_seq = None;
    for (i, entry) in entries.iter().enumerate() {
        let sealed = i + 1 < entries.len();
        let path = segment_path(&log_dir, entry.base_position);
        let mut note = |offset: u64, reason: String| {
            report.corruption.push(Problem {
                file: path.clone(),
                offset,
                reason,
            })
        };
        let len = match fs.open(&path, OpenMode::Read).and_then(|f| f.len()) {
            Ok(len) => len,
            Err(e) => {
                note(0, format!("cannot open: {e}"));
                continue;
            }
        };
        report.segments += 1;
        report.bytes += len;
        if sealed && len != entry.file_len {
            note(
                len,
                format!(
                    "sealed segment is {len} bytes, manifest says {}",
                    entry.file_len
                ),
            );
        } else {
            match verify_segment(
                fs,
                config.read_chunk_bytes,
                &path,
                entry.base_position,
                next_seq,
                sealed,
                config.limits.batch_bytes_max,
            ) {
                Ok((first_seq, records, torn)) => {
                    report.records += records;
                    next_seq = Some(first_seq + records);
                    if let Some(offset) = torn {
                        report.torn_tail = Some(Problem {
                            file: path.clone(),
                            offset,
                            reason: format!(
                                "torn tail of {} bytes (open truncates it)",
                                len - offset
                            ),
                        });
                    }
                }
                Err(Error::Corruption { offset, reason, .. }) => note(offset, reason),
                Err(e) => return Err(e),
            }
        }
        if len < SEGMENT_HEADER_BYTES {
            continue;
        }
        progress(VerifyProgress {
            segments_done: i + 1,
            segments_total: entries.len(),
            bytes_done: report.bytes,
        });
    }
    Ok(report)
}
