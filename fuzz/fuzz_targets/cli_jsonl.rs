//! `strata append --jsonl FILE`: the events file (one JSON object a line), as the command
//! parses it (`services/strata/src/client.rs`). Properties: no panic; an error names its
//! line; every parsed event has a type and JSON data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::client::parse_jsonl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_jsonl(text, "Default") {
        Ok(events) => {
            for e in events {
                assert!(!e.r#type.is_empty() || text.contains("\"type\""));
                if !e.data.is_empty() {
                    assert!(serde_json::from_slice::<serde_json::Value>(&e.data).is_ok());
                }
            }
        }
        Err(message) => {
            let line = message.split(':').next().unwrap_or_default();
            assert!(line.parse::<usize>().is_ok(), "{message}");
        }
    }
});
