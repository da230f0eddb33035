//! Sagas end to end with real processes: a `strata dev` node, the fake payment provider, and
//! the saga, inventory, payment and notification services (`strata serve …`), with a webhook
//! receiver in the test counting deliveries. Orders complete (stock committed, one charge, one
//! notification); run out of stock or are declined and are compensated (the reservation given
//! back, nothing charged or the charge refunded); idempotency keys start one saga; bad input is
//! a precise 4xx; the orchestrator and the inventory service killed -9 while sagas run and
//! started again lose nothing and do nothing twice.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::*;
use common::*;

/// A webhook receiver: how many POSTs came with each idempotency key.
async fn webhook() -> (u16, Arc<Mutex<HashMap<String, u32>>>) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counts = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let counts = counts.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                *counts.lock().unwrap().entry(key).or_default() += 1;
                "ok"
            }
        }),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(addr(port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

/// `strata serve NAME` over the store, with `toml` as its own section.
fn serve(name: &str, port: u16, store: u16, dir: &Path, section: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nstore = [\"{}\"]\n[{name}]\n{section}\n",
            addr(port),
            addr(store)
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    Proc(
        Command::new(STRATA)
            .args(["serve", name, "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

struct Env {
    dir: tempfile::TempDir,
    store: u16,
    provider: u16,
    ports: HashMap<&'static str, u16>,
    procs: HashMap<&'static str, Proc>,
    hooks: Arc<Mutex<HashMap<String, u32>>>,
    hook_port: u16,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (store, provider) = (free_port(), free_port());
        let mut procs = HashMap::new();
        procs.insert("store", dev_store(dir.path(), store, &[], None));
        procs.insert(
            "provider",
            Proc(
                Command::new(STRATA)
                    .args(["fake-provider", "--listen", &addr(provider)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            ),
        );
        wait_http(store).await;
        wait_http(provider).await;
        let (hook_port, hooks) = webhook().await;
        let mut env = Env {
            dir,
            store,
            provider,
            ports: HashMap::new(),
            procs,
            hooks,
            hook_port,
        };
        for name in ["saga", "inventory", "payment", "notification"] {
            env.ports.insert(name, free_port());
            env.start_service(name).await;
        }
        env
    }

    async fn start_service(&mut self, name: &'static str) {
        let section = match name {
            "payment" => format!("provider = \"http://{}\"", addr(self.provider)),
            "notification" => format!(
                "channels = \"log,webhook\"\nwebhook = \"http://{}/hook\"",
                addr(self.hook_port)
            ),
            _ => String::new(),
        };
        let port = self.ports[name];
        let p = serve(name, port, self.store, self.dir.path(), &section);
        self.procs.insert(name, p);
        wait_http(port).await;
    }

    fn kill(&mut self, name: &'static str) {
        if let Some(mut p) = self.procs.remove(name) {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    async fn call(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let port = if service == "provider" {
            self.provider
        } else {
            self.ports[service]
        };
        let (code, _, text) = http(port, method, path, headers, body).await;
        let value = if text.contains('{') {
            json(&text)
        } else {
            serde_json::Value::Null
        };
        (code, value)
    }

    async fn order(&self, key: &str, sku: &str, quantity: u64, amount: u64) -> String {
        let body = format!(
            r#"{{"type": "order_processing", "data": {{"order_id": "{key}", "sku": "{sku}", "quantity": {quantity}, "amount": {amount}}}}}"#
        );
        let (code, saga) = self
            .call(
                "saga",
                "POST",
                "/api/v1/sagas",
                &[("idempotency-key", key)],
                &body,
            )
            .await;
        assert_eq!(code, 201, "{saga}");
        assert_eq!(saga["state"], "running");
        saga["id"].as_str().unwrap().to_string()
    }

    /// Waits until saga `id` is over; its final JSON.
    async fn finished(&self, id: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (code, saga) = self
                .call("saga", "GET", &format!("/api/v1/sagas/{id}"), &[], "")
                .await;
            let state = saga["state"].as_str().unwrap_or_default().to_string();
            if code == 200
                && ["completed", "compensated", "needs_attention"].contains(&state.as_str())
            {
                return saga;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {id} not over: {saga}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stock(&self, sku: &str) -> serde_json::Value {
        self.call(
            "inventory",
            "GET",
            &format!("/api/v1/inventory/{sku}"),
            &[],
            "",
        )
        .await
        .1
    }

    async fn restock(&self, sku: &str, quantity: u64) {
        let (code, s) = self
            .call(
                "inventory",
                "POST",
                &format!("/api/v1/inventory/{sku}/restock"),
                &[],
                &format!(r#"{{"quantity": {quantity}}}"#),
            )
            .await;
        assert_eq!(code, 200, "{s}");
    }

    async fn ledger(&self) -> serde_json::Value {
        self.call("provider", "GET", "/ledger", &[], "").await.1
    }
}

fn charges_of(ledger: &serde_json::Value, saga: &str) -> usize {
    let key = format!("{saga}/charge");
    ledger["charges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["key"] == key.as_str())
        .count()
}

fn refunded(ledger: &serde_json::Value, saga: &str) -> bool {
    let key = format!("{saga}/charge");
    ledger["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["charge_key"] == key.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_complete_or_compensate_and_every_effect_happens_once() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    env.restock("a1", 10).await;

    // One order through: stock committed, one charge, one notification per channel.
    let id = env.order("order-1", "a1", 3, 500).await;
    let saga = env.finished(&id, Duration::from_secs(30)).await;
    assert_eq!(saga["state"], "completed", "{saga}");
    let stock = env.stock("a1").await;
    assert_eq!(
        (&stock["on_hand"], &stock["reserved"]),
        (&7.into(), &0.into()),
        "{stock}"
    );
    assert_eq!(charges_of(&env.ledger().await, &id), 1);
    assert_eq!(
        env.hooks.lock().unwrap().get(&format!("{id}/webhook")),
        Some(&1)
    );
    // The same key: the same saga; the key with other data: 409.
    let again = r#"{"type": "order_processing", "data": {"order_id": "order-1", "sku": "a1", "quantity": 3, "amount": 500}}"#;
    let (code, same) = env
        .call(
            "saga",
            "POST",
            "/api/v1/sagas",
            &[("idempotency-key", "order-1")],
            again,
        )
        .await;
    assert_eq!((code, same["id"].as_str()), (200, Some(id.as_str())));
    let other = again.replace("500", "501");
    let (code, r) = env
        .call(
            "saga",
            "POST",
            "/api/v1/sagas",
            &[("idempotency-key", "order-1")],
            &other,
        )
        .await;
    assert_eq!(
        (code, &r["code"]),
        (409, &"idempotency_key_reused".into()),
        "{r}"
    );

    // Not enough stock: compensated, nothing charged, the stock as it was.
    let id = env.order("order-2", "a1", 100, 500).await;
    let saga = env.finished(&id, Duration::from_secs(30)).await;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert!(
        saga["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{saga}"
    );
    assert_eq!(charges_of(&env.ledger().await, &id), 0);
    assert_eq!(env.stock("a1").await["available"], 7);

    // Declined: the reservation given back, the charge key voided.
    let (code, _) = env
        .call(
            "provider",
            "PUT",
            "/faults",
            &[],
            r#"{"decline_percent": 100}"#,
        )
        .await;
    assert_eq!(code, 200);
    let id = env.order("order-3", "a1", 2, 700).await;
    let saga = env.finished(&id, Duration::from_secs(30)).await;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(charges_of(&env.ledger().await, &id), 0);
    assert_eq!(env.stock("a1").await["available"], 7);
    assert!(env
        .hooks
        .lock()
        .unwrap()
        .get(&format!("{id}/webhook"))
        .is_none());

    // Ambiguous answers: recorded charges answered 502, and late answers. Each order is still
    // charged once; retried under the same key.
    let faults = r#"{"error_after_percent": 50, "late_percent": 30, "late_ms": 3500}"#;
    assert_eq!(
        env.call("provider", "PUT", "/faults", &[], faults).await.0,
        200
    );
    let mut ids = Vec::new();
    for k in 0..4 {
        ids.push(env.order(&format!("order-amb-{k}"), "a1", 1, 100).await);
    }
    for id in &ids {
        let saga = env.finished(id, Duration::from_secs(90)).await;
        let ledger = env.ledger().await;
        match saga["state"].as_str().unwrap() {
            "completed" => assert_eq!(charges_of(&ledger, id), 1, "{saga}"),
            "compensated" => assert!(
                charges_of(&ledger, id) == 0 || refunded(&ledger, id),
                "{saga}"
            ),
            other => panic!("{other}: {saga}"),
        }
    }

    // Bad input: precise 4xx, nothing started.
    for (body, code, says) in [
        (
            r#"{"type": "teleport", "data": {}}"#,
            400,
            "type: one of order_processing",
        ),
        ("{nope", 400, "the body's JSON"),
        (
            r#"{"type": "order_processing", "data": {"order_id": "x"}}"#,
            400,
            "data.sku",
        ),
        (
            r#"{"type": "order_processing", "data": {}, "extra": 1}"#,
            400,
            "unknown field",
        ),
    ] {
        let (got, r) = env.call("saga", "POST", "/api/v1/sagas", &[], body).await;
        assert_eq!(got, code, "{body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{body}: {r}");
    }
    let (code, _) = env
        .call("saga", "GET", "/api/v1/sagas/no-such-saga", &[], "")
        .await;
    assert_eq!(code, 404);
    let big = format!(
        r#"{{"type": "order_processing", "data": {{"pad": "{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let (code, _) = env.call("saga", "POST", "/api/v1/sagas", &[], &big).await;
    assert_eq!(code, 413);
    let (code, r) = env
        .call(
            "inventory",
            "POST",
            "/api/v1/inventory/a1/restock",
            &[],
            r#"{"quantity": 0}"#,
        )
        .await;
    assert_eq!(code, 400, "{r}");
    let (code, list) = env
        .call("saga", "GET", "/api/v1/sagas?state=completed", &[], "")
        .await;
    assert_eq!(code, 200);
    assert!(!list["sagas"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_kills_of_the_orchestrator_and_a_participant() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start().await;
    env.restock("k1", 1000).await;
    // Slow answers, so the kills land with sagas in flight.
    assert_eq!(
        env.call("provider", "PUT", "/faults", &[], r#"{"latency_ms": 150}"#)
            .await
            .0,
        200
    );
    let mut ids = Vec::new();
    for k in 0..12 {
        ids.push(env.order(&format!("kill-{k}"), "k1", 2, 100).await);
        if k == 4 {
            env.kill("saga");
            env.start_service("saga").await;
        }
        if k == 8 {
            env.kill("inventory");
            env.kill("saga");
            env.start_service("inventory").await;
            env.start_service("saga").await;
        }
    }
    env.kill("saga");
    env.start_service("saga").await;
    let ledger_wait = Duration::from_secs(90);
    for id in &ids {
        let saga = env.finished(id, ledger_wait).await;
        assert_eq!(saga["state"], "completed", "{saga}");
    }
    let ledger = env.ledger().await;
    for id in &ids {
        assert_eq!(charges_of(&ledger, id), 1, "{id}");
        assert_eq!(
            env.hooks.lock().unwrap().get(&format!("{id}/webhook")),
            Some(&1),
            "{id}"
        );
    }
    let stock = env.stock("k1").await;
    assert_eq!(
        (&stock["on_hand"], &stock["reserved"]),
        (&(1000 - 24).into(), &0.into()),
        "{stock}"
    );
}
