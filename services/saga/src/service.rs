//! The saga orchestrator's HTTP API (`strata serve saga`, port 8080).
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/sagas` | starts `{"type": "order_processing", "data": {…}}` → 201 `{id, state, …}`; under an `Idempotency-Key` header the same key is the same saga (200 with it), and the key with another type or data is 409 |
//! | `GET /api/v1/sagas/{id}` | its state (`running`, `compensating`, `completed`, `compensated`, `needs_attention`), why, each step's attempts and outcome, and its history (the journal) |
//! | `GET /api/v1/sagas?state=S&limit=N` | the sagas this orchestrator knows of (started or followed since it began), newest first; at most 1000 |
//!
//! Bad input — an unknown type, data without the type's fields, malformed JSON, a body over
//! [`BODY_BYTES_MAX`], an unknown id — is a 4xx with a JSON error, and nothing is written.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use strata_service::api::{idempotency_key, ApiError};
use strata_service::time::format_rfc3339_us;
use strata_service::{CorrelationId, Metrics};

use crate::definition::{saga_type, TYPES};
use crate::orchestrator::{Events, Orchestrator};
use crate::state::Status;
use crate::store::{self, Loaded, StoreError};

/// The service's port.
pub const PORT: u16 = 8080;
/// Largest request body, bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Most sagas one list answers.
pub const LIST_MAX: usize = 1000;

/// The service.
#[derive(Clone)]
pub struct Sagas {
    orchestrator: Arc<Orchestrator>,
}

/// The orchestrator's news as metrics and log lines.
pub struct Reporter(pub Arc<Metrics>);

impl Events for Reporter {
    fn reached(&self, id: &str, status: Status, reason: Option<&str>) {
        self.0.add(
            "strata_saga_transitions_total",
            "Sagas that reached a state, by state.",
            &[("state", status.name())],
            1.0,
        );
        match status {
            Status::NeedsAttention => {
                tracing::error!(
                    saga = id,
                    reason = reason.unwrap_or_default(),
                    "a saga needs attention"
                )
            }
            Status::Compensating => {
                tracing::warn!(
                    saga = id,
                    reason = reason.unwrap_or_default(),
                    "a saga is compensating"
                )
            }
            _ => tracing::info!(saga = id, state = status.name(), "a saga ended"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(rename = "type")]
    saga_type: String,
    data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Store(e) => e.into(),
            StoreError::Journal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "journal", m)
            }
        }
    }
}

/// A saga as the API shows it.
pub fn saga_json(l: &Loaded) -> serde_json::Value {
    let s = &l.saga;
    let steps: Vec<serde_json::Value> = s
        .steps
        .iter()
        .map(|st| {
            json!({
                "name": st.name,
                "attempts": st.action.attempts,
                "succeeded": st.action.succeeded,
                "failure": st.action.failure.as_ref().map(|f| &f.reason),
                "compensation_attempts": st.compensation.attempts,
                "compensated": st.compensation.succeeded,
                "compensation_failure": st.compensation.failure.as_ref().map(|f| &f.reason),
            })
        })
        .collect();
    let history: Vec<serde_json::Value> = l
        .history
        .iter()
        .map(|(version, at, entry)| {
            let mut e = serde_json::to_value(entry).unwrap_or_default();
            if let Some(obj) = e.as_object_mut() {
                obj.insert("version".into(), json!(version));
                obj.insert("at".into(), json!(format_rfc3339_us(*at)));
            }
            e
        })
        .collect();
    json!({
        "id": s.id,
        "type": s.saga_type,
        "state": s.status.name(),
        "reason": s.reason,
        "data": s.data,
        "idempotency_key": s.idempotency_key,
        "correlation_id": l.correlation,
        "steps": steps,
        "history": history,
    })
}

impl Sagas {
    /// The service over `orchestrator`.
    pub fn new(orchestrator: Arc<Orchestrator>) -> Sagas {
        Sagas { orchestrator }
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/api/v1/sagas", get(list).post(start))
            .route("/api/v1/sagas/{id}", get(one))
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(self)
    }

    /// What `/health` adds: the sagas known, by state, those with a command out and those
    /// waiting for a turn to send one, and the last recovery from the journals (`null` while
    /// the first is under way: `{unfinished, scan_us}`).
    pub fn details(&self) -> serde_json::Value {
        let all = self.orchestrator.list(None, usize::MAX);
        let count = |s: Status| all.iter().filter(|(_, x)| *x == s).count();
        let (commands_out, waiting_turn) = self.orchestrator.turns();
        json!({
            "commands_out": commands_out,
            "waiting_turn": waiting_turn,
            "running": count(Status::Running),
            "compensating": count(Status::Compensating),
            "needs_attention": count(Status::NeedsAttention),
            "known": all.len(),
            "recovery": self.orchestrator.recovered(),
        })
    }
}

async fn start(
    State(s): State<Sagas>,
    Extension(correlation): Extension<CorrelationId>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    started(&s, &correlation, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn started(
    s: &Sagas,
    correlation: &CorrelationId,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let body: StartBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body's JSON: {e}")))?;
    let def = saga_type(&body.saga_type).ok_or_else(|| {
        ApiError::invalid(format!(
            "type: one of {}, not {:?}",
            TYPES.join(", "),
            body.saga_type
        ))
    })?;
    def.check(&body.data).map_err(ApiError::invalid)?;
    let key = idempotency_key(headers)?;
    let id = key.as_deref().map_or_else(store::new_id, store::id_for_key);
    let client = correlation.on(s.orchestrator.store());
    let created = store::create(
        &client,
        (&id, &def),
        body.data.clone(),
        key.as_deref(),
        &correlation.0,
    )
    .await?;
    let loaded = store::load(&client, &id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the saga just written cannot be read yet",
        )
    })?;
    if !created && (loaded.saga.saga_type != def.name || loaded.saga.data != body.data) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "Idempotency-Key {:?} started saga {id} with another type or data",
                key.unwrap_or_default()
            ),
        )
        .with("id", json!(id)));
    }
    s.orchestrator.enqueue(&id).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saga_json(&loaded))).into_response())
}

async fn one(
    State(s): State<Sagas>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> Response {
    let client = correlation.on(s.orchestrator.store());
    match store::load(&client, &id).await {
        Ok(Some(l)) => Json(saga_json(&l)).into_response(),
        Ok(None) => ApiError::not_found(format!("no saga {id}")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn list(State(s): State<Sagas>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.state.as_deref() {
        None => None,
        Some(name) => match [
            Status::Running,
            Status::Compensating,
            Status::Completed,
            Status::Compensated,
            Status::NeedsAttention,
        ]
        .into_iter()
        .find(|st| st.name() == name)
        {
            Some(st) => Some(st),
            None => {
                return ApiError::invalid(format!(
                    "state: running, compensating, completed, compensated or needs_attention, not {name:?}"
                ))
                .into_response()
            }
        },
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=LIST_MAX).contains(&limit) {
        return ApiError::invalid(format!("limit: 1 to {LIST_MAX}, not {limit}")).into_response();
    }
    let sagas: Vec<serde_json::Value> = s
        .orchestrator
        .list(status, limit)
        .into_iter()
        .map(|(id, st)| json!({ "id": id, "state": st.name() }))
        .collect();
    Json(json!({ "sagas": sagas })).into_response()
}
