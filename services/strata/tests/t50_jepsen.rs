//! `strata jepsen` as CI runs it: short runs of the register workload under each nemesis on
//! its own three-node cluster, each required to end linearizable (exit 0, verdict on the last
//! line), with faults actually injected and operations of every kind in the history; and bad
//! usage refused with exit 2. The long version: `strata jepsen --time 600` per nemesis.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

fn jepsen(nemesis: &str, dir: &std::path::Path) -> (std::process::Output, serde_json::Value) {
    let out = Command::new(STRATA)
        .args(["jepsen", "--workload", "register", "--nemesis", nemesis])
        .args(["--time", "10", "--fault-secs", "2", "--clients", "4"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_stays_linearizable_under_partitions_kills_and_pauses() {
    let _serial = SERIAL.lock().await;
    for nemesis in ["partition", "kill", "pause"] {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = jepsen(nemesis, dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default().to_string();
        assert!(
            out.status.success() && last.contains(": linearizable"),
            "{nemesis}: {last}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{nemesis}: {last}");
        let faults = report["faults"].as_array().unwrap();
        assert!(faults.len() >= 2, "{nemesis}: {report}");
        assert!(report["ok"].as_u64().unwrap() > 50, "{nemesis}: {report}");
        let history = std::fs::read_to_string(dir.path().join("history.jsonl")).unwrap();
        for f in ["\"read\"", "\"write\"", "\"cas\""] {
            assert!(history.contains(f), "{nemesis}: no {f} in the history");
        }
        // After every fault began, a write was acknowledged again (the run ends healed).
        let recovered = report["recovery_ms"].as_array().unwrap();
        assert!(
            recovered.iter().all(serde_json::Value::is_number),
            "{nemesis}: {report}"
        );
    }
}

#[test]
fn bad_usage_is_refused_with_exit_2() {
    for (args, says) in [
        (&["--time", "0"][..], "--time"),
        (&["--nodes", "4"][..], "--nodes"),
        (&["--clients", "65"][..], "--clients"),
        (&["--fault-secs", "0"][..], "--fault-secs"),
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
