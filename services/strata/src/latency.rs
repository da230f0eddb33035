//! Latency percentiles in bounded memory, for the load generators.
//!
//! A benchmark's client shares the machine's cores with the server it measures, so what it
//! spends per append is taken from the server. Keeping every latency (16 bytes each, a vector
//! that grows by reallocation and is sorted at the end) cost `strata bench append` ~8 % of its
//! own CPU at 500,000 appends/s (perf: page faults of the growing vector, the sort). A
//! log-linear histogram costs one counter increment and a fixed 30 KiB per client task:
//!
//! ```text
//! value v in nanoseconds; below 2^SUB_BITS: bucket v (exact)
//! else: e = floor(log2 v), shift = e - SUB_BITS,
//!       bucket = (shift + 1) · 2^SUB_BITS + (v >> shift) - 2^SUB_BITS
//! a bucket spans 2^shift ns within [2^e, 2^(e+1)): relative width ≤ 2^-SUB_BITS (1.6 %)
//! ```

use std::time::Duration;

/// Sub-buckets per power of two: 2^6 = 64, so a percentile is within 1.6 % of the latency.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Buckets covering every u64 nanosecond value.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Counts of latencies by bucket.
#[derive(Debug, Clone)]
pub struct Latencies {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Latencies {
    /// Counts one latency.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(bucket(ns)) {
            *c += 1;
            self.total += 1;
        }
    }

    /// Adds another task's counts.
    pub fn merge(&mut self, other: &Latencies) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.total += other.total;
    }

    /// Latencies counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether none was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The latency below which a fraction `p` (0..=1) of them fall: the upper edge of the
    /// bucket holding the `floor(p · len)`-th smallest (0-based, at most the last). None when
    /// empty.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let last = self.total.checked_sub(1)?;
        let rank = ((self.total as f64 * p) as u64).min(last);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Some(Duration::from_nanos(upper_edge(i)));
            }
        }
        None
    }
}

/// The bucket of `ns` nanoseconds.
fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros();
    let shift = e - SUB_BITS;
    (shift as usize + 1) * SUB + ((ns >> shift) as usize - SUB)
}

/// The largest value in bucket `i`.
fn upper_edge(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let low = ((SUB + i % SUB) as u64) << shift;
    low.saturating_add((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut before = 0;
        for ns in (0..200_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket(ns);
            assert!(b >= before && b < BUCKETS, "{ns} in bucket {b}");
            assert!(upper_edge(b) >= ns, "{ns} above its bucket's edge");
            if b > 0 {
                assert!(upper_edge(b - 1) < ns, "{ns} belongs in an earlier bucket");
            }
            before = b;
        }
    }

    #[test]
    fn percentiles_are_within_the_bucket_width_of_the_exact_ones() {
        // A skewed spread of latencies, 1 µs to ~1 s, in a scrambled order.
        let mut exact: Vec<u64> = (0..100_000u64)
            .map(|i| {
                let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000;
                1_000 + x * x / 1_000
            })
            .collect();
        let mut h = Latencies::default();
        let mut halves = (Latencies::default(), Latencies::default());
        for (k, &ns) in exact.iter().enumerate() {
            h.record(Duration::from_nanos(ns));
            let half = if k % 2 == 0 {
                &mut halves.0
            } else {
                &mut halves.1
            };
            half.record(Duration::from_nanos(ns));
        }
        halves.0.merge(&halves.1);
        exact.sort_unstable();
        assert_eq!(h.len(), exact.len() as u64);
        for p in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = exact[((exact.len() as f64 * p) as usize).min(exact.len() - 1)];
            let got = h.percentile(p).map(|d| d.as_nanos() as u64).unwrap_or(0);
            assert!(got >= want, "p{p}: {got} below the exact {want}");
            assert!(
                (got - want) as f64 <= want as f64 / SUB as f64,
                "p{p}: {got} more than 1/{SUB} above the exact {want}"
            );
            assert_eq!(
                halves.0.percentile(p),
                h.percentile(p),
                "merged halves differ"
            );
        }
    }

    #[test]
    fn an_empty_histogram_has_no_percentile() {
        assert_eq!(Latencies::default().percentile(0.5), None);
        assert!(Latencies::default().is_empty());
    }
}
