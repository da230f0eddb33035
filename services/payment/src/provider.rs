//! The fake payment provider (`strata fake-provider`): what a real one does that matters to
//! the payment service — charges and refunds keyed by the caller's idempotency key (the same
//! key answers the same outcome, never a second charge), a ledger to audit, and faults on
//! request: declines, latency, answers that never come in time (the charge recorded late), and
//! 5xx answers sent *after* the charge was recorded (the ambiguous outcome real providers
//! produce). A refund names the charge's key: with no charge under it yet, the key is voided,
//! so a charge that arrives late under it is refused — a compensated order is never left
//! charged. The ledger lives in the process's memory (it is the test's witness; it is not
//! killed).
//!
//! | method and path | what |
//! |---|---|
//! | `POST /charges` | `{"key", "amount"}` → 201 `{charge_id, key, amount}`; the same key again: 200 and the same; 402 declined; 409 voided |
//! | `POST /refunds` | `{"key", "charge_key"}` → 201 `{refunded: true}`, or 200 `{refunded: false, voided: true}` when no charge is under `charge_key` |
//! | `GET /charges/{key}` | the charge, or 404 |
//! | `GET /ledger` | every charge, refund and voided key |
//! | `PUT /faults` | `{"decline_percent", "latency_ms", "late_percent", "late_ms", "error_after_percent"}` |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Largest amount of one charge (minor units).
pub const AMOUNT_MAX: u64 = 1_000_000_000;

/// Faults to inject.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Charges declined (402), percent.
    pub decline_percent: u64,
    /// Added to every answer, ms.
    pub latency_ms: u64,
    /// Charges answered only after `late_ms` (recorded then), percent.
    pub late_percent: u64,
    /// How late, ms.
    pub late_ms: u64,
    /// Charges recorded and then answered 500, percent.
    pub error_after_percent: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Charge {
    charge_id: String,
    key: String,
    amount: u64,
}

#[derive(Debug, Clone)]
enum Outcome {
    Charged(Charge),
    Declined,
}

#[derive(Default)]
struct Ledger {
    charges: BTreeMap<String, Outcome>,
    refunds: BTreeMap<String, String>,
    voided: BTreeMap<String, String>,
    next: u64,
}

/// The provider's state.
#[derive(Clone)]
pub struct Provider {
    ledger: Arc<Mutex<Ledger>>,
    faults: Arc<Mutex<Faults>>,
    keys: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    rng: Arc<Mutex<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeBody {
    key: String,
    amount: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    key: String,
    charge_key: String,
}

fn bad(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

impl Provider {
    /// A provider whose random faults follow `seed`.
    pub fn new(seed: u64) -> Provider {
        Provider {
            ledger: Arc::default(),
            faults: Arc::default(),
            keys: Arc::default(),
            rng: Arc::new(Mutex::new(seed | 1)),
        }
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/charges", post(charge))
            .route("/charges/{key}", get(charge_of))
            .route("/refunds", post(refund))
            .route("/ledger", get(ledger))
            .route("/faults", put(set_faults))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self)
    }

    /// Whether a fault of `percent` happens now (xorshift).
    fn roll(&self, percent: u64) -> bool {
        let mut x = lock(&self.rng);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % 100 < percent
    }

    /// One key's requests one at a time (a retry waits for the first to finish).
    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.keys).entry(key.to_string()).or_default().clone()
    }
}

async fn charge(State(p): State<Provider>, body: axum::body::Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<ChargeBody>(&body) else {
        return bad("a charge is {\"key\", \"amount\"}");
    };
    if b.key.is_empty() || b.key.len() > 256 || !(1..=AMOUNT_MAX).contains(&b.amount) {
        return bad(format!("key: 1 to 256 bytes; amount: 1 to {AMOUNT_MAX}"));
    }
    let faults = *lock(&p.faults);
    tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    let guard = p.key_lock(&b.key);
    let _one = guard.lock().await;
    let existing = lock(&p.ledger).charges.get(&b.key).cloned();
    if let Some(outcome) = existing {
        return answer(outcome, StatusCode::OK);
    }
    if lock(&p.ledger).voided.contains_key(&b.key) {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "voided: this key was refunded before any charge"})),
        )
            .into_response();
    }
    if p.roll(faults.late_percent) {
        tokio::time::sleep(Duration::from_millis(faults.late_ms)).await;
    }
    let outcome = {
        let mut l = lock(&p.ledger);
        if l.voided.contains_key(&b.key) {
            return (
                StatusCode::CONFLICT,
                Json(json!({"error": "voided while the charge was under way"})),
            )
                .into_response();
        }
        let outcome = if p.roll(faults.decline_percent) {
            Outcome::Declined
        } else {
            l.next += 1;
            Outcome::Charged(Charge {
                charge_id: format!("ch_{}", l.next),
                key: b.key.clone(),
                amount: b.amount,
            })
        };
        l.charges.insert(b.key.clone(), outcome.clone());
        outcome
    };
    if matches!(outcome, Outcome::Charged(_)) && p.roll(faults.error_after_percent) {
        return (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": "upstream failure (the charge was recorded)"})),
        )
            .into_response();
    }
    answer(outcome, StatusCode::CREATED)
}

fn answer(outcome: Outcome, created: StatusCode) -> Response {
    match outcome {
        Outcome::Charged(c) => (created, Json(json!(c))).into_response(),
        Outcome::Declined => (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"error": "declined"})),
        )
            .into_response(),
    }
}

async fn charge_of(State(p): State<Provider>, Path(key): Path<String>) -> Response {
    match lock(&p.ledger).charges.get(&key) {
        Some(Outcome::Charged(c)) => Json(json!(c)).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no charge under this key"})),
        )
            .into_response(),
    }
}

async fn refund(State(p): State<Provider>, body: axum::body::Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<RefundBody>(&body) else {
        return bad("a refund is {\"key\", \"charge_key\"}");
    };
    let faults = *lock(&p.faults);
    tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    let guard = p.key_lock(&b.charge_key);
    let _one = guard.lock().await;
    let mut l = lock(&p.ledger);
    if let Some(charge) = l.refunds.get(&b.key) {
        let charge = charge.clone();
        return Json(json!({"refunded": true, "charge_key": charge})).into_response();
    }
    match l.charges.get(&b.charge_key) {
        Some(Outcome::Charged(_)) => {
            l.refunds.insert(b.key.clone(), b.charge_key.clone());
            (
                StatusCode::CREATED,
                Json(json!({"refunded": true, "charge_key": b.charge_key})),
            )
                .into_response()
        }
        _ => {
            l.voided.insert(b.charge_key.clone(), b.key.clone());
            Json(json!({"refunded": false, "voided": true})).into_response()
        }
    }
}

async fn ledger(State(p): State<Provider>) -> Response {
    let l = lock(&p.ledger);
    let charges: Vec<&Charge> = l
        .charges
        .values()
        .filter_map(|o| match o {
            Outcome::Charged(c) => Some(c),
            Outcome::Declined => None,
        })
        .collect();
    let declined: Vec<&String> = l
        .charges
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Declined))
        .map(|(k, _)| k)
        .collect();
    Json(json!({
        "charges": charges,
        "declined": declined,
        "refunds": l.refunds.iter().map(|(k, c)| json!({"key": k, "charge_key": c})).collect::<Vec<_>>(),
        "voided": l.voided.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn set_faults(State(p): State<Provider>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f)
            if f.decline_percent <= 100
                && f.late_percent <= 100
                && f.error_after_percent <= 100 =>
        {
            *lock(&p.faults) = f;
            Json(json!(f)).into_response()
        }
        Ok(_) => bad("percentages: 0 to 100"),
        Err(e) => bad(format!("faults: {e}")),
    }
}

/// Serves a provider on `addr` until `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    seed: u64,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening on {addr}: {e}"))?;
    tracing::info!(%addr, "fake payment provider serving");
    axum::serve(listener, Provider::new(seed).routes())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}
