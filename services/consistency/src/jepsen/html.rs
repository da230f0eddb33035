//! `report.html`: the run on one page, like Jepsen's performance graphs — every operation's
//! latency against the time it began (log scale; ok, fail and info in their own colours;
//! writes as circles, reads as squares) and the throughput of each second, with the nemesis's
//! intervals shaded; then the verdict, the numbers and any witness. Plain SVG, no script: it
//! opens anywhere. Bounded: at most [`POINTS_MAX`] operations are drawn (evenly sampled past
//! it; the counts cover all).

use std::fmt::Write as _;

use super::history::Kind;
use super::nemesis::Fault;
use super::workload::Done;
use super::Report;

/// Most operations drawn in the latency plot.
pub const POINTS_MAX: usize = 20_000;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 12.0;

/// The y of a fraction (0 bottom, 1 top) of a plot's height.
fn y_at(frac: f64) -> f64 {
    TOP + (HEIGHT - BOTTOM - TOP) * (1.0 - frac.clamp(0.0, 1.0))
}

fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Ok => "#1f77b4",
        Kind::Fail => "#ff7f0e",
        _ => "#d62728",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The x of a time (µs since the run began) on a plot `span_us` wide.
fn x_of(us: u64, span_us: u64) -> f64 {
    LEFT + (WIDTH - LEFT - 10.0) * us as f64 / span_us.max(1) as f64
}

fn shade(out: &mut String, faults: &[Fault], span_us: u64) {
    for f in faults {
        let (x0, x1) = (x_of(f.start_us, span_us), x_of(f.end_us, span_us));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="0" width="{:.1}" height="{:.1}" fill="#999" opacity="0.25"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            HEIGHT - BOTTOM,
            escape(&f.what)
        );
    }
}

fn time_axis(out: &mut String, span_us: u64) {
    let secs = span_us / 1_000_000;
    let step = (secs / 10).max(1);
    let mut s = 0;
    while s <= secs {
        let x = x_of(s * 1_000_000, span_us);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#000"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{s} s</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 4.0,
            HEIGHT - BOTTOM + 16.0
        );
        s += step;
    }
}

fn latency_plot(out: &mut String, done: &[Done], faults: &[Fault], span_us: u64) {
    let _ = write!(
        out,
        r#"<svg width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">"#
    );
    shade(out, faults, span_us);
    // Log scale from 0.1 ms to 10 s.
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let y_of = |ms: f64| y_at((ms.max(0.1).log10() - lo) / (hi - lo));
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let y = y_of(ms);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{WIDTH}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{ms} ms</text>"##,
            LEFT - 4.0,
            y + 4.0
        );
    }
    let every = done.len().div_ceil(POINTS_MAX).max(1);
    for d in done.iter().step_by(every) {
        let x = x_of(d.call_us, span_us);
        let y = y_of(d.ret_us.saturating_sub(d.call_us) as f64 / 1000.0);
        let c = colour(d.kind);
        if d.writes {
            let _ = write!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.6" fill="{c}" opacity="0.6"/>"#
            );
        } else {
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="3" height="3" fill="{c}" opacity="0.6"/>"#,
                x - 1.5,
                y - 1.5
            );
        }
    }
    time_axis(out, span_us);
    out.push_str("</svg>");
}

fn throughput_plot(out: &mut String, done: &[Done], faults: &[Fault], span_us: u64) {
    let seconds = (span_us / 1_000_000 + 1) as usize;
    let mut counts = vec![[0u64; 3]; seconds];
    for d in done {
        let s = ((d.ret_us / 1_000_000) as usize).min(seconds - 1);
        let k = match d.kind {
            Kind::Ok => 0,
            Kind::Fail => 1,
            _ => 2,
        };
        counts[s][k] += 1;
    }
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let _ = write!(
        out,
        r#"<svg width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">"#
    );
    shade(out, faults, span_us);
    for frac in [0.0, 0.5, 1.0] {
        let y = y_at(frac);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{WIDTH}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.0}/s</text>"##,
            LEFT - 4.0,
            y + 4.0,
            top * frac
        );
    }
    for (k, kind) in [Kind::Ok, Kind::Fail, Kind::Info].into_iter().enumerate() {
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(s, c)| {
                let x = x_of(s as u64 * 1_000_000 + 500_000, span_us);
                let y = y_at(c[k] as f64 / top);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            points.join(" "),
            colour(kind)
        );
    }
    time_axis(out, span_us);
    out.push_str("</svg>");
}

/// The page.
pub fn render(report: &Report, done: &[Done]) -> String {
    let span_us = done
        .iter()
        .map(|d| d.ret_us)
        .chain(report.faults.iter().map(|f| f.end_us))
        .max()
        .unwrap_or(1);
    let clean = matches!(report.verdict.as_str(), "linearizable" | "valid");
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><meta charset="utf-8"><title>strata jepsen: {w} under {n}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:1em auto}}td,th{{padding:2px 8px;text-align:right}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style>
<h1>{w} under {n}: <span style="color:{c}">{v}</span></h1>
<p>seed {seed}, {t} s, {ops} operations: {ok} ok, {fail} fail, {info} info{bug}</p>"#,
        w = super::name(report.workload),
        n = super::name(report.nemesis),
        c = if clean { "#2ca02c" } else { "#d62728" },
        v = escape(&report.verdict),
        seed = report.seed,
        t = report.time_secs,
        ops = report.ops,
        ok = report.ok,
        fail = report.fail,
        info = report.info,
        bug = report
            .planted_bug
            .as_ref()
            .map_or(String::new(), |b| format!(
                "; planted bug <b>{}</b>",
                escape(b)
            )),
    );
    out.push_str("<h2>Latency</h2><p>Each operation at the time it began; <span style=\"color:#1f77b4\">ok</span>, <span style=\"color:#ff7f0e\">fail</span>, <span style=\"color:#d62728\">info</span>; circles write, squares read; grey: faults (hover for what).</p>");
    latency_plot(&mut out, done, &report.faults, span_us);
    out.push_str("<h2>Throughput</h2><p>Operations completed per second, by outcome.</p>");
    throughput_plot(&mut out, done, &report.faults, span_us);
    let _ = write!(
        out,
        "<h2>Numbers</h2><table><tr><th></th><th>operations</th><th>p50 ms</th><th>p99 ms</th></tr><tr><td>calm</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr><tr><td>during faults</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr></table>",
        report.calm.ops,
        report.calm.p50_ms,
        report.calm.p99_ms,
        report.during_faults.ops,
        report.during_faults.p50_ms,
        report.during_faults.p99_ms
    );
    out.push_str("<h2>Faults</h2><table><tr><th>from s</th><th>to s</th><th>recovery ms</th><th style=\"text-align:left\">what</th></tr>");
    for (f, r) in report.faults.iter().zip(&report.recovery_ms) {
        let _ = write!(
            out,
            "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            f.start_us as f64 / 1e6,
            f.end_us as f64 / 1e6,
            r.map_or("none".to_string(), |ms| format!("{ms:.0}")),
            escape(&f.what)
        );
    }
    out.push_str("</table><h2>Anomalies</h2>");
    if report.anomalies.is_empty() {
        out.push_str("<p>None.</p>");
    }
    for (class, n) in &report.anomaly_counts {
        let _ = write!(out, "<p>{}: {n}</p>", escape(class));
    }
    for a in &report.anomalies {
        let _ = write!(out, "<pre>{}</pre>", escape(a));
    }
    out
}
