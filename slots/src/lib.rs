//! A stream's hash slot. Clients, nodes and the engine must agree on it exactly, for ever (a
//! stream's events live in the shard its slot maps to, and a slot-range move's write fence is
//! decided by the engine from it), so it lives in this crate of its own, below both the
//! engine and the wire contract (`strata-proto` re-exports it beside the cluster map).
//!
//! - **Routing key**: the text between the first `{` and the next `}` when that text is not
//!   empty, else the whole name. `order-{42}` and `order-{42}-payments` share a slot. A
//!   consumer group's streams (`$group:G`, `$group:G/…`) have G for key, so a group's
//!   streams share a shard, and with them the streams named `…{G}…` (its outputs).
//! - **Hash**: CRC-32 (ISO-HDLC, the zlib/Ethernet one) of the key's UTF-8 bytes, modulo the
//!   number of slots, which is fixed when a cluster is created.
//!
//! The values are pinned by tests in `strata-proto` against an independent implementation.

/// The part of a stream name that chooses its slot (see the crate's notes).
pub fn routing_key(stream: &str) -> &str {
    if let Some(group) = stream.strip_prefix("$group:") {
        let name = group.split('/').next().unwrap_or_default();
        if !name.is_empty() {
            return name;
        }
    }
    if let Some(open) = stream.find('{') {
        let rest = stream.get(open + 1..).unwrap_or_default();
        if let Some(close) = rest.find('}') {
            if close > 0 {
                return rest.get(..close).unwrap_or(stream);
            }
        }
    }
    stream
}

/// The slot of `stream` in a cluster of `slots` slots (0 is treated as 1).
pub fn slot_of(stream: &str, slots: u32) -> u32 {
    crc32fast::hash(routing_key(stream).as_bytes()) % slots.max(1)
}
