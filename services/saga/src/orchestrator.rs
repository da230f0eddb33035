//! The orchestrator process's loop: it keeps no state of its own but a cache. At start it finds
//! the unfinished sagas (a `$all` scan of the journals' start and end entries) and advances
//! each; then it follows every journal (a `$all` subscription on `saga-` from where the scan
//! ended: no gap) and advances the saga an entry belongs to, and fires the durable timers
//! (deadlines and retries recorded in the journals) it learns of while advancing. Advancing
//! is: read the journal, fold it, decide, append the decision expecting the journal's version —
//! again until the saga waits or is over. Several orchestrators may run: a decision lands only
//! on the version it was made from.
//!
//! The cache: the folded state of up to [`CACHE_MAX`] unfinished sagas, each at a journal
//! version. Advancing a cached saga reads only the entries after that version; a decision that
//! landed is folded on without reading it back; the subscription's entries at or below the
//! cached version (the orchestrator's own decisions) wake nothing. A cached state is never
//! wrong, only possibly behind: every decision is appended expecting its version, and a miss
//! reads what came after.
//!
//! Turns: at most [`COMMANDS_OUT_MAX`] sagas have a command out at once; a saga that would send
//! one beyond that waits its turn (oldest first) before the command is sent, so its deadline
//! starts only then — a backlog (10,000 sagas resumed at once after a crash) waits here rather
//! than timing out in the participants' queues. A saga keeps its turn from step to step and
//! passes it on when it waits for time or ends.
//!
//! Work is spread over [`LANES`] lanes by saga id, each advancing one saga at a time (a saga's
//! advances never overlap in one process), each with a queue of at most [`LANE_QUEUE`] ids.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
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
/// Sagas with a command out at once (see the module).
pub const COMMANDS_OUT_MAX: usize = 256;
/// Unfinished sagas whose state the orchestrator keeps (beyond it, one is dropped: it is read
/// again when next advanced).
pub const CACHE_MAX: usize = 32_768;
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
    cache: Mutex<HashMap<String, Loaded>>,
    turns: Mutex<Turns>,
}

/// Who has a command out, and who waits for a turn (each saga once; at most every unfinished
/// saga this orchestrator knows of).
#[derive(Default)]
struct Turns {
    out: HashSet<String>,
    waiting: VecDeque<String>,
    queued: HashSet<String>,
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
            cache: Mutex::default(),
            turns: Mutex::default(),
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
        let cached = lock(&self.cache).remove(id);
        let current = match cached {
            Some(c) => store::refresh(&self.store, c).await?,
            None => store::load(&self.store, id).await?,
        };
        let Some(mut loaded) = current else {
            return Ok(());
        };
        let Some(def) = saga_type(&loaded.saga.saga_type) else {
            return Err(StoreError::Journal(format!("saga {id}: unknown type")));
        };
        if loaded.saga.pending.is_some() {
            // Sent before this process knew it (a restart, another orchestrator): it holds a turn.
            lock(&self.turns).out.insert(id.to_string());
        }
        for _ in 0..DECISIONS_PER_ADVANCE {
            self.note(id, loaded.saga.status);
            match decide(&def, &loaded.saga, self.clock.now_us()) {
                Decision::Done => {
                    self.pass_turn(id);
                    return Ok(());
                }
                Decision::Wait(at) => {
                    if let Some(at) = at {
                        self.schedule(at, id);
                    }
                    if loaded.saga.pending.is_none() {
                        self.pass_turn(id);
                    }
                    self.keep(loaded);
                    return Ok(());
                }
                Decision::Act {
                    command: Some(_), ..
                } if !self.take_turn(id) => {
                    self.keep(loaded);
                    return Ok(());
                }
                decision => {
                    if store::act(&self.store, &loaded, &decision).await? {
                        self.report(&loaded, &decision);
                        store::acted(&mut loaded, &decision, self.clock.now_us())?;
                    } else {
                        // The journal moved on (a reply, another orchestrator): read what came.
                        match store::refresh(&self.store, loaded).await? {
                            Some(l) => loaded = l,
                            None => return Ok(()),
                        }
                    }
                }
            }
        }
        self.keep(loaded);
        self.schedule(self.clock.now_us(), id);
        Ok(())
    }

    /// Whether saga `id` may send a command now: it holds a turn, or one is free (it takes
    /// it); otherwise it waits in line (and is advanced again when its turn comes).
    fn take_turn(&self, id: &str) -> bool {
        let mut turns = lock(&self.turns);
        if turns.out.contains(id) {
            return true;
        }
        if turns.out.len() < COMMANDS_OUT_MAX {
            turns.out.insert(id.to_string());
            return true;
        }
        if turns.queued.insert(id.to_string()) {
            turns.waiting.push_back(id.to_string());
        }
        false
    }

    /// Saga `id` has no command out any more (it waits for time, or is over): its turn goes to
    /// the first in line, advanced at once.
    fn pass_turn(&self, id: &str) {
        let next = {
            let mut turns = lock(&self.turns);
            if !turns.out.remove(id) {
                return;
            }
            let next = turns.waiting.pop_front();
            if let Some(n) = &next {
                turns.queued.remove(n);
                turns.out.insert(n.clone());
            }
            next
        };
        if let Some(n) = next {
            self.schedule(self.clock.now_us(), &n);
        }
    }

    /// Sagas with a command out, and waiting for a turn.
    pub fn turns(&self) -> (usize, usize) {
        let turns = lock(&self.turns);
        (turns.out.len(), turns.waiting.len())
    }

    /// Caches an unfinished saga's state (without its history).
    fn keep(&self, mut loaded: Loaded) {
        loaded.history = Vec::new();
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_MAX {
            if let Some(any) = cache.keys().next().cloned() {
                cache.remove(&any);
            }
        }
        cache.insert(loaded.saga.id.clone(), loaded);
    }

    /// Whether the journal entry at `version` of saga `id` is already in its cached state.
    fn known(&self, id: &str, version: u64) -> bool {
        lock(&self.cache)
            .get(id)
            .is_some_and(|l| version <= l.saga.version)
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
                        partitions: None,
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
            partitions: None,
        };
        let mut journals = self
            .store
            .subscribe(Target::All(Some(filter)), Start::Cursor(cursor));
        loop {
            tokio::select! {
                item = journals.next() => match item {
                    Ok(Item::Event(e)) => {
                        if let Some(id) = saga_of(&e.stream) {
                            if !self.known(id, e.version) {
                                self.enqueue(id).await;
                            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct Quiet;

    impl Events for Quiet {
        fn reached(&self, _: &str, _: Status, _: Option<&str>) {}
    }

    #[tokio::test]
    async fn turns_are_kept_from_step_to_step_and_passed_on_in_order() {
        // No store is reached: turns are the orchestrator's own bookkeeping.
        let store = Client::connect(["127.0.0.1:9"]).unwrap();
        let o = Orchestrator::new(store, Arc::new(SystemClock), Arc::new(Quiet));
        for n in 0..COMMANDS_OUT_MAX {
            assert!(o.take_turn(&format!("s{n}")));
        }
        assert!(
            o.take_turn("s0"),
            "a saga keeps its turn for its next command"
        );
        assert!(!o.take_turn("late-1"));
        assert!(!o.take_turn("late-2"));
        assert!(!o.take_turn("late-1"), "asking again does not queue twice");
        assert_eq!(o.turns(), (COMMANDS_OUT_MAX, 2));
        o.pass_turn("s0");
        assert_eq!(o.turns(), (COMMANDS_OUT_MAX, 1));
        assert!(o.take_turn("late-1"), "the first in line has the turn");
        assert!(!o.take_turn("late-2"));
        let scheduled: Vec<String> = lock(&o.timers).iter().map(|t| t.1.clone()).collect();
        assert_eq!(scheduled, ["late-1"], "and is advanced at once");
        o.pass_turn("not-holding");
        assert_eq!(o.turns(), (COMMANDS_OUT_MAX, 1));
    }
}
