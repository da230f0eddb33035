//! Subscriptions: catch up from the requested point, then follow live, as one loop. The cursor
//! (a stream version, or a log position for `$all`) only moves past what was delivered, and
//! the loop reads again after every change of the log's published end before waiting, so the
//! switch from catch-up to live has no gap and no duplicate.
//!
//! Delivery is by record (a record's events always go out together) through a bounded buffer
//! of `subscription_buffer_records_max` records; the loop reads the log only when there is
//! room, so memory stays bounded however slow the consumer. A consumer that leaves the buffer
//! full for `subscription_stall_timeout` is cut off with `RESOURCE_EXHAUSTED`, and node
//! shutdown ends subscriptions with `UNAVAILABLE`; both statuses come after the events already
//! buffered and name where to resume.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use strata_engine::validate::validate_stream_name;
use strata_engine::{Direction, Position, Reader, RecordedEvent};
use strata_proto::v1 as pb;
use strata_proto::v1::subscribe_request::{Start, Target};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::convert;
use crate::status::{invalid, to_status};

/// Records (or, for a stream, events) read per catch-up step.
const READ_BATCH: usize = 256;

/// What a subscription delivers to the gRPC stream: one record's events at a time.
pub type Unit = Vec<Result<pb::SubscribeResponse, Status>>;
/// The stream handed to tonic.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[derive(Debug, Clone)]
enum Cursor {
    /// The next version of the stream to deliver.
    Stream { name: String, next_version: u64 },
    /// Where to read the log from; `skip` is a record already delivered.
    All {
        from: Position,
        skip: Option<Position>,
    },
}

/// A validated subscription request.
#[derive(Debug, Clone)]
pub struct Subscription {
    cursor: Cursor,
    filter: Option<pb::Filter>,
}

impl Subscription {
    /// Checks a request and fixes its starting point.
    /// `replicated`: other replicas may be further along (a position past this node's end is
    /// then UNAVAILABLE, to retry; on a single node it is the caller's error).
    pub fn from_request(
        reader: &Reader,
        r: pb::SubscribeRequest,
        replicated: bool,
    ) -> Result<Subscription, Status> {
        convert::check_filter(r.filter.as_ref())?;
        let cursor = match r.target {
            None => return Err(invalid("target", "set `stream` or `all`")),
            Some(Target::Stream(name)) => {
                validate_stream_name("stream", &name, reader.limits()).map_err(to_status)?;
                let next_version =
                    match r.start {
                        None => 0,
                        Some(Start::FromVersion(v)) => v,
                        Some(Start::FromEnd(_)) => reader
                            .stream_version(&name)
                            .map_err(to_status)?
                            .map_or(0, |v| v + 1),
                        Some(Start::AfterPosition(_)) => return Err(invalid(
                            "after_position",
                            "is for $all subscriptions; a stream subscription starts from_version",
                        )),
                        Some(Start::FromPosition(_)) => return Err(invalid(
                            "from_position",
                            "is for $all subscriptions; a stream subscription starts from_version",
                        )),
                        Some(Start::Cursor(_)) => return Err(invalid(
                            "cursor",
                            "is for $all subscriptions; a stream subscription starts from_version",
                        )),
                    };
                Cursor::Stream { name, next_version }
            }
            Some(Target::All(_)) => match r.start {
                None | Some(Start::AfterPosition(0)) => Cursor::All {
                    from: 0,
                    skip: None,
                },
                // Retention reclaimed it (and the records around it were dead): continue
                // with the next record still there.
                Some(Start::AfterPosition(p)) if reader.is_reclaimed(p) => Cursor::All {
                    from: p,
                    skip: None,
                },
                // A subscriber resuming here after another replica delivered `p`: this node has
                // not applied that far yet. Not the caller's error: another node, or this one
                // a moment later, can serve it.
                Some(Start::AfterPosition(p)) if replicated && p >= reader.end() => {
                    return Err(to_status(strata_engine::Error::Unavailable(format!(
                        "after_position {p} is beyond this node's log (it ends at {}): it has not replicated that far yet; retry, or ask another node",
                        reader.end()
                    ))))
                }
                Some(Start::AfterPosition(p)) => {
                    if !reader.is_record_position(p).map_err(to_status)? {
                        return Err(invalid(
                            "after_position",
                            format!("{p} is not the position of a record in this log"),
                        ));
                    }
                    Cursor::All {
                        from: p,
                        skip: Some(p),
                    }
                }
                Some(Start::FromPosition(p)) if replicated && p > reader.end() => {
                    return Err(to_status(strata_engine::Error::Unavailable(format!(
                        "from_position {p} is beyond this node's log (it ends at {}): it has not replicated that far yet; retry, or ask another node",
                        reader.end()
                    ))))
                }
                Some(Start::FromPosition(p)) => {
                    let here = p == 0
                        || p == reader.end()
                        || reader.is_reclaimed(p)
                        || reader.is_record_position(p).map_err(to_status)?;
                    if !here {
                        return Err(invalid(
                            "from_position",
                            format!("{p} is not the position of a record in this log"),
                        ));
                    }
                    Cursor::All {
                        from: p,
                        skip: None,
                    }
                }
                Some(Start::FromEnd(_)) => Cursor::All {
                    from: reader.end(),
                    skip: None,
                },
                Some(Start::FromVersion(_)) => {
                    return Err(invalid(
                        "from_version",
                        "is for stream subscriptions; $all starts after_position",
                    ))
                }
                // The router turns a cursor into this shard's position before it comes here.
                Some(Start::Cursor(_)) => {
                    return Err(invalid("cursor", "is read by the node's router, not a shard"))
                }
            },
        };
        Ok(Subscription {
            cursor,
            filter: r.filter,
        })
    }

    /// Where a `$all` subscription starts reading (`None` for a stream subscription).
    pub fn all_from(&self) -> Option<Position> {
        match &self.cursor {
            Cursor::All { from, .. } => Some(*from),
            Cursor::Stream { .. } => None,
        }
    }

    fn resume_hint(&self) -> String {
        match &self.cursor {
            Cursor::Stream { next_version, .. } => format!("resume from_version {next_version}"),
            Cursor::All { from, skip } => {
                format!("resume after_position {}", skip.unwrap_or(*from))
            }
        }
    }
}

/// Where a subscription leaves the status that ends it, delivered after the buffered events.
pub type FinalStatus = Arc<Mutex<Option<Status>>>;

/// Flattens delivered units into the event stream tonic sends, ending with the final status.
pub fn event_stream(rx: mpsc::Receiver<Unit>, last: FinalStatus) -> EventStream {
    Box::pin(Units {
        rx,
        pending: VecDeque::new(),
        last,
    })
}

struct Units {
    rx: mpsc::Receiver<Unit>,
    pending: VecDeque<Result<pb::SubscribeResponse, Status>>,
    last: FinalStatus,
}

impl Stream for Units {
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(mut unit)) => {
                    mark_record(&mut unit);
                    self.pending.extend(unit)
                }
                Poll::Ready(None) => {
                    let last = strata_engine::sync::lock(&self.last).take();
                    return Poll::Ready(last.map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Marks each event of a record's unit whether more of the record follows
/// (`more_in_record`), so a client can tell a record it has received whole. An event already
/// marked stays marked (a part of a stream's record larger than a read, see `stream_units`).
fn mark_record(unit: &mut Unit) {
    let events = unit
        .iter()
        .filter(|i| matches!(i, Ok(r) if matches!(r.item, Some(pb::subscribe_response::Item::Event(_)))))
        .count();
    let mut seen = 0;
    for r in unit.iter_mut().flatten() {
        if let Some(pb::subscribe_response::Item::Event(_)) = r.item {
            seen += 1;
            r.more_in_record |= seen < events;
        }
    }
}

fn event(e: RecordedEvent) -> Result<pb::SubscribeResponse, Status> {
    Ok(pb::SubscribeResponse {
        item: Some(pb::subscribe_response::Item::Event(convert::recorded(e))),
        ..Default::default()
    })
}

/// One unit of a read step: its events, the cursor after it, and whether its record goes on
/// past it (a part of a stream's record larger than a read).
type Step = (Vec<RecordedEvent>, Cursor, bool);

/// One read step: the units to deliver and the cursor after each.
async fn step(reader: &Reader, sub: &Subscription, now_us: u64) -> Result<Vec<Step>, Status> {
    let reader = reader.clone();
    let cursor = sub.cursor.clone();
    let filter = sub.filter.clone();
    let read = crate::blocking::run(move || -> strata_engine::Result<Vec<Step>> {
        match cursor {
            Cursor::Stream { name, next_version } => {
                // As a read would: versions below the stream's floor (its metadata) are
                // skipped; a tombstone ends the subscription. The event after the batch
                // says whether the batch's last record goes on past it: one event more
                // than a batch, or, when the byte bound cut the page, a read of one.
                let read = |from: u64, limit: usize| {
                    reader.read_stream_visible(
                        &name,
                        Some(from),
                        Direction::Forwards,
                        limit,
                        None,
                        now_us,
                    )
                };
                let page = read(next_version, READ_BATCH + 1)?;
                let mut events = page.events;
                let beyond = match events.last() {
                    Some(_) if events.len() > READ_BATCH => events.pop(),
                    Some(last) if page.cut => read(last.version + 1, 1)?.events.pop(),
                    _ => None,
                };
                Ok(stream_units(&name, events, beyond, filter.as_ref()))
            }
            Cursor::All { from, skip } => {
                let batch = reader.read_all(from, READ_BATCH)?;
                let count = batch.records.len();
                Ok(batch
                    .records
                    .into_iter()
                    .enumerate()
                    .filter(|(_, r)| Some(r.position) != skip)
                    .map(|(i, r)| {
                        // After the last record, continue from where the read ended.
                        let next = if i + 1 == count {
                            Cursor::All {
                                from: batch.next,
                                skip: None,
                            }
                        } else {
                            Cursor::All {
                                from: r.position,
                                skip: Some(r.position),
                            }
                        };
                        (convert::all_events(r, filter.as_ref()), next, false)
                    })
                    .collect())
            }
        }
    });
    read.await
        .map_err(|e| Status::internal(format!("subscription read failed: {e}")))?
        .map_err(to_status)
}

/// A stream's events as units of one record each (its events at one position), with the
/// cursor after each, so each event can say whether more of its record follows. A last record
/// that goes on past the read (`beyond`, the next event, is at its position) is left for the
/// next step, unless it is all that was read: a record with more of the stream's events than
/// a read takes is delivered in parts, each of its events marked as more to come.
fn stream_units(
    name: &str,
    events: Vec<RecordedEvent>,
    beyond: Option<RecordedEvent>,
    filter: Option<&pb::Filter>,
) -> Vec<Step> {
    let mut units: Vec<Vec<RecordedEvent>> = Vec::new();
    for e in events {
        match units.last_mut() {
            Some(unit) if unit.last().map(|l| l.position) == Some(e.position) => unit.push(e),
            _ => units.push(vec![e]),
        }
    }
    let goes_on = match (units.last().and_then(|u| u.last()), &beyond) {
        (Some(last), Some(next)) => last.position == next.position,
        _ => false,
    };
    // Left for the next step, or (all that was read) delivered as a part.
    let part = goes_on && units.len() == 1;
    if goes_on && !part {
        units.pop();
    }
    units
        .into_iter()
        .map(|unit| {
            let next_version = unit.last().map_or(0, |e| e.version + 1);
            let kept = unit
                .into_iter()
                .filter(|e| convert::passes(filter, e))
                .collect();
            let next = Cursor::Stream {
                name: name.to_string(),
                next_version,
            };
            (kept, next, part)
        })
        .collect()
}

/// Where a replica's subscriptions get a fresh reader when a snapshot install replaces its
/// store (the old reader would never see another record).
#[derive(Clone)]
pub struct ReaderSource {
    /// Changes when the store is replaced.
    pub generation: watch::Receiver<u64>,
    /// A reader of the live store.
    pub fresh: Arc<dyn Fn() -> Reader + Send + Sync>,
}

impl std::fmt::Debug for ReaderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSource")
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

async fn replaced(source: &mut Option<ReaderSource>) {
    match source {
        Some(s) => {
            if s.generation.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// How a subscription is delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The bounded buffer towards the client.
    pub tx: mpsc::Sender<Unit>,
    /// Where the ending status goes.
    pub last: FinalStatus,
    /// Turns true when the node shuts down.
    pub stop: watch::Receiver<bool>,
    /// How long the buffer may stay full before the consumer is cut off.
    pub stall_timeout: Duration,
    /// On a replica: where to get a fresh reader when the store is replaced.
    pub source: Option<ReaderSource>,
    /// For `$all`: holds retention below what is still to be delivered.
    pub pin: Option<Arc<crate::retention::Pin>>,
    /// "Now" for stream metadata's max age.
    pub clock: Arc<dyn crate::clock::WallClock>,
}

impl Delivery {
    fn end(&self, status: Status) {
        *strata_engine::sync::lock(&self.last) = Some(status);
    }

    /// Puts `unit` in the buffer towards the client, waiting while it is full; ends the
    /// subscription (`Err`) when the node or shard stops, the client goes away, or the buffer
    /// stays full for `stall_timeout`. Every wait of the loop goes through here or watches
    /// `stop` itself: a removed shard's store is released only once its loops have ended.
    async fn send(&self, unit: Unit, sub: &Subscription) -> Result<(), Ended> {
        let mut stop = self.stop.clone();
        let waited = tokio::select! {
            waited = tokio::time::timeout(self.stall_timeout, self.tx.reserve()) => waited,
            _ = stop.wait_for(|stopping| *stopping) => {
                self.end(Status::unavailable(format!("the node is shutting down; {}", sub.resume_hint())));
                return Err(Ended);
            }
        };
        match waited {
            Ok(Ok(permit)) => {
                permit.send(unit);
                Ok(())
            }
            // The client went away.
            Ok(Err(_)) => Err(Ended),
            Err(_) => {
                self.end(Status::resource_exhausted(format!(
                    "subscriber too slow: its buffer of {} records (subscription_buffer_records_max) stayed full for {} ms (subscription_stall_timeout); {}",
                    self.tx.max_capacity(),
                    self.stall_timeout.as_millis(),
                    sub.resume_hint()
                )));
                Err(Ended)
            }
        }
    }
}

/// The subscription ended (its status, if any, is in [`Delivery::last`]).
struct Ended;

/// Delivers the subscription until the client goes away, the node stops, the log fails, or
/// the client stalls.
pub async fn run(reader: Reader, mut sub: Subscription, mut delivery: Delivery) {
    let mut reader = reader;
    let mut end = reader.watch_end();
    let mut caught_up = false;
    loop {
        if let Some(source) = delivery.source.as_mut() {
            if source.generation.has_changed().unwrap_or(false) {
                source.generation.borrow_and_update();
                reader = (source.fresh)();
                end = reader.watch_end();
            }
        }
        if *delivery.stop.borrow() {
            delivery.end(Status::unavailable(format!(
                "the node is shutting down; {}",
                sub.resume_hint()
            )));
            return;
        }
        let seen_end = *end.borrow_and_update();
        let units = match step(&reader, &sub, delivery.clock.now_us()).await {
            Ok(units) => units,
            Err(status) => {
                delivery.end(status);
                return;
            }
        };
        if units.is_empty() {
            if !caught_up {
                let item = Some(pb::subscribe_response::Item::CaughtUp(pb::Empty {}));
                let unit = vec![Ok(pb::SubscribeResponse {
                    item,
                    ..Default::default()
                })];
                if delivery.send(unit, &sub).await.is_err() {
                    return;
                }
                caught_up = true;
            }
            if !wait_for_more(&mut end, &mut delivery).await {
                return;
            }
            continue;
        }
        for (events, next, goes_on) in units {
            if !events.is_empty() {
                let mut unit: Unit = events.into_iter().map(event).collect();
                if goes_on {
                    for r in unit.iter_mut().flatten() {
                        r.more_in_record = true;
                    }
                }
                if delivery.send(unit, &sub).await.is_err() {
                    return;
                }
            }
            if let (Some(pin), Cursor::All { from, .. }) = (&delivery.pin, &next) {
                pin.advance(*from);
            }
            sub.cursor = next;
        }
        // Live, and this read reached the end seen before it: wait for the log to grow rather
        // than read once more to find nothing (a read is a trip to the blocking pool, and
        // every subscription makes it on every append). An end that moved during the read
        // wakes the wait at once.
        if caught_up
            && matches!(sub.cursor, Cursor::All { from, skip: None } if from >= seen_end)
            && !wait_for_more(&mut end, &mut delivery).await
        {
            return;
        }
    }
}

/// Waits until the log's end moves, the node begins to stop or the shard's reader is replaced
/// (`true`: look again), or the subscriber went away (`false`).
async fn wait_for_more(end: &mut watch::Receiver<Position>, delivery: &mut Delivery) -> bool {
    let mut source = delivery.source.clone();
    tokio::select! {
        changed = end.changed() => changed.is_ok(),
        _ = delivery.stop.changed() => true,
        _ = delivery.tx.closed() => false,
        _ = replaced(&mut source) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::SystemWallClock;
    use strata_engine::{Engine, EngineConfig};

    /// Each event says whether more of its record follows; a lone `caught_up` says nothing.
    #[tokio::test]
    async fn the_event_stream_marks_each_events_record_as_more_to_come_or_ended() {
        use tokio_stream::StreamExt;
        let e = |v: u64| {
            Ok(pb::SubscribeResponse {
                item: Some(pb::subscribe_response::Item::Event(pb::RecordedEvent {
                    version: v,
                    ..Default::default()
                })),
                ..Default::default()
            })
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(vec![e(0), e(1), e(2)]).await.unwrap();
        tx.send(vec![e(3)]).await.unwrap();
        let caught_up = pb::SubscribeResponse {
            item: Some(pb::subscribe_response::Item::CaughtUp(pb::Empty {})),
            ..Default::default()
        };
        tx.send(vec![Ok(caught_up)]).await.unwrap();
        drop(tx);
        let marks: Vec<bool> = event_stream(rx, FinalStatus::default())
            .map(|r| r.unwrap().more_in_record)
            .collect()
            .await;
        assert_eq!(marks, [true, true, false, false, false]);
    }

    /// A stream subscription says where each record of the stream ends, also for a record
    /// with more of the stream's events than one read takes (300 > `READ_BATCH`), for records
    /// cut by a read's end, and for pages the byte bound cut (`read_bytes_max` of 2 KiB, events
    /// of 100 bytes): each event is marked as more to come but the last of its record, so a
    /// stream's subscriber can hold an atomic append whole; a system stream named by a stream
    /// subscription is not hidden as in `$all` (it was: a subscription to `$group:g/retry`
    /// delivered nothing while a read showed its events).
    #[tokio::test]
    async fn a_stream_subscription_marks_where_each_of_its_records_ends() {
        let small_pages = {
            let mut c = EngineConfig::default();
            c.limits.read_bytes_max = 2048;
            c
        };
        for (stream, config, data_bytes) in [
            ("s", EngineConfig::default(), 2),
            ("$group:g/retry", small_pages, 100),
        ] {
            stream_records_end_where_marked(stream, config, data_bytes).await;
        }
    }

    async fn stream_records_end_where_marked(
        stream: &str,
        config: EngineConfig,
        data_bytes: usize,
    ) {
        use strata_engine::{AppendRequest, ExpectedVersion, NewEvent};
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), config).unwrap();
        let new = |n: usize| -> Vec<NewEvent> {
            (0..n)
                .map(|_| NewEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: "T".into(),
                    data: bytes::Bytes::from(vec![b'1'; data_bytes]),
                    metadata: bytes::Bytes::new(),
                })
                .collect()
        };
        // Records of s: 300 events, 2, 1 (then another stream's record), then 150 of 2: one
        // straddles the second read's end (256 + 44 + 2 + 1 + 2 × 104 ...).
        let mut sizes = vec![300, 2, 1];
        sizes.extend(std::iter::repeat_n(2, 150));
        for (i, n) in sizes.iter().enumerate() {
            let r = AppendRequest::single(stream, ExpectedVersion::Any, new(*n), 0);
            engine.append(r).await.unwrap();
            if i == 2 {
                let other = AppendRequest::single("other", ExpectedVersion::Any, new(3), 0);
                engine.append(other).await.unwrap();
            }
        }
        let last_of_record: std::collections::BTreeSet<u64> = sizes
            .iter()
            .scan(0u64, |end, n| {
                *end += *n as u64;
                Some(*end - 1)
            })
            .collect();
        let total: u64 = sizes.iter().map(|n| *n as u64).sum();
        let request = pb::SubscribeRequest {
            target: Some(Target::Stream(stream.into())),
            start: None,
            filter: None,
        };
        let reader = engine.reader().clone();
        let sub = Subscription::from_request(&reader, request, false).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let (delivery, _stop) = delivery_to(tx, Duration::from_secs(3600));
        let running = tokio::spawn(run(reader, sub, delivery));
        let mut events = event_stream(rx, FinalStatus::default());
        let mut versions = Vec::new();
        while (versions.len() as u64) < total {
            let next = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
            let Ok(Some(Ok(r))) = next else {
                panic!(
                    "{stream}: {} of {total} events, then nothing",
                    versions.len()
                );
            };
            if let Some(pb::subscribe_response::Item::Event(e)) = r.item {
                assert_eq!(
                    r.more_in_record,
                    !last_of_record.contains(&e.version),
                    "version {} ({data_bytes}-byte events)",
                    e.version
                );
                versions.push(e.version);
            }
        }
        assert_eq!(versions, (0..total).collect::<Vec<_>>());
        running.abort();
    }

    /// A `$all` subscription filtered to some consumer-group partitions delivers exactly
    /// their streams' events, in log order, each record's last passing event marked as its
    /// end (records here mix streams of held and other partitions, so a record's last event
    /// is often not the last delivered); a malformed partition filter is refused before
    /// anything is read, naming what is wrong.
    #[tokio::test]
    async fn an_all_subscription_to_some_partitions_delivers_theirs_with_record_ends() {
        use strata_engine::{AppendRequest, ExpectedVersion, NewEvent, StreamAppend};
        use strata_proto::groups::partition_of;
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), EngineConfig::default()).unwrap();
        let part = |stream: String, n: usize| StreamAppend {
            stream,
            expected: ExpectedVersion::Any,
            events: (0..n)
                .map(|_| NewEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: "T".into(),
                    data: bytes::Bytes::from_static(b"{}"),
                    metadata: bytes::Bytes::new(),
                })
                .collect(),
        };
        // 60 records of three streams each (1 to 3 events a stream), and the (stream,
        // record) of every event in log order.
        let mut log = Vec::new();
        for r in 0..60usize {
            let streams: Vec<StreamAppend> = (0..3)
                .map(|k| part(format!("s-{}", (r * 7 + k * 13) % 40), 1 + (r + k) % 3))
                .collect();
            for s in &streams {
                log.extend(s.events.iter().map(|_| (s.stream.clone(), r)));
            }
            let request = AppendRequest {
                streams,
                conditions: Vec::new(),
                timestamp_us: 0,
                copy: false,
            };
            engine.append(request).await.unwrap();
        }
        let held = vec![1, 2, 6];
        let expected: Vec<(String, usize)> = log
            .into_iter()
            .filter(|(s, _)| held.contains(&partition_of(s, 8)))
            .collect();
        assert!(expected.len() > 20, "a test that filters something in");
        let filter = |count, held| pb::Filter {
            stream_prefix: "s-".into(),
            event_types: Vec::new(),
            partitions: Some(pb::Partitions { count, held }),
        };
        let request = |filter| pb::SubscribeRequest {
            target: Some(Target::All(pb::Empty {})),
            start: None,
            filter: Some(filter),
        };
        let reader = engine.reader().clone();
        for (bad, says) in [
            (filter(0, vec![]), "count must be 1 to 1024, not 0"),
            (filter(8, vec![2, 1]), "increasing order"),
            (filter(8, vec![8]), "partition 8"),
        ] {
            let e = Subscription::from_request(&reader, request(bad), false).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains("`filter.partitions`") && e.message().contains(says),
                "{e:?}"
            );
        }
        let sub = Subscription::from_request(&reader, request(filter(8, held)), false).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let (delivery, _stop) = delivery_to(tx, Duration::from_secs(3600));
        let running = tokio::spawn(run(reader, sub, delivery));
        let mut events = event_stream(rx, FinalStatus::default());
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
            let Ok(Some(Ok(r))) = next else {
                panic!("{} of {} events, then nothing", got.len(), expected.len())
            };
            match r.item {
                Some(pb::subscribe_response::Item::Event(e)) => got.push((e, r.more_in_record)),
                Some(pb::subscribe_response::Item::CaughtUp(_)) => break,
                _ => {}
            }
        }
        running.abort();
        let streams: Vec<&str> = got.iter().map(|(e, _)| e.stream.as_str()).collect();
        let wanted: Vec<&str> = expected.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(streams, wanted);
        for (i, ((e, more), (_, record))) in got.iter().zip(&expected).enumerate() {
            let last = expected.get(i + 1).is_none_or(|(_, next)| next != record);
            assert_eq!(*more, !last, "event {i} ({}, record {record})", e.stream);
        }
    }

    /// A subscription on an empty log whose buffer (one unit) a consumer filled and does not
    /// read: its loop waits to say it caught up.
    fn stuck(
        engine: &Engine,
        stall_timeout: Duration,
    ) -> (
        Delivery,
        Subscription,
        mpsc::Receiver<Unit>,
        watch::Sender<bool>,
    ) {
        let reader = engine.reader().clone();
        let request = pb::SubscribeRequest {
            target: Some(Target::All(pb::Empty {})),
            start: None,
            filter: None,
        };
        let sub = Subscription::from_request(&reader, request, false).unwrap();
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Vec::new()).unwrap();
        let (delivery, stop_tx) = delivery_to(tx, stall_timeout);
        (delivery, sub, rx, stop_tx)
    }

    /// A delivery into `tx` from a local reader, and the stop it watches.
    fn delivery_to(
        tx: mpsc::Sender<Unit>,
        stall_timeout: Duration,
    ) -> (Delivery, watch::Sender<bool>) {
        let (stop_tx, stop) = watch::channel(false);
        let delivery = Delivery {
            tx,
            last: FinalStatus::default(),
            stop,
            stall_timeout,
            source: None,
            pin: None,
            clock: Arc::new(SystemWallClock::default()),
        };
        (delivery, stop_tx)
    }

    /// A loop blocked on a full buffer (even to say it caught up) ends when its shard stops:
    /// a removed shard's store is released only once its subscriptions have ended.
    #[tokio::test]
    async fn a_loop_waiting_on_a_full_buffer_ends_when_the_shard_stops() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), EngineConfig::default()).unwrap();
        let (delivery, sub, _rx, stop) = stuck(&engine, Duration::from_secs(3600));
        let last = delivery.last.clone();
        let running = tokio::spawn(run(engine.reader().clone(), sub, delivery));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!running.is_finished(), "waits while the buffer is full");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the loop ends on stop")
            .unwrap();
        let status = last.lock().unwrap().clone().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("shutting down"), "{status:?}");
    }

    /// The same wait is cut off after the stall timeout, naming the limits.
    #[tokio::test]
    async fn a_loop_waiting_on_a_full_buffer_is_cut_off_after_the_stall_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), EngineConfig::default()).unwrap();
        let (delivery, sub, _rx, _stop) = stuck(&engine, Duration::from_millis(50));
        let last = delivery.last.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            run(engine.reader().clone(), sub, delivery),
        )
        .await
        .expect("the loop gives up on a stalled consumer");
        let status = last.lock().unwrap().clone().unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("subscription_stall_timeout"),
            "{status:?}"
        );
    }
}
