//! A snapshot manifest (`raft/src/snapshot.rs`), as a follower receives it in a leader's
//! InstallSnapshot offer. Properties: no panic; a manifest that decodes re-encodes to one that
//! decodes the same, and its byte total does not overflow silently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_raft::snapshot::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).ok().as_ref(), Some(&m));
        let _ = m.bytes();
    }
});
