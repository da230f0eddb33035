//! `POST /api/v1/streams/{stream}`: an atomic append, idempotent under an `Idempotency-Key`.
//!
//! With a key, event k's id is the UUID (version 5) of `STREAM \n KEY \n k`, so a retried
//! request carries the same ids and the store answers it with the first outcome instead of
//! writing twice (keys are per stream). A retry may come with another correlation id, and the
//! store compares metadata too: when it reports a conflict, the gateway reads the stream's
//! last [`READBACK_EVENTS`] events, and if the key's events are there with the same type, data
//! and metadata but for the correlation id, answers with them (200, `deduplicated`); else the
//! key was used with another body (409 `idempotency_key_reused`).

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use strata_client::{pb, Client, Error, ExpectedVersion};
use strata_service::api::{idempotency_key, ApiError};
use strata_service::CorrelationId;

use crate::wire::{same_but_correlation, EventIn, Expected};
use crate::Gateway;

/// How far back a retry under a key looks for its first append's events.
pub const READBACK_EVENTS: u32 = 1000;
/// The namespace of key-derived event ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1e_3a52_8c0d_4b8e_9a27_53c1_d0e4_b7a9);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendBody {
    expected_version: Option<Expected>,
    events: Vec<EventIn>,
}

/// The handler.
pub async fn append(
    State(g): State<Gateway>,
    Extension(correlation): Extension<CorrelationId>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match checked_append(&g, &correlation, &stream, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn checked_append(
    g: &Gateway,
    correlation: &CorrelationId,
    stream: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let body: AppendBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body's JSON: {e}")))?;
    if body.events.is_empty() {
        return Err(ApiError::invalid("events: at least one"));
    }
    let expected = body
        .expected_version
        .as_ref()
        .map_or(Ok(ExpectedVersion::Any), Expected::parse)?;
    let key = idempotency_key(headers)?;
    let mut events = Vec::with_capacity(body.events.len());
    for (k, e) in body.events.iter().enumerate() {
        let id = match (&e.id, &key) {
            (Some(id), _) => uuid::Uuid::parse_str(id)
                .map_err(|err| ApiError::invalid(format!("events[{k}].id: not a UUID: {err}")))?
                .to_string(),
            (None, Some(key)) => {
                uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{stream}\n{key}\n{k}").as_bytes())
                    .to_string()
            }
            (None, None) => String::new(),
        };
        events.push(e.wire(k, id, &correlation.0)?);
    }
    let store = correlation.on(&g.store);
    match store.append(stream, expected, events.clone()).await {
        Ok(r) => Ok(appended(stream, &r, &events)),
        Err(Error::IdempotencyConflict(why)) if key.is_some() => {
            readback(&store, stream, &events, &why).await
        }
        Err(e) => Err(e.into()),
    }
}

fn appended(stream: &str, r: &pb::AppendResponse, events: &[pb::NewEvent]) -> Response {
    let (first, last) = r.streams.first().map_or((None, None), |s| {
        (Some(s.first_version), Some(s.last_version))
    });
    let status = if r.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let body = json!({
        "stream": stream,
        "first_version": first,
        "last_version": last,
        "position": r.position,
        "deduplicated": r.deduplicated,
        "ids": ids,
    });
    (status, Json(body)).into_response()
}

/// After a conflict under a key: the first append's events, if they are these (see the
/// module docs).
async fn readback(
    store: &Client,
    stream: &str,
    events: &[pb::NewEvent],
    why: &str,
) -> Result<Response, ApiError> {
    let reused = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!("this Idempotency-Key was used with another body on this stream: {why}"),
        )
    };
    let recent = store
        .read(pb::ReadRequest {
            stream: stream.to_string(),
            direction: pb::Direction::Backwards as i32,
            limit: READBACK_EVENTS,
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await?;
    let mut found: Vec<&pb::RecordedEvent> = recent.events.iter().rev().collect();
    let Some(start) = found
        .iter()
        .position(|e| Some(&e.id) == events.first().map(|n| &n.id))
    else {
        return Err(reused());
    };
    found.drain(..start);
    let same = found.len() >= events.len()
        && found
            .iter()
            .zip(events)
            .all(|(stored, new)| same_but_correlation(stored, new));
    if !same {
        return Err(reused());
    }
    let (first, last) = (found[0], found[events.len() - 1]);
    let r = pb::AppendResponse {
        position: first.position,
        streams: vec![pb::StreamResult {
            stream: stream.to_string(),
            first_version: first.version,
            last_version: last.version,
        }],
        deduplicated: true,
    };
    Ok(appended(stream, &r, events))
}
