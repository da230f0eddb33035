//! `GET /api/v1/streams/{stream}` (a page of events, now or as of a past moment) and
//! `GET /api/v1/streams/{stream}/info`.

use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use strata_client::pb;
use strata_service::api::ApiError;
use strata_service::time::{format_rfc3339_us, parse_rfc3339_us};
use strata_service::CorrelationId;

use crate::wire::event_json;
use crate::{Gateway, READ_LIMIT_DEFAULT, READ_LIMIT_MAX};

/// What a read takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    from: Option<u64>,
    limit: Option<u32>,
    direction: Option<String>,
    consistency: Option<String>,
    as_of: Option<String>,
    as_of_version: Option<u64>,
    as_of_position: Option<u64>,
}

/// `?consistency=`: linearizable (default) or follower.
pub fn consistency(text: Option<&str>) -> Result<pb::Consistency, ApiError> {
    match text.unwrap_or("linearizable") {
        "linearizable" => Ok(pb::Consistency::Linearizable),
        "follower" => Ok(pb::Consistency::Follower),
        other => Err(ApiError::invalid(format!(
            "consistency: linearizable or follower, not {other:?}"
        ))),
    }
}

impl ReadQuery {
    fn request(&self, stream: &str) -> Result<pb::ReadRequest, ApiError> {
        let limit = self.limit.unwrap_or(READ_LIMIT_DEFAULT);
        if !(1..=READ_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit: 1 to {READ_LIMIT_MAX}, not {limit}"
            )));
        }
        let direction = match self.direction.as_deref().unwrap_or("forwards") {
            "forwards" => pb::Direction::Forwards,
            "backwards" => pb::Direction::Backwards,
            other => {
                return Err(ApiError::invalid(format!(
                    "direction: forwards or backwards, not {other:?}"
                )))
            }
        };
        let point = match (&self.as_of, self.as_of_version, self.as_of_position) {
            (None, None, None) => None,
            (Some(t), None, None) => Some(pb::as_of::Point::TimestampUs(
                parse_rfc3339_us(t).map_err(|e| ApiError::invalid(format!("as_of: {e}")))?,
            )),
            (None, Some(v), None) => Some(pb::as_of::Point::Version(v)),
            (None, None, Some(p)) => Some(pb::as_of::Point::Position(p)),
            _ => {
                return Err(ApiError::invalid(
                    "as_of, as_of_version, as_of_position: one at most",
                ))
            }
        };
        Ok(pb::ReadRequest {
            stream: stream.to_string(),
            from_version: self.from,
            direction: direction as i32,
            limit,
            consistency: consistency(self.consistency.as_deref())? as i32,
            as_of: point.map(|p| pb::AsOf { point: Some(p) }),
        })
    }
}

/// The read handler: `{stream, events, next}` (`next`: the version to read from for the next
/// page in the same direction; null at the stream's end), and with `as_of` the time the shard
/// is closed through (the answer is final). A stream that does not exist is 404.
pub async fn read(
    State(g): State<Gateway>,
    Extension(correlation): Extension<CorrelationId>,
    Path(stream): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Response {
    let request = match q.request(&stream) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let backwards = request.direction == pb::Direction::Backwards as i32;
    let limit = request.limit as usize;
    let store = correlation.on(&g.store);
    match store.read(request).await {
        Ok(page) if page.events.is_empty() => match absent(&store, &stream).await {
            Some(e) => e.into_response(),
            None => {
                Json(json!({"stream": stream, "events": [], "next": null, "closed_through": null}))
                    .into_response()
            }
        },
        Ok(page) => {
            let more = page.truncated || page.events.len() == limit;
            let next = page.events.last().filter(|_| more).and_then(|e| {
                if backwards {
                    e.version.checked_sub(1)
                } else {
                    Some(e.version + 1)
                }
            });
            let closed =
                (page.closed_timestamp_us > 0).then(|| format_rfc3339_us(page.closed_timestamp_us));
            Json(json!({
                "stream": stream,
                "events": page.events.iter().map(event_json).collect::<Vec<_>>(),
                "next": next,
                "closed_through": closed,
            }))
            .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// For an empty page: the error when the stream does not exist (404) or is deleted for good
/// (410); `None` when it exists (the page is empty at that point).
async fn absent(store: &strata_client::Client, stream: &str) -> Option<ApiError> {
    match store
        .stream_info(stream, pb::Consistency::Linearizable)
        .await
    {
        Ok(s) if s.tombstoned => Some(ApiError::new(
            axum::http::StatusCode::GONE,
            "stream_deleted",
            format!("stream {stream} is deleted for good"),
        )),
        Ok(s) if !s.exists => Some(ApiError::not_found(format!("no stream {stream}"))),
        Ok(_) => None,
        Err(e) => Some(e.into()),
    }
}

/// What `info` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoQuery {
    consistency: Option<String>,
}

/// The stream's state: `{stream, exists, version, first_visible_version, deleted, tombstoned,
/// metadata}`.
pub async fn info(
    State(g): State<Gateway>,
    Extension(correlation): Extension<CorrelationId>,
    Path(stream): Path<String>,
    Query(q): Query<InfoQuery>,
) -> Response {
    let consistency = match consistency(q.consistency.as_deref()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match correlation
        .on(&g.store)
        .stream_info(&stream, consistency)
        .await
    {
        Ok(s) => {
            let m = s.metadata.unwrap_or_default();
            Json(json!({
                "stream": s.stream,
                "exists": s.exists,
                "version": s.exists.then_some(s.current_version),
                "first_visible_version": s.first_visible_version,
                "deleted": s.deleted,
                "tombstoned": s.tombstoned,
                "metadata": {
                    "max_age_us": m.max_age_us,
                    "max_count": m.max_count,
                    "truncate_before": m.truncate_before,
                    "version": s.metadata_version,
                },
            }))
            .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
