//! A `$all` subscription over several shards: one subscription per shard (each catching up,
//! then following live, exactly as on a one-shard node), merged: by record timestamp while
//! any shard is catching up, then as their records come.
//!
//! ```text
//!   shard 0 loop ──units (a record's events)──┐
//!   shard 1 loop ──units──────────────────────┼──▶ merge: stamp each event with the cursor
//!   …                                         │    after its record and `more_in_record`;
//!   shard n loop ──units──────────────────────┘    caught_up once all shards are ──▶ client
//! ```
//!
//! Each shard's records keep their log's order. While any shard is catching up, the merge
//! holds at most one record per shard and passes on the earliest by timestamp once every
//! shard still catching up has one (a shard caught up is not waited for), so backlogs come in
//! timestamp order — and a stream moved between shards comes in its order, its events on the
//! new shard being stamped after those on the old. Once all have caught up, records go as
//! they come (a record of a lagging shard can then come after a later one of another). The
//! cursor stamped on a record's events holds, for every shard, the last record delivered from
//! it (or where it started): a client resuming from the cursor of the last record it received
//! whole misses and repeats nothing. Flow control is each shard loop's own: the merge forwards
//! one unit at a time into a buffer of the same bound, so a slow client fills the shard
//! buffers and is cut off as on one shard. When any shard's loop ends (shutdown, a stalled
//! client, an error), the merged subscription ends with that status, after what it buffered.

use futures_util::stream::StreamExt;
use strata_proto::routing::ShardId;
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::merge::Cursor;
use crate::subscription::{event_stream, EventStream, FinalStatus, Unit};

/// One shard's subscription loop, as `StreamsService::open_subscription` started it.
#[derive(Debug)]
pub struct Feed {
    /// The shard.
    pub shard: ShardId,
    /// Its record units.
    pub units: mpsc::Receiver<Unit>,
    /// The status it ends with.
    pub last: FinalStatus,
}

/// Merges the feeds, starting from `cursor`, into the stream a client reads.
pub fn start(feeds: Vec<Feed>, cursor: Cursor, buffer: usize) -> EventStream {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let last = FinalStatus::default();
    tokio::spawn(run(feeds, cursor, tx, last.clone()));
    event_stream(rx, last)
}

/// One shard's subscription as a node merging it elsewhere takes it (see
/// `crate::remote_shard`): its events, each marked whether more of its record follows, so the
/// merging node receives records whole.
pub fn whole_records(units: mpsc::Receiver<Unit>, last: FinalStatus) -> EventStream {
    let marked = ReceiverStream::new(units).map(|mut unit| {
        let events = unit.iter().filter(|i| i.is_ok()).count();
        for (i, item) in unit.iter_mut().flatten().enumerate() {
            item.more_in_record = i + 1 < events;
        }
        unit
    });
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut marked = std::pin::pin!(marked);
        while let Some(unit) = marked.next().await {
            if tx.send(unit).await.is_err() {
                return;
            }
        }
    });
    event_stream(rx, last)
}

fn is_caught_up(unit: &Unit) -> bool {
    matches!(
        unit.as_slice(),
        [Ok(pb::SubscribeResponse {
            item: Some(pb::subscribe_response::Item::CaughtUp(_)),
            ..
        })]
    )
}

/// Stamps a record's events with the cursor after it; returns the record's position.
fn stamp(unit: &mut Unit, cursor: &mut Cursor, shard: ShardId) {
    let position = unit.iter().find_map(|item| match item {
        Ok(pb::SubscribeResponse {
            item: Some(pb::subscribe_response::Item::Event(e)),
            ..
        }) => Some(e.position),
        _ => None,
    });
    let Some(position) = position else {
        return;
    };
    cursor.set_after(shard, position);
    let bytes: bytes::Bytes = cursor.encode().into();
    let events = unit.iter().filter(|i| i.is_ok()).count();
    for (i, item) in unit.iter_mut().flatten().enumerate() {
        item.cursor = bytes.clone();
        item.more_in_record = i + 1 < events;
        item.shard = shard.0;
    }
}

/// A record unit's timestamp (its events share their record's).
fn timestamp(unit: &Unit) -> u64 {
    unit.iter()
        .find_map(|item| match item {
            Ok(pb::SubscribeResponse {
                item: Some(pb::subscribe_response::Item::Event(e)),
                ..
            }) => Some(e.timestamp_us),
            _ => None,
        })
        .unwrap_or(0)
}

/// Which shard's head record goes next, if one may: the earliest by timestamp (ties by shard),
/// and while any shard is still catching up only once every such shard has a head, so the
/// backlogs merge in timestamp order. `heads[i]`: shard i's head record's timestamp;
/// `catching_up[i]`: shard i has not caught up yet.
fn pick(heads: &[Option<u64>], catching_up: &[bool]) -> Option<usize> {
    let waiting = heads
        .iter()
        .zip(catching_up)
        .any(|(head, catching)| head.is_none() && *catching);
    if waiting {
        return None;
    }
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, head)| head.map(|t| (t, i)))
        .min()
        .map(|(_, i)| i)
}

async fn run(feeds: Vec<Feed>, mut cursor: Cursor, tx: mpsc::Sender<Unit>, last: FinalStatus) {
    let shards = feeds.len();
    let (mut ids, mut lasts, mut units) = (Vec::new(), Vec::new(), Vec::new());
    for feed in feeds {
        ids.push(feed.shard);
        lasts.push(feed.last);
        units.push(feed.units);
    }
    let mut heads: Vec<Option<Unit>> = vec![None; shards];
    let mut catching_up = vec![true; shards];
    loop {
        let stamps: Vec<Option<u64>> = heads.iter().map(|h| h.as_ref().map(timestamp)).collect();
        if let Some(i) = pick(&stamps, &catching_up) {
            let Some(mut unit) = heads[i].take() else {
                continue;
            };
            stamp(&mut unit, &mut cursor, ids[i]);
            if tx.send(unit).await.is_err() {
                // The client went away; dropping the feeds ends the shards' loops.
                return;
            }
            continue;
        }
        // Wait for the next unit of any shard without a head (each shard holds at most one
        // here, so flow control stays each shard loop's own).
        let wanted = units
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| heads[*i].is_none())
            .map(|(i, rx)| Box::pin(async move { (i, rx.recv().await) }))
            .collect::<Vec<_>>();
        if wanted.is_empty() {
            // No shard (a head everywhere is always picked).
            *strata_engine::sync::lock(&last) = Some(Status::internal("no shard to subscribe to"));
            return;
        }
        let ((i, unit), _, _) = futures_util::future::select_all(wanted).await;
        let Some(unit) = unit else {
            // This shard's loop ended: so does the merged subscription.
            end(ids[i], &lasts[i], &last);
            return;
        };
        if is_caught_up(&unit) {
            catching_up[i] = false;
            if catching_up.iter().all(|c| !c) && tx.send(unit).await.is_err() {
                return;
            }
            continue;
        }
        heads[i] = Some(unit);
    }
}

/// Records why shard `shard`'s loop ended (its `status`) as the merged subscription's end.
fn end(shard: ShardId, status: &FinalStatus, last: &FinalStatus) {
    let status = strata_engine::sync::lock(status).take();
    let status = status.map_or_else(
        || Status::unavailable(format!("the subscription of {shard} ended")),
        |s| {
            Status::new(
                s.code(),
                format!(
                    "{shard}: {}; resume from the cursor of the last whole record",
                    s.message()
                ),
            )
        },
    );
    *strata_engine::sync::lock(last) = Some(status);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::merge::Point;

    fn ev(position: u64) -> Result<pb::SubscribeResponse, Status> {
        Ok(pb::SubscribeResponse {
            item: Some(pb::subscribe_response::Item::Event(pb::RecordedEvent {
                position,
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    #[test]
    fn backlogs_merge_by_timestamp_and_live_records_as_they_come() {
        // Shard 1 still catching up without a head: nothing goes.
        assert_eq!(pick(&[Some(5), None], &[false, true]), None);
        // Every catching-up shard has a head: the earliest, ties to the lower shard.
        assert_eq!(pick(&[Some(9), Some(5)], &[true, true]), Some(1));
        assert_eq!(pick(&[Some(5), Some(5)], &[true, true]), Some(0));
        // A live shard without a head is not waited for.
        assert_eq!(pick(&[None, Some(7)], &[false, true]), Some(1));
        assert_eq!(pick(&[None, None], &[false, false]), None);
    }

    #[test]
    fn every_event_of_a_record_carries_the_cursor_after_it_and_all_but_the_last_say_more() {
        let mut cursor = Cursor::default();
        cursor.set(ShardId(0), 7);
        let mut unit = vec![ev(40), ev(40), ev(40)];
        stamp(&mut unit, &mut cursor, ShardId(1));
        assert_eq!(cursor.point(ShardId(1)), Point::After(40));
        assert_eq!(cursor.point(ShardId(0)), Point::From(7));
        let more: Vec<bool> = unit
            .iter()
            .map(|u| u.as_ref().unwrap().more_in_record)
            .collect();
        assert_eq!(more, vec![true, true, false]);
        let bytes = cursor.encode();
        assert!(unit
            .iter()
            .all(|u| u.as_ref().unwrap().cursor.as_ref() == bytes.as_slice()));
    }
}
