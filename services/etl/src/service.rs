//! The ETL service's HTTP API (port 8092).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/pipelines` | every pipeline: state, error, events, rows, quarantined, rewinds, positions, lag, rate, throttle |
//! | `GET /api/v1/pipelines/{name}` | one |
//! | `POST /api/v1/pipelines/{name}/reconcile` | `{"from": RFC3339, "to": RFC3339}` (whole seconds): the window's rows, source against sink (count, checksum, `ok`); see `reconcile` |
//! | `GET /api/v1/outboxes` | each PostgreSQL outbox source: state, error, events, refused rows, slot position, WAL lag in bytes |
//! | `POST /api/v1/pipelines/{name}/pause` | holds its partitions, writes nothing (→ its state) |
//! | `POST /api/v1/pipelines/{name}/resume` | writes again |
//! | `POST /api/v1/pipelines/{name}/reset` | a paused pipeline, `{"to": "start"}`: its table emptied and every event written again; `{"to": "end"}`: the backlog skipped. It stays paused (409 when not paused) |
//!
//! A pipeline's lag is shown in events (`lag_events`: appended to its source and not yet in
//! the sink, counted by reading the log every few seconds, see [`backlog`];
//! `lag_oldest_seconds`: how long the oldest of them has waited) and in seconds from append to
//! sink (`lag_seconds` of the last write, `lag_p50_ms` and `lag_p99_ms` of the last rows).
//!
//! `/health` lists each pipeline's state; `/metrics` has `strata_etl_events_total`,
//! `_rows_total`, `_quarantined_total`, `_errors_total`, `_rewinds_total` (partitions moved back
//! to a sink that held less than the group had committed), `_lag_seconds` (a histogram from
//! append to sink), `_lag_events`, `_write_seconds`, `_pace_seconds` per pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use strata_client::Client;
use strata_service::api::ApiError;
use strata_service::{Metrics, Settings};
use tokio::sync::watch;

use crate::clock::now_us;

use crate::runner::{self, Control, Handle, ResetTo, State as PipelineState};
use crate::{backlog, outbox, pipeline, reconcile};

/// The service's port.
pub const PORT: u16 = 8092;
/// Most pipelines one service runs.
pub const PIPELINES_MAX: usize = 64;

/// The service.
#[derive(Clone)]
pub struct Etl {
    handles: Arc<Vec<Handle>>,
    store: Client,
    metrics: Arc<Metrics>,
    outboxes: Arc<Vec<outbox::OutboxHandle>>,
}

/// The files the settings name under `key`: `[etl] KEY = […]`, else the environment's
/// `STRATA_ETL_KEY` (comma-separated).
fn files(settings: &Settings, key: &str) -> Result<Vec<PathBuf>, String> {
    let list = || format!("[etl] {key}: a list of file names");
    let files: Vec<PathBuf> = match settings.section.get(key) {
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(PathBuf::from).ok_or_else(list))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(list()),
        None => std::env::var(format!("STRATA_ETL_{}", key.to_uppercase()))
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| PathBuf::from(s.trim()))
            .collect(),
    };
    if files.len() > PIPELINES_MAX {
        return Err(format!("{} {key}; at most {PIPELINES_MAX}", files.len()));
    }
    Ok(files)
}

/// Transforms in code, by the name of the pipeline each is for (see [`Etl::with_transforms`]).
pub type Transforms = std::collections::HashMap<String, runner::TransformFactory>;

impl Etl {
    /// Reads and checks every pipeline file (the first bad one is the error, with its line),
    /// then starts them, each with the declarative mapping of its file.
    pub fn new(
        settings: &Settings,
        store: Client,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
    ) -> Result<Etl, String> {
        Etl::with_transforms(settings, store, metrics, stopping, Transforms::new())
    }

    /// [`Etl::new`], where the pipelines `transforms` names turn events into rows by code (a
    /// program of its own embedding this crate); a name that is no pipeline's is an error.
    pub fn with_transforms(
        settings: &Settings,
        store: Client,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
        mut transforms: Transforms,
    ) -> Result<Etl, String> {
        let mut pipelines = Vec::new();
        for f in files(settings, "pipelines")? {
            let p = pipeline::load(&f).map_err(|e| e.to_string())?;
            if pipelines
                .iter()
                .any(|q: &pipeline::Pipeline| q.name == p.name)
            {
                return Err(format!(
                    "{}: a pipeline named {:?} is defined twice",
                    p.file, p.name
                ));
            }
            pipelines.push(p);
        }
        let mut unknown: Vec<&String> = transforms
            .keys()
            .filter(|name| !pipelines.iter().any(|p| &&p.name == name))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!("transforms for no pipeline: {unknown:?}"));
        }
        let mut outboxes = Vec::new();
        for f in files(settings, "outboxes")? {
            let o = outbox::load(&f).map_err(|e| e.to_string())?;
            if outboxes.iter().any(|q: &outbox::Outbox| q.name == o.name) {
                return Err(format!(
                    "{}: an outbox named {:?} is defined twice",
                    o.file, o.name
                ));
            }
            outboxes.push(o);
        }
        let outboxes = outboxes
            .into_iter()
            .map(|o| outbox::start(o, store.clone(), stopping.clone()))
            .collect();
        let member = format!("etl-{}", std::process::id());
        let handles: Vec<Handle> = pipelines
            .into_iter()
            .map(|p| {
                let transform = transforms
                    .remove(&p.name)
                    .unwrap_or_else(runner::declarative);
                runner::start(
                    p,
                    store.clone(),
                    member.clone(),
                    metrics.clone(),
                    stopping.clone(),
                    transform,
                )
            })
            .collect();
        for h in &handles {
            tokio::spawn(count_backlog(
                h.clone(),
                store.clone(),
                metrics.clone(),
                stopping.clone(),
            ));
            if let Some(seconds) = h.pipeline.quality.reconcile_window_s {
                let task = every(
                    h.clone(),
                    store.clone(),
                    metrics.clone(),
                    seconds,
                    stopping.clone(),
                );
                tokio::spawn(task);
            }
        }
        Ok(Etl {
            handles: Arc::new(handles),
            store,
            metrics,
            outboxes: Arc::new(outboxes),
        })
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/api/v1/pipelines", get(list))
            .route("/api/v1/pipelines/{name}", get(one))
            .route("/api/v1/pipelines/{name}/pause", post(pause))
            .route("/api/v1/pipelines/{name}/resume", post(resume))
            .route("/api/v1/pipelines/{name}/reset", post(reset))
            .route("/api/v1/pipelines/{name}/reconcile", post(reconcile_window))
            .route("/api/v1/outboxes", get(outboxes))
            .with_state(self)
    }

    /// `/health`'s details: each pipeline's state and error.
    pub fn details(&self) -> serde_json::Value {
        let pipelines: Vec<serde_json::Value> = self
            .handles
            .iter()
            .map(|h| {
                let s = h.status();
                json!({"name": s.name, "state": s.state, "error": s.error})
            })
            .collect();
        let outboxes: Vec<serde_json::Value> = self
            .outboxes
            .iter()
            .map(|h| {
                let s = h.status();
                json!({"name": s.name, "state": s.state, "error": s.error})
            })
            .collect();
        json!({ "pipelines": pipelines, "outboxes": outboxes })
    }

    fn find(&self, name: &str) -> Result<&Handle, ApiError> {
        self.handles
            .iter()
            .find(|h| h.pipeline.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no pipeline {name:?}")))
    }
}

async fn list(State(etl): State<Etl>) -> Response {
    let all: Vec<runner::Status> = etl.handles.iter().map(Handle::status).collect();
    Json(json!({ "pipelines": all })).into_response()
}

async fn outboxes(State(etl): State<Etl>) -> Response {
    let all: Vec<outbox::OutboxStatus> = etl.outboxes.iter().map(|h| h.status()).collect();
    Json(json!({ "outboxes": all })).into_response()
}

async fn one(State(etl): State<Etl>, Path(name): Path<String>) -> Response {
    match etl.find(&name) {
        Ok(h) => Json(h.status()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn pause(State(etl): State<Etl>, Path(name): Path<String>) -> Response {
    set(&etl, &name, Control::Pause).await
}

async fn resume(State(etl): State<Etl>, Path(name): Path<String>) -> Response {
    set(&etl, &name, Control::Run).await
}

/// A request body as JSON of the shape `shape` (named in the 400 when it is not).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the body: {shape} ({e})")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    to: ResetTo,
}

async fn reset(
    State(etl): State<Etl>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        let h = etl.find(&name)?;
        let body: ResetBody = json_body(&body, r#"{"to": "start"} or {"to": "end"}"#)?;
        let state = h.status().state;
        if state != PipelineState::Paused {
            return Err(ApiError::conflict(format!(
                "pipeline {name:?} is {state:?}; pause it first"
            )));
        }
        Ok(set(&etl, &name, Control::Reset(body.to)).await)
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowBody {
    from: String,
    to: String,
}

async fn reconcile_window(
    State(etl): State<Etl>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        let h = etl.find(&name)?;
        let body: WindowBody = json_body(&body, r#"{"from": RFC3339, "to": RFC3339}"#)?;
        let time = |field: &str, t: &str| {
            strata_service::time::parse_rfc3339_us(t)
                .map_err(|e| ApiError::invalid(format!("{field}: {e}")))
        };
        let (from, to) = (time("from", &body.from)?, time("to", &body.to)?);
        reconcile::key_columns(&h.pipeline).map_err(ApiError::invalid)?;
        let sink = crate::sink::Sink::open(&h.pipeline).await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
        let report = reconcile::window(&h.pipeline, &etl.store, &sink, from, to)
            .await
            .map_err(ApiError::invalid)?;
        record(h, &etl.metrics, &report);
        Ok::<_, ApiError>(Json(report).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn set(etl: &Etl, name: &str, control: Control) -> Response {
    let h = match etl.find(name) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    h.control.send_replace(control);
    tracing::info!(pipeline = name, control = ?control, "pipeline control");
    Json(json!({"name": name, "control": control, "status": h.status()})).into_response()
}

/// Books `r` (metrics, the pipeline's status).
fn record(h: &Handle, metrics: &Metrics, r: &reconcile::Report) {
    let name = h.pipeline.name.as_str();
    let result = if r.ok { "match" } else { "mismatch" };
    metrics.add(
        "strata_etl_reconcile_windows_total",
        "Windows reconciled, source against sink, by result.",
        &[("pipeline", name), ("result", result)],
        1.0,
    );
    metrics.set(
        "strata_etl_reconcile_source_rows",
        "The last reconciled window's rows, as the source says.",
        &[("pipeline", name)],
        r.source_rows as f64,
    );
    metrics.set(
        "strata_etl_reconcile_sink_rows",
        "The last reconciled window's rows, as the sink holds them.",
        &[("pipeline", name)],
        r.sink_rows as f64,
    );
    if !r.ok {
        tracing::error!(pipeline = name, report = ?r, "reconciliation: the sink differs from the source");
    }
    h.update(|s| s.reconcile = Some(r.clone()));
}

/// Reconciles (see [`reconcile`]) each settled window of `every` seconds from the service's
/// start on, until stopped: a window whose end is 10 s past, plus twice the pipeline's lag while
/// it is writing; only while it runs.
async fn every(
    h: Handle,
    store: Client,
    metrics: Arc<Metrics>,
    every: u64,
    mut stopping: watch::Receiver<bool>,
) {
    let step = every * 1_000_000;
    let mut next_from = now_us().div_ceil(step) * step;
    let mut sink: Option<crate::sink::Sink> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.min(10))) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        // Settled: its end 10 s past, plus twice the lag while events flow (a pipeline that
        // has written nothing for 5 s while running has nothing waiting).
        let st = h.status();
        let now = now_us();
        let flowing = now.saturating_sub(st.last_write_us) < 5_000_000;
        let lag_us = match flowing {
            true => (st.lag_seconds.max(0.0) * 2e6) as u64,
            false => 0,
        };
        if st.state != PipelineState::Running || next_from + step + 10_000_000 + lag_us > now {
            continue;
        }
        if sink.is_none() {
            sink = crate::sink::Sink::open(&h.pipeline).await.ok();
        }
        let Some(s) = &sink else { continue };
        match reconcile::window(&h.pipeline, &store, s, next_from, next_from + step).await {
            Ok(r) => {
                record(&h, &metrics, &r);
                next_from += step;
            }
            Err(why) => {
                tracing::warn!(pipeline = %h.pipeline.name, error = %why, "reconciliation failed; trying again");
                sink = None;
            }
        }
    }
}

/// Counts the pipeline's backlog (see [`backlog`]) until stopped: every
/// [`backlog::COUNT_EVERY`], or [`backlog::COUNT_SPACING`] times as long as the last count took.
async fn count_backlog(
    h: Handle,
    store: Client,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut pause = backlog::COUNT_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let started = std::time::Instant::now();
        let counted = backlog::count(&store, &h.pipeline, backlog::COUNT_EVENTS_MAX).await;
        pause = backlog::COUNT_EVERY.max(started.elapsed() * backlog::COUNT_SPACING);
        let b = match counted {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(pipeline = %h.pipeline.name, error = %e, "counting the backlog failed");
                continue;
            }
        };
        let now = now_us();
        metrics.set(
            "strata_etl_lag_events",
            "Events of the pipeline's source not yet in the sink (at least, when counting stopped at its bound).",
            &[("pipeline", &h.pipeline.name)],
            b.events as f64,
        );
        h.update(|s| {
            s.lag_events = b.events;
            s.lag_events_at_least = b.at_least;
            s.lag_oldest_seconds = b
                .oldest_us
                .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e6);
            s.lag_counted_us = now;
        });
    }
}
