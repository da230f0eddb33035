//! The consistency service (`strata serve consistency`, port 8095): Jepsen runs over HTTP.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /runs` | starts a run: JSON `{"workload", "nemesis", "time", "clients", "nodes", "shards", "fault_secs", "seed", "target"}` (each optional, as `strata jepsen`'s flags; `time` default 60; `target` a list of client addresses of an existing cluster, with `"nemesis": "none"`) → 202 with its id; 409 while another run is under way (one at a time: each run is a cluster of its own on this machine, or load on the target); 400 naming a bad field |
//! | `GET /runs` | the runs kept (the last [`RUNS_KEPT`]), newest first |
//! | `GET /runs/{id}` | one run: state (`running`, `done`, `failed`), progress (0 to 1, by time), the verdict and counts when done |
//! | `GET /runs/{id}/report` | its `report.json` (404 until done) |
//! | `GET /runs/{id}/report.html` | its `report.html` |
//!
//! Each finished run is also recorded in the store (everything is the log): one event in the
//! stream `consistency-runs` (type `run-finished`, data the report without its witnesses'
//! text past [`RECORD_BYTES_MAX`], metadata `{"correlation_id": …}` of the request that
//! started it). Settings: `[consistency] runs_dir` (default: the system's temporary
//! directory), where each run's directory goes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::json;
use strata_client::{pb, Client, ExpectedVersion};
use strata_service::{CorrelationId, Metrics, Settings};

use crate::jepsen::{self, JepsenArgs, NemesisKind, Report, Workload};

/// The service's port.
pub const PORT: u16 = 8095;
/// Runs kept in memory (older ones are in the store, and their directories on disk).
pub const RUNS_KEPT: usize = 20;
/// Largest request body, bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest event recorded in the store per run, bytes (witnesses are cut to fit).
pub const RECORD_BYTES_MAX: usize = 256 * 1024;
/// The stream finished runs are recorded in.
pub const RUNS_STREAM: &str = "consistency-runs";

/// What `POST /runs` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    workload: Option<String>,
    nemesis: Option<String>,
    time: Option<u64>,
    clients: Option<u64>,
    nodes: Option<u64>,
    shards: Option<u32>,
    fault_secs: Option<u64>,
    seed: Option<u64>,
    target: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum RunState {
    Running,
    Done(Box<Report>),
    Failed(String),
}

#[derive(Debug, Clone)]
struct Run {
    id: u64,
    args: JepsenArgs,
    started: Instant,
    state: RunState,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        let expected = self.args.time + 3;
        let elapsed = self.started.elapsed().as_secs_f64();
        let (state, progress) = match &self.state {
            RunState::Running => ("running", (elapsed / expected as f64).min(0.99)),
            RunState::Done(_) => ("done", 1.0),
            RunState::Failed(_) => ("failed", 1.0),
        };
        let mut v = json!({
            "id": self.id,
            "workload": jepsen::name(self.args.workload),
            "nemesis": jepsen::name(self.args.nemesis),
            "target": self.args.target,
            "time_secs": self.args.time,
            "state": state,
            "progress": (progress * 100.0).round() / 100.0,
            "elapsed_secs": elapsed.round(),
            "dir": self.args.dir,
            "report": format!("/runs/{}/report", self.id),
        });
        if let Some(obj) = v.as_object_mut() {
            match &self.state {
                RunState::Done(r) => {
                    obj.insert("verdict".into(), json!(r.verdict));
                    obj.insert("ops".into(), json!(r.ops));
                    obj.insert("ok".into(), json!(r.ok));
                    obj.insert("fail".into(), json!(r.fail));
                    obj.insert("info".into(), json!(r.info));
                }
                RunState::Failed(e) => {
                    obj.insert("error".into(), json!(e));
                }
                RunState::Running => {}
            }
        }
        v
    }
}

#[derive(Debug, Default)]
struct Runs {
    next_id: u64,
    kept: VecDeque<Run>,
}

/// The service's state.
#[derive(Clone)]
pub struct Consistency {
    runs: Arc<Mutex<Runs>>,
    runs_dir: PathBuf,
    test_build: bool,
    metrics: Arc<Metrics>,
    store: Client,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

impl Consistency {
    /// The service over `settings`; `test_build` says whether this binary can plant bugs.
    pub fn new(
        settings: &Settings,
        store: Client,
        metrics: Arc<Metrics>,
        test_build: bool,
    ) -> Result<Consistency, String> {
        let runs_dir = settings
            .section_str("runs_dir")
            .map_err(|e| e.0)?
            .map_or_else(
                || std::env::temp_dir().join("strata-consistency"),
                PathBuf::from,
            );
        std::fs::create_dir_all(&runs_dir)
            .map_err(|e| format!("runs_dir {}: {e}", runs_dir.display()))?;
        Ok(Consistency {
            runs: Arc::new(Mutex::new(Runs::default())),
            runs_dir,
            test_build,
            metrics,
            store,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/runs", post(start).get(list))
            .route("/runs/{id}", get(one))
            .route("/runs/{id}/report", get(report_json))
            .route("/runs/{id}/report.html", get(report_html))
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(self)
    }

    /// What `/health` adds: the run under way, if any.
    pub fn details(&self) -> serde_json::Value {
        let runs = self.lock();
        let active = runs
            .kept
            .iter()
            .find(|r| matches!(r.state, RunState::Running))
            .map(|r| r.id);
        json!({ "active_run": active, "runs_kept": runs.kept.len(), "runs_dir": self.runs_dir })
    }

    fn args(&self, r: RunRequest) -> Result<JepsenArgs, String> {
        let workload = match &r.workload {
            Some(w) => Workload::from_str(w, false).map_err(|_| {
                format!("workload: register, list-append, bank, stream or follower, not {w:?}")
            })?,
            None => Workload::Register,
        };
        let nemesis = match &r.nemesis {
            Some(n) => NemesisKind::from_str(n, false).map_err(|_| {
                let names: Vec<String> = NemesisKind::value_variants()
                    .iter()
                    .map(|v| jepsen::name(*v))
                    .filter(|v| v != "clock")
                    .collect();
                format!("nemesis: one of {}, not {n:?}", names.join(", "))
            })?,
            None => NemesisKind::Partition,
        };
        if nemesis == NemesisKind::Clock {
            return Err("nemesis: clock needs a test build; not offered here".into());
        }
        let args = JepsenArgs {
            workload,
            nemesis,
            time: r.time.unwrap_or(60),
            clients: r.clients.unwrap_or(5),
            nodes: r.nodes.unwrap_or(3),
            shards: r.shards.unwrap_or(1),
            target: r.target.unwrap_or_default(),
            fault_secs: r.fault_secs.unwrap_or(5),
            seed: r.seed,
            dir: None,
            planted_bug: None,
            lose_unsynced: false,
            test_build: self.test_build,
        };
        args.validate().map_err(|f| f.message)?;
        Ok(args)
    }

    async fn record(&self, report: &Report, correlation: &CorrelationId) {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        let mut data = serde_json::to_vec(&value).unwrap_or_default();
        if data.len() > RECORD_BYTES_MAX {
            if let Some(obj) = value.as_object_mut() {
                obj.insert(
                    "anomalies".into(),
                    json!(["(cut: see the run's report.json)"]),
                );
            }
            data = serde_json::to_vec(&value).unwrap_or_default();
        }
        let event = pb::NewEvent {
            id: String::new(),
            r#type: "run-finished".into(),
            data: data.into(),
            metadata: serde_json::to_vec(&json!({ "correlation_id": correlation.0 }))
                .unwrap_or_default()
                .into(),
        };
        if let Err(e) = correlation
            .on(&self.store)
            .append(RUNS_STREAM, ExpectedVersion::Any, vec![event])
            .await
        {
            tracing::warn!(error = %e, "recording the run in the store failed");
        }
    }
}

async fn start(
    State(s): State<Consistency>,
    Extension(correlation): Extension<CorrelationId>,
    body: axum::body::Bytes,
) -> Response {
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the run's JSON: {e}")),
        }
    };
    let mut args = match s.args(request) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // Checked and taken under one lock: two requests cannot both start a run.
    let (id, answer) = {
        let mut runs = s.lock();
        if let Some(r) = runs
            .kept
            .iter()
            .find(|r| matches!(r.state, RunState::Running))
        {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "run {} is under way (/runs/{}): one run at a time",
                    r.id, r.id
                ),
            );
        }
        runs.next_id += 1;
        let id = runs.next_id;
        args.dir = Some(s.runs_dir.join(format!("run-{id}")));
        let run = Run {
            id,
            args: args.clone(),
            started: Instant::now(),
            state: RunState::Running,
        };
        let answer = run.json();
        runs.kept.push_front(run);
        runs.kept.truncate(RUNS_KEPT);
        (id, answer)
    };
    s.metrics.set(
        "strata_consistency_run_active",
        "Whether a run is under way.",
        &[],
        1.0,
    );
    tracing::info!(run = id, workload = %jepsen::name(args.workload), nemesis = %jepsen::name(args.nemesis), "run started");
    let service = s.clone();
    let span = tracing::info_span!("run", run = id, correlation_id = %correlation.0);
    let task = async move {
        let outcome = jepsen::execute(&args).await;
        let verdict = match &outcome {
            Ok(report) => report.verdict.clone(),
            Err(_) => "error".to_string(),
        };
        service.metrics.add(
            "strata_consistency_runs_total",
            "Runs finished, by verdict.",
            &[("verdict", verdict.as_str())],
            1.0,
        );
        let state = match outcome {
            Ok(report) => {
                service.record(&report, &correlation).await;
                RunState::Done(Box::new(report))
            }
            Err(f) => RunState::Failed(f.message),
        };
        tracing::info!(run = id, verdict = %verdict, "run finished");
        if let Some(r) = service.lock().kept.iter_mut().find(|r| r.id == id) {
            r.state = state;
        }
        service.metrics.set(
            "strata_consistency_run_active",
            "Whether a run is under way.",
            &[],
            0.0,
        );
    };
    // The run's log lines carry the correlation id of the request that started it.
    tokio::spawn(tracing::Instrument::instrument(task, span));
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

async fn list(State(s): State<Consistency>) -> Response {
    let runs: Vec<serde_json::Value> = s.lock().kept.iter().map(Run::json).collect();
    Json(json!({ "runs": runs })).into_response()
}

/// The run `id` names, or why not (status and message).
fn find(s: &Consistency, id: &str) -> Result<Run, (StatusCode, String)> {
    let id: u64 = id.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("run id: a number, not {id:?}"),
        )
    })?;
    s.lock()
        .kept
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no run {id} (the last {RUNS_KEPT} are kept)"),
            )
        })
}

async fn one(State(s): State<Consistency>, Path(id): Path<String>) -> Response {
    match find(&s, &id) {
        Ok(run) => Json(run.json()).into_response(),
        Err((code, m)) => error(code, m),
    }
}

async fn file(s: &Consistency, id: &str, name: &str, content_type: &'static str) -> Response {
    let run = match find(s, id) {
        Ok(r) => r,
        Err((code, m)) => return error(code, m),
    };
    match (&run.state, &run.args.dir) {
        (RunState::Done(_), Some(dir)) => match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => ([("content-type", content_type)], bytes).into_response(),
            Err(e) => error(StatusCode::NOT_FOUND, format!("{name}: {e}")),
        },
        (RunState::Failed(e), _) => error(StatusCode::NOT_FOUND, format!("run {id} failed: {e}")),
        _ => error(StatusCode::NOT_FOUND, format!("run {id} is still running")),
    }
}

async fn report_json(State(s): State<Consistency>, Path(id): Path<String>) -> Response {
    file(&s, &id, "report.json", "application/json").await
}

async fn report_html(State(s): State<Consistency>, Path(id): Path<String>) -> Response {
    file(&s, &id, "report.html", "text/html; charset=utf-8").await
}
