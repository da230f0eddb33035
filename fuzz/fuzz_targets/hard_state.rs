//! A Raft hard-state slot (`raft/src/hard_state.rs`: vote, committed id, purge mark), as a
//! node reads it at start from a file a crash may have torn. Inputs with an odd mode byte get
//! their CRC fixed first (over the counter, the length and the JSON the length names).
//! Property: no panic; a slot decodes to a state or to nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::mode_and_rest;
use strata_raft::hard_state::decode_slot;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = mode_and_rest(data) else {
        return;
    };
    let mut slot = rest.to_vec();
    if mode & 1 == 1 && slot.len() >= 24 {
        slot[0..8].copy_from_slice(b"STRRAFT1");
        let len = (slot.len() - 24) as u32;
        slot[16..20].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&slot[8..20]);
        crc.update(&slot[24..]);
        let crc = crc.finalize();
        slot[20..24].copy_from_slice(&crc.to_le_bytes());
    }
    let _ = decode_slot(&slot);
});
