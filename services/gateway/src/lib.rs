//! The event store's HTTP face (`strata serve gateway`, port 8090): a thin JSON gateway over
//! `strata-client`, so any language without a gRPC client (a browser, a shell script) can use
//! Strata. It keeps no state of its own.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/streams/{stream}` | appends `{"expected_version": "any" \| "no_stream" \| "stream_exists" \| N, "events": [{"type", "data", "metadata"?, "id"?}]}` atomically → 201 `{first_version, last_version, position, deduplicated, ids}`; with an `Idempotency-Key` header the events' ids come from the key, so a retry is answered with the first outcome (200, `deduplicated`) and never appends twice; the same key with another body is 409 |
//! | `GET /api/v1/streams/{stream}` | a page of events: `?from=V&limit=N&direction=forwards\|backwards`, as it was at a past moment with `?as_of=RFC3339` (or `as_of_version`, `as_of_position`), `consistency=linearizable\|follower` → `{events, next}` |
//! | `GET /api/v1/streams/{stream}/info` | the stream's version, metadata and state |
//! | `GET /api/v1/streams/{stream}/subscribe` | live events as server-sent events (`id:` the version; `event: caught-up` once the past is delivered); resumes after `Last-Event-ID` (or from `?from=V`, `?from=end`) |
//!
//! Every event appended gets the request's correlation id in its metadata
//! (`{"correlation_id": …}`, added to the caller's metadata object), and every call to the
//! store carries it in gRPC metadata. Event data is JSON (`data`) or bytes (`data_base64`);
//! answers show data that is JSON as JSON, else as `data_base64`.
//!
//! Bounds: a request body of at most [`BODY_BYTES_MAX`] (and the store's own append limits:
//! over them is 413); pages of at most [`READ_LIMIT_MAX`] events (default
//! [`READ_LIMIT_DEFAULT`]); at most [`SUBSCRIPTIONS_MAX`] subscriptions at once (then 503), each
//! buffering nothing beyond the client library's own subscription buffer.

mod append;
mod read;
mod subscribe;
mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use strata_client::Client;
use strata_service::Metrics;
use tokio::sync::{watch, Semaphore};

/// The service's port.
pub const PORT: u16 = 8090;
/// Largest request body, bytes.
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most events per page read.
pub const READ_LIMIT_MAX: u32 = 1000;
/// Events per page when `limit` is not given.
pub const READ_LIMIT_DEFAULT: u32 = 100;
/// Most server-sent-event subscriptions open at once.
pub const SUBSCRIPTIONS_MAX: usize = 256;

/// The gateway: its store client and what its subscriptions share.
#[derive(Clone)]
pub struct Gateway {
    store: Client,
    metrics: Arc<Metrics>,
    subscriptions: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

impl Gateway {
    /// A gateway over `store`; its subscriptions end once `stopping` turns true (a graceful
    /// stop would otherwise wait for them).
    pub fn new(store: Client, metrics: Arc<Metrics>, stopping: watch::Receiver<bool>) -> Gateway {
        Gateway {
            store,
            metrics,
            subscriptions: Arc::new(Semaphore::new(SUBSCRIPTIONS_MAX)),
            stopping,
        }
    }

    /// Its routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route(
                "/api/v1/streams/{stream}",
                post(append::append).get(read::read),
            )
            .route("/api/v1/streams/{stream}/info", get(read::info))
            .route(
                "/api/v1/streams/{stream}/subscribe",
                get(subscribe::subscribe),
            )
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(self)
    }

    /// What `/health` adds: the subscriptions open.
    pub fn details(&self) -> serde_json::Value {
        let open = SUBSCRIPTIONS_MAX - self.subscriptions.available_permits();
        serde_json::json!({ "subscriptions_open": open, "subscriptions_max": SUBSCRIPTIONS_MAX })
    }
}
