//! Segment files, their header and footer, and the manifest that names them.
//!
//! ```text
//! segment  = { header | record * | footer? }     file name: "{base_position:020}.log"
//! header   = { magic: u64 = "STRSEG01" | base_position: u64 | first_seq: u64 |
//!              format_version: u32 = 1 | reserved: u32 | crc: u32 | reserved: u32 }  (40 bytes)
//!              crc = crc32 of the first 32 bytes
//! footer   = { magic: u64 = "STRFOOT1" | record_count: u64 | first_seq: u64 | last_seq: u64 |
//!              records_end: u64 | records_crc: u32 | reserved: u32 | reserved: u32 |
//!              crc: u32 }                                                          (56 bytes)
//!              records_crc = crc32 of every record byte; crc = crc32 of the first 52 bytes
//! manifest = { magic: u64 = "STRMANI1" | count: u32 | reserved: u32 |
//!              { base_position: u64 | file_len: u64 (0 for the tail) } * count | crc: u32 }
//! ```
//! A record's position is the segment's base position plus its offset in the file, so
//! positions run on across segments: the next segment's base is the previous base plus the
//! previous file's length. Only the last segment (the tail) is open for writes; a sealed segment
//! ends with its footer and never changes, except when a truncation reaches back into it.

// Bytes decoded here come from disk: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use crate::config::{SEGMENT_FOOTER_BYTES, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::event::Position;
use crate::format::{bytes_at, u32_at, u64_at};

const HEADER_MAGIC: &[u8; 8] = b"STRSEG01";
const FOOTER_MAGIC: &[u8; 8] = b"STRFOOT1";
const MANIFEST_MAGIC: &[u8; 8] = b"STRMANI1";
const FORMAT_VERSION: u32 = 1;
/// Name of the manifest file in the log directory.
pub const MANIFEST_NAME: &str = "MANIFEST";
/// Most segments a manifest may list (bounds the manifest read at open).
pub const MANIFEST_SEGMENTS_MAX: usize = 1 << 20;

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the file's first byte.
    pub base_position: Position,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
        b.extend_from_slice(HEADER_MAGIC);
        b.extend_from_slice(&self.base_position.to_le_bytes());
        b.extend_from_slice(&self.first_seq.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(b.len() as u64, SEGMENT_HEADER_BYTES);
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8], path: &Path) -> Result<SegmentHeader> {
        let (Some(fields), Some(crc)) = (b.get(0..32), u32_at(b, 32)) else {
            return Err(Error::corruption(path, 0, "segment header is incomplete"));
        };
        if bytes_at::<8>(fields, 0).as_ref() != Some(HEADER_MAGIC) {
            return Err(Error::corruption(path, 0, "not a segment file (bad magic)"));
        }
        if crc32fast::hash(fields) != crc {
            return Err(Error::corruption(
                path,
                0,
                "segment header checksum mismatch",
            ));
        }
        let field = |at: usize| u64_at(fields, at).unwrap_or(0);
        let version = u32_at(fields, 24).unwrap_or(0);
        if version != FORMAT_VERSION {
            return Err(Error::corruption(
                path,
                24,
                format!("unknown segment format version {version}"),
            ));
        }
        Ok(SegmentHeader {
            base_position: field(8),
            first_seq: field(16),
        })
    }
}

/// The footer that seals a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Records in the segment.
    pub record_count: u64,
    /// Sequence number of the first record (the next record's when empty).
    pub first_seq: u64,
    /// Sequence number of the last record (`first_seq - 1` when empty).
    pub last_seq: u64,
    /// Position just past the last record (where the footer starts).
    pub records_end: Position,
    /// CRC-32 of every record byte in the segment.
    pub records_crc: u32,
}

impl Footer {
    /// The footer's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_FOOTER_BYTES as usize);
        b.extend_from_slice(FOOTER_MAGIC);
        b.extend_from_slice(&self.record_count.to_le_bytes());
        b.extend_from_slice(&self.first_seq.to_le_bytes());
        b.extend_from_slice(&self.last_seq.to_le_bytes());
        b.extend_from_slice(&self.records_end.to_le_bytes());
        b.extend_from_slice(&self.records_crc.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len() as u64, SEGMENT_FOOTER_BYTES);
        b
    }

    /// Whether `b` starts with a footer's magic.
    pub fn looks_like_footer(b: &[u8]) -> bool {
        bytes_at::<8>(b, 0).as_ref() == Some(FOOTER_MAGIC)
    }

    /// Parses and checks a footer found at `offset` of `path`.
    pub fn decode(b: &[u8], path: &Path, offset: u64) -> Result<Footer> {
        let (Some(fields), Some(crc)) = (b.get(0..52), u32_at(b, 52)) else {
            return Err(Error::corruption(
                path,
                offset,
                "segment footer missing or incomplete",
            ));
        };
        if !Footer::looks_like_footer(fields) {
            return Err(Error::corruption(
                path,
                offset,
                "segment footer missing or incomplete",
            ));
        }
        if crc32fast::hash(fields) != crc {
            return Err(Error::corruption(
                path,
                offset,
                "segment footer checksum mismatch",
            ));
        }
        let field = |at: usize| u64_at(fields, at).unwrap_or(0);
        Ok(Footer {
            record_count: field(8),
            first_seq: field(16),
            last_seq: field(24),
            records_end: field(32),
            records_crc: u32_at(fields, 40).unwrap_or(0),
        })
    }
}

/// File name of the segment starting at `base_position`.
pub fn segment_file_name(base_position: Position) -> String {
    format!("{base_position:020}.log")
}

/// The base position encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<Position> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Base position of the segment.
    pub base_position: Position,
    /// Length of a sealed segment's file; 0 for the tail.
    pub file_len: u64,
}

/// Encodes a manifest.
pub fn encode_manifest(entries: &[ManifestEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + entries.len() * 16 + 4);
    b.extend_from_slice(MANIFEST_MAGIC);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for e in entries {
        b.extend_from_slice(&e.base_position.to_le_bytes());
        b.extend_from_slice(&e.file_len.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and checks a manifest.
pub fn decode_manifest(b: &[u8], path: &Path) -> Result<Vec<ManifestEntry>> {
    if b.len() < 20 || bytes_at::<8>(b, 0).as_ref() != Some(MANIFEST_MAGIC) {
        return Err(Error::corruption(
            path,
            0,
            "not a manifest (bad magic or too short)",
        ));
    }
    let count = u32_at(b, 8).unwrap_or(0) as usize;
    if count > MANIFEST_SEGMENTS_MAX || b.len() != 16 + count * 16 + 4 {
        return Err(Error::corruption(
            path,
            8,
            "manifest length does not match its segment count",
        ));
    }
    let body = b.len() - 4;
    let crc = u32_at(b, body);
    if Some(crc32fast::hash(b.get(..body).unwrap_or_default())) != crc {
        return Err(Error::corruption(
            path,
            body as u64,
            "manifest checksum mismatch",
        ));
    }
    (0..count)
        .map(|i| match (u64_at(b, 16 + i * 16), u64_at(b, 24 + i * 16)) {
            (Some(base_position), Some(file_len)) => Ok(ManifestEntry {
                base_position,
                file_len,
            }),
            _ => Err(Error::corruption(path, 16, "manifest entry cut short")),
        })
        .collect()
}

/// Path of a segment in `dir`.
pub fn segment_path(dir: &Path, base_position: Position) -> PathBuf {
    dir.join(segment_file_name(base_position))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_footer_manifest_round_trip() {
        let p = Path::new("x");
        let h = SegmentHeader {
            base_position: 123,
            first_seq: 9,
        };
        assert_eq!(SegmentHeader::decode(&h.encode(), p).unwrap(), h);
        let f = Footer {
            record_count: 3,
            first_seq: 9,
            last_seq: 11,
            records_end: 500,
            records_crc: 77,
        };
        assert_eq!(Footer::decode(&f.encode(), p, 0).unwrap(), f);
        let m = vec![
            ManifestEntry {
                base_position: 0,
                file_len: 900,
            },
            ManifestEntry {
                base_position: 900,
                file_len: 0,
            },
        ];
        assert_eq!(decode_manifest(&encode_manifest(&m), p).unwrap(), m);
        let mut bad = encode_manifest(&m);
        bad[17] ^= 1;
        assert!(matches!(
            decode_manifest(&bad, p),
            Err(Error::Corruption { .. })
        ));
    }

    #[test]
    fn segment_names_sort_by_position() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("MANIFEST"), None);
        assert_eq!(parse_segment_file_name("0001.log"), None);
    }
}
