//! Crashes at every write of a saga, in turn. The orchestrator's: its own steps (load, decide,
//! act) run here in-process up to the chosen journal write, before or after it, then stop, as a
//! killed process would; a fresh orchestrator (`Orchestrator::run`, recovering from the
//! journals) finishes the saga. The participants': each command of a saga in turn, a worker
//! crashes with the command received, with its effects written but no reply, or with the reply
//! written but the batch not committed (`participant::serve_with_crashes`), and starts again.
//! Every run must end as it would have without the crash, with each effect once: one
//! reservation committed, one charge at the (real, fake) provider, one delivery recorded. The
//! participants run in-process as real consumer-group workers over a `strata dev` node.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::*;
use common::*;
use strata_client::Client;
use strata_saga::decide::{decide, Decision};
use strata_saga::definition::order_processing;
use strata_saga::journal::Command as SagaCommand;
use strata_saga::orchestrator::{Events, Orchestrator, SystemClock};
use strata_saga::participant::{self, Crashes, NoCrashes, Point};
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

/// A `strata dev` node, the fake provider, and the three participants in-process as their
/// services run them, crashing where `crashes` says.
struct Rig {
    _dir: tempfile::TempDir,
    _store: Proc,
    _provider: Proc,
    provider_port: u16,
    client: Client,
    http: strata_service::http_client::HttpClient,
    stop: tokio::sync::watch::Receiver<bool>,
    _stop_tx: tokio::sync::watch::Sender<bool>,
}

impl Rig {
    /// The rig over a node of `shards` shards.
    async fn start(crashes: Arc<dyn Crashes>, shards: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (store_port, provider_port) = (free_port(), free_port());
        let store = if shards == 1 {
            dev_store(dir.path(), store_port, &[], None)
        } else {
            Proc(
                Command::new(STRATA)
                    .args(["dev", "--metrics", "off", "--listen", &addr(store_port)])
                    .args(["--shards", &shards.to_string(), "--data"])
                    .arg(dir.path().join("store"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        };
        let provider = Proc(
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
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let inventory = strata_inventory::Inventory::new(client.clone(), metrics.clone());
        strata_inventory::stock::restock((&client, &Default::default()), "c1", 100)
            .await
            .unwrap();
        let provider_url = format!("provider = \"http://{}\"", addr(provider_port));
        let payment = strata_payment::Payment::new(
            &settings("payment", dir.path(), &provider_url),
            metrics.clone(),
        )
        .unwrap();
        let notification = strata_notification::Notification::new(
            &settings("notification", dir.path(), "channels = \"log\""),
            client.clone(),
            metrics.clone(),
        )
        .unwrap();
        let serve = |name: &'static str, member: &str| {
            (
                client.clone(),
                name,
                member.to_string(),
                crashes.clone(),
                stop.clone(),
            )
        };
        let (c, n, m, k, s) = serve("inventory", "i1");
        tokio::spawn(participant::serve_with_crashes(
            c,
            n,
            m,
            inventory.handler(),
            k,
            s,
        ));
        let (c, n, m, k, s) = serve("payment", "p1");
        tokio::spawn(participant::serve_with_crashes(
            c,
            n,
            m,
            Arc::new(payment),
            k,
            s,
        ));
        let (c, n, m, k, s) = serve("notification", "n1");
        tokio::spawn(participant::serve_with_crashes(
            c,
            n,
            m,
            Arc::new(notification),
            k,
            s,
        ));
        Rig {
            _dir: dir,
            _store: store,
            _provider: provider,
            provider_port,
            client,
            http: strata_service::http_client::HttpClient::new(),
            stop,
            _stop_tx: stop_tx,
        }
    }

    /// A fresh orchestrator, recovering and following the journals until the rig ends.
    fn orchestrate(&self) {
        let o = Orchestrator::new(self.client.clone(), Arc::new(SystemClock), Arc::new(Quiet));
        tokio::spawn(o.run(self.stop.clone()));
    }

    /// Saga `id` once it ended (`None`: never created), within a minute.
    async fn ended(&self, id: &str, created: bool) -> Option<strata_saga::state::Saga> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match store::load(&self.client, id).await.unwrap() {
                None if !created => return None,
                Some(l) if l.saga.status.is_final() => return Some(l.saga),
                _ => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn provider(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let url = format!("http://{}{path}", addr(self.provider_port));
        let r = self
            .http
            .call(method, &url, &[], &body, Duration::from_secs(3))
            .await
            .unwrap();
        assert!(
            r.status < 300 || r.status == 404,
            "{method} {path}: {}",
            r.status
        );
        if r.status == 404 {
            return serde_json::Value::Null;
        }
        r.json
    }

    /// Checks completed saga `id`'s effects: each step asked once, its charge at the provider,
    /// its notification recorded once.
    async fn completed_once(&self, id: &str, saga: &strata_saga::state::Saga, why: &str) {
        assert_eq!(saga.status, Status::Completed, "{id} ({why}): {saga:?}");
        for s in &saga.steps {
            assert_eq!(
                s.action.attempts, 1,
                "{id} ({why}): {} asked more than once",
                s.name
            );
        }
        let charge = self
            .provider(
                "GET",
                &format!("/charges/{id}%2Fcharge"),
                serde_json::Value::Null,
            )
            .await;
        assert!(!charge.is_null(), "{id} ({why}): no charge");
        let delivered = self
            .client
            .read_stream(&strata_notification::stream(id), None, 10)
            .await
            .unwrap();
        assert_eq!(
            delivered.len(),
            1,
            "{id} ({why}): delivered {} times",
            delivered.len()
        );
    }

    async fn charges(&self) -> usize {
        let ledger = self
            .provider("GET", "/ledger", serde_json::Value::Null)
            .await;
        ledger["charges"].as_array().unwrap().len()
    }

    async fn stock(&self) -> (u64, u64) {
        let stock = strata_inventory::stock::load(&self.client, "c1", None)
            .await
            .unwrap();
        (stock.on_hand, stock.reserved)
    }
}

fn order(id: &str) -> serde_json::Value {
    serde_json::json!({"order_id": id, "sku": "c1", "quantity": 1, "amount": 300})
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
    let data = order(id);
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
    let rig = Rig::start(Arc::new(NoCrashes), 1).await;
    // The orchestrator's writes on the happy path: the saga's creation, four requests, the end.
    let mut crashes = Vec::new();
    for write in 0..=5 {
        for after in [false, true] {
            let crash = Crash { write, after };
            let id = format!("crash-{write}-{after}");
            until_crash(&rig.client, &id, crash).await;
            crashes.push((id, crash));
        }
    }
    // A fresh orchestrator resumes them all.
    rig.orchestrate();
    let mut completed = 0;
    for (id, crash) in &crashes {
        let created = crash.write > 0 || crash.after;
        let Some(saga) = rig.ended(id, created).await else {
            continue;
        };
        rig.completed_once(id, &saga, &format!("{crash:?}")).await;
        completed += 1;
    }
    assert_eq!(rig.charges().await, completed, "one charge per saga");
    assert_eq!(rig.stock().await, (100 - completed as u64, 0));
    assert_eq!(completed, crashes.len() - 1, "every created saga completed");
}

/// Crashes planned per saga: at the `n`-th command (in the order the participants first see
/// them) and `Point` of saga `id`, once.
#[derive(Default)]
struct Plan {
    planned: Mutex<HashMap<String, (usize, Point)>>,
    seen: Mutex<HashMap<String, Vec<String>>>,
    fired: Mutex<Vec<(String, String, Point)>>,
}

impl Crashes for Plan {
    fn at(&self, participant: &str, command: &SagaCommand, point: Point) -> bool {
        let mut seen = self.seen.lock().unwrap();
        let commands = seen.entry(command.saga_id.clone()).or_default();
        if !commands.contains(&command.command_id) {
            commands.push(command.command_id.clone());
        }
        let n = commands.iter().position(|c| *c == command.command_id);
        let mut planned = self.planned.lock().unwrap();
        if planned.get(&command.saga_id) != n.map(|n| (n, point)).as_ref() {
            return false;
        }
        planned.remove(&command.saga_id);
        let fired = (participant.to_string(), command.command_id.clone(), point);
        self.fired.lock().unwrap().push(fired);
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_crash_at_any_point_of_any_command_resumes_to_one_outcome() {
    let _serial = SERIAL.lock().await;
    let plan = Arc::new(Plan::default());
    let rig = Rig::start(plan.clone(), 1).await;
    rig.orchestrate();
    let points = [Point::Received, Point::Handled, Point::Answered];
    // Completed sagas: four commands (reserve, charge, commit, notify); compensated ones (the
    // provider declines every charge): four too (reserve, charge, refund — a void of the key, in
    // case the charge went through after all — and release). Fast handling answers with the
    // batch's commit in one append; a provider slower than `COMBINE_WITHIN` makes the payment
    // worker answer alone, then commit: the "slow" phase crashes between those too.
    let phases = [
        ("ok", 4, 0, 0),
        ("declined", 4, 100, 0),
        ("slow", 4, 0, 150),
    ];
    for (phase, commands, declines, latency_ms) in phases {
        let faults = serde_json::json!({"decline_percent": declines, "latency_ms": latency_ms});
        rig.provider("PUT", "/faults", faults).await;
        let mut ids = Vec::new();
        for n in 0..commands {
            for point in points {
                let id = format!("{phase}-{n}-{point:?}");
                plan.planned.lock().unwrap().insert(id.clone(), (n, point));
                let def = order_processing();
                store::create(&rig.client, (&id, &def), order(&id), None, "t85")
                    .await
                    .unwrap();
                ids.push(id);
            }
        }
        for id in &ids {
            let saga = rig.ended(id, true).await.unwrap();
            if declines == 0 {
                rig.completed_once(id, &saga, phase).await;
            } else {
                assert_eq!(saga.status, Status::Compensated, "{id}: {saga:?}");
                let sides = saga.steps.iter().flat_map(|s| [&s.action, &s.compensation]);
                let attempts: Vec<u32> = sides.map(|s| s.attempts).collect();
                assert!(attempts.iter().all(|a| *a <= 1), "{id}: {attempts:?}");
                let sent = attempts.iter().sum::<u32>() as usize;
                assert_eq!(sent, commands, "{id}: commands sent");
            }
        }
        let left = plan.planned.lock().unwrap().clone();
        assert!(
            left.is_empty(),
            "crashes planned but never reached: {left:?}"
        );
    }
    let fired = plan.fired.lock().unwrap().len();
    assert_eq!(
        fired,
        (4 + 4 + 4) * points.len(),
        "every planned crash happened"
    );
    // Effects: the completed sagas' charges and committed stock, nothing of the declined ones.
    assert_eq!(
        rig.charges().await,
        8 * points.len(),
        "one charge per completed saga"
    );
    assert_eq!(rig.stock().await, (100 - 8 * points.len() as u64, 0));
}

/// On several shards a saga's journal and a participant group's partition stream are mostly
/// on different shards: the store refuses an answer and the commit in one append there, and
/// the participants answer alone, then commit. Every saga must still complete with each
/// effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_several_shards_participants_answer_alone_and_every_saga_completes() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(Arc::new(NoCrashes), 4).await;
    rig.orchestrate();
    let ids: Vec<String> = (0..12).map(|n| format!("sharded-{n}")).collect();
    let def = order_processing();
    for id in &ids {
        store::create(&rig.client, (id, &def), order(id), None, "t85")
            .await
            .unwrap();
    }
    for id in &ids {
        let saga = rig.ended(id, true).await.unwrap();
        rig.completed_once(id, &saga, "4 shards").await;
    }
    assert_eq!(rig.charges().await, ids.len(), "one charge per saga");
    assert_eq!(rig.stock().await, (100 - ids.len() as u64, 0));
}
