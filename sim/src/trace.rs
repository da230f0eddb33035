//! A run's trace: one line per thing that happened, stamped with simulated time, folded into
//! a hash (64-bit FNV-1a) that two runs of one seed must agree on; printed as it happens when
//! asked.

use std::sync::{Arc, Mutex};

use strata_engine::sync::lock;

struct State {
    start: tokio::time::Instant,
    hash: u64,
    lines: u64,
    print: bool,
}

/// The trace; cheap to clone.
#[derive(Clone)]
pub struct Trace(Arc<Mutex<State>>);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    /// A trace starting now (simulated time); `print` writes each line to stdout.
    pub fn new(print: bool) -> Trace {
        Trace(Arc::new(Mutex::new(State {
            start: tokio::time::Instant::now(),
            hash: FNV_OFFSET,
            lines: 0,
            print,
        })))
    }

    /// Records one line.
    pub fn log(&self, line: impl AsRef<str>) {
        let mut s = lock(&self.0);
        let at = s.start.elapsed();
        let text = format!(
            "{:>6}.{:03} {}",
            at.as_secs(),
            at.subsec_millis(),
            line.as_ref()
        );
        for b in text.bytes().chain(std::iter::once(b'\n')) {
            s.hash = (s.hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        s.lines += 1;
        if s.print {
            println!("{text}");
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        lock(&self.0).hash
    }

    /// Lines so far.
    pub fn lines(&self) -> u64 {
        lock(&self.0).lines
    }
}
