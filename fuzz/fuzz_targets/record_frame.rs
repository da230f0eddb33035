//! Record frames as a log scan, a reader and a follower meet them (`engine/src/format.rs`):
//! `check_frame`, the header, kind and hole accessors, and the event decoders. Inputs whose
//! first byte is odd get their frame's length and CRC fixed first, so the fuzzer explores what
//! lies behind the checksum (a peer's frame has a valid one). Properties: no panic; a frame that
//! checks decodes to events or an error; what decodes passes the structure check a follower
//! makes before copying a frame; each decoded event decodes the same from its own slot (the
//! stream index reads events one at a time through these slots).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use strata_engine::format::{self, FrameCheck};
use strata_fuzz::{fix_frame, mode_and_rest};

/// Most bytes a record may hold here (small, so the fuzzer reaches the limit).
const LEN_MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = mode_and_rest(data) else {
        return;
    };
    let mut frame = rest.to_vec();
    if mode & 1 == 1 {
        fix_frame(&mut frame);
    }
    let FrameCheck::Valid(n) = format::check_frame(&frame, LEN_MAX) else {
        return;
    };
    assert!(n <= frame.len());
    let frame = Bytes::copy_from_slice(&frame[..n]);
    let header = format::read_header(&frame);
    let _ = (format::read_kind(&frame), format::body(&frame));
    let _ = (format::records_in(&frame), format::hole_horizon(&frame));
    assert_eq!(format::replicated_bytes(&frame).len(), n);
    let structure = format::check_structure(&frame);
    let Ok(events) = format::decode_events_with_slots(&frame) else {
        return;
    };
    // An events record that decodes has the structure a follower checks before copying a
    // frame. (Other kinds decode to no events whatever their body; the structure check is
    // stricter there: a blank record's body must be empty, as every leader writes it.)
    if format::read_kind(&frame) == format::KIND_EVENTS {
        assert!(structure.is_ok(), "{structure:?}");
    }
    for (event, slot) in events {
        let (at, len) = (slot.offset as usize, slot.len as usize);
        let alone = format::decode_event(frame.slice(at..at + len), header.position)
            .expect("an event decoded in its record decodes alone");
        assert_eq!(alone, event);
    }
});
