//! The JSON error every service answers with: `{"error": MESSAGE, "code": CODE, …}` and the
//! HTTP status that fits, and the mapping of the store's errors (`strata_client::Error`) to
//! them — so a caller sees the same shape and the same status for the same cause from every
//! service.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use strata_client::Error;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Its HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable name (`invalid_argument`, `wrong_expected_version`, …).
    pub code: &'static str,
    /// In words, naming the field or the limit.
    pub message: String,
    /// Fields added to the body (`actual_version` for a wrong expected version).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error of `status` named `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// 400 `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// With `key: value` in the body.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.extra.insert(key.to_string(), value);
        self
    }
}

/// The header naming a request's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key, bytes.
pub const KEY_BYTES_MAX: usize = 128;

/// A request's idempotency key, if it has one: printable ASCII without spaces, 1 to
/// [`KEY_BYTES_MAX`] bytes (else 400).
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= KEY_BYTES_MAX && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Idempotency-Key: printable ASCII without spaces, 1 to {KEY_BYTES_MAX} bytes"
            ))
        })
}

impl From<Error> for ApiError {
    /// The store's error as an answer: a wrong expected version is 409 with the actual one,
    /// a request over a limit 413, the store unreachable 503 (retry: appends carry their ids).
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        match e {
            Error::WrongExpectedVersion { actual, .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_expected_version", message)
                    .with("actual_version", json!(actual))
            }
            Error::NotFound(_) => ApiError::not_found(message),
            Error::Deleted(_) => ApiError::new(StatusCode::GONE, "stream_deleted", message),
            Error::InvalidArgument(_) => ApiError::invalid(message),
            Error::LimitExceeded(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", message)
            }
            Error::IdempotencyConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message)
            }
            Error::Unavailable(_) | Error::DeadlineExceeded { .. } | Error::Fenced(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("error".into(), json!(self.message));
        body.insert("code".into(), json!(self.code));
        (self.status, Json(serde_json::Value::Object(body))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_and_codes() {
        let wrong = ApiError::from(Error::WrongExpectedVersion {
            actual: Some(4),
            message: "m".into(),
        });
        assert_eq!(wrong.status, StatusCode::CONFLICT);
        assert_eq!(wrong.extra["actual_version"], json!(4));
        for (e, status) in [
            (Error::NotFound("s".into()), StatusCode::NOT_FOUND),
            (Error::Deleted("s".into()), StatusCode::GONE),
            (Error::InvalidArgument("f".into()), StatusCode::BAD_REQUEST),
            (
                Error::LimitExceeded("l".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                Error::Unavailable("u".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ] {
            assert_eq!(ApiError::from(e).status, status);
        }
    }
}
