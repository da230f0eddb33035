//! Subscriptions that survive their node: when the call breaks (the node is killed, restarts,
//! shuts down, or cuts off a slow reader), the subscription reconnects — to the next node if
//! that one does not answer — and resumes right after the last event it delivered.
//!
//! No gap, no duplicate: a stream subscription resumes at the version after the last one
//! delivered. A `$all` subscription delivers a record's events together but may break inside
//! one; it resumes after the last record it finished and skips the events of the unfinished
//! record it has already delivered (every node holds the same log, and the filter is the
//! same, so the same events come back in the same order). On a node of several shards the
//! events carry a cursor instead (the shards' records interleave as they come, so a resume
//! need not repeat them in order): the subscription hands on a record's events once it has
//! them all, and resumes from the cursor of the last record handed on. `CaughtUp` is
//! delivered once.
//! Reconnecting is bounded like any call: `attempts_max` attempts in a row and `deadline`
//! from the first failure since the last event.

use std::collections::VecDeque;
use std::time::Instant;

use strata_proto::v1 as pb;
use tonic::Code;

use crate::conn::Connections;
use crate::error::{Error, Failed, Retry};

/// What a subscription follows.
#[derive(Debug, Clone)]
pub enum Target {
    /// One stream.
    Stream(String),
    /// The whole log, optionally filtered.
    All(Option<pb::Filter>),
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The first event.
    Beginning,
    /// A stream subscription: this version first.
    Version(u64),
    /// A `$all` subscription: the records after this position.
    AfterPosition(u64),
    /// A `$all` subscription: the record at this position and those after it.
    FromPosition(u64),
    /// A `$all` subscription: from a cursor (`strata_proto::cursor`: a point in each shard's
    /// log; a node of one shard takes it too).
    Cursor(bytes::Bytes),
    /// What is appended from now on. Resuming is exact from the first event delivered; a
    /// stream subscription pins "now" to a version when it starts.
    End,
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The next event.
    Event(pb::RecordedEvent),
    /// Everything that existed at the start has been delivered; live events follow.
    CaughtUp,
}

/// Where to resume.
#[derive(Debug, Clone, Default)]
struct Cursor {
    /// `$all` on several shards: the cursor after the last record handed on.
    merged: Option<bytes::Bytes>,
    /// Stream: the next version to deliver.
    next_version: Option<u64>,
    /// `$all`: the last record delivered whole.
    after: Option<u64>,
    /// `$all`: the record being delivered and how many of its events were.
    current: Option<(u64, usize)>,
}

/// A live subscription (see the module docs). Read it with [`Subscription::next`].
pub struct Subscription {
    conn: Connections,
    target: Target,
    start: Start,
    cursor: Cursor,
    call: Option<tonic::Streaming<pb::SubscribeResponse>>,
    /// The call's own connection ([`Connections::streams_apart`]), held while the call runs.
    link: Option<crate::conn::StreamsApi>,
    /// Events of the current record to drop after a resume.
    skip: usize,
    /// `$all` on several shards: the events of a record not yet received whole.
    partial: Vec<pb::RecordedEvent>,
    /// The shard of the last item handed on.
    last_shard: u32,
    /// Whether more of the last handed-on event's record is to come.
    in_record: bool,
    /// Items received and not yet handed on, with their records' shards and whether more of
    /// their record follows.
    ready: VecDeque<(Item, u32, bool)>,
    caught_up: bool,
    failures: u32,
    failing_since: Option<Instant>,
}

impl Subscription {
    pub(crate) fn new(conn: Connections, target: Target, start: Start) -> Subscription {
        Subscription {
            conn,
            target,
            start,
            cursor: Cursor::default(),
            call: None,
            link: None,
            skip: 0,
            partial: Vec::new(),
            last_shard: 0,
            in_record: false,
            ready: VecDeque::new(),
            caught_up: false,
            failures: 0,
            failing_since: None,
        }
    }

    /// The request that resumes where the subscription is.
    fn request(&self) -> pb::SubscribeRequest {
        use pb::subscribe_request::{Start as S, Target as T};
        let (target, filter) = match &self.target {
            Target::Stream(s) => (T::Stream(s.clone()), None),
            Target::All(f) => (T::All(pb::Empty {}), f.clone()),
        };
        if let Some(cursor) = &self.cursor.merged {
            return pb::SubscribeRequest {
                target: Some(target),
                start: Some(S::Cursor(cursor.clone())),
                filter,
            };
        }
        let start = match (
            self.cursor.next_version,
            self.cursor.after,
            self.start.clone(),
        ) {
            (Some(v), _, _) => Some(S::FromVersion(v)),
            (_, Some(p), _) => Some(S::AfterPosition(p)),
            // Nothing finished yet: the original start (a record being delivered is skipped
            // into by `skip`).
            (_, _, Start::Beginning) => None,
            (_, _, Start::Version(v)) => Some(S::FromVersion(v)),
            (_, _, Start::AfterPosition(p)) => Some(S::AfterPosition(p)),
            (_, _, Start::FromPosition(p)) => Some(S::FromPosition(p)),
            (_, _, Start::Cursor(c)) => Some(S::Cursor(c)),
            (_, _, Start::End) => Some(S::FromEnd(pb::Empty {})),
        };
        pb::SubscribeRequest {
            target: Some(target),
            start,
            filter,
        }
    }

    /// A stream subscription from the end starts at the version after the current one, so a
    /// reconnect before the first event misses nothing.
    async fn pin_end(&mut self) -> Result<(), Error> {
        if let (Target::Stream(stream), Start::End) = (&self.target, &self.start) {
            let request = pb::GetStreamRequest {
                stream: stream.clone(),
                consistency: pb::Consistency::Linearizable as i32,
            };
            let info = self
                .conn
                .call(true, |mut c| {
                    let r = request.clone();
                    async move { c.get_stream(r).await }
                })
                .await?;
            let next = if info.exists {
                info.current_version.saturating_add(1)
            } else {
                0
            };
            self.start = Start::Version(next);
        }
        Ok(())
    }

    /// The next event (or `CaughtUp`); `None` never comes while the subscription is healthy:
    /// it ends with an error when it cannot resume.
    pub async fn next(&mut self) -> Result<Item, Error> {
        loop {
            if let Some((item, shard, more)) = self.ready.pop_front() {
                self.last_shard = shard;
                self.in_record = more;
                return Ok(item);
            }
            let failed = match self.call.as_mut() {
                None => match self.open().await {
                    Ok(()) => continue,
                    Err(f) => f,
                },
                Some(call) => match call.message().await {
                    Ok(Some(pb::SubscribeResponse {
                        item: Some(item),
                        cursor,
                        more_in_record,
                        shard,
                    })) => {
                        if let Some(out) = self.deliver(item, cursor, more_in_record, shard) {
                            return Ok(out);
                        }
                        continue;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => Failed {
                        error: Error::Unavailable("the node ended the subscription".into()),
                        retry: Retry::Unknown,
                    },
                    Err(status) => resumable(Failed::from_status(&status)),
                },
            };
            self.call = None;
            // A record received in part comes again whole after the cursor.
            self.partial.clear();
            self.recover(failed).await?;
        }
    }

    async fn open(&mut self) -> Result<(), Failed> {
        let unavailable = |error: Error| Failed {
            retry: match &error {
                Error::Unavailable(_) | Error::DeadlineExceeded { .. } => Retry::Unknown,
                _ => Retry::No,
            },
            error,
        };
        self.pin_end().await.map_err(unavailable)?;
        let addr = self.conn.target();
        let mut client = self.conn.streams_apart(&addr).map_err(unavailable)?;
        let request = self.request();
        self.skip = if self.cursor.next_version.is_none() {
            self.cursor.current.map_or(0, |(_, n)| n)
        } else {
            0
        };
        let opened = tokio::time::timeout(
            self.conn.config().attempt_timeout,
            client.subscribe(request),
        )
        .await;
        match opened {
            Ok(Ok(r)) => {
                self.call = Some(r.into_inner());
                self.link = Some(client);
                Ok(())
            }
            Ok(Err(status)) => Err(resumable(Failed::from_status(&status))),
            Err(_) => Err(Failed {
                error: Error::Unavailable(format!("{addr} did not open the subscription")),
                retry: Retry::Unknown,
            }),
        }
    }

    /// Moves the target as the failure says and waits; `Err` when the subscription must end.
    async fn recover(&mut self, failed: Failed) -> Result<(), Error> {
        self.failures += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let addr = self.conn.target();
        tracing::debug!(%addr, failures = self.failures, error = %failed.error, "subscription broke; resuming");
        self.conn
            .after_failure(&addr, failed, true, self.failures, since)
            .await
    }

    /// Advances the cursor past one delivered item; `None` for an item not to hand on (a
    /// repeat after a resume, or part of a record on several shards not yet received whole).
    fn deliver(
        &mut self,
        item: pb::subscribe_response::Item,
        cursor: bytes::Bytes,
        more_in_record: bool,
        shard: u32,
    ) -> Option<Item> {
        use pb::subscribe_response::Item as I;
        let event = match item {
            I::CaughtUp(_) if self.caught_up => return None,
            I::CaughtUp(_) => {
                self.caught_up = true;
                self.in_record = false;
                return Some(Item::CaughtUp);
            }
            I::Event(e) => e,
        };
        if !cursor.is_empty() {
            self.partial.push(event);
            if more_in_record {
                return None;
            }
            self.cursor.merged = Some(cursor);
            let events = self.partial.len();
            self.ready.extend(
                self.partial
                    .drain(..)
                    .enumerate()
                    .map(|(i, e)| (Item::Event(e), shard, i + 1 < events)),
            );
            self.failures = 0;
            self.failing_since = None;
            let (item, shard, more) = self.ready.pop_front()?;
            self.last_shard = shard;
            self.in_record = more;
            return Some(item);
        }
        if let Target::Stream(_) = self.target {
            self.cursor.next_version = event.version.checked_add(1);
        } else {
            match self.cursor.current {
                Some((p, n)) if p == event.position => {
                    if self.skip > 0 {
                        self.skip -= 1;
                        return None;
                    }
                    self.cursor.current = Some((p, n + 1));
                }
                previous => {
                    if let Some((p, _)) = previous {
                        self.cursor.after = Some(p);
                    }
                    self.skip = 0;
                    self.cursor.current = Some((event.position, 1));
                }
            }
        }
        self.failures = 0;
        self.failing_since = None;
        self.last_shard = shard;
        self.in_record = more_in_record;
        Some(Item::Event(event))
    }

    /// Whether more events of the last handed-on event's record are still to come (a record's
    /// events are handed on one `next` at a time, and a consumer that must not split a record,
    /// a consumer group's batches, waits for its last). For a stream subscription, more of
    /// that stream's events in the record. Always false from a node that does not say
    /// (`more_in_record`; nodes before 2026-12-07 did not for stream subscriptions).
    pub fn in_record(&self) -> bool {
        self.in_record
    }

    /// The shard whose log holds the record of the last event handed on (its `position` is a
    /// place in that shard's log; 0 on a node of one shard).
    pub fn last_shard(&self) -> u32 {
        self.last_shard
    }
}

/// A subscription also resumes after a node cut it off for reading too slowly.
fn resumable(failed: Failed) -> Failed {
    match &failed.error {
        Error::Server {
            code: Code::ResourceExhausted,
            ..
        } => Failed {
            retry: Retry::Unknown,
            ..failed
        },
        _ => failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn ev(position: u64, version: u64) -> pb::subscribe_response::Item {
        pb::subscribe_response::Item::Event(pb::RecordedEvent {
            stream: "s".into(),
            version,
            position,
            ..Default::default()
        })
    }

    impl Subscription {
        fn deliver_plain(&mut self, item: pb::subscribe_response::Item) -> Option<Item> {
            self.deliver(item, bytes::Bytes::new(), false, 0)
        }
    }

    #[test]
    fn it_says_whether_more_of_the_last_events_record_is_to_come() {
        let mut s = sub(Target::All(None), Start::Beginning);
        assert!(!s.in_record());
        assert!(s.deliver(ev(10, 0), bytes::Bytes::new(), true, 0).is_some());
        assert!(s.in_record());
        assert!(s
            .deliver(ev(10, 1), bytes::Bytes::new(), false, 0)
            .is_some());
        assert!(!s.in_record());
        let caught_up = pb::subscribe_response::Item::CaughtUp(pb::Empty {});
        assert!(s.deliver_plain(caught_up).is_some());
        assert!(!s.in_record());
    }

    #[test]
    fn on_several_shards_a_record_is_handed_on_whole_and_resumes_from_its_cursor() {
        use pb::subscribe_request::Start as S;
        let mut s = sub(Target::All(None), Start::Beginning);
        let c1 = bytes::Bytes::from_static(&[1, 2, 10]);
        assert!(s.deliver(ev(10, 0), c1.clone(), true, 1).is_none());
        assert!(s.deliver(ev(10, 1), c1.clone(), false, 1).is_some());
        assert_eq!(s.last_shard(), 1);
        assert!(s.in_record(), "event 0 of 2 handed on");
        assert!(matches!(s.ready.pop_front(), Some((Item::Event(e), 1, false)) if e.version == 1));
        assert_eq!(s.request().start, Some(S::Cursor(c1.clone())));
        // A record received in part is not handed on; the resume starts after the last whole one.
        let c2 = bytes::Bytes::from_static(&[1, 3, 20]);
        assert!(s.deliver(ev(20, 0), c2.clone(), true, 0).is_none());
        assert_eq!(s.request().start, Some(S::Cursor(c1)));
        s.partial.clear();
        assert!(s.deliver(ev(20, 0), c2.clone(), true, 0).is_none());
        assert!(s.deliver(ev(20, 1), c2.clone(), false, 0).is_some());
        assert_eq!(s.last_shard(), 0);
        assert_eq!(s.request().start, Some(S::Cursor(c2)));
    }

    #[test]
    fn a_subscription_from_a_cursor_resumes_there_until_a_whole_record_came() {
        use pb::subscribe_request::Start as S;
        let c = bytes::Bytes::from_static(&[1, 1, 7]);
        let mut s = sub(Target::All(None), Start::Cursor(c.clone()));
        assert_eq!(s.request().start, Some(S::Cursor(c.clone())));
        // A node of one shard stamps no cursor: positions from then on.
        assert!(s.deliver_plain(ev(10, 0)).is_some());
        assert_eq!(s.request().start, Some(S::Cursor(c)));
        assert!(s.deliver_plain(ev(20, 0)).is_some());
        assert_eq!(s.request().start, Some(S::AfterPosition(10)));
    }

    fn sub(target: Target, start: Start) -> Subscription {
        let conn = Connections::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        Subscription::new(conn, target, start)
    }

    #[test]
    fn an_all_subscription_resumes_after_the_last_whole_record_and_skips_what_it_gave() {
        use pb::subscribe_request::Start as S;
        let mut s = sub(Target::All(None), Start::AfterPosition(5));
        assert_eq!(s.request().start, Some(S::AfterPosition(5)));
        assert!(s.deliver_plain(ev(10, 0)).is_some());
        assert!(s.deliver_plain(ev(10, 1)).is_some());
        // Broke inside record 10: resume from the original start, skip the two given.
        assert_eq!(s.request().start, Some(S::AfterPosition(5)));
        s.skip = 2;
        assert!(s.deliver_plain(ev(10, 0)).is_none());
        assert!(s.deliver_plain(ev(10, 1)).is_none());
        assert!(s.deliver_plain(ev(10, 2)).is_some());
        assert!(s.deliver_plain(ev(20, 0)).is_some());
        assert_eq!(s.request().start, Some(S::AfterPosition(10)));
        assert_eq!(s.cursor.current, Some((20, 1)));
    }

    #[test]
    fn a_stream_subscription_resumes_at_the_next_version_and_caught_up_comes_once() {
        use pb::subscribe_request::Start as S;
        let mut s = sub(Target::Stream("s".into()), Start::Beginning);
        assert_eq!(s.request().start, None);
        assert!(s.deliver_plain(ev(1, 0)).is_some());
        assert!(s.deliver_plain(ev(2, 1)).is_some());
        assert_eq!(s.request().start, Some(S::FromVersion(2)));
        let caught = pb::subscribe_response::Item::CaughtUp(pb::Empty {});
        assert_eq!(s.deliver_plain(caught.clone()), Some(Item::CaughtUp));
        assert_eq!(s.deliver_plain(caught), None);
    }
}
