//! The payloads of system-stream events (`engine/src/system.rs`): stream metadata, snapshot
//! info, snapshot policies, and system stream names. They come from the log (any replica's,
//! any version's). Properties: no panic; whatever decodes re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_engine::system::{self, SnapshotInfo, SnapshotPolicy, StreamMeta};
use strata_fuzz::mode_and_rest;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = mode_and_rest(data) else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(m) = StreamMeta::decode(rest) {
                assert_eq!(StreamMeta::decode(&m.encode()).ok(), Some(m));
                let _ = m.floor(u64::MAX, Some(u64::MAX));
                let _ = m.floor(0, None);
            }
        }
        1 => {
            if let Ok(s) = SnapshotInfo::decode(rest) {
                assert_eq!(SnapshotInfo::decode(&s.encode()).ok(), Some(s));
            }
        }
        2 => {
            if let Ok(p) = SnapshotPolicy::decode(rest) {
                assert_eq!(SnapshotPolicy::decode(&p.encode()).ok(), Some(p));
            }
        }
        _ => {
            if let Ok(name) = std::str::from_utf8(rest) {
                let _ = system::parse(name);
                let _ = system::deletable_base(name);
                let limits = strata_engine::config::Limits::default();
                let _ = strata_engine::validate::validate_system_name("stream", name, &limits);
                let _ = strata_engine::validate::validate_user_stream_name("stream", name, &limits);
            }
        }
    }
});
