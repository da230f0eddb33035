//! The event store's HTTP face (`strata serve gateway`) against a real `strata dev` node:
//! appends with expected versions (a wrong one is 409 with the actual version, nothing
//! written), idempotency keys (a retry under the same key with another correlation id is
//! answered with the first outcome, once; another body under it is 409), reads forwards and
//! backwards in pages, time travel by timestamp and by version, stream info, correlation ids in
//! the events' metadata, bad input refused with precise 4xx answers, and a live subscription as
//! server-sent events resumed after `Last-Event-ID` with no gap and no duplicate.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAM: &str = "/api/v1/streams/order-1";

/// Opens a server-sent-event subscription at `path`.
async fn subscribe(port: u16, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads from `s` into `seen` until it holds `needle` (true) or `within` passes (false).
async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 16 * 1024];
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return false,
        }
    }
    true
}

/// The versions (`id:` lines) in a server-sent-event text.
fn ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

async fn post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let (code, _, text) = http(port, "POST", path, headers, body).await;
    (code, json(&text))
}

async fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, _, text) = http(port, "GET", path, &[], "").await;
    (code, json(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_appends_reads_travels_in_time_and_streams_events() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (store_port, port) = (free_port(), free_port());
    let _store = dev_store(dir.path(), store_port, &[], None);
    wait_http(store_port).await;
    let _gateway = Proc(
        Command::new(STRATA)
            .args([
                "serve",
                "gateway",
                "--listen",
                &addr(port),
                "--store",
                &addr(store_port),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_http(port).await;
    let (code, health) = get(port, "/health").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["details"]["subscriptions_open"], 0);

    // Two events to a new stream, atomically.
    let two = r#"{"expected_version": "no_stream", "events": [
        {"type": "created", "data": {"n": 1}},
        {"type": "paid", "data": {"n": 2}, "metadata": {"by": "t70"}}]}"#;
    let (code, r) = post(port, STREAM, &[("x-request-id", "req-a")], two).await;
    assert_eq!(
        (code, &r["first_version"], &r["last_version"]),
        (201, &0.into(), &1.into()),
        "{r}"
    );
    // A wrong expected version: 409 with the actual one; nothing written.
    let stale = r#"{"expected_version": 0, "events": [{"type": "x", "data": 0}]}"#;
    let (code, r) = post(port, STREAM, &[], stale).await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(
        (&r["code"], &r["actual_version"]),
        (&"wrong_expected_version".into(), &1.into())
    );

    // Under an idempotency key: once, whatever the retries' correlation ids.
    let third = r#"{"events": [{"type": "shipped", "data": {"n": 3}}]}"#;
    let key = ("idempotency-key", "ship-order-1");
    let (code, first) = post(port, STREAM, &[key, ("x-request-id", "req-b")], third).await;
    assert_eq!((code, &first["first_version"]), (201, &2.into()), "{first}");
    let (code, again) = post(port, STREAM, &[key, ("x-request-id", "req-c")], third).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["deduplicated"], true);
    assert_eq!(
        (&again["first_version"], &again["ids"]),
        (&2.into(), &first["ids"])
    );
    let other = r#"{"events": [{"type": "shipped", "data": {"n": 4}}]}"#;
    let (code, r) = post(port, STREAM, &[key], other).await;
    assert_eq!(
        (code, &r["code"]),
        (409, &"idempotency_key_reused".into()),
        "{r}"
    );

    // Reads: pages forwards and backwards, the caller's correlation id in the metadata.
    let (code, page) = get(port, &format!("{STREAM}?limit=2")).await;
    assert_eq!(code, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!((events.len(), &page["next"]), (2, &2.into()));
    assert_eq!(events[0]["data"]["n"], 1);
    assert_eq!(
        events[1]["metadata"],
        serde_json::json!({"by": "t70", "correlation_id": "req-a"})
    );
    let (_, rest) = get(port, &format!("{STREAM}?from=2")).await;
    let rest = rest["events"].as_array().unwrap().clone();
    assert_eq!(
        rest.len(),
        1,
        "three events in all: the retry wrote nothing"
    );
    assert_eq!(rest[0]["metadata"]["correlation_id"], "req-b");
    let (_, back) = get(port, &format!("{STREAM}?direction=backwards&limit=1")).await;
    assert_eq!(
        (&back["events"][0]["version"], &back["next"]),
        (&2.into(), &1.into())
    );
    // Time travel: as of the second event's timestamp, and as of version 0.
    let at = events[1]["timestamp"].as_str().unwrap();
    let (code, then) = get(port, &format!("{STREAM}?as_of={at}")).await;
    assert_eq!(code, 200, "{then}");
    assert_eq!(then["events"].as_array().unwrap().len(), 2, "{then}");
    assert!(then["closed_through"].is_string(), "{then}");
    let (_, v0) = get(port, &format!("{STREAM}?as_of_version=0")).await;
    assert_eq!(v0["events"].as_array().unwrap().len(), 1);
    let (code, info) = get(port, &format!("{STREAM}/info")).await;
    assert_eq!(
        (code, &info["version"], &info["exists"]),
        (200, &2.into(), &true.into()),
        "{info}"
    );

    // Bad input: a precise 4xx, nothing written.
    for (body, says) in [
        ("{not json", "the body's JSON"),
        (
            r#"{"events": [{"type": "t"}], "extra": 1}"#,
            "unknown field",
        ),
        (r#"{"events": []}"#, "at least one"),
        (r#"{"events": [{"type": "t", "id": "nope"}]}"#, "not a UUID"),
        (
            r#"{"expected_version": "maybe", "events": [{"type": "t"}]}"#,
            "expected_version",
        ),
        (
            r#"{"events": [{"type": "t", "metadata": [1]}]}"#,
            "a JSON object",
        ),
    ] {
        let (code, r) = post(port, STREAM, &[], body).await;
        assert_eq!(code, 400, "{body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{body}: {r}");
    }
    for (query, says) in [
        ("limit=0", "limit"),
        ("direction=sideways", "direction"),
        ("as_of=yesterday", "RFC 3339"),
        ("as_of_version=1&as_of_position=3", "one at most"),
    ] {
        let (code, r) = get(port, &format!("{STREAM}?{query}")).await;
        assert_eq!(code, 400, "{query}: {r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{query}: {r}");
    }
    let (code, r) = get(port, "/api/v1/streams/no-such-stream").await;
    assert_eq!((code, &r["code"]), (404, &"not_found".into()), "{r}");
    // A body over the limit (9 MiB): 413 (the server may close before it all went out).
    let big = TcpStream::connect(addr(port)).await.unwrap();
    let (mut from, mut to) = big.into_split();
    let len = 9 * 1024 * 1024;
    let head = format!(
        "POST {STREAM} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    let sender = tokio::spawn(async move {
        let _ = to.write_all(head.as_bytes()).await;
        let _ = to.write_all(&vec![b' '; len]).await;
        to
    });
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), from.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(sender);
    let (_, info) = get(port, &format!("{STREAM}/info")).await;
    assert_eq!(info["version"], 2, "bad input wrote nothing");

    // A live subscription: the past, caught up, then what comes.
    let sub_path = format!("{STREAM}/subscribe");
    let mut sub = subscribe(port, &sub_path, &[]).await;
    let mut seen = String::new();
    assert!(
        read_until(&mut sub, &mut seen, "caught-up", Duration::from_secs(10)).await,
        "{seen}"
    );
    assert_eq!(ids(&seen), [0, 1, 2]);
    let (_, health) = get(port, "/health").await;
    assert_eq!(health["details"]["subscriptions_open"], 1);
    let fourth = r#"{"events": [{"type": "delivered", "data": {"n": 4}}]}"#;
    assert_eq!(post(port, STREAM, &[], fourth).await.0, 201);
    assert!(
        read_until(
            &mut sub,
            &mut seen,
            "\"delivered\"",
            Duration::from_secs(10)
        )
        .await,
        "{seen}"
    );
    assert_eq!(ids(&seen), [0, 1, 2, 3]);
    drop(sub);
    // Resumed after the last id received: no gap, no duplicate.
    let fifth = r#"{"events": [{"type": "reviewed", "data": {"n": 5}}]}"#;
    assert_eq!(post(port, STREAM, &[], fifth).await.0, 201);
    let mut again = subscribe(port, &sub_path, &[("last-event-id", "2")]).await;
    let mut resumed = String::new();
    assert!(
        read_until(
            &mut again,
            &mut resumed,
            "caught-up",
            Duration::from_secs(10)
        )
        .await
    );
    assert_eq!(ids(&resumed), [3, 4], "{resumed}");
    let bad = subscribe(port, &sub_path, &[("last-event-id", "yesterday")]).await;
    let mut refused = String::new();
    let mut bad = bad;
    read_until(&mut bad, &mut refused, "\r\n", Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
}
