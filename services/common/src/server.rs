//! The HTTP server every service runs: its own routes plus `/health` and `/metrics`, each
//! request counted and timed (`strata_http_requests_total`, `strata_http_request_seconds` by
//! route and status) and run under its correlation id; logs as JSON lines (or text); a
//! graceful shutdown on SIGINT or SIGTERM (requests under way finish; at most
//! [`SHUTDOWN_GRACE`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use strata_client::{Client, ClientConfig};

use crate::config::{LogFormat, Settings};
use crate::metrics::Metrics;

/// How long the store may take to answer a health probe.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long requests under way get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Extra fields a service adds to its `/health` answer.
pub type HealthDetails = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// One service, ready to serve.
pub struct Service {
    /// Its settings.
    pub settings: Settings,
    /// Its own routes (state applied).
    pub routes: Router,
    /// Its metrics (the server adds the HTTP ones).
    pub metrics: Arc<Metrics>,
    /// Its connection to the store.
    pub store: Client,
    /// What else `/health` says.
    pub details: Option<HealthDetails>,
}

/// Starts the logs: JSON lines (or text) to stderr, filtered by `STRATA_LOG` (default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The store client a service uses: short timeouts, so a health probe and a request fail fast.
pub fn store_client(settings: &Settings) -> Result<Client, String> {
    Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(5),
        ..ClientConfig::new(settings.store.clone())
    })
    .map_err(|e| format!("store addresses {:?}: {e}", settings.store))
}

#[derive(Clone)]
struct Shared {
    name: &'static str,
    store: Client,
    addresses: Vec<String>,
    metrics: Arc<Metrics>,
    details: Option<HealthDetails>,
}

async fn health(State(s): State<Shared>) -> Response {
    let probe = tokio::time::timeout(HEALTH_PROBE_TIMEOUT, s.store.get_log(None)).await;
    let (reachable, error) = match probe {
        Ok(Ok(_)) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (
            false,
            Some(format!("no answer within {HEALTH_PROBE_TIMEOUT:?}")),
        ),
    };
    let mut body = json!({
        "service": s.name,
        "status": if reachable { "ok" } else { "unhealthy" },
        "store": { "reachable": reachable, "addresses": s.addresses, "error": error },
    });
    if let (Some(details), Some(obj)) = (&s.details, body.as_object_mut()) {
        obj.insert("details".into(), details());
    }
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn count(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("service", s.name),
        ("route", route.as_str()),
        ("status", status.as_str()),
    ];
    s.metrics.add(
        "strata_http_requests_total",
        "HTTP requests answered.",
        &labels,
        1.0,
    );
    s.metrics.observe(
        "strata_http_request_seconds",
        "Time to answer an HTTP request.",
        &labels,
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(route = %route, status = %status, ms = started.elapsed().as_millis() as u64, "answered");
    response
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The service's whole router: its routes, `/health`, `/metrics`, counting and correlation ids.
pub fn router(service: &Service) -> Router {
    let shared = Shared {
        name: service.settings.name,
        store: service.store.clone(),
        addresses: service.settings.store.clone(),
        metrics: service.metrics.clone(),
        details: service.details.clone(),
    };
    let own = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    service
        .routes
        .clone()
        .merge(own)
        .layer(axum::middleware::from_fn_with_state(shared, count))
        .layer(axum::middleware::from_fn(crate::correlation::layer))
}

/// Resolves once `stop` turns true (or its sender is gone). A `select!` branch on this holds
/// no lock guard across its await, as one on `wait_for` itself would.
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `service` until `shutdown` resolves; then lets requests under way finish (at most
/// [`SHUTDOWN_GRACE`]).
pub async fn serve(
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let addr = service.settings.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{}: listening on {addr}: {e}", service.settings.name))?;
    tracing::info!(service = service.settings.name, %addr, store = ?service.settings.store, "serving");
    let app = router(&service);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let grace = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("{}: {e}", service.settings.name))?,
        _ = grace => tracing::warn!("requests still under way after {SHUTDOWN_GRACE:?}; stopping"),
    }
    tracing::info!(service = service.settings.name, "stopped");
    Ok(())
}
