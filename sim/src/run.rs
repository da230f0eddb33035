//! One simulated run, decided by one u64 seed: a safety phase (faults on, clients running),
//! then a liveness phase (faults off, every stopped node restarted; the cluster must elect a
//! leader, take an append and bring every running member level within a bounded time), then
//! the checks of [`crate::check`].

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_engine::{AppendRequest, Direction, ExpectedVersion, NewEvent};
use strata_raft::types::NodeId;
use tokio::time::Instant;

use crate::check::{self, Final, Monitor, Violation, Violations};
use crate::cluster::{lock, Cluster, Down};
use crate::nemesis::{leader_of, members, nemesis, FaultLog};
pub use crate::nemesis::{FaultSet, RunConfig, RunReport};
use crate::trace::Trace;
use crate::workload::{self, STREAMS};

/// Panics seen inside runs since the last [`take_panics`] (a panic inside a node's task is
/// caught by tokio and would otherwise only stop that node).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread is running a simulation (its panics are the run's findings).
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records the panics of threads running a simulation; any other thread's panic (a test's
/// failed assertion beside a run) goes to the hook that was there before, so it is printed.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_RUN.with(std::cell::Cell::get) {
                previous(info);
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            lock(&PANICS).push(format!("{message}{at}"));
        }));
    });
}

fn take_panics() -> Vec<String> {
    std::mem::take(&mut *lock(&PANICS))
}

/// Runs one seed on a fresh single-threaded runtime with paused (simulated) time.
pub fn run(config: &RunConfig) -> RunReport {
    let seed = config.seed;
    install_panic_hook();
    take_panics();
    IN_RUN.with(|r| r.set(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
            .build()
            .map_err(|e| e.to_string())?;
        strata_raft::runtime::seed_thread_rng(seed ^ 0x005e_ed0f_7a1f);
        let report = if config.shards > 1 {
            runtime.block_on(crate::sharded::simulate(config.clone()))
        } else {
            runtime.block_on(simulate(config.clone()))
        };
        Ok::<RunReport, String>(report)
    }));
    IN_RUN.with(|r| r.set(false));
    let panics = take_panics();
    match outcome {
        Ok(Ok(mut report)) => {
            for p in panics {
                report.violations.push(Violation {
                    property: "no panic",
                    detail: p,
                });
            }
            report
        }
        Ok(Err(e)) => failed(seed, "simulator set-up", e),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            failed(seed, "no panic", message)
        }
    }
}

fn failed(seed: u64, property: &'static str, detail: String) -> RunReport {
    RunReport {
        seed,
        trace_hash: 0,
        violations: vec![Violation { property, detail }],
        faults: BTreeMap::new(),
        ops: 0,
        acked: 0,
        entries: 0,
        unknown_streams: 0,
        simulated: Duration::ZERO,
    }
}

/// What each node says of itself, for a liveness failure's report.
fn views(cluster: &Cluster, ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| match cluster.replica(*id) {
            None => format!("n{id} down ({:?})", cluster.down(*id)),
            Some(r) => {
                let m = r.raft().metrics().borrow().clone();
                format!(
                    "n{id} {:?} vote {} last log {:?} applied {:?} snapshot {:?} members {:?} replication {:?}",
                    m.state,
                    m.vote,
                    m.last_log_index,
                    m.last_applied.map(|l| l.index),
                    m.snapshot.map(|l| l.index),
                    m.membership_config.membership(),
                    m.replication
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Heals everything and waits for the cluster to serve again; `Err` names what did not
/// recover in time.
async fn recover(
    cluster: &Cluster,
    monitor: &Arc<Mutex<Monitor>>,
    within: Duration,
) -> Result<NodeId, String> {
    cluster.set_net(|n| {
        n.cut.clear();
        n.loss = 0.0;
        n.duplicate = 0.0;
        n.delay_max_ms = 5;
    });
    cluster.set_disk_latency(2);
    for id in cluster.ids() {
        cluster.set_clock(id, 1.0, 0);
        if let Some(fs) = cluster.fs(id) {
            fs.set_space_limit(None);
            fs.fail_next_syncs(0);
        }
    }
    let started = Instant::now();
    let deadline = started + within;
    // `None`: no leader (described with every node's view when it is the answer).
    let mut last_problem: Option<String> = None;
    let mut forgiven = false;
    while Instant::now() < deadline {
        // A voter that stopped for corruption while a membership change was in flight can
        // leave a cluster that cannot make progress without it: no electable node (the one
        // whose log is longest holds an uncommitted joint configuration that needs the new
        // member's vote, and the new member holds entries of a later term from the leader
        // that died: seeds 55005188, 55005216), or a leader whose configuration needs it to
        // commit. Not recovered after a third of the window, the operator restarts such
        // nodes, data as it is; each stops again if it reads its damaged bytes.
        if !forgiven && Instant::now() >= started + within / 3 {
            forgiven = true;
            for id in cluster.ids() {
                if cluster.forgive_corruption(id) {
                    cluster.trace().log(format!(
                        "liveness: not recovered; the operator restarts n{id}, stopped for corruption"
                    ));
                }
            }
        }
        for id in cluster.ids() {
            if matches!(cluster.down(id), Some(Down::Stopped(_))) {
                let _ = cluster.start(id).await;
            }
        }
        lock(monitor).sample();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(l) = leader_of(cluster) else {
            last_problem = None;
            continue;
        };
        let Some(leader) = cluster.replica(l) else {
            continue;
        };
        let probe = AppendRequest::single(
            "liveness-probe",
            ExpectedVersion::Any,
            vec![NewEvent {
                id: uuid::Uuid::from_u64_pair(cluster.rng().next_u64(), cluster.rng().next_u64()),
                event_type: "probe".into(),
                data: bytes::Bytes::from_static(b"{}"),
                metadata: bytes::Bytes::new(),
            }],
            cluster.wall_clock_us(l),
        );
        if let Err(e) = leader.append(probe).await {
            last_problem = Some(format!(
                "leader n{l} refused an append: {e} [{}]",
                views(cluster, &cluster.ids())
            ));
            continue;
        }
        if let Err(e) = leader.linearizable_barrier().await {
            last_problem = Some(format!("leader n{l} failed a linearizable read: {e}"));
            continue;
        }
        // Then every running member must apply up to the probe (no new probes meanwhile).
        let target = leader.raft().metrics().borrow().last_applied;
        let lagging = loop {
            let lagging: Vec<NodeId> = members(cluster)
                .into_iter()
                .filter(|id| !matches!(cluster.down(*id), Some(Down::Corrupt(_))))
                .filter(|id| {
                    cluster
                        .replica(*id)
                        .is_none_or(|r| r.raft().metrics().borrow().last_applied < target)
                })
                .collect();
            if lagging.is_empty() {
                return Ok(l);
            }
            if Instant::now() >= deadline || leader_of(cluster) != Some(l) {
                break lagging;
            }
            for id in &lagging {
                if matches!(cluster.down(*id), Some(Down::Stopped(_))) {
                    let _ = cluster.start(*id).await;
                }
            }
            lock(monitor).sample();
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        last_problem = Some(format!(
            "members {lagging:?} have not applied up to {:?} [{}]",
            target.map(|t| t.index),
            views(cluster, &lagging)
        ));
    }
    Err(last_problem.unwrap_or_else(|| format!("no leader [{}]", views(cluster, &cluster.ids()))))
}

/// The final log: each stream's events, every event record's (position, timestamp) in log
/// order, and where each event is.
struct FinalLog {
    streams: Final,
    stamps: Vec<(u64, u64)>,
    places: check::EventPlaces,
    /// The snapshotted stream's events (`system_ops::SNAPPED`): (version, id).
    snapped: Vec<(u64, String)>,
}

/// The final log, read on a running node whose disk had no bit flip (their applied logs are
/// byte-identical, which the monitor checks), else on the leader.
fn final_log(
    cluster: &Cluster,
    leader: NodeId,
    tainted: &BTreeSet<NodeId>,
) -> Result<FinalLog, String> {
    let applied = |id: &NodeId| {
        cluster
            .replica(*id)
            .and_then(|r| r.raft().metrics().borrow().last_applied)
    };
    let source = cluster
        .up_ids()
        .into_iter()
        .filter(|id| !tainted.contains(id))
        .max_by_key(|id| (applied(id), *id == leader))
        .filter(|id| applied(id) >= applied(&leader))
        .unwrap_or(leader);
    let replica = cluster.replica(source).ok_or("the leader went down")?;
    let reader = replica.shard().reader();
    // Every event record in log order, with its timestamp; where each event is.
    let mut stamps = Vec::new();
    let mut places = check::EventPlaces::new();
    let mut from = 0;
    loop {
        let batch = reader
            .read_all(from, reader.limits().read_records_max)
            .map_err(|e| format!("reading the log: {e}"))?;
        if batch.records.is_empty() {
            break;
        }
        for r in batch.records.iter().filter(|r| !r.events.is_empty()) {
            stamps.push((r.position, r.timestamp_us));
            for e in &r.events {
                places.insert(
                    e.id.to_string(),
                    (e.stream.clone(), r.position, r.timestamp_us),
                );
            }
        }
        from = batch.next;
    }
    let mut out = Final::new();
    for stream in STREAMS {
        let events = reader
            .read_stream(
                stream,
                None,
                Direction::Forwards,
                reader.limits().read_events_max,
            )
            .map_err(|e| format!("reading {stream}: {e}"))?;
        out.insert(
            stream.to_string(),
            events
                .iter()
                .map(|e| (e.version, e.id.to_string()))
                .collect(),
        );
    }
    let snapped = reader
        .read_stream(
            crate::system_ops::SNAPPED,
            None,
            Direction::Forwards,
            reader.limits().read_events_max,
        )
        .map_err(|e| format!("reading {}: {e}", crate::system_ops::SNAPPED))?
        .iter()
        .map(|e| (e.version, e.id.to_string()))
        .collect();
    Ok(FinalLog {
        streams: out,
        stamps,
        places,
        snapped,
    })
}

/// After the run: every running member that applied the whole log reads each stream as of
/// random timestamps (around records', under the nodes' skewed clocks and leader changes) and
/// must return the final log's prefix up to there.
/// The readers of the running members that hold the whole final log (`stamps`: its event
/// records' timestamps), leaving out nodes whose disk had a bit flip (they may rightly report
/// corruption instead).
fn whole_log_readers(
    cluster: &Cluster,
    tainted: &BTreeSet<NodeId>,
    stamps: &[(u64, u64)],
) -> Vec<(NodeId, strata_engine::Reader)> {
    let newest = stamps.iter().map(|(_, t)| *t).max().unwrap_or(0);
    cluster
        .up_ids()
        .into_iter()
        .filter(|id| !tainted.contains(id))
        .filter_map(|id| Some((id, cluster.replica(id)?.shard().reader())))
        .filter(|(_, reader)| reader.position_at_or_after(newest).ok().flatten().is_some())
        .collect()
}

fn as_of_timestamps(
    cluster: &Cluster,
    tainted: &BTreeSet<NodeId>,
    last: &Final,
    stamps: &[(u64, u64)],
    places: &check::EventPlaces,
) -> Vec<Violation> {
    let mut out = Vec::new();
    if stamps.is_empty() {
        return out;
    }
    let readers = whole_log_readers(cluster, tainted, stamps);
    let rng = cluster.rng();
    for _ in 0..8 {
        let t = stamps[rng.below(stamps.len() as u64) as usize].1 - rng.below(2);
        for (id, reader) in &readers {
            // Reads before a node's retention horizon are refused there, by design.
            if t < reader.retention_horizon_us() {
                continue;
            }
            for stream in STREAMS {
                let want = check::log_prefix(last, places, stream, |p| p.2 <= t);
                let got = reader.read_stream_as_of(
                    stream,
                    None,
                    Direction::Forwards,
                    reader.limits().read_events_max,
                    Some(strata_engine::AsOf::Timestamp(t)),
                );
                let got: Vec<String> = match got {
                    Ok(events) => events.iter().map(|e| e.id.to_string()).collect(),
                    Err(e) => {
                        out.push(Violation {
                            property: "as-of reads equal the log's prefix",
                            detail: format!("n{id}: {stream} as of {t}: {e}"),
                        });
                        continue;
                    }
                };
                if got != want {
                    out.push(Violation {
                        property: "as-of reads equal the log's prefix",
                        detail: format!(
                            "n{id}: {stream} as of time {t} returned {} events, the log's prefix has {}",
                            got.len(),
                            want.len()
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Retention passes on every running node every 300–900 ms of simulated time until `until`,
/// under the run's faults (a pass that fails — a crash, a full disk — is retried next time):
/// the node's own pass (`strata_shard::retention::pass_once`), bounded by the positions its
/// service's open subscriptions still have to deliver, as the node's retention loop runs it.
async fn janitor(cluster: Cluster, faults: FaultLog, until: Instant) {
    let settings = strata_shard::retention::RetentionSettings {
        enabled: true,
        interval: Duration::from_millis(600),
        engine: strata_engine::retention::RetentionConfig {
            as_of_window_us: 2_000_000,
            rewrite_dead_fraction: 0.3,
            bytes_per_sec: u64::MAX,
        },
    };
    while Instant::now() < until {
        tokio::time::sleep(cluster.rng().millis(300, 900)).await;
        for id in cluster.up_ids() {
            let Some((service, replica)) = cluster.streams(id) else {
                continue;
            };
            let backend = strata_shard::Backend::Replicated(Box::new(replica.as_ref().clone()));
            let now = cluster.wall_clock_us(id);
            let pinned = service.pins().lowest();
            match strata_shard::retention::pass_once(&backend, &settings, now, pinned).await {
                Ok((report, dropped)) if report.segments_rewritten > 0 || dropped > 0 => {
                    faults.note(
                        &cluster,
                        "retention",
                        format!(
                            "n{id}: {} segments rewritten, {dropped} dropped, {} bytes",
                            report.segments_rewritten, report.bytes_reclaimed
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => cluster
                    .trace()
                    .log(format!("n{id}: retention pass failed: {e}")),
            }
        }
    }
}

/// After a run with retention: every running member that applied the whole log shows the
/// reclaimable stream the same way — its newest `RECLAIMABLE_KEEP` versions, contiguous and
/// ending at its head — whatever each node reclaimed.
fn check_reclaimable(
    cluster: &Cluster,
    tainted: &BTreeSet<NodeId>,
    stamps: &[(u64, u64)],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut first: Option<(NodeId, Vec<(u64, String)>)> = None;
    for (id, reader) in whole_log_readers(cluster, tainted, stamps) {
        let stream = workload::RECLAIMABLE;
        let seen = reader
            .read_stream_visible(
                stream,
                None,
                Direction::Forwards,
                reader.limits().read_events_max,
                None,
                cluster.wall_clock_us(id),
            )
            .and_then(|page| Ok((page.events, reader.stream_version(stream)?)));
        let (events, head) = match seen {
            Ok(seen) => seen,
            Err(e) => {
                out.push(Violation {
                    property: "reclaimed streams read the same everywhere",
                    detail: format!("n{id}: reading {stream}: {e}"),
                });
                continue;
            }
        };
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        let want: Vec<u64> = match head {
            Some(h) => ((h + 1).saturating_sub(workload::RECLAIMABLE_KEEP)..=h).collect(),
            None => Vec::new(),
        };
        if versions != want {
            out.push(Violation {
                property: "reclaimed streams read the same everywhere",
                detail: format!(
                    "n{id}: {stream} shows versions {versions:?}, its metadata keeps {want:?}"
                ),
            });
        }
        let view: Vec<(u64, String)> = events
            .iter()
            .map(|e| (e.version, e.id.to_string()))
            .collect();
        match &first {
            None => first = Some((id, view)),
            Some((other, seen)) if *seen != view => out.push(Violation {
                property: "reclaimed streams read the same everywhere",
                detail: format!("{stream} differs between n{other} and n{id}"),
            }),
            Some(_) => {}
        }
    }
    out
}

async fn simulate(config: RunConfig) -> RunReport {
    let trace = Trace::new(config.print);
    let boot = crate::cluster::SimRng::new(config.seed);
    let nodes = if config.faults.membership {
        4 + boot.below(2)
    } else {
        3 + boot.below(3)
    };
    let cluster = Cluster::new(config.seed, nodes, trace.clone());
    trace.log(format!(
        "seed {} · {nodes} nodes · faults {:?}",
        config.seed, config.faults
    ));
    if config.lying_disks {
        for id in cluster.ids() {
            if let Some(fs) = cluster.fs(id) {
                fs.set_lying(true);
            }
        }
    }
    let violations = Violations::default();
    let tainted: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
    let monitor = Arc::new(Mutex::new(Monitor::new(
        cluster.clone(),
        violations.clone(),
        tainted.clone(),
    )));
    for id in cluster.ids() {
        if let Err(e) = cluster.start(id).await {
            violations.add(&cluster, "nodes start", format!("n{id}: {e}"));
        }
    }
    if let Some(first) = cluster.replica(1) {
        if let Err(e) = first.init().await {
            violations.add(&cluster, "cluster forms", e.to_string());
        }
    }
    let start = Instant::now();
    let safety_end = start + config.safety;
    let watching = {
        let monitor = monitor.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                lock(&monitor).sample();
            }
        })
    };
    let workload::Clients {
        history,
        as_of_reads,
        mut tasks,
        subscribers,
        subscribers_until,
    } = workload::start(&cluster, &STREAMS, safety_end, safety_end + config.liveness);
    let system_observed = crate::system_ops::Observations::default();
    tasks.push(tokio::spawn(crate::system_ops::client(
        cluster.clone(),
        system_observed.clone(),
        safety_end,
    )));
    let faults = FaultLog::default();
    // One seed in four also runs retention (no draw from the seed's generator decides it, so
    // the other seeds run exactly as before).
    let retention = config.seed % 4 == 0;
    if retention {
        trace.log("retention: on (a reclaimable stream, passes on every node)");
        tasks.push(tokio::spawn(workload::reclaimable_writer(
            cluster.clone(),
            safety_end,
        )));
        tasks.push(tokio::spawn(janitor(
            cluster.clone(),
            faults.clone(),
            safety_end,
        )));
    }
    let _ = tokio::spawn(nemesis(
        cluster.clone(),
        config.faults,
        faults.clone(),
        tainted.clone(),
        safety_end,
    ))
    .await;
    trace.log("liveness phase: faults off, stopped nodes restarted");
    let recovered = recover(&cluster, &monitor, config.liveness).await;
    // Subscribers get a moment to deliver what the recovered cluster applied.
    subscribers_until.send_replace(Instant::now() + Duration::from_secs(2));
    for t in tasks {
        let _ = t.await;
    }
    watching.abort();
    lock(&monitor).sample();
    let ops = history.ops();
    // (Taken here: a lock guard in a `match` scrutinee would live through the whole match.)
    let tainted_now = lock(&tainted).clone();
    if let Ok(leader) = &recovered {
        // Appends retried past the safety phase may have committed after the probe: give a
        // node whose disk had no bit flip a moment to apply them too.
        for _ in 0..50 {
            let applied = |id: NodeId| {
                cluster
                    .replica(id)
                    .and_then(|r| r.raft().metrics().borrow().last_applied)
            };
            let target = applied(*leader);
            let caught_up = cluster
                .up_ids()
                .into_iter()
                .any(|id| !tainted_now.contains(&id) && applied(id) >= target);
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match recovered {
        Err(e) => violations.add(
            &cluster,
            "liveness",
            format!("not recovered within {:?}: {e}", config.liveness),
        ),
        Ok(leader) => match final_log(&cluster, leader, &tainted_now) {
            Err(e) => violations.add(&cluster, "liveness", e),
            Ok(FinalLog {
                streams: last,
                stamps,
                places,
                snapped,
            }) => {
                let received: Vec<check::SubscriberLog> = subscribers
                    .iter()
                    .map(|(n, r)| (n.clone(), r.all()))
                    .collect();
                let mut found = check::check_log(&ops, &last);
                found.extend(check::check_follower_reads(&ops, &last));
                found.extend(check::check_subscribers(&received, &last));
                found.extend(check::check_timestamps(&stamps));
                found.extend(check::check_as_of_reads(&as_of_reads.all(), &last, &places));
                found.extend(crate::system_ops::check(
                    &system_observed.all(),
                    &places,
                    &snapped,
                ));
                found.extend(as_of_timestamps(
                    &cluster,
                    &tainted_now,
                    &last,
                    &stamps,
                    &places,
                ));
                if retention {
                    found.extend(check_reclaimable(&cluster, &tainted_now, &stamps));
                }
                for v in found {
                    violations.add(&cluster, v.property, v.detail);
                }
            }
        },
    }
    let (lin, unknown_streams) = check::check_linearizable(&ops, config.check_time);
    for v in lin {
        violations.add(&cluster, v.property, v.detail);
    }
    if unknown_streams > 0 {
        trace.log(format!(
            "linearizability unknown for {unknown_streams} stream(s) (budget)"
        ));
    }
    let simulated = start.elapsed();
    let (entries, leaders) = {
        let m = lock(&monitor);
        (m.applied_entries(), m.leader_ids())
    };
    let acked = ops
        .iter()
        .filter(|o| matches!(o.outcome, workload::Outcome::Appended(_)))
        .count();
    trace.log(format!(
        "end: {} ops ({acked} acknowledged appends), {entries} entries applied, {leaders} leader ids",
        ops.len()
    ));
    cluster.shutdown().await;
    let faults = lock(&faults.0).clone();
    RunReport {
        seed: config.seed,
        trace_hash: trace.hash(),
        violations: violations.all(),
        faults,
        ops: ops.len(),
        acked,
        entries,
        unknown_streams,
        simulated,
    }
}
