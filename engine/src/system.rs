//! System streams: what the store keeps about streams is itself written as events, in streams
//! whose names start with `$`, so it replicates, truncates, snapshots and restores with the log
//! (everything is the log). The server writes them for the metadata, deletion, snapshot and
//! closed-timestamp calls; clients write only consumer groups' streams, and only the group
//! protocol's events (the shard checks them).
//!
//! ```text
//! $meta:S       "$metadata"  S's metadata (max_age, max_count, truncate_before); the last wins
//! $deleted:S    "$tombstone" S is hard-deleted: every later append to S is refused
//! $snap:S       "$snapshot"  a client's snapshot of S's aggregate (data: the state; metadata:
//!                            the version it covers and the snapshot schema version)
//! $settings     "$snapshot-policy"  a snapshot policy for a stream prefix
//! $closed       "$tick"      an empty event stamped to close a timestamp (see the shard)
//! $group:G      consumer group G (written by clients, checked by the shard; see `GroupPart`):
//!   $group:G          "$group-created" / "$group-reset" / "$group-deleted"  its definition
//!   $group:G/members  "$group-heartbeat" / "$group-left"   who works in it (the newest kept)
//!   $group:G/p/N      "$group-claim" / "$group-commit"      partition N's owner and position
//!   $group:G/parked   "$group-parked"   events a worker gave up on
//!   $group:G/retry    "$group-parked"   parked events replayed, handled like partition events
//! $groups        "$group-created" / "$group-deleted"   the registry of groups
//! $cluster-map   "$cluster-map"  a whole cluster map (slots → shards), version + 1 its epoch;
//!                only in the metadata group's log (a node writes it; never reclaimed)
//! $fences        "$fence" / "$unfence"  write fences of slot-range moves (`crate::fence`;
//!                a node writes them; never reclaimed)
//! ```

// Bytes decoded here come from disks, peers or clients: no input may index past a slice's end.
#![deny(clippy::indexing_slicing)]

use crate::error::{Error, Result};

/// Stream of closed-timestamp ticks.
pub const CLOSED_STREAM: &str = "$closed";
/// Stream of server-wide settings (snapshot policies).
pub const SETTINGS_STREAM: &str = "$settings";
/// Prefix of a stream's metadata stream.
pub const META_PREFIX: &str = "$meta:";
/// Prefix of a stream's snapshot stream.
pub const SNAPSHOT_PREFIX: &str = "$snap:";
/// Prefix of a stream's tombstone stream.
pub const DELETED_PREFIX: &str = "$deleted:";
/// Prefix of a consumer group's streams.
pub const GROUP_PREFIX: &str = "$group:";
/// The registry of consumer groups: every group's creation and deletion.
pub const GROUPS_STREAM: &str = "$groups";
/// The cluster map's history (in the metadata group's log).
pub const CLUSTER_MAP_STREAM: &str = "$cluster-map";
/// The stream of a shard's write fences (`crate::fence`).
pub const FENCES_STREAM: &str = "$fences";
/// Event type of a fence.
pub const FENCE_TYPE: &str = "$fence";
/// Event type of a lifted fence.
pub const UNFENCE_TYPE: &str = "$unfence";
/// Event type of a cluster map.
pub const CLUSTER_MAP_TYPE: &str = "$cluster-map";
/// Most bytes of a consumer group's name.
pub const GROUP_NAME_BYTES_MAX: usize = 128;
/// Most partitions a consumer group has.
pub const GROUP_PARTITIONS_MAX: u32 = 1024;
/// Events of a group's members stream and of each partition stream retention keeps (the
/// newest); older ones (and out of the as-of window) are dead.
pub const GROUP_EVENTS_KEPT: u64 = 1000;

/// Event type of a metadata event.
pub const METADATA_TYPE: &str = "$metadata";
/// Event type of a tombstone.
pub const TOMBSTONE_TYPE: &str = "$tombstone";
/// Event type of a snapshot.
pub const SNAPSHOT_TYPE: &str = "$snapshot";
/// Event type of a snapshot policy.
pub const POLICY_TYPE: &str = "$snapshot-policy";
/// Event type of a closed-timestamp tick.
pub const TICK_TYPE: &str = "$tick";

/// A system stream, by kind; the ones about a stream carry its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemStream<'a> {
    /// `$closed`.
    Closed,
    /// `$settings`.
    Settings,
    /// `$cluster-map`.
    ClusterMap,
    /// `$fences`.
    Fences,
    /// `$meta:S`.
    Meta(&'a str),
    /// `$snap:S`.
    Snapshot(&'a str),
    /// `$deleted:S`.
    Deleted(&'a str),
    /// `$group:G…`: one of consumer group G's streams.
    Group(&'a str, GroupPart),
}

/// Which of a consumer group's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPart {
    /// `$group:G`: created, reset, deleted.
    Definition,
    /// `$group:G/members`: heartbeats and leaves.
    Members,
    /// `$group:G/p/N`: claims and commits of partition N.
    Partition(u32),
    /// `$group:G/parked`.
    Parked,
    /// `$group:G/retry`.
    Retry,
    /// `$groups` (the group name is empty): the registry of groups.
    Registry,
}

impl GroupPart {
    /// The event types clients may append to this stream.
    pub fn event_types(self) -> &'static [&'static str] {
        match self {
            GroupPart::Definition => &["$group-created", "$group-reset", "$group-deleted"],
            GroupPart::Registry => &["$group-created", "$group-deleted"],
            GroupPart::Members => &["$group-heartbeat", "$group-left"],
            GroupPart::Partition(_) => &["$group-claim", "$group-commit"],
            GroupPart::Parked | GroupPart::Retry => &["$group-parked"],
        }
    }
}

/// Splits `$group:` names (after the prefix): `G`, `G/members`, `G/p/N`, `G/parked`,
/// `G/retry`; `None` for anything else (a bad name or part).
fn parse_group(rest: &str) -> Option<(&str, GroupPart)> {
    let (name, part) = match rest.split_once('/') {
        None => (rest, GroupPart::Definition),
        Some((name, "members")) => (name, GroupPart::Members),
        Some((name, "parked")) => (name, GroupPart::Parked),
        Some((name, "retry")) => (name, GroupPart::Retry),
        Some((name, tail)) => {
            let n = tail.strip_prefix("p/")?;
            // Canonical decimal only, so one partition has one stream name.
            if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
                return None;
            }
            let n: u32 = n.parse().ok()?;
            (n < GROUP_PARTITIONS_MAX).then_some(())?;
            (name, GroupPart::Partition(n))
        }
    };
    valid_group_name(name).then_some((name, part))
}

/// A group name: 1 to [`GROUP_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn valid_group_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= GROUP_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The name of one of group `name`'s streams.
pub fn group_stream(name: &str, part: GroupPart) -> String {
    match part {
        GroupPart::Definition => format!("{GROUP_PREFIX}{name}"),
        GroupPart::Members => format!("{GROUP_PREFIX}{name}/members"),
        GroupPart::Partition(n) => format!("{GROUP_PREFIX}{name}/p/{n}"),
        GroupPart::Parked => format!("{GROUP_PREFIX}{name}/parked"),
        GroupPart::Retry => format!("{GROUP_PREFIX}{name}/retry"),
        GroupPart::Registry => GROUPS_STREAM.to_string(),
    }
}

/// The system stream `name` is, if it is one.
pub fn parse(name: &str) -> Option<SystemStream<'_>> {
    if name == CLOSED_STREAM {
        return Some(SystemStream::Closed);
    }
    if name == SETTINGS_STREAM {
        return Some(SystemStream::Settings);
    }
    if name == CLUSTER_MAP_STREAM {
        return Some(SystemStream::ClusterMap);
    }
    if name == FENCES_STREAM {
        return Some(SystemStream::Fences);
    }
    if let Some(s) = name.strip_prefix(META_PREFIX) {
        return Some(SystemStream::Meta(s));
    }
    if let Some(s) = name.strip_prefix(SNAPSHOT_PREFIX) {
        return Some(SystemStream::Snapshot(s));
    }
    if name == GROUPS_STREAM {
        return Some(SystemStream::Group("", GroupPart::Registry));
    }
    if let Some(rest) = name.strip_prefix(GROUP_PREFIX) {
        return parse_group(rest).map(|(g, part)| SystemStream::Group(g, part));
    }
    name.strip_prefix(DELETED_PREFIX).map(SystemStream::Deleted)
}

/// The user stream whose deletion also closes `name` to appends: `name` itself, or the stream
/// a `$meta:`, `$snap:` or `$deleted:` stream is about. `None` for `$closed` and `$settings`.
pub fn deletable_base(name: &str) -> Option<&str> {
    match parse(name) {
        None => Some(name),
        Some(SystemStream::Meta(s) | SystemStream::Snapshot(s) | SystemStream::Deleted(s)) => {
            Some(s)
        }
        Some(
            SystemStream::Closed
            | SystemStream::Settings
            | SystemStream::ClusterMap
            | SystemStream::Fences
            | SystemStream::Group(..),
        ) => None,
    }
}

/// The stream whose slot `name` follows in slot-range moves (its fence and its copy): a user
/// stream itself; S for `$meta:S`, `$snap:S` and `$deleted:S`; a consumer group's streams and
/// the group registry themselves (their routing key is the group's name,
/// `strata_slots::routing_key`). `None` for a shard's own streams (`$closed`, `$settings`,
/// `$cluster`, `$fences`), which never move.
pub fn slot_base(name: &str) -> Option<&str> {
    match parse(name) {
        Some(SystemStream::Group(..)) => Some(name),
        _ => deletable_base(name),
    }
}

/// `$meta:S`.
pub fn meta_stream(stream: &str) -> String {
    format!("{META_PREFIX}{stream}")
}

/// `$snap:S`.
pub fn snapshot_stream(stream: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{stream}")
}

/// `$deleted:S`.
pub fn deleted_stream(stream: &str) -> String {
    let mut name = String::with_capacity(DELETED_PREFIX.len() + stream.len());
    deleted_stream_into(stream, &mut name);
    name
}

/// [`deleted_stream`] written into `name` (cleared first), reusing its memory: the writer
/// builds one per append (its tombstone check).
pub fn deleted_stream_into(stream: &str, name: &mut String) {
    name.clear();
    name.push_str(DELETED_PREFIX);
    name.push_str(stream);
}

/// A stream's metadata: what readers see of it, and so what retention may reclaim. Every
/// field is optional; absent means "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// Events older than this (by timestamp, relative to the time read as of) are gone.
    pub max_age_us: Option<u64>,
    /// Only the newest `max_count` events are kept.
    pub max_count: Option<u64>,
    /// Versions below this are gone (a soft delete sets it past the last version).
    pub truncate_before: Option<u64>,
}

const META_FORMAT: u8 = 1;
const META_BYTES: usize = 2 + 3 * 8;

impl StreamMeta {
    /// The event data of a metadata event: a format byte, a presence bitmap, three u64 LE.
    pub fn encode(&self) -> Vec<u8> {
        let fields = [self.max_age_us, self.max_count, self.truncate_before];
        let mut out = Vec::with_capacity(META_BYTES);
        out.push(META_FORMAT);
        let present = fields
            .iter()
            .enumerate()
            .fold(0u8, |bits, (i, f)| bits | (u8::from(f.is_some()) << i));
        out.push(present);
        for f in fields {
            out.extend_from_slice(&f.unwrap_or(0).to_le_bytes());
        }
        out
    }

    /// Reads [`StreamMeta::encode`]'s bytes.
    pub fn decode(data: &[u8]) -> Result<StreamMeta> {
        let (Some(&META_FORMAT), Some(&present), META_BYTES) =
            (data.first(), data.get(1), data.len())
        else {
            return Err(Error::Index(format!(
                "stream metadata event of {} bytes is not metadata format {META_FORMAT}",
                data.len()
            )));
        };
        let field = |i: usize| {
            (present & (1 << i) != 0)
                .then(|| crate::format::u64_at(data, 2 + 8 * i))
                .flatten()
        };
        Ok(StreamMeta {
            max_age_us: field(0),
            max_count: field(1),
            truncate_before: field(2),
        })
    }

    /// The lowest version a reader sees, given the stream's last version `head`, and the
    /// first version stamped at or after `now_us - max_age` (`young_from`, computed by the
    /// caller only when `max_age_us` is set).
    pub fn floor(&self, head: u64, young_from: Option<u64>) -> u64 {
        // head + 1 - n, without overflowing at the last representable version.
        let by_count = self.max_count.map_or(0, |n| match n.checked_sub(1) {
            Some(older) => head.saturating_sub(older),
            None => head.saturating_add(1),
        });
        let by_truncate = self.truncate_before.unwrap_or(0);
        by_count.max(by_truncate).max(young_from.unwrap_or(0))
    }
}

/// What a snapshot event's metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The stream version whose state the snapshot holds (events up to and including it).
    pub version: u64,
    /// The client's snapshot schema version.
    pub schema_version: u32,
}

const SNAPSHOT_INFO_BYTES: usize = 12;

impl SnapshotInfo {
    /// Event metadata: version u64 LE, schema version u32 LE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_INFO_BYTES);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out
    }

    /// Reads [`SnapshotInfo::encode`]'s bytes.
    pub fn decode(metadata: &[u8]) -> Result<SnapshotInfo> {
        match (
            metadata.len(),
            crate::format::u64_at(metadata, 0),
            crate::format::u32_at(metadata, 8),
        ) {
            (SNAPSHOT_INFO_BYTES, Some(version), Some(schema_version)) => Ok(SnapshotInfo {
                version,
                schema_version,
            }),
            _ => Err(Error::Index(format!(
                "snapshot event metadata of {} bytes, expected {SNAPSHOT_INFO_BYTES}",
                metadata.len()
            ))),
        }
    }
}

/// A snapshot policy: streams whose name starts with `prefix` should be snapshotted every
/// `every` events (readers of state are told when one is due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Stream name prefix ("" matches every stream).
    pub prefix: String,
    /// Events between snapshots; 0 turns snapshots off for the prefix.
    pub every: u64,
}

impl SnapshotPolicy {
    /// Event data: `every` u64 LE, then the prefix's UTF-8 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.every.to_le_bytes().to_vec();
        out.extend_from_slice(self.prefix.as_bytes());
        out
    }

    /// Reads [`SnapshotPolicy::encode`]'s bytes.
    pub fn decode(data: &[u8]) -> Result<SnapshotPolicy> {
        let (Some(every), Some(prefix)) = (crate::format::u64_at(data, 0), data.get(8..)) else {
            return Err(Error::Index(
                "snapshot policy event shorter than 8 bytes".into(),
            ));
        };
        let prefix = String::from_utf8(prefix.to_vec())
            .map_err(|_| Error::Index("snapshot policy prefix is not UTF-8".into()))?;
        Ok(SnapshotPolicy { prefix, every })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn group_stream_names_parse_and_round_trip() {
        for part in [
            GroupPart::Definition,
            GroupPart::Members,
            GroupPart::Partition(0),
            GroupPart::Partition(17),
            GroupPart::Parked,
            GroupPart::Retry,
        ] {
            let name = group_stream("billing-v2", part);
            assert_eq!(parse(&name), Some(SystemStream::Group("billing-v2", part)));
        }
        assert_eq!(
            parse(GROUPS_STREAM),
            Some(SystemStream::Group("", GroupPart::Registry))
        );
        for bad in [
            "$group:",
            "$group:a b",
            "$group:g/p/",
            "$group:g/p/01",
            "$group:g/p/1024",
            "$group:g/p/x",
            "$group:g/other",
            "$group:g/members/x",
            "$group:-g",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_parse_to_their_kind() {
        assert_eq!(parse("$meta:a:b"), Some(SystemStream::Meta("a:b")));
        assert_eq!(parse("$snap:x"), Some(SystemStream::Snapshot("x")));
        assert_eq!(parse("$deleted:x"), Some(SystemStream::Deleted("x")));
        assert_eq!(parse("$closed"), Some(SystemStream::Closed));
        assert_eq!(parse("$other"), None);
        assert_eq!(parse("orders"), None);
        assert_eq!(deletable_base("$snap:x"), Some("x"));
        assert_eq!(deletable_base("$closed"), None);
        assert_eq!(deletable_base("x"), Some("x"));
        assert_eq!(slot_base("$snap:x"), Some("x"));
        assert_eq!(slot_base("$group:g/p/1"), Some("$group:g/p/1"));
        assert_eq!(slot_base(GROUPS_STREAM), Some(GROUPS_STREAM));
        assert_eq!(slot_base("$fences"), None);
    }

    #[test]
    fn metadata_round_trips_and_floors() {
        let m = StreamMeta {
            max_age_us: None,
            max_count: Some(3),
            truncate_before: Some(2),
        };
        assert_eq!(StreamMeta::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.floor(10, None), 8);
        assert_eq!(m.floor(3, None), 2);
        assert_eq!(m.floor(3, Some(4)), 4);
        assert_eq!(StreamMeta::default().floor(5, None), 0);
        // Found by the system_events fuzz target: `head + 1` overflowed at the last version.
        assert_eq!(m.floor(u64::MAX, None), u64::MAX - 2);
        assert!(StreamMeta::decode(&[2; META_BYTES]).is_err());
        let p = SnapshotPolicy {
            prefix: "acct-".into(),
            every: 1000,
        };
        assert_eq!(SnapshotPolicy::decode(&p.encode()).unwrap(), p);
        let s = SnapshotInfo {
            version: 7,
            schema_version: 2,
        };
        assert_eq!(SnapshotInfo::decode(&s.encode()).unwrap(), s);
    }
}
