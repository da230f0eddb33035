//! Segment headers, footers and the manifest (`engine/src/segment.rs`), as recovery and
//! `strata check` read them from disk. The mode byte picks the structure and whether its CRC is
//! fixed first. Properties: no panic; whatever decodes re-encodes to bytes that decode the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_engine::segment::{decode_manifest, encode_manifest, Footer, SegmentHeader};
use strata_fuzz::{fix_crc, mode_and_rest};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = mode_and_rest(data) else {
        return;
    };
    let mut b = rest.to_vec();
    let fix = mode & 0x80 != 0;
    let path = Path::new("fuzz.log");
    match mode % 3 {
        0 => {
            if fix {
                fix_crc(&mut b, 0..32, 32);
            }
            if let Ok(h) = SegmentHeader::decode(&b, path) {
                assert_eq!(SegmentHeader::decode(&h.encode(), path).ok(), Some(h));
            }
        }
        1 => {
            if fix {
                fix_crc(&mut b, 0..52, 52);
            }
            let _ = Footer::looks_like_footer(&b);
            if let Ok(f) = Footer::decode(&b, path, 0) {
                assert_eq!(Footer::decode(&f.encode(), path, 0).ok(), Some(f));
            }
        }
        _ => {
            if fix && b.len() >= 4 {
                let end = b.len() - 4;
                fix_crc(&mut b, 0..end, end);
            }
            if let Ok(m) = decode_manifest(&b, path) {
                assert_eq!(decode_manifest(&encode_manifest(&m), path).ok(), Some(m));
            }
        }
    }
});
