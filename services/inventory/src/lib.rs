//! The inventory service (`strata serve inventory`, port 8081): stock per SKU ([`stock`]), over
//! HTTP and as the saga participant for reservations.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/inventory/{sku}/restock` | adds `{"quantity": N}` units (1 to 10⁹) → the stock |
//! | `GET /api/v1/inventory/{sku}` | `{sku, on_hand, reserved, available, version}` from the stock-levels read model ([`projection`]: a consumer group's output, trailing the aggregate by its delivery); `?source=aggregate` folds the SKU's stream instead (the newest); `?as_of=RFC3339` as it was at a past time (a time-travel read of the stream) |
//!
//! As a participant it handles the saga commands `reserve` (the saga's `quantity` of its `sku`,
//! held under the saga's id; too few free units is a failure no retry mends), `release` and
//! `commit`, each idempotent on the reservation.

pub mod projection;
pub mod stock;

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use strata_client::Client;
use strata_saga::journal::Command;
use strata_saga::participant::{Handler, Reply};
use strata_service::api::ApiError;
use strata_service::time::parse_rfc3339_us;
use strata_service::{CorrelationId, Metrics};

use crate::stock::{Refused, Stock, QUANTITY_MAX};

/// The service's port.
pub const PORT: u16 = 8081;
/// Longest SKU, bytes.
pub const SKU_BYTES_MAX: usize = 128;

/// The service.
#[derive(Clone)]
pub struct Inventory {
    store: Client,
    metrics: Arc<Metrics>,
    stocks: Arc<stock::Cache>,
}

fn levels(sku: &str, s: &Stock) -> serde_json::Value {
    json!({
        "sku": sku,
        "on_hand": s.on_hand,
        "reserved": s.reserved,
        "available": s.available(),
        "version": s.version,
    })
}

/// A SKU as a path gives it: printable ASCII without spaces, 1 to [`SKU_BYTES_MAX`] bytes.
fn check_sku(sku: &str) -> Result<(), ApiError> {
    if sku.is_empty() || sku.len() > SKU_BYTES_MAX || !sku.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "sku: printable ASCII without spaces, 1 to {SKU_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    quantity: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelsQuery {
    as_of: Option<String>,
    source: Option<String>,
}

impl Inventory {
    /// The service over `store`.
    pub fn new(store: Client, metrics: Arc<Metrics>) -> Inventory {
        Inventory {
            store,
            metrics,
            stocks: Arc::default(),
        }
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/api/v1/inventory/{sku}", get(levels_of))
            .route("/api/v1/inventory/{sku}/restock", post(restock))
            .with_state(self)
    }

    /// Its command handler (for [`strata_saga::participant::serve`]).
    pub fn handler(&self) -> Arc<Inventory> {
        Arc::new(self.clone())
    }
}

async fn restock(
    State(inv): State<Inventory>,
    Extension(correlation): Extension<CorrelationId>,
    Path(sku): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        check_sku(&sku)?;
        let body: RestockBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("the body's JSON: {e}")))?;
        if !(1..=QUANTITY_MAX).contains(&body.quantity) {
            return Err(ApiError::invalid(format!(
                "quantity: 1 to {QUANTITY_MAX}, not {}",
                body.quantity
            )));
        }
        let s = stock::restock(
            (&correlation.on(&inv.store), &inv.stocks),
            &sku,
            body.quantity,
        )
        .await?;
        inv.metrics.add(
            "strata_inventory_restocked_units_total",
            "Units restocked.",
            &[],
            body.quantity as f64,
        );
        Ok::<_, ApiError>((StatusCode::OK, Json(levels(&sku, &s))).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn levels_of(
    State(inv): State<Inventory>,
    Extension(correlation): Extension<CorrelationId>,
    Path(sku): Path<String>,
    Query(q): Query<LevelsQuery>,
) -> Response {
    let answer = async {
        check_sku(&sku)?;
        let store = correlation.on(&inv.store);
        let mut body = match (q.as_of.as_deref(), q.source.as_deref()) {
            (Some(t), None | Some("aggregate")) => {
                let at =
                    parse_rfc3339_us(t).map_err(|e| ApiError::invalid(format!("as_of: {e}")))?;
                let mut b = levels(&sku, &stock::load(&store, &sku, Some(at)).await?);
                b["as_of"] = json!(t);
                b
            }
            (None, Some("aggregate")) => levels(&sku, &stock::load(&store, &sku, None).await?),
            (None, None | Some("projection")) => {
                let l = projection::read(&store, &sku)
                    .await?
                    .map(|(l, _)| l)
                    .unwrap_or_default();
                json!({
                    "sku": sku,
                    "on_hand": l.on_hand,
                    "reserved": l.reserved,
                    "available": l.available(),
                    "version": l.stock_version,
                })
            }
            (_, Some(other)) => {
                return Err(ApiError::invalid(format!(
                    "source: projection or aggregate (as_of reads the aggregate), not {other:?}"
                )))
            }
        };
        body["source"] = json!(if q.source.is_some() || q.as_of.is_some() {
            "aggregate"
        } else {
            "projection"
        });
        Ok::<_, ApiError>(Json(body).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

impl Handler for Inventory {
    async fn handle(&self, command: &Command, correlation: &str) -> Result<Reply, String> {
        let store = self.store.with_correlation_id(correlation);
        let sku = command.data["sku"].as_str().unwrap_or_default().to_string();
        let quantity = command.data["quantity"].as_u64().unwrap_or(0);
        let id = &command.saga_id;
        let failed = |reason: String| Reply::Failed {
            reason,
            retriable: false,
        };
        let outcome = match command.action.as_str() {
            "reserve" => stock::reserve((&store, &self.stocks), &sku, id, quantity).await,
            "release" => stock::release((&store, &self.stocks), &sku, id)
                .await
                .map(Ok),
            "commit" => stock::commit((&store, &self.stocks), &sku, id).await,
            other => {
                return Ok(failed(format!(
                    "inventory does not know the command {other:?}"
                )))
            }
        };
        let reply = match outcome.map_err(|e| e.to_string())? {
            Ok(s) => Reply::Done(levels(&sku, &s)),
            Err(Refused::Insufficient { available }) => failed(format!(
                "insufficient stock of {sku}: {available} available, {quantity} asked"
            )),
            Err(Refused::Released) => failed(format!("reservation {id} of {sku} was released")),
            Err(Refused::Unknown) => failed(format!("no reservation {id} of {sku}")),
        };
        self.metrics.add(
            "strata_inventory_commands_total",
            "Saga commands handled, by command and outcome.",
            &[
                ("command", command.action.as_str()),
                (
                    "outcome",
                    if matches!(reply, Reply::Done(_)) {
                        "done"
                    } else {
                        "failed"
                    },
                ),
            ],
            1.0,
        );
        Ok(reply)
    }
}
