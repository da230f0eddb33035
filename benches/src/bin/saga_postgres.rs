//! The peer of `strata bench sagas`: the same `order_processing` flow (reserve stock, charge
//! through the fake provider, commit stock, notify; a refusal compensates in reverse: refund —
//! a void of the charge's key — and release) written the way most teams would without Strata:
//! each saga a row of a PostgreSQL state-machine table, and every message between the
//! orchestrator and the participants a row of an outbox table. A worker takes a batch of its
//! topic's rows (`FOR UPDATE SKIP LOCKED`), does their effects, writes the replies or next
//! commands and deletes the rows in one transaction (so each database effect happens once);
//! provider calls are keyed, as the Strata payment service's are. `LISTEN`/`NOTIFY` wakes the
//! workers and tells the clients of each saga's end.
//!
//! Where it does less than the Strata services (so it is favoured): clients insert sagas
//! directly (no HTTP API in front), the participants run in this one process, a step's deadline
//! is stored and overdue sagas are counted every second but not retried, a failed compensation
//! parks the saga at once, and there is no saga history beyond the current row.
//!
//! usage: saga-postgres --url URL --provider http://HOST:PORT [--clients 1,16,64]
//!        [--duration SECONDS] [--skus N] [--workers PER_ROLE] [--postmaster-pid PID]
//!        [--provider-pid PID]
//! Prints a line per run (`postgres  clients=… sagas/s=… p50/p99 … cpu_ms/saga=…`) on stderr
//! and a JSON line on stdout.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use strata_service::arrivals::Arrivals;

use futures_util::StreamExt;
use serde_json::{json, Value};
use strata_service::http_client::HttpClient;
use strata_service::process;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The saga's steps: participant (the topic of its commands), action, compensation, timeout.
const STEPS: [(&str, &str, Option<&str>, u32); 4] = [
    ("inventory", "reserve", Some("release"), 5),
    ("payment", "charge", Some("refund"), 10),
    ("inventory", "commit", None, 5),
    ("notification", "notify", None, 10),
];
const TOPICS: [&str; 4] = ["orchestrator", "inventory", "payment", "notification"];
/// Messages one worker takes per transaction.
const BATCH: i64 = 32;
const STOCK: i64 = 1_000_000_000;

const SCHEMA: &str = "
CREATE TABLE sagas (id text PRIMARY KEY, status text NOT NULL, step int NOT NULL,
  compensating boolean NOT NULL DEFAULT false, data jsonb NOT NULL, deadline timestamptz NOT NULL);
CREATE TABLE outbox (id bigserial PRIMARY KEY, topic text NOT NULL, saga_id text NOT NULL,
  kind text NOT NULL, body jsonb NOT NULL);
CREATE INDEX outbox_topic ON outbox (topic, id);
CREATE TABLE stock (sku text PRIMARY KEY, on_hand bigint NOT NULL, reserved bigint NOT NULL);
CREATE TABLE reservations (saga_id text PRIMARY KEY, sku text NOT NULL, quantity bigint NOT NULL,
  state text NOT NULL);
CREATE TABLE payments (saga_id text PRIMARY KEY, charge jsonb NOT NULL);
CREATE TABLE notifications (saga_id text NOT NULL, channel text NOT NULL,
  PRIMARY KEY (saga_id, channel));";

/// Every statement, prepared once per connection.
const STATEMENTS: [(&str, &str); 13] = [
    ("take", "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE topic = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING saga_id, kind, body"),
    ("send", "INSERT INTO outbox (topic, saga_id, kind, body) VALUES ($1, $2, $3, $4)"),
    ("wake", "SELECT pg_notify($1, $2)"),
    ("start", "INSERT INTO sagas (id, status, step, data, deadline) VALUES ($1, 'running', 0, $2, now() + interval '5 seconds') ON CONFLICT (id) DO NOTHING"),
    ("saga", "SELECT status, step, compensating, data FROM sagas WHERE id = $1 FOR UPDATE"),
    ("move", "UPDATE sagas SET status = $2, step = $3, compensating = $4, deadline = now() + make_interval(secs => $5) WHERE id = $1"),
    ("reserve", "UPDATE stock SET reserved = reserved + $2 WHERE sku = $1 AND on_hand - reserved >= $2"),
    ("reserved", "INSERT INTO reservations (saga_id, sku, quantity, state) VALUES ($1, $2, $3, 'reserved') ON CONFLICT DO NOTHING"),
    ("settle", "UPDATE reservations SET state = $2 WHERE saga_id = $1 AND state = 'reserved' RETURNING sku, quantity"),
    ("commit", "UPDATE stock SET on_hand = on_hand - $2, reserved = reserved - $2 WHERE sku = $1"),
    ("release", "UPDATE stock SET reserved = reserved - $2 WHERE sku = $1"),
    ("paid", "INSERT INTO payments (saga_id, charge) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
    ("notified", "INSERT INTO notifications (saga_id, channel) VALUES ($1, 'log') ON CONFLICT DO NOTHING"),
];

struct Args {
    url: String,
    provider: String,
    clients: Vec<usize>,
    duration: u64,
    skus: usize,
    workers: usize,
    postmaster: Option<u32>,
    provider_pid: Option<u32>,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        url: String::new(),
        provider: String::new(),
        clients: vec![1, 16, 64],
        duration: 10,
        skus: 100,
        workers: 4,
        postmaster: None,
        provider_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--provider" => a.provider = value.trim_end_matches('/').to_string(),
            "--clients" => {
                a.clients = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--duration" => a.duration = value.parse()?,
            "--skus" => a.skus = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            "--postmaster-pid" => a.postmaster = Some(value.parse()?),
            "--provider-pid" => a.provider_pid = Some(value.parse()?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.url.is_empty() || a.provider.is_empty() || a.skus == 0 || a.workers == 0 {
        return Err("--url and --provider are needed; --skus and --workers at least 1".into());
    }
    Ok(a)
}

/// A connection with every statement prepared.
struct Conn {
    client: Client,
    st: HashMap<&'static str, Statement>,
}

/// A connection whose notifications go to `wake`.
async fn raw(url: &str, wake: Option<Arc<Wakes>>) -> Result<Client, Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let (AsyncMessage::Notification(n), Some(w)) = (m, &wake) {
                w.notified(n.channel(), n.payload());
            }
        }
    });
    Ok(client)
}

async fn connect(url: &str) -> Result<Conn, Error> {
    let client = raw(url, None).await?;
    let mut st = HashMap::new();
    for (name, sql) in STATEMENTS {
        st.insert(name, client.prepare(sql).await?);
    }
    Ok(Conn { client, st })
}

/// What LISTEN/NOTIFY brings: a topic's workers woken, a saga's end (its status) handed to
/// its client.
#[derive(Default)]
struct Wakes {
    topics: HashMap<&'static str, Notify>,
    ends: Arrivals<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wakes {
    fn notified(&self, channel: &str, payload: &str) {
        if let Some(n) = self.topics.get(channel) {
            n.notify_waiters();
        } else if let Some((id, status)) = payload.split_once(' ') {
            self.ends.arrive(id, status.to_string());
        }
    }
}

/// A message taken from the outbox.
struct Message {
    saga: String,
    kind: String,
    body: Value,
}

/// Takes a batch of `topic`'s messages in transaction `tx`.
async fn take(
    tx: &tokio_postgres::Transaction<'_>,
    st: &HashMap<&str, Statement>,
    topic: &str,
) -> Result<Vec<Message>, Error> {
    let rows = tx.query(&st["take"], &[&topic, &BATCH]).await?;
    Ok(rows
        .iter()
        .map(|r| Message {
            saga: r.get(0),
            kind: r.get(1),
            body: r.get(2),
        })
        .collect())
}

/// The participants' effects.
struct Effects {
    http: HttpClient,
    provider: String,
    log: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl Effects {
    /// The provider's answer to `path` with `body`: `Ok(None)` done, `Ok(Some(why))` refused,
    /// `Err` no answer (the batch is taken again later).
    async fn provider(&self, path: &str, body: Value) -> Result<Option<String>, Error> {
        let url = format!("{}/{path}", self.provider);
        let a = self
            .http
            .call("POST", &url, &[], &body, Duration::from_secs(3))
            .await?;
        match a.status {
            200 | 201 => Ok(None),
            402 | 409 => Ok(Some(format!("payment refused: {}", a.json["error"]))),
            s => Err(format!("the provider answered {s}").into()),
        }
    }

    /// Does message `m`'s command in `tx` (provider calls made before): `None` done,
    /// `Some(why)` refused.
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        st: &HashMap<&str, Statement>,
        m: &Message,
        called: Option<Option<String>>,
    ) -> Result<Option<String>, Error> {
        let sku = m.body["data"]["sku"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let quantity = m.body["data"]["quantity"].as_i64().unwrap_or(0);
        match m.kind.as_str() {
            "reserve" => {
                if tx.execute(&st["reserve"], &[&sku, &quantity]).await? == 0 {
                    return Ok(Some("insufficient stock".into()));
                }
                tx.execute(&st["reserved"], &[&m.saga, &sku, &quantity])
                    .await?;
                Ok(None)
            }
            "commit" | "release" => {
                let state = if m.kind == "commit" {
                    "committed"
                } else {
                    "released"
                };
                for r in tx.query(&st["settle"], &[&m.saga, &state]).await? {
                    let (sku, q): (String, i64) = (r.get(0), r.get(1));
                    tx.execute(&st[m.kind.as_str()], &[&sku, &q]).await?;
                }
                Ok(None)
            }
            "charge" | "refund" => {
                let refused = called.ok_or("a payment without its provider call")?;
                if refused.is_none() && m.kind == "charge" {
                    tx.execute(&st["paid"], &[&m.saga, &m.body["data"]]).await?;
                }
                Ok(refused)
            }
            "notify" => {
                let line = json!({"level": "INFO", "notification": m.saga, "channel": "log",
                    "message": "your order is confirmed"});
                std::io::Write::write_fmt(&mut *lock(&self.log), format_args!("{line}\n"))?;
                tx.execute(&st["notified"], &[&m.saga]).await?;
                Ok(None)
            }
            other => Err(format!("unknown command {other}").into()),
        }
    }

    /// The provider calls of a batch's payment commands, at once.
    async fn calls(&self, batch: &[Message]) -> Result<Vec<Option<Option<String>>>, Error> {
        let calls = batch.iter().map(|m| async move {
            let key = format!("{}/charge", m.saga);
            match m.kind.as_str() {
                "charge" => {
                    let amount = m.body["data"]["amount"].as_u64().unwrap_or(0);
                    let body = json!({"key": key, "amount": amount});
                    self.provider("charges", body).await.map(Some)
                }
                "refund" => {
                    let body = json!({"key": format!("{}/refund", m.saga), "charge_key": key});
                    self.provider("refunds", body).await.map(Some)
                }
                _ => Ok(None),
            }
        });
        futures_util::future::try_join_all(calls).await
    }
}

/// One worker of `topic`: takes batches until the process ends.
async fn worker(url: String, topic: &'static str, wakes: Arc<Wakes>, effects: Arc<Effects>) {
    let mut conn = match connect(&url).await {
        Ok(c) => c,
        Err(e) => return eprintln!("worker of {topic}: {e}"),
    };
    let wake = &wakes.topics[topic];
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match round(&mut conn, topic, &effects).await {
            Ok(0) => {
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("worker of {topic}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One transaction of a worker: its messages taken, handled, answered. How many.
async fn round(conn: &mut Conn, topic: &str, effects: &Effects) -> Result<usize, Error> {
    let st = &conn.st;
    let tx = conn.client.transaction().await?;
    let mut batch = take(&tx, st, topic).await?;
    if batch.is_empty() {
        return Ok(0);
    }
    // Rows locked in one order (stock by SKU) so that two workers never deadlock.
    batch.sort_by(|a, b| {
        a.body["data"]["sku"]
            .as_str()
            .cmp(&b.body["data"]["sku"].as_str())
    });
    let mut wake: Vec<String> = Vec::new();
    if topic == "orchestrator" {
        for m in &batch {
            wake.extend(decide(&tx, st, m).await?);
        }
    } else {
        let calls = effects.calls(&batch).await?;
        for (m, called) in batch.iter().zip(calls) {
            let refused = effects.apply(&tx, st, m, called).await?;
            let reply = json!({"step": m.body["step"], "compensation": m.body["compensation"],
                "reason": refused});
            let kind = if refused.is_some() { "failed" } else { "done" };
            tx.execute(&st["send"], &[&"orchestrator", &m.saga, &kind, &reply])
                .await?;
        }
        wake.push("orchestrator".into());
    }
    wake.sort_unstable();
    wake.dedup();
    for w in &wake {
        let (channel, payload) = w.split_once(' ').unwrap_or((w, ""));
        tx.execute(&st["wake"], &[&channel, &payload]).await?;
    }
    tx.commit().await?;
    Ok(batch.len())
}

/// The orchestrator's decision on reply `m`: the saga's row moved and its next command sent,
/// in `tx`. What to wake: a topic, or `saga_done ID STATUS`.
async fn decide(
    tx: &tokio_postgres::Transaction<'_>,
    st: &HashMap<&str, Statement>,
    m: &Message,
) -> Result<Vec<String>, Error> {
    let row = tx.query_one(&st["saga"], &[&m.saga]).await?;
    let (status, step, compensating, data): (String, i32, bool, Value) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if status != "running" && status != "compensating" {
        return Ok(Vec::new());
    }
    let step = step as usize;
    let next = match (compensating, m.kind.as_str()) {
        (false, "done") if step + 1 < STEPS.len() => Some((step + 1, false)),
        (false, "done") => None,
        // A refusal: compensate the steps done and this one, from here back.
        (false, _) => compensation_from(step),
        (true, "done") => step.checked_sub(1).and_then(compensation_from),
        (true, _) => {
            let parked = "needs_attention";
            tx.execute(
                &st["move"],
                &[&m.saga, &parked, &(step as i32), &true, &0f64],
            )
            .await?;
            return Ok(vec![end(&m.saga, parked)]);
        }
    };
    let Some((next, comp)) = next else {
        let done = if compensating || m.kind != "done" {
            "compensated"
        } else {
            "completed"
        };
        tx.execute(
            &st["move"],
            &[&m.saga, &done, &(step as i32), &compensating, &0f64],
        )
        .await?;
        return Ok(vec![end(&m.saga, done)]);
    };
    let (topic, action, compensation, timeout) = STEPS[next];
    let kind = if comp {
        compensation.unwrap_or(action)
    } else {
        action
    };
    let status = if comp { "compensating" } else { "running" };
    tx.execute(
        &st["move"],
        &[&m.saga, &status, &(next as i32), &comp, &(timeout as f64)],
    )
    .await?;
    let body = json!({"step": next, "compensation": comp, "data": data});
    tx.execute(&st["send"], &[&topic, &m.saga, &kind, &body])
        .await?;
    Ok(vec![topic.to_string()])
}

/// The first step at or before `from` with a compensation (`Some((step, true))`), if any.
fn compensation_from(from: usize) -> Option<(usize, bool)> {
    (0..=from)
        .rev()
        .find(|&s| STEPS[s].2.is_some())
        .map(|s| (s, true))
}

/// A saga's end as a NOTIFY: channel `saga_done`, payload `ID STATUS`.
fn end(id: &str, status: &str) -> String {
    format!("saga_done {id} {status}")
}

/// Starts saga `id` in one transaction: its row, its first command, the inventory woken.
async fn start(conn: &mut Conn, id: &str, data: &Value) -> Result<(), Error> {
    let st = &conn.st;
    let tx = conn.client.transaction().await?;
    if tx.execute(&st["start"], &[&id, data]).await? == 1 {
        let body = json!({"step": 0, "compensation": false, "data": data});
        tx.execute(&st["send"], &[&"inventory", &id, &"reserve", &body])
            .await?;
        tx.execute(&st["wake"], &[&"inventory", &""]).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let setup = raw(&a.url, None).await?;
    setup.batch_execute(SCHEMA).await?;
    for n in 0..a.skus {
        setup
            .execute(
                "INSERT INTO stock (sku, on_hand, reserved) VALUES ($1, $2, 0)",
                &[&format!("sku-{n}"), &STOCK],
            )
            .await?;
    }
    let mut wakes = Wakes::default();
    for t in TOPICS {
        wakes.topics.insert(t, Notify::new());
    }
    let wakes = Arc::new(wakes);
    let listener = raw(&a.url, Some(wakes.clone())).await?;
    for channel in TOPICS.iter().chain(&["saga_done"]) {
        listener.batch_execute(&format!("LISTEN {channel}")).await?;
    }
    let log = std::fs::File::create(std::env::temp_dir().join("saga-postgres-notifications.log"))?;
    let effects = Arc::new(Effects {
        http: HttpClient::new(),
        provider: a.provider.clone(),
        log: Mutex::new(std::io::BufWriter::new(log)),
    });
    for topic in TOPICS {
        for _ in 0..a.workers {
            tokio::spawn(worker(a.url.clone(), topic, wakes.clone(), effects.clone()));
        }
    }
    tokio::spawn(overdue(a.url.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    for &clients in &a.clients {
        let cpu = cpu(&a);
        let began = Instant::now();
        let (latencies, outcomes, errors) = closed_loop(&a, &wakes, &next, clients).await?;
        report(
            clients,
            latencies,
            outcomes,
            errors,
            began.elapsed(),
            cpu_since(&a, &cpu),
        );
    }
    Ok(())
}

/// Counts, every second, the sagas whose step is overdue (a real flow would retry them).
async fn overdue(url: String) {
    let Ok(conn) = connect(&url).await else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let q = "SELECT count(*) FROM sagas WHERE status IN ('running', 'compensating') AND deadline < now()";
        if let Ok(row) = conn.client.query_one(q, &[]).await {
            let n: i64 = row.get(0);
            if n > 0 {
                eprintln!("{n} sagas overdue");
            }
        }
    }
}

type Outcomes = BTreeMap<String, usize>;

async fn closed_loop(
    a: &Args,
    wakes: &Arc<Wakes>,
    next: &Arc<AtomicUsize>,
    clients: usize,
) -> Result<(Vec<Duration>, Outcomes, usize), Error> {
    let deadline = Instant::now() + Duration::from_secs(a.duration);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut conn = connect(&a.url).await?;
        let (wakes, next, skus) = (wakes.clone(), next.clone(), a.skus);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut outcomes, mut errors) = (Vec::new(), Outcomes::new(), 0);
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let id = format!("pg-{n}");
                let data = json!({"order_id": id, "sku": format!("sku-{}", n % skus),
                    "quantity": 1, "amount": 100});
                let began = Instant::now();
                let ended = match start(&mut conn, &id, &data).await {
                    Ok(()) => wakes
                        .ends
                        .wait(&id, Duration::from_secs(120))
                        .await
                        .map_err(Error::from),
                    Err(e) => Err(e),
                };
                match ended {
                    Ok((status, at)) => {
                        lat.push(at.saturating_duration_since(began));
                        *outcomes.entry(status).or_default() += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, outcomes, errors)
        }));
    }
    let (mut all, mut outcomes, mut errors) = (Vec::new(), Outcomes::new(), 0);
    for t in tasks {
        let (l, o, e) = t.await?;
        all.extend(l);
        for (k, n) in o {
            *outcomes.entry(k).or_default() += n;
        }
        errors += e;
    }
    Ok((all, outcomes, errors))
}

/// CPU so far, µs: this process, PostgreSQL's (the postmaster and its children), the provider.
fn cpu(a: &Args) -> BTreeMap<&'static str, u64> {
    let mut cpu = BTreeMap::new();
    cpu.insert("peer", process::cpu_us(std::process::id()));
    if let Some(pm) = a.postmaster {
        let children: u64 = process::children(pm).into_iter().map(process::cpu_us).sum();
        cpu.insert("postgres", process::cpu_us(pm) + children);
    }
    if let Some(p) = a.provider_pid {
        cpu.insert("provider", process::cpu_us(p));
    }
    cpu
}

fn cpu_since(a: &Args, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    cpu(a)
        .into_iter()
        .map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .collect()
}

fn report(
    clients: usize,
    mut lat: Vec<Duration>,
    outcomes: Outcomes,
    errors: usize,
    elapsed: Duration,
    cpu: BTreeMap<&'static str, u64>,
) {
    lat.sort();
    let n = lat.len();
    let pct = |p: f64| {
        lat.get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let rate = n as f64 / elapsed.as_secs_f64();
    let per_saga: BTreeMap<&str, f64> = cpu
        .iter()
        .map(|(k, us)| (*k, *us as f64 / 1e3 / n.max(1) as f64))
        .collect();
    let total: f64 = per_saga.values().sum();
    let max = lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    eprintln!(
        "postgres  clients={clients} sagas={n} sagas/s={rate:.1}  latency p50={:.1}ms p99={:.1}ms max={max:.1}ms  cpu_ms/saga={total:.2} ({})  outcomes={outcomes:?} errors={errors}",
        pct(0.5),
        pct(0.99),
        per_saga.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", "),
    );
    println!(
        "{}",
        json!({"run": "sagas", "system": "postgres", "clients": clients, "seconds": elapsed.as_secs_f64(),
            "sagas": n, "sagas_per_s": rate, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": max,
            "cpu_ms_per_saga": total, "cpu_ms_per_saga_by_process": per_saga, "outcomes": outcomes,
            "errors": errors})
    );
}
