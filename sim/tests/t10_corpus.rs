//! The checker against the linearizability corpus (a copy of the shared set in
//! `sim/testdata/linearizability`, from Porcupine's test data, MIT): through the real
//! `strata-sim check-history` command, every verdict must equal MANIFEST.tsv's, as the last
//! line of output and as the exit status.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_strata-sim");

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/linearizability")
}

#[test]
fn every_verdict_in_the_manifest_is_reproduced() {
    let dir = corpus();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    for line in manifest.lines().skip(1).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (path, model, expected) = (cols[0], cols[1], cols[2]);
        let out = Command::new(SIM)
            .args(["check-history", "--model", model])
            .arg(dir.join(path))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        assert_eq!(
            last,
            expected,
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let code = match expected {
            "linearizable" => 0,
            _ => 1,
        };
        assert_eq!(out.status.code(), Some(code), "{path}");
        checked += 1;
    }
    assert_eq!(checked, 73, "the manifest lists 73 histories");
}

#[test]
fn an_exhausted_budget_answers_unknown_with_status_2() {
    let out = Command::new(SIM)
        .args(["check-history", "--model", "kv", "--states-max", "1"])
        .arg(corpus().join("kv/c10-ok.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unknown");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unreadable_history_is_an_error_not_a_verdict() {
    let out = Command::new(SIM)
        .args(["check-history", "--model", "kv"])
        .arg(corpus().join("etcd/etcd_000.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
