//! `strata bench sagas`: the saga flow end to end, measured on this machine. It starts its own
//! node (`strata dev`), the fake provider and the four services (`strata serve saga`,
//! `inventory`, `payment`, `notification`) as child processes of this binary over a fresh data
//! directory (removed at the end; the processes' logs are kept there while it runs), restocks
//! `--skus` SKUs, then:
//!
//! 1. for each `--clients N`: N clients for `--duration` seconds, each starting an
//!    `order_processing` saga (`POST /api/v1/sagas`, 1 unit of one of the SKUs) and waiting for
//!    its end before starting the next. Prints sagas/s, latency p50/p99/max (from before the
//!    POST to the saga's final journal entry, seen on a `$all` subscription of the journals),
//!    the outcomes, and CPU per saga of every process;
//! 2. with `--in-flight N` above 0: starts sagas without waiting until N are unfinished,
//!    kills -9 the orchestrator, starts it again, and times the process up (`/health` ok), its
//!    recovery scan done (`/health` → `recovery`), and every saga that was in flight ended.
//!
//! Bounds: `--clients` at most [`CLIENTS_MAX`] each, `--in-flight` at most [`IN_FLIGHT_MAX`],
//! `--duration` at most [`DURATION_MAX_S`]; a saga not ended [`SAGA_WAIT`] after its start
//! counts as an error (the run goes on); the drain after the kill waits [`DRAIN_WAIT`] at most.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_client::{pb, Client, Item, Start, Target};
use strata_service::arrivals::Arrivals;
use strata_service::http_client::HttpClient;

use crate::{output, Failure};

/// Most clients of one run.
pub const CLIENTS_MAX: usize = 1024;
/// Most sagas in flight at the kill.
pub const IN_FLIGHT_MAX: usize = 1_000_000;
/// Longest run, seconds.
pub const DURATION_MAX_S: u64 = 3600;
/// How long a client waits for its saga's end.
pub const SAGA_WAIT: Duration = Duration::from_secs(120);
/// How long the recovery run waits for the sagas in flight to end.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1800);
/// Units each SKU is restocked with.
const STOCK: u64 = 1_000_000_000;
/// How long a process gets to come up.
const START_WAIT: Duration = Duration::from_secs(60);

/// `strata bench sagas`.
#[derive(Debug, clap::Args)]
pub struct BenchSagasArgs {
    /// Concurrent clients of each run, comma-separated (a run per number).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds of each run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Sagas in flight when the orchestrator is killed (0: no recovery run).
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// SKUs the orders spread over (each an aggregate; fewer: more contention on each).
    #[arg(long, default_value_t = 100)]
    skus: usize,
    /// Where the run's data directory is made.
    #[arg(long, default_value = "/tmp")]
    data_parent: PathBuf,
}

fn bad_usage(message: String) -> Failure {
    Failure {
        message,
        exit_code: 2,
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchSagasArgs) -> Result<(), Failure> {
    if args.clients.is_empty() || args.clients.iter().any(|c| !(1..=CLIENTS_MAX).contains(c)) {
        return Err(bad_usage(format!(
            "--clients: numbers from 1 to {CLIENTS_MAX}"
        )));
    }
    if !(1..=DURATION_MAX_S).contains(&args.duration) || args.in_flight > IN_FLIGHT_MAX {
        return Err(bad_usage(format!(
            "--duration: 1 to {DURATION_MAX_S} s; --in-flight: at most {IN_FLIGHT_MAX}"
        )));
    }
    if args.skus == 0 {
        return Err(bad_usage("--skus: at least 1".into()));
    }
    let mut rig = Rig::start(&args.data_parent).await?;
    let ends = Ends::watch(&rig.store).await?;
    rig.restock(args.skus).await?;
    let orders = Orders {
        http: rig.http.clone(),
        url: format!("{}/api/v1/sagas", rig.url("saga")),
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        skus: args.skus,
        next: Arc::new(AtomicUsize::new(0)),
    };
    for &clients in &args.clients {
        let cpu = rig.cpu();
        let started = Instant::now();
        let results = closed_loop(&orders, &ends, clients, args.duration).await;
        let elapsed = started.elapsed();
        report_run(clients, results, elapsed, rig.cpu_since(&cpu));
    }
    if args.in_flight > 0 {
        recovery(&mut rig, &orders, &ends, args.in_flight).await?;
    }
    Ok(())
}

/// The node, the provider and the services, as child processes.
struct Rig {
    dir: PathBuf,
    exe: PathBuf,
    store: Client,
    store_addr: String,
    ports: HashMap<&'static str, u16>,
    children: BTreeMap<&'static str, Child>,
    http: HttpClient,
}

const SERVICES: [&str; 4] = ["saga", "inventory", "payment", "notification"];

fn free_port() -> Result<u16, Failure> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::new(format!("no free port: {e}")))
}

impl Rig {
    async fn start(parent: &Path) -> Result<Rig, Failure> {
        let dir = parent.join(format!(
            "strata-bench-sagas-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(format!("{}: {e}", dir.display())))?;
        let exe = std::env::current_exe()
            .map_err(|e| Failure::new(format!("this program's path: {e}")))?;
        let mut ports = HashMap::new();
        for name in ["store", "provider"].into_iter().chain(SERVICES) {
            ports.insert(name, free_port()?);
        }
        let store_addr = format!("127.0.0.1:{}", ports["store"]);
        let store = Client::connect([store_addr.clone()]).map_err(crate::client::failure)?;
        let mut rig = Rig {
            dir,
            exe,
            store,
            store_addr,
            ports,
            children: BTreeMap::new(),
            http: HttpClient::new(),
        };
        let data = rig.dir.join("store");
        let store_addr = rig.store_addr.clone();
        rig.spawn(
            "store",
            &[
                "dev".as_ref(),
                "--metrics".as_ref(),
                "off".as_ref(),
                "--listen".as_ref(),
                store_addr.as_ref(),
                "--data".as_ref(),
                data.as_os_str(),
            ],
        )?;
        let provider = format!("127.0.0.1:{}", rig.ports["provider"]);
        rig.spawn(
            "provider",
            &[
                "fake-provider".as_ref(),
                "--listen".as_ref(),
                provider.as_ref(),
            ],
        )?;
        for name in SERVICES {
            rig.serve(name)?;
        }
        rig.wait_store().await?;
        for name in ["provider"].into_iter().chain(SERVICES) {
            rig.wait_healthy(name).await?;
        }
        Ok(rig)
    }

    fn url(&self, name: &str) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get(name).copied().unwrap_or(0)
        )
    }

    fn spawn(&mut self, name: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), Failure> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| Failure::new(format!("{name}'s log: {e}")))?;
        let child = Command::new(&self.exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Failure::new(format!("starting {name}: {e}")))?;
        self.children.insert(name, child);
        Ok(())
    }

    /// `strata serve NAME` with its own TOML file (its port, the store, the provider).
    fn serve(&mut self, name: &'static str) -> Result<(), Failure> {
        let section = match name {
            "payment" => format!("provider = \"{}\"", self.url("provider")),
            "notification" => "channels = \"log\"".into(),
            _ => String::new(),
        };
        let config = self.dir.join(format!("{name}.toml"));
        let text = format!(
            "listen = \"127.0.0.1:{}\"\nstore = [\"{}\"]\n[{name}]\n{section}\n",
            self.ports[name], self.store_addr
        );
        std::fs::write(&config, text)
            .map_err(|e| Failure::new(format!("{}: {e}", config.display())))?;
        self.spawn(
            name,
            &[
                "serve".as_ref(),
                name.as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ],
        )
    }

    async fn wait_store(&self) -> Result<(), Failure> {
        let deadline = Instant::now() + START_WAIT;
        while self
            .store
            .stream_info("bench-probe", pb::Consistency::Linearizable)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(self.not_up("store"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// `/health` of `name`, when it answers.
    async fn health(&self, name: &str) -> Option<serde_json::Value> {
        let url = format!("{}/health", self.url(name));
        let a = self.http.get(&url, Duration::from_secs(2)).await.ok()?;
        (a.status == 200 && a.json["status"] != "unhealthy").then_some(a.json)
    }

    async fn wait_healthy(&self, name: &str) -> Result<serde_json::Value, Failure> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(h) = self.health(name).await {
                return Ok(h);
            }
            if Instant::now() > deadline {
                return Err(self.not_up(name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn not_up(&self, name: &str) -> Failure {
        Failure::new(format!(
            "{name} did not come up within {START_WAIT:?} (its log: {})",
            self.dir.join(format!("{name}.log")).display()
        ))
    }

    async fn restock(&self, skus: usize) -> Result<(), Failure> {
        for n in 0..skus {
            let url = format!("{}/api/v1/inventory/sku-{n}/restock", self.url("inventory"));
            let a = self
                .http
                .call(
                    "POST",
                    &url,
                    &[],
                    &json!({ "quantity": STOCK }),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| Failure::new(format!("restocking: {e}")))?;
            if a.status >= 300 {
                return Err(Failure::new(format!("restocking: {} {}", a.status, a.json)));
            }
        }
        Ok(())
    }

    /// CPU used so far by each process, µs.
    fn cpu(&self) -> BTreeMap<&'static str, u64> {
        let mut cpu: BTreeMap<&'static str, u64> = self
            .children
            .iter()
            .map(|(name, c)| (*name, strata_service::process::cpu_us(c.id())))
            .collect();
        cpu.insert("bench", strata_service::process::cpu_us(std::process::id()));
        cpu
    }

    fn cpu_since(&self, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
        self.cpu()
            .into_iter()
            .map(|(name, after)| {
                let b = before.get(name).copied().unwrap_or(0);
                (name, after.saturating_sub(b))
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in self.children.values() {
            // SAFETY: kill(2) on a child we started (and have not reaped).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        for child in self.children.values_mut() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sagas' ends (outcomes by saga id), from a `$all` subscription of their final journal
/// entries.
#[derive(Default)]
struct Ends(Arrivals<String>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ends {
    /// Follows the journals from now on (returns once the subscription is live).
    async fn watch(store: &Client) -> Result<Arc<Ends>, Failure> {
        let ends = Arc::new(Ends::default());
        let filter = pb::Filter {
            stream_prefix: "saga-".into(),
            event_types: ["saga-completed", "saga-compensated", "saga-needs-attention"]
                .map(String::from)
                .to_vec(),
            partitions: None,
        };
        let mut sub = store.subscribe(Target::All(Some(filter)), Start::End);
        match tokio::time::timeout(START_WAIT, sub.next()).await {
            Ok(Ok(Item::CaughtUp)) => {}
            Ok(Ok(Item::Event(e))) => ends.ended(&e),
            Ok(Err(e)) => return Err(Failure::new(format!("following the journals: {e}"))),
            Err(_) => return Err(Failure::new("following the journals: no answer")),
        }
        let e2 = ends.clone();
        tokio::spawn(async move {
            loop {
                match sub.next().await {
                    Ok(Item::Event(e)) => e2.ended(&e),
                    Ok(Item::CaughtUp) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "following the journals failed");
                        return;
                    }
                }
            }
        });
        Ok(ends)
    }

    fn ended(&self, e: &pb::RecordedEvent) {
        if let Some(id) = strata_saga::orchestrator::saga_of(&e.stream) {
            let outcome = e.r#type.trim_start_matches("saga-").to_string();
            self.0.arrive(id, outcome);
        }
    }
}

/// Starts orders.
#[derive(Clone)]
struct Orders {
    http: HttpClient,
    url: String,
    run: String,
    skus: usize,
    next: Arc<AtomicUsize>,
}

impl Orders {
    /// Starts one order's saga: its id.
    async fn start(&self) -> Result<String, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let order = format!("bench-{}-{n}", self.run);
        let body = json!({
            "type": "order_processing",
            "data": {"order_id": order, "sku": format!("sku-{}", n % self.skus), "quantity": 1, "amount": 100},
        });
        let a = self
            .http
            .call(
                "POST",
                &self.url,
                &[("idempotency-key", &order)],
                &body,
                Duration::from_secs(30),
            )
            .await?;
        if a.status != 201 && a.status != 200 {
            return Err(format!("starting a saga: {} {}", a.status, a.json));
        }
        a.json["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("starting a saga: no id in {}", a.json))
    }
}

/// What one run's clients saw.
#[derive(Default)]
struct Results {
    latencies: Vec<Duration>,
    outcomes: BTreeMap<String, usize>,
    errors: Vec<String>,
}

/// `clients` clients, each starting a saga and waiting for its end, for `seconds`.
async fn closed_loop(orders: &Orders, ends: &Arc<Ends>, clients: usize, seconds: u64) -> Results {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (orders, ends) = (orders.clone(), ends.clone());
            tokio::spawn(async move {
                let mut r = Results::default();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let end = match orders.start().await {
                        Ok(id) => ends.0.wait(&id, SAGA_WAIT).await,
                        Err(e) => Err(e),
                    };
                    match end {
                        Ok((outcome, at)) => {
                            r.latencies.push(at.saturating_duration_since(began));
                            *r.outcomes.entry(outcome).or_default() += 1;
                        }
                        Err(e) => r.errors.push(e),
                    }
                }
                r
            })
        })
        .collect();
    let mut all = Results::default();
    for t in tasks {
        match t.await {
            Ok(r) => {
                all.latencies.extend(r.latencies);
                for (o, n) in r.outcomes {
                    *all.outcomes.entry(o).or_default() += n;
                }
                all.errors.extend(r.errors);
            }
            Err(e) => all.errors.push(format!("a client failed: {e}")),
        }
    }
    all
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

fn report_run(clients: usize, mut r: Results, elapsed: Duration, cpu: BTreeMap<&'static str, u64>) {
    r.latencies.sort();
    let sagas = r.latencies.len();
    let rate = sagas as f64 / elapsed.as_secs_f64();
    let per_saga = |us: u64| us as f64 / 1e3 / sagas.max(1) as f64;
    let cpu_ms: BTreeMap<&str, f64> = cpu.iter().map(|(n, us)| (*n, per_saga(*us))).collect();
    let total_ms: f64 = cpu.values().map(|us| per_saga(*us)).sum();
    let (p50, p99) = (
        percentile_ms(&r.latencies, 0.5),
        percentile_ms(&r.latencies, 0.99),
    );
    let max = r.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    if let Some(first) = r.errors.first() {
        eprintln!("  {} errors; the first: {first}", r.errors.len());
    }
    eprintln!(
        "strata    clients={clients} sagas={sagas} sagas/s={rate:.1}  latency p50={p50:.1}ms p99={p99:.1}ms max={max:.1}ms  cpu_ms/saga={total_ms:.2} ({})  outcomes={:?} errors={}",
        cpu_ms.iter().map(|(n, ms)| format!("{n} {ms:.2}")).collect::<Vec<_>>().join(", "),
        r.outcomes,
        r.errors.len()
    );
    output::line(&json!({
        "run": "sagas",
        "system": "strata",
        "clients": clients,
        "seconds": elapsed.as_secs_f64(),
        "sagas": sagas,
        "sagas_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "cpu_ms_per_saga": total_ms,
        "cpu_ms_per_saga_by_process": cpu_ms,
        "outcomes": r.outcomes,
        "errors": r.errors.len(),
    }));
}

/// Starts sagas until `target` are unfinished, kills -9 the orchestrator, starts it again and
/// times its recovery.
async fn recovery(
    rig: &mut Rig,
    orders: &Orders,
    ends: &Arc<Ends>,
    target: usize,
) -> Result<(), Failure> {
    let began = Instant::now();
    let ended_before = ends.0.count();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(target)));
    let in_flight = {
        let (ids, ends) = (ids.clone(), ends.clone());
        move || {
            lock(&ids)
                .len()
                .saturating_sub(ends.0.count() - ended_before)
        }
    };
    let creators: Vec<_> = (0..64)
        .map(|_| {
            let (orders, ids, in_flight) = (orders.clone(), ids.clone(), in_flight.clone());
            tokio::spawn(async move {
                let mut errors = 0usize;
                while in_flight() < target && errors < 100 {
                    match orders.start().await {
                        Ok(id) => lock(&ids).push(id),
                        Err(_) => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = 0;
    for c in creators {
        errors += c.await.unwrap_or(1);
    }
    let built = began.elapsed();
    let at_kill = in_flight();
    let started = lock(&ids).len();
    eprintln!(
        "recovery: {started} sagas started in {built:.1?} ({errors} refused); {at_kill} in flight; kill -9 of the orchestrator"
    );
    if let Some(mut saga) = rig.children.remove("saga") {
        let _ = saga.kill();
        let _ = saga.wait();
    }
    let restarted = Instant::now();
    rig.serve("saga")?;
    rig.wait_healthy("saga").await?;
    let healthy = restarted.elapsed();
    let (recovery, recovered) = loop {
        let h = rig.health("saga").await.unwrap_or_default();
        if !h["details"]["recovery"].is_null() {
            break (h["details"]["recovery"].clone(), restarted.elapsed());
        }
        if restarted.elapsed() > START_WAIT {
            return Err(Failure::new(
                "the orchestrator did not recover within a minute",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "recovery: up and healthy after {healthy:.2?}; recovered after {recovered:.2?}: {recovery}"
    );
    let ids = lock(&ids).clone();
    let (drained, outcomes, lost) = drain(&ids, ends, restarted).await;
    eprintln!(
        "recovery: every saga in flight ended {drained:.1?} after the restart: {outcomes:?}, {lost} not ended within {DRAIN_WAIT:?}"
    );
    output::line(&json!({
        "run": "recovery",
        "started": started,
        "in_flight_at_kill": at_kill,
        "healthy_s": healthy.as_secs_f64(),
        "recovered_s": recovered.as_secs_f64(),
        "recovery": recovery,
        "drained_s": drained.as_secs_f64(),
        "drain_sagas_per_s": at_kill as f64 / drained.as_secs_f64().max(1e-9),
        "outcomes": outcomes,
        "not_ended": lost,
    }));
    Ok(())
}

/// Waits for every saga of `ids` to end (printing progress every 5 s): the time from `since`
/// to the last end, their outcomes, and how many did not end within [`DRAIN_WAIT`].
async fn drain(
    ids: &[String],
    ends: &Arc<Ends>,
    since: Instant,
) -> (Duration, BTreeMap<String, usize>, usize) {
    let deadline = Instant::now() + DRAIN_WAIT;
    let ended_before = ends.0.count();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut lost, mut last) = (0, Duration::ZERO);
    for id in ids {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lost += 1;
                break;
            }
            match ends.0.wait(id, left.min(Duration::from_secs(5))).await {
                Ok((o, at)) => {
                    *outcomes.entry(o).or_default() += 1;
                    last = last.max(at.saturating_duration_since(since));
                    break;
                }
                Err(_) => eprintln!(
                    "recovery: {} more ended, {:.0?} after the restart",
                    ends.0.count() - ended_before,
                    since.elapsed()
                ),
            }
        }
    }
    (last, outcomes, lost)
}
