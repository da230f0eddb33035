//! A saga's orchestrator crashing at every one of its journal writes, before and after it, in
//! turn: the orchestrator's own steps (load, decide, act) run here in-process up to the chosen
//! write, then stop, as a killed process would; a fresh orchestrator (`Orchestrator::run`,
//! recovering from the journals) finishes the saga. Every run must end `completed` with each
//! effect once: one reservation committed, one charge at the (real, fake) provider, one
//! delivery recorded. The participants run in-process as real consumer-group workers over a
//! `strata dev` node.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::*;
use strata_client::Client;
use strata_saga::decide::{decide, Decision};
use strata_saga::definition::order_processing;
use strata_saga::orchestrator::{Events, Orchestrator, SystemClock};
use strata_saga::participant;
use strata_saga::state::Status;
use strata_saga::store;
use strata_service::{CommonArgs, Metrics, Settings};

struct Quiet;

impl Events for Quiet {
    fn reached(&self, _: &str, _: Status, _: Option<&str>) {}
}

fn settings(name: &'static str, dir: &std::path::Path, section: &str) -> Settings {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("[{name}]\n{section}\n")).unwrap();
    let args = CommonArgs {
        config: Some(path),
        ..CommonArgs::default()
    };
    Settings::resolve(name, 1, &args, &|_| None).unwrap()
}

/// Where a crash lands: at the orchestrator's `write`-th journal write (0: creating the saga),
/// before it or after it.
#[derive(Debug, Clone, Copy)]
struct Crash {
    write: usize,
    after: bool,
}

/// Runs saga `id`'s orchestrator steps in-process until the crash.
async fn until_crash(client: &Client, id: &str, crash: Crash) {
    let def = order_processing();
    let data = serde_json::json!({"order_id": id, "sku": "c1", "quantity": 1, "amount": 300});
    if crash.write == 0 && !crash.after {
        return;
    }
    store::create(client, (id, &def), data, None, "t85")
        .await
        .unwrap();
    if crash.write == 0 {
        return;
    }
    let mut writes = 0;
    loop {
        let loaded = store::load(client, id).await.unwrap().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        match decide(&def, &loaded.saga, now) {
            Decision::Done => panic!("saga {id} ended before write {}", crash.write),
            Decision::Wait(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            decision => {
                // Only writes that land count (a reply that came meanwhile makes the decision
                // miss its version: decided again).
                if writes + 1 == crash.write && !crash.after {
                    return;
                }
                if store::act(client, &loaded, &decision).await.unwrap() {
                    writes += 1;
                    if writes == crash.write {
                        return;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_or_after_any_journal_write_resumes_to_one_outcome() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (store_port, provider_port) = (free_port(), free_port());
    let _store = dev_store(dir.path(), store_port, &[], None);
    let _provider = Proc(
        Command::new(STRATA)
            .args(["fake-provider", "--listen", &addr(provider_port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_http(store_port).await;
    wait_http(provider_port).await;
    let client = Client::connect([addr(store_port)]).unwrap();
    let metrics = Arc::new(Metrics::default());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // The participants, as their services run them.
    let inventory = strata_inventory::Inventory::new(client.clone(), metrics.clone());
    strata_inventory::stock::restock(&client, "c1", 100)
        .await
        .unwrap();
    let provider = format!("provider = \"http://{}\"", addr(provider_port));
    let payment =
        strata_payment::Payment::new(&settings("payment", dir.path(), &provider), metrics.clone())
            .unwrap();
    let notification = strata_notification::Notification::new(
        &settings("notification", dir.path(), "channels = \"log\""),
        client.clone(),
        metrics.clone(),
    )
    .unwrap();
    tokio::spawn(participant::serve(
        client.clone(),
        "inventory",
        "i1".into(),
        inventory.handler(),
        stop.clone(),
    ));
    tokio::spawn(participant::serve(
        client.clone(),
        "payment",
        "p1".into(),
        Arc::new(payment),
        stop.clone(),
    ));
    tokio::spawn(participant::serve(
        client.clone(),
        "notification",
        "n1".into(),
        Arc::new(notification),
        stop.clone(),
    ));

    // The orchestrator's writes on the happy path: the saga's creation, four requests, the end.
    let mut crashes = Vec::new();
    for write in 0..=5 {
        for after in [false, true] {
            let crash = Crash { write, after };
            let id = format!("crash-{write}-{after}");
            until_crash(&client, &id, crash).await;
            crashes.push((id, crash));
        }
    }
    // A fresh orchestrator resumes them all.
    let o = Orchestrator::new(client.clone(), Arc::new(SystemClock), Arc::new(Quiet));
    tokio::spawn(o.clone().run(stop.clone()));
    let http = strata_service::http_client::HttpClient::new();
    let mut committed = 0;
    for (id, crash) in &crashes {
        let created = crash.write > 0 || crash.after;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let saga = loop {
            let loaded = store::load(&client, id).await.unwrap();
            match loaded {
                None if !created => break None,
                Some(l) if l.saga.status.is_final() => break Some(l.saga),
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} ({crash:?}) did not end"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(saga) = saga else { continue };
        assert_eq!(saga.status, Status::Completed, "{id} ({crash:?}): {saga:?}");
        for s in &saga.steps {
            assert_eq!(
                s.action.attempts, 1,
                "{id} ({crash:?}): {} asked more than once",
                s.name
            );
        }
        let url = format!("http://{}/charges/{id}%2Fcharge", addr(provider_port));
        let charge = http
            .call(
                "GET",
                &url,
                &[],
                &serde_json::Value::Null,
                Duration::from_secs(3),
            )
            .await
            .unwrap();
        assert_eq!(charge.status, 200, "{id}: no charge");
        let delivered = client
            .read_stream(&strata_notification::stream(id), None, 10)
            .await
            .unwrap();
        assert_eq!(
            delivered.len(),
            1,
            "{id}: delivered {} times",
            delivered.len()
        );
        committed += 1;
    }
    let ledger = http
        .call(
            "GET",
            &format!("http://{}/ledger", addr(provider_port)),
            &[],
            &serde_json::Value::Null,
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.json["charges"].as_array().unwrap().len(),
        committed,
        "one charge per saga"
    );
    let stock = strata_inventory::stock::load(&client, "c1", None)
        .await
        .unwrap();
    assert_eq!((stock.on_hand, stock.reserved), (100 - committed as u64, 0));
    assert_eq!(committed, crashes.len() - 1, "every created saga completed");
}
