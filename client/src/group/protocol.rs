//! The consumer group protocol's pure part: stream names, the events' JSON, which partition a
//! stream belongs to, and which live member owns which partition. No I/O here.
//!
//! ```text
//! $groups            $group-created {name}                    registry (list)
//! $group:G           $group-created {target, partitions, from} definition (first event)
//!                    $group-reset   {from | after, at_us?}     a reset (also written to every partition)
//! $group:G/members   $group-heartbeat {member}  $group-left {member}
//! $group:G/p/N       $group-claim  {member, from | after}      owner changes; "" = released
//!                    $group-commit {member, from | after}      position: handled through here
//! $group:G/parked    $group-parked (data: the event's; metadata: {stream, version, position,
//!                                   type, reason, member})
//! $group:G/retry     the same, copied from /parked by a replay; partition N = partitions
//! ```
//!
//! Every partition event carries the partition's whole state (owner and position), so its last
//! event alone is the state, and its version is the fencing token: a worker commits with the
//! version it last saw, and a claim by another worker (or a reset) in between fails the commit.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Most members (workers) of one group. Bounds what a worker reads of the members stream.
pub const MEMBERS_MAX: usize = 64;
/// Events of the members stream a worker reads (the newest) to see who is alive.
pub const MEMBERS_WINDOW_EVENTS: u32 = 1024;
/// Most partitions of a group (the node's bound).
pub const PARTITIONS_MAX: u32 = 1024;
/// Partitions of a group unless told otherwise.
pub const PARTITIONS_DEFAULT: u32 = 8;

/// The registry of groups.
pub const REGISTRY: &str = "$groups";

/// `$group:G`.
pub fn definition_stream(group: &str) -> String {
    format!("$group:{group}")
}
/// `$group:G/members`.
pub fn members_stream(group: &str) -> String {
    format!("$group:{group}/members")
}
/// `$group:G/p/N`.
pub fn partition_stream(group: &str, n: u32) -> String {
    format!("$group:{group}/p/{n}")
}
/// `$group:G/parked`.
pub fn parked_stream(group: &str) -> String {
    format!("$group:{group}/parked")
}
/// `$group:G/retry`.
pub fn retry_stream(group: &str) -> String {
    format!("$group:{group}/retry")
}

/// Checks a group name as the node does: 1 to 128 bytes of ASCII letters, digits, `.`, `_`,
/// `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "group name `{name}`: 1 to 128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// What a group consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupTarget {
    /// One stream.
    Stream(String),
    /// Every stream whose name starts with this.
    Prefix(String),
    /// Every user stream (`$all` without the system's `$` streams).
    All,
}

impl GroupTarget {
    /// Whether events of `stream` are the group's.
    pub fn matches(&self, stream: &str) -> bool {
        if stream.starts_with('$') {
            return false;
        }
        match self {
            GroupTarget::Stream(s) => s == stream,
            GroupTarget::Prefix(p) => stream.starts_with(p.as_str()),
            GroupTarget::All => true,
        }
    }

    /// The server-side filter prefix for reading it.
    pub fn filter_prefix(&self) -> &str {
        match self {
            GroupTarget::Stream(s) => s,
            GroupTarget::Prefix(p) => p,
            GroupTarget::All => "",
        }
    }
}

/// A point in the log to consume from: after a record, or from one (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// The records after the one at this position.
    After(u64),
    /// The record at this position and those after it.
    From(u64),
}

impl Position {
    /// Whether a record at `position` is still to be handled.
    pub fn wants(self, position: u64) -> bool {
        match self {
            Position::After(p) => position > p,
            Position::From(p) => position >= p,
        }
    }

    /// An order on positions: the earlier one starts reading first.
    fn key(self) -> (u64, u8) {
        match self {
            Position::From(p) => (p, 0),
            Position::After(p) => (p, 1),
        }
    }

    /// The earliest of some positions.
    pub fn earliest(positions: impl IntoIterator<Item = Position>) -> Option<Position> {
        positions.into_iter().min_by_key(|p| p.key())
    }
}

/// `$group-created` in the definition stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// What it consumes.
    pub target: GroupTarget,
    /// Partitions of the target (the retry stream is one more).
    pub partitions: u32,
    /// Where a partition without a commit starts.
    pub start: Position,
}

/// A partition event's data: its whole state after the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEvent {
    /// The owner; "" when released (or after a reset).
    pub member: String,
    /// Handled through here.
    pub position: Position,
}

/// `$group-heartbeat` / `$group-left` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvent {
    /// The member's name.
    pub member: String,
}

/// `$group-parked` metadata: where the event came from and why it was given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedFrom {
    /// Its stream.
    pub stream: String,
    /// Its version there.
    pub version: u64,
    /// Its record's position in the log.
    pub position: u64,
    /// Its type.
    pub event_type: String,
    /// Why the worker gave up.
    pub reason: String,
    /// The worker.
    pub member: String,
}

/// `$group-reset` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    /// Where every partition starts again.
    pub position: Position,
}

/// `$group-created` / `$group-deleted` data in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEvent {
    /// The group.
    pub name: String,
}

/// JSON of a protocol event.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

/// A protocol event read back; a malformed one is reported naming its stream.
pub fn from_json<T: for<'a> Deserialize<'a>>(stream: &str, data: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(data).map_err(|e| Error::Server {
        code: tonic::Code::DataLoss,
        kind: "malformed-group-event".into(),
        message: format!("an event of `{stream}` is not the group protocol's: {e}"),
    })
}

/// FNV-1a, 64-bit: a hash every client computes the same, in every language and version.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of a stream's events.
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    (fnv1a(&[stream.as_bytes()]) % u64::from(partitions.max(1))) as u32
}

/// The live member that owns partition `n` (rendezvous hashing: a member leaving moves only
/// its own partitions). `None` with no live member.
pub fn owner(live: &[String], n: u32) -> Option<&str> {
    live.iter()
        .max_by_key(|m| (fnv1a(&[m.as_bytes(), &n.to_le_bytes()]), m.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_leavers_partitions() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let mut owned_by_b = 0;
        for n in 0..64 {
            let before = owner(&three, n).unwrap();
            let after = owner(&two, n).unwrap();
            if before == "b" {
                owned_by_b += 1;
            } else {
                assert_eq!(before, after, "partition {n} moved though its owner stayed");
            }
        }
        assert!(owned_by_b > 5, "b owned only {owned_by_b} of 64");
        assert_eq!(owner(&[], 0), None);
    }

    #[test]
    fn positions_order_and_want() {
        assert!(Position::After(10).wants(11) && !Position::After(10).wants(10));
        assert!(Position::From(10).wants(10) && !Position::From(10).wants(9));
        assert_eq!(
            Position::earliest([Position::After(5), Position::From(5), Position::After(2)]),
            Some(Position::After(2))
        );
        assert_eq!(
            Position::earliest([Position::After(5), Position::From(5)]),
            Some(Position::From(5))
        );
    }

    #[test]
    fn events_round_trip_as_json_and_names_are_checked() {
        let e = PartitionEvent {
            member: "w1".into(),
            position: Position::After(42),
        };
        let json = to_json(&e);
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"member":"w1","position":{"after":42}}"#
        );
        assert_eq!(from_json::<PartitionEvent>("s", &json).unwrap(), e);
        assert!(from_json::<PartitionEvent>("s", b"{}").is_err());
        assert!(check_name("billing-v2").is_ok());
        assert!(check_name("").is_err() && check_name("a/b").is_err() && check_name("_x").is_err());
        assert_eq!(partition_of("order-1", 8), partition_of("order-1", 8));
        assert!(GroupTarget::Prefix("order-".into()).matches("order-1"));
        assert!(!GroupTarget::All.matches("$group:g"));
    }
}
