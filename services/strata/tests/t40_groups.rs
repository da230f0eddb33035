//! Consumer groups with real worker processes (`strata group work`) on a real node: three
//! workers, one killed with SIGKILL mid-batch and one paused past its session (SIGSTOP), while
//! events keep coming. With atomic position commits every event's copy is written exactly once
//! and in each stream's order; with commits after the copies (at-least-once) every event is
//! copied at least once and never before the event ahead of it. A reset to the beginning or to
//! a position replays; parked events are listed and replayed; bad input is refused precisely.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use strata_client::{event, pb, Client, ExpectedVersion};

const STREAMS: usize = 8;

fn strata(args: &[&str]) -> Output {
    Command::new(STRATA).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn one_node() -> Cluster {
    let mut cluster = Cluster::new(1, false, Vec::new());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    cluster.leader(Duration::from_secs(10)).await;
    cluster
}

fn worker(addr: &str, member: &str, extra: &[&str]) -> Child {
    Command::new(STRATA)
        .args(["group", "work", "g", "--member", member, "--server", addr])
        .args(["--heartbeat-ms", "200", "--session-timeout-ms", "1500"])
        .args(extra)
        .env("STRATA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `strata group create g --prefix src- --partitions 6` through node `addr`.
fn create_group(addr: &str) {
    ok(strata(&[
        "group",
        "create",
        "g",
        "--prefix",
        "src-",
        "--partitions",
        "6",
        "--server",
        addr,
    ]));
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// `n` events to each source stream, `from` onwards: every stream in one append, or (on
/// several shards, where the streams are spread) one append per stream.
async fn write(client: &Client, from: usize, n: usize, together: bool) {
    for i in from..from + n {
        let streams: Vec<pb::StreamAppend> = (0..STREAMS)
            .map(|s| pb::StreamAppend {
                stream: format!("src-{s}"),
                expected: None,
                events: vec![event("T", format!("{{\"i\":{i}}}"))],
            })
            .collect();
        if together {
            client
                .append_multi(pb::AppendMultiRequest { streams })
                .await
                .unwrap();
            continue;
        }
        for one in streams {
            client
                .append_multi(pb::AppendMultiRequest { streams: vec![one] })
                .await
                .unwrap();
        }
    }
}

/// Each output stream's copies (`OUT` + its stream): the source versions in the order written.
async fn copies_to(client: &Client, out_prefix: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    for s in 0..STREAMS {
        let events = client
            .read_stream(&format!("{out_prefix}src-{s}"), None, 1 << 20)
            .await
            .unwrap();
        let versions = events
            .iter()
            .map(|e| {
                let m: serde_json::Value = serde_json::from_slice(&e.metadata).unwrap();
                m["source_version"].as_u64().unwrap()
            })
            .collect();
        out.insert(format!("src-{s}"), versions);
    }
    out
}

/// Waits until every output stream holds at least `n` copies.
async fn wait_copies(client: &Client, n: usize, what: &str) -> BTreeMap<String, Vec<u64>> {
    wait_copies_to(client, "out-", n, what).await
}

async fn wait_copies_to(
    client: &Client,
    out_prefix: &str,
    n: usize,
    what: &str,
) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = copies_to(client, out_prefix).await;
        if c.values().all(|v| v.len() >= n) {
            // Late duplicates would show within a moment.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return copies_to(client, out_prefix).await;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: copies stalled at {:?}",
            c.values().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each stream's events `0..total` copied exactly once, in order.
fn assert_once_in_order(copies: &BTreeMap<String, Vec<u64>>, total: u64) {
    for (stream, versions) in copies {
        assert_eq!(
            versions,
            &(0..total).collect::<Vec<_>>(),
            "{stream}: each event copied exactly once, in order"
        );
    }
}

/// Starts three workers, writes more while one is SIGKILLed and one paused past its session;
/// returns the workers still running.
async fn run_with_faults(
    client: &Client,
    addr: &str,
    extra: &[&str],
    together: bool,
) -> Vec<Child> {
    let mut workers: Vec<Child> = (1..=3)
        .map(|w| worker(addr, &format!("w{w}"), extra))
        .collect();
    let more = {
        let client = client.clone();
        tokio::spawn(async move {
            for chunk in 0..6 {
                write(&client, 40 + chunk * 10, 10, together).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut killed = workers.remove(0);
    signal(&killed, libc::SIGKILL);
    let _ = killed.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&workers[0], libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    signal(&workers[0], libc::SIGCONT);
    more.await.unwrap();
    workers
}

fn stop(workers: Vec<Child>) {
    for mut w in workers {
        signal(&w, libc::SIGTERM);
        let status = w.wait().unwrap();
        assert!(status.success(), "a worker ended with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_commits_copy_every_event_exactly_once_through_a_kill_and_a_pause_and_resets_replay()
{
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let addr = cluster.addr(1);
    let client = Client::connect([addr.clone()]).unwrap();
    write(&client, 0, 40, true).await;
    create_group(&addr);
    // Handling (100 ms a batch) is slower than the writes: the workers are always mid-batch,
    // so the kill and the pause land inside one.
    let extra = ["--exactly-once", "--batch", "7", "--handle-ms", "100"];
    let workers = run_with_faults(&client, &addr, &extra, true).await;
    let total = 100u64;
    let once = wait_copies(&client, total as usize, "exactly-once").await;
    assert_once_in_order(&once, total);
    // Every partition's position is committed past the last record.
    let info: serde_json::Value =
        serde_json::from_str(&ok(strata(&["group", "info", "g", "--server", &addr]))).unwrap();
    assert_eq!(info["positions"].as_array().unwrap().len(), 7);

    // Reset to the beginning: everything once more, still exactly once.
    ok(strata(&[
        "group",
        "reset",
        "g",
        "--to",
        "beginning",
        "--server",
        &addr,
    ]));
    let twice = wait_copies(&client, 2 * total as usize, "after a reset").await;
    for (stream, versions) in &twice {
        let expected: Vec<u64> = (0..total).chain(0..total).collect();
        assert_eq!(versions, &expected, "{stream} after the reset");
    }
    // Reset to a position: the records from there on, again.
    let from = client
        .read(pb::ReadRequest {
            stream: "src-0".into(),
            from_version: Some(60),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .events[0]
        .position;
    ok(strata(&[
        "group",
        "reset",
        "g",
        "--to",
        &from.to_string(),
        "--server",
        &addr,
    ]));
    let thrice = wait_copies(
        &client,
        2 * total as usize + 40,
        "after a reset to a position",
    )
    .await;
    for (stream, versions) in &thrice {
        assert_eq!(
            versions[2 * total as usize..].to_vec(),
            (60..total).collect::<Vec<_>>(),
            "{stream}: the events from position {from} on"
        );
    }
    stop(workers);
}

/// The shard owning `slot`, by node `addr`'s map.
async fn owner_of(addr: &str, slot: u32) -> u32 {
    let view = status(addr).await.unwrap();
    view.shards
        .iter()
        .find(|s| s.slots.iter().any(|r| r.start <= slot && slot < r.end))
        .unwrap()
        .id
}

/// Moves slot `slot` to the next shard (of `shards`) through node `addr`; waits for the move.
fn move_slot(addr: &str, slot: u32, from: u32, shards: u32) -> u32 {
    let to = (from + 1) % shards;
    let range = format!("{slot}..{}", slot + 1);
    ok(strata(&[
        "cluster",
        "move-slots",
        &range,
        "--to",
        &to.to_string(),
        "--server",
        addr,
    ]));
    to
}

/// On three replicated nodes of four shards, the group's streams share a shard (its name is
/// their routing key), its positions are a place in each shard's log, and its exactly-once
/// outputs (`out-{g}-…`, the group's routing key) commit with its positions. Through a
/// worker's SIGKILL, another's pause, and slot moves of the group's own streams and of a
/// source stream while the workers run: every event copied exactly once, in its stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_several_shards_a_group_copies_exactly_once_through_faults_and_slot_moves() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend(["--shards", "4"].map(String::from));
    let mut cluster = Cluster::new(3, false, args);
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let addr = cluster.addr(1);
    let client = Client::connect((1..=3).map(|id| cluster.addr(id))).unwrap();
    write(&client, 0, 40, false).await;
    create_group(&addr);
    let slots = status(&addr).await.unwrap().slots;
    let group_slot = strata_proto::routing::slot_of("$group:g/p/0", slots);
    assert_eq!(
        group_slot,
        strata_proto::routing::slot_of("out-{g}-src-3", slots)
    );
    let source_slot = strata_proto::routing::slot_of("src-0", slots);
    let group_from = owner_of(&addr, group_slot).await;
    let source_from = owner_of(&addr, source_slot).await;
    let moves = {
        let addr = addr.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let group_to = tokio::task::spawn_blocking({
                let addr = addr.clone();
                move || move_slot(&addr, group_slot, group_from, 4)
            });
            let group_to = group_to.await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let source_to = tokio::task::spawn_blocking({
                let addr = addr.clone();
                move || move_slot(&addr, source_slot, source_from, 4)
            });
            (group_to, source_to.await.unwrap())
        })
    };
    let extra = [
        "--exactly-once",
        "--output-prefix",
        "out-{g}-",
        "--batch",
        "7",
        "--handle-ms",
        "100",
    ];
    let workers = run_with_faults(&client, &addr, &extra, false).await;
    let (group_to, source_to) = moves.await.unwrap();
    assert_eq!(owner_of(&addr, group_slot).await, group_to);
    assert_eq!(owner_of(&addr, source_slot).await, source_to);
    let total = 100u64;
    let once = wait_copies_to(&client, "out-{g}-", total as usize, "several shards").await;
    assert_once_in_order(&once, total);
    // The positions name places in several shards' logs.
    let info: serde_json::Value =
        serde_json::from_str(&ok(strata(&["group", "info", "g", "--server", &addr]))).unwrap();
    let several = info["positions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["position"]["shards"].is_object())
        .count();
    assert!(several > 0, "{info}");
    stop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_workers_lose_nothing_and_keep_each_streams_order() {
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let addr = cluster.addr(1);
    let client = Client::connect([addr.clone()]).unwrap();
    write(&client, 0, 40, true).await;
    ok(strata(&[
        "group", "create", "g", "--prefix", "src-", "--server", &addr,
    ]));
    let workers = run_with_faults(
        &client,
        &addr,
        &["--batch", "5", "--handle-ms", "100"],
        true,
    )
    .await;
    let total = 100u64;
    let copied = wait_copies(&client, total as usize, "at-least-once").await;
    let mut duplicates = 0;
    for (stream, versions) in &copied {
        // Every event, and none before the one ahead of it in its stream.
        let mut seen = vec![false; total as usize];
        for v in versions {
            assert!(
                *v == 0 || seen[*v as usize - 1],
                "{stream}: {v} was copied before {}",
                v - 1
            );
            duplicates += usize::from(seen[*v as usize]);
            seen[*v as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "{stream}: an event was never copied"
        );
    }
    eprintln!("at-least-once: {duplicates} events copied again after the kill and the pause");
    stop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_listed_and_replayed_and_bad_input_is_refused() {
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let addr = cluster.addr(1);
    let client = Client::connect([addr.clone()]).unwrap();
    ok(strata(&[
        "group", "create", "g", "--stream", "src-0", "--server", &addr,
    ]));
    let mut events = vec![
        event("T", "{}"),
        event("Poison", "{\"bad\":1}"),
        event("T", "{}"),
    ];
    events.push(event("Poison", "{\"bad\":2}"));
    client
        .append("src-0", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let w = worker(&addr, "p1", &["--park-type", "Poison"]);
    let parked = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = ok(strata(&["group", "parked", "g", "--server", &addr]));
            if text.lines().count() == 2 {
                break text;
            }
            assert!(Instant::now() < deadline, "parked: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let first: serde_json::Value = serde_json::from_str(parked.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["stream"].as_str(), first["version"].as_u64()),
        (Some("src-0"), Some(1))
    );
    assert_eq!(first["type"], "Poison");
    stop(vec![w]);
    // Replayed to a worker that takes them: copied with their origin. The worker runs before
    // the replay (it reads the retry stream once it finds it exists, at a tick).
    let w = worker(&addr, "p2", &[]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let replayed = ok(strata(&[
        "group", "parked", "g", "--replay", "--server", &addr,
    ]));
    assert!(replayed.contains("\"replayed\":2"), "{replayed}");
    let again = ok(strata(&[
        "group", "parked", "g", "--replay", "--server", &addr,
    ]));
    assert!(
        again.contains("\"replayed\":0"),
        "a second replay copies nothing new: {again}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copies = client.read_stream("out-src-0", None, 100).await.unwrap();
        let versions: Vec<u64> = copies
            .iter()
            .map(|e| serde_json::from_slice::<serde_json::Value>(&e.metadata).unwrap())
            .filter(|m| {
                m["source_stream"]
                    .as_str()
                    .is_some_and(|s| s.contains("/retry"))
            })
            .map(|m| m["source_version"].as_u64().unwrap())
            .collect();
        if versions.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed events not handled: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(vec![w]);

    // Bad input: each refused with what is wrong, nothing created.
    let refused = |args: &[&str], says: &str| {
        let mut all = args.to_vec();
        all.extend(["--server", addr.as_str()]);
        let out = strata(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(&["group", "info", "nope"], "no consumer group `nope`");
    refused(
        &["group", "reset", "g", "--to", "12345"],
        "not the position of a record",
    );
    refused(
        &["group", "reset", "g", "--to", "soon"],
        "`beginning`, `end` or a log position",
    );
    refused(&["group", "create", "g", "--stream", "x"], "exists already");
    refused(&["group", "create", "a/b", "--stream", "x"], "group name");
    refused(
        &["group", "create", "h", "--stream", "$x"],
        "not starting with '$'",
    );
    refused(
        &["group", "create", "h", "--stream", "x", "--partitions", "0"],
        "partitions",
    );
    refused(
        &[
            "group",
            "work",
            "g",
            "--batch",
            "5",
            "--heartbeat-ms",
            "1000",
            "--session-timeout-ms",
            "1000",
        ],
        "session_timeout",
    );
    let list = ok(strata(&["group", "list", "--server", &addr]));
    assert_eq!(list.trim(), "{\"name\":\"g\"}");
}

/// Records larger than a worker's read-ahead (300 events against a buffer of 10): each is
/// handed out whole — a batch never ends inside a record, whose rest a commit after it would
/// pass by — and every event is handed out, also when the partitions move while a batch is out
/// (a second worker joins and takes a partition from the first); no worker hands out an event
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_larger_than_the_read_ahead_are_handed_out_whole_and_once() {
    use strata_client::group::protocol::assignment;
    use strata_client::group::{Batch, Worker, WorkerConfig};
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let addr = cluster.addr(1);
    let client = Client::connect([addr.clone()]).unwrap();
    const RECORDS: u64 = 6;
    const PER_STREAM: u64 = 100;
    for r in 0..RECORDS {
        // Each record: three streams' events (in up to three partitions).
        let streams: Vec<pb::StreamAppend> = ["big-a", "big-b", "big-c"]
            .iter()
            .map(|s| pb::StreamAppend {
                stream: s.to_string(),
                expected: None,
                events: (0..PER_STREAM)
                    .map(|i| event("T", format!("{{\"r\":{r},\"i\":{i}}}")))
                    .collect(),
            })
            .collect();
        client
            .append_multi(pb::AppendMultiRequest { streams })
            .await
            .unwrap();
    }
    prefix_group(&client, "big", "big-", 3).await;
    let small = |member: &str| {
        let mut c = WorkerConfig::new(member);
        c.batch_events_max = 10;
        c.buffer_events_max = 10;
        c.heartbeat_interval = Duration::from_millis(100);
        c.session_timeout = Duration::from_millis(2000);
        c
    };
    // (worker, stream, version) -> times handed out.
    type Seen = BTreeMap<(usize, String, u64), u32>;
    fn take(seen: &mut Seen, worker: usize, batch: &Batch) {
        // Whole records: each stream's part of a record is all in the batch.
        let mut per_record: BTreeMap<(u64, &str), u64> = BTreeMap::new();
        for e in &batch.events {
            *per_record.entry((e.position, &e.stream)).or_default() += 1;
            *seen
                .entry((worker, e.stream.clone(), e.version))
                .or_default() += 1;
        }
        for ((position, stream), n) in per_record {
            assert_eq!(
                n, PER_STREAM,
                "record at {position} handed out in part: {n} of {stream}'s"
            );
        }
    }
    let distinct = |seen: &Seen| {
        let all: std::collections::BTreeSet<_> = seen.keys().map(|(_, s, v)| (s, v)).collect();
        all.len() as u64
    };
    let mut seen = Seen::new();
    let mut w1 = Worker::join(client.clone(), "big", small("w1"))
        .await
        .unwrap();
    // One batch out, uncommitted, while a second worker joins and the partitions move.
    let first = w1.next_batch().await.unwrap();
    take(&mut seen, 1, &first);
    // A second member that takes another partition and leaves `first`'s with w1: w1 then
    // reads again while `first` is out.
    let k = 3;
    let live = |name: &str| vec!["w1".to_string(), name.to_string()];
    let second = (0..)
        .map(|i| format!("w2-{i}"))
        .find(|name| {
            let l = live(name);
            // The group's k partitions and its retry partition.
            let owners = assignment(&l, k + 1);
            owners[first.partition as usize] == Some("w1")
                && (0..k).any(|n| owners[n as usize] == Some(name.as_str()))
        })
        .unwrap();
    let w2 = Worker::join(client.clone(), "big", small(&second))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pending = Some(first);
    let mut workers = [w1, w2];
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct(&seen) < RECORDS * PER_STREAM * 3 {
        assert!(
            Instant::now() < deadline,
            "{} of {} events",
            distinct(&seen),
            RECORDS * PER_STREAM * 3
        );
        for (k, w) in workers.iter_mut().enumerate() {
            if let Ok(Ok(batch)) =
                tokio::time::timeout(Duration::from_millis(200), w.next_batch()).await
            {
                take(&mut seen, k + 1, &batch);
                let _ = w.commit(&batch).await;
            }
        }
        if let Some(b) = pending.take() {
            let _ = workers[0].commit(&b).await;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events handed out twice by one worker, the first: {:?}",
        twice.len(),
        twice.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_goes_back_to_what_its_output_holds_but_never_before_a_reset_or_forward() {
    use strata_client::group::{Next, Position, Progress, Worker, WorkerConfig};
    use strata_client::Error;
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let client = Client::connect([cluster.addr(1)]).unwrap();
    // Ten records of one event each; their positions.
    let mut at = Vec::new();
    for i in 0..10 {
        let r = client
            .append(
                "rw-a",
                ExpectedVersion::Any,
                vec![event("T", format!("{i}"))],
            )
            .await
            .unwrap();
        at.push(r.position);
    }
    let groups = prefix_group(&client, "rw", "rw-", 1).await;
    let mut config = WorkerConfig::new("w1");
    config.heartbeat_interval = Duration::from_millis(100);
    let mut w = Worker::join(client.clone(), "rw", config).await.unwrap();
    // The claim is said before any event.
    match w.next().await.unwrap() {
        Next::Claimed(parts) => assert!(parts.contains(&0), "{parts:?}"),
        Next::Batch(b) => panic!("a batch before the claim: {b:?}"),
    }
    let versions = |b: &strata_client::group::Batch| -> Vec<u64> {
        b.events.iter().map(|e| e.version).collect()
    };
    let mut handed = Vec::new();
    while handed.len() < 10 {
        let b = w.next_batch().await.unwrap();
        handed.extend(versions(&b));
        w.commit(&b).await.unwrap();
    }
    assert_eq!(handed, (0..10).collect::<Vec<u64>>());
    let committed = w.committed(0).unwrap().clone();
    assert_eq!(committed, Progress::from(Position::After(at[9])));
    // The output holds everything, or more: nothing moves.
    assert_eq!(w.rewind(0, &committed).await.unwrap(), None);
    let ahead = Progress::from(Position::After(at[9] + 1000));
    assert_eq!(w.rewind(0, &ahead).await.unwrap(), None);
    // The output holds through the fifth event: back there, the rest handed out again.
    let b = {
        client
            .append("rw-a", ExpectedVersion::Any, vec![event("T", "10")])
            .await
            .unwrap();
        w.next_batch().await.unwrap()
    };
    assert_eq!(versions(&b), vec![10]);
    let holds = Progress::from(Position::After(at[4]));
    assert_eq!(w.rewind(0, &holds).await.unwrap(), Some(holds.clone()));
    assert!(
        !w.holds(&b),
        "a batch handed out before going back is still current"
    );
    assert!(matches!(w.commit(&b).await, Err(Error::Fenced(_))));
    let mut again = Vec::new();
    while again.len() < 6 {
        let b = w.next_batch().await.unwrap();
        assert!(w.holds(&b));
        again.extend(versions(&b));
        w.commit(&b).await.unwrap();
    }
    assert_eq!(again, (5..=10).collect::<Vec<u64>>());
    // After a reset to the eighth event, the output's older position is not gone back to.
    groups
        .reset("rw", Progress::from(Position::After(at[7])))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Ok(Next::Claimed(parts))) if parts.contains(&0) => break,
            Ok(Ok(Next::Batch(b))) => assert!(!w.holds(&b) || versions(&b)[0] == 8),
            other => panic!("no claim again after the reset: {other:?}"),
        }
    }
    assert_eq!(
        w.committed(0),
        Some(&Progress::from(Position::After(at[7])))
    );
    assert_eq!(w.rewind(0, &holds).await.unwrap(), None);
    // A partition it does not hold: fenced.
    assert!(matches!(w.rewind(7, &holds).await, Err(Error::Fenced(_))));
}

/// A worker joining a group takes its share as soon as the holder lets go, not at its own next
/// heartbeat: with the newcomer's heartbeat at 30 s it still holds its partitions within
/// seconds of the holder's release (before, it looked again only a heartbeat later, so on
/// every rebalance a partition sat unread for up to an interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_takes_its_partitions_once_released_not_at_its_next_heartbeat() {
    use strata_client::group::{Next, Worker, WorkerConfig};
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let client = Client::connect([cluster.addr(1)]).unwrap();
    prefix_group(&client, "nc", "nc-", 8).await;
    let config = |member: &str, heartbeat: u64| {
        let mut c = WorkerConfig::new(member);
        c.heartbeat_interval = Duration::from_millis(heartbeat);
        c.session_timeout = Duration::from_secs(120);
        c
    };
    let mut old = Worker::join(client.clone(), "nc", config("old", 100))
        .await
        .unwrap();
    assert_eq!(old.partitions().len(), 9, "8 partitions and the retry one");
    // The holder keeps ticking (every 100 ms) in the background.
    let ticking = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(50), old.next()).await;
            tokio::task::yield_now().await;
        }
    });
    let joined = Instant::now();
    let mut new = Worker::join(client.clone(), "nc", config("new", 30_000))
        .await
        .unwrap();
    let mut taken = new.partitions();
    while taken.is_empty() && joined.elapsed() < Duration::from_secs(20) {
        if let Ok(Ok(Next::Claimed(parts))) =
            tokio::time::timeout(Duration::from_millis(200), new.next()).await
        {
            taken = parts;
        }
    }
    ticking.abort();
    let after = joined.elapsed();
    assert!(!taken.is_empty(), "nothing taken in {after:?}");
    // Its heartbeat is 30 s: taken well before it, so not at a heartbeat.
    assert!(
        after < Duration::from_secs(10),
        "the newcomer took {taken:?} only after {after:?}"
    );
    println!("the newcomer took {taken:?} {after:?} after joining");
}

/// `Worker::next` is cancel-safe: dropped at any of its awaits (a timeout, a `select!`, the
/// ETL's linger), it loses no event, does not put the worker's next look at its partitions
/// off, and leaves no partition claimed in the node but not held. Both workers are called with
/// timeouts of 0.5 to 8 ms, shorter than most ticks (a heartbeat, a read of the members, a read
/// per partition, claims and releases), and one call in six of 200 ms; they commit what they
/// are handed. Within seconds the newcomer (heartbeat 30 s) and the holder each hold their
/// share, the node names them the owners, and every event was handed out. Before (3 runs of 3:
/// after 20 s the holder had let go of the newcomer's share, which held none of it), a tick cut
/// short after its heartbeat set the next look a whole interval off, and a release cut short
/// left the partition owned by a member that no longer held it, for as long as that member
/// lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_short_lose_nothing_delay_no_move_and_strand_no_partition() {
    use strata_client::group::protocol::assignment;
    use strata_client::group::{Groups, Next, Worker, WorkerConfig};
    let _serial = SERIAL.lock().await;
    let cluster = one_node().await;
    let client = Client::connect([cluster.addr(1)]).unwrap();
    const STREAMS: u64 = 10;
    const EACH: u64 = 20;
    for i in 0..STREAMS {
        let events = (0..EACH)
            .map(|v| event("T", format!("{{\"v\":{v}}}")))
            .collect();
        client
            .append(&format!("cut-{i}"), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    prefix_group(&client, "cut", "cut-", 8).await;
    let config = |member: &str, heartbeat: u64| {
        let mut c = WorkerConfig::new(member);
        c.heartbeat_interval = Duration::from_millis(heartbeat);
        c.session_timeout = Duration::from_secs(120);
        c.batch_events_max = 5;
        c.buffer_events_max = 10;
        c
    };
    let mut old = Worker::join(client.clone(), "cut", config("old", 100))
        .await
        .unwrap();
    assert_eq!(old.partitions().len(), 9, "8 partitions and the retry one");
    let mut new = Worker::join(client.clone(), "cut", config("new", 30_000))
        .await
        .unwrap();
    let members = ["old".to_string(), "new".to_string()];
    let owners = assignment(&members, 9);
    let share =
        |m: &str| -> Vec<u32> { (0..9).filter(|n| owners[*n as usize] == Some(m)).collect() };
    let cuts_us = [500, 1_000, 2_000, 4_000, 8_000, 200_000];
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut calls = 0;
    while (old.partitions() != share("old")
        || new.partitions() != share("new")
        || (seen.len() as u64) < STREAMS * EACH)
        && started.elapsed() < Duration::from_secs(20)
    {
        let cut = Duration::from_micros(cuts_us[(calls / 2) % cuts_us.len()]);
        let worker = if calls % 2 == 0 { &mut old } else { &mut new };
        if let Ok(Ok(Next::Batch(batch))) = tokio::time::timeout(cut, worker.next()).await {
            seen.extend(batch.events.iter().map(|e| (e.stream.clone(), e.version)));
            // Fenced when the partition moved meanwhile: then handed out again.
            let _ = worker.commit(&batch).await;
        }
        calls += 1;
    }
    let after = started.elapsed();
    assert!(
        after < Duration::from_secs(10),
        "after {after:?} ({calls} calls) old holds {:?} (its share {:?}), new {:?} ({:?}); {} of {} events handed out",
        old.partitions(),
        share("old"),
        new.partitions(),
        share("new"),
        seen.len(),
        STREAMS * EACH
    );
    let info = Groups::new(client.clone()).info("cut").await.unwrap();
    let named: Vec<Option<&str>> = info
        .partitions
        .iter()
        .map(|p| Some(p.owner.as_str()))
        .collect();
    assert_eq!(named, owners, "the owners the node names");
    println!(
        "shares held and all events handed out {after:?} after the newcomer joined ({calls} calls)"
    );
}
