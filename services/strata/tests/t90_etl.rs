//! The ETL service (`strata serve etl`) against a real `strata dev` node, a private
//! PostgreSQL, a private ClickHouse and a private secantusdb (MongoDB wire protocol): orders
//! appended while the service is killed -9 at random moments (and aborts at crash points
//! between a sink write and its group commit), and each sink server is stopped and started
//! once; at the end each sink holds every good event exactly once (per stream: count, distinct versions, sums of versions and
//! amounts equal to the source's; PostgreSQL in per-stream order), bad events are in the
//! quarantine stream once each with the reason, and ClickHouse's materialized view agrees with
//! its table. Sizes: `STRATA_ETL_KILL_EVENTS` (default 20,000) and `STRATA_ETL_KILLS` (default 5);
//! the long run is 1,000,000 and 20 (README).

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::*;
use common::sinks::{ClickHouse, Mongo, Postgres};
use common::*;
use mongodb::bson;
use strata_client::{pb, Client, ClientConfig, ExpectedVersion};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const STREAMS: u64 = 100;

fn pipeline_file(dir: &Path, name: &str, kind: &str, url: &str, extra_columns: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
[source]
prefix = "order-"
event_types = ["OrderPlaced"]
partitions = 4
[batch]
events_max = 2000
linger_ms = 50
[sink]
kind = "{kind}"
url = "{url}"
table = "orders"
{}{}{}required = true
{}required = true
min = 0
{}{extra_columns}"#,
            column("stream", "$stream", "text"),
            column("version", "$version", "int"),
            column("sku", "/sku", "text"),
            column("amount", "/amount", "float"),
            column("at", "$time", "time"),
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A `strata dev` node in `d`, logging to `store.log`, answering: it, its port, and a free port
/// for the service.
async fn logged_store(d: &Path) -> (Proc, u16, u16) {
    let (store_port, port) = (free_port(), free_port());
    let store = dev_store(d, store_port, &[], Some(&d.join("store.log")));
    wait_http(store_port).await;
    (store, store_port, port)
}

/// A pipeline file's `[[column]]` table.
fn column(name: &str, from: &str, ty: &str) -> String {
    format!("[[column]]\nname = \"{name}\"\nfrom = \"{from}\"\ntype = \"{ty}\"\n")
}

fn serve_etl(dir: &Path, port: u16, store: u16, pipelines: &[String]) -> Proc {
    serve_etl_crashing(dir, port, store, pipelines, None)
}

/// [`serve_etl`], aborting after its `crash_after`-th sink write (before the group commit).
fn serve_etl_crashing(
    dir: &Path,
    port: u16,
    store: u16,
    pipelines: &[String],
    crash_after: Option<u64>,
) -> Proc {
    let config = dir.join("etl.toml");
    let list: Vec<String> = pipelines.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nstore = [\"{}\"]\n[etl]\npipelines = [{}]\n",
            addr(port),
            addr(store),
            list.join(", ")
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etl.log"))
        .unwrap();
    Proc(
        Command::new(STRATA)
            .args(["serve", "etl", "--config"])
            .arg(&config)
            .env("STRATA_LOG", "info")
            .env(
                "STRATA_ETL_CRASH_AFTER_WRITES",
                crash_after.map_or(String::new(), |n| n.to_string()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// An order event: every 97th has a negative amount (quarantined), every 13th is another type
/// (passed over).
fn order(n: u64) -> pb::NewEvent {
    let amount = if n % 97 == 5 {
        -1.0
    } else {
        (n % 1000) as f64 / 4.0
    };
    let ty = if n % 13 == 7 {
        "OrderViewed"
    } else {
        "OrderPlaced"
    };
    pb::NewEvent {
        id: uuid::Uuid::from_u128(0xe71_0000_0000 + u128::from(n)).to_string(),
        r#type: ty.into(),
        data: format!(r#"{{"sku":"sku-{}","amount":{amount}}}"#, n % 20)
            .into_bytes()
            .into(),
        metadata: Default::default(),
    }
}

/// Per stream: (count, sum of versions, sum of amount × 100), from the source.
type Tally = BTreeMap<String, (u64, u64, i64)>;

async fn source_tally(client: &Client) -> (Tally, u64) {
    let mut tally = Tally::new();
    let mut bad = 0;
    for s in 0..STREAMS {
        let stream = format!("order-{s}");
        let events = client
            .read_stream(&stream, None, 1_000_000)
            .await
            .unwrap_or_default();
        for e in events {
            if e.r#type != "OrderPlaced" {
                continue;
            }
            let d: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
            let amount = d["amount"].as_f64().unwrap();
            if amount < 0.0 {
                bad += 1;
                continue;
            }
            let t = tally.entry(stream.clone()).or_default();
            t.0 += 1;
            t.1 += e.version;
            t.2 += (amount * 100.0).round() as i64;
        }
    }
    (tally, bad)
}

fn parse_tally(text: &str, sep: char) -> (Tally, u64) {
    let mut tally = Tally::new();
    let mut distinct_short = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(sep).collect();
        let (count, distinct): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        distinct_short += count - distinct;
        tally.insert(
            f[0].to_string(),
            (
                count,
                f[3].parse().unwrap(),
                f[4].parse::<f64>().unwrap() as i64,
            ),
        );
    }
    (tally, distinct_short)
}

async fn mongo_orders(m: &Mongo) -> mongodb::Collection<bson::Document> {
    let client = mongodb::Client::with_uri_str(m.url()).await.unwrap();
    client.database("etl").collection("orders")
}

/// The documents' tally, by one aggregation (the `_id`s are the events' keys, so a document
/// cannot be there twice; the count shows none is missing).
async fn mongo_tally(m: &Mongo) -> Tally {
    use futures_util::TryStreamExt;
    let group = bson::doc! {"$group": {"_id": "$stream", "n": {"$sum": 1}, "v": {"$sum": "$version"}, "a": {"$sum": "$amount"}}};
    let rows: Vec<bson::Document> = mongo_orders(m)
        .await
        .aggregate(vec![group])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let number = |d: &bson::Document, k: &str| match d.get(k) {
        Some(bson::Bson::Int32(i)) => f64::from(*i),
        Some(bson::Bson::Int64(i)) => *i as f64,
        Some(bson::Bson::Double(f)) => *f,
        other => panic!("{k}: {other:?}"),
    };
    rows.iter()
        .map(|d| {
            let stream = d.get_str("_id").unwrap().to_string();
            let t = (
                number(d, "n") as u64,
                number(d, "v") as u64,
                (number(d, "a") * 100.0).round() as i64,
            );
            (stream, t)
        })
        .collect()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn rfc3339(us: u64) -> String {
    strata_service::time::format_rfc3339_us(us)
}

/// Pipeline `name`'s state once `ok` holds of it (within 30 s, else the test fails).
async fn wait_state(
    port: u16,
    name: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = state_of(port, name).await;
        if let Some(s) = s.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "{name}: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn state_of(port: u16, name: &str) -> Option<serde_json::Value> {
    let (code, _, body) = try_http(port, "GET", &format!("/api/v1/pipelines/{name}"), &[], "")
        .await
        .ok()?;
    (code == 200).then(|| json(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_into_postgres_clickhouse_and_mongo_exactly_once_under_kill_loops() {
    let _serial = SERIAL.lock().await;
    let events = env_or("STRATA_ETL_KILL_EVENTS", 20_000);
    let kills = env_or("STRATA_ETL_KILLS", 5);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_store, store_port, port) = logged_store(d).await;
    let pg = Postgres::start(d);
    pg.psql("CREATE TABLE orders (seq bigserial PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, sku text, amount double precision, at timestamptz)");
    let mut ch = ClickHouse::start(d).await;
    ch.query("CREATE TABLE orders (stream String, version UInt64, sku String, amount Float64, at DateTime, _strata_partition UInt32, _strata_shard UInt32, _strata_position UInt64) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(at) ORDER BY (stream, version)").await;
    ch.query("CREATE MATERIALIZED VIEW revenue_per_minute ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(minute) ORDER BY (minute, sku) AS SELECT toStartOfMinute(at) AS minute, sku, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY minute, sku").await;
    let mut mongo = Mongo::start(d).await;
    let pipelines = [
        pipeline_file(
            d,
            "pg",
            "postgres",
            &pg.url(),
            "[quality]\nreconcile_window_s = 1\n",
        ),
        pipeline_file(d, "ch", "clickhouse", &ch.url(), ""),
        pipeline_file(d, "mg", "mongo", &mongo.url(), ""),
    ];
    let mut etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;

    let begun_us = now_us();
    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { append_orders(&client, 0, events).await })
    };

    // Kills at random moments while the writer runs (and after, for the short runs).
    let mut seed = events ^ (kills << 32) ^ 0x9e37_79b9_7f4a_7c15;
    let mut pause_ms = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        300 + (seed >> 33) % 1200
    };
    let started = Instant::now();
    let mut crashes = 0;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(pause_ms())).await;
        if k == 3 {
            // Killed while the service writes to it: secantusdb loses the last transactions it
            // acknowledged (scripts/mongo-kill-check.py), so the mongo pipeline may find its
            // sink behind the group and go back (its `rewinds`).
            mongo.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            mongo.up().await;
        }
        etl.0.kill().unwrap();
        etl.0.wait().unwrap();
        if k == 1 {
            // PostgreSQL down: the pipeline waits and says so; it drops nothing.
            pg.down();
            etl = serve_etl(d, port, store_port, &pipelines);
            wait_http(port).await;
            let mut saw_waiting = false;
            for _ in 0..100 {
                if let Some(s) = state_of(port, "pg").await {
                    if s["state"] == "waiting"
                        && s["error"].as_str().unwrap_or("").contains("postgres")
                    {
                        saw_waiting = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                saw_waiting,
                "the pg pipeline never said it was waiting for PostgreSQL"
            );
            pg.up();
            continue;
        }
        if k == 2 {
            ch.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            ch.up().await;
        }
        // Half the restarts also abort on their own between a sink write and its group
        // commit (the window a kill at a random moment seldom hits).
        let crash_after = (k % 2 == 0).then(|| 1 + pause_ms() % 8);
        etl = serve_etl_crashing(d, port, store_port, &pipelines, crash_after);
        wait_http(port).await;
        if crash_after.is_some() {
            // Until it aborts, then on without crash points.
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                while etl.0.try_wait().unwrap().is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            let _ = etl.0.kill();
            let _ = etl.0.wait();
            crashes += 1;
            etl = serve_etl(d, port, store_port, &pipelines);
            wait_http(port).await;
        }
    }
    writer.await.unwrap();
    eprintln!(
        "appended {events} events with {kills} kills and {crashes} crash points in {:?}",
        started.elapsed()
    );

    let (want, bad) = source_tally(&client).await;
    let wanted: u64 = want.values().map(|t| t.0).sum();
    let pg_sql = "SELECT stream, count(*), count(DISTINCT version), sum(version), sum(round(amount * 100)) FROM orders GROUP BY stream ORDER BY stream";
    let ch_sql = "SELECT stream, count(), uniqExact(version), sum(version), sum(round(amount * 100)) FROM orders GROUP BY stream ORDER BY stream FORMAT TSV";
    // Catching up after the writer: generous for debug builds on 2 cores.
    let deadline = Instant::now() + Duration::from_secs(300 + events / 500);
    loop {
        let pg_rows: u64 = pg.psql("SELECT count(*) FROM orders").parse().unwrap();
        let ch_rows: u64 = ch
            .query("SELECT count() FROM orders")
            .await
            .parse()
            .unwrap();
        // The collection's own count (a full count would scan it every time, slowing the
        // Python server it asks); exactness is checked below.
        let mg_rows = mongo_orders(&mongo)
            .await
            .estimated_document_count()
            .await
            .unwrap_or(0);
        if pg_rows >= wanted && ch_rows >= wanted && mg_rows >= wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sinks hold {pg_rows} (postgres), {ch_rows} (clickhouse), {mg_rows} (mongo) of {wanted} rows; {:?} {:?} {:?}",
            state_of(port, "pg").await,
            state_of(port, "ch").await,
            state_of(port, "mg").await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each restart's status begins anew; the log has them all.
    let log = std::fs::read_to_string(d.join("etl.log")).unwrap();
    for name in ["pg", "ch", "mg"] {
        let back = log
            .lines()
            .filter(|l| l.contains("the sink holds less") && l.contains(&format!("\"{name}\"")))
            .count();
        eprintln!("{name}: moved back to a sink that held less {back} times");
    }
    // Exactly once, with no FINAL in ClickHouse: nothing was inserted twice.
    let (pg_tally, pg_dups) = parse_tally(&pg.psql(pg_sql), '|');
    assert_eq!(pg_dups, 0, "postgres holds duplicates");
    assert_eq!(pg_tally, want, "postgres differs from the source");
    let (ch_tally, ch_dups) = parse_tally(&ch.query(ch_sql).await, '\t');
    assert_eq!(ch_dups, 0, "clickhouse holds duplicates");
    assert_eq!(ch_tally, want, "clickhouse differs from the source");
    assert_eq!(
        mongo_tally(&mongo).await,
        want,
        "mongo differs from the source"
    );
    // The materialized view counted each row once.
    let mv: u64 = ch
        .query("SELECT sum(orders) FROM revenue_per_minute")
        .await
        .parse()
        .unwrap();
    assert_eq!(mv, wanted, "the materialized view's count");
    // PostgreSQL keeps per-stream order (its rows' seq follows the versions).
    let order = pg.psql("SELECT stream, version FROM orders ORDER BY seq");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for line in order.lines() {
        let (s, v) = line.split_once('|').unwrap();
        let v: u64 = v.parse().unwrap();
        let prev = last.insert(s, v);
        assert!(
            prev.is_none_or(|p| p < v),
            "{s}: version {v} after {prev:?}"
        );
    }
    // The pg pipeline reconciles each settled second on its own: a window matched.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = state_of(port, "pg").await.unwrap();
        if s["reconcile"]["ok"] == true {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(d.join("etl.log")).unwrap_or_default();
            let said: Vec<&str> = log.lines().filter(|l| l.contains("reconcil")).collect();
            panic!("no window reconciled: {s}\n{}", said.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Reconciliation of the whole run, source against each sink; then one row deleted from
    // PostgreSQL shows as a mismatch.
    let whole = format!(
        r#"{{"from":"{}","to":"{}"}}"#,
        rfc3339(begun_us / 1_000_000 * 1_000_000),
        rfc3339((now_us() / 1_000_000 + 2) * 1_000_000)
    );
    for name in ["pg", "ch", "mg"] {
        let path = format!("/api/v1/pipelines/{name}/reconcile");
        let (code, _, body) = http(port, "POST", &path, &[], &whole).await;
        assert_eq!(code, 200, "{body}");
        let r = json(&body);
        assert_eq!(r["ok"], true, "{name}: {body}");
        assert_eq!(r["source_rows"], wanted, "{name}: {body}");
    }
    pg.psql("DELETE FROM orders WHERE seq = (SELECT min(seq) FROM orders)");
    let (_, _, body) = http(port, "POST", "/api/v1/pipelines/pg/reconcile", &[], &whole).await;
    let r = json(&body);
    assert_eq!(
        (r["ok"].clone(), r["sink_rows"].as_u64()),
        (serde_json::json!(false), Some(wanted - 1)),
        "{body}"
    );
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], "").await;
    assert!(
        metrics
            .contains("strata_etl_reconcile_windows_total{pipeline=\"pg\",result=\"mismatch\"} 1"),
        "{metrics}"
    );
    let (code, _, body) = http(
        port,
        "POST",
        "/api/v1/pipelines/pg/reconcile",
        &[],
        r#"{"from":"yesterday","to":"now"}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // Bad events: quarantined once each per pipeline, with the reason.
    for name in ["pg", "ch", "mg"] {
        let q = client
            .read_stream(&format!("etl-quarantine-{name}"), None, 1_000_000)
            .await
            .unwrap_or_default();
        assert_eq!(q.len() as u64, bad, "{name}'s quarantine");
        let first: serde_json::Value = serde_json::from_slice(&q[0].data).unwrap();
        assert!(
            first["reason"].as_str().unwrap().contains("outside [0"),
            "{first}"
        );
        let s = state_of(port, name).await.unwrap();
        assert_eq!(s["state"], "running", "{s}");
    }
    // Nothing is waiting: each pipeline's backlog, counted after the end, is 0 events.
    let counted_after = now_us();
    for name in ["pg", "ch", "mg"] {
        let s = wait_state(port, name, |s| {
            s["lag_counted_us"].as_u64() > Some(counted_after)
        })
        .await;
        assert_eq!(
            (s["lag_events"].as_u64(), s["lag_events_at_least"].as_bool()),
            (Some(0), Some(false)),
            "{name}: {s}"
        );
    }
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], "").await;
    // Lags are observed per row written by this process (the last restart may come after the
    // writer, with nothing left for it to write).
    let ch_rows = state_of(port, "ch").await.unwrap()["rows"].as_u64();
    assert!(
        ch_rows == Some(0) || metrics.contains("strata_etl_lag_seconds_bucket{pipeline=\"ch\""),
        "{ch_rows:?} rows written: {metrics}"
    );
    assert!(
        metrics.contains("strata_etl_lag_events{pipeline=\"mg\"} 0"),
        "{metrics}"
    );
    eprintln!(
        "postgres, clickhouse and mongo: {wanted} rows each, exactly once; {bad} quarantined; {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_bad_pipeline_files_refused_with_their_line_and_a_postgres_reset() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (store_port, port) = (free_port(), free_port());
    // An unknown sink: the service does not start; the error names the file and line.
    let bad = pipeline_file(d, "bad", "postgre", "host=x", "");
    let out = Command::new(STRATA)
        .args([
            "serve",
            "etl",
            "--store",
            &addr(store_port),
            "--listen",
            &addr(port),
        ])
        .env("STRATA_ETL_PIPELINES", &bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{bad}:10: sink.kind: \"postgre\" is not a sink")),
        "{err}"
    );

    // A missing table and a missing column: the pipeline is refused with the line; the other
    // pipeline of the same service runs.
    let _store = dev_store(d, store_port, &[], None);
    wait_http(store_port).await;
    let pg = Postgres::start(d);
    pg.psql("CREATE TABLE orders (stream text, version bigint, sku text, amount double precision)");
    let no_table = pipeline_file(d, "notable", "postgres", &pg.url(), "");
    std::fs::write(
        &no_table,
        std::fs::read_to_string(&no_table)
            .unwrap()
            .replace("table = \"orders\"", "table = \"missing\""),
    )
    .unwrap();
    let no_column = pipeline_file(d, "nocolumn", "postgres", &pg.url(), "");
    let good = pipeline_file(
        d,
        "good",
        "postgres",
        &pg.url(),
        "[throttle]\nslot_lag_max_bytes = 1048576\n",
    );
    let without_at = std::fs::read_to_string(&good).unwrap().replace(
        "[[column]]\nname = \"at\"\nfrom = \"$time\"\ntype = \"time\"\n",
        "",
    );
    assert!(!without_at.contains("\"at\""));
    std::fs::write(&good, without_at).unwrap();
    let _etl = serve_etl(
        d,
        port,
        store_port,
        &[no_table.clone(), no_column.clone(), good],
    );
    wait_http(port).await;
    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();
    client
        .append("order-1", ExpectedVersion::Any, vec![order(1), order(2)])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = state_of(port, "notable").await;
        let b = state_of(port, "nocolumn").await;
        let rows: u64 = pg.psql("SELECT count(*) FROM orders").parse().unwrap();
        if let (Some(a), Some(b)) = (&a, &b) {
            if a["state"] == "refused" && b["state"] == "refused" && rows == 2 {
                assert_eq!(a["error"], format!("{no_table}:12: sink.table: PostgreSQL has no table missing (create it first)"));
                assert_eq!(
                    b["error"],
                    format!("{no_column}:32: column at: table orders has no such column")
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "{a:?} {b:?} rows {rows}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _, body) = http(port, "GET", "/health", &[], "").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("refused"), "{body}");
    // Reset: only when paused; to the start, the table is emptied and written again.
    let (code, _, body) = http(
        port,
        "POST",
        "/api/v1/pipelines/good/reset",
        &[],
        r#"{"to":"start"}"#,
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let (code, _, body) = http(port, "POST", "/api/v1/pipelines/good/pause", &[], "").await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = http(port, "POST", "/api/v1/pipelines/nope/pause", &[], "").await;
    assert_eq!(code, 404);
    let paused = |s: &Option<serde_json::Value>| s.as_ref().is_some_and(|s| s["state"] == "paused");
    while !paused(&state_of(port, "good").await) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, body) = http(
        port,
        "POST",
        "/api/v1/pipelines/good/reset",
        &[],
        r#"{"to":"middle"}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, _, body) = http(
        port,
        "POST",
        "/api/v1/pipelines/good/reset",
        &[],
        r#"{"to":"start"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("SELECT count(*) FROM orders") != "0" {
        assert!(
            Instant::now() < deadline,
            "the reset did not empty the table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        paused(&state_of(port, "good").await),
        "paused after a reset"
    );
    // Paused after the reset, the group is at the start: both events wait, counted.
    let counted_after = now_us();
    let s = wait_state(port, "good", |s| {
        s["lag_counted_us"].as_u64() > Some(counted_after)
    })
    .await;
    assert_eq!(s["lag_events"], 2, "{s}");
    assert!(s["lag_oldest_seconds"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM orders"),
        "0",
        "paused: nothing written"
    );
    let (code, _, body) = http(port, "POST", "/api/v1/pipelines/good/resume", &[], "").await;
    assert_eq!(code, 200, "{body}");
    while pg.psql("SELECT count(*) FROM orders") != "2" {
        assert!(
            Instant::now() < deadline,
            "the reset pipeline did not write again: {:?}",
            state_of(port, "good").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pg.psql("SELECT count(DISTINCT version) || '/' || count(*) FROM orders"),
        "2/2"
    );
    let counted_after = now_us();
    let s = wait_state(port, "good", |s| {
        s["lag_counted_us"].as_u64() > Some(counted_after)
    })
    .await;
    assert_eq!(
        (s["lag_events"].clone(), s["lag_oldest_seconds"].clone()),
        (0.into(), 0.0.into()),
        "{s}"
    );

    // The throttle reads the sink server's replication slots: a slot left behind by more WAL
    // than `slot_lag_max_bytes` (1 MiB here) slows the pipeline, naming the slot; dropped, the
    // pace goes back to 0.
    pg.psql("SELECT pg_create_physical_replication_slot('lagging', true)");
    pg.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 10000) g",
    );
    let mut n = 100;
    let throttled = |s: &serde_json::Value| {
        s["throttle"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("replication slot lagging is "))
            && s["throttle"]["pace_ms"].as_u64() > Some(0)
            && s["throttle"]["slot"]["bytes"].as_u64() > Some(1 << 20)
    };
    append_until(&client, port, &mut n, throttled, "not slowed by the slot").await;
    pg.psql("SELECT pg_drop_replication_slot('lagging')");
    let s = append_until(
        &client,
        port,
        &mut n,
        |s| s["throttle"]["pace_ms"] == 0 && s["throttle"]["reason"].is_null(),
        "still slowed",
    )
    .await;
    assert!(s["throttle"]["slot"].is_null(), "{s}");
}

/// Orders `from..to`, 50 to an append, each run of seven to one stream.
async fn append_orders(client: &Client, from: u64, to: u64) {
    let mut n = from;
    while n < to {
        let stream = format!("order-{}", (n / 7) % STREAMS);
        let batch: Vec<pb::NewEvent> = (n..(n + 50).min(to)).map(order).collect();
        n += batch.len() as u64;
        client
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
}

/// Waits (up to 120 s) until PostgreSQL's `orders` holds `want` rows; then they must be the
/// source's, each once.
async fn wait_postgres_rows(pg: &Postgres, client: &Client, port: u16, what: &str) {
    let (want, _) = source_tally(client).await;
    let wanted: u64 = want.values().map(|t| t.0).sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows: u64 = pg.psql("SELECT count(*) FROM orders").parse().unwrap();
        if rows >= wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: postgres holds {rows} of {wanted} rows; {:?}",
            state_of(port, "pg").await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sql = "SELECT stream, count(*), count(DISTINCT version), sum(version), sum(round(amount * 100)) FROM orders GROUP BY stream ORDER BY stream";
    let (tally, dups) = parse_tally(&pg.psql(sql), '|');
    assert_eq!(dups, 0, "{what}: postgres holds duplicates");
    assert_eq!(tally, want, "{what}: postgres differs from the source");
}

/// A sink that lost writes it had acknowledged — here PostgreSQL restored from a backup taken
/// halfway, its rows and checkpoints as they were then; MongoDB's unjournaled commits lost in
/// a crash are the same — while the group had committed past them: the pipeline goes back to
/// the sink's checkpoints and writes the rest again, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_a_sink_restored_from_an_older_backup_is_filled_again() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_store, store_port, port) = logged_store(d).await;
    let pg = Postgres::start(d);
    pg.psql("CREATE TABLE orders (seq bigserial PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, sku text, amount double precision, at timestamptz)");
    let pipelines = [pipeline_file(d, "pg", "postgres", &pg.url(), "")];
    let mut etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;
    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();

    append_orders(&client, 0, 1000).await;
    wait_postgres_rows(&pg, &client, port, "before the backup").await;
    pg.psql("CREATE TABLE orders_backup AS SELECT * FROM orders; CREATE TABLE checkpoints_backup AS SELECT * FROM strata_etl_checkpoints");
    let backed_up: u64 = pg.psql("SELECT count(*) FROM orders").parse().unwrap();
    append_orders(&client, 1000, 2000).await;
    wait_postgres_rows(&pg, &client, port, "before the restore").await;
    let s = state_of(port, "pg").await.unwrap();
    assert_eq!(s["rewinds"], 0, "{s}");

    // The restore, with the service stopped (as an operator would).
    etl.0.kill().unwrap();
    etl.0.wait().unwrap();
    pg.psql("TRUNCATE orders; INSERT INTO orders SELECT * FROM orders_backup; DELETE FROM strata_etl_checkpoints; INSERT INTO strata_etl_checkpoints SELECT * FROM checkpoints_backup");
    let restored: u64 = pg.psql("SELECT count(*) FROM orders").parse().unwrap();
    assert_eq!(restored, backed_up);
    etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;
    wait_postgres_rows(&pg, &client, port, "after the restore").await;
    let s = state_of(port, "pg").await.unwrap();
    assert!(s["rewinds"].as_u64().unwrap() >= 1, "{s}");
    // And on: new orders arrive once each.
    append_orders(&client, 2000, 2300).await;
    wait_postgres_rows(&pg, &client, port, "after more orders").await;
    let log = std::fs::read_to_string(d.join("etl.log")).unwrap();
    assert!(log.contains("the sink holds less than the group committed"));
    drop(etl);
}

/// ClickHouse's TTL drops a day's partition whose rows held a pipeline partition's greatest
/// positions, while an older checkpoint row (from a write of passed-over events only) is
/// there: the checkpoint is written again before the drop, so the restarted pipeline does not
/// go back and write the expired rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_clickhouse_ttl_drops_old_days_and_keeps_the_checkpoint() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_store, store_port, port) = logged_store(d).await;
    let ch = ClickHouse::start(d).await;
    ch.query("CREATE TABLE orders (stream String, version UInt64, at DateTime, _strata_partition UInt32, _strata_shard UInt32, _strata_position UInt64) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(at) ORDER BY (stream, version)").await;
    let file = d.join("ttl.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "ttl"
[source]
prefix = "ttl-"
event_types = ["Placed"]
partitions = 1
[sink]
kind = "clickhouse"
url = "{}"
table = "orders"
ttl_days = 3
{}{}{}"#,
            ch.url(),
            column("stream", "$stream", "text"),
            column("version", "$version", "int"),
            column("at", "/at", "time"),
        ),
    )
    .unwrap();
    let pipelines = [file.display().to_string()];
    let mut etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;
    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();
    let placed = |ty: &str, days_ago: u64| pb::NewEvent {
        id: String::new(),
        r#type: ty.into(),
        data: format!(
            r#"{{"at":"{}"}}"#,
            rfc3339(now_us() - days_ago * 86_400_000_000)
        )
        .into_bytes()
        .into(),
        metadata: Default::default(),
    };
    // A write of a passed-over event only: a checkpoint row.
    client
        .append("ttl-a", ExpectedVersion::Any, vec![placed("Viewed", 0)])
        .await
        .unwrap();
    wait_state(port, "ttl", |s| s["events"].as_u64() >= Some(1)).await;
    // Ten days old: written, then dropped by the TTL (the first writes of a session apply it,
    // then every minute: a new session).
    etl.0.kill().unwrap();
    etl.0.wait().unwrap();
    etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;
    client
        .append(
            "ttl-a",
            ExpectedVersion::Any,
            (0..5).map(|_| placed("Placed", 10)).collect(),
        )
        .await
        .unwrap();
    wait_state(port, "ttl", |s| s["rows"].as_u64() >= Some(5)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ch.query("SELECT count() FROM orders").await.trim() != "0" {
        assert!(Instant::now() < deadline, "the TTL dropped nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Restarted: nothing to go back to, nothing written again; a new order arrives once.
    etl.0.kill().unwrap();
    etl.0.wait().unwrap();
    etl = serve_etl(d, port, store_port, &pipelines);
    wait_http(port).await;
    client
        .append("ttl-b", ExpectedVersion::Any, vec![placed("Placed", 0)])
        .await
        .unwrap();
    let s = wait_state(port, "ttl", |s| s["rows"].as_u64() >= Some(1)).await;
    assert_eq!(s["rewinds"], 0, "{s}");
    assert_eq!(ch.query("SELECT count() FROM orders").await.trim(), "1");
    drop(etl);
}

/// Appends an order to `order-2` every 300 ms until pipeline `good`'s state is `ok` (within
/// 30 s, else the test fails saying `what`); that state.
async fn append_until(
    client: &Client,
    port: u16,
    n: &mut u64,
    ok: impl Fn(&serde_json::Value) -> bool,
    what: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        client
            .append("order-2", ExpectedVersion::Any, vec![order(*n)])
            .await
            .unwrap();
        *n += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = state_of(port, "good").await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
    }
}

/// A transform in code ([`strata_etl::mapping::Transform`]): the pipeline file names the
/// table's columns, the code fills them (here: the SKU in capitals, the amount doubled), and
/// what it refuses is quarantined with its reason. Run in this process over a real node and a
/// private PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_code_transform_into_postgres() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use strata_etl::mapping::{Located, Row, Transform, Value};
    use strata_etl::runner::{self, TransformFactory};

    struct Capitals;
    impl Transform for Capitals {
        fn row(&mut self, at: Located<'_>) -> Result<Row, String> {
            let e = at.event;
            let data: serde_json::Value =
                serde_json::from_slice(&e.data).map_err(|e| e.to_string())?;
            let amount = data["amount"].as_f64().ok_or("no amount")?;
            if amount > 90.0 {
                return Err(format!("amount {amount} needs a manager"));
            }
            let sku = data["sku"].as_str().ok_or("no sku")?.to_uppercase();
            Ok(Row {
                values: vec![
                    Value::Text(e.stream.clone()),
                    Value::Int(e.version as i64),
                    Value::Text(sku),
                    Value::Float(amount * 2.0),
                    Value::Time(e.timestamp_us),
                ],
                shard: at.shard,
                position: e.position,
                stream: e.stream.clone(),
                version: e.version,
                appended_us: e.timestamp_us,
            })
        }
    }

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store_port = free_port();
    let _store = dev_store(d, store_port, &[], None);
    wait_http(store_port).await;
    let pg = Postgres::start(d);
    pg.psql("CREATE TABLE orders (stream text, version bigint, sku text, amount double precision, at timestamptz)");
    let file = pipeline_file(d, "coded", "postgres", &pg.url(), "");
    let pipeline = strata_etl::pipeline::load(Path::new(&file)).unwrap();
    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let counter = made.clone();
    let factory: TransformFactory = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::new(Capitals)
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let h = runner::start(
        pipeline,
        client.clone(),
        "test".into(),
        Arc::new(strata_service::Metrics::default()),
        stopping,
        factory,
    );
    for n in 1..=100u64 {
        let e = pb::NewEvent {
            id: uuid::Uuid::from_u128(0xc0de_0000 + u128::from(n)).to_string(),
            r#type: "OrderPlaced".into(),
            data: format!(r#"{{"sku":"sku-{}","amount":{n}}}"#, n % 5)
                .into_bytes()
                .into(),
            metadata: Default::default(),
        };
        let stream = format!("order-{}", n % 7);
        client
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.status().events < 100 {
        assert!(Instant::now() < deadline, "{:?}", h.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pg.psql("SELECT count(*) || ' ' || count(*) FILTER (WHERE sku LIKE 'SKU-_') || ' ' || sum(amount) FROM orders"),
        format!("90 90 {}", 2 * (1..=90).sum::<u64>())
    );
    let q = client
        .read_stream("etl-quarantine-coded", None, 1000)
        .await
        .unwrap();
    let mut reasons: Vec<String> = q
        .iter()
        .map(|e| {
            let q: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
            q["reason"].as_str().unwrap().to_string()
        })
        .collect();
    reasons.sort();
    let mut wanted: Vec<String> = (91..=100)
        .map(|n| format!("amount {n} needs a manager"))
        .collect();
    wanted.sort();
    assert_eq!(reasons, wanted);
    assert_eq!(h.status().quarantined, 10);
    assert_eq!(made.load(Ordering::SeqCst), 1, "one transform per session");
    stop.send_replace(true);
}

/// Outbox rows committed (and some rolled back) in PostgreSQL while the ETL service is killed
/// -9 and the node is killed -9 and restarted: each committed row is exactly one event (found
/// by its `outbox_id`), each rolled-back row none. `STRATA_ETL_OUTBOX_TXNS` (default 3,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_postgres_outbox_rows_become_events_exactly_once_under_kills() {
    let _serial = SERIAL.lock().await;
    let txns = env_or("STRATA_ETL_OUTBOX_TXNS", 3_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (store_port, port) = (free_port(), free_port());
    let mut store = dev_store(d, store_port, &[], Some(&d.join("store.log")));
    wait_http(store_port).await;
    let pg = Postgres::start(d);
    pg.psql("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)");
    pg.psql("CREATE TABLE outbox (id bigserial PRIMARY KEY, stream text NOT NULL, type text NOT NULL, data jsonb NOT NULL, metadata jsonb)");
    let file = d.join("shop.toml");
    std::fs::write(&file, format!("name = \"shop\"\nurl = \"{}\"\ntable = \"public.outbox\"\nbatch_max = 500\npoll_ms = 20\n", pg.url())).unwrap();
    let config = d.join("etl.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nstore = [\"{}\"]\n[etl]\noutboxes = [{:?}]\n",
            addr(port),
            addr(store_port),
            file.display().to_string()
        ),
    )
    .unwrap();
    let start_etl = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("etl.log"))
            .unwrap();
        Proc(
            Command::new(STRATA)
                .args(["serve", "etl", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let mut etl = start_etl();
    wait_http(port).await;

    // The application: an order and one or two outbox rows per transaction; every 10th rolled back.
    let (app, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let writer = tokio::spawn(async move {
        let mut app = app;
        let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
        for t in 0..txns {
            let tx = app.transaction().await.unwrap();
            tx.execute(
                "INSERT INTO orders (item) VALUES ($1)",
                &[&format!("item-{t}")],
            )
            .await
            .unwrap();
            let mut ids = Vec::new();
            for k in 0..(1 + t % 2) {
                let stream = format!("shop-{}", (t + k) % 20);
                let data = format!(r#"{{"order":{t},"part":{k}}}"#);
                let row = tx
                    .query_one("INSERT INTO outbox (stream, type, data) VALUES ($1, 'OrderPlaced', $2::text::jsonb) RETURNING id", &[&stream, &data])
                    .await
                    .unwrap();
                ids.push(row.get::<_, i64>(0));
            }
            if t % 10 == 9 {
                tx.rollback().await.unwrap();
                rolled_back.extend(ids);
            } else {
                tx.commit().await.unwrap();
                committed.extend(ids);
            }
        }
        (committed, rolled_back)
    });

    let mut seed = txns ^ 0x5851_f42d_4c95_7f2d;
    let mut pause_ms = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        200 + (seed >> 33) % 800
    };
    for k in 0..5 {
        tokio::time::sleep(Duration::from_millis(pause_ms())).await;
        if k == 2 {
            // The node: killed -9 and restarted on its data; the outbox waits meanwhile.
            store.0.kill().unwrap();
            store.0.wait().unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            store = dev_store(d, store_port, &[], Some(&d.join("store2.log")));
            wait_http(store_port).await;
            continue;
        }
        etl.0.kill().unwrap();
        etl.0.wait().unwrap();
        etl = start_etl();
        wait_http(port).await;
    }
    let (committed, rolled_back) = writer.await.unwrap();

    let client = Client::new(ClientConfig::new(vec![addr(store_port)])).unwrap();
    let want: std::collections::BTreeSet<i64> = committed.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let mut ids = Vec::new();
        for s in 0..20 {
            for e in client
                .read_stream(&format!("shop-{s}"), None, 1_000_000)
                .await
                .unwrap_or_default()
            {
                let m: serde_json::Value = serde_json::from_slice(&e.metadata).unwrap();
                ids.push(m["outbox_id"].as_i64().unwrap());
            }
        }
        if ids.len() >= want.len() || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let got: std::collections::BTreeSet<i64> = events.iter().copied().collect();
    assert_eq!(events.len(), got.len(), "an outbox row became two events");
    assert_eq!(got, want, "the events are not the committed rows");
    assert!(
        rolled_back.iter().all(|id| !got.contains(id)),
        "a rolled-back row became an event"
    );
    let (_, _, body) = http(port, "GET", "/api/v1/outboxes", &[], "").await;
    let status = json(&body);
    assert_eq!(status["outboxes"][0]["state"], "running", "{body}");
    eprintln!(
        "outbox: {} committed rows, {} events, {} rolled back, none of them events; {body}",
        want.len(),
        events.len(),
        rolled_back.len()
    );
}
