//! A service's metrics in the Prometheus text format (0.0.4): counters and gauges by name and
//! labels, and request-duration histograms. Bounded: at most [`SERIES_MAX`] series; past it
//! new label sets are counted in `strata_service_metrics_dropped_total` instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Most series one registry keeps.
pub const SERIES_MAX: usize = 10_000;
/// Histogram bucket bounds, seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; 12],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (name, labels) → value; kind and help by name.
    values: BTreeMap<(String, String), f64>,
    histograms: BTreeMap<(String, String), Histogram>,
    kinds: BTreeMap<String, (&'static str, &'static str)>,
    dropped: u64,
}

/// The registry (shared by the server and the service).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// `{a="x",b="y"}`, values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn room(inner: &Inner, key: &(String, String)) -> bool {
        inner.values.contains_key(key)
            || inner.histograms.contains_key(key)
            || inner.values.len() + inner.histograms.len() < SERIES_MAX
    }

    /// Adds `by` to counter `name{labels}`.
    pub fn add(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], by: f64) {
        let mut m = self.lock();
        let key = (name.to_string(), labels(pairs));
        if !Self::room(&m, &key) {
            m.dropped += 1;
            return;
        }
        m.kinds.entry(name.to_string()).or_insert(("counter", help));
        *m.values.entry(key).or_insert(0.0) += by;
    }

    /// Sets gauge `name{labels}`.
    pub fn set(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        let mut m = self.lock();
        let key = (name.to_string(), labels(pairs));
        if !Self::room(&m, &key) {
            m.dropped += 1;
            return;
        }
        m.kinds.entry(name.to_string()).or_insert(("gauge", help));
        m.values.insert(key, value);
    }

    /// Records `seconds` in histogram `name{labels}`.
    pub fn observe(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], seconds: f64) {
        let mut m = self.lock();
        let key = (name.to_string(), labels(pairs));
        if !Self::room(&m, &key) {
            m.dropped += 1;
            return;
        }
        m.kinds
            .entry(name.to_string())
            .or_insert(("histogram", help));
        let h = m.histograms.entry(key).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        for (name, (kind, help)) in &m.kinds {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in m.values.range((name.clone(), String::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{n}{l} {v}");
            }
            for ((n, l), h) in m.histograms.range((name.clone(), String::new())..) {
                if n != name {
                    break;
                }
                let base = l.trim_start_matches('{').trim_end_matches('}');
                let sep = if base.is_empty() { "" } else { "," };
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{{{base}{sep}le=\"{bound}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(out, "{n}_bucket{{{base}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{n}_sum{l} {}\n{n}_count{l} {}", h.sum, h.count);
            }
        }
        let _ = writeln!(
            out,
            "# HELP strata_service_metrics_dropped_total Samples dropped: more than {SERIES_MAX} series.\n# TYPE strata_service_metrics_dropped_total counter\nstrata_service_metrics_dropped_total {}",
            m.dropped
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        let m = Metrics::default();
        m.add("strata_x_total", "Xs.", &[("route", "/a\"b")], 2.0);
        m.add("strata_x_total", "Xs.", &[("route", "/a\"b")], 1.0);
        m.set("strata_y", "Y.", &[], 5.0);
        m.observe("strata_z_seconds", "Z.", &[("route", "/r")], 0.003);
        let text = m.render();
        assert!(
            text.contains("# TYPE strata_x_total counter\nstrata_x_total{route=\"/a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("strata_y 5\n"), "{text}");
        assert!(
            text.contains("strata_z_seconds_bucket{route=\"/r\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_z_seconds_bucket{route=\"/r\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_z_seconds_count{route=\"/r\"} 1\n"),
            "{text}"
        );
    }
}
