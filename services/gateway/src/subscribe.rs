//! `GET /api/v1/streams/{stream}/subscribe`: a stream's events as server-sent events.
//!
//! Each event is one SSE event whose `id:` is its version and whose data is its JSON; once the
//! events that existed at the start are delivered, one `event: caught-up`; live events follow.
//! A reconnecting client (a browser's `EventSource` does it by itself) sends the last id it got
//! as `Last-Event-ID` and resumes at the next version: no gap, no duplicate. Without it,
//! `?from=V` starts at version V, `?from=end` with what is appended from now on, else the
//! first event. The client library reconnects to the store beneath; when it gives up, an
//! `event: error` ends the stream. Subscriptions end when the service stops; at most
//! [`crate::SUBSCRIPTIONS_MAX`] at once (then 503).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use strata_client::{Item, Start, Subscription, Target};
use strata_service::api::ApiError;
use strata_service::server::stopped;
use strata_service::CorrelationId;
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::wire::event_json;
use crate::{Gateway, SUBSCRIPTIONS_MAX};

/// How often an idle subscription sends a comment (so proxies keep it open).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a subscription takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    from: Option<String>,
}

/// Where to start: after `Last-Event-ID`, else `?from=`, else the beginning.
fn start(headers: &HeaderMap, q: &SubscribeQuery) -> Result<Start, ApiError> {
    if let Some(last) = headers.get("last-event-id") {
        let version: u64 = last
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID: an event's version (a number)"))?;
        return Ok(Start::Version(version.saturating_add(1)));
    }
    match q.from.as_deref() {
        None => Ok(Start::Beginning),
        Some("end") => Ok(Start::End),
        Some(v) => v.parse().map(Start::Version).map_err(|_| {
            ApiError::invalid(format!("from: a version number or \"end\", not {v:?}"))
        }),
    }
}

/// A subscription under way.
struct Open {
    subscription: Subscription,
    stopping: watch::Receiver<bool>,
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

/// What came next.
enum Next {
    Item(Result<Item, strata_client::Error>),
    Stopping,
}

/// The handler.
pub async fn subscribe(
    State(g): State<Gateway>,
    Extension(correlation): Extension<CorrelationId>,
    Path(stream): Path<String>,
    Query(q): Query<SubscribeQuery>,
    headers: HeaderMap,
) -> Response {
    let start = match start(&headers, &q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = g.subscriptions.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscriptions",
            format!("{SUBSCRIPTIONS_MAX} subscriptions are open (the most at once); retry later"),
        )
        .into_response();
    };
    g.metrics.add(
        "strata_gateway_subscriptions_total",
        "Subscriptions opened.",
        &[],
        1.0,
    );
    let open = Open {
        subscription: correlation
            .on(&g.store)
            .subscribe(Target::Stream(stream), start),
        stopping: g.stopping.clone(),
        ended: false,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(open, |mut open| async move {
        if open.ended {
            return None;
        }
        let next = {
            let Open {
                subscription,
                stopping,
                ..
            } = &mut open;
            tokio::select! {
                item = subscription.next() => Next::Item(item),
                _ = stopped(stopping) => Next::Stopping,
            }
        };
        let event = match next {
            Next::Stopping => return None,
            Next::Item(Ok(Item::Event(e))) => Event::default()
                .id(e.version.to_string())
                .data(event_json(&e).to_string()),
            Next::Item(Ok(Item::CaughtUp)) => Event::default().event("caught-up").data("{}"),
            Next::Item(Err(e)) => {
                open.ended = true;
                let body = json!({ "error": e.to_string(), "code": ApiError::from(e).code });
                Event::default().event("error").data(body.to_string())
            }
        };
        Some((Ok::<Event, Infallible>(event), open))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_subscription_resumes_after_the_last_event_id() {
        let none = SubscribeQuery { from: None };
        let mut h = HeaderMap::new();
        assert_eq!(start(&h, &none).unwrap(), Start::Beginning);
        let from = |f: &str| SubscribeQuery {
            from: Some(f.into()),
        };
        assert_eq!(start(&h, &from("end")).unwrap(), Start::End);
        assert_eq!(start(&h, &from("7")).unwrap(), Start::Version(7));
        assert!(start(&h, &from("soon")).is_err());
        h.insert("last-event-id", "41".parse().unwrap());
        assert_eq!(start(&h, &from("7")).unwrap(), Start::Version(42));
        h.insert("last-event-id", "x".parse().unwrap());
        assert!(start(&h, &none).is_err());
    }
}
