//! The node's retention loop: every `interval`, one throttled pass of the engine's retention
//! (`strata_engine::retention`) on the blocking pool, then the drop of a reclaimed prefix of
//! segments. Bounded by the open `$all` subscriptions: nothing at or after the lowest position
//! one of them has yet to deliver is touched. On a replica the pass also stays below Raft's
//! purge point and the drop below the current snapshot (`strata_raft::Shard::retention_pass`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_engine::retention::{PassReport, RetentionConfig};
use strata_engine::Position;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::clock::WallClock;

/// Retention settings of a node.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Run it at all. Default: on.
    pub enabled: bool,
    /// Time between passes. Default 60 s.
    pub interval: Duration,
    /// The engine's settings: as-of window (default 1 h), rewrite threshold, throttle.
    pub engine: RetentionConfig,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            enabled: true,
            interval: Duration::from_secs(60),
            engine: RetentionConfig::default(),
        }
    }
}

/// Positions open `$all` subscriptions have yet to deliver; retention stays below the lowest.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    inner: Arc<Mutex<(u64, HashMap<u64, Position>)>>,
}

/// One subscription's pin; unpinned when dropped.
#[derive(Debug)]
pub struct Pin {
    pins: Pins,
    id: u64,
}

impl Pins {
    /// Pins `position` until the returned pin moves or is dropped.
    pub fn pin(&self, position: Position) -> Pin {
        let mut inner = strata_engine::sync::lock(&self.inner);
        inner.0 += 1;
        let id = inner.0;
        inner.1.insert(id, position);
        Pin {
            pins: self.clone(),
            id,
        }
    }

    /// The lowest pinned position (`Position::MAX` when none).
    pub fn lowest(&self) -> Position {
        let inner = strata_engine::sync::lock(&self.inner);
        inner.1.values().copied().min().unwrap_or(Position::MAX)
    }
}

impl Pin {
    /// The subscription has delivered everything before `position`.
    pub fn advance(&self, position: Position) {
        let mut inner = strata_engine::sync::lock(&self.pins.inner);
        inner.1.insert(self.id, position);
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut inner = strata_engine::sync::lock(&self.pins.inner);
        inner.1.remove(&self.id);
    }
}

/// Sleeps off the bytes a pass moved beyond its rate, in slices of at least 10 ms.
struct Throttle {
    bytes_per_sec: u64,
    owed: u64,
}

impl Throttle {
    fn pace(&mut self, bytes: u64) {
        if self.bytes_per_sec == 0 || self.bytes_per_sec == u64::MAX {
            return;
        }
        self.owed += bytes;
        let slice = self.bytes_per_sec / 100;
        if self.owed >= slice.max(1) {
            let secs = self.owed as f64 / self.bytes_per_sec as f64;
            std::thread::sleep(Duration::from_secs_f64(secs));
            self.owed = 0;
        }
    }
}

/// One pass now: rewrite, then drop the reclaimed prefix.
pub async fn pass_once(
    backend: &Backend,
    settings: &RetentionSettings,
    now_us: u64,
    bound: Position,
) -> Result<(PassReport, usize), strata_engine::Error> {
    let config = settings.engine.clone();
    let mut throttle = Throttle {
        bytes_per_sec: config.bytes_per_sec,
        owed: 0,
    };
    let failed =
        |e: String| strata_engine::Error::Unavailable(format!("retention task failed: {e}"));
    match backend {
        Backend::Single(engine) => {
            let retention = engine.retention().clone();
            let report = crate::blocking::run(move || {
                retention.pass(&config, now_us, bound, &mut |n| throttle.pace(n))
            })
            .await
            .map_err(failed)??;
            let dropped = engine.drop_reclaimed().await?;
            Ok((report, dropped))
        }
        Backend::Replicated(replica) => {
            let shard = replica.shard().clone();
            crate::blocking::run(move || {
                shard.retention_pass(&config, now_us, bound, &mut |n| throttle.pace(n))
            })
            .await
            .map_err(failed)?
        }
    }
}

/// Runs passes every `settings.interval` until `stop` turns true.
pub async fn run(
    backend: Backend,
    settings: RetentionSettings,
    clock: Arc<dyn WallClock>,
    pins: Pins,
    service: Arc<crate::stats::ServiceStats>,
    mut stop: watch::Receiver<bool>,
) {
    let stats = &service.retention;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let bound = pins.lowest();
        match pass_once(&backend, &settings, clock.now_us(), bound).await {
            Ok((report, dropped)) => {
                stats.passes.fetch_add(1, Ordering::Relaxed);
                stats
                    .segments_rewritten
                    .fetch_add(report.segments_rewritten as u64, Ordering::Relaxed);
                stats
                    .segments_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                stats
                    .bytes_reclaimed
                    .fetch_add(report.bytes_reclaimed, Ordering::Relaxed);
                stats.horizon_us.store(report.horizon_us, Ordering::Relaxed);
                if report.segments_rewritten > 0 || dropped > 0 {
                    tracing::info!(
                        rewritten = report.segments_rewritten,
                        dropped,
                        bytes = report.bytes_reclaimed,
                        "retention reclaimed space"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying next interval"),
        }
    }
}
