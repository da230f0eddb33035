//! `strata jepsen` as CI runs it (about 6 minutes): a short run of each workload (register,
//! list-append, bank, stream, follower) under every nemesis class in turn (`--nemesis all`),
//! each on its own three-node cluster and required to end with a clean verdict (exit 0,
//! verdict on the last line), with every class's fault injected, operations of every kind in
//! the history and a report.html; power cuts of the whole cluster on lossy disks; runs against
//! a cluster the test started (`--target`); each planted bug caught with a witness; bad usage
//! refused with exit 2. The long version: `bash benches/jepsen.sh` (every workload under every
//! nemesis, 120 s each).

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use strata_client::{Client, ClientConfig};

fn jepsen(
    workload: &str,
    nemesis: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let out = Command::new(STRATA)
        .args(["jepsen", "--workload", workload, "--nemesis", nemesis])
        .args(if extra.contains(&"--time") {
            &[][..]
        } else {
            &["--time", "10", "--fault-secs", "2", "--clients", "4"][..]
        })
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    let report = std::fs::read(dir.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (out, report)
}

/// A short run of `workload` under `nemesis`: it must end with the clean verdict, faults
/// injected, operations of each kind `fs` in the history, a report.html, and writes
/// acknowledged again after every fault. Returns the report.
fn clean_run(
    workload: &str,
    nemesis: &str,
    extra: &[&str],
    verdict: &str,
    fs: &[&str],
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = jepsen(workload, nemesis, dir.path(), extra);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        out.status.success() && last.contains(&format!(": {verdict} (")),
        "{workload} {nemesis}: {last}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{workload} {nemesis}: {last}");
    let faults = report["faults"].as_array().unwrap();
    assert!(faults.len() >= 2, "{nemesis}: {report}");
    assert!(report["ok"].as_u64().unwrap() > 50, "{nemesis}: {report}");
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).unwrap();
    for f in fs {
        assert!(history.contains(f), "{nemesis}: no {f} in the history");
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains(&format!(">{verdict}</span>")),
        "{nemesis}: report.html"
    );
    let recovered = report["recovery_ms"].as_array().unwrap();
    assert!(
        recovered.iter().all(serde_json::Value::is_number),
        "{nemesis}: {report}"
    );
    report
}

/// The classes of a report's faults, in order.
fn classes(report: &serde_json::Value) -> Vec<&str> {
    report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["class"].as_str().unwrap())
        .collect()
}

/// Every nemesis class, one after the other in one run (`--nemesis all`, faults of 2 s after
/// 2 s healthy: six in 24 s, and slack for the faults' own steps), for `workload`; each class
/// must have acted.
fn clean_under_every_class(workload: &str, verdict: &str, fs: &[&str]) {
    let extra = ["--time", "27", "--fault-secs", "2", "--clients", "4"];
    let report = clean_run(workload, "all", &extra, verdict, fs);
    let classes = classes(&report);
    let every = [
        "partition",
        "kill",
        "pause",
        "membership",
        "regions",
        "clock",
    ];
    assert_eq!(classes, every, "{workload}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_stays_linearizable_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    let fs = ["\"read\"", "\"write\"", "\"cas\""];
    clean_under_every_class("register", "linearizable", &fs);
    // The README's example, short.
    clean_run("register", "partition", &[], "linearizable", &fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_transactions_stay_strict_serializable_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    let fs = ["[\"r\",", "[\"append\","];
    clean_under_every_class("list-append", "valid", &fs);
    // The partitions `partition` picks among at random, each for sure.
    for nemesis in ["bridge", "one-way"] {
        clean_run("list-append", nemesis, &[], "valid", &fs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_conserves_money_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    clean_under_every_class("bank", "valid", &["\"read\"", "\"transfer\""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_linearizable_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    clean_under_every_class("stream", "linearizable", &["\"append\"", "\"read\""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_stay_prefixes_and_closed_reads_final_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    clean_under_every_class(
        "follower",
        "valid",
        &["\"read\"", "\"read-as-of\"", "\"append\""],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts_of_the_whole_cluster() {
    let _serial = SERIAL.lock().await;
    // Every node killed at once, each on a disk that loses what it had not synced.
    clean_run(
        "register",
        "kill-all",
        &["--lose-unsynced"],
        "linearizable",
        &["\"write\""],
    );
}

/// A cluster of three shards (`--shards 3`): single streams spread over the shards, the
/// transactional workloads' streams in one (they share a routing key); every class but
/// membership in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_clusters_stay_consistent_under_every_nemesis_class() {
    let _serial = SERIAL.lock().await;
    let extra = [
        "--shards",
        "3",
        "--time",
        "23",
        "--fault-secs",
        "2",
        "--clients",
        "4",
    ];
    for (workload, verdict, fs) in [
        ("register", "linearizable", &["\"write\"", "\"cas\""][..]),
        ("stream", "linearizable", &["\"append\""][..]),
        ("list-append", "valid", &["[\"append\","][..]),
        ("bank", "valid", &["\"transfer\""][..]),
    ] {
        let report = clean_run(workload, "all", &extra, verdict, fs);
        assert_eq!(report["shards"], 3, "{report}");
        let classes = classes(&report);
        assert_eq!(
            classes,
            ["partition", "kill", "pause", "regions", "clock"],
            "{workload}: {report}"
        );
    }
}

/// Against a cluster it did not start (`--target`): a real three-node cluster started here;
/// runs one after another on it, each clean. Each run's streams are its own (`jepsen-SEED-…`):
/// a second register run on the first one's stream would read values its history never
/// wrote, and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_a_given_cluster_keep_to_streams_of_their_own() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(3, false, Vec::new());
    cluster.peer_args(|_, _, peer| addr(peer.port));
    cluster.start_all().await;
    cluster.leader(std::time::Duration::from_secs(20)).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let target = addrs.join(",");
    for (workload, verdict, seed) in [
        ("register", "linearizable", "11"),
        ("register", "linearizable", "12"),
        ("bank", "valid", "13"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let extra = ["--target", &target, "--seed", seed, "--time", "5"];
        let (out, report) = jepsen(workload, "none", dir.path(), &extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            out.status.success() && last.contains(&format!(": {verdict} (")),
            "{workload} seed {seed}: {last}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(report["target"], serde_json::json!(addrs));
        assert!(report["faults"].as_array().unwrap().is_empty());
        assert!(report["ok"].as_u64().unwrap() > 20, "{report}");
        // Nothing of the run's own: no node directory under the run's.
        assert!(!dir.path().join("node-1").exists());
    }
    let client = Client::new(ClientConfig::new(addrs)).unwrap();
    for stream in [
        "jepsen-11-register",
        "jepsen-12-register",
        "jepsen-13-{bank}-0",
    ] {
        let read = client.read_stream(stream, None, 1).await;
        assert!(read.is_ok_and(|events| events.len() == 1), "{stream}");
    }
    let shared = client.read_stream("jepsen-register", None, 1).await;
    assert!(!matches!(shared, Ok(events) if !events.is_empty()));
}

/// Runs `workload` under `nemesis` with `bug` planted, up to `attempts` times, until a run
/// ends with a violation (exit 1, the bad verdict on the last line); returns the attempt.
fn caught(bug: &str, workload: &str, nemesis: &str, extra: &[&str], attempts: u32) -> u32 {
    for attempt in 1..=attempts {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--planted-bug", bug];
        args.extend_from_slice(extra);
        let (out, report) = jepsen(workload, nemesis, dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let verdict = report["verdict"].as_str().unwrap_or_default().to_string();
        assert_eq!(report["planted_bug"], bug, "{stderr}");
        if out.status.code() == Some(1)
            && matches!(verdict.as_str(), "not-linearizable" | "invalid")
        {
            let witnesses = report["anomalies"].as_array().unwrap();
            assert!(!witnesses.is_empty(), "{bug}: no witness: {report}");
            // Reduced: a few operations, not the history.
            let lines = witnesses[0].as_str().unwrap().lines().count();
            assert!(lines <= 40, "{bug}: a witness of {lines} lines: {report}");
            eprintln!(
                "{bug}: caught by {workload} under {nemesis}, attempt {attempt}: {}",
                witnesses[0]
            );
            return attempt;
        }
        assert_eq!(out.status.code(), Some(0), "{bug}: {stderr}");
    }
    panic!("{bug}: not caught by {workload} under {nemesis} in {attempts} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_planted_bug_is_caught() {
    let _serial = SERIAL.lock().await;
    // Two writers both pass a compare-and-set's version check: two cas of one value succeed.
    caught("skip-expected-version", "register", "none", &[], 1);
    // ...and two transfers both spend the same balance: money appears or vanishes.
    caught("skip-expected-version", "bank", "none", &[], 1);
    // ...and two appends expecting one version both land: the stream model sees it.
    caught("skip-expected-version", "stream", "none", &[], 1);
    // A deposed leader, cut off, keeps answering its clients' reads from its stale state.
    // (Faults of 4 s: the rest need 1 to 2 s to elect a leader and write; 10 clients, so the
    // deposed leader's clients read often enough between their stuck writes.)
    let long = ["--time", "16", "--fault-secs", "4", "--clients", "10"];
    caught(
        "read-without-read-index",
        "register",
        "isolate-leader",
        &long,
        3,
    );
    // Appends acknowledged before their fdatasync die with a whole-cluster power cut.
    caught(
        "ack-before-fsync",
        "register",
        "kill-all",
        &["--lose-unsynced"],
        3,
    );
}

#[test]
fn bad_usage_is_refused_with_exit_2() {
    for (args, says) in [
        (&["--time", "0"][..], "--time"),
        (&["--nodes", "4"][..], "--nodes"),
        (&["--clients", "65"][..], "--clients"),
        (&["--fault-secs", "0"][..], "--fault-secs"),
        (
            &["--planted-bug", "no-such-bug"][..],
            "--planted-bug: one of",
        ),
        (&["--shards", "9"][..], "--shards: 1 to 8"),
        (
            &["--shards", "2", "--nemesis", "membership"][..],
            "one shard only",
        ),
        // --target: faults need the run's own nodes; addresses must parse.
        (&["--target", "127.0.0.1:1"][..], "only --nemesis none"),
        (
            &["--target", "localhost", "--nemesis", "none"][..],
            "is not HOST:PORT",
        ),
        (
            &["--target", "h:0", "--nemesis", "none"][..],
            "is not HOST:PORT",
        ),
    ] {
        let out = Command::new(STRATA)
            .arg("jepsen")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
