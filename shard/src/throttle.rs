//! The pace of a move's copy, set by the latency foreground appends see (AIMD), under a hard
//! byte-rate ceiling.
//!
//! ```text
//!  before copying: one interval of the node's append latency histogram → baseline p99
//!  every interval: p99 of the appends answered in it (≥ SAMPLES_MIN of them)
//!     p99 > factor × baseline   → rate = max(rate / 2, floor)      (multiplicative decrease)
//!     otherwise, or too few     → rate = min(rate + step, ceiling) (additive increase)
//!  pace(bytes): sleeps so the copy's bytes per second stay at the rate
//! ```
//!
//! The histogram's buckets are coarse (100 µs … 250 ms, 2–2.5× apart), so a p99 is estimated
//! by linear interpolation inside its bucket. Off (`adaptive = false`), the copy runs at the
//! ceiling: the comparison the benchmark makes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the simulator and tests drive it.
use tokio::time::Instant;

use crate::stats::ServiceStats;

/// How a move's copy is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Adjust the rate from foreground latency (else: always the ceiling).
    pub adaptive: bool,
    /// The hard ceiling, bytes per second. Default 64 MiB/s.
    pub rate_max: u64,
    /// The rate never goes below this, bytes per second. Default 256 KiB/s.
    pub rate_min: u64,
    /// The rate a move starts at, bytes per second. Default 4 MiB/s.
    pub rate_start: u64,
    /// Additive step per interval, bytes per second. Default 2 MiB/s.
    pub step: u64,
    /// How often the rate is adjusted. Default 500 ms.
    pub interval: Duration,
    /// A window whose p99 exceeds the baseline's by this factor halves the rate. Default 1.5.
    pub factor: f64,
}

/// Fewest appends in a window for its p99 to count.
pub const SAMPLES_MIN: u64 = 50;

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            adaptive: true,
            rate_max: 64 << 20,
            rate_min: 256 << 10,
            rate_start: 4 << 20,
            step: 2 << 20,
            interval: Duration::from_millis(500),
            factor: 1.5,
        }
    }
}

impl ThrottleConfig {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_max == 0 {
            return Err("move_rate_max must be at least 1 byte per second".into());
        }
        if self.rate_min == 0 || self.rate_min > self.rate_max {
            return Err(format!(
                "move rate: the floor ({} B/s) must be above 0 and at most the ceiling ({} B/s)",
                self.rate_min, self.rate_max
            ));
        }
        if self.interval.is_zero() || self.factor.is_nan() || self.factor <= 1.0 {
            return Err(
                "move throttle: the interval must be above 0 and the factor above 1".into(),
            );
        }
        Ok(())
    }
}

/// What the throttle does now (for `/metrics`).
#[derive(Debug, Default)]
pub struct ThrottleStats {
    /// The copy's rate now, bytes per second.
    pub rate: AtomicU64,
    /// The baseline p99 and the last window's, microseconds.
    pub baseline_p99_us: AtomicU64,
    pub window_p99_us: AtomicU64,
    /// Halvings and additive steps so far.
    pub decreases: AtomicU64,
    pub increases: AtomicU64,
    /// Bytes the copies have sent, and time spent waiting on the rate (microseconds).
    pub bytes: AtomicU64,
    pub waited_us: AtomicU64,
}

#[derive(Debug)]
struct State {
    rate: u64,
    baseline_p99_us: Option<u64>,
    window: (Instant, Vec<(u64, u64)>),
    /// When the bytes paced so far may all have been sent at the rate.
    free_at: Instant,
}

/// Paces a move's copy (see the module's notes).
#[derive(Debug, Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    latency: Arc<ServiceStats>,
    state: Arc<Mutex<State>>,
    stats: Arc<ThrottleStats>,
}

/// The p99 of a window's bucket counts `(upper bound, count)`, interpolated in its bucket;
/// `None` with fewer than [`SAMPLES_MIN`] samples.
pub fn p99_us(buckets: &[(u64, u64)]) -> Option<u64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total < SAMPLES_MIN {
        return None;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    let mut lower = 0;
    for (bound, count) in buckets {
        if seen + count >= rank && *count > 0 {
            let upper = if *bound == u64::MAX {
                lower * 2
            } else {
                *bound
            };
            let into = (rank - seen) as f64 / *count as f64;
            return Some(lower + ((upper - lower) as f64 * into) as u64);
        }
        seen += count;
        lower = *bound;
    }
    Some(lower)
}

fn diff(now: &[(u64, u64)], before: &[(u64, u64)]) -> Vec<(u64, u64)> {
    now.iter()
        .zip(before)
        .map(|((b, n), (_, o))| (*b, n.saturating_sub(*o)))
        .collect()
}

impl Throttle {
    /// A throttle reading the node's append latency from `latency`.
    pub fn new(config: ThrottleConfig, latency: Arc<ServiceStats>) -> Throttle {
        let (buckets, _) = latency.append_latency.snapshot();
        let rate = if config.adaptive {
            config.rate_start.clamp(config.rate_min, config.rate_max)
        } else {
            config.rate_max
        };
        let stats = ThrottleStats::default();
        stats.rate.store(rate, Ordering::Relaxed);
        Throttle {
            state: Arc::new(Mutex::new(State {
                rate,
                baseline_p99_us: None,
                window: (Instant::now(), buckets),
                free_at: Instant::now(),
            })),
            config,
            latency,
            stats: Arc::new(stats),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<ThrottleStats> {
        &self.stats
    }

    /// Its settings.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Starts a move: the rate back to its start, the baseline measured over the next
    /// interval (waited here, before the first byte is copied).
    pub async fn begin(&self) {
        self.restart();
        if self.config.adaptive {
            tokio::time::sleep(self.config.interval).await;
            self.adjust();
        }
    }

    /// The rate back to its start and the baseline unknown: the first window with enough
    /// appends sets it (without [`Throttle::begin`]'s wait, that window carries the move's
    /// first bytes at the starting rate).
    pub fn restart(&self) {
        let mut s = strata_engine::sync::lock(&self.state);
        s.rate = if self.config.adaptive {
            self.config
                .rate_start
                .clamp(self.config.rate_min, self.config.rate_max)
        } else {
            self.config.rate_max
        };
        s.baseline_p99_us = None;
        s.window = (Instant::now(), self.latency.append_latency.snapshot().0);
        s.free_at = Instant::now();
        self.stats.rate.store(s.rate, Ordering::Relaxed);
    }

    /// How long until the bytes taken so far have gone at the rate now (adjusting it first
    /// when a window has passed).
    pub fn due(&self) -> Duration {
        self.adjust();
        strata_engine::sync::lock(&self.state)
            .free_at
            .saturating_duration_since(Instant::now())
    }

    /// Counts `bytes` as sent once those before them have gone: returns when that is, from
    /// now.
    pub fn take(&self, bytes: u64) -> Duration {
        let mut s = strata_engine::sync::lock(&self.state);
        let now = Instant::now();
        let start = s.free_at.max(now);
        s.free_at = start + Duration::from_secs_f64(bytes as f64 / s.rate.max(1) as f64);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        s.free_at.saturating_duration_since(now)
    }

    /// When the bytes taken so far will all have gone.
    fn free_at(&self) -> Instant {
        strata_engine::sync::lock(&self.state).free_at
    }

    /// Ends a window when its interval has passed: sets the baseline (first window) or
    /// adjusts the rate.
    fn adjust(&self) {
        let mut s = strata_engine::sync::lock(&self.state);
        if !self.config.adaptive || s.window.0.elapsed() < self.config.interval {
            return;
        }
        let now = self.latency.append_latency.snapshot().0;
        let window = diff(&now, &s.window.1);
        s.window = (Instant::now(), now);
        let p99 = p99_us(&window);
        if let Some(p) = p99 {
            self.stats.window_p99_us.store(p, Ordering::Relaxed);
        }
        let Some(baseline) = s.baseline_p99_us else {
            // No foreground traffic before the move: the first window that has some sets it;
            // until then there is nothing to protect, and the rate grows.
            s.baseline_p99_us = p99;
            match p99 {
                Some(p) => self.stats.baseline_p99_us.store(p, Ordering::Relaxed),
                None => {
                    s.rate = (s.rate + self.config.step).min(self.config.rate_max);
                    self.stats.increases.fetch_add(1, Ordering::Relaxed);
                    self.stats.rate.store(s.rate, Ordering::Relaxed);
                }
            }
            return;
        };
        match p99 {
            Some(p) if p as f64 > baseline as f64 * self.config.factor => {
                s.rate = (s.rate / 2).max(self.config.rate_min);
                self.stats.decreases.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                s.rate = (s.rate + self.config.step).min(self.config.rate_max);
                self.stats.increases.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.rate.store(s.rate, Ordering::Relaxed);
    }

    /// Waits until `bytes` more may go at the rate now.
    pub async fn pace(&self, bytes: u64) {
        self.adjust();
        let wait = self.take(bytes);
        if !wait.is_zero() {
            self.stats
                .waited_us
                .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

/// The node's move throttle pacing new replicas' catch-up (see `strata_raft::pacing`). A
/// catch-up that starts after [`QUIET_INTERVALS`] intervals without one restarts the
/// throttle (rate back to its start, a new baseline); the slot mover's copies share its rate.
#[derive(Debug, Clone)]
pub struct CatchUpThrottle(Throttle);

/// Intervals without paced bytes after which the next catch-up is a new one.
pub const QUIET_INTERVALS: u32 = 4;

impl CatchUpThrottle {
    /// Paces with `throttle`.
    pub fn new(throttle: Throttle) -> CatchUpThrottle {
        CatchUpThrottle(throttle)
    }
}

impl strata_raft::CatchUpPacer for CatchUpThrottle {
    fn due(&self) -> Duration {
        let due = self.0.due();
        if !due.is_zero() {
            self.0
                .stats
                .waited_us
                .fetch_add(due.as_micros() as u64, Ordering::Relaxed);
        }
        due
    }

    fn take(&self, bytes: u64) {
        let quiet = self.0.config.interval * QUIET_INTERVALS;
        if self.0.free_at() + quiet < Instant::now() {
            self.0.restart();
        }
        self.0.take(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p99_is_interpolated_in_its_bucket_and_needs_enough_samples() {
        let b = |counts: [u64; 3]| vec![(100, counts[0]), (250, counts[1]), (u64::MAX, counts[2])];
        assert_eq!(p99_us(&b([10, 0, 0])), None);
        // 1000 samples: rank 990 falls in the second bucket, 90 of its 100.
        assert_eq!(p99_us(&b([900, 100, 0])), Some(100 + 135));
        // In the open-ended last bucket: twice the last bound at most.
        assert_eq!(p99_us(&b([0, 0, 100])), Some(250 + 247));
    }

    #[tokio::test(start_paused = true)]
    async fn a_catch_up_is_paced_at_the_rate_and_a_new_one_starts_afresh() {
        use strata_raft::CatchUpPacer;
        let config = ThrottleConfig::default();
        let throttle = Throttle::new(config.clone(), Arc::new(ServiceStats::default()));
        let pacer = CatchUpThrottle::new(throttle.clone());
        let rate = |t: &Throttle| t.stats().rate.load(Ordering::Relaxed);
        assert_eq!(pacer.due(), Duration::ZERO, "nothing taken: go");
        // 1 MiB at the starting 4 MiB/s: the next bytes are due in a quarter second.
        pacer.take(config.rate_start / 4);
        assert_eq!(pacer.due(), Duration::from_millis(250));
        // Windows without foreground appends raise the rate a step each.
        tokio::time::sleep(config.interval * 2).await;
        pacer.due();
        assert_eq!(rate(&throttle), config.rate_start + config.step);
        // A quiet spell: the next catch-up starts again at the starting rate.
        tokio::time::sleep(config.interval * (QUIET_INTERVALS + 1)).await;
        pacer.take(1);
        assert_eq!(rate(&throttle), config.rate_start);
        assert_eq!(
            throttle.stats().bytes.load(Ordering::Relaxed),
            config.rate_start / 4 + 1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_halves_when_foreground_latency_rises_and_grows_back_otherwise() {
        let latency = Arc::new(ServiceStats::default());
        let config = ThrottleConfig::default();
        let t = Throttle::new(config.clone(), latency.clone());
        let foreground = |us: u64| {
            for _ in 0..200 {
                latency.append_latency.observe_us(us);
            }
        };
        // The baseline: the appends answered in the interval `begin` waits.
        let begun = tokio::spawn({
            let t = t.clone();
            async move { t.begin().await }
        });
        tokio::task::yield_now().await;
        foreground(400);
        begun.await.unwrap();
        assert_eq!(t.stats().baseline_p99_us.load(Ordering::Relaxed), 497);
        let rate = |t: &Throttle| t.stats().rate.load(Ordering::Relaxed);
        assert_eq!(rate(&t), config.rate_start);
        // A window of slow appends (p99 ≫ 1.5 × baseline): halved.
        foreground(20_000);
        tokio::time::sleep(config.interval).await;
        t.pace(0).await;
        assert_eq!(rate(&t), config.rate_start / 2);
        // Quiet windows: one step up each.
        foreground(400);
        tokio::time::sleep(config.interval).await;
        t.pace(0).await;
        assert_eq!(rate(&t), config.rate_start / 2 + config.step);
        // Pacing: 1 MiB at 4 MiB/s waits a quarter second.
        let before = tokio::time::Instant::now();
        t.pace(rate(&t) / 4).await;
        let waited = before.elapsed();
        assert!(
            waited >= Duration::from_millis(240) && waited <= Duration::from_millis(260),
            "{waited:?}"
        );
    }
}
