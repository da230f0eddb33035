//! `strata node --config FILE`: the TOML file's text through everything the command checks
//! before a node starts (`services/strata/src/node_config.rs`: unknown keys, addresses, peers,
//! the engine's limits and their relations across layers). Property: no panic; the answer is a
//! configuration or a usage error (exit status 2) with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::node_config::{resolve_text, NodeArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(failure) = resolve_text(NodeArgs::default(), Some(text)) {
        assert_eq!(failure.exit_code, 2, "{}", failure.message);
        assert!(!failure.message.is_empty());
    }
});
