//! Runs one pipeline: a worker of its consumer group hands out events; they are gathered into
//! a write (up to `events_max` events and `bytes_max` bytes, or what came within `linger_ms`),
//! passed over where the sink already holds them, turned into rows (events that fail the
//! mapping's checks go to the quarantine stream with the reason), written with the range's
//! checkpoint, and only then committed to the group.
//!
//! A sink that is down makes the pipeline wait (state `waiting`, the error shown, retried with
//! backoff up to [`RETRY_MAX`], heart-beating meanwhile so it keeps its partitions) — never drop
//! or spin. A sink that refuses a write's rows for good has them written record by record, and
//! the records it refuses alone go to quarantine. A pipeline the sink cannot take (a missing
//! table or column) is `refused` until the service restarts.
//!
//! The throttle: after each write the pause before the next (`pace`) doubles, from 10 ms up to
//! `pace_max_ms`, while the write took longer than `latency_target_ms`, ClickHouse's table
//! has more than `parts_max` active parts, or a replication slot of the PostgreSQL sink's
//! server is more than `slot_lag_max_bytes` behind (a replica or a logical consumer falling
//! behind the WAL the writes add); it halves (to 0) while none holds. The sink's strain is
//! read at most every [`STRAIN_EVERY`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use strata_client::group::{
    Batch, GroupTarget, Groups, Next, Position, Progress, Worker, WorkerConfig,
};
use strata_client::{pb, Client, Error, ExpectedVersion};
use strata_service::Metrics;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::now_us;
use crate::mapping::{Located, Mapping, Row, Transform};
use crate::pipeline::{Pipeline, Start};
use crate::sink::{Sink, SinkError, SlotLag, Strain, Write, Written};

/// The environment variable of the crash point (see `Runner::crash_point`).
pub const CRASH_VAR: &str = "STRATA_ETL_CRASH_AFTER_WRITES";

/// Longest wait between tries while the sink or the store is down.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Most quarantined events in one append to the quarantine stream.
pub const QUARANTINE_APPEND_EVENTS_MAX: usize = 100;
/// Most bytes of quarantined events in one append.
pub const QUARANTINE_APPEND_BYTES_MAX: usize = 1 << 20;
/// Longest a quarantined event's data kept (longer is cut, and says so).
pub const QUARANTINE_DATA_BYTES_MAX: usize = 64 * 1024;
/// Rows whose lag (append to sink) the status's percentiles are taken over.
pub const LAG_SAMPLES_MAX: usize = 4096;
/// How often the sink's strain (ClickHouse's part count, PostgreSQL's slot lag) is read for
/// the throttle, at most.
pub const STRAIN_EVERY: Duration = Duration::from_secs(1);
/// How often the sink's TTL is applied.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

const QUARANTINE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3d0f_52a8_6c1b_4e97_b2a4_81c7_0e5d_f936);

/// What an operator asks of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Run.
    Run,
    /// Hold its partitions but write nothing.
    Pause,
    /// (Paused) move the pipeline, then stay paused.
    Reset(ResetTo),
}

/// Where a reset moves a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetTo {
    /// Rebuild: the sink's table emptied and every event written again from the log's start
    /// (views derived from the table inside the sink are the operator's to rebuild).
    Start,
    /// Skip: the group moves to the log's end; what the sink holds stays.
    End,
}

/// Where a pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting to the sink and the store.
    Starting,
    /// Writing.
    Running,
    /// The sink or the store is down; retrying.
    Waiting,
    /// Paused by an operator.
    Paused,
    /// The sink cannot take the pipeline (see `error`).
    Refused,
    /// Stopped with the service.
    Stopped,
}

/// The throttle's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThrottleState {
    /// The pause before each write now, ms.
    pub pace_ms: u64,
    /// Why it is slowed, if it is.
    pub reason: Option<String>,
    /// The last write's latency, ms.
    pub write_ms: f64,
    /// ClickHouse: the table's active parts at the last look.
    pub parts: Option<u64>,
    /// PostgreSQL: the replication slot furthest behind at the last look.
    pub slot: Option<SlotLag>,
}

/// A pipeline's state for `GET /api/v1/pipelines`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Its name.
    pub name: String,
    /// Its sink's kind and table.
    pub sink: String,
    /// Where it is.
    pub state: State,
    /// The last error (cleared by the next good write).
    pub error: Option<String>,
    /// Errors so far.
    pub errors: u64,
    /// Events handled (written, quarantined or passed over by type).
    pub events: u64,
    /// Rows written.
    pub rows: u64,
    /// Events quarantined.
    pub quarantined: u64,
    /// Events passed over (another type, or already in the sink).
    pub passed_over: u64,
    /// Partitions moved back to the sink's checkpoint because the sink held less than the
    /// group had committed (see `Session::claimed`).
    pub rewinds: u64,
    /// Each partition's checkpoint in the sink.
    pub positions: BTreeMap<u32, String>,
    /// Events of the source not yet in the sink, at the last count (see [`crate::backlog`]).
    pub lag_events: u64,
    /// Whether that count stopped at its bound (there may be more).
    pub lag_events_at_least: bool,
    /// How long the oldest of them had been waiting at that count, seconds (0: none).
    pub lag_oldest_seconds: f64,
    /// When the backlog was last counted, µs since the epoch (0: not yet).
    pub lag_counted_us: u64,
    /// Seconds from the last written event's append to its write.
    pub lag_seconds: f64,
    /// Median of the same over the last [`LAG_SAMPLES_MAX`] rows, ms.
    pub lag_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub lag_p99_ms: f64,
    /// Events per second over the last writes.
    pub rate: f64,
    /// The throttle.
    pub throttle: ThrottleState,
    /// When the last write was, µs since the epoch.
    pub last_write_us: u64,
    /// The last window reconciled.
    pub reconcile: Option<crate::reconcile::Report>,
}

impl Status {
    fn new(p: &Pipeline) -> Status {
        Status {
            name: p.name.clone(),
            sink: format!("{:?}:{}", p.sink.kind, p.sink.table).to_lowercase(),
            state: State::Starting,
            error: None,
            errors: 0,
            events: 0,
            rows: 0,
            quarantined: 0,
            passed_over: 0,
            rewinds: 0,
            positions: BTreeMap::new(),
            lag_events: 0,
            lag_events_at_least: false,
            lag_oldest_seconds: 0.0,
            lag_counted_us: 0,
            lag_seconds: 0.0,
            lag_p50_ms: 0.0,
            lag_p99_ms: 0.0,
            rate: 0.0,
            throttle: ThrottleState::default(),
            last_write_us: 0,
            reconcile: None,
        }
    }
}

/// A pipeline's handle: its status and its control.
#[derive(Clone)]
pub struct Handle {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Its status.
    pub status: Arc<Mutex<Status>>,
    /// Its control.
    pub control: watch::Sender<Control>,
}

impl Handle {
    /// Changes its status.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// A copy of its status.
    pub fn status(&self) -> Status {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Makes a pipeline's transform: once per session (a restart after a crash or a reset makes a
/// fresh one, so state it keeps — a uniqueness window, say — starts empty again).
pub type TransformFactory = Arc<dyn Fn(&Pipeline) -> Box<dyn Transform> + Send + Sync>;

/// The declarative transform the pipeline file describes ([`Mapping`]).
pub fn declarative() -> TransformFactory {
    Arc::new(|p: &Pipeline| Box::new(Mapping::new(p)) as Box<dyn Transform>)
}

/// Why a session ended.
enum End {
    Stopped,
    /// Start a new session at once (after a reset).
    Restart,
    Retry(String),
    Refused(String),
}

impl From<Error> for End {
    fn from(e: Error) -> End {
        End::Retry(format!("store: {e}"))
    }
}

impl From<SinkError> for End {
    fn from(e: SinkError) -> End {
        match e {
            SinkError::Refused(p) => End::Refused(p.to_string()),
            other => End::Retry(other.to_string()),
        }
    }
}

/// One running pipeline.
pub struct Runner {
    handle: Handle,
    store: Client,
    member: String,
    metrics: Arc<Metrics>,
    control: watch::Receiver<Control>,
    stopping: watch::Receiver<bool>,
    crash_after: Option<u64>,
    transform: TransformFactory,
}

/// Starts `pipeline` over `store` as group member `member` in the background, its events
/// turned into rows by what `transform` makes (the file's columns name the table's columns and
/// types; the transform gives their values in that order); its handle.
pub fn start(
    pipeline: Pipeline,
    store: Client,
    member: String,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
    transform: TransformFactory,
) -> Handle {
    let (control_tx, control) = watch::channel(Control::Run);
    let handle = Handle {
        status: Arc::new(Mutex::new(Status::new(&pipeline))),
        pipeline: Arc::new(pipeline),
        control: control_tx,
    };
    let runner = Runner {
        handle: handle.clone(),
        store,
        member,
        metrics,
        control,
        stopping,
        crash_after: std::env::var(CRASH_VAR).ok().and_then(|v| v.parse().ok()),
        transform,
    };
    tokio::spawn(runner.run());
    handle
}

/// A write being gathered: worker batches of one partition.
struct Gathered {
    batch: Batch,
    bytes: usize,
}

impl Runner {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        self.handle.update(f);
    }

    /// The fault-injection seam: with [`CRASH_VAR`]`=N` the process aborts after its N-th
    /// write to a sink, before committing to the group (the window the sinks' checkpoints exist
    /// for). Tests set it; unset, it does nothing.
    fn crash_point(&self) {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if let Some(n) = self.crash_after {
            if WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= n {
                tracing::warn!(
                    "{CRASH_VAR}={n}: aborting between a sink write and its group commit"
                );
                std::process::abort();
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let end = self.session().await;
            let p = &self.handle.pipeline;
            match end {
                End::Stopped => break,
                End::Restart => continue,
                End::Refused(why) => {
                    tracing::error!(pipeline = %p.name, error = %why, "the sink cannot take this pipeline");
                    self.update(|s| {
                        s.state = State::Refused;
                        s.error = Some(why);
                    });
                    let _ = self.stopping.wait_for(|s| *s).await;
                    break;
                }
                End::Retry(why) => {
                    tracing::warn!(pipeline = %p.name, error = %why, retry_in_ms = backoff.as_millis() as u64, "pipeline waiting");
                    self.metrics.add(
                        "strata_etl_errors_total",
                        "Pipeline errors (sink or store down, refused writes).",
                        &[("pipeline", &p.name)],
                        1.0,
                    );
                    self.update(|s| {
                        s.state = State::Waiting;
                        s.errors += 1;
                        s.error = Some(why);
                    });
                    let mut stopping = self.stopping.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopping.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        self.update(|s| s.state = State::Stopped);
    }

    /// Opens the sink, joins the group, and writes until stopped or something fails.
    async fn session(&mut self) -> End {
        let p = self.handle.pipeline.clone();
        let sink = match Sink::open(&p).await {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        let groups = Groups::new(self.store.clone());
        let start: Progress = match p.source.start {
            Start::Start => Position::From(0).into(),
            Start::End => match groups.position_at(None).await {
                Ok(at) => at,
                Err(e) => return e.into(),
            },
        };
        let target = match p.source.prefix.as_str() {
            "" => GroupTarget::All,
            prefix => GroupTarget::Prefix(prefix.into()),
        };
        if let Err(e) = groups
            .ensure(&p.group(), target, p.source.partitions, start)
            .await
        {
            return e.into();
        }
        let mut config = WorkerConfig::new(self.member.clone());
        // A hand-out is at most a write's events (a write still ends at `bytes_max`); the worker
        // reads ahead at most four writes' worth.
        config.batch_events_max = p.batch.events_max;
        config.buffer_events_max = (4 * p.batch.events_max).max(4096);
        let worker = match Worker::join(self.store.clone(), &p.group(), config).await {
            Ok(w) => w,
            Err(e) => return e.into(),
        };
        let mapping = (self.transform)(&p);
        let mut session = Session {
            runner: self,
            sink,
            worker,
            mapping,
            checkpoints: BTreeMap::new(),
            unchecked: Vec::new(),
            held: None,
            pace: Duration::ZERO,
            writes: 0,
            expired_at: Instant::now(),
            strained_at: None,
            lags: std::collections::VecDeque::with_capacity(LAG_SAMPLES_MAX),
        };
        let end = session.go().await;
        let Session { worker, .. } = session;
        if matches!(end, End::Stopped) {
            let _ = worker.leave().await;
        }
        end
    }
}

/// One session: a sink connection and a group worker.
struct Session<'a> {
    runner: &'a mut Runner,
    sink: Sink,
    worker: Worker,
    mapping: Box<dyn Transform>,
    /// The sink's checkpoints as last read or written.
    checkpoints: BTreeMap<u32, Progress>,
    /// Partitions claimed and not yet checked against the sink ([`Session::claimed`]).
    unchecked: Vec<u32>,
    /// A batch handed out for another partition while gathering.
    held: Option<Batch>,
    pace: Duration,
    writes: u64,
    expired_at: Instant,
    strained_at: Option<Instant>,
    /// The last rows' lags, µs (at most [`LAG_SAMPLES_MAX`]).
    lags: std::collections::VecDeque<u64>,
}

impl Session<'_> {
    fn pipeline(&self) -> Arc<Pipeline> {
        self.runner.handle.pipeline.clone()
    }

    async fn go(&mut self) -> End {
        match self.sink.checkpoints().await {
            Ok(c) => self.checkpoints = c,
            Err(e) => return e.into(),
        }
        self.show_positions();
        self.runner.update(|s| {
            s.state = State::Running;
            s.error = None;
        });
        loop {
            if self.runner.stopping() {
                return End::Stopped;
            }
            // Seen here, so the clones `gather` and `pause` wait on wake only for what is newer.
            let control = *self.runner.control.borrow_and_update();
            match control {
                Control::Run => {}
                Control::Pause => {
                    if let Err(e) = self.pause().await {
                        return e.into();
                    }
                    continue;
                }
                Control::Reset(to) => return self.reset(to).await,
            }
            let gathered = match self.gather().await {
                Ok(Some(g)) => g,
                // Stopping or paused: the loop's top says which.
                Ok(None) => continue,
                Err(end) => return end,
            };
            if let Err(end) = self.handle(gathered).await {
                return end;
            }
            self.expire().await;
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
        }
    }

    /// Resets the pipeline (see [`ResetTo`]): the group first, then the sink, so a crash
    /// between leaves the sink's checkpoints to skip what it holds. Paused after.
    async fn reset(&mut self, to: ResetTo) -> End {
        let p = self.pipeline();
        let groups = Groups::new(self.runner.store.clone());
        let position: Progress = match to {
            ResetTo::Start => Position::From(0).into(),
            ResetTo::End => match groups.position_at(None).await {
                Ok(at) => at,
                Err(e) => return e.into(),
            },
        };
        if let Err(e) = groups.reset(&p.group(), position.clone()).await {
            return e.into();
        }
        if to == ResetTo::Start {
            if let Err(e) = self.sink.clear(p.source.partitions).await {
                return e.into();
            }
        }
        tracing::info!(pipeline = %p.name, to = ?to, position = %position, "pipeline reset");
        self.runner.handle.control.send_replace(Control::Pause);
        End::Restart
    }

    /// Paused: heart-beat, wait for resume or stop.
    async fn pause(&mut self) -> Result<(), Error> {
        self.runner.update(|s| s.state = State::Paused);
        let mut control = self.runner.control.clone();
        let mut stopping = self.runner.stopping.clone();
        while *control.borrow() == Control::Pause && !*stopping.borrow() {
            self.worker.keep_alive().await?;
            tokio::select! {
                _ = control.changed() => {}
                _ = stopping.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        self.runner.update(|s| s.state = State::Running);
        Ok(())
    }

    /// The next write's events: worker batches of one partition gathered up to the limits or
    /// the linger; `None` when the service stops or the control changes.
    async fn gather(&mut self) -> Result<Option<Gathered>, End> {
        let p = self.pipeline();
        let first = match self.held.take() {
            Some(b) => b,
            None => {
                let mut stopping = self.runner.stopping.clone();
                let mut control = self.runner.control.clone();
                tokio::select! {
                    b = self.next_batch() => b?,
                    _ = stopping.wait_for(|s| *s) => return Ok(None),
                    _ = control.changed() => return Ok(None),
                }
            }
        };
        let mut g = Gathered {
            bytes: data_bytes(&first),
            batch: first,
        };
        let until = Instant::now() + Duration::from_millis(p.batch.linger_ms);
        while g.batch.events.len() < p.batch.events_max && g.bytes < p.batch.bytes_max {
            let Ok(next) = tokio::time::timeout_at(until, self.next_batch()).await else {
                break;
            };
            let next = next?;
            let bytes = data_bytes(&next);
            match g.batch.absorb(next) {
                Ok(()) => g.bytes += bytes,
                Err(other) => {
                    self.held = Some(other);
                    break;
                }
            }
        }
        Ok(Some(g))
    }
}

impl Session<'_> {
    /// The worker's next batch; partitions it claims on the way are first checked against
    /// the sink ([`Session::claimed`]).
    ///
    /// Cancel-safe (the linger's timeout and a pause drop it): a claimed partition stays in
    /// `unchecked` until its check is done, and no batch is taken while one is there.
    async fn next_batch(&mut self) -> Result<Batch, End> {
        loop {
            self.check_claimed().await?;
            match self.worker.next().await? {
                Next::Batch(b) => return Ok(b),
                Next::Claimed(parts) => self.unchecked.extend(parts),
            }
        }
    }

    /// [`Session::claimed`] for each partition in `unchecked`, each taken off once done.
    async fn check_claimed(&mut self) -> Result<(), End> {
        if self.unchecked.is_empty() {
            return Ok(());
        }
        let mut found = self.sink.checkpoints().await?;
        while let Some(&n) = self.unchecked.first() {
            match found.remove(&n) {
                Some(at) => self.checkpoints.insert(n, at),
                None => self.checkpoints.remove(&n),
            };
            self.claimed(n).await?;
            self.unchecked.remove(0);
        }
        self.show_positions();
        Ok(())
    }

    /// Partition `n`, just claimed, its checkpoint just read from the sink again (another
    /// worker may have written since): when its group position is past what the sink holds —
    /// the sink lost writes it had acknowledged (a server's unjournaled commits lost in a
    /// crash, a restore from an older backup) — it is moved back to the sink's checkpoint, so
    /// those events are written again. A partition without a checkpoint in the sink is left
    /// as it is (a sink that never had it, or whose checkpoints were cleared).
    async fn claimed(&mut self, n: u32) -> Result<(), End> {
        let Some(at) = self.checkpoints.get(&n).cloned() else {
            return Ok(());
        };
        let committed = self.worker.committed(n).map(|c| c.to_string());
        let back = match self.worker.rewind(n, &at).await {
            Ok(Some(back)) => back,
            // Taken meanwhile (or a rewind cut short): the worker dropped it, and says so
            // again when it claims it next.
            Ok(None) | Err(Error::Fenced(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let p = self.pipeline();
        tracing::warn!(pipeline = %p.name, partition = n, group = ?committed, sink = %at, to = %back,
            "the sink holds less than the group committed (it lost acknowledged writes, or was restored from a backup); going back to write the rest again");
        self.runner.metrics.add(
            "strata_etl_rewinds_total",
            "Partitions moved back to the sink's checkpoint: the sink held less than the group had committed.",
            &[("pipeline", p.name.as_str())],
            1.0,
        );
        self.runner.update(|s| s.rewinds += 1);
        Ok(())
    }

    /// Writes `g` in writes within the limits, then commits it to the group.
    async fn handle(&mut self, g: Gathered) -> Result<(), End> {
        let p = self.pipeline();
        let batch = g.batch;
        if !self.worker.holds(&batch) {
            // Handed out before the partition moved (or was moved back): it comes again to
            // whoever holds it now, so nothing of it is written from here.
            return Ok(());
        }
        let mut i = 0;
        while i < batch.events.len() {
            let j = write_end(&batch, i, p.batch.events_max, p.batch.bytes_max);
            self.write_range(&batch, i..j).await?;
            i = j;
        }
        self.runner.crash_point();
        match self.worker.commit(&batch).await {
            // Another worker has the partition now; the sink's checkpoint keeps the write once.
            Ok(()) | Err(Error::Fenced(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Maps the events of `range` the sink does not hold yet and writes them.
    async fn write_range(
        &mut self,
        batch: &Batch,
        range: std::ops::Range<usize>,
    ) -> Result<(), End> {
        let p = self.pipeline();
        let part = batch.partition;
        let from = self.checkpoints.get(&part).cloned();
        let mut to = from.clone().unwrap_or_else(|| Position::From(0).into());
        let mut items: Vec<(usize, Result<Row, String>)> = Vec::new();
        let mut passed = 0u64;
        let quarantine = p.quarantine_stream();
        for k in range {
            let (Some(e), Some(&shard)) = (batch.events.get(k), batch.shards().get(k)) else {
                continue;
            };
            if from.as_ref().is_some_and(|c| !c.wants(shard, e.position)) {
                passed += 1;
                continue;
            }
            to.handled(shard, e.position);
            let wanted =
                p.source.event_types.is_empty() || p.source.event_types.contains(&e.r#type);
            if !wanted || e.stream == quarantine {
                passed += 1;
                continue;
            }
            items.push((k, self.mapping.row(Located { event: e, shard })));
        }
        self.runner.update(|s| s.passed_over += passed);
        if from.as_ref() == Some(&to) {
            return Ok(());
        }
        let bad: Vec<(usize, String)> = items
            .iter()
            .filter_map(|(k, r)| r.as_ref().err().map(|why| (*k, why.clone())))
            .collect();
        self.quarantine(batch, &bad).await?;
        let rows: Vec<Row> = items.into_iter().filter_map(|(_, r)| r.ok()).collect();
        let started = Instant::now();
        let w = Write {
            partition: part,
            from: from.as_ref(),
            to: &to,
            rows: &rows,
        };
        match self.sink.write(w).await {
            Ok(Written::Done) => {}
            Ok(Written::Elsewhere(_)) => {
                return Err(End::Retry(format!("partition {part}'s checkpoint in the sink was moved by another writer; reading it again")))
            }
            Err(SinkError::Rejected(why)) => {
                self.write_records(part, from, rows, &why).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let events = passed + bad.len() as u64 + rows.len() as u64;
        self.written(part, to, &rows, events, bad.len() as u64, started.elapsed())
            .await;
        Ok(())
    }

    /// After a write the sink refused for good: each record's rows alone; a record refused alone
    /// is quarantined with the sink's reason and passed by (its checkpoint moves all the same).
    async fn write_records(
        &mut self,
        part: u32,
        from: Option<Progress>,
        rows: Vec<Row>,
        why: &str,
    ) -> Result<(), End> {
        tracing::warn!(pipeline = %self.pipeline().name, error = %why, "the sink refused a write; writing it record by record");
        let mut at = from;
        let mut i = 0;
        while i < rows.len() {
            let key = rows.get(i).map(|r| (r.shard, r.position));
            let n = rows[i..]
                .iter()
                .take_while(|r| Some((r.shard, r.position)) == key)
                .count();
            let record = &rows[i..i + n];
            let mut to = at.clone().unwrap_or_else(|| Position::From(0).into());
            for r in record {
                to.handled(r.shard, r.position);
            }
            let started = Instant::now();
            let w = Write {
                partition: part,
                from: at.as_ref(),
                to: &to,
                rows: record,
            };
            let (written, refused): (&[Row], u64) = match self.sink.write(w).await {
                Ok(Written::Done) => (record, 0),
                Ok(Written::Elsewhere(_)) => {
                    return Err(End::Retry("another writer moved the checkpoint".into()))
                }
                Err(SinkError::Rejected(reason)) => {
                    self.quarantine_rows(record, &reason).await?;
                    let empty = Write {
                        partition: part,
                        from: at.as_ref(),
                        to: &to,
                        rows: &[],
                    };
                    match self.sink.write(empty).await? {
                        Written::Done => (&[], record.len() as u64),
                        Written::Elsewhere(_) => {
                            return Err(End::Retry("another writer moved the checkpoint".into()))
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            };
            self.written(
                part,
                to.clone(),
                written,
                record.len() as u64,
                refused,
                started.elapsed(),
            )
            .await;
            at = Some(to);
            i += n;
        }
        Ok(())
    }

    /// Books a write: checkpoint, status, metrics, throttle.
    async fn written(
        &mut self,
        part: u32,
        to: Progress,
        rows: &[Row],
        events: u64,
        quarantined: u64,
        took: Duration,
    ) {
        let p = self.pipeline();
        let now = now_us();
        let name = p.name.as_str();
        let m = self.runner.metrics.clone();
        for r in rows {
            let lag_us = now.saturating_sub(r.appended_us);
            if self.lags.len() == LAG_SAMPLES_MAX {
                self.lags.pop_front();
            }
            self.lags.push_back(lag_us);
            let lag = lag_us as f64 / 1e6;
            m.observe(
                "strata_etl_lag_seconds",
                "From an event's append to its row in the sink.",
                &[("pipeline", name)],
                lag,
            );
        }
        m.add(
            "strata_etl_events_total",
            "Events handled.",
            &[("pipeline", name)],
            events as f64,
        );
        m.add(
            "strata_etl_rows_total",
            "Rows written to the sink.",
            &[("pipeline", name)],
            rows.len() as f64,
        );
        m.add(
            "strata_etl_quarantined_total",
            "Events quarantined (failed a quality rule, or the sink refused them).",
            &[("pipeline", name)],
            quarantined as f64,
        );
        m.observe(
            "strata_etl_write_seconds",
            "One write to the sink.",
            &[("pipeline", name)],
            took.as_secs_f64(),
        );
        self.checkpoints.insert(part, to);
        self.writes += 1;
        let strain = self.strain().await;
        self.throttle(took, strain.as_ref());
        // A write of no rows (all quarantined or passed over) keeps the last lag shown.
        let lag = rows
            .last()
            .map(|r| now.saturating_sub(r.appended_us) as f64 / 1e6);
        let pace = self.pace;
        let (p50, p99) = percentiles(&self.lags);
        self.runner.update(|s| {
            s.lag_p50_ms = p50;
            s.lag_p99_ms = p99;
            s.rate = rate(s, events, now);
            s.events += events;
            s.rows += rows.len() as u64;
            s.quarantined += quarantined;
            if let Some(lag) = lag {
                s.lag_seconds = lag;
            }
            s.last_write_us = now;
            s.error = None;
            s.state = State::Running;
            s.throttle.write_ms = took.as_secs_f64() * 1e3;
            s.throttle.pace_ms = pace.as_millis() as u64;
            if let Some(strain) = strain {
                s.throttle.parts = strain.parts;
                s.throttle.slot = strain.slot;
            }
        });
        m.set(
            "strata_etl_pace_seconds",
            "The throttle's pause before each write.",
            &[("pipeline", name)],
            pace.as_secs_f64(),
        );
        if let Some(lag) = lag {
            m.set(
                "strata_etl_lag_last_seconds",
                "The last write's lag from append to sink.",
                &[("pipeline", name)],
                lag,
            );
        }
        self.show_positions();
    }

    /// The sink's strain when it was last read [`STRAIN_EVERY`] ago or more (a failure to read
    /// it is no strain: the write itself finds a sink that is down).
    async fn strain(&mut self) -> Option<Strain> {
        if self
            .strained_at
            .is_some_and(|at| at.elapsed() < STRAIN_EVERY)
        {
            return None;
        }
        self.strained_at = Some(Instant::now());
        match self.sink.strain().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(pipeline = %self.pipeline().name, error = %e, "reading the sink's strain failed");
                None
            }
        }
    }

    /// Sets the pace after a write that took `took`, with the sink's `strain` when read now
    /// (else as last read).
    fn throttle(&mut self, took: Duration, strain: Option<&Strain>) {
        let t = self.pipeline().throttle;
        let shown = self.runner.handle.status().throttle;
        let parts = strain.map_or(shown.parts, |s| s.parts);
        let slot = strain.map_or(shown.slot, |s| s.slot.clone());
        let reason = if took > Duration::from_millis(t.latency_target_ms) {
            Some(format!(
                "a write took {} ms (target {} ms)",
                took.as_millis(),
                t.latency_target_ms
            ))
        } else if let Some(n) = parts.filter(|n| *n > t.parts_max) {
            Some(format!("{n} active parts (most {})", t.parts_max))
        } else if let Some(lag) = slot.filter(|l| l.bytes > t.slot_lag_max_bytes) {
            Some(format!(
                "replication slot {} is {} bytes of WAL behind (most {})",
                lag.slot, lag.bytes, t.slot_lag_max_bytes
            ))
        } else {
            None
        };
        let ceiling = Duration::from_millis(t.pace_max_ms);
        self.pace = match reason {
            Some(_) => (self.pace * 2).max(Duration::from_millis(10)).min(ceiling),
            None if self.pace < Duration::from_millis(2) => Duration::ZERO,
            None => self.pace / 2,
        };
        if reason.is_some() || self.pace.is_zero() {
            self.runner.update(|s| s.throttle.reason = reason);
        }
    }

    fn show_positions(&self) {
        let shown: BTreeMap<u32, String> = self
            .checkpoints
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        self.runner.update(|s| s.positions = shown);
    }

    /// Applies the sink's TTL now and then; a failure is logged and tried again later.
    async fn expire(&mut self) {
        if self.expired_at.elapsed() < EXPIRE_EVERY && self.writes > 1 {
            return;
        }
        self.expired_at = Instant::now();
        match self.sink.expire(now_us()).await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(pipeline = %self.pipeline().name, partitions = ?dropped, "dropped partitions past the TTL");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline().name, error = %e, "applying the TTL failed")
            }
        }
    }

    /// Appends the events at `bad` (index, reason) of `batch` to the quarantine stream.
    async fn quarantine(&mut self, batch: &Batch, bad: &[(usize, String)]) -> Result<(), End> {
        let p = self.pipeline();
        let events: Vec<pb::NewEvent> = bad
            .iter()
            .filter_map(|(k, why)| {
                let e = batch.events.get(*k)?;
                let shard = *batch.shards().get(*k)?;
                Some(quarantined(&p.name, e, shard, why))
            })
            .collect();
        self.append_quarantined(events).await
    }

    /// Quarantines the events of rows the sink refused (their data as the row's source).
    async fn quarantine_rows(&mut self, rows: &[Row], why: &str) -> Result<(), End> {
        let name = self.pipeline().name.clone();
        let events = rows
            .iter()
            .map(|r| {
                let e = pb::RecordedEvent {
                    stream: r.stream.clone(),
                    version: r.version,
                    position: r.position,
                    timestamp_us: r.appended_us,
                    ..Default::default()
                };
                quarantined(&name, &e, r.shard, why)
            })
            .collect();
        self.append_quarantined(events).await
    }

    async fn append_quarantined(&mut self, events: Vec<pb::NewEvent>) -> Result<(), End> {
        if events.is_empty() {
            return Ok(());
        }
        let stream = self.pipeline().quarantine_stream();
        let store = &self.runner.store;
        let mut chunk: Vec<pb::NewEvent> = Vec::new();
        let mut bytes = 0;
        let mut iter = events.into_iter().peekable();
        while let Some(e) = iter.next() {
            bytes += e.data.len();
            chunk.push(e);
            let full = chunk.len() >= QUARANTINE_APPEND_EVENTS_MAX
                || iter
                    .peek()
                    .is_none_or(|n| bytes + n.data.len() > QUARANTINE_APPEND_BYTES_MAX);
            if full {
                append_idempotent(store, &stream, std::mem::take(&mut chunk)).await?;
                bytes = 0;
            }
        }
        Ok(())
    }
}

/// Appends `events`; ids already there (quarantined before a crash) are not appended again.
pub(crate) async fn append_idempotent(
    store: &Client,
    stream: &str,
    events: Vec<pb::NewEvent>,
) -> Result<(), Error> {
    match store
        .append(stream, ExpectedVersion::Any, events.clone())
        .await
    {
        Ok(_) => Ok(()),
        // Some were appended before (with other words: a reason can differ after a restart):
        // one at a time, each either new or there already.
        Err(Error::IdempotencyConflict(_)) => {
            for e in events {
                match store.append(stream, ExpectedVersion::Any, vec![e]).await {
                    Ok(_) | Err(Error::IdempotencyConflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The quarantine event of `e`: its id derived from the pipeline and the event, so quarantining
/// it again after a crash adds nothing.
fn quarantined(pipeline: &str, e: &pb::RecordedEvent, shard: u32, why: &str) -> pb::NewEvent {
    let id = uuid::Uuid::new_v5(
        &QUARANTINE_NAMESPACE,
        format!("{pipeline}\n{}\n{}", e.stream, e.version).as_bytes(),
    );
    let data = match serde_json::from_slice::<serde_json::Value>(&e.data) {
        Ok(v) if e.data.len() <= QUARANTINE_DATA_BYTES_MAX => v,
        _ => {
            let cut = e
                .data
                .get(..QUARANTINE_DATA_BYTES_MAX.min(e.data.len()))
                .unwrap_or_default();
            serde_json::Value::String(String::from_utf8_lossy(cut).into_owned())
        }
    };
    let body = serde_json::json!({
        "pipeline": pipeline,
        "reason": why,
        "stream": e.stream,
        "version": e.version,
        "shard": shard,
        "position": e.position,
        "type": e.r#type,
        "appended_us": e.timestamp_us,
        "data": data,
        "data_cut": e.data.len() > QUARANTINE_DATA_BYTES_MAX,
    });
    pb::NewEvent {
        id: id.to_string(),
        r#type: "EtlQuarantined".into(),
        data: serde_json::to_vec(&body).unwrap_or_default().into(),
        metadata: Default::default(),
    }
}

/// Where the write starting at event `i` ends: at most `events_max` events and `bytes_max` bytes
/// (at least one record), at a record's end.
fn write_end(b: &Batch, i: usize, events_max: usize, bytes_max: usize) -> usize {
    let mut bytes = 0;
    let mut j = i;
    while let Some(e) = b.events.get(j) {
        let same_record = j > i
            && b.events
                .get(j - 1)
                .is_some_and(|p| p.position == e.position)
            && b.shards().get(j - 1) == b.shards().get(j);
        let size = e.data.len() + e.stream.len();
        if j > i && !same_record && (j - i >= events_max || bytes + size > bytes_max) {
            break;
        }
        bytes += size;
        j += 1;
    }
    j
}

/// The median and 99th percentile of `lags` (µs), in ms.
fn percentiles(lags: &std::collections::VecDeque<u64>) -> (f64, f64) {
    if lags.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted: Vec<u64> = lags.iter().copied().collect();
    sorted.sort_unstable();
    let at = |q: f64| {
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted.get(i).copied().unwrap_or(0) as f64 / 1e3
    };
    (at(0.5), at(0.99))
}

/// Events per second: over the time since the last write, smoothed.
fn rate(s: &Status, events: u64, now: u64) -> f64 {
    if s.last_write_us == 0 || now <= s.last_write_us {
        return s.rate;
    }
    let instant = events as f64 / ((now - s.last_write_us) as f64 / 1e6);
    0.8 * s.rate + 0.2 * instant
}

fn data_bytes(b: &Batch) -> usize {
    b.events.iter().map(|e| e.data.len() + e.stream.len()).sum()
}
