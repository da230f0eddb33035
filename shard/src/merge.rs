//! `$all` over several shards: the cursor (a position per shard) and the merge of the shards'
//! pages.
//!
//! A cursor is opaque to users; its bytes are `strata_proto::cursor`'s: a point per shard,
//! read from a position (`ReadAll`'s `next_cursor`, `GetLog`'s cursors) or after the record
//! there (a subscription's cursor, the last record it delivered). Both kinds are accepted
//! wherever a cursor is. A shard the cursor does not name (one made by a split after the
//! cursor was) is read from its start.
//!
//! The merge takes each shard's records in its log's order and interleaves the shards by
//! record timestamp (ties by shard id): every record of every shard is delivered once, and
//! resuming from a `next_cursor` misses and repeats nothing. The timestamp order across shards
//! is as good as the shards' clocks: within one shard it is exact.

use std::collections::BTreeMap;

use strata_engine::ReadAllBatch;
use strata_proto::routing::{ClusterMap, ShardId};
use strata_proto::v1 as pb;
use tonic::Status;

use crate::convert;
use crate::status::invalid;

pub use strata_proto::cursor::{Point, CURSOR_BYTES_MAX};

/// A point in every shard's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<ShardId, Point>);

impl Cursor {
    /// Every shard from `position`.
    pub fn at(shards: &[ShardId], position: u64) -> Cursor {
        Cursor(shards.iter().map(|s| (*s, Point::From(position))).collect())
    }

    /// Where to go on in `shard`.
    pub fn point(&self, shard: ShardId) -> Point {
        self.0.get(&shard).copied().unwrap_or(Point::From(0))
    }

    /// Where to read `shard` from, for a cursor of `From` points (what `ReadAll` makes).
    pub fn get(&self, shard: ShardId) -> u64 {
        match self.point(shard) {
            Point::From(p) | Point::After(p) => p,
        }
    }

    /// Reads `shard` from `position` next.
    pub fn set(&mut self, shard: ShardId, position: u64) {
        self.0.insert(shard, Point::From(position));
    }

    /// Goes on in `shard` after the record at `position`.
    pub fn set_after(&mut self, shard: ShardId, position: u64) {
        self.0.insert(shard, Point::After(position));
    }

    /// The cursor's bytes (`strata_proto::cursor`).
    pub fn encode(&self) -> Vec<u8> {
        let points = self.0.iter().map(|(s, p)| (s.0, *p)).collect();
        strata_proto::cursor::encode(&points)
    }

    /// A cursor from its bytes, for `map`'s shards; `field` names it in errors.
    pub fn decode(field: &str, bytes: &[u8], map: &ClusterMap) -> Result<Cursor, Status> {
        let bad = |why: &str| invalid(field, format!("is not a cursor from this cluster: {why}"));
        let points = strata_proto::cursor::decode(bytes).map_err(|why| bad(&why))?;
        let shards = map.shards();
        if let Some(id) = points.keys().find(|id| !shards.contains(&ShardId(**id))) {
            return Err(bad(&format!("shard {id} is not in the cluster map")));
        }
        Ok(Cursor(
            points.into_iter().map(|(id, p)| (ShardId(id), p)).collect(),
        ))
    }
}

/// One page of the merged `$all`: at most `limit` records of the shards' `batches` (each in
/// its log's order, read from `from`), events outside `filter` left out, and at most
/// `bytes_max` of events (the first record always); returns the events and where to continue.
pub fn merge(
    batches: Vec<(ShardId, ReadAllBatch)>,
    from: &Cursor,
    limit: usize,
    filter: Option<&pb::Filter>,
    bytes_max: usize,
) -> (Vec<pb::RecordedEvent>, Cursor) {
    let mut next = from.clone();
    let mut taken = vec![0usize; batches.len()];
    let mut events = Vec::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    while records < limit {
        let pick = batches
            .iter()
            .enumerate()
            .filter_map(|(i, (shard, b))| {
                b.records.get(taken[i]).map(|r| (r.timestamp_us, *shard, i))
            })
            .min();
        let Some((_, _, i)) = pick else {
            break;
        };
        let record = &batches[i].1.records[taken[i]];
        let kept: Vec<pb::RecordedEvent> = convert::all_events(record.clone(), filter)
            .into_iter()
            .map(convert::recorded)
            .collect();
        let record_bytes: usize = kept.iter().map(convert::answer_bytes).sum();
        if records > 0 && bytes.saturating_add(record_bytes) > bytes_max {
            break;
        }
        bytes = bytes.saturating_add(record_bytes);
        events.extend(kept);
        records += 1;
        taken[i] += 1;
    }
    for (i, (shard, batch)) in batches.iter().enumerate() {
        let position = batch
            .records
            .get(taken[i])
            .map_or(batch.next, |r| r.position);
        next.set(*shard, position);
    }
    (events, next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use strata_engine::{Record, RecordedEvent};

    fn record(position: u64, timestamp_us: u64, stream: &str) -> Record {
        Record {
            copy: false,
            position,
            seq: position,
            timestamp_us,
            events: vec![RecordedEvent {
                stream: stream.into(),
                version: 0,
                id: uuid::Uuid::from_u128(u128::from(position)),
                event_type: "T".into(),
                data: Default::default(),
                metadata: Default::default(),
                position,
                timestamp_us,
            }],
        }
    }

    fn batch(records: Vec<Record>, next: u64) -> ReadAllBatch {
        ReadAllBatch { records, next }
    }

    #[test]
    fn a_cursor_survives_its_bytes_and_bad_bytes_are_refused() {
        let map = ClusterMap::even(4096, 3).unwrap();
        let mut c = Cursor::at(&map.shards(), 0);
        c.set(ShardId(1), 1 << 40);
        c.set_after(ShardId(2), 77);
        assert_eq!(Cursor::decode("c", &c.encode(), &map).unwrap(), c);
        assert_eq!(Cursor::decode("c", &[], &map).unwrap(), Cursor::default());
        for (bytes, says) in [
            (vec![2], "unknown version"),
            (vec![1, 0], "cut short"),
            (vec![1, 18, 0], "shard 9 is not in the cluster map"),
            (vec![1, 0, 0, 0, 5], "shard 0 named twice"),
            (vec![1, 0, 0xff], "cut short"),
            (vec![0x80; CURSOR_BYTES_MAX + 1], "too long"),
        ] {
            let e = Cursor::decode("from_cursor", &bytes, &map).unwrap_err();
            assert!(
                e.message().contains("from_cursor") && e.message().contains(says),
                "{bytes:?}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn the_merge_orders_by_timestamp_keeps_each_shards_order_and_resumes_without_gap() {
        let a = vec![record(10, 1, "a"), record(20, 4, "a"), record(30, 5, "a")];
        let b = vec![record(10, 2, "b"), record(20, 3, "b")];
        let from = Cursor::default();
        let all = || {
            vec![
                (ShardId(0), batch(a.clone(), 40)),
                (ShardId(1), batch(b.clone(), 30)),
            ]
        };
        let (events, next) = merge(all(), &from, 10, None, usize::MAX);
        let order: Vec<(String, u64)> = events
            .iter()
            .map(|e| (e.stream.clone(), e.position))
            .collect();
        assert_eq!(
            order,
            [("a", 10), ("b", 10), ("b", 20), ("a", 20), ("a", 30)]
                .map(|(s, p)| (s.to_string(), p))
        );
        assert_eq!((next.get(ShardId(0)), next.get(ShardId(1))), (40, 30));
        // Three records, then the rest from the cursor: nothing missed, nothing twice.
        let (first, next) = merge(all(), &from, 3, None, usize::MAX);
        assert_eq!(first.len(), 3);
        assert_eq!((next.get(ShardId(0)), next.get(ShardId(1))), (20, 30));
        let rest_a: Vec<Record> = a.iter().filter(|r| r.position >= 20).cloned().collect();
        let (rest, _) = merge(
            vec![
                (ShardId(0), batch(rest_a, 40)),
                (ShardId(1), batch(vec![], 30)),
            ],
            &next,
            10,
            None,
            usize::MAX,
        );
        let seen: Vec<u64> = first.iter().chain(&rest).map(|e| e.timestamp_us).collect();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        // A bytes bound still lets the first record through.
        let (one, next) = merge(all(), &from, 10, None, 1);
        assert_eq!(one.len(), 1);
        assert_eq!((next.get(ShardId(0)), next.get(ShardId(1))), (20, 10));
    }
}
