//! openraft's async runtime: tokio, with the two things the simulator must control behind
//! seams — the random election timeouts and the pace of each node's timers.
//!
//! - [`seed_thread_rng`]: from then on, this thread's election timeouts come from a seeded
//!   generator (the simulator runs a whole cluster on one thread). Unseeded threads draw from
//!   the OS, as openraft's default runtime does.
//! - [`with_clock_rate`]: runs a future (a simulated node) whose timers run at a [`ClockRate`]
//!   times real speed, as a drifting clock would; every task openraft spawns from inside
//!   inherits it, and the rate can change while it runs. Outside, timers are tokio's own.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::{AsyncRuntime, TokioOneShotSender};
use openraft::{OptionalSend, TokioInstant};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

tokio::task_local! {
    static CLOCK_RATE: ClockRate;
}

/// How fast a node's clock runs against real (tokio) time; shared, so it can drift while the
/// node runs.
#[derive(Debug, Clone)]
pub struct ClockRate(Arc<AtomicU64>);

impl Default for ClockRate {
    fn default() -> Self {
        ClockRate(Arc::new(AtomicU64::new(1.0f64.to_bits())))
    }
}

impl ClockRate {
    /// Sets the rate (1.0 exact; must be positive).
    pub fn set(&self, rate: f64) {
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The rate.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Makes this thread's Raft randomness (election timeouts) a function of `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Runs `future` with timers that run `rate` times faster than tokio's clock (a node whose
/// clock drifts). Tasks spawned through [`StrataRuntime`] inherit the rate.
pub async fn with_clock_rate<F: Future>(rate: ClockRate, future: F) -> F::Output {
    CLOCK_RATE.scope(rate, future).await
}

fn rate() -> Option<ClockRate> {
    CLOCK_RATE.try_with(|r| r.clone()).ok()
}

/// A duration on this task's clock, in tokio's time.
fn scaled(d: Duration) -> Duration {
    match rate().map(|r| r.get()) {
        Some(r) if r > 0.0 => d.div_f64(r),
        _ => d,
    }
}

fn scaled_deadline(deadline: TokioInstant) -> TokioInstant {
    match rate() {
        Some(_) => {
            let now = tokio::time::Instant::now();
            now + scaled(deadline.saturating_duration_since(now))
        }
        None => deadline,
    }
}

/// tokio, with seedable randomness and per-node timer pace (see the module docs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StrataRuntime;

impl AsyncRuntime for StrataRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = StdRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // The task keeps the spawner's span (a simulated node's id in its logs).
        let future = tracing::Instrument::in_current_span(future);
        match rate() {
            Some(r) => tokio::spawn(CLOCK_RATE.scope(r, future)),
            None => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(scaled(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(scaled_deadline(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(scaled(duration), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(scaled_deadline(deadline), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        let seeded = SEEDED.with(|s| s.borrow_mut().as_mut().map(|r| r.next_u64()));
        match seeded {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
