//! Helpers the fuzz targets share: most formats carry a CRC, and a fuzzer rarely guesses one,
//! so a target may first make the input's checksum right and then explore what lies behind it
//! (bytes from a peer or a disk can be checksummed and still wrong).

use strata_engine::format::FRAME_BYTES;

/// Splits the first byte off as the target's mode (how to treat the rest).
pub fn mode_and_rest(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// Gives a record frame (all of `frame`) its right length and CRC.
pub fn fix_frame(frame: &mut [u8]) {
    if frame.len() < FRAME_BYTES {
        return;
    }
    let len = (frame.len() - FRAME_BYTES) as u32;
    let crc = crc32fast::hash(&frame[FRAME_BYTES..]);
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes at `crc_at` the little-endian CRC-32 of `buf[covered]`, when both fit.
pub fn fix_crc(buf: &mut [u8], covered: std::ops::Range<usize>, crc_at: usize) {
    if covered.end > buf.len() || crc_at + 4 > buf.len() {
        return;
    }
    let crc = crc32fast::hash(&buf[covered]);
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}
