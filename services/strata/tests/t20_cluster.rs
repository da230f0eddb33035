//! Three-node clusters of real `strata node` processes on loopback: failover under continuous
//! writers (SIGKILL the leader), restart and catch-up, a wiped follower rejoining through a
//! snapshot, an isolated leader (fault-injecting TCP proxies on every Raft link), idempotent
//! retries across a failover, membership 3 → 4 → 3 under writes, and a sharded cluster grown to
//! five nodes and back with its leaders rebalanced. Every test ends by
//! checking that every acknowledged event is on every replica exactly once and that the
//! replicas' committed logs are byte-identical.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_consistency::jepsen::proxy::Proxy;
use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;
use tokio::net::TcpStream;
use tonic::transport::Channel;

mod common;
use common::*;

fn event(id: u128, data: &str) -> pb::NewEvent {
    pb::NewEvent {
        id: uuid::Uuid::from_u128(id).to_string(),
        r#type: "T".into(),
        data: data.as_bytes().to_vec().into(),
        metadata: Default::default(),
    }
}

fn append_request(stream: &str, id: u128) -> pb::AppendRequest {
    pb::AppendRequest {
        stream: stream.into(),
        expected: None,
        events: vec![event(id, &format!("{{\"n\":{id}}}"))],
    }
}

/// What the writers got acknowledged: stream → event ids in ack order.
type Acked = Arc<Mutex<BTreeMap<String, Vec<u128>>>>;

#[derive(Default)]
struct WriterReport {
    acks: u64,
    /// Calls that did not return Ok (retried with the same id).
    errors: u64,
    /// When each ack came.
    ack_times: Vec<Instant>,
}

/// Appends to `stream` until `stop`, one event at a time, each retried with the same id at
/// whichever node answers until it is acknowledged.
async fn writer(
    addrs: Vec<String>,
    stream: String,
    base: u128,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut at = 0usize;
    let mut n = 0u128;
    while !stop.load(Ordering::Relaxed) {
        let id = base + n;
        n += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "append {id} never acknowledged");
            let target = addrs[at % addrs.len()].clone();
            let result = match channel(&target).await {
                Some(ch) => StreamsClient::new(ch)
                    .append(append_request(&stream, id))
                    .await
                    .map(|r| r.into_inner()),
                None => Err(tonic::Status::unavailable("connect failed")),
            };
            match result {
                Ok(r) => {
                    assert_eq!(r.streams[0].first_version, r.streams[0].last_version);
                    let mut a = acked.lock().unwrap();
                    let list = a.entry(stream.clone()).or_default();
                    assert_eq!(
                        r.streams[0].first_version as usize,
                        list.len(),
                        "event {id} acknowledged at version {} but {} came before it",
                        r.streams[0].first_version,
                        list.len()
                    );
                    list.push(id);
                    report.acks += 1;
                    report.ack_times.push(Instant::now());
                    break;
                }
                Err(status) => {
                    report.errors += 1;
                    eprintln!("append {id} to {stream} via {target}: {status}");
                    let leader = status
                        .metadata()
                        .get("strata-leader")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match leader.and_then(|l| addrs.iter().position(|a| *a == l)) {
                        Some(i) => at = i,
                        None => {
                            at += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
    }
    report
}

/// `total` `strata node` processes with `args`, started: nodes 1–3 form the cluster, the
/// others know them but are not members yet (up, waiting for `cluster add-node`).
async fn three_formed_of(total: u64, args: Vec<String>) -> Cluster {
    let mut cluster = Cluster::new(total, false, args);
    cluster.peer_args(|_, _, peer| addr(peer.port));
    for id in 1..=3 {
        let args = &mut cluster.nodes.get_mut(&id).unwrap().args;
        for spare in 4..=total {
            let other = format!("{spare}=");
            let at = args.iter().position(|a| a.starts_with(&other)).unwrap();
            args.drain(at - 1..=at);
        }
    }
    for id in 1..=total {
        cluster.nodes.get_mut(&id).unwrap().start();
    }
    assert!(cluster.init(&[1, 2, 3]).await.status.success());
    for id in 4..=total {
        cluster.wait_up(id).await;
    }
    cluster
}

/// Four nodes of `args`: 1–3 form the cluster, then node 4 is added (`cluster add-node`; on
/// several shards it joins the metadata group and holds no replica).
async fn four_with_node_4_added(args: Vec<String>) -> Cluster {
    let cluster = three_formed_of(4, args).await;
    strata_json(&[
        "cluster",
        "add-node",
        "--id",
        "4",
        "--addr",
        &cluster.addr(4),
        "--server",
        &cluster.addr(1),
    ]);
    cluster
}

/// Every acknowledged event is on every live replica exactly once, in order, nothing else.
async fn check_replicas(cluster: &Cluster, acked: &BTreeMap<String, Vec<u128>>) {
    cluster.converge().await;
    for id in cluster.live() {
        let ch = channel(&cluster.addr(id)).await.unwrap();
        let mut client = StreamsClient::new(ch);
        for (stream, ids) in acked {
            let got: Vec<u128> = follower_read_all(&mut client, stream, id)
                .await
                .iter()
                .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
                .collect();
            assert_eq!(
                &got, ids,
                "node {id}: stream {stream} differs from what was acknowledged"
            );
        }
    }
}

/// A node's shard directories: `DIR/shards/<id>` when it holds several, else `DIR`.
fn shard_dirs(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    shard_dirs_by_id(data).into_values().collect()
}

/// A node's shard directories by shard id (a node holds the shards placed on it).
fn shard_dirs_by_id(data: &std::path::Path) -> BTreeMap<u32, std::path::PathBuf> {
    let several = data.join("shards");
    if !several.exists() {
        return BTreeMap::from([(0, data.to_path_buf())]);
    }
    std::fs::read_dir(&several)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().parse().unwrap(), p))
        .collect()
}

/// Stops every node and compares their committed logs record by record (all but the header's
/// local fields), shard by shard, on the nodes holding each. With `reclaimed`, replicas may
/// each hold a suffix only (retention reclaimed dead entries, or a replica added by a
/// snapshot): then only the entries all of them still hold are compared, and where the logs
/// end.
fn check_logs_identical(cluster: &mut Cluster, reclaimed: bool) {
    for n in cluster.nodes.values_mut() {
        n.stop();
    }
    let live: Vec<&NodeProc> = cluster.nodes.values().filter(|n| n.data.exists()).collect();
    let mut holders: BTreeMap<u32, Vec<ShardReplica>> = BTreeMap::new();
    for n in &live {
        for (shard, dir) in shard_dirs_by_id(&n.data) {
            holders
                .entry(shard)
                .or_default()
                .push((n.id, dir, &n.args[..]));
        }
    }
    let mut compared = 0;
    for dirs in holders.values() {
        compared += check_shard_logs_identical(dirs, reclaimed);
    }
    assert!(
        compared > 10,
        "the logs hold only {compared} entries in common"
    );
}

/// One node's replica of a shard: the node, its shard directory, its arguments.
type ShardReplica<'a> = (u64, std::path::PathBuf, &'a [String]);

/// Compares one shard's committed logs on the nodes `(id, shard directory, node args)`;
/// returns how many entries all of them hold.
fn check_shard_logs_identical(
    dirs: &[(u64, std::path::PathBuf, &[String])],
    reclaimed: bool,
) -> usize {
    // (node, [(raft index, replicated bytes)])
    type Log = Vec<(u64, Vec<u8>)>;
    let mut logs: Vec<(u64, Log)> = Vec::new();
    for (id, dir, args) in dirs {
        let options = strata_raft::ShardOptions::on_disk(*id, dir, engine_config(args));
        let shard = strata_raft::Shard::open(options).unwrap();
        logs.push((*id, shard.replicated_entries(0, u64::MAX).unwrap()));
    }
    // Each replica purges entries behind its own snapshots and reclaims dead ones on its own
    // clock: the entries every replica still holds must be byte-identical, and every log must
    // end at the same entry.
    let held: Vec<BTreeMap<u64, &Vec<u8>>> = logs
        .iter()
        .map(|(_, log)| log.iter().map(|(seq, b)| (*seq, b)).collect())
        .collect();
    let (first_id, first) = (&logs[0].0, &held[0]);
    let common: Vec<u64> = first
        .keys()
        .copied()
        .filter(|seq| held.iter().all(|h| h.contains_key(seq)))
        .collect();
    assert!(
        !common.is_empty(),
        "the logs of {} hold no entry in common",
        dirs[0].1.display()
    );
    for ((id, _), log) in logs.iter().zip(&held).skip(1) {
        if !reclaimed {
            assert_eq!(
                log.len(),
                first.len(),
                "node {id} has {} committed entries, node {first_id} {}",
                log.len(),
                first.len()
            );
        }
        assert_eq!(
            log.keys().last(),
            first.keys().last(),
            "node {id} ends at another entry than node {first_id}"
        );
        for seq in &common {
            assert!(
                log[seq] == first[seq],
                "entry {seq} differs between node {first_id} and node {id}"
            );
        }
    }
    common.len()
}

fn engine_config(args: &[String]) -> strata_engine::EngineConfig {
    let mut config = strata_engine::EngineConfig::default();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(v) = value("--segment-bytes-max") {
        config.segment_bytes_max = v;
    }
    if let Some(v) = value("--batch-bytes-max") {
        config.limits.batch_bytes_max = v as usize;
        config.limits.event_bytes_max = config.limits.event_bytes_max.min(v as usize);
    }
    config
}

fn spawn_writers(
    cluster: &Cluster,
    count: usize,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<WriterReport>> {
    spawn_writers_round(cluster, count, acked, stop, 0)
}

/// Writers of round `round`: event ids of their own (a later round appends new events to the
/// same streams, where the same ids would be retries answered with the first round's results).
fn spawn_writers_round(
    cluster: &Cluster,
    count: usize,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
    round: u128,
) -> Vec<tokio::task::JoinHandle<WriterReport>> {
    let addrs: Vec<String> = cluster.nodes.keys().map(|id| cluster.addr(*id)).collect();
    (0..count)
        .map(|w| {
            tokio::spawn(writer(
                addrs.clone(),
                format!("w-{w}"),
                ((w as u128 + 1) << 64) | (round << 48),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

async fn join(writers: Vec<tokio::task::JoinHandle<WriterReport>>) -> Vec<WriterReport> {
    let mut out = Vec::new();
    for w in writers {
        out.push(w.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_restart_and_snapshot_rejoin_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(3, false, small_log_args());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let leader = cluster.leader(Duration::from_secs(10)).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 4, &acked, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An append whose acknowledgement will be "lost" in the failover.
    let ch = channel(&cluster.addr(leader)).await.unwrap();
    let retry_id = 7u128 << 100;
    let original = StreamsClient::new(ch)
        .append(append_request("retried", retry_id))
        .await
        .unwrap()
        .into_inner();
    acked
        .lock()
        .unwrap()
        .insert("retried".into(), vec![retry_id]);

    // SIGKILL the leader; a new one must be elected within 3 s.
    let before = status(&cluster.addr(leader)).await.unwrap();
    let killed_at = Instant::now();
    cluster.nodes.get_mut(&leader).unwrap().kill();
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    let elected_after = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        elected_after <= Duration::from_secs(3),
        "new leader after {elected_after:?}"
    );
    let after = status(&cluster.addr(new_leader)).await.unwrap();
    assert!(after.term > before.term);

    // The retry at the new leader answers with the original result.
    let ch = channel(&cluster.addr(new_leader)).await.unwrap();
    let retried = StreamsClient::new(ch)
        .append(append_request("retried", retry_id))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.deduplicated);
    assert_eq!(retried.position, original.position);
    assert_eq!(retried.streams, original.streams);

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Restart the killed node: it catches up.
    cluster.nodes.get_mut(&leader).unwrap().start();
    cluster.wait_up(leader).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Wipe a follower's data directory and restart it: it rejoins through a snapshot.
    let current = cluster.leader(Duration::from_secs(10)).await;
    // It can only be made to take one once the leader has built a snapshot and dropped the
    // entries before it (--snapshot-every-entries 300, --keep-entries 50). On a slow machine
    // the writers above made fewer than 300 entries (CI: 286, and the wiped node caught up
    // from the log): top the log up past two snapshots' worth first.
    let mut filler = StreamsClient::new(channel(&cluster.addr(current)).await.unwrap());
    let mut n = 0u128;
    while status(&cluster.addr(current))
        .await
        .map_or(0, |s| s.last_log_index)
        < 700
    {
        filler
            .append(append_request("filler", (9 << 100) + n))
            .await
            .unwrap();
        n += 1;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wiped = *cluster.nodes.keys().find(|id| **id != current).unwrap();
    {
        let node = cluster.nodes.get_mut(&wiped).unwrap();
        node.kill();
        std::fs::remove_dir_all(&node.data).unwrap();
        node.start();
    }
    cluster.wait_up(wiped).await;
    // A subscriber on the wiped node, from before it installs the snapshot: it must go on
    // across the store being replaced and see the stream whole.
    let seen: Arc<Mutex<Vec<u128>>> = Arc::default();
    let subscriber = {
        let seen = seen.clone();
        let addr = cluster.addr(wiped);
        tokio::spawn(async move {
            let ch = channel(&addr).await.unwrap();
            let mut stream = StreamsClient::new(ch)
                .subscribe(pb::SubscribeRequest {
                    target: Some(pb::subscribe_request::Target::Stream("w-0".into())),
                    start: Some(pb::subscribe_request::Start::FromVersion(0)),
                    filter: None,
                })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(item)) = stream.message().await {
                if let Some(pb::subscribe_response::Item::Event(e)) = item.item {
                    seen.lock()
                        .unwrap()
                        .push(uuid::Uuid::parse_str(&e.id).unwrap().as_u128());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let reports = join(writers).await;
    let first_ack_after_kill = reports
        .iter()
        .flat_map(|r| r.ack_times.iter())
        .filter(|t| **t > killed_at)
        .min()
        .map(|t| t.duration_since(killed_at));
    eprintln!(
        "acks {}, errors {}, elected after {elected_after:?}, first write after kill {first_ack_after_kill:?}",
        reports.iter().map(|r| r.acks).sum::<u64>(),
        reports.iter().map(|r| r.errors).sum::<u64>()
    );
    let acked = acked.lock().unwrap().clone();
    check_replicas(&cluster, &acked).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().len() < acked["w-0"].len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        acked["w-0"],
        "the subscriber on the rebuilt node missed or repeated events"
    );
    subscriber.abort();
    let wiped_dir = cluster.nodes[&wiped].data.clone();
    let installed = std::fs::read_to_string(wiped_dir.join("CURRENT")).unwrap_or_default();
    assert!(
        installed.trim().parse::<u64>().is_ok_and(|g| g >= 1),
        "the wiped node did not install a snapshot:\n{}",
        cluster.nodes[&wiped].log_tail(12)
    );
    check_logs_identical(&mut cluster, false);
    // Reopening removed the generations snapshots replaced: only CURRENT's is left.
    let current = std::fs::read_to_string(wiped_dir.join("CURRENT")).unwrap();
    let gens: Vec<String> = std::fs::read_dir(&wiped_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(gens, vec![format!("gen-{}", current.trim())]);
    assert_ne!(current.trim(), "0");
}

/// Three nodes started whose Raft links each go through a proxy of their own, keyed by the
/// directed link (i, j); clients reach every node directly.
async fn proxied_three(args: &[&str]) -> (Cluster, HashMap<(u64, u64), Proxy>) {
    let mut extra = small_log_args();
    extra.extend(args.iter().map(|a| a.to_string()));
    let mut cluster = Cluster::new(3, true, extra);
    let mut proxies: HashMap<(u64, u64), Proxy> = HashMap::new();
    for i in 1..=3u64 {
        for j in 1..=3u64 {
            if i != j {
                let target = cluster.nodes[&j].raft_port.unwrap();
                let target = std::net::SocketAddr::from(([127, 0, 0, 1], target));
                proxies.insert((i, j), Proxy::start(target).await.unwrap());
            }
        }
    }
    let routes: HashMap<(u64, u64), u16> =
        proxies.iter().map(|(k, p)| (*k, p.addr().port())).collect();
    cluster.peer_args(|i, j, _| addr(routes[&(i, j)]));
    cluster.start_all().await;
    (cluster, proxies)
}

/// Cuts (or heals) every Raft link to and from `node`.
fn cut_off(proxies: &HashMap<(u64, u64), Proxy>, node: u64, cut: bool) {
    for ((i, j), p) in proxies {
        if *i == node || *j == node {
            p.cut(cut);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_cannot_acknowledge_and_its_tail_is_truncated() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, proxies) = proxied_three(&["--append-timeout-ms", "1500"]).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 3, &acked, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Cut every Raft link to and from the leader; clients still reach it directly.
    cut_off(&proxies, leader, true);
    let ch = channel(&cluster.addr(leader)).await.unwrap();
    let mut old = StreamsClient::new(ch);
    let lost_id = 9u128 << 100;
    let write = old.append(append_request("isolated", lost_id)).await;
    assert!(
        write.is_err(),
        "the isolated leader acknowledged a write: {write:?}"
    );
    let read = old
        .read(pb::ReadRequest {
            stream: "w-0".into(),
            from_version: None,
            direction: 0,
            limit: 10,
            consistency: pb::Consistency::Linearizable as i32,
            as_of: None,
        })
        .await;
    assert!(
        read.is_err(),
        "the isolated leader served a linearizable read"
    );
    // The majority elects a leader of its own and goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let majority: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = loop {
        let s = status(&cluster.addr(majority[0])).await;
        if let Some(s) = s.filter(|s| s.has_leader && s.leader != leader) {
            break s.leader;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A writer can spend two append timeouts (1.5 s each) before it reaches the new leader:
    // one at a follower that still forwards to the isolated leader it last heard of, one at
    // the isolated leader itself; so the majority gets several of them to show it goes on.
    let acked_count = || acked.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let count_before = acked_count();
    let elected = Instant::now();
    while acked_count() == count_before {
        assert!(
            elected.elapsed() < Duration::from_secs(15),
            "no writes acknowledged by the majority in 15 s (leader {new_leader})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the majority's first acknowledgement came {:?} after its leader was seen",
        elected.elapsed()
    );
    // Heal.
    cut_off(&proxies, leader, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    join(writers).await;
    let acked = acked.lock().unwrap().clone();
    check_replicas(&cluster, &acked).await;
    // The write the isolated leader took was never committed: it is gone everywhere.
    for id in cluster.live() {
        let ch = channel(&cluster.addr(id)).await.unwrap();
        let events = StreamsClient::new(ch)
            .read(pb::ReadRequest {
                stream: "isolated".into(),
                from_version: None,
                direction: 0,
                limit: 10,
                consistency: pb::Consistency::Follower as i32,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(events.is_empty(), "node {id} kept an uncommitted write");
    }
    check_logs_identical(&mut cluster, false);
}

/// A follower forwards an append to the leader it knows; that leader is cut off from the
/// others, so the append cannot commit there (the append timeout, 20 s, is far away; the old
/// leader's own cut-off is turned off, so only the follower can end the wait). Once the
/// follower learns of the leader the others elected, it sends the append there instead, and
/// the client gets its acknowledgement — not the old leader's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_forwarded_to_a_leader_cut_off_goes_on_to_the_new_one() {
    let _serial = SERIAL.lock().await;
    let (cluster, proxies) =
        proxied_three(&["--append-timeout-ms", "20000", "--cut-off-ms", "0"]).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let forwarded = || async {
        status(&cluster.addr(follower))
            .await
            .unwrap()
            .forwarded_calls
    };
    let before = forwarded().await;

    cut_off(&proxies, leader, true);
    // Sent at once: the follower still knows the old leader (no election can end within the
    // 400 ms election timeout) and forwards the append there.
    let ch = channel(&cluster.addr(follower)).await.unwrap();
    let id = 11u128 << 100;
    let answer = StreamsClient::new(ch)
        .append(append_request("moved", id))
        .await
        .expect("the append went on to the new leader")
        .into_inner();
    assert_eq!(answer.streams[0].first_version, 0);
    assert_eq!(
        forwarded().await - before,
        2,
        "forwarded twice: to the old leader, then to the new one"
    );
    let new_leader = status(&cluster.addr(follower)).await.unwrap().leader;
    assert_ne!(new_leader, leader);

    // Healed, every replica holds the event once: the old leader's uncommitted copy is gone.
    cut_off(&proxies, leader, false);
    let acked: BTreeMap<String, Vec<u128>> = [("moved".to_string(), vec![id])].into();
    check_replicas(&cluster, &acked).await;

    // A pipelined call's part forwarded to a leader cut off is answered, once the follower
    // learns of the next leader, UNAVAILABLE naming it (the client sends it there again).
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cut_off(&proxies, leader, true);
    let mut client = StreamsClient::new(channel(&cluster.addr(follower)).await.unwrap());
    let message = pb::AppendStreamRequest {
        appends: vec![append_request("moved", id + 1)],
    };
    let mut answers = client
        .append_stream(tokio_stream::iter([message]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(pb::append_result::Outcome::Error(e)) = &answer.results[0].outcome else {
        panic!("the cut-off leader's part was not refused: {answer:?}");
    };
    assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
    assert!(e.message.contains("leader changed"), "{e:?}");
    assert!(
        !e.leader.is_empty() && e.leader != cluster.addr(leader),
        "{e:?}"
    );
    cut_off(&proxies, leader, false);
}

/// A leader cut off from the others answers an append sent to it, once no majority has
/// answered it for `--cut-off-ms` (the default), UNAVAILABLE saying so — not with the append
/// timeout's answer (20 s here) — and refuses the next at once; healed, it follows the new
/// leader and its clients' appends go through it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_answers_its_appends_before_the_append_timeout() {
    let _serial = SERIAL.lock().await;
    let (cluster, proxies) = proxied_three(&["--append-timeout-ms", "20000"]).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut old = StreamsClient::new(channel(&cluster.addr(leader)).await.unwrap());
    let base = 13u128 << 100;
    old.append(append_request("contact", base)).await.unwrap();

    cut_off(&proxies, leader, true);
    let cut_at = Instant::now();
    for n in 1..=2 {
        let refused = old
            .append(append_request("contact", base + n))
            .await
            .expect_err("a leader cut off acknowledged an append");
        eprintln!("append {n} refused {:?} after the cut", cut_at.elapsed());
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("heard from no majority"),
            "append {n}: {refused:?}"
        );
    }

    // Healed: the first refused append was proposed, and whether it committed is unknown
    // (another leader may have kept it); its retry with the same ids settles it either way.
    // The second was never proposed. Both go through the old leader's node again.
    cut_off(&proxies, leader, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 1..=2 {
        while let Err(e) = old.append(append_request("contact", base + n)).await {
            assert!(Instant::now() < deadline, "healed, still refused: {e:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let acked: BTreeMap<String, Vec<u128>> =
        [("contact".to_string(), vec![base, base + 1, base + 2])].into();
    check_replicas(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_grows_and_shrinks_under_writes_without_a_failed_operation() {
    membership_changes(1).await;
}

/// The same over three shards: the node added holds no replica until `rebalance` moves some
/// to it, `remove-node` moves them back first, every change reaches the groups concerned
/// (forwarded to the groups the node called does not lead), and the writers, all calling one
/// node, see no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_reach_every_shards_group() {
    membership_changes(3).await;
}

async fn membership_changes(shards: u32) {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend([
        "--learner-catch-up-timeout-ms".to_string(),
        "1500".to_string(),
        "--shards".to_string(),
        shards.to_string(),
    ]);
    // Nodes 1–3 form the cluster; node 4 knows them but is not a member yet.
    let mut cluster = three_formed_of(4, args).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = vec![cluster.addr(leader)];
    let writers: Vec<_> = (0..3)
        .map(|w| {
            tokio::spawn(writer(
                addrs.clone(),
                format!("m-{w}"),
                (w as u128 + 1) << 64,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let run = |args: &[&str]| {
        let out = Command::new(STRATA).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let leader_addr = cluster.addr(leader);
    let grown = run(&[
        "cluster",
        "add-node",
        "--id",
        "4",
        "--addr",
        &cluster.addr(4),
        "--server",
        &leader_addr,
    ]);
    let voters = |s: &serde_json::Value| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] != "learner")
            .count()
    };
    assert_eq!(voters(&grown), 4, "{grown}");
    // Every shard's group holds the new node (and, once removed, no longer does).
    let replicas_of_every_shard = |s: &serde_json::Value| -> Vec<Vec<u64>> {
        s["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let mut r: Vec<u64> = g["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                r.sort();
                r
            })
            .collect()
    };
    if shards == 1 {
        assert_eq!(
            replicas_of_every_shard(&grown),
            vec![vec![1, 2, 3, 4]],
            "{grown}"
        );
    } else {
        // On several shards the new node holds no replica until replicas move to it.
        assert_eq!(
            replicas_of_every_shard(&grown),
            vec![vec![1, 2, 3]; shards as usize],
            "{grown}"
        );
        run(&["cluster", "rebalance", "--server", &leader_addr]);
        let moved = run(&["cluster", "status", "--json", "--server", &leader_addr]);
        let on_4 = replicas_of_every_shard(&moved)
            .iter()
            .filter(|r| r.contains(&4) && r.len() == 3)
            .count();
        assert_eq!(on_4, 2, "9 replicas over 4 nodes: node 4 holds 2: {moved}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shrunk = run(&[
        "cluster",
        "remove-node",
        "--id",
        "4",
        "--server",
        &leader_addr,
    ]);
    assert_eq!(shrunk["nodes"].as_array().unwrap().len(), 3, "{shrunk}");
    assert_eq!(
        replicas_of_every_shard(&shrunk),
        vec![vec![1, 2, 3]; shards as usize],
        "{shrunk}"
    );
    // A node nobody can reach is not made a voter: it stays a learner and the call fails.
    let out = Command::new(STRATA)
        .args(["cluster", "add-node", "--id", "5", "--addr", "127.0.0.1:1"])
        .args(["--server", &leader_addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stays a learner"));
    let with_learner = run(&["cluster", "status", "--json", "--server", &leader_addr]);
    assert_eq!(voters(&with_learner), 3, "{with_learner}");
    run(&[
        "cluster",
        "remove-node",
        "--id",
        "5",
        "--server",
        &leader_addr,
    ]);
    // Removing a node that is not a member is an error naming it.
    let out = Command::new(STRATA)
        .args([
            "cluster",
            "remove-node",
            "--id",
            "77",
            "--server",
            &leader_addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 77 is not a member"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let reports = join(writers).await;
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let acks: u64 = reports.iter().map(|r| r.acks).sum();
    assert!(acks > 0);
    assert_eq!(errors, 0, "operations failed during membership changes");
    if shards == 1 {
        // No handover ran (a rebalance does on several shards).
        let status_json = run(&["cluster", "status", "--json", "--server", &leader_addr]);
        assert_eq!(status_json["leader"], leader);
    }
    let after = run(&["cluster", "status", "--json", "--server", &leader_addr]);
    assert_eq!(
        replicas_of_every_shard(&after),
        vec![vec![1, 2, 3]; shards as usize],
        "{after}"
    );
    cluster.nodes.get_mut(&4).unwrap().stop();
    let acked = acked.lock().unwrap().clone();
    if shards == 1 {
        check_replicas(&cluster, &acked).await;
    } else {
        check_sharded_replicas(&cluster, &acked).await;
    }
    cluster.nodes.remove(&4);
    check_logs_identical(&mut cluster, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_snapshots_and_closed_timestamps_hold_across_a_leader_change() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(3, false, small_log_args());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut c = StreamsClient::new(channel(&cluster.addr(leader)).await.unwrap());
    for i in 0..5u128 {
        c.append(append_request("acct", 100 + i)).await.unwrap();
        c.append(append_request("doomed", 200 + i)).await.unwrap();
    }
    c.save_snapshot(pb::SaveSnapshotRequest {
        stream: "acct".into(),
        version: 2,
        schema_version: 1,
        data: b"{\"n\":102}".to_vec().into(),
    })
    .await
    .unwrap();
    c.delete_stream(pb::DeleteStreamRequest {
        stream: "doomed".into(),
        hard: true,
        expected: None,
    })
    .await
    .unwrap();
    // An as-of-now read of $all through Raft: closed, and the same later.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let read_all = |t: u64| pb::ReadAllRequest {
        from_position: 0,
        limit: 4096,
        filter: None,
        consistency: 0,
        as_of: Some(pb::AsOf {
            point: Some(pb::as_of::Point::TimestampUs(t)),
        }),
        from_cursor: Default::default(),
    };
    let first = c.read_all(read_all(now)).await.unwrap().into_inner();
    assert!(first.closed_timestamp_us >= now);
    assert_eq!(first.events.len(), 10);

    // A new leader decides appends with the tombstone and serves the same state.
    cluster.nodes.get_mut(&leader).unwrap().kill();
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    let mut c = StreamsClient::new(channel(&cluster.addr(new_leader)).await.unwrap());
    let err = c.append(append_request("doomed", 300)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("deleted"), "{err:?}");
    let state = c
        .read_state(pb::ReadStateRequest {
            stream: "acct".into(),
            as_of: None,
            limit: 0,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.snapshot.unwrap().version, 2);
    assert_eq!(
        state.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let again = c.read_all(read_all(now)).await.unwrap().into_inner();
    let ids = |r: &pb::ReadAllResponse| r.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&again));
}

/// Bytes the segment files under `dir` (in any `log/` directory) have allocated on disk: holes
/// take none.
fn log_allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let in_log = dir.file_name().is_some_and(|n| n == "log");
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => log_allocated_bytes(&e.path()),
            _ if in_log => e.metadata().map_or(0, |m| m.blocks() * 512),
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_reclaims_on_every_replica_and_a_wiped_follower_rejoins() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend(
        [
            "--retention-interval-ms",
            "200",
            "--retention-as-of-window-s",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut cluster = Cluster::new(3, false, args);
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut c = StreamsClient::new(channel(&cluster.addr(leader)).await.unwrap());
    c.set_stream_metadata(pb::SetStreamMetadataRequest {
        stream: "hot".into(),
        metadata: Some(pb::StreamMetadata {
            max_age_us: None,
            max_count: Some(10),
            truncate_before: None,
        }),
        expected_metadata_version: None,
    })
    .await
    .unwrap();
    let payload = "x".repeat(8000);
    let mut keep = Vec::new();
    for i in 1..=1500u128 {
        let request = if i % 100 == 0 {
            keep.push(i);
            pb::AppendRequest {
                stream: "keep".into(),
                expected: None,
                events: vec![event(i, "{}")],
            }
        } else {
            pb::AppendRequest {
                stream: "hot".into(),
                expected: None,
                events: vec![event(i, &payload)],
            }
        };
        c.append(request).await.unwrap();
    }
    let written = 1485 * 8000u64; // the "hot" events
    cluster.converge().await;
    // Every replica reclaims on its own (below its purge point and its snapshot).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sizes: Vec<u64> = cluster
            .nodes
            .values()
            .map(|n| log_allocated_bytes(&n.data))
            .collect();
        if sizes.iter().all(|s| *s * 2 < written) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still hold {sizes:?} bytes after {written} bytes of mostly dead events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = |stream: &str| pb::ReadRequest {
        stream: stream.into(),
        from_version: None,
        direction: 0,
        limit: 4096,
        consistency: pb::Consistency::Follower as i32,
        as_of: None,
    };
    let view = |events: Vec<pb::RecordedEvent>| {
        events
            .into_iter()
            .map(|e| (e.version, e.id))
            .collect::<Vec<_>>()
    };
    // ("hot", "keep") as (version, id) pairs, as the first node answered.
    type Streams = (Vec<(u64, String)>, Vec<(u64, String)>);
    let mut first: Option<Streams> = None;
    for id in cluster.live() {
        let mut c = StreamsClient::new(channel(&cluster.addr(id)).await.unwrap());
        let hot = view(c.read(read("hot")).await.unwrap().into_inner().events);
        let kept = view(c.read(read("keep")).await.unwrap().into_inner().events);
        assert_eq!(hot.len(), 10, "node {id}");
        assert_eq!(kept.len(), keep.len(), "node {id}");
        match &first {
            None => first = Some((hot, kept)),
            Some(f) => assert_eq!(f, &(hot, kept), "node {id} differs"),
        }
    }
    // A follower that loses its disk rejoins by snapshot from a log with holes.
    let follower = cluster.live().into_iter().find(|id| *id != leader).unwrap();
    cluster.nodes.get_mut(&follower).unwrap().kill();
    std::fs::remove_dir_all(&cluster.nodes[&follower].data).unwrap();
    cluster.nodes.get_mut(&follower).unwrap().start();
    cluster.wait_up(follower).await;
    cluster.converge().await;
    let mut c = StreamsClient::new(channel(&cluster.addr(follower)).await.unwrap());
    let hot = view(c.read(read("hot")).await.unwrap().into_inner().events);
    let kept = view(c.read(read("keep")).await.unwrap().into_inner().events);
    assert_eq!(first, Some((hot, kept)), "the rejoined follower differs");
    check_logs_identical(&mut cluster, true);
}

/// A client that sends and takes the largest messages a node may (as Strata's own do).
fn big_client(ch: Channel) -> StreamsClient<Channel> {
    StreamsClient::new(ch)
        .max_decoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
        .max_encoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
}

/// An append to `stream` of `events` events whose record is exactly `record_bytes` long (the
/// engine's measure of `batch_bytes_max`), every event within `event_bytes_max`.
fn append_of_record_bytes(stream: &str, events: u128, record_bytes: usize) -> pb::AppendRequest {
    use strata_engine::format::{event_frame_len, FRAME_BYTES, HEADER_BYTES};
    let limits = strata_engine::Limits::default();
    let per_event_max = limits.event_bytes_max - stream.len() - 1;
    let mut left = record_bytes
        - FRAME_BYTES
        - HEADER_BYTES
        - 4
        - events as usize * event_frame_len(stream, "T", 0, 0);
    let events = (0..events)
        .map(|i| {
            let bytes = left.min(per_event_max);
            left -= bytes;
            pb::NewEvent {
                id: uuid::Uuid::from_u128(7000 + i).to_string(),
                r#type: "T".into(),
                data: vec![b'e'; bytes].into(),
                metadata: Default::default(),
            }
        })
        .collect();
    assert_eq!(left, 0, "the events cannot hold {record_bytes} bytes");
    pb::AppendRequest {
        stream: stream.into(),
        expected: None,
        events,
    }
}

/// The limits are tied across layers: the largest batch the default limits allow (a record of
/// exactly `batch_bytes_max`, 16 MiB) passes the client API, is written as one Raft entry,
/// replicates in one AppendEntries and reads back on every replica; one byte more is refused
/// by the engine, naming the limit. (Before the limits were tied, the request met gRPC's 4 MiB
/// default, and past that the AppendEntries met a 16 MiB Raft message limit: replication of
/// that entry would have stalled for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batch_the_limits_allow_replicates_to_every_replica() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(3, false, Vec::new());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut c = big_client(channel(&cluster.addr(leader)).await.unwrap());
    let batch_bytes_max = strata_engine::Limits::default().batch_bytes_max;
    let over = append_of_record_bytes("edge-over", 16, batch_bytes_max + 1);
    let refused = c.append(over).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("batch_bytes_max"), "{refused:?}");
    let edge = append_of_record_bytes("edge", 16, batch_bytes_max);
    let sent: Vec<Vec<u8>> = edge.events.iter().map(|e| e.data.to_vec()).collect();
    // 16 MiB through a debug build on a loaded machine can take longer than the append
    // timeout (5 s): then the answer is UNAVAILABLE and, as documented, the client retries with
    // the same event ids (at the leader of the moment), which answers the original result.
    let mut answer = None;
    for _ in 0..10 {
        let leader = cluster.leader(Duration::from_secs(10)).await;
        let mut c = big_client(channel(&cluster.addr(leader)).await.unwrap());
        match c.append(edge.clone()).await {
            Ok(r) => {
                answer = Some(r.into_inner());
                break;
            }
            Err(e) if e.code() == tonic::Code::Unavailable => {
                eprintln!("edge append: {e:?}; retrying with the same ids");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("edge append refused: {e:?}"),
        }
    }
    let ok = answer.expect("the edge-size append is acknowledged");
    assert_eq!(ok.streams[0].last_version, 15);
    cluster.converge().await;
    for id in cluster.live() {
        let mut c = big_client(channel(&cluster.addr(id)).await.unwrap());
        let got: Vec<Vec<u8>> = follower_read_all(&mut c, "edge", id)
            .await
            .into_iter()
            .map(|e| e.data.to_vec())
            .collect();
        assert!(got == sent, "node {id} holds other bytes");
    }
    // The edge-size entry is replicated like any other: appends after it commit too.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let mut c = big_client(channel(&cluster.addr(leader)).await.unwrap());
    c.append(append_request("after-edge", 1)).await.unwrap();
}

/// Every shard's leader as each live node sees it, once they all agree (waits up to 20 s).
async fn shard_leaders(cluster: &Cluster) -> BTreeMap<u32, u64> {
    shard_leaders_among(cluster, &cluster.live()).await
}

/// The shard leaders nodes `ids` agree on (waits up to 20 s), each a live node: every node
/// holding a shard names the same leader (a node holding none of a shard names none).
async fn shard_leaders_among(cluster: &Cluster, ids: &[u64]) -> BTreeMap<u32, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut views = Vec::new();
        for id in ids.iter().copied() {
            if let Some(s) = status(&cluster.addr(id)).await {
                views.push(s);
            }
        }
        let mut leaders: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for view in &views {
            for g in &view.shards {
                let named = leaders.entry(g.id).or_default();
                if g.leader != 0 || g.replicas.contains(&view.node_id) {
                    named.insert(g.leader);
                }
            }
        }
        let agreed = views.len() == ids.len()
            && leaders
                .values()
                .all(|l| l.len() == 1 && l.iter().all(|l| *l != 0 && cluster.live().contains(l)));
        if agreed {
            return leaders
                .into_iter()
                .map(|(shard, l)| (shard, l.into_iter().next().unwrap()))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "no agreed shard leaders: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three `strata node` processes of `shards` shards each (small logs), started, not yet known
/// to have leaders.
async fn three_nodes_of_shards(shards: u32) -> Cluster {
    let mut args = small_log_args();
    args.extend(["--shards".to_string(), shards.to_string()]);
    let mut cluster = Cluster::new(3, false, args);
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    cluster
}

/// Every event id of the merged `$all`, read page by page from a cursor through `client`.
async fn merged_all_ids(client: &mut StreamsClient<Channel>) -> Vec<u128> {
    let mut all = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_cursor: cursor.clone().into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.is_empty() {
            return all;
        }
        all.extend(
            page.events
                .iter()
                .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128()),
        );
        cursor = page.next_cursor.to_vec();
    }
}

/// Every acknowledged event on every live node exactly once, at its version, by follower reads
/// of each stream (each node's replica of the stream's shard), waiting for the node to apply.
async fn check_sharded_replicas(cluster: &Cluster, acked: &BTreeMap<String, Vec<u128>>) {
    for id in cluster.live() {
        let ch = channel(&cluster.addr(id)).await.unwrap();
        let mut client = StreamsClient::new(ch);
        for (stream, ids) in acked {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got: Vec<u128> = follower_read_all(&mut client, stream, id)
                    .await
                    .iter()
                    .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
                    .collect();
                if got.len() >= ids.len() || Instant::now() > deadline {
                    assert_eq!(
                        &got, ids,
                        "node {id}: stream {stream} differs from what was acknowledged"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A three-node cluster of four shards (one Raft group each, a replica on every node): the
/// groups' leaders are spread over the nodes at formation; appends sent to any node reach
/// their shard's leader (forwarded: not one failed call while nothing fails), an
/// `AppendStream` mixing shards through one node is answered in order, linearizable reads and
/// a merged `$all` read through a node that does not lead every shard see every
/// acknowledged event; then the metadata group's leader is SIGKILLed (another takes its place,
/// the map's epoch unchanged) and restarted under the writers, and every acknowledged event
/// is on every replica exactly once, each shard's logs byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_cluster_forwards_to_each_leader_and_loses_nothing_through_a_kill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three_nodes_of_shards(4).await;
    let leaders = shard_leaders(&cluster).await;
    assert_eq!(leaders.len(), 4, "{leaders:?}");
    // The map's history is in the metadata group: its leader recorded epoch 1.
    let (meta_leader, epoch) = meta_view(&cluster, &[1, 2, 3]).await;
    assert_eq!(epoch, 1);
    for node in 1..=3u64 {
        let led = leaders.values().filter(|l| **l == node).count();
        assert!(
            (1..=2).contains(&led),
            "node {node} leads {led} of 4 shards: {leaders:?}"
        );
    }

    // Nothing fails: every writer's first node (node 1) forwards what it does not lead.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 8, &acked, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let reports = join(writers).await;
    let (acks, errors): (u64, u64) = reports
        .iter()
        .fold((0, 0), |(a, e), r| (a + r.acks, e + r.errors));
    assert!(acks > 0);
    assert_eq!(
        errors, 0,
        "calls failed with every node up ({acks} acknowledged)"
    );

    let forwarded = |cluster: &Cluster| {
        let addrs: Vec<String> = cluster.live().iter().map(|id| cluster.addr(*id)).collect();
        async move {
            let mut sum = 0;
            for a in addrs {
                sum += status(&a).await.unwrap().forwarded_calls;
            }
            sum
        }
    };
    let passed_on = forwarded(&cluster).await;
    assert!(passed_on > 0, "node 1 led every shard?");

    // strata-client sends each append to its shard's leader: nothing more is forwarded.
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let client = strata_client::Client::new(strata_client::ClientConfig::new(addrs)).unwrap();
    for i in 0..32u128 {
        let stream = format!("c-{}", i % 16);
        let id = (5u128 << 100) + i;
        client
            .append_request(append_request(&stream, id))
            .await
            .unwrap();
        acked.lock().unwrap().entry(stream).or_default().push(id);
    }
    assert_eq!(
        forwarded(&cluster).await,
        passed_on,
        "strata-client's appends were forwarded"
    );

    // One AppendStream through node 2 over streams of every shard, answered in order.
    let mut client = StreamsClient::new(channel(&cluster.addr(2)).await.unwrap());
    let batch: Vec<pb::AppendRequest> = (0..16u128)
        .map(|i| append_request(&format!("s-{}", i % 8), (9u128 << 100) + i))
        .collect();
    let messages = vec![
        pb::AppendStreamRequest {
            appends: batch[..8].to_vec(),
        },
        pb::AppendStreamRequest {
            appends: batch[8..].to_vec(),
        },
    ];
    let mut answers = client
        .append_stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    while let Some(m) = answers.message().await.unwrap() {
        for r in m.results {
            match r.outcome {
                Some(pb::append_result::Outcome::Appended(a)) => {
                    versions.push(a.streams[0].first_version)
                }
                other => panic!("an append failed: {other:?}"),
            }
        }
    }
    assert_eq!(versions, [vec![0u64; 8], vec![1u64; 8]].concat());
    {
        let mut a = acked.lock().unwrap();
        for (i, append) in batch.iter().enumerate() {
            a.entry(append.stream.clone())
                .or_default()
                .push((9u128 << 100) + i as u128);
        }
    }

    // Linearizable reads through node 3 (forwarded where it does not lead) see every ack;
    // so does a merged $all read, page by page (a read index per remote shard).
    let mut client = StreamsClient::new(channel(&cluster.addr(3)).await.unwrap());
    let snapshot = acked.lock().unwrap().clone();
    for (stream, ids) in &snapshot {
        let events = client
            .read(pb::ReadRequest {
                stream: stream.clone(),
                limit: 4096,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let got: Vec<u128> = events
            .iter()
            .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
            .collect();
        assert_eq!(&got, ids, "linearizable read of {stream} through node 3");
    }
    let all = merged_all_ids(&mut client).await;
    let total: usize = snapshot.values().map(Vec::len).sum();
    let distinct: std::collections::BTreeSet<u128> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (total, total),
        "the merged $all read"
    );

    // SIGKILL the metadata group's leader under the writers, then restart it.
    stop.store(false, Ordering::Relaxed);
    let writers = spawn_writers_round(&cluster, 8, &acked, &stop, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes.get_mut(&meta_leader).unwrap().kill();
    let others: Vec<u64> = (1..=3).filter(|id| *id != meta_leader).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (next, epoch) = meta_view(&cluster, &others).await;
        assert_eq!(epoch, 1);
        if next != meta_leader {
            break;
        }
        assert!(Instant::now() < deadline, "no new metadata leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes.get_mut(&meta_leader).unwrap().start();
    cluster.wait_up(meta_leader).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    join(writers).await;
    shard_leaders(&cluster).await;
    meta_view(&cluster, &[1, 2, 3]).await;
    let acked = acked.lock().unwrap().clone();
    check_sharded_replicas(&cluster, &acked).await;
    check_logs_identical(&mut cluster, false);
}

/// After a failover the leaders pile up on the nodes that stayed; once the lost node is back
/// the metadata group's leader hands leaderships over by itself (one per look, looks 500 ms
/// apart here) until every node leads within one of an even share. Shards whose preferred
/// leader the map records go back to it after its failover; bad preferences change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_rebalance_by_themselves_after_a_failover() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend(["--shards", "6", "--leader-balance-interval-ms", "500"].map(String::from));
    let mut cluster = Cluster::new(3, false, args);
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    let even = |leaders: &BTreeMap<u32, u64>| {
        let led = leaderships(leaders, &[1, 2, 3]);
        led.values().max().unwrap() - led.values().min().unwrap() <= 1
    };
    assert!(even(&shard_leaders(&cluster).await));
    let victim = *shard_leaders(&cluster).await.values().next().unwrap();
    cluster.nodes.get_mut(&victim).unwrap().kill();
    let piled = loop {
        let leaders = shard_leaders(&cluster).await;
        if !leaders.values().any(|l| *l == victim) {
            break leaders;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!even(&piled), "{piled:?}");
    cluster.nodes.get_mut(&victim).unwrap().start();
    cluster.wait_up(victim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = shard_leaders(&cluster).await;
        if even(&leaders) {
            break;
        }
        assert!(Instant::now() < deadline, "not rebalanced: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Shards 0 and 1 prefer the victim: through a failover of it, they come back to it, and
    // the rest balance around them.
    let first = cluster.addr(1);
    let to = victim.to_string();
    for shard in ["0", "1"] {
        strata_json(&[
            "cluster",
            "transfer-leader",
            "--shard",
            shard,
            "--to",
            &to,
            "--prefer",
            "--server",
            &first,
        ]);
    }
    let (_, epoch) = meta_view(&cluster, &[1, 2, 3]).await;
    let view = strata_json(&["cluster", "status", "--json", "--server", &first]);
    let preferred: Vec<u64> = view["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["preferred_leader"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(preferred, vec![victim, victim, 0, 0, 0, 0], "{view}");
    // Bad input: a node outside the cluster, an unknown shard; the map unchanged.
    for (shard, node, says) in [("0", "9", "not a member"), ("7", &*to, "shard 7")] {
        let out = Command::new(STRATA)
            .args([
                "cluster",
                "transfer-leader",
                "--shard",
                shard,
                "--to",
                node,
                "--prefer",
            ])
            .args(["--server", &first])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
    assert_eq!(
        meta_view(&cluster, &[1, 2, 3]).await.1,
        epoch,
        "bad input changed the map"
    );
    cluster.nodes.get_mut(&victim).unwrap().kill();
    loop {
        let leaders = shard_leaders(&cluster).await;
        if leaders.len() == 6 && !leaders.values().any(|l| *l == victim) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.nodes.get_mut(&victim).unwrap().start();
    cluster.wait_up(victim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = shard_leaders(&cluster).await;
        if leaders.get(&0) == Some(&victim) && leaders.get(&1) == Some(&victim) && even(&leaders) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "preferences not honoured: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Cleared: the map forgets it.
    strata_json(&[
        "cluster",
        "transfer-leader",
        "--shard",
        "0",
        "--clear-preference",
        "--server",
        &first,
    ]);
    let view = strata_json(&["cluster", "status", "--json", "--server", &first]);
    assert!(view["shards"][0]["preferred_leader"].is_null(), "{view}");
}

/// Runs `strata` with `args`; it must succeed. Returns its stdout's last line as JSON.
fn strata_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(STRATA).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// The metadata group's leader and the map epoch nodes `ids` agree on (waits up to 20 s).
async fn meta_view(cluster: &Cluster, ids: &[u64]) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut views = Vec::new();
        for id in ids {
            if let Some(s) = status(&cluster.addr(*id)).await {
                views.push((s.meta_leader, s.map_epoch));
            }
        }
        if views.len() == ids.len() && views.iter().all(|v| *v == views[0] && v.0 != 0) {
            return views[0];
        }
        assert!(
            Instant::now() < deadline,
            "no agreed metadata leader: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shards led per node, every node of `nodes` counted.
fn leaderships(leaders: &BTreeMap<u32, u64>, nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut led: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for l in leaders.values() {
        *led.entry(*l).or_default() += 1;
    }
    led
}

/// Replicas held per node by `strata cluster status --json` (the merged view), every node of
/// `nodes` counted; asserts every shard has three.
fn replica_loads(first: &str, nodes: &[u64]) -> BTreeMap<u64, usize> {
    let view = strata_json(&["cluster", "status", "--json", "--server", first]);
    for shard in view["shards"].as_array().unwrap() {
        assert_eq!(shard["replicas"].as_array().unwrap().len(), 3, "{view}");
    }
    loads_of(&view, nodes)
}

/// Replicas per node in `cluster status --json`'s `view`.
fn loads_of(view: &serde_json::Value, nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut loads: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for shard in view["shards"].as_array().unwrap() {
        for r in shard["replicas"].as_array().unwrap() {
            *loads.entry(r.as_u64().unwrap()).or_default() += 1;
        }
    }
    loads
}

/// With `--replica-balance-interval-ms` the metadata group's leader balances the replicas by
/// itself (4 shards × 3 replicas): node 4 added gets its share (3 on each of 4 nodes) with no
/// `cluster rebalance`; node 5 added while node 4 does not answer gets nothing until node 4
/// is back, then every node holds 2 or 3. What was written before is there, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_balance_by_themselves_onto_added_nodes_while_every_node_answers() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend(["--shards", "4", "--replica-balance-interval-ms", "300"].map(String::from));
    let mut cluster = three_formed_of(5, args).await;
    let first = cluster.addr(1);
    let client =
        strata_client::Client::new(strata_client::ClientConfig::new([first.clone()])).unwrap();
    let mut acked: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for k in 0..8u128 {
        let stream = format!("b-{k}");
        for n in 0..10u128 {
            let id = ((k + 1) << 64) + n;
            client
                .append_request(append_request(&stream, id))
                .await
                .unwrap();
            acked.entry(stream.clone()).or_default().push(id);
        }
    }
    let addrs: BTreeMap<u64, String> = (4..=5).map(|id| (id, cluster.addr(id))).collect();
    let add = |id: u64| {
        strata_json(&[
            "cluster",
            "add-node",
            "--id",
            &id.to_string(),
            "--addr",
            &addrs[&id],
            "--server",
            &first,
        ])
    };
    add(4);
    settled_loads(&first, &[1, 2, 3, 4], |l| l.values().all(|n| *n == 3)).await;
    cluster.nodes.get_mut(&4).unwrap().kill();
    add(5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loads = settled_loads(&first, &[1, 2, 3, 4, 5], |_| true).await;
    assert_eq!(
        loads[&5], 0,
        "a move while node 4 does not answer: {loads:?}"
    );
    cluster.nodes.get_mut(&4).unwrap().start();
    cluster.wait_up(4).await;
    settled_loads(&first, &[1, 2, 3, 4, 5], |l| {
        l.values().all(|n| (2..=3).contains(n))
    })
    .await;
    for (stream, ids) in &acked {
        let got: Vec<u128> = client
            .read_stream(stream, None, 1000)
            .await
            .unwrap()
            .iter()
            .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
            .collect();
        assert_eq!(&got, ids, "{stream}");
    }
}

/// Waits (up to 90 s) for the map to record no replica move and the replicas per node of
/// `nodes` to satisfy `good`; returns them.
async fn settled_loads(
    first: &str,
    nodes: &[u64],
    good: impl Fn(&BTreeMap<u64, usize>) -> bool,
) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = strata_json(&["cluster", "status", "--json", "--server", first]);
        // A move ended in the map still has its old replica in the group until removed.
        let moving =
            view["shards"].as_array().unwrap().iter().any(|s| {
                !s["moving"].is_null() || s["replicas"].as_array().map_or(0, Vec::len) != 3
            });
        if !moving {
            let loads = loads_of(&view, nodes);
            if good(&loads) {
                return loads;
            }
            assert!(Instant::now() < deadline, "not balanced: {loads:?}");
        }
        assert!(Instant::now() < deadline, "a move did not end: {view}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A sharded cluster (6 shards, 3 replicas each) grows 3 → 4 → 5 nodes and shrinks back to 3
/// under strata-client writers and a `$all` subscriber through nodes 1–3: an added node joins
/// the metadata group and holds nothing until `cluster rebalance` moves replicas to it
/// (learner, caught up, promoted; the old replica removed and deleted) until every node holds
/// within one of an even share, then hands leaderships over until every node leads within one
/// of an even share; `remove-node` moves a node's replicas away first. Calls reach shards a
/// node holds no replica of (passed to a holder), merged `$all` reads and subscriptions span
/// them. Not one client operation fails (the client retries with the same ids), every
/// acknowledged event is on every replica exactly once, the subscriber sees each exactly once,
/// and replicas and leaders are balanced at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_cluster_grows_to_five_and_back_with_balanced_replicas_and_leaders() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    // Leaders balanced by the command here, not by the nodes themselves.
    args.extend(["--shards", "6", "--leader-balance-interval-ms", "0"].map(String::from));
    // Nodes 1–3 form the cluster; 4 and 5 know them but are not members yet.
    let mut cluster = three_formed_of(5, args).await;
    let first = cluster.addr(1);
    // Bad handovers are refused, naming what is wrong; the leaders stay.
    let before = shard_leaders_among(&cluster, &[1, 2, 3]).await;
    for (shard, to, says) in [
        ("99", "2", "no shard 99: the cluster has shards 0 to 5"),
        ("0", "77", "node 77 is not a member of shard 0"),
        ("0", "5", "node 5 is not a member of shard 0"),
    ] {
        let out = Command::new(STRATA)
            .args(["cluster", "transfer-leader", "--shard", shard, "--to", to])
            .args(["--server", &first])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    }
    assert_eq!(shard_leaders_among(&cluster, &[1, 2, 3]).await, before);

    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let client = strata_client::Client::new(strata_client::ClientConfig::new(addrs)).unwrap();
    let acked: Acked = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6u128)
        .map(|w| {
            let (client, acked, failed, stop) =
                (client.clone(), acked.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let stream = format!("g-{w}");
                let mut n = 0u128;
                while !stop.load(Ordering::Relaxed) {
                    let id = ((w + 1) << 64) + n;
                    match client.append_request(append_request(&stream, id)).await {
                        Ok(_) => {
                            acked
                                .lock()
                                .unwrap()
                                .entry(stream.clone())
                                .or_default()
                                .push(id);
                            n += 1;
                        }
                        Err(e) => {
                            eprintln!("append {id} to {stream} failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let seen: Arc<Mutex<Vec<u128>>> = Arc::default();
    let reader = {
        let (seen, failed) = (seen.clone(), failed.clone());
        let mut sub = client.subscribe(
            strata_client::Target::All(None),
            strata_client::Start::Beginning,
        );
        tokio::spawn(async move {
            loop {
                match sub.next().await {
                    Ok(strata_client::Item::Event(e)) => seen
                        .lock()
                        .unwrap()
                        .push(uuid::Uuid::parse_str(&e.id).unwrap().as_u128()),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("the subscription failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        })
    };

    let balanced =
        |led: &BTreeMap<u64, usize>| led.values().max().unwrap() - led.values().min().unwrap() <= 1;
    for id in [4u64, 5] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let id_text = id.to_string();
        let addr = cluster.addr(id);
        let grown = strata_json(&[
            "cluster", "add-node", "--id", &id_text, "--addr", &addr, "--server", &first,
        ]);
        for shard in grown["shards"].as_array().unwrap() {
            assert!(
                !shard["replicas"].as_array().unwrap().contains(&id.into()),
                "node {id} holds no replica before the rebalance: {grown}"
            );
        }
        let report = strata_json(&["cluster", "rebalance", "--server", &first]);
        eprintln!("rebalance onto node {id}: {report}");
        let nodes: Vec<u64> = (1..=id).collect();
        let loads = replica_loads(&first, &nodes);
        assert!(
            balanced(&loads),
            "replicas after adding node {id}: {loads:?}"
        );
        let led = leaderships(&shard_leaders_among(&cluster, &nodes).await, &nodes);
        assert!(balanced(&led), "leaders after adding node {id}: {led:?}");
        // The metadata group grew too: every node follows its leader, on one map.
        let (_, epoch) = meta_view(&cluster, &nodes).await;
        assert!(epoch > 1, "the replicas' moves are in the map");
        // The replicas that moved away are deleted (once nothing holds them).
        for n in &nodes {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let dirs = shard_dirs_by_id(&cluster.nodes[n].data);
                if dirs.len() == loads[n] {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {n} holds {:?}",
                    dirs.keys()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for id in [5u64, 4] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let shrunk = strata_json(&[
            "cluster",
            "remove-node",
            "--id",
            &id.to_string(),
            "--server",
            &first,
        ]);
        for shard in shrunk["shards"].as_array().unwrap() {
            assert!(
                !shard["replicas"].as_array().unwrap().contains(&id.into()),
                "node {id} left every shard's group: {shrunk}"
            );
            assert_ne!(
                shard["leader"], id,
                "node {id} handed over what it led: {shrunk}"
            );
        }
        cluster.nodes.get_mut(&id).unwrap().stop();
    }
    let report = strata_json(&["cluster", "rebalance", "--server", &first]);
    eprintln!("rebalance back on three nodes: {report}");
    let loads = replica_loads(&first, &[1, 2, 3]);
    assert_eq!(loads.values().copied().collect::<Vec<_>>(), vec![6, 6, 6]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let led = leaderships(&shard_leaders(&cluster).await, &[1, 2, 3]);
    assert!(balanced(&led), "at the end: {led:?}");
    let (meta_leader, _) = meta_view(&cluster, &[1, 2, 3]).await;
    assert!(
        (1..=3).contains(&meta_leader),
        "metadata leader {meta_leader}"
    );

    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 100, "only {total} events were acknowledged");
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "client operations failed"
    );
    let seen = seen.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<u128> = seen.iter().copied().collect();
    let wanted: std::collections::BTreeSet<u128> = acked.values().flatten().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "the subscriber saw a duplicate");
    assert_eq!(
        distinct, wanted,
        "the subscriber saw other than what was acknowledged"
    );
    check_sharded_replicas(&cluster, &acked).await;
    cluster.nodes.remove(&4);
    cluster.nodes.remove(&5);
    // Replicas added by a move may hold a suffix of the log only (caught up by a snapshot).
    check_logs_identical(&mut cluster, true);
}

/// Nodes that would route streams to different shards do not form a cluster: `cluster init`
/// is refused naming the node and both shard counts, and no group is formed. A node that was
/// down at init and comes up with another shard count refuses every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_shard_counts_are_refused_at_init() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(3, false, Vec::new());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    for id in 1..=3 {
        let shards = if id == 3 { "2" } else { "4" };
        let node = cluster.nodes.get_mut(&id).unwrap();
        node.args
            .extend(["--shards".to_string(), shards.to_string()]);
        node.start();
    }
    let out = cluster.init(&[1, 2, 3]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node 3")
            && stderr.contains("holds 2 shards")
            && stderr.contains("this node 4"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=3 {
        let s = status(&cluster.addr(id)).await.unwrap();
        assert!(
            !s.has_leader && s.shards.iter().all(|g| g.leader == 0),
            "node {id} formed a group: {s:?}"
        );
    }

    // With node 3 down, init cannot compare with it and forms the cluster; once node 3 (two
    // shards) comes up, it finds the cluster's map (four) in the metadata group and refuses
    // every call rather than route by its own. Nodes 1 and 2 serve on.
    cluster.nodes.get_mut(&3).unwrap().stop();
    let out = cluster.init(&[1, 2]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = addr(free_port());
    let node3 = cluster.nodes.get_mut(&3).unwrap();
    node3
        .args
        .extend(["--metrics".to_string(), metrics.clone()]);
    node3.start();
    cluster.wait_up(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let mut client = StreamsClient::new(channel(&cluster.addr(3)).await.unwrap());
        match client.append(append_request("order-1", 1)).await {
            Err(status) if status.code() == tonic::Code::FailedPrecondition => break status,
            other => {
                assert!(Instant::now() < deadline, "node 3 still answers: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        refusal.message().contains("started with another --shards")
            && refusal.message().contains("--shards 4"),
        "{}",
        refusal.message()
    );
    // Its /health says so.
    let mut health = TcpStream::connect(&metrics).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    health
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("\"refusing\""),
        "{answer}"
    );
    let mut client = StreamsClient::new(channel(&cluster.addr(1)).await.unwrap());
    client.append(append_request("order-2", 2)).await.unwrap();
}

/// The README's `strata dev --nodes 3 --shards 4`: three node processes on consecutive ports
/// (50051–50053 by default; here a free run below the ephemeral range), every
/// shard's group led (leaders spread), an append through one node read back through another
/// (forwarded where needed), and Ctrl-C (SIGTERM) stops them all cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dev_runs_a_sharded_cluster_and_stops_cleanly() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_run(3);
    let node = |n: u16| addr(base + n - 1);
    let mut dev = std::process::Command::new(STRATA)
        .args([
            "dev",
            "--nodes",
            "3",
            "--shards",
            "4",
            "--metrics",
            "off",
            "--listen",
            &node(1),
            "--data",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        use std::io::BufRead;
        let stdout = dev.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
    }
    if first.is_empty() {
        // It stopped before forming the cluster: its own words say why.
        let mut why = String::new();
        use std::io::Read;
        let _ = dev.stderr.as_mut().unwrap().read_to_string(&mut why);
        let logs: Vec<String> = (1..=3)
            .map(|n| {
                let log = dir.path().join(format!("node-{n}/node.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                format!("node {n}: {}", tail.join("\n"))
            })
            .collect();
        panic!("strata dev did not start: {why}\n{}", logs.join("\n"));
    }
    assert!(
        first.starts_with("strata dev: 3-node cluster of 4 shards (shard→leader: "),
        "{first}"
    );
    let led: std::collections::BTreeSet<&str> = first
        .split("shard→leader: ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(' ')
        .map(|pair| pair.split('→').nth(1).unwrap())
        .collect();
    assert_eq!(led.len(), 3, "leaders not spread over the nodes: {first}");
    let cli = |args: &[&str]| Command::new(STRATA).args(args).output().unwrap();
    for i in 0..8 {
        let out = cli(&[
            "append",
            &format!("order-{i}"),
            "--data",
            "{}",
            "--server",
            &node(2),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..8 {
        let out = cli(&["read", &format!("order-{i}"), "--server", &node(3)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(dev.id() as i32, libc::SIGTERM) };
    let out = dev.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped cleanly"));
}

/// What a move's test kills while the move runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveKill {
    Nothing,
    SourceLeader,
    TargetLeader,
    MetaLeader,
}

/// Whether some live node runs a slot-range move now.
async fn a_move_runs(cluster: &Cluster) -> bool {
    for id in cluster.live() {
        if let Some(s) = status(&cluster.addr(id)).await {
            if s.r#move
                .is_some_and(|m| m.step == "copying" || m.step == "fenced")
            {
                return true;
            }
        }
    }
    false
}

/// The shard owning `slot` in node `id`'s map.
async fn owner_of(cluster: &Cluster, id: u64, slot: u32) -> Option<(u64, u32)> {
    let s = status(&cluster.addr(id)).await?;
    let owner = s
        .shards
        .iter()
        .find(|sh| sh.slots.iter().any(|r| r.start <= slot && slot < r.end))?;
    Some((s.map_epoch, owner.id))
}

/// Every acknowledged event, read linearizably through every node (each routes by its map,
/// forwarding to each shard's leader): each stream holds exactly its acknowledged ids in order.
async fn check_linearizable_reads(cluster: &Cluster, acked: &BTreeMap<String, Vec<u128>>) {
    for id in cluster.live() {
        let mut client = StreamsClient::new(channel(&cluster.addr(id)).await.unwrap());
        for (stream, ids) in acked {
            let mut got: Vec<u128> = Vec::new();
            loop {
                let request = pb::ReadRequest {
                    stream: stream.clone(),
                    from_version: Some(got.len() as u64),
                    limit: 4096,
                    ..Default::default()
                };
                let events = client.read(request).await.unwrap().into_inner().events;
                if events.is_empty() {
                    break;
                }
                got.extend(
                    events
                        .iter()
                        .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128()),
                );
            }
            assert_eq!(&got, ids, "linearizable read of {stream} through node {id}");
        }
    }
}

/// The merged `$all` through node `id`: each acknowledged event once (copies stay out).
async fn check_merged_all(cluster: &Cluster, id: u64, acked: &BTreeMap<String, Vec<u128>>) {
    let mut client = StreamsClient::new(channel(&cluster.addr(id)).await.unwrap());
    let all = merged_all_ids(&mut client).await;
    let total: usize = acked.values().map(Vec::len).sum();
    let distinct: std::collections::BTreeSet<u128> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (total, total),
        "the merged $all read through node {id}"
    );
}

/// A shard split on a three-node cluster of two shards, under eight writers, asked of a node
/// that does not run moves: a third shard is added to the map, every node opens its group
/// (formed by the metadata leader, a replica on every node), and the upper half of shard 1
/// moves to it. Then a node is SIGKILLed and restarted: it opens the added shard from its
/// cached map. Every node routes by the same map and serves the new shard; every
/// acknowledged event is on every replica exactly once, reads linearizably through every
/// node, and once in the merged `$all`; each shard's logs, the new one's too, are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_shard_splits_online_under_writers() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three_nodes_of_shards(2).await;
    shard_leaders(&cluster).await;
    let (meta, _) = meta_view(&cluster, &[1, 2, 3]).await;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 8, &acked, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Shard 1 holds 2048..4096 (every writer's stream): 3072..4096 goes to shard 2.
    let asked = cluster.addr((meta % 3) + 1);
    let report = strata_json(&["cluster", "split-shard", "1", "--server", &asked]);
    assert_eq!(report["step"], "done", "{report}");
    assert_eq!(report["to"], 2, "{report}");
    assert_eq!(report["slots"], serde_json::json!([3072, 4096]), "{report}");
    assert!(report["copied_events"].as_u64().unwrap() > 0, "{report}");
    let leaders = shard_leaders(&cluster).await;
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    for id in 1..=3 {
        let s = status(&cluster.addr(id)).await.unwrap();
        assert_eq!(s.map_epoch, 3, "node {id}");
        let added = s.shards.iter().find(|g| g.id == 2).unwrap();
        assert_eq!(added.replicas.len(), 3, "node {id}: {added:?}");
        assert_eq!(
            (added.slots[0].start, added.slots[0].end),
            (3072, 4096),
            "node {id}"
        );
    }
    // A node other than the metadata leader, killed and restarted under the writers.
    let victim = (meta % 3) + 1;
    cluster.nodes.get_mut(&victim).unwrap().kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes.get_mut(&victim).unwrap().start();
    cluster.wait_up(victim).await;
    assert_eq!(shard_leaders(&cluster).await.len(), 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let reports = join(writers).await;
    let counts: Vec<(u64, u64)> = reports.iter().map(|r| (r.acks, r.errors)).collect();
    assert!(counts.iter().all(|(acks, _)| *acks > 0), "{counts:?}");
    eprintln!("writers (acks, errors retried): {counts:?}");
    let acked = acked.lock().unwrap().clone();
    let moved = acked
        .keys()
        .filter(|s| strata_proto::routing::slot_of(s, 4096) >= 3072)
        .count();
    assert!(moved >= 2, "streams on the new shard: {moved}");
    check_sharded_replicas(&cluster, &acked).await;
    check_linearizable_reads(&cluster, &acked).await;
    check_merged_all(&cluster, victim, &acked).await;
    check_logs_identical(&mut cluster, false);
    let dirs = shard_dirs(&cluster.nodes[&1].data);
    assert_eq!(dirs.len(), 3, "{dirs:?}");
}

/// Slot-range moves between the shards of a three-node cluster (one Raft group per shard)
/// under eight writers, through whichever node is asked (the metadata group's leader runs
/// them): one with nothing failing, then one each while the source shard's leader, the target
/// shard's leader and the metadata leader (the mover itself) are SIGKILLed and restarted.
/// Each move finishes or rolls back — never half-applied: every node ends with the same map,
/// each moved slot's streams take writes where it lands — and every acknowledged event is on
/// every replica exactly once at its version, the merged `$all` holds each once, and each
/// shard's logs are byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_ranges_move_between_replicated_shards_through_kills() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three_nodes_of_shards(4).await;
    shard_leaders(&cluster).await;
    meta_view(&cluster, &[1, 2, 3]).await;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 8, &acked, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut slots_moved = std::collections::BTreeSet::new();
    for kill in [
        MoveKill::Nothing,
        MoveKill::SourceLeader,
        MoveKill::TargetLeader,
        MoveKill::MetaLeader,
    ] {
        // A writer's slot not moved yet, and a target, such that the node killed is not the
        // mover (the metadata leader) unless the mover is what is killed.
        let leaders = shard_leaders(&cluster).await;
        let (meta, _) = meta_view(&cluster, &[1, 2, 3]).await;
        let mut chosen = None;
        for w in 0..8 {
            let slot = strata_proto::routing::slot_of(&format!("w-{w}"), 4096);
            if slots_moved.contains(&slot) {
                continue;
            }
            let (epoch, from) = owner_of(&cluster, 1, slot).await.unwrap();
            for to in (0..4).filter(|t| *t != from) {
                let fits = match kill {
                    MoveKill::SourceLeader => leaders[&from] != meta,
                    MoveKill::TargetLeader => leaders[&to] != meta,
                    _ => true,
                };
                if fits && chosen.is_none() {
                    chosen = Some((w, slot, epoch, from, to));
                }
            }
        }
        let Some((w, slot, epoch, from, to)) = chosen else {
            eprintln!("{kill:?}: no slot fits (leaders {leaders:?}, metadata leader {meta})");
            continue;
        };
        slots_moved.insert(slot);
        let range = format!("{slot}..{}", slot + 1);
        // Asked of a node that does not run moves, when there is one.
        let asked = cluster.addr((meta % 3) + 1);
        let mut move_args = vec!["cluster", "move-slots", &range, "--to"];
        let to_text = to.to_string();
        move_args.extend([to_text.as_str(), "--server", &asked]);
        if kill != MoveKill::Nothing {
            move_args.push("--no-wait");
        }
        let report = strata_json(&move_args);
        let victim = match kill {
            MoveKill::Nothing => {
                assert_eq!(report["step"], "done", "{report}");
                None
            }
            MoveKill::SourceLeader => Some(leaders[&from]),
            MoveKill::TargetLeader => Some(leaders[&to]),
            MoveKill::MetaLeader => Some(meta),
        };
        if let Some(victim) = victim {
            // Killed mid-copy (the shards' leaders) or once the source is fenced (the mover
            // itself, so its successor must lift the fence), or when the move has ended.
            let runner = cluster.addr(meta);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let m = status(&runner).await.and_then(|s| s.r#move);
                let now = match &m {
                    Some(m) if kill == MoveKill::MetaLeader => m.step != "copying",
                    Some(m) => m.step != "copying" || m.copied_events > 0,
                    None => true,
                };
                if now {
                    eprintln!("{kill:?}: killing node {victim} at {m:?}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            cluster.nodes.get_mut(&victim).unwrap().kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.nodes.get_mut(&victim).unwrap().start();
            cluster.wait_up(victim).await;
        }
        // Settled: every node routes the slot by one map, moved or not, and its writer goes on.
        let deadline = Instant::now() + Duration::from_secs(30);
        let settled = loop {
            let mut views = Vec::new();
            for id in 1..=3 {
                views.push(owner_of(&cluster, id, slot).await);
            }
            let agreed = views.iter().all(|v| v.is_some() && *v == views[0]);
            let agreed = agreed && !a_move_runs(&cluster).await;
            if let (true, Some((e, owner))) = (agreed, views[0]) {
                if e > epoch && owner == to || kill != MoveKill::Nothing && owner == from {
                    break (e, owner);
                }
            }
            if Instant::now() > deadline {
                let mut moves = Vec::new();
                for id in cluster.live() {
                    moves.push((id, status(&cluster.addr(id)).await.and_then(|s| s.r#move)));
                }
                panic!("{kill:?}: slot {slot} {from} → {to}: no settled map: {views:?}; moves: {moves:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let moved = if settled.1 == to {
            "moved"
        } else {
            "rolled back"
        };
        let mut why = Vec::new();
        for id in cluster.live() {
            if let Some(m) = status(&cluster.addr(id)).await.and_then(|s| s.r#move) {
                why.push(format!("node {id}: {} {}", m.step, m.error));
            }
        }
        eprintln!(
            "{kill:?}: slot {slot} {from} → {to}: {moved} (map epoch {}; {why:?})",
            settled.0
        );
        let before = acked
            .lock()
            .unwrap()
            .get(&format!("w-{w}"))
            .map_or(0, Vec::len);
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked
            .lock()
            .unwrap()
            .get(&format!("w-{w}"))
            .map_or(0, Vec::len)
            < before + 5
        {
            assert!(
                Instant::now() < deadline,
                "{kill:?}: writes to slot {slot} stopped after the move (map {settled:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reports = join(writers).await;
    assert!(reports.iter().all(|r| r.acks > 0));
    let acked = acked.lock().unwrap().clone();
    check_sharded_replicas(&cluster, &acked).await;
    // Linearizable reads through every node (each routes by the moved map) see every ack.
    check_linearizable_reads(&cluster, &acked).await;
    check_merged_all(&cluster, 3, &acked).await;
    check_logs_identical(&mut cluster, false);
}

/// `strata cluster move-shard` with bad input: each a precise error, the map unchanged; a
/// move whose target is down fails part way, is recorded in the map (another move of the shard
/// is refused naming it), and finishes when run again; a node holding replicas cannot be
/// removed by the bare call; calls through a node holding no replica of a shard reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_moves_refuse_bad_input_and_resume_after_a_failure() {
    let _serial = SERIAL.lock().await;
    let mut args = small_log_args();
    args.extend(
        [
            "--shards",
            "2",
            "--leader-balance-interval-ms",
            "0",
            "--learner-catch-up-timeout-ms",
            "1500",
        ]
        .map(String::from),
    );
    let mut cluster = four_with_node_4_added(args).await;
    let first = cluster.addr(1);
    let epoch = meta_view(&cluster, &[1, 2, 3, 4]).await.1;
    let move_shard = |shard: &str, from: &str, to: &str| {
        Command::new(STRATA)
            .args(["cluster", "move-shard", shard, "--from", from, "--to", to])
            .args(["--server", &first])
            .output()
            .unwrap()
    };
    for (shard, from, to, says) in [
        ("9", "1", "4", "no shard 9: the cluster has shards [0, 1]"),
        ("0", "1", "77", "node 77 is not a member of the cluster"),
        ("0", "4", "2", "node 4 holds no replica of shard 0"),
        ("0", "1", "2", "node 2 holds a replica of shard 0 already"),
        ("0", "1", "1", "node 1 is the node moved from"),
    ] {
        let out = move_shard(shard, from, to);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "move-shard {shard} --from {from} --to {to}: {stderr} {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        meta_view(&cluster, &[1, 2, 3, 4]).await.1,
        epoch,
        "the map changed"
    );

    // A good move: shard 0 leaves node 1, whose replica is deleted; calls through node 1
    // reach it on the others.
    let out = move_shard("0", "1", "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_deleted(&cluster, 1, 0).await;
    wait_replicas(&first, 0, &[2, 3, 4]).await;
    let map = strata_proto::routing::ClusterMap::even(4096, 2).unwrap();
    let stream = (0..)
        .map(|i| format!("via-1-{i}"))
        .find(|s| map.shard_of(s).0 == 0)
        .unwrap();
    let mut via_1 = StreamsClient::new(channel(&first).await.unwrap());
    for n in 0..5u128 {
        via_1
            .append(append_request(&stream, 900 + n))
            .await
            .unwrap();
    }
    let read = via_1
        .read(pb::ReadRequest {
            stream: stream.clone(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.events.len(), 5);
    assert_eq!(
        merged_all_ids(&mut via_1).await.len(),
        5,
        "$all through node 1"
    );

    // The bare removal of a node holding replicas is refused (the command line moves them).
    let client =
        strata_client::Client::new(strata_client::ClientConfig::new(vec![first.clone()])).unwrap();
    let e = client
        .cluster_remove_node(pb::RemoveNodeRequest { id: 4 })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("node 4 holds replicas of shards [0]"), "{e}");

    // A move whose target is down fails part way and stays recorded: another move of the
    // shard is refused, naming it; once the target is back, running it again finishes it.
    cluster.nodes.get_mut(&4).unwrap().stop();
    let out = move_shard("1", "1", "4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("run the move again to finish it"),
        "{stderr}"
    );
    let out = move_shard("1", "2", "4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a replica move of shard 1 from node 1 to node 4 is unfinished"),
        "{stderr}"
    );
    cluster.nodes.get_mut(&4).unwrap().start();
    cluster.wait_up(4).await;
    let out = move_shard("1", "1", "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_replicas(&first, 1, &[2, 3, 4]).await;
    wait_deleted(&cluster, 1, 1).await;
    assert_eq!(read_stream_ids(&mut via_1, &stream).await.len(), 5);
    check_logs_identical(&mut cluster, true);
}

/// Shard `shard` in `cluster status --json` output.
fn shard_view(view: &serde_json::Value, shard: u64) -> &serde_json::Value {
    view["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == shard)
        .unwrap()
}

/// Shard `shard`'s replicas in `cluster status --json` output, sorted.
fn replicas_of(view: &serde_json::Value, shard: u64) -> Vec<u64> {
    let mut r: Vec<u64> = shard_view(view, shard)["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    r.sort_unstable();
    r
}

/// Waits (10 s at most) until `cluster status` through `server` shows `want` as the replicas
/// of `shard`. A move answers once the metadata leader has the final map; the node asked
/// shows the membership its own replica has applied, which can lag a moment behind (seen in
/// CI, also after the moved-away replica was already deleted).
async fn wait_replicas(server: &str, shard: u64, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = strata_json(&["cluster", "status", "--json", "--server", server]);
        if replicas_of(&view, shard) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard}: want {want:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (30 s at most) until node `id` has deleted its replica of shard `shard`.
async fn wait_deleted(cluster: &Cluster, id: u64, shard: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard_dirs_by_id(&cluster.nodes[&id].data).contains_key(&shard) {
        assert!(Instant::now() < deadline, "node {id} kept shard {shard}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of `stream`'s events, read through `client`.
async fn read_stream_ids(client: &mut StreamsClient<Channel>, stream: &str) -> Vec<u128> {
    let read = client
        .read(pb::ReadRequest {
            stream: stream.to_string(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    read.events
        .iter()
        .map(|e| uuid::Uuid::parse_str(&e.id).unwrap().as_u128())
        .collect()
}

/// A replica move answered at once (`--no-wait`) shows its step at the metadata leader; one
/// whose target is down waits for it to catch up, and `--cancel` undoes it: the target leaves
/// the group, the map places the shard where it was, and the target deletes the replica it
/// opened once it is back. Cancelling again, or naming other nodes, is refused. The move then
/// runs to its end with a progress bar; nothing acknowledged is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_move_in_progress_shows_its_step_and_can_be_cancelled() {
    let _serial = SERIAL.lock().await;
    let mut w = UnderWriters::two_shards_on_four(3).await;
    let (cluster, first) = (&mut w.cluster, w.first.clone());
    let before = strata_json(&["cluster", "status", "--json", "--server", &first]);
    assert_eq!(replicas_of(&before, 0), vec![1, 2, 3], "{before}");

    cluster.nodes.get_mut(&4).unwrap().stop();
    let move_shard = |extra: &[&str]| {
        Command::new(STRATA)
            .args(["cluster", "move-shard", "0"])
            .args(extra)
            .args(["--server", &first])
            .output()
            .unwrap()
    };
    let out = move_shard(&["--from", "1", "--to", "4", "--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (meta_leader, _) = meta_view(cluster, &[1, 2, 3]).await;
    let runner = cluster.addr(meta_leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = strata_json(&["cluster", "status", "--json", "--server", &runner]);
        let moving = &shard_view(&view, 0)["moving"];
        assert_eq!(
            (&moving["from"], &moving["to"]),
            (&1.into(), &4.into()),
            "{view}"
        );
        if moving["step"] == "adding" {
            break;
        }
        assert!(Instant::now() < deadline, "never adding: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another move of the shard, or a cancel naming other nodes, is refused.
    for (extra, says) in [
        (
            &["--from", "2", "--to", "4"][..],
            "a replica move of shard 0 is in progress",
        ),
        (
            &["--cancel", "--to", "3"][..],
            "the replica move of shard 0 in progress is 1 → 4",
        ),
    ] {
        let out = move_shard(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{extra:?}: {stderr}"
        );
    }
    let out = move_shard(&["--cancel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = strata_json(&["cluster", "status", "--json", "--server", &runner]);
    assert!(shard_view(&view, 0)["moving"].is_null(), "{view}");
    assert_eq!(replicas_of(&view, 0), vec![1, 2, 3], "{view}");
    let out = move_shard(&["--cancel"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no replica move of shard 0 is in progress"),
        "{stderr}"
    );
    // Back, the target deletes the replica the cancelled move had it open.
    cluster.nodes.get_mut(&4).unwrap().start();
    cluster.wait_up(4).await;
    wait_deleted(cluster, 4, 0).await;

    // The move again, waited for: a progress bar, then done.
    let out = move_shard(&["--from", "1", "--to", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("shard 0: replica 1 → 4"), "{stderr}");
    wait_replicas(&first, 0, &[2, 3, 4]).await;
    wait_deleted(cluster, 1, 0).await;
    w.stop_and_check().await;
}

/// Two shards of three replicas on nodes 1–3 of four (node 4 added, holding none), with
/// writers through every node running for a second already.
struct UnderWriters {
    cluster: Cluster,
    /// Node 2's client address.
    first: String,
    acked: Acked,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<WriterReport>>,
}

impl UnderWriters {
    async fn two_shards_on_four(writers: usize) -> UnderWriters {
        let mut args = small_log_args();
        args.extend(["--shards", "2", "--leader-balance-interval-ms", "0"].map(String::from));
        let cluster = four_with_node_4_added(args).await;
        let first = cluster.addr(2);
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = spawn_writers(&cluster, writers, &acked, &stop);
        tokio::time::sleep(Duration::from_secs(1)).await;
        UnderWriters {
            cluster,
            first,
            acked,
            stop,
            writers,
        }
    }

    /// Stops the writers half a second on: some appends were acknowledged, each is on every
    /// replica of its shard exactly once, and each shard's logs are identical.
    async fn stop_and_check(mut self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::Relaxed);
        let reports = join(self.writers).await;
        assert!(reports.iter().map(|r| r.acks).sum::<u64>() > 0);
        let acked = self.acked.lock().unwrap().clone();
        check_sharded_replicas(&self.cluster, &acked).await;
        check_logs_identical(&mut self.cluster, true);
    }
}

/// Which node a replica-move kill test SIGKILLs mid-move.
#[derive(Debug, Clone, Copy)]
enum MoveVictim {
    /// The node the replica moves from.
    Source,
    /// The node the replica moves to.
    Target,
    /// The metadata group's leader, which runs the move.
    MetaLeader,
}

/// A replica move (shard 0, node 1 → node 4) under writers through every node, its
/// `victim` SIGKILLed half a second in and restarted: running the move again finishes it,
/// not one acknowledged event is lost or doubled, and each shard's logs are identical.
async fn a_replica_move_survives_a_kill_of(victim: MoveVictim) {
    let _serial = SERIAL.lock().await;
    let mut w = UnderWriters::two_shards_on_four(4).await;
    let (cluster, first) = (&mut w.cluster, w.first.clone());
    let killed = match victim {
        MoveVictim::Source => 1,
        MoveVictim::Target => 4,
        MoveVictim::MetaLeader => meta_view(cluster, &[1, 2, 3, 4]).await.0,
    };
    let move_args = ["cluster", "move-shard", "0", "--from", "1", "--to", "4"];
    let mut moving = Command::new(STRATA)
        .args(move_args)
        .args(["--server", &first])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes.get_mut(&killed).unwrap().kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes.get_mut(&killed).unwrap().start();
    cluster.wait_up(killed).await;
    // The first run ends one way or the other (its target back, or its runner gone).
    let _ = moving.wait();
    // Run again until it is done (the metadata group may be electing a leader at first).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(STRATA)
            .args(move_args)
            .args(["--server", &first])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Done: by this run, or by the first (then the source holds no replica any more).
        if out.status.success() || stderr.contains("node 1 holds no replica of shard 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move never finished: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_deleted(cluster, 1, 0).await;
    wait_replicas(&first, 0, &[2, 3, 4]).await;
    w.stop_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_move_survives_a_kill_of_its_source() {
    a_replica_move_survives_a_kill_of(MoveVictim::Source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_move_survives_a_kill_of_its_target() {
    a_replica_move_survives_a_kill_of(MoveVictim::Target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_move_survives_a_kill_of_the_metadata_leader() {
    a_replica_move_survives_a_kill_of(MoveVictim::MetaLeader).await;
}
