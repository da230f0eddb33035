//! The wire-compatibility guard: `proto/compat/strata.v1.fields` records every message field,
//! enum value and method ever published. Each recorded line must still be in the compiled
//! contract with the same number and type; new lines may appear (additive changes) and must be
//! added to the record. Renumbering, retyping or removing anything fails here.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use prost::Message;
use prost_types::FileDescriptorSet;

fn current() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(strata_proto::v1::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut lines = BTreeSet::new();
    for file in set.file.iter().filter(|f| f.package() == "strata.v1") {
        for m in &file.message_type {
            for f in &m.field {
                let oneof = f
                    .oneof_index
                    .map(|i| format!(" oneof={}", m.oneof_decl[i as usize].name()))
                    .unwrap_or_default();
                lines.insert(format!(
                    "message {}.{} = {} {:?} {:?} {}{oneof}",
                    m.name(),
                    f.name(),
                    f.number(),
                    f.label(),
                    f.r#type(),
                    f.type_name()
                ));
            }
        }
        for e in &file.enum_type {
            for v in &e.value {
                lines.insert(format!("enum {}.{} = {}", e.name(), v.name(), v.number()));
            }
        }
        for s in &file.service {
            for m in &s.method {
                lines.insert(format!(
                    "rpc {}.{}({}) returns ({}) server_streaming={}",
                    s.name(),
                    m.name(),
                    m.input_type(),
                    m.output_type(),
                    m.server_streaming()
                ));
            }
        }
    }
    lines
}

#[test]
fn the_published_contract_is_still_there_unchanged() {
    let recorded = include_str!("../compat/strata.v1.fields");
    let now = current();
    let missing: Vec<&str> = recorded
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !now.contains(*l))
        .collect();
    assert!(
        missing.is_empty(),
        "published API changed or removed (only additive changes are allowed):\n{}",
        missing.join("\n")
    );
    let recorded: BTreeSet<&str> = recorded.lines().collect();
    let new: Vec<&String> = now
        .iter()
        .filter(|l| !recorded.contains(l.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "new API lines: add them to proto/compat/strata.v1.fields:\n{}",
        new.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
