//! The node's HTTP side: `/metrics` (Prometheus text format) and `/health`. Rendered on each
//! scrape from the engine's and the service's counters; nothing is kept per scrape.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use strata_engine::stats::LatencyHistogram;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shards::LocalShards;
use crate::stats::ServiceStats;
pub use crate::stats::APPEND_BUCKETS_US;
use crate::throttle::Throttle;

fn histogram(out: &mut String, name: &str, help: &str, h: &LatencyHistogram) {
    let (buckets, sum_us) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in buckets {
        cumulative += count;
        let le = if bound == u64::MAX {
            "+Inf".to_string()
        } else {
            format!("{}", bound as f64 / 1e6)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {cumulative}",
        sum_us as f64 / 1e6
    );
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            // Allocated blocks: the holes retention leaves in segments take none.
            Ok(_) => e
                .metadata()
                .map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512),
            Err(_) => 0,
        })
        .sum()
}

/// Renders every metric.
pub fn render(
    shards: &LocalShards,
    service: &ServiceStats,
    data_dir: &Path,
    (mover, throttle): (Option<&crate::mover::Mover>, &Throttle),
) -> String {
    let s = shards.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "strata_shards",
        "gauge",
        "Shards this node serves.",
        shards.set.get().len() as u64,
    );
    metric(
        &mut out,
        "strata_forwarded_calls_total",
        "counter",
        "Calls and AppendStream parts passed on to another node leading their shard.",
        load(&service.forwarded),
    );
    metric(
        &mut out,
        "strata_leader_handovers_total",
        "counter",
        "Leaderships this node's leader balancer handed over (on the metadata group's leader).",
        load(&service.handovers),
    );
    metric(
        &mut out,
        "strata_replica_balance_moves_total",
        "counter",
        "Replica moves this node's replica balancer finished (on the metadata group's leader).",
        load(&service.replica_moves),
    );
    metric(
        &mut out,
        "strata_log_fdatasyncs_total",
        "counter",
        "fdatasyncs issued for the shards' logs (one sync round covers every shard on a device).",
        shards.fdatasyncs(),
    );
    if let Some(round) = &shards.round {
        let r = round.stats();
        for (name, help, value) in [
            (
                "strata_log_sync_rounds_total",
                "Sync rounds the shards' logs shared.",
                &r.rounds,
            ),
            (
                "strata_log_sync_requests_total",
                "Log syncs the rounds answered (one per shard per round at most).",
                &r.requests,
            ),
            (
                "strata_log_writebacks_total",
                "Files a round wrote back for another file's fdatasync to flush.",
                &r.writebacks,
            ),
        ] {
            metric(&mut out, name, "counter", help, load(value));
        }
    }
    metric(
        &mut out,
        "strata_appends_total",
        "counter",
        "Appends that wrote a record.",
        load(&s.appends),
    );
    metric(
        &mut out,
        "strata_appends_deduplicated_total",
        "counter",
        "Appends answered as retries of committed ones.",
        load(&s.deduplicated),
    );
    metric(
        &mut out,
        "strata_appends_rejected_total",
        "counter",
        "Appends rejected (bad input, version conflicts, failures).",
        load(&s.rejected),
    );
    metric(
        &mut out,
        "strata_events_appended_total",
        "counter",
        "Events written.",
        load(&s.events),
    );
    metric(
        &mut out,
        "strata_log_bytes_written_total",
        "counter",
        "Record bytes written to the log.",
        load(&s.bytes_written),
    );
    metric(
        &mut out,
        "strata_append_queue_depth",
        "gauge",
        "Appends waiting for the group-commit writer.",
        load(&s.queue_depth),
    );
    metric(
        &mut out,
        "strata_appends_alone_total",
        "counter",
        "Appends that found the pipeline idle and were written, synced and indexed by the request's own thread.",
        load(&s.appends_alone),
    );
    metric(
        &mut out,
        "strata_append_stream_in_flight",
        "gauge",
        "Appends in flight on pipelined (AppendStream) calls.",
        load(&service.append_stream_in_flight),
    );
    metric(
        &mut out,
        "strata_append_stream_calls_total",
        "counter",
        "AppendStream calls opened (a client's appends share one: see ClientConfig::append_over_stream).",
        load(&service.append_stream_calls),
    );
    metric(
        &mut out,
        "strata_append_stream_call_peak",
        "gauge",
        "The most appends one AppendStream call has had in flight (its window bounds it).",
        load(&service.append_stream_call_peak),
    );
    metric(
        &mut out,
        "strata_subscriptions",
        "gauge",
        "Open subscriptions.",
        load(&service.subscriptions),
    );
    metric(
        &mut out,
        "strata_disk_bytes",
        "gauge",
        "Bytes allocated on disk in the data directory (log and index).",
        dir_bytes(data_dir),
    );
    let r = &service.retention;
    for (name, help, value) in [
        (
            "strata_retention_passes_total",
            "Retention passes run.",
            load(&r.passes),
        ),
        (
            "strata_retention_segments_rewritten_total",
            "Segments retention rewrote with holes.",
            load(&r.segments_rewritten),
        ),
        (
            "strata_retention_segments_dropped_total",
            "Segments retention dropped whole.",
            load(&r.segments_dropped),
        ),
        (
            "strata_retention_bytes_reclaimed_total",
            "Record bytes retention reclaimed.",
            load(&r.bytes_reclaimed),
        ),
    ] {
        metric(&mut out, name, "counter", help, value);
    }
    metric(
        &mut out,
        "strata_id_index_lookups_total",
        "counter",
        "Event ids looked up in the index (the id filter could not rule them out, or is still being read at open).",
        load(&s.id_index_lookups),
    );
    metric(
        &mut out,
        "strata_id_filter_bytes",
        "gauge",
        "Memory of the event-id filter; 0 while it is read at open, or when it is off.",
        load(&s.id_filter_bytes),
    );
    metric(
        &mut out,
        "strata_retention_horizon_us",
        "gauge",
        "As-of reads before this time (µs since the epoch) are refused; 0 until retention reclaims.",
        load(&r.horizon_us),
    );
    let replicas = shards.replicas();
    if let Some(replica) = replicas.first() {
        let led = replicas
            .iter()
            .filter(|r| r.leader().is_some_and(|(id, _)| id == r.node_id()))
            .count();
        metric(
            &mut out,
            "strata_raft_shards_led",
            "gauge",
            "Shards whose Raft group this node leads.",
            led as u64,
        );
        let map = shards.map.get();
        metric(
            &mut out,
            "strata_map_epoch",
            "gauge",
            "Epoch of the cluster map this node routes by (1 until a move changes it).",
            map.epoch(),
        );
        metric(
            &mut out,
            "strata_map_refused",
            "gauge",
            "1 if this node refuses calls because it cannot route by the cluster's map (see its log).",
            u64::from(shards.map.routable().is_err()),
        );
        if let Some(meta) = &shards.meta {
            metric(
                &mut out,
                "strata_meta_is_leader",
                "gauge",
                "1 if this node leads the metadata group (the map's history).",
                u64::from(
                    meta.replica()
                        .leader()
                        .is_some_and(|(id, _)| id == meta.replica().node_id()),
                ),
            );
        }
        let status = replica.status();
        metric(
            &mut out,
            "strata_raft_term",
            "gauge",
            "Current Raft term (of the first shard's group).",
            status.term,
        );
        metric(
            &mut out,
            "strata_raft_is_leader",
            "gauge",
            "1 if this node leads the first shard's group.",
            u64::from(status.leader == Some(status.node_id)),
        );
        metric(
            &mut out,
            "strata_raft_last_log_index",
            "gauge",
            "Index of the last entry in this node's log.",
            status.last_log_index,
        );
        metric(
            &mut out,
            "strata_raft_last_applied_index",
            "gauge",
            "Index of the last entry applied (indexed and readable) here.",
            status.last_applied,
        );
    }
    histogram(
        &mut out,
        "strata_fsync_seconds",
        "Group commit write + fdatasync time.",
        &s.sync,
    );
    histogram(
        &mut out,
        "strata_append_seconds",
        "Append latency as the server sees it (request to durable answer).",
        &service.append_latency,
    );
    moves(&mut out, mover, throttle);
    out
}

/// The slot-range moves' progress (none without a mover) and the move throttle's state (it
/// paces slot copies and new replicas' catch-up).
fn moves(out: &mut String, mover: Option<&crate::mover::Mover>, throttle: &Throttle) {
    use crate::mover::Step;
    let status = mover.and_then(|m| m.status());
    let running = status
        .as_ref()
        .is_some_and(|s| matches!(s.step, Step::Copying | Step::Fenced));
    let of = |f: fn(&crate::mover::MoveStatus) -> u64| status.as_ref().map_or(0, f);
    let t = throttle.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "strata_move_running",
            "gauge",
            "1 while a slot-range move runs.",
            u64::from(running),
        ),
        (
            "strata_move_fenced",
            "gauge",
            "1 while a move's slots refuse writes (fence to switch).",
            u64::from(status.as_ref().is_some_and(|s| s.step == Step::Fenced)),
        ),
        (
            "strata_move_scanned_bytes",
            "gauge",
            "How far the latest move's copy has read the source log.",
            of(|s| s.scanned_bytes),
        ),
        (
            "strata_move_source_bytes",
            "gauge",
            "The source log's end when the latest move began.",
            of(|s| s.source_bytes),
        ),
        (
            "strata_move_copied_events",
            "gauge",
            "Events the latest move copied.",
            of(|s| s.copied_events),
        ),
        (
            "strata_move_pause_microseconds",
            "gauge",
            "The latest finished move's write pause (fence to switch).",
            of(|s| s.pause_us),
        ),
        (
            "strata_move_rate_bytes_per_second",
            "gauge",
            "The pace the move throttle sets now (slot copies, new replicas' catch-up).",
            load(&t.rate),
        ),
        (
            "strata_move_baseline_p99_microseconds",
            "gauge",
            "Foreground append p99 before the latest move's copy began.",
            load(&t.baseline_p99_us),
        ),
        (
            "strata_move_window_p99_microseconds",
            "gauge",
            "Foreground append p99 in the throttle's last window.",
            load(&t.window_p99_us),
        ),
        (
            "strata_move_throttle_decreases_total",
            "counter",
            "Times the throttle halved the copy's rate.",
            load(&t.decreases),
        ),
        (
            "strata_move_throttle_increases_total",
            "counter",
            "Times the throttle raised the copy's rate by a step.",
            load(&t.increases),
        ),
        (
            "strata_move_copied_bytes_total",
            "counter",
            "Bytes moves have sent through the throttle (slot copies; new replicas' entries and snapshot segments).",
            load(&t.bytes),
        ),
        (
            "strata_move_throttle_wait_microseconds_total",
            "counter",
            "Time moves waited on the throttle.",
            load(&t.waited_us),
        ),
    ] {
        metric(out, name, kind, help, value);
    }
}

/// Serves `/metrics` and `/health` on `addr` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    shards: LocalShards,
    service: Arc<ServiceStats>,
    data_dir: PathBuf,
    (mover, throttle): (Option<crate::mover::Mover>, Throttle),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener failed to accept");
                continue;
            }
        };
        let (shards, service, data_dir, mover, throttle) = (
            shards.clone(),
            service.clone(),
            data_dir.clone(),
            mover.clone(),
            throttle.clone(),
        );
        tokio::spawn(async move {
            let handler =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = match request.uri().path() {
                        "/metrics" => {
                            let body =
                                render(&shards, &service, &data_dir, (mover.as_ref(), &throttle));
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                        }
                        "/health" => match shards.map.routable() {
                            Ok(_) => Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"status\":\"serving\"}\n"))),
                            // Its map is not the cluster's: it answers no call (see `crate::meta`).
                            Err(why) => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(format!(
                                    "{}\n",
                                    serde_json::json!({"status": "refusing", "reason": &*why})
                                )))),
                        },
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(
                                b"not found: try /metrics or /health\n",
                            ))),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, handler)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
