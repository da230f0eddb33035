//! `strata-client` against three real `strata node` processes: appends (pipelined and one at a
//! time) through a SIGKILL of the leader with only the client's own retries — every
//! acknowledged append is there exactly once and nothing is written twice — and
//! subscriptions (one stream and `$all`) through leader kills and restarts, with no gap and
//! no duplicate; and a `$all` subscription over a node of four shards through two SIGKILLs of
//! the node (resumed by cursor, two-event records among the appends).

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use strata_client::{event, pb, Client, ClientConfig, ExpectedVersion, Item, Start, Target};
use strata_proto::v1::streams_client::StreamsClient;

async fn three_nodes() -> Cluster {
    let mut cluster = Cluster::new(3, false, small_log_args());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    cluster.leader(Duration::from_secs(10)).await;
    cluster
}

fn client_of(cluster: &Cluster, tune: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig::new(cluster.nodes.keys().map(|id| cluster.addr(*id)));
    // Enough to ride out a failover (an election takes about a second here).
    config.attempts_max = 40;
    config.deadline = Duration::from_secs(60);
    tune(&mut config);
    Client::new(config).unwrap()
}

/// Stream → event ids acknowledged, in acknowledgement order.
type Acked = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// Every event of `stream` on every live node (follower reads): each id at most once, and
/// every acknowledged one present. Returns the stream's event ids, in log order.
async fn check_exactly_once(cluster: &Cluster, stream: &str, acked: &[String]) -> Vec<String> {
    cluster.converge().await;
    let mut held = Vec::new();
    for id in cluster.live() {
        let ch = channel(&cluster.addr(id)).await.unwrap();
        let mut client = StreamsClient::new(ch);
        let events = follower_read_all(&mut client, stream, id).await;
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "node {id}: an event of {stream} is there twice"
        );
        for a in acked {
            assert!(
                unique.contains(a.as_str()),
                "node {id}: acknowledged {a} of {stream} is missing"
            );
        }
        held = ids.iter().map(|id| id.to_string()).collect();
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_ride_out_a_leader_kill_on_the_clients_own_retries_exactly_once() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three_nodes().await;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Two pipelined appenders (a window of 64, batches lingering 200 µs) …
    for p in 0..2 {
        let client = client_of(&cluster, |c| {
            c.window = 64;
            c.linger = Duration::from_micros(200);
        });
        let (acked, stop, failures) = (acked.clone(), stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let appender = client.appender();
            let stream = format!("piped-{p}");
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let feeder = tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut e = event("T", "{}");
                    e.id = uuid::Uuid::new_v4().to_string();
                    let id = e.id.clone();
                    let pending = appender
                        .append(&stream, ExpectedVersion::Any, vec![e])
                        .await
                        .unwrap();
                    if tx.send((stream.clone(), id, pending)).await.is_err() {
                        break;
                    }
                }
            });
            while let Some((stream, id, pending)) = rx.recv().await {
                match pending.await {
                    Ok(_) => acked.lock().unwrap().entry(stream).or_default().push(id),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
            feeder.await.unwrap();
        }));
    }
    // … and two writers one append at a time, each on its own stream with exact versions.
    for w in 0..2 {
        let client = client_of(&cluster, |_| {});
        let (acked, stop, failures) = (acked.clone(), stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let stream = format!("unary-{w}");
            let mut version: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                let mut e = event("T", "{}");
                e.id = uuid::Uuid::new_v4().to_string();
                let id = e.id.clone();
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                match client.append(&stream, expected, vec![e]).await {
                    Ok(r) => {
                        // A retry answered with the original result keeps versions in step.
                        version = Some(r.streams[0].last_version);
                        acked
                            .lock()
                            .unwrap()
                            .entry(stream.clone())
                            .or_default()
                            .push(id);
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let before = acked.lock().unwrap().values().map(Vec::len).sum::<usize>();
    cluster.nodes.get_mut(&leader).unwrap().kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.nodes.get_mut(&leader).unwrap().start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let after = acked.values().map(Vec::len).sum::<usize>();
    assert!(
        after > before + 100,
        "writes did not go on after the kill: {before} → {after}"
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "the client gave up on {} appends: {:?}",
        failures.len(),
        failures.first()
    );
    cluster.wait_up(leader).await;
    for (stream, ids) in &acked {
        let held = check_exactly_once(&cluster, stream, ids).await;
        assert_eq!(
            held.len(),
            ids.len(),
            "{stream}: every append was acknowledged, so all are there"
        );
        // Each writer sends its next append only after the one before it (one at a time), or
        // in order on one pipelined call, retried in order: the log keeps that order.
        assert!(
            held == *ids,
            "{stream}: the log's order is not the order sent (first difference at {:?})",
            held.iter().zip(ids).position(|(h, i)| h != i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_resume_across_leader_kills_and_restarts_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three_nodes().await;
    let client = client_of(&cluster, |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(0u64));
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .append(
                        "followed",
                        ExpectedVersion::Any,
                        vec![event("T", format!("{{\"n\":{n}}}"))],
                    )
                    .await
                    .unwrap();
                assert_eq!(r.streams[0].last_version, n, "each append is written once");
                n += 1;
                *written.lock().unwrap() = n;
                // Another stream's events interleave in $all.
                client
                    .append(
                        "other",
                        ExpectedVersion::Any,
                        vec![event("U", "{}"), event("U", "{}")],
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let mut stream_sub = client.subscribe(Target::Stream("followed".into()), Start::Beginning);
    let mut all_sub = client.subscribe(Target::All(None), Start::Beginning);
    let seen_stream = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen_all = Arc::new(Mutex::new(Vec::<(u64, String, u64)>::new()));
    let readers = {
        let (a, b) = (seen_stream.clone(), seen_all.clone());
        let r1 = tokio::spawn(async move {
            loop {
                if let Item::Event(e) = stream_sub.next().await.unwrap() {
                    a.lock().unwrap().push(e.version);
                }
            }
        });
        let r2 = tokio::spawn(async move {
            loop {
                if let Item::Event(e) = all_sub.next().await.unwrap() {
                    b.lock().unwrap().push((e.position, e.stream, e.version));
                }
            }
        });
        [r1, r2]
    };
    // Two leader kills, each node back after a pause, and a restart of a follower.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.leader(Duration::from_secs(10)).await;
        cluster.nodes.get_mut(&leader).unwrap().kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.nodes.get_mut(&leader).unwrap().start();
        cluster.wait_up(leader).await;
    }
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.nodes.get_mut(&follower).unwrap().stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes.get_mut(&follower).unwrap().start();
    cluster.wait_up(follower).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total = *written.lock().unwrap();
    // Wait for the subscriptions to deliver everything written.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (seen_stream.lock().unwrap().len() as u64) < total {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream subscription stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in readers {
        r.abort();
    }
    let versions = seen_stream.lock().unwrap().clone();
    assert!(total > 50, "only {total} appends were made");
    assert_eq!(
        versions,
        (0..total).collect::<Vec<_>>(),
        "a gap or a duplicate in the stream subscription"
    );
    let all = seen_all.lock().unwrap().clone();
    let mut keys = HashSet::new();
    for (p, s, v) in &all {
        assert!(
            keys.insert((s.clone(), *v)),
            "{s}@{v} (position {p}) delivered twice on $all"
        );
    }
    assert!(
        all.windows(2).all(|w| w[0].0 <= w[1].0),
        "$all went backwards"
    );
    let followed: Vec<u64> = all
        .iter()
        .filter(|(_, s, _)| s == "followed")
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(
        followed,
        (0..total).collect::<Vec<_>>(),
        "$all missed or repeated an event"
    );
}

/// A client of the node on `port` that keeps retrying (100 attempts) within `deadline`: it
/// outlasts a node's restart.
fn patient_client(port: u16, deadline: Duration) -> Client {
    let mut config = ClientConfig::new([addr(port)]);
    config.attempts_max = 100;
    config.deadline = deadline;
    Client::new(config).unwrap()
}

/// A `strata dev --shards N` process on a port and a data directory of its own; killed when
/// dropped, so a failed test leaves no process behind.
struct ShardedDev {
    dir: tempfile::TempDir,
    port: u16,
    shards: u32,
    child: std::process::Child,
}

impl ShardedDev {
    fn start(shards: u32) -> ShardedDev {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = ShardedDev::spawn(dir.path(), port, shards);
        ShardedDev {
            dir,
            port,
            shards,
            child,
        }
    }

    fn spawn(dir: &std::path::Path, port: u16, shards: u32) -> std::process::Child {
        std::process::Command::new(STRATA)
            .args(["dev", "--shards", &shards.to_string(), "--data"])
            .arg(dir.join("node"))
            .args(["--listen", &addr(port), "--metrics", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// SIGKILL.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Started again on its port and data.
    fn restart(&mut self) {
        self.child = ShardedDev::spawn(self.dir.path(), self.port, self.shards);
    }

    /// A client patient for `deadline`, once the node answers.
    async fn client(&self, deadline: Duration) -> Client {
        let client = patient_client(self.port, deadline);
        client.get_log(None).await.unwrap();
        client
    }
}

impl Drop for ShardedDev {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_all_subscription_over_shards_resumes_by_cursor_across_a_kill_without_gap_or_duplicate()
{
    let _serial = SERIAL.lock().await;
    let mut dev = ShardedDev::start(4);
    let client = dev.client(Duration::from_secs(60)).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Stream → events acknowledged; every third append is a two-event record.
    let written: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let stream = format!("s-{}", n % 12);
                let events = if n % 3 == 0 {
                    vec![event("T", "{}"), event("T", "{}")]
                } else {
                    vec![event("T", "{}")]
                };
                let count = events.len() as u64;
                client
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                *written.lock().unwrap().entry(stream).or_default() += count;
                n += 1;
            }
        })
    };
    let mut sub = client.subscribe(Target::All(None), Start::Beginning);
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Item::Event(e) = sub.next().await.unwrap() {
                    seen.lock().unwrap().push((e.stream, e.version));
                }
            }
        })
    };
    // SIGKILL the node twice while both run; it comes back on its port and data.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        dev.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        dev.restart();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total: u64 = written.lock().unwrap().values().sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (seen.lock().unwrap().len() as u64) < total {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    drop(dev);
    assert!(total > 50, "only {total} events were written");
    // Every acknowledged event once, each stream's in version order (the shards interleave).
    let seen = seen.lock().unwrap().clone();
    let mut by_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (s, v) in seen {
        by_stream.entry(s).or_default().push(v);
    }
    let written = written.lock().unwrap().clone();
    for (stream, n) in &written {
        let versions = by_stream.remove(stream).unwrap_or_default();
        // An append whose answer was lost in a kill may be there without being counted.
        assert!(
            versions.len() as u64 >= *n,
            "{stream}: {} of {n}",
            versions.len()
        );
        assert_eq!(
            versions,
            (0..versions.len() as u64).collect::<Vec<_>>(),
            "{stream}: a gap, a duplicate or a reorder"
        );
    }
}

/// On a node of four shards a consumer group's streams share one shard (its name is their
/// routing key); a worker hands out events of every shard and commits a place in each shard's
/// log; an exactly-once output outside the group's shard is refused naming the shards, with
/// nothing written, and one named with the group's routing key commits; creating it twice is
/// refused and lists it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_on_several_shards_keeps_its_streams_on_one_shard() {
    use strata_client::group::{GroupTarget, Position, Worker, WorkerConfig};
    use strata_proto::routing::slot_of;
    let _serial = SERIAL.lock().await;
    let dev = ShardedDev::start(4);
    let client = dev.client(Duration::from_secs(30)).await;
    let groups = prefix_group(&client, "billing", "in-", 4).await;
    let again = groups
        .create("billing", GroupTarget::All, 2, Position::From(0))
        .await
        .unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");
    assert_eq!(groups.list().await.unwrap(), vec!["billing".to_string()]);
    let slot = slot_of("$group:billing", 4096);
    for s in [
        "$group:billing/members",
        "$group:billing/p/3",
        "out-{billing}",
    ] {
        assert_eq!(slot_of(s, 4096), slot, "{s}");
    }
    // Sixteen streams: spread over the four shards.
    let streams: Vec<String> = (0..16).map(|k| format!("in-{k}")).collect();
    for s in &streams {
        client
            .append(s, ExpectedVersion::Any, vec![event("T", "{}")])
            .await
            .unwrap();
    }
    let mut worker = Worker::join(client.clone(), "billing", WorkerConfig::new("w1"))
        .await
        .unwrap();
    // An output stream in another shard than the group's (4 even ranges of 1024 slots).
    let elsewhere = (0..)
        .map(|k| format!("elsewhere-{k}"))
        .find(|s| slot_of(s, 4096) / 1024 != slot / 1024)
        .unwrap();
    let mut handled = 0;
    while handled < streams.len() {
        let batch = worker.next_batch().await.unwrap();
        handled += batch.events.len();
        let outside = pb::StreamAppend {
            stream: elsewhere.clone(),
            expected: None,
            events: vec![event("Out", "{}")],
        };
        let refused = worker.commit_with(&batch, vec![outside]).await.unwrap_err();
        assert!(
            refused.to_string().contains("different shards"),
            "{refused}"
        );
        let output = pb::StreamAppend {
            stream: "out-{billing}".into(),
            expected: None,
            events: vec![event("Out", "{}")],
        };
        worker.commit_with(&batch, vec![output]).await.unwrap();
    }
    let info = client
        .stream_info(&elsewhere, pb::Consistency::Linearizable)
        .await
        .unwrap();
    assert!(!info.exists, "a refused output was written");
    let info = groups.info("billing").await.unwrap();
    let shards: std::collections::BTreeSet<u32> = info
        .partitions
        .iter()
        .flat_map(|p| p.position.shards().keys().copied())
        .collect();
    assert!(shards.len() > 1, "positions in one shard only: {info:?}");
    worker.leave().await.unwrap();
}

/// `strata cluster move-slots` on a node of four shards while writers append (with the
/// client's own retries only) and a `$all` and a stream subscriber follow: the move finishes,
/// no client operation fails, every acknowledged event is in its stream exactly once at its
/// version (read through the map that now routes the moved slots to their new shard), the
/// `$all` subscriber saw each once (the copies stay out of `$all`), the stream subscriber of a
/// moved stream saw its every event in order, and bad moves are refused with the map unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_move_between_shards_online_under_writers_and_subscribers() {
    use strata_proto::routing::slot_of;
    let _serial = SERIAL.lock().await;
    let mut dev = ShardedDev::start(4);
    let client = dev.client(Duration::from_secs(60)).await;
    // 4 shards of 4096 slots: shard 0 holds 0..1024; slots 0..512 go to shard 1.
    let streams: Vec<String> = (0..48).map(|k| format!("order-{{{k}}}")).collect();
    let moving: Vec<&String> = streams.iter().filter(|s| slot_of(s, 4096) < 512).collect();
    assert!(moving.len() >= 2, "{moving:?}");
    let watched = moving[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (client, stop, acked, streams) =
            (client.clone(), stop.clone(), acked.clone(), streams.clone());
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let stream = &streams[(n % streams.len() as u64) as usize];
                let id = uuid::Uuid::new_v4().to_string();
                let mut e = event("T", "{}");
                e.id = id.clone();
                client
                    .append(stream, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap();
                acked
                    .lock()
                    .unwrap()
                    .entry(stream.clone())
                    .or_default()
                    .push(id);
                n += 2;
            }
        }));
    }
    let follow = |target: Target| {
        let mut sub = client.subscribe(target, Start::Beginning);
        let seen: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    if let Item::Event(e) = sub.next().await.unwrap() {
                        seen.lock().unwrap().push((e.stream, e.version, e.id));
                    }
                }
            })
        };
        (seen, task)
    };
    let (all_seen, all_task) = follow(Target::All(None));
    let (one_seen, one_task) = follow(Target::Stream(watched.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let server = addr(dev.port);
    let cli = |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--server", &server]);
        std::process::Command::new(STRATA)
            .args(&full)
            .output()
            .unwrap()
    };
    // A CLI command that waits (run off the runtime: the writers go on), answered with its
    // last line of JSON.
    let waited = |args: &'static [&'static str]| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(STRATA)
                .args(args)
                .args(["--server", &server])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{args:?}: {err}");
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
    };
    let report = waited(&["cluster", "move-slots", "0..512", "--to", "1"])
        .await
        .unwrap();
    assert_eq!(report["step"], "done", "{report}");
    assert!(report["copied_events"].as_u64().unwrap() > 0, "{report}");
    assert!(report["pause_us"].as_u64().unwrap() > 0, "{report}");
    // Then a split of shard 0 (512..1024 now): a new shard 4 takes 768..1024, the writers and
    // the `$all` subscriber going on through it.
    let report = waited(&["cluster", "split-shard", "0"]).await.unwrap();
    assert_eq!(report["step"], "done", "{report}");
    assert_eq!(report["to"], 4, "{report}");
    assert_eq!(report["slots"], serde_json::json!([768, 1024]), "{report}");
    assert!(report["copied_events"].as_u64().unwrap() > 0, "{report}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&["cluster", "status", "--json"]).stdout).unwrap();
    // Epochs: 2 the move, 3 the shard added, 4 the split's move.
    assert_eq!(status["map_epoch"], 4, "{status}");
    assert_eq!(
        status["shards"][0]["slots"],
        serde_json::json!([[512, 768]])
    );
    assert_eq!(status["shards"][4]["id"], 4, "{status}");
    assert_eq!(
        status["shards"][4]["slots"],
        serde_json::json!([[768, 1024]])
    );
    assert_eq!(
        status["shards"][1]["slots"],
        serde_json::json!([[0, 512], [1024, 2048]])
    );
    // Bad moves and splits: each refused naming why; the map stays at epoch 4.
    for (args, says) in [
        (
            vec!["move-slots", "0..512", "--to", "1"],
            "on shard 1 already",
        ),
        (vec!["move-slots", "4000..5000", "--to", "1"], "not a range"),
        (vec!["move-slots", "500..600", "--to", "2"], "span shards"),
        (vec!["move-slots", "0..10", "--to", "9"], "not a shard"),
        (vec!["move-slots", "10..0", "--to", "2"], "not a range"),
        (
            vec!["split-shard", "9"],
            "no shard 9: the cluster has shards 0, 1, 2, 3, 4",
        ),
        (
            vec!["split-shard", "0", "--at", "100"],
            "slot 100 is not inside one of shard 0's ranges",
        ),
        (vec!["split-shard", "0", "--at", "512"], "not inside"),
        (
            vec!["split-shard", "0", "--at", "0"],
            "--at 0 leaves no slot",
        ),
    ] {
        let mut full = vec!["cluster"];
        full.extend(args.iter().copied());
        let out = cli(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let after: serde_json::Value =
        serde_json::from_slice(&cli(&["cluster", "status", "--json"]).stdout).unwrap();
    assert_eq!(after["map_epoch"], 4);
    // Every acknowledged event once in its stream, at consecutive versions.
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 100, "only {total} appends");
    for (stream, ids) in &acked {
        let events = client.read_stream(stream, None, 10_000).await.unwrap();
        let held: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "{stream}"
        );
        assert_eq!(
            held,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "{stream}"
        );
    }
    // `$all` once each; the moved stream's subscriber saw all of it in order.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while all_seen.lock().unwrap().len() < total {
        assert!(std::time::Instant::now() < deadline, "$all stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    all_task.abort();
    one_task.abort();
    let all = all_seen.lock().unwrap().clone();
    assert_eq!(all.len(), total, "$all delivered an event twice");
    let ids: HashSet<&str> = all.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids.len(), total);
    let one: Vec<String> = one_seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(&one, &acked[&watched], "the moved stream's subscriber");
    // Killed and started again (with the --shards it was made with): the added shard is
    // opened from the map, and every stream reads as before.
    dev.kill();
    dev.restart();
    let client = dev.client(Duration::from_secs(60)).await;
    for (stream, ids) in &acked {
        let events = client.read_stream(stream, None, 10_000).await.unwrap();
        let held: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            held,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "{stream} after a restart"
        );
    }
    let restarted: serde_json::Value =
        serde_json::from_slice(&cli(&["cluster", "status", "--json"]).stdout).unwrap();
    assert_eq!(restarted["map_epoch"], 4, "{restarted}");
    assert_eq!(
        restarted["shards"].as_array().unwrap().len(),
        5,
        "{restarted}"
    );
}

/// A node's counter from its `/metrics`.
async fn counter(metrics_port: u16, name: &str) -> u64 {
    let (_, _, body) = http::http(metrics_port, "GET", "/metrics", &[], "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A `strata dev` node in `dir` on `port`, its metrics on `metrics`, once it answers.
async fn dev_node(dir: &std::path::Path, port: u16, metrics: u16) -> http::Proc {
    let node = http::Proc(
        std::process::Command::new(STRATA)
            .args(["dev", "--listen", &addr(port), "--metrics", &addr(metrics)])
            .arg("--data")
            .arg(dir.join("node"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    http::wait_http(metrics).await;
    node
}

#[tokio::test]
async fn a_clients_appends_share_one_append_stream_each_answered_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let _node = dev_node(dir.path(), port, metrics).await;
    let calls = || counter(metrics, "strata_append_stream_calls_total");
    let client = Client::connect([addr(port)]).unwrap();
    // 32 tasks append one at a time at exact versions, each to its own stream; one of them
    // also makes an append that must fail, between its others.
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let stream = format!("shared-{t}");
                for v in 0..10u64 {
                    let expected = match v {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v - 1),
                    };
                    let r = client
                        .append(&stream, expected, vec![event("E", "{}")])
                        .await
                        .unwrap();
                    assert_eq!(r.streams[0].last_version, v, "{stream}");
                    if t == 7 && v == 4 {
                        let stale = ExpectedVersion::Exact(1);
                        match client.append(&stream, stale, vec![event("E", "{}")]).await {
                            Err(strata_client::Error::WrongExpectedVersion { actual, .. }) => {
                                assert_eq!(actual, Some(4))
                            }
                            other => panic!("a stale append answered {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Then one task, one append after another with pauses (well under IDLE_CALL_KEPT).
    for v in 10..15u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let expected = ExpectedVersion::Exact(v - 1);
        let r = client
            .append("shared-0", expected, vec![event("E", "{}")])
            .await
            .unwrap();
        assert_eq!(r.streams[0].last_version, v);
    }
    assert_eq!(calls().await, 1, "326 appends should have shared one call");
    // A handle with metadata of its own, and a client told not to, make calls of their own.
    let appended = counter(metrics, "strata_appends_total").await;
    let tagged = client.with_metadata("x-request-id", "t30-shared").unwrap();
    let mut config = ClientConfig::new([addr(port)]);
    config.append_over_stream = false;
    let unary = Client::new(config).unwrap();
    for c in [&tagged, &unary] {
        c.append("own-calls", ExpectedVersion::Any, vec![event("E", "{}")])
            .await
            .unwrap();
    }
    assert_eq!(counter(metrics, "strata_appends_total").await, appended + 2);
    assert_eq!(calls().await, 1);
    // Idle past IDLE_CALL_KEPT, the shared call ends; the next append opens a new one.
    tokio::time::sleep(strata_client::IDLE_CALL_KEPT + Duration::from_secs(1)).await;
    let r = client
        .append(
            "shared-0",
            ExpectedVersion::Exact(14),
            vec![event("E", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(r.streams[0].last_version, 15);
    assert_eq!(calls().await, 2, "an idle call should have ended");
}

/// A pipelined appender lingers only while appends are out (Nagle's rule): a lone append goes
/// at once, and what lingers goes when the last answer comes — neither waits the (here
/// 1 s) linger out.
#[tokio::test]
async fn the_linger_waits_only_while_appends_are_out() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let _node = dev_node(dir.path(), port, metrics).await;
    let linger = Duration::from_secs(1);
    let mut config = ClientConfig::new([addr(port)]);
    config.linger = linger;
    let client = Client::new(config).unwrap();
    client
        .append("linger", ExpectedVersion::Any, vec![event("E", "{}")])
        .await
        .unwrap();
    let appender = client.appender();
    for _ in 0..3 {
        let began = std::time::Instant::now();
        appender
            .append("linger", ExpectedVersion::Any, vec![event("E", "{}")])
            .await
            .unwrap()
            .await
            .unwrap();
        let took = began.elapsed();
        assert!(
            took < linger,
            "a lone append waited {took:?} (linger {linger:?})"
        );
    }
    // One, and once it is out, forty-nine more: they linger until its answer, then go.
    let began = std::time::Instant::now();
    let mut pending = vec![appender
        .append("linger", ExpectedVersion::Any, vec![event("E", "{}")])
        .await
        .unwrap()];
    // (This test's runtime has one thread: the appender's task sends it meanwhile.)
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    for _ in 0..49 {
        let p = appender
            .append("linger", ExpectedVersion::Any, vec![event("E", "{}")])
            .await
            .unwrap();
        pending.push(p);
    }
    for p in pending {
        p.await.unwrap();
    }
    let took = began.elapsed();
    assert!(
        took < linger,
        "50 appends took {took:?} (linger {linger:?})"
    );
    let info = client
        .stream_info("linger", Default::default())
        .await
        .unwrap();
    assert!(info.current_version >= 53, "{info:?}");
}

/// Subscriptions a reader is not reading hold back no other call of the same client. Four
/// subscriptions of ~4 MiB each are opened and read one event each; the node then sends each
/// what HTTP/2 lets it (hyper's windows: 2 MiB a call, 5 MiB a connection), which waits unread.
/// On the shared connection that filled the connection's window and the read below got no
/// answer (10 s, again, until its deadline); each subscription on a connection of its own
/// holds back only itself. All four are then read to their end, none missing an event.
#[tokio::test]
async fn subscriptions_not_being_read_hold_back_no_other_call() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let _node = dev_node(dir.path(), port, metrics).await;
    let mut config = ClientConfig::new([addr(port)]);
    config.deadline = Duration::from_secs(25);
    let client = Client::new(config).unwrap();
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
    let events = 4000u64;
    for _ in 0..events / 100 {
        let batch = (0..100)
            .map(|_| event("E", data.as_bytes().to_vec()))
            .collect();
        client
            .append("wide", ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    let mut subs = Vec::new();
    for _ in 0..4 {
        let mut sub = client.subscribe(Target::Stream("wide".into()), Start::Beginning);
        assert!(matches!(sub.next().await.unwrap(), Item::Event(_)));
        subs.push(sub);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = client
        .read(pb::ReadRequest {
            stream: "wide".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("a read beside subscriptions nobody reads");
    assert_eq!(page.events.len(), 10);
    for mut sub in subs {
        for version in 1..events {
            match sub.next().await.unwrap() {
                Item::Event(e) => assert_eq!(e.version, version),
                other => panic!("{other:?} before version {version}"),
            }
        }
    }
}
