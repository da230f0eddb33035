//! Correlation ids: every request gets one — the caller's `X-Request-Id`, else the trace id of
//! its W3C `traceparent`, else a new one — which is in every log line the request causes
//! (a tracing span field), goes back in the answer's `X-Request-Id`, and goes on into what the
//! service does for it ([`CorrelationId`] in the request's extensions; services put it in the
//! metadata of the events they append, `{"correlation_id": …}`).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use strata_client::metadata::{trace_id, usable_id as usable};
use tracing::Instrument;

/// The header carrying the id, both ways.
pub const REQUEST_ID: &str = strata_client::metadata::REQUEST_ID_KEY;
/// The W3C trace-context header.
pub const TRACEPARENT: &str = strata_client::metadata::TRACEPARENT_KEY;
/// Longest id taken from a caller (longer ones are replaced by a new id).
pub const ID_BYTES_MAX: usize = strata_client::metadata::CORRELATION_BYTES_MAX;

/// A request's correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// `store` carrying this id in every call (`x-request-id`), so the store's logs of the
    /// calls made for a request name it.
    pub fn on(&self, store: &strata_client::Client) -> strata_client::Client {
        store.with_correlation_id(&self.0)
    }
}

/// The id for a request with these headers.
pub fn from_headers(headers: &axum::http::HeaderMap) -> CorrelationId {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = text(REQUEST_ID).filter(|id| usable(id)) {
        return CorrelationId(id.to_string());
    }
    if let Some(trace) = text(TRACEPARENT).and_then(trace_id) {
        return CorrelationId(trace.to_string());
    }
    CorrelationId(uuid::Uuid::new_v4().simple().to_string())
}

/// The middleware: finds the id, runs the request in a span carrying it, answers with it.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = from_headers(request.headers());
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        correlation_id = %id.0,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn the_id_comes_from_the_request_id_then_the_traceparent_then_is_new() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(from_headers(&h).0, "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert(REQUEST_ID, HeaderValue::from_static("order-17"));
        assert_eq!(from_headers(&h).0, "order-17");
        let fresh = from_headers(&HeaderMap::new()).0;
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, from_headers(&HeaderMap::new()).0);
        // Malformed ones are not taken.
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-4bf92f35-00f067aa0ba902b7-01"), None);
        let mut bad = HeaderMap::new();
        bad.insert(
            REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(ID_BYTES_MAX + 1))
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_ne!(from_headers(&bad).0.len(), ID_BYTES_MAX + 1);
    }
}
