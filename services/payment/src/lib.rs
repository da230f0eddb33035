//! The payment service (`strata serve payment`, port 8082): the saga participant that charges
//! and refunds through a payment provider over HTTP ([`provider`] is the fake one).
//!
//! - `charge`: `POST {provider}/charges` with the saga's `amount` under the key
//!   `SAGA/charge` — the same key on every attempt, so a retry after a timeout or an ambiguous
//!   5xx is answered with the first outcome: each charge is made at most once. A decline is a
//!   failure no retry mends; no answer, or a 5xx, is a failure of the service's own (the
//!   command is handled again, then the saga's retry policy takes over).
//! - `refund`: `POST {provider}/refunds` naming the charge's key: it refunds the charge, or,
//!   when there is none (the charge never arrived, was declined, or is still in flight), voids
//!   the key so no charge lands under it later. A refund exists only for a charge that exists.
//!
//! Settings: `[payment] provider = "http://HOST:PORT"` (else the environment's
//! `STRATA_PAYMENT_PROVIDER`, else `http://127.0.0.1:8099`). `GET /api/v1/payments/{saga}`
//! shows the provider's charge for a saga.

pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use strata_saga::journal::Command;
use strata_saga::participant::{Handler, Reply};
use strata_service::api::ApiError;
use strata_service::http_client::{Answer, HttpClient};
use strata_service::{Metrics, Settings};

/// The service's port.
pub const PORT: u16 = 8082;
/// The provider when none is set.
pub const PROVIDER_DEFAULT: &str = "http://127.0.0.1:8099";
/// How long one provider call may take before its outcome counts as unknown.
pub const PROVIDER_DEADLINE: Duration = Duration::from_secs(3);

/// The service.
#[derive(Clone)]
pub struct Payment {
    provider: String,
    http: HttpClient,
    metrics: Arc<Metrics>,
}

/// The provider key of a saga's charge.
pub fn charge_key(saga: &str) -> String {
    format!("{saga}/charge")
}

impl Payment {
    /// The service with `settings` (its provider).
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Payment, String> {
        let provider = match settings
            .section_str("provider")
            .map_err(|e| e.to_string())?
        {
            Some(p) => p,
            None => {
                std::env::var("STRATA_PAYMENT_PROVIDER").unwrap_or_else(|_| PROVIDER_DEFAULT.into())
            }
        };
        if !provider.starts_with("http://") {
            return Err(format!(
                "[payment] provider: an http:// address, not {provider:?}"
            ));
        }
        Ok(Payment {
            provider: provider.trim_end_matches('/').to_string(),
            http: HttpClient::new(),
            metrics,
        })
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/api/v1/payments/{saga}", get(payment_of))
            .with_state(self)
    }

    /// What `/health` adds.
    pub fn details(&self) -> serde_json::Value {
        json!({ "provider": self.provider })
    }

    fn count(&self, what: &str, outcome: &str) {
        self.metrics.add(
            "strata_payment_calls_total",
            "Provider calls, by call and outcome.",
            &[("call", what), ("outcome", outcome)],
            1.0,
        );
    }

    /// `POST {provider}/{path}` with `body`; the answer, or why there is none (counted as
    /// `what`'s `no_answer`).
    async fn post(
        &self,
        what: &str,
        path: &str,
        body: serde_json::Value,
        correlation: &str,
    ) -> Result<Answer, String> {
        let url = format!("{}/{path}", self.provider);
        let headers = [("x-request-id", correlation)];
        self.http
            .call("POST", &url, &headers, &body, PROVIDER_DEADLINE)
            .await
            .inspect_err(|_| self.count(what, "no_answer"))
    }

    /// A 2xx as done, 402/409 (`refusable`) as a refusal no retry mends, anything else as a
    /// failure of the call (tried again).
    fn reply(&self, what: &str, a: Answer, refusable: bool) -> Result<Reply, String> {
        match a.status {
            200 | 201 => {
                self.count(what, "done");
                Ok(Reply::Done(a.json))
            }
            402 | 409 if refusable => {
                self.count(what, "refused");
                let why = a.json["error"].as_str().unwrap_or("declined");
                Ok(Reply::Failed {
                    reason: format!("payment refused: {why}"),
                    retriable: false,
                })
            }
            status => {
                self.count(what, "error");
                Err(format!("the provider answered {status}: {}", a.json))
            }
        }
    }

    async fn charge(&self, command: &Command, correlation: &str) -> Result<Reply, String> {
        let amount = command.data["amount"].as_u64().unwrap_or(0);
        let body = json!({ "key": charge_key(&command.saga_id), "amount": amount });
        let a = self.post("charge", "charges", body, correlation).await?;
        self.reply("charge", a, true)
    }

    async fn refund(&self, command: &Command, correlation: &str) -> Result<Reply, String> {
        let body = json!({
            "key": format!("{}/refund", command.saga_id),
            "charge_key": charge_key(&command.saga_id),
        });
        let a = self.post("refund", "refunds", body, correlation).await?;
        self.reply("refund", a, false)
    }
}

impl Handler for Payment {
    async fn handle(&self, command: &Command, correlation: &str) -> Result<Reply, String> {
        match command.action.as_str() {
            "charge" => self.charge(command, correlation).await,
            "refund" => self.refund(command, correlation).await,
            other => Ok(Reply::Failed {
                reason: format!("payment does not know the command {other:?}"),
                retriable: false,
            }),
        }
    }
}

async fn payment_of(State(p): State<Payment>, Path(saga): Path<String>) -> Response {
    let url = format!("{}/charges/{}", p.provider, charge_key(&saga));
    match p.http.get(&url, PROVIDER_DEADLINE).await {
        Ok(a) if a.status == 200 => Json(json!({ "saga": saga, "charge": a.json })).into_response(),
        Ok(a) if a.status == 404 => {
            ApiError::not_found(format!("no charge for saga {saga}")).into_response()
        }
        Ok(a) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider",
            format!("the provider answered {}", a.status),
        )
        .into_response(),
        Err(e) => ApiError::new(StatusCode::BAD_GATEWAY, "provider", e).into_response(),
    }
}
