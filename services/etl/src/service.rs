//! The ETL service's HTTP API (port 8092).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/pipelines` | every pipeline: state, error, events, rows, quarantined, positions, lag, rate, throttle |
//! | `GET /api/v1/pipelines/{name}` | one |
//! | `POST /api/v1/pipelines/{name}/pause` | holds its partitions, writes nothing (→ its state) |
//! | `POST /api/v1/pipelines/{name}/resume` | writes again |
//! | `POST /api/v1/pipelines/{name}/reset` | a paused pipeline, `{"to": "start"}`: its table emptied and every event written again; `{"to": "end"}`: the backlog skipped. It stays paused (409 when not paused) |
//!
//! `/health` lists each pipeline's state; `/metrics` has `strata_etl_events_total`,
//! `_rows_total`, `_quarantined_total`, `_errors_total`, `_lag_seconds` (a histogram from
//! append to sink), `_write_seconds`, `_pace_seconds` per pipeline.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use strata_client::Client;
use strata_service::api::ApiError;
use strata_service::{Metrics, Settings};
use tokio::sync::watch;

use crate::pipeline;
use crate::runner::{self, Control, Handle, ResetTo, State as PipelineState};

/// The service's port.
pub const PORT: u16 = 8092;
/// Most pipelines one service runs.
pub const PIPELINES_MAX: usize = 64;

/// The service.
#[derive(Clone)]
pub struct Etl {
    handles: Arc<Vec<Handle>>,
}

/// The pipeline files the settings name: `[etl] pipelines = […]`, else
/// `STRATA_ETL_PIPELINES` (comma-separated).
fn pipeline_files(settings: &Settings) -> Result<Vec<PathBuf>, String> {
    let files: Vec<PathBuf> = match settings.section.get("pipelines") {
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(PathBuf::from)
                    .ok_or("[etl] pipelines: a list of file names")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("[etl] pipelines: a list of file names".into()),
        None => std::env::var("STRATA_ETL_PIPELINES")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| PathBuf::from(s.trim()))
            .collect(),
    };
    if files.len() > PIPELINES_MAX {
        return Err(format!(
            "{} pipelines; at most {PIPELINES_MAX}",
            files.len()
        ));
    }
    Ok(files)
}

impl Etl {
    /// Reads and checks every pipeline file (the first bad one is the error, with its line),
    /// then starts them.
    pub fn new(
        settings: &Settings,
        store: Client,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
    ) -> Result<Etl, String> {
        let mut pipelines = Vec::new();
        for f in pipeline_files(settings)? {
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
        let member = format!("etl-{}", std::process::id());
        let handles = pipelines
            .into_iter()
            .map(|p| {
                runner::start(
                    p,
                    store.clone(),
                    member.clone(),
                    metrics.clone(),
                    stopping.clone(),
                )
            })
            .collect();
        Ok(Etl {
            handles: Arc::new(handles),
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
        json!({ "pipelines": pipelines })
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
        let body: ResetBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the body: {{\"to\": \"start\"}} or {{\"to\": \"end\"}} ({e})"
            ))
        })?;
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

async fn set(etl: &Etl, name: &str, control: Control) -> Response {
    let h = match etl.find(name) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    h.control.send_replace(control);
    tracing::info!(pipeline = name, control = ?control, "pipeline control");
    Json(json!({"name": name, "control": control, "status": h.status()})).into_response()
}
