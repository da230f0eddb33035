//! The `strata` command against a real `strata dev` process: output, exit codes, a clean stop
//! on SIGTERM, and SIGKILL under load followed by a restart on the same directory that still
//! has every acknowledged append.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Dev {
    child: Child,
    addr: String,
}

impl Dev {
    fn start(data: &Path, port: u16) -> Dev {
        Dev::start_with_metrics(data, port, "127.0.0.1:0")
    }

    fn start_with_metrics(data: &Path, port: u16, metrics: &str) -> Dev {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(STRATA)
            .args(["dev", "--data"])
            .arg(data)
            .args(["--listen", &addr, "--metrics", metrics])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dev = Dev { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dev.run(&["stream-info", "probe"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "strata dev did not come up on {}",
                dev.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(STRATA)
            .args(args)
            .env("STRATA_SERVER", &self.addr)
            .output()
            .unwrap()
    }

    fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn commands_print_json_lines_and_exit_with_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path(), free_port());
    let ok = dev.run(&[
        "append",
        "orders-1",
        "--type",
        "Placed",
        "--data",
        r#"{"total": 42}"#,
        "--expected",
        "no-stream",
        "--id",
        "6d8f7894-ca6c-4b3a-a8dd-19af7c2b7c7d",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let first = &json(&ok)[0];
    assert_eq!(first["streams"][0]["first_version"], 0);
    // The same id again: an idempotent retry, the original answer.
    let retry = dev.run(&[
        "append",
        "orders-1",
        "--type",
        "Placed",
        "--data",
        r#"{"total": 42}"#,
        "--expected",
        "no-stream",
        "--id",
        "6d8f7894-ca6c-4b3a-a8dd-19af7c2b7c7d",
    ]);
    assert!(retry.status.success());
    assert_eq!(json(&retry)[0]["deduplicated"], true);
    assert_eq!(json(&retry)[0]["position"], first["position"]);
    // A wrong expected version: exit 3, the actual version on stderr.
    let conflict = dev.run(&[
        "append",
        "orders-1",
        "--expected",
        "no-stream",
        "--data",
        "{}",
    ]);
    assert_eq!(conflict.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("actual version: 0"));
    // Server-side rejection: exit 1 with the server's message.
    let bad = dev.run(&["append", "bad\u{1}name", "--data", "{}"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("`stream`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // Bad usage: exit 2, nothing sent.
    assert_eq!(
        dev.run(&["append", "orders-1", "--expected", "soon"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        dev.run(&["append", "orders-1", "--data", "{not json"])
            .status
            .code(),
        Some(2)
    );
    let read = dev.run(&["read", "orders-1"]);
    let events = json(&read);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["total"], 42);
    assert_eq!(events[0]["type"], "Placed");
    let info = json(&dev.run(&["stream-info", "orders-1"]));
    assert_eq!(info[0]["current_version"], 0);
    let all = json(&dev.run(&["read-all"]));
    assert_eq!(all.len(), 2, "one event and the next position");
    assert!(all[1]["next_position"].as_u64().unwrap() > 0);
    // As-of reads: by version, by position, by time (RFC 3339), and a time that is no time.
    let as_of = |flag: &str, value: &str| json(&dev.run(&["read", "orders-1", flag, value])).len();
    assert_eq!(as_of("--as-of-version", "0"), 1);
    let position = events[0]["position"].as_u64().unwrap().to_string();
    assert_eq!(as_of("--as-of-position", &position), 1);
    assert_eq!(as_of("--as-of", "1970-01-01T00:00:01Z"), 0);
    // A time far ahead of the server's clock cannot be closed: refused, naming the field.
    let ahead = dev.run(&["read", "orders-1", "--as-of", "2999-01-01T00:00:00Z"]);
    assert_eq!(ahead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ahead.stderr).contains("as_of.timestamp_us"));
    let bad = dev.run(&["read", "orders-1", "--as-of", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
    let bad = dev.run(&["dev", "--metrics", "banana"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HOST:PORT or `off`"));
    // A cluster whose ports would run past 65535 is refused before any node starts.
    let bad = dev.run(&["dev", "--nodes", "3", "--listen", "127.0.0.1:65534"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("past 65535"));
    // SIGTERM: a clean stop.
    let status = dev.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    // The data directory checks clean.
    let check = Command::new(STRATA)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success());
    assert_eq!(json(&check)[0]["records"], 1);
}

#[test]
fn sigkill_under_load_then_restart_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut dev = Dev::start(dir.path(), port);
    // Four concurrent writers through the CLI would be slow; use appends in a loop from
    // threads, each recording the ids the server acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = dev.addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                    i += 1;
                    let id = uuid::Uuid::from_u128(((w as u128) << 64) | i as u128).to_string();
                    let out = Command::new(STRATA)
                        .args([
                            "append",
                            &format!("load-{w}"),
                            "--id",
                            &id,
                            "--data",
                            &format!("{{\"i\":{i}}}"),
                        ])
                        .env("STRATA_SERVER", &addr)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        acked.push(id);
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    dev.signal(libc::SIGKILL);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<Vec<String>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        acked.iter().all(|a| !a.is_empty()),
        "every writer got acknowledgements before the kill"
    );
    // Restarted without its metrics endpoint (`--metrics off`).
    let dev = Dev::start_with_metrics(dir.path(), port, "off");
    for (w, ids) in acked.iter().enumerate() {
        let events = json(&dev.run(&["read", &format!("load-{w}"), "--limit", "4096"]));
        let stored: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        for id in ids {
            assert!(
                stored.contains(&id.as_str()),
                "acknowledged append {id} lost"
            );
        }
        // Versions are contiguous and nothing is there twice.
        assert!(events
            .iter()
            .enumerate()
            .all(|(v, e)| e["version"] == v as u64));
    }
}

#[test]
fn snapshots_state_diff_metadata_and_deletion_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), free_port());
    let ok = |args: &[&str]| {
        let out = dev.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out)
    };
    ok(&[
        "append",
        "acct-1",
        "--data",
        r#"{"balance": 10, "owner": "ann"}"#,
    ]);
    ok(&["append", "acct-1", "--data", r#"{"balance": 25}"#]);
    ok(&[
        "snapshot",
        "acct-1",
        "--version",
        "1",
        "--data",
        r#"{"balance": 25, "owner": "ann"}"#,
    ]);
    ok(&[
        "append",
        "acct-1",
        "--data",
        r#"{"owner": null, "city": "x"}"#,
    ]);
    // State: the snapshot at 1 and the one event after it.
    let state = ok(&["state", "acct-1"]);
    assert_eq!(state[0]["snapshot"]["version"], 1);
    assert_eq!(state[0]["version"], 2);
    assert_eq!(state.len(), 2);
    let before = ok(&["state", "acct-1", "--as-of-version", "0"]);
    assert!(before[0]["snapshot"].is_null());
    // Diff from version 0 to 2: the two events after 0, then the structural diff of the folded
    // JSON states ({"balance":10,"owner":"ann"} → {"balance":25,"city":"x"}).
    let diff = ok(&["diff", "acct-1", "--from", "version:0", "--to", "version:2"]);
    assert_eq!(diff.len(), 3);
    let ops = diff[2]["diff"].as_array().unwrap();
    assert!(ops.contains(
        &serde_json::json!({"op": "replace", "path": "/balance", "old": 10, "value": 25})
    ));
    assert!(ops.contains(&serde_json::json!({"op": "remove", "path": "/owner", "old": "ann"})));
    assert!(ops.contains(&serde_json::json!({"op": "add", "path": "/city", "value": "x"})));
    assert_eq!(ops.len(), 3);
    // A bad point is a usage error.
    assert_eq!(
        dev.run(&["diff", "acct-1", "--from", "soon", "--to", "version:1"])
            .status
            .code(),
        Some(2)
    );
    // Metadata, then soft and hard deletion.
    ok(&["stream-meta", "acct-1", "--max-count", "1"]);
    assert_eq!(ok(&["read", "acct-1"]).len(), 1);
    let info = ok(&["stream-info", "acct-1"]);
    assert_eq!(info[0]["first_visible_version"], 2);
    assert_eq!(info[0]["metadata"]["max_count"], 1);
    ok(&["delete", "acct-1"]);
    assert!(ok(&["read", "acct-1"]).is_empty());
    assert_eq!(ok(&["stream-info", "acct-1"])[0]["deleted"], true);
    ok(&["delete", "acct-1", "--hard"]);
    let refused = dev.run(&["append", "acct-1", "--data", "{}"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("deleted"));
    let policies = ok(&["snapshot-policy", "acct-", "--every", "100"]);
    assert_eq!(
        policies[0],
        serde_json::json!({"prefix": "acct-", "every": 100})
    );
}

#[test]
fn the_null_server_answers_appends_and_stores_nothing() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut null = Dev {
        child: Command::new(STRATA)
            .args(["bench", "null-server", "--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        addr,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !null.run(&["cluster", "status"]).status.success() {
        assert!(Instant::now() < deadline, "the null server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `strata bench append` runs against it as against a node, pipelined and not, and reports
    // the server's CPU per event from its status.
    for extra in [&["--pipeline", "8"][..], &[][..]] {
        let mut args = vec!["bench", "append", "--clients", "2", "--duration", "1"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--event-bytes", "64"]);
        let out = null.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .expect("a JSON summary line");
        assert!(line["appends"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert!(line["server_cpu_us_per_event"].is_number(), "{line}");
    }
    // It keeps nothing, and says so.
    let read = null.run(&["read", "anything"]);
    assert!(!read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("stores nothing"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(
        null.signal(libc::SIGTERM).success(),
        "SIGTERM is a clean stop"
    );
}
