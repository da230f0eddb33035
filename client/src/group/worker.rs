//! A worker of a consumer group: heart-beats, takes the partitions the live members' even,
//! rendezvous-placed shares give it ([`p::assignment`]), reads their events in log order and hands them out in batches of one
//! partition; commits positions (at-least-once), or commits them in the same atomic append as
//! its own output (exactly-once inside Strata); parks events it gives up on.
//!
//! Every `heartbeat_interval` (checked whenever the worker is called) it appends a heartbeat,
//! reads who is live (a heartbeat within `session_timeout` of the newest, by the node's
//! timestamps), checks that the partitions it holds are still its own (their stream's version
//! is the one it last wrote), releases those no longer assigned to it and claims those newly
//! assigned once their previous owner released them or went silent. A worker that was not
//! called for `session_timeout` (killed, paused, or stuck in a handler) has lost its lease: it
//! re-checks before handing out anything more, and its commits fail (`Fenced`) once another
//! worker has claimed the partition, so a stream is handled by one worker at a time and the
//! group's position never goes back — but by a reset, or by [`Worker::rewind`] when the
//! output a consumer commits after (a database with positions of its own) lost writes it had
//! acknowledged: [`Worker::next`] says which partitions were just claimed, before their events,
//! for the consumer to compare.
//!
//! Batches hold whole records (a record's events for a partition are never split, however
//! small the read-ahead: a commit after part of a record would pass its rest by). An event is
//! handed out once while the worker holds its partition, also when it reads again after the
//! partitions moved, so several batches may be out before their commits (the ETL gathers
//! them); events of a batch never committed are handed out again once the partition moves
//! (to another worker, or back to this one after a reset) or a new worker joins in its place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use strata_proto::v1 as pb;
use tokio::time::Instant;

use super::admin::Groups;
use super::protocol::{self as p, Definition, MemberEvent, ParkedFrom, Progress};
use crate::client::Client;
use crate::error::Error;
use crate::events::{event, ExpectedVersion};
use crate::subscribe::{Item, Start, Subscription, Target};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Its name in the group, unique among the group's workers.
    pub member: String,
    /// Time between heartbeats. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// A member silent this long is taken for gone and its partitions move. Default 5 s;
    /// at least twice `heartbeat_interval`.
    pub session_timeout: Duration,
    /// Most events in one batch (a batch ends at a record's end, so one record's events for a
    /// partition are never split). Default 100.
    pub batch_events_max: usize,
    /// Most events read ahead and held for handing out. Default 4096. A record being read is
    /// read to its end past it (a batch holds whole records): at most one append's events
    /// more (the node's `batch_events_max`, default 4096 events, 16 MiB).
    pub buffer_events_max: usize,
}

impl WorkerConfig {
    /// Defaults for member `member`.
    pub fn new(member: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            member: member.into(),
            heartbeat_interval: Duration::from_millis(500),
            session_timeout: Duration::from_secs(5),
            batch_events_max: 100,
            buffer_events_max: 4096,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.member.is_empty() || self.member.len() > 128 {
            return bad("member: 1 to 128 bytes".into());
        }
        if self.heartbeat_interval.is_zero() || self.session_timeout < self.heartbeat_interval * 2 {
            return bad(format!(
                "session_timeout ({:?}) must be at least twice heartbeat_interval ({:?}), which is above zero",
                self.session_timeout, self.heartbeat_interval
            ));
        }
        if self.batch_events_max == 0 || self.buffer_events_max < self.batch_events_max {
            return bad(format!(
                "batch_events_max ({}) must be at least 1 and buffer_events_max ({}) at least that",
                self.batch_events_max, self.buffer_events_max
            ));
        }
        Ok(())
    }
}

/// Events of one partition to handle, in log order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The partition (the group's `partitions` for replayed parked events).
    pub partition: u32,
    /// Its events.
    pub events: Vec<pb::RecordedEvent>,
    /// The partition stream's version when it was handed out (the fencing token).
    pub token: u64,
    /// Each event's shard (whose log its `position` is a place in).
    shards: Vec<u32>,
}

impl Batch {
    /// Each event's shard, beside [`Batch::events`]: `(shards()[i], events[i].position)` is
    /// where event `i` is in the log.
    pub fn shards(&self) -> &[u32] {
        &self.shards
    }

    /// Appends `later`, the next batch handed out for the same partition under the same
    /// token, so both are committed by one commit; gives `later` back when it is not.
    pub fn absorb(&mut self, later: Batch) -> Result<(), Batch> {
        if later.partition != self.partition || later.token != self.token {
            return Err(later);
        }
        self.events.extend(later.events);
        self.shards.extend(later.shards);
        Ok(())
    }
}

/// A partition this worker holds.
#[derive(Debug, Clone)]
struct Held {
    /// Its stream's version after this worker's last event there.
    version: u64,
    /// Its committed position.
    position: Progress,
    /// Through where this worker has handed its events out (at or past `position`): not
    /// handed out again while it holds the partition, even when it reads again.
    handed: Progress,
}

impl Held {
    fn new(version: u64, position: Progress) -> Held {
        Held {
            version,
            handed: position.clone(),
            position,
        }
    }
}

/// One worker of a group (see the module docs).
pub struct Worker {
    client: Client,
    group: String,
    config: WorkerConfig,
    definition: Definition,
    held: BTreeMap<u32, Held>,
    /// Events read ahead for each partition, with their shards.
    buffers: BTreeMap<u32, VecDeque<(pb::RecordedEvent, u32)>>,
    buffered: usize,
    source: Option<Subscription>,
    retry: Option<Subscription>,
    /// The record (shard, position) each subscription is inside of, when its last event was
    /// not its record's last: that record is not handed out until it is whole.
    source_open: Option<(u32, u64)>,
    retry_open: Option<(u32, u64)>,
    next_tick: Instant,
    lease_until: Instant,
    /// Ticks in a row that found a partition assigned to it still held by another member.
    waiting_ticks: u32,
    /// Partitions claimed (or claimed again) since [`Worker::next`] last said so.
    claimed: Vec<u32>,
    /// Whether the retry stream has events (a replay wrote it): until then the retry
    /// partition's holder does not read it, only looks at each tick whether it exists.
    retry_seen: bool,
    /// Partitions whose claim was cut short (the call's future dropped while the claim was on
    /// its way): the node may name this member their owner though it does not hold them. The
    /// next tick looks.
    doubt: BTreeSet<u32>,
}

/// How soon a worker looks again for a partition assigned to it that another member still
/// holds (see `Worker::look_again_soon`).
pub const CLAIM_RETRY: Duration = Duration::from_millis(50);
/// Most such quick looks in a row (then it waits `heartbeat_interval` as usual).
pub const CLAIM_RETRIES_MAX: u32 = 40;

/// What [`Worker::next`] brings.
#[derive(Debug)]
pub enum Next {
    /// Events to handle.
    Batch(Batch),
    /// These partitions were just claimed (or claimed again after a reset): the moment to
    /// compare their committed positions with what the output holds ([`Worker::rewind`]).
    Claimed(Vec<u32>),
}

impl Worker {
    /// Joins group `group` (which must exist) as `config.member`.
    pub async fn join(client: Client, group: &str, config: WorkerConfig) -> Result<Worker, Error> {
        config.validate()?;
        p::check_name(group)?;
        let definition = Groups::new(client.clone()).definition(group).await?;
        let now = Instant::now();
        let mut worker = Worker {
            client,
            group: group.into(),
            config,
            definition,
            held: BTreeMap::new(),
            buffers: BTreeMap::new(),
            buffered: 0,
            source: None,
            retry: None,
            source_open: None,
            retry_open: None,
            next_tick: now,
            lease_until: now,
            waiting_ticks: 0,
            claimed: Vec::new(),
            doubt: BTreeSet::new(),
            retry_seen: false,
        };
        worker.tick().await?;
        Ok(worker)
    }

    /// The partitions it holds now.
    pub fn partitions(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// Its name.
    pub fn member(&self) -> &str {
        &self.config.member
    }

    /// The next batch: waits for events of its partitions (heart-beating meanwhile).
    /// Cancel-safe, as [`Worker::next`].
    pub async fn next_batch(&mut self) -> Result<Batch, Error> {
        loop {
            if let Next::Batch(b) = self.next().await? {
                return Ok(b);
            }
        }
    }

    /// The next batch, or the partitions just claimed (said once, before any of their
    /// events), for a consumer whose output keeps positions of its own.
    ///
    /// Cancel-safe: dropped at any point (a timeout, a `select!`), it loses no event and leaves
    /// no partition claimed but not held or released but held; a heartbeat-and-assignment
    /// round it was in is done again from the start by the next call. Each such round takes
    /// a few round trips to the node (a heartbeat, a read of the members, a read per partition
    /// held, claims and releases): a caller that always gives up sooner never sees partitions
    /// move.
    pub async fn next(&mut self) -> Result<Next, Error> {
        loop {
            let now = Instant::now();
            if now >= self.next_tick || now >= self.lease_until {
                self.tick().await?;
            }
            if !self.claimed.is_empty() {
                return Ok(Next::Claimed(std::mem::take(&mut self.claimed)));
            }
            if let Some(batch) = self.take_batch() {
                return Ok(Next::Batch(batch));
            }
            if self.held.is_empty() {
                tokio::time::sleep_until(self.next_tick).await;
                continue;
            }
            match tokio::time::timeout_at(self.next_tick, self.pull()).await {
                Err(_) => continue,
                Ok(item) => self.dispatch(item?),
            }
            // What is already here joins the batch without waiting; a record is read to its end
            // (a batch holds whole records), the buffer's bound notwithstanding.
            while self.buffered < self.config.buffer_events_max || self.reading_record() {
                match tokio::time::timeout(Duration::ZERO, self.pull()).await {
                    Ok(item) => self.dispatch(item?),
                    Err(_) => break,
                }
            }
        }
    }

    /// Heart-beats when one is due, without handing anything out: for a worker that holds a
    /// batch longer than `session_timeout` (waiting for its output's destination) and wants to
    /// keep its partitions meanwhile.
    pub async fn keep_alive(&mut self) -> Result<(), Error> {
        if Instant::now() >= self.next_tick {
            self.tick().await?;
        }
        Ok(())
    }

    /// Records that `batch` was handled (at-least-once: a crash before this hands its events
    /// out again). `Fenced` when the partition was taken meanwhile.
    pub async fn commit(&mut self, batch: &Batch) -> Result<(), Error> {
        self.commit_with(batch, Vec::new()).await.map(|_| ())
    }

    /// Appends `outputs` and the batch's commit in one atomic append: both happen or neither
    /// (exactly-once inside Strata). `Fenced` when the partition was taken meanwhile — then
    /// nothing of `outputs` was written either.
    pub async fn commit_with(
        &mut self,
        batch: &Batch,
        mut outputs: Vec<pb::StreamAppend>,
    ) -> Result<pb::AppendResponse, Error> {
        let stream = p::partition_stream(&self.group, batch.partition);
        let held = match self.held.get(&batch.partition) {
            Some(h) if h.version == batch.token => h.clone(),
            _ => return Err(self.fenced(batch.partition)),
        };
        let mut position = held.position.clone();
        for (e, shard) in batch.events.iter().zip(&batch.shards) {
            position.handled(*shard, e.position);
        }
        outputs.push(pb::StreamAppend {
            stream: stream.clone(),
            expected: Some(ExpectedVersion::Exact(held.version).wire()),
            events: vec![p::partition_event(
                p::COMMIT,
                &self.config.member,
                position.clone(),
            )],
        });
        match self
            .client
            .append_multi(pb::AppendMultiRequest { streams: outputs })
            .await
        {
            Ok(r) => {
                let version = r
                    .streams
                    .iter()
                    .find(|s| s.stream == stream)
                    .map_or(held.version + 1, |s| s.last_version);
                if let Some(h) = self.held.get_mut(&batch.partition) {
                    h.version = version;
                    h.position = position;
                }
                Ok(r)
            }
            Err(Error::WrongExpectedVersion { message, .. }) if message.contains(&stream) => {
                self.lose(batch.partition);
                Err(self.fenced(batch.partition))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `batch` was handed out under this worker's current hold of its partition: not
    /// before the partition moved away (or back, see [`Worker::rewind`]). A batch no longer
    /// current is handed out again to whoever holds the partition; its commit fails.
    pub fn holds(&self, batch: &Batch) -> bool {
        self.held
            .get(&batch.partition)
            .is_some_and(|h| h.version == batch.token)
    }

    /// Partition `n`'s committed position (`None` when this worker does not hold it).
    pub fn committed(&self, n: u32) -> Option<&Progress> {
        self.held.get(&n).map(|h| &h.position)
    }

    /// Moves held partition `n` back to `holds`, where the output it commits after says it
    /// holds the partition's events through, when the group's committed position has handled
    /// a record `holds` has not: the output lost writes it had acknowledged (a database's
    /// unjournaled commits lost in a crash, a restore from an older backup). Never before the
    /// group's last reset (or its start); never forward. The events after are handed out
    /// again (batches handed out before are no longer [`Worker::holds`]).
    ///
    /// Returns where the partition went back to, or `None` when nothing was missing. `Fenced`
    /// when the partition was taken meanwhile.
    pub async fn rewind(&mut self, n: u32, holds: &Progress) -> Result<Option<Progress>, Error> {
        let Some(held) = self.held.get(&n).cloned() else {
            return Err(self.fenced(n));
        };
        if held.position.handled_past(holds).is_none() {
            return Ok(None);
        }
        let floor = Groups::new(self.client.clone()).floor(&self.group).await?;
        let back = holds.at_least(&floor).at_most(&held.position);
        if held.position.handled_past(&back).is_none() {
            return Ok(None);
        }
        let stream = p::partition_stream(&self.group, n);
        let commit = p::partition_event(p::COMMIT, &self.config.member, back.clone());
        match self
            .client
            .append(&stream, ExpectedVersion::Exact(held.version), vec![commit])
            .await
        {
            Ok(r) => {
                let version = r
                    .streams
                    .first()
                    .map_or(held.version + 1, |s| s.last_version);
                debug_assert!(version > held.version, "a partition's version only grows");
                self.held.insert(n, Held::new(version, back.clone()));
                self.restart_reading();
                Ok(Some(back))
            }
            Err(Error::WrongExpectedVersion { .. }) => {
                self.lose(n);
                Err(self.fenced(n))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives up on `event` of `batch`: a copy goes to the group's parked stream, with where it
    /// came from and `reason`. The batch is still to be committed.
    pub async fn park(&mut self, event: &pb::RecordedEvent, reason: &str) -> Result<(), Error> {
        // A replayed event parked again keeps its first origin.
        let from = match p::from_json::<ParkedFrom>("", &event.metadata) {
            Ok(mut from) if event.stream == p::retry_stream(&self.group) => {
                from.reason = reason.into();
                from.member = self.config.member.clone();
                from
            }
            _ => ParkedFrom {
                stream: event.stream.clone(),
                version: event.version,
                position: event.position,
                event_type: event.r#type.clone(),
                reason: reason.into(),
                member: self.config.member.clone(),
            },
        };
        let parked = pb::NewEvent {
            id: String::new(),
            r#type: "$group-parked".into(),
            data: event.data.clone(),
            metadata: p::to_json(&from).into(),
        };
        self.client
            .append(
                &p::parked_stream(&self.group),
                ExpectedVersion::Any,
                vec![parked],
            )
            .await
            .map(|_| ())
    }

    /// Leaves the group: releases its partitions (each at its last commit) and says so, so
    /// others take over at once instead of after `session_timeout`.
    pub async fn leave(mut self) -> Result<(), Error> {
        for n in self.partitions() {
            self.release(n).await;
        }
        self.say("$group-left").await
    }

    /// Appends a members-stream event (`$group-heartbeat`, `$group-left`) for this worker.
    async fn say(&self, event_type: &str) -> Result<(), Error> {
        let member = MemberEvent {
            member: self.config.member.clone(),
        };
        let e = event(event_type, p::to_json(&member));
        self.client
            .append(
                &p::members_stream(&self.group),
                ExpectedVersion::Any,
                vec![e],
            )
            .await
            .map(|_| ())
    }

    fn fenced(&self, partition: u32) -> Error {
        Error::Fenced(format!(
            "partition {partition} of group `{}` is no longer {}'s (another worker claimed it, or the group was reset); its uncommitted events will be handled again from its last commit",
            self.group, self.config.member
        ))
    }

    /// The next item of either subscription: (0 or the retry partition, the item, its shard).
    async fn pull(&mut self) -> Result<(u32, Item, u32), Error> {
        let k = self.definition.partitions;
        let (from, item) = match (self.source.as_mut(), self.retry.as_mut()) {
            (Some(s), Some(r)) => tokio::select! {
                item = s.next() => (0, item),
                item = r.next() => (k, item),
            },
            (Some(s), None) => (0, s.next().await),
            (None, Some(r)) => (k, r.next().await),
            (None, None) => std::future::pending().await,
        };
        let item = item?;
        let sub = if from == k {
            self.retry.as_ref()
        } else {
            self.source.as_ref()
        };
        let shard = sub.map_or(0, Subscription::last_shard);
        if let Item::Event(e) = &item {
            let open = sub.filter(|s| s.in_record()).map(|_| (shard, e.position));
            if from == k {
                self.retry_open = open;
            } else {
                self.source_open = open;
            }
        }
        Ok((from, item, shard))
    }

    /// Whether a subscription is inside a record.
    fn reading_record(&self) -> bool {
        self.source_open.is_some() || self.retry_open.is_some()
    }

    /// How many of partition `n`'s buffered events form whole records (the rest are the
    /// first events of a record still being read).
    fn whole(&self, n: u32) -> usize {
        let Some(buffer) = self.buffers.get(&n) else {
            return 0;
        };
        let open = if n == self.definition.partitions {
            self.retry_open
        } else {
            self.source_open
        };
        let Some(open) = open else {
            return buffer.len();
        };
        let partial = buffer
            .iter()
            .rev()
            .take_while(|(e, shard)| (*shard, e.position) == open)
            .count();
        buffer.len() - partial
    }

    /// Files an event under its partition if it is still to be handled there.
    fn dispatch(&mut self, (from, item, shard): (u32, Item, u32)) {
        let Item::Event(e) = item else { return };
        let k = self.definition.partitions;
        let n = if from == k {
            k
        } else if self.definition.target.matches(&e.stream) {
            p::partition_of(&e.stream, k)
        } else {
            return;
        };
        if self
            .held
            .get(&n)
            .is_some_and(|h| h.handed.wants(shard, e.position))
        {
            self.buffers.entry(n).or_default().push_back((e, shard));
            self.buffered += 1;
        }
    }

    /// A batch of the partition with the most waiting in whole records, of whole records.
    fn take_batch(&mut self) -> Option<Batch> {
        let (n, whole) = self
            .buffers
            .keys()
            .map(|n| (*n, self.whole(*n)))
            .filter(|(_, whole)| *whole > 0)
            .max_by_key(|(_, whole)| *whole)?;
        let events_max = self.config.batch_events_max;
        let held = self.held.get_mut(&n)?;
        let buffer = self.buffers.get_mut(&n)?;
        let mut events: Vec<pb::RecordedEvent> = Vec::new();
        let mut shards = Vec::new();
        while events.len() < whole {
            let Some((e, shard)) = buffer.front() else {
                break;
            };
            let same_record = events.last().is_some_and(|l| l.position == e.position)
                && shards.last() == Some(shard);
            if events.len() >= events_max && !same_record {
                break;
            }
            if let Some((e, shard)) = buffer.pop_front() {
                held.handed.handled(shard, e.position);
                events.push(e);
                shards.push(shard);
            }
        }
        self.buffered -= events.len();
        Some(Batch {
            partition: n,
            events,
            token: held.version,
            shards,
        })
    }

    /// Forgets a partition it no longer holds, and what it read ahead for it.
    fn lose(&mut self, n: u32) {
        self.held.remove(&n);
        if let Some(b) = self.buffers.remove(&n) {
            self.buffered -= b.len();
        }
        self.restart_reading();
    }

    /// The held set changed: read again from the earliest position not handed out yet.
    fn restart_reading(&mut self) {
        let k = self.definition.partitions;
        let start = |p: &Progress| Start::Cursor(p.cursor().into());
        let sources = self
            .held
            .iter()
            .filter(|(n, _)| **n < k)
            .map(|(_, h)| &h.handed);
        let earliest = Progress::earliest(sources);
        let sources_start = earliest.as_ref().map(ToString::to_string);
        let filter = p::source_filter(&self.definition.target, k, self.held.keys().copied());
        self.source =
            earliest.map(|at| self.client.subscribe(Target::All(Some(filter)), start(&at)));
        // Only once a replay wrote the retry stream: each start of this reading makes the node
        // scan the log from the partition's position (the group's start until a retried event
        // is committed). It is `$all` filtered by the stream's name, not a stream subscription,
        // because its positions are those of `$all`, which a slot-range move keeps (a stream
        // read after a move gives the copies, at other positions in another shard's log).
        self.retry = self.held.get(&k).filter(|_| self.retry_seen).map(|h| {
            let filter = pb::Filter {
                stream_prefix: p::retry_stream(&self.group),
                event_types: Vec::new(),
                partitions: None,
            };
            self.client
                .subscribe(Target::All(Some(filter)), start(&h.handed))
        });
        tracing::debug!(
            member = %self.config.member,
            source = ?sources_start,
            retry = ?self.held.get(&k).map(|h| h.handed.to_string()),
            "reading again"
        );
        // What was read ahead is read again from the new start.
        self.buffers.clear();
        self.buffered = 0;
        self.source_open = None;
        self.retry_open = None;
    }

    /// Heartbeat, liveness, and the partitions' moves (see the module docs).
    ///
    /// Cut short (the caller's future dropped at one of its awaits), it sets no next tick, so
    /// the next call ticks again before handing anything out; what the cut tick already did
    /// stays consistent: a partition is let go of only once its release is answered, a claim
    /// on its way is looked at again (`doubt`), and reading starts again at each change of the
    /// held set, not at the tick's end.
    async fn tick(&mut self) -> Result<(), Error> {
        let sent = Instant::now();
        let before = self.partitions();
        let looked = self.look_around().await;
        self.next_tick = sent + self.config.heartbeat_interval;
        if self.partitions() != before {
            tracing::debug!(member = %self.config.member, partitions = ?self.partitions(), "partitions moved");
        }
        self.look_again_soon(looked?, sent);
        Ok(())
    }

    /// The tick's work: heartbeat, who is live, which partitions are still this member's, and
    /// the claims and releases the assignment asks for. Whether a partition assigned to this
    /// member is still held by another.
    async fn look_around(&mut self) -> Result<bool, Error> {
        let sent = Instant::now();
        self.say("$group-heartbeat").await?;
        self.lease_until = sent + self.config.session_timeout;
        let members = members(&self.client, &self.group, Some(self.config.session_timeout)).await?;
        let live: Vec<String> = members
            .into_iter()
            .filter(|(_, _, live)| *live)
            .map(|(m, _, _)| m)
            .collect();
        let groups = Groups::new(self.client.clone());
        // Still ours? A claim by another, or a reset, moved the version on.
        let held: Vec<(u32, u64)> = self.held.iter().map(|(n, h)| (*n, h.version)).collect();
        for (n, version) in held {
            let head = groups.partition(&self.group, n).await?;
            if head.map(|(v, _)| v) != Some(version) {
                self.lose(n);
            }
        }
        self.settle_doubts(&groups).await?;
        let mut waiting = false;
        let owners = p::assignment(&live, self.definition.partitions + 1);
        for n in 0..=self.definition.partitions {
            let mine = owners[n as usize] == Some(self.config.member.as_str());
            match (mine, self.held.contains_key(&n)) {
                (false, true) => self.release(n).await,
                (true, false) => {
                    self.claim(&groups, n, &live).await?;
                    waiting |= !self.held.contains_key(&n);
                }
                _ => {}
            }
        }
        self.look_for_retries().await?;
        Ok(waiting)
    }

    /// The retry partition's holder starts reading the retry stream once a replay wrote it.
    async fn look_for_retries(&mut self) -> Result<(), Error> {
        let k = self.definition.partitions;
        if self.retry_seen || !self.held.contains_key(&k) {
            return Ok(());
        }
        let retry = p::retry_stream(&self.group);
        let info = self
            .client
            .stream_info(&retry, pb::Consistency::Linearizable)
            .await?;
        if info.exists {
            self.retry_seen = true;
            self.restart_reading();
        }
        Ok(())
    }

    /// Claims cut short: a partition whose stream names this member as its owner is held
    /// (then kept or released like any other); the others were not taken.
    async fn settle_doubts(&mut self, groups: &Groups) -> Result<(), Error> {
        let doubts: Vec<u32> = self.doubt.iter().copied().collect();
        for n in doubts {
            if !self.held.contains_key(&n) {
                if let Some((version, s)) = groups.partition(&self.group, n).await? {
                    if s.member == self.config.member {
                        self.take(n, Held::new(version, s.position));
                    }
                }
            }
            self.doubt.remove(&n);
        }
        Ok(())
    }

    /// Partition `n` is held from now on: said by the next [`Worker::next`], read from its
    /// committed position.
    fn take(&mut self, n: u32, held: Held) {
        self.held.insert(n, held);
        if !self.claimed.contains(&n) {
            self.claimed.push(n);
        }
        self.restart_reading();
    }

    /// A partition assigned to this member is still held by its previous owner, who lets it go
    /// at its own next tick: look again after [`CLAIM_RETRY`] rather than a whole
    /// `heartbeat_interval`, or the partition sits unread for up to an interval after its
    /// release (on every rebalance). At most [`CLAIM_RETRIES_MAX`] ticks in a row, so two
    /// members that disagree on who is live (different `session_timeout`s) do not keep
    /// heart-beating at that pace.
    fn look_again_soon(&mut self, waiting: bool, sent: Instant) {
        if !waiting {
            self.waiting_ticks = 0;
            return;
        }
        self.waiting_ticks += 1;
        if self.waiting_ticks <= CLAIM_RETRIES_MAX {
            self.next_tick = sent + CLAIM_RETRY.min(self.config.heartbeat_interval);
        }
    }

    /// Takes partition `n` if its owner released it or is not live.
    async fn claim(&mut self, groups: &Groups, n: u32, live: &[String]) -> Result<(), Error> {
        let head = groups.partition(&self.group, n).await?;
        let (expected, position) = match &head {
            Some((_, s))
                if !s.member.is_empty()
                    && s.member != self.config.member
                    && live.contains(&s.member) =>
            {
                return Ok(());
            }
            Some((v, s)) => (ExpectedVersion::Exact(*v), s.position.clone()),
            None => (ExpectedVersion::NoStream, self.definition.start.clone()),
        };
        let claim = p::partition_event(p::CLAIM, &self.config.member, position.clone());
        self.doubt.insert(n);
        let claimed = self
            .client
            .append(&p::partition_stream(&self.group, n), expected, vec![claim])
            .await;
        self.doubt.remove(&n);
        match claimed {
            Ok(r) => {
                let version = r.streams.first().map_or(0, |s| s.last_version);
                self.take(n, Held::new(version, position));
                Ok(())
            }
            // Someone else was quicker; the next tick looks again.
            Err(Error::WrongExpectedVersion { .. }) => Ok(()),
            // Its outcome unknown (the client's retries gave up): looked at again next tick.
            Err(e) => {
                self.doubt.insert(n);
                Err(e)
            }
        }
    }

    /// Gives partition `n` up at its last commit (if still ours). Held until the release is
    /// answered: cut short, the next tick releases it again (or finds it moved on).
    async fn release(&mut self, n: u32) {
        let Some(held) = self.held.get(&n) else {
            return;
        };
        let released = p::partition_event(p::CLAIM, "", held.position.clone());
        let version = held.version;
        // Failing is fine: then it was not ours any more anyway.
        let _ = self
            .client
            .append(
                &p::partition_stream(&self.group, n),
                ExpectedVersion::Exact(version),
                vec![released],
            )
            .await;
        self.lose(n);
    }
}

/// The members heard from in the newest [`p::MEMBERS_WINDOW_EVENTS`] events of the members
/// stream: (name, last event's timestamp µs, live). Live: its last event is a heartbeat within
/// `session_timeout` (default 5 s) of the newest event's timestamp.
pub async fn members(
    client: &Client,
    group: &str,
    session_timeout: Option<Duration>,
) -> Result<Vec<(String, u64, bool)>, Error> {
    let stream = p::members_stream(group);
    let page = client
        .read(pb::ReadRequest {
            stream: stream.clone(),
            direction: pb::Direction::Backwards as i32,
            limit: p::MEMBERS_WINDOW_EVENTS,
            ..Default::default()
        })
        .await?;
    let newest = page.events.first().map_or(0, |e| e.timestamp_us);
    let timeout_us = session_timeout
        .unwrap_or(Duration::from_secs(5))
        .as_micros() as u64;
    let mut out: Vec<(String, u64, bool)> = Vec::new();
    for e in &page.events {
        let m: MemberEvent = p::from_json(&stream, &e.data)?;
        if out.iter().any(|(name, _, _)| *name == m.member) || out.len() >= p::MEMBERS_MAX {
            continue;
        }
        let live =
            e.r#type == "$group-heartbeat" && newest.saturating_sub(e.timestamp_us) <= timeout_us;
        out.push((m.member, e.timestamp_us, live));
    }
    out.sort();
    Ok(out)
}
