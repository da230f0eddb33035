//! The orchestrator process's loop: it keeps no state of its own but a cache. At start it finds
//! the unfinished sagas (a `$all` scan of the journals' start and end entries) and advances
//! each; then it follows every journal (a `$all` subscription on `saga-` from where the scan
//! ended: no gap) and advances the saga an entry belongs to, and fires the durable timers
//! (deadlines and retries recorded in the journals) it learns of while advancing. Advancing
//! is: read the journal, fold it, decide, append the decision expecting the journal's version —
//! again until the saga waits or is over. Several orchestrators may run: a decision lands only
//! on the version it was made from.
//!
//! Work is spread over [`LANES`] lanes by saga id, each advancing one saga at a time (a saga's
//! advances never overlap in one process), each with a queue of at most [`LANE_QUEUE`] ids.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strata_client::{pb, Client, Item, Start, Target};
use strata_service::server::stopped;
use tokio::sync::{mpsc, watch, Notify};

use crate::decide::{decide, Decision};
use crate::definition::saga_type;
use crate::journal::Entry;
use crate::state::Status;
use crate::store::{self, Loaded, StoreError};

/// Lanes advancing sagas at once.
pub const LANES: usize = 16;
/// Saga ids queued per lane.
pub const LANE_QUEUE: usize = 4096;
/// Sagas whose status the list keeps (the oldest final ones go first).
pub const INDEX_MAX: usize = 100_000;
/// Decisions one advance makes at most before yielding (a saga makes a few per step).
const DECISIONS_PER_ADVANCE: usize = 64;
/// When an advance failed (the store unreachable), the saga is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The time, µs since the Unix epoch: a seam, so a test can drive the timers.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_us(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

/// What happened, for the service's metrics and logs.
pub trait Events: Send + Sync + 'static {
    /// A saga reached `status` (final, or compensating).
    fn reached(&self, id: &str, status: Status, reason: Option<&str>);
}

#[derive(Default)]
struct Index {
    status: HashMap<String, Status>,
    order: VecDeque<String>,
}

/// The orchestrator.
pub struct Orchestrator {
    store: Client,
    clock: Arc<dyn Clock>,
    events: Arc<dyn Events>,
    lanes: Vec<mpsc::Sender<String>>,
    receivers: Mutex<Vec<mpsc::Receiver<String>>>,
    timers: Mutex<BTreeSet<(u64, String)>>,
    timer_added: Notify,
    index: Mutex<Index>,
    recovered: Mutex<Option<Recovery>>,
}

/// The last recovery from the journals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// Unfinished sagas it found (and scheduled).
    pub unfinished: usize,
    /// How long the scan of the journals took, µs.
    pub scan_us: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The saga a journal stream belongs to (`saga-{ID}` → ID).
pub fn saga_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("saga-{")?.strip_suffix('}')
}

impl Orchestrator {
    /// An orchestrator over `store`.
    pub fn new(store: Client, clock: Arc<dyn Clock>, events: Arc<dyn Events>) -> Arc<Orchestrator> {
        let (lanes, receivers) = (0..LANES).map(|_| mpsc::channel(LANE_QUEUE)).unzip();
        Arc::new(Orchestrator {
            store,
            clock,
            events,
            lanes,
            receivers: Mutex::new(receivers),
            timers: Mutex::default(),
            timer_added: Notify::new(),
            index: Mutex::default(),
            recovered: Mutex::default(),
        })
    }

    /// Its store client.
    pub fn store(&self) -> &Client {
        &self.store
    }

    /// The last recovery, once one finished (until then, sagas from before this process
    /// started are not being advanced).
    pub fn recovered(&self) -> Option<Recovery> {
        *lock(&self.recovered)
    }

    /// Queues saga `id` to be advanced (waits while its lane's queue is full).
    pub async fn enqueue(&self, id: &str) {
        let lane = id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        if let Some(tx) = self.lanes.get(lane % LANES) {
            let _ = tx.send(id.to_string()).await;
        }
    }

    /// The sagas it knows of (started or seen since it began), newest first, with `status`
    /// when given; at most `limit`.
    pub fn list(&self, status: Option<Status>, limit: usize) -> Vec<(String, Status)> {
        let index = lock(&self.index);
        index
            .order
            .iter()
            .rev()
            .filter_map(|id| index.status.get(id).map(|s| (id.clone(), *s)))
            .filter(|(_, s)| status.is_none_or(|want| *s == want))
            .take(limit)
            .collect()
    }

    fn note(&self, id: &str, status: Status) {
        let mut index = lock(&self.index);
        if index.status.insert(id.to_string(), status).is_none() {
            index.order.push_back(id.to_string());
        }
        while index.order.len() > INDEX_MAX {
            let Some(old) = index.order.pop_front() else {
                break;
            };
            index.status.remove(&old);
        }
    }

    fn schedule(&self, at_us: u64, id: &str) {
        lock(&self.timers).insert((at_us, id.to_string()));
        self.timer_added.notify_one();
    }

    /// Advances saga `id` until it waits or is over.
    pub async fn advance(&self, id: &str) -> Result<(), StoreError> {
        for _ in 0..DECISIONS_PER_ADVANCE {
            let Some(loaded) = store::load(&self.store, id).await? else {
                return Ok(());
            };
            let Some(def) = saga_type(&loaded.saga.saga_type) else {
                return Err(StoreError::Journal(format!("saga {id}: unknown type")));
            };
            self.note(id, loaded.saga.status);
            match decide(&def, &loaded.saga, self.clock.now_us()) {
                Decision::Done => return Ok(()),
                Decision::Wait(at) => {
                    if let Some(at) = at {
                        self.schedule(at, id);
                    }
                    return Ok(());
                }
                decision => {
                    if store::act(&self.store, &loaded, &decision).await? {
                        self.report(&loaded, &decision);
                    }
                }
            }
        }
        self.schedule(self.clock.now_us(), id);
        Ok(())
    }

    /// Logs and counts a decision that changed the saga's status.
    fn report(&self, loaded: &Loaded, decision: &Decision) {
        let Decision::Act { entries, .. } = decision else {
            return;
        };
        for e in entries {
            let (status, reason) = match e {
                Entry::SagaCompleted => (Status::Completed, None),
                Entry::SagaCompensated => (Status::Compensated, None),
                Entry::SagaCompensating { reason } => (Status::Compensating, Some(reason.as_str())),
                Entry::SagaNeedsAttention { reason } => {
                    (Status::NeedsAttention, Some(reason.as_str()))
                }
                _ => continue,
            };
            self.note(&loaded.saga.id, status);
            self.events.reached(&loaded.saga.id, status, reason);
        }
    }

    /// The unfinished sagas (started, not over), and the cursor after the scan.
    async fn unfinished(&self) -> Result<(Vec<String>, bytes::Bytes), StoreError> {
        let mut open: Vec<String> = Vec::new();
        let mut over: BTreeSet<String> = BTreeSet::new();
        let mut cursor = bytes::Bytes::new();
        loop {
            let page = self
                .store
                .read_all(pb::ReadAllRequest {
                    from_cursor: cursor.clone(),
                    limit: 4096,
                    filter: Some(pb::Filter {
                        stream_prefix: "saga-".into(),
                        event_types: [
                            "saga-started",
                            "saga-completed",
                            "saga-compensated",
                            "saga-needs-attention",
                        ]
                        .map(String::from)
                        .to_vec(),
                    }),
                    ..Default::default()
                })
                .await?;
            for e in &page.events {
                let Some(id) = saga_of(&e.stream) else {
                    continue;
                };
                if e.r#type == "saga-started" {
                    open.push(id.to_string());
                } else {
                    over.insert(id.to_string());
                }
            }
            if page.next_cursor == cursor {
                break;
            }
            cursor = page.next_cursor;
        }
        open.retain(|id| !over.contains(id));
        Ok((open, cursor))
    }

    /// Runs until `stop`: recovery, then the journals' subscription, the timers and the lanes.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let receivers = std::mem::take(&mut *lock(&self.receivers));
        for rx in receivers {
            tokio::spawn(self.clone().lane(rx));
        }
        tokio::spawn(self.clone().timers(stop.clone()));
        // Recover, then follow; when the subscription gives up (the store away longer than
        // the client's deadline), recover again from the journals.
        loop {
            let Some(cursor) = self.recover(&mut stop).await else {
                return;
            };
            if !self.follow(cursor, &mut stop).await {
                return;
            }
            tracing::warn!("the journals' subscription failed; recovering from the journals again");
        }
    }

    /// Finds the unfinished sagas (retrying while the store does not answer) and schedules
    /// each; the cursor after the scan, `None` once stopped.
    async fn recover(&self, stop: &mut watch::Receiver<bool>) -> Option<bytes::Bytes> {
        loop {
            let began = self.clock.now_us();
            match self.unfinished().await {
                Ok((open, cursor)) => {
                    let scan_us = self.clock.now_us().saturating_sub(began);
                    tracing::info!(
                        unfinished = open.len(),
                        scan_ms = scan_us / 1000,
                        "resuming the unfinished sagas"
                    );
                    for id in &open {
                        self.note(id, Status::Running);
                        self.schedule(0, id);
                    }
                    *lock(&self.recovered) = Some(Recovery {
                        unfinished: open.len(),
                        scan_us,
                    });
                    return Some(cursor);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finding the unfinished sagas failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_AFTER) => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    /// Advances the saga of every journal entry from `cursor` on; `false` once stopped, `true`
    /// when the subscription failed.
    async fn follow(&self, cursor: bytes::Bytes, stop: &mut watch::Receiver<bool>) -> bool {
        let filter = pb::Filter {
            stream_prefix: "saga-".into(),
            event_types: Vec::new(),
        };
        let mut journals = self
            .store
            .subscribe(Target::All(Some(filter)), Start::Cursor(cursor));
        loop {
            tokio::select! {
                item = journals.next() => match item {
                    Ok(Item::Event(e)) => {
                        if let Some(id) = saga_of(&e.stream) {
                            self.enqueue(id).await;
                        }
                    }
                    Ok(Item::CaughtUp) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "the journals' subscription failed");
                        return true;
                    }
                },
                _ = stopped(stop) => return false,
            }
        }
    }

    async fn lane(self: Arc<Self>, mut rx: mpsc::Receiver<String>) {
        while let Some(id) = rx.recv().await {
            if let Err(e) = self.advance(&id).await {
                tracing::warn!(saga = %id, error = %e, "advancing a saga failed; trying again shortly");
                self.schedule(self.clock.now_us() + RETRY_AFTER.as_micros() as u64, &id);
            }
        }
    }

    /// Fires the timers that are due: their sagas are advanced.
    async fn timers(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = self.clock.now_us();
            let (due, next) = {
                let mut timers = lock(&self.timers);
                let mut due = Vec::new();
                while let Some(first) = timers.first().cloned() {
                    if first.0 > now {
                        break;
                    }
                    timers.pop_first();
                    due.push(first.1);
                }
                (due, timers.first().map(|t| t.0))
            };
            for id in due {
                self.enqueue(&id).await;
            }
            let wait = next.map_or(Duration::from_secs(1), |at| {
                Duration::from_micros(at.saturating_sub(now)).min(Duration::from_secs(1))
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.timer_added.notified() => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }
}
