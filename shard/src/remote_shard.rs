//! A shard this node holds no replica of, as the merged `$all` reads it: its page of records,
//! its subscription's record units and its log's end, each asked of a node holding it by a
//! call restricted to that shard (`strata-shard`, passed on as from a holder: see
//! [`crate::forward`]). The holder answers as a one-shard node would, and marks each
//! subscription event that more of its record follows (`more_in_record`), so records arrive
//! whole here.

use strata_engine::{ReadAllBatch, Record, RecordedEvent};
use strata_proto::routing::ShardId;
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::all_subscription::Feed;
use crate::forward::{self, Peers};
use crate::subscription::{FinalStatus, Unit};

/// Shard `shard` at the node at `addr`.
pub struct RemoteShard<'a> {
    /// The connections to other nodes.
    pub peers: &'a Peers,
    /// A node holding the shard.
    pub addr: String,
    /// The shard.
    pub shard: ShardId,
}

impl RemoteShard<'_> {
    /// Up to `r.limit` records of the shard's log from `r.from_position` (its `$all` page),
    /// with the shard's closed timestamp.
    pub async fn page(&self, r: pb::ReadAllRequest) -> Result<(ReadAllBatch, u64), Status> {
        let request = forward::for_shard_via_holder(r, self.shard.0);
        let page = self
            .peers
            .streams(&self.addr)?
            .read_all(request)
            .await?
            .into_inner();
        let mut records: Vec<Record> = Vec::new();
        for e in page.events {
            let event = engine_event(e)?;
            match records.last_mut() {
                Some(r) if r.position == event.position => r.events.push(event),
                _ => records.push(Record {
                    position: event.position,
                    seq: 0,
                    timestamp_us: event.timestamp_us,
                    events: vec![event],
                    copy: false,
                }),
            }
        }
        let next = page.next_position;
        Ok((ReadAllBatch { records, next }, page.closed_timestamp_us))
    }

    /// The shard's log's end at `consistency` and, with `at`, its first record stamped at or
    /// after it.
    pub async fn log_point(
        &self,
        consistency: i32,
        at_timestamp_us: Option<u64>,
    ) -> Result<(u64, Option<u64>), Status> {
        let request = forward::for_shard_via_holder(
            pb::GetLogRequest {
                consistency,
                at_timestamp_us,
            },
            self.shard.0,
        );
        let log = self.peers.streams(&self.addr)?.get_log(request).await?;
        let log = log.into_inner();
        Ok((log.end_position, log.first_position_at_or_after))
    }

    /// The shard's `$all` subscription from `start`, as a feed of whole records (`buffer`
    /// units at most in flight).
    pub async fn feed(&self, r: pb::SubscribeRequest, buffer: usize) -> Result<Feed, Status> {
        let request = forward::for_shard_via_holder(r, self.shard.0);
        let mut link = self.peers.streams_apart(&self.addr)?;
        let events = link.subscribe(request).await?.into_inner();
        let (tx, units) = mpsc::channel(buffer.max(1));
        let last = FinalStatus::default();
        let status = last.clone();
        tokio::spawn(async move {
            pump(events, tx, status).await;
            // The call's own connection lives as long as the call.
            drop(link);
        });
        Ok(Feed {
            shard: self.shard,
            units,
            last,
        })
    }
}

/// Groups a remote subscription's events into record units until it ends (its status kept in
/// `last`) or the merge goes away.
async fn pump(
    mut events: tonic::Streaming<pb::SubscribeResponse>,
    tx: mpsc::Sender<Unit>,
    last: FinalStatus,
) {
    let mut unit: Unit = Vec::new();
    loop {
        let item = match events.message().await {
            Ok(Some(item)) => item,
            Ok(None) => {
                let ended = Status::unavailable("the holder ended the subscription");
                *strata_engine::sync::lock(&last) = Some(ended);
                return;
            }
            Err(status) => {
                *strata_engine::sync::lock(&last) = Some(status);
                return;
            }
        };
        let whole = !item.more_in_record;
        unit.push(Ok(item));
        if whole && tx.send(std::mem::take(&mut unit)).await.is_err() {
            return;
        }
    }
}

/// A remote page's event as the engine's (the merge's input).
fn engine_event(e: pb::RecordedEvent) -> Result<RecordedEvent, Status> {
    let id = uuid::Uuid::parse_str(&e.id)
        .map_err(|_| Status::internal(format!("a holder answered an event id {:?}", e.id)))?;
    Ok(RecordedEvent {
        stream: e.stream,
        version: e.version,
        id,
        event_type: e.r#type,
        data: e.data,
        metadata: e.metadata,
        position: e.position,
        timestamp_us: e.timestamp_us,
    })
}
