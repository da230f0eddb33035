//! The services' shared shape, through the consistency service (`strata serve consistency`)
//! against a real `strata dev` node: settings from a TOML file, `/health` (200 while the
//! store answers, 503 once it is gone), `/metrics`, correlation ids (taken from
//! `X-Request-Id`, answered, in the JSON logs, in the metadata of the event the run is
//! recorded with, and in the gRPC metadata of the call recording it: the store's log names it), bad input refused with 400 naming the field, one run at a time (409), a
//! run followed to its report (JSON and HTML), and a graceful stop on SIGTERM.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::*;
use common::*;
use strata_client::{pb, Client, ClientConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consistency_service_runs_jepsen_over_http_in_the_services_shape() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (store_port, port) = (free_port(), free_port());
    // The store logs each call with the caller's correlation id (at debug).
    let store_log = dir.path().join("store.log");
    let mut store = dev_store(
        dir.path(),
        store_port,
        &[("STRATA_LOG", "info,strata_shard::service=debug")],
        Some(&store_log),
    );
    wait_http(store_port).await;
    let config = dir.path().join("consistency.toml");
    let runs = dir.path().join("runs");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nstore = [\"{}\"]\n[consistency]\nruns_dir = \"{}\"\n",
            addr(port),
            addr(store_port),
            runs.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("service.log");
    let mut service = Proc(
        Command::new(STRATA)
            .args(["serve", "consistency", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_http(port).await;

    let (code, _, body) = http(port, "GET", "/health", &[], "").await;
    let health = json(&body);
    assert_eq!(code, 200, "{body}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"]["reachable"], true);
    assert_eq!(health["details"]["active_run"], serde_json::Value::Null);

    // Bad input: 400 naming the field, nothing started.
    let (code, _, body) = http(port, "POST", "/runs", &[], r#"{"nemesis":"nope"}"#).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nemesis"), "{body}");
    let (code, _, body) = http(port, "POST", "/runs", &[], r#"{"time":0}"#).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("--time"), "{body}");
    let (code, _, body) = http(port, "POST", "/runs", &[], r#"{"tiem":5}"#).await;
    assert!(code == 400 || code == 422, "{code}: {body}");

    // A run, under a correlation id.
    let (code, head, body) = http(
        port,
        "POST",
        "/runs",
        &[("x-request-id", "jepsen-run-t60")],
        r#"{"workload":"register","nemesis":"pause","time":6,"fault_secs":2,"clients":3}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert!(head.contains("x-request-id: jepsen-run-t60"), "{head}");
    let id = json(&body)["id"].as_u64().unwrap();
    let (code, _, body) = http(port, "POST", "/runs", &[], "{}").await;
    assert_eq!(code, 409, "{body}");
    let (code, _, _) = http(port, "GET", &format!("/runs/{id}/report"), &[], "").await;
    assert_eq!(code, 404);
    let mut run = serde_json::Value::Null;
    for _ in 0..120 {
        let (_, _, body) = http(port, "GET", &format!("/runs/{id}"), &[], "").await;
        run = json(&body);
        if run["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(run["verdict"], "linearizable", "{run}");
    let (code, _, body) = http(port, "GET", &format!("/runs/{id}/report"), &[], "").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["verdict"], "linearizable");
    let (code, _, body) = http(port, "GET", &format!("/runs/{id}/report.html"), &[], "").await;
    assert_eq!(code, 200);
    assert!(body.contains("<svg"), "no plot");
    let (_, _, body) = http(port, "GET", "/runs", &[], "").await;
    assert_eq!(json(&body)["runs"][0]["id"], id);

    // Recorded in the store, with the correlation id in the event's metadata.
    let client = Client::new(ClientConfig::new([addr(store_port)])).unwrap();
    let page = client
        .read(pb::ReadRequest {
            stream: "consistency-runs".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let event = page.events.last().expect("the run's event");
    assert_eq!(event.r#type, "run-finished");
    let meta: serde_json::Value = serde_json::from_slice(&event.metadata).unwrap();
    assert_eq!(meta["correlation_id"], "jepsen-run-t60");
    // ...and the call that recorded it carried the id: the store's log of it names it.
    let logged = without_colours(&std::fs::read_to_string(&store_log).unwrap());
    assert!(
        logged
            .lines()
            .any(|l| l.contains("correlation_id=jepsen-run-t60") && l.contains("Append")),
        "no call with the correlation id in the store's log: {}",
        logged
            .lines()
            .filter(|l| l.contains("rpc"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
    assert_eq!(data["verdict"], "linearizable");

    let (_, _, metrics) = http(port, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains(
            "strata_http_requests_total{service=\"consistency\",route=\"/runs\",status=\"202\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_consistency_runs_total{verdict=\"linearizable\"} 1"),
        "{metrics}"
    );

    // JSON logs, the request's correlation id on its lines.
    let logs = std::fs::read_to_string(&log).unwrap();
    let tagged = logs
        .lines()
        .filter(|l| l.contains("\"correlation_id\":\"jepsen-run-t60\""))
        .count();
    assert!(tagged >= 1, "{logs}");
    assert!(
        logs.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('{')),
        "{logs}"
    );

    // The store gone: unhealthy.
    drop(store.0.kill());
    let _ = store.0.wait();
    let (code, _, body) = http(port, "GET", "/health", &[], "").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(json(&body)["status"], "unhealthy");

    // SIGTERM: a graceful stop, exit 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(service.0.id() as i32, libc::SIGTERM) };
    let status = service.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_service_settings_are_usage_errors() {
    let out = Command::new(STRATA)
        .args(["serve", "consistency", "--listen", "127.0.0.1:1"])
        .env("STRATA_CONSISTENCY_STORE", "")
        .env("STRATA_CONSISTENCY_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRATA_CONSISTENCY_LOG_FORMAT"));
}
