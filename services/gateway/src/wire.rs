//! JSON to and from the wire types: events out, expected versions and event payloads in.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use strata_client::{pb, ExpectedVersion};
use strata_service::api::ApiError;
use strata_service::time::format_rfc3339_us;

/// An event as answers show it: data and metadata as JSON when they are, else base64.
pub fn event_json(e: &pb::RecordedEvent) -> Value {
    let mut out = json!({
        "stream": e.stream,
        "version": e.version,
        "id": e.id,
        "type": e.r#type,
        "position": e.position,
        "timestamp": format_rfc3339_us(e.timestamp_us),
        "timestamp_us": e.timestamp_us,
    });
    if let Some(obj) = out.as_object_mut() {
        put_bytes(obj, "data", &e.data);
        put_bytes(obj, "metadata", &e.metadata);
    }
    out
}

/// `bytes` under `key` as JSON if they parse (empty: null), else under `KEY_base64`.
fn put_bytes(obj: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        obj.insert(key.into(), Value::Null);
        return;
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            obj.insert(key.into(), v);
        }
        Err(_) => {
            obj.insert(format!("{key}_base64"), json!(BASE64.encode(bytes)));
        }
    }
}

/// An expected version as the body gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    /// `any`, `no_stream` or `stream_exists`.
    Name(String),
    /// The stream's last version.
    Version(u64),
}

impl Expected {
    /// The client's form, or a 400 naming the field.
    pub fn parse(&self) -> Result<ExpectedVersion, ApiError> {
        match self {
            Expected::Version(v) => Ok(ExpectedVersion::Exact(*v)),
            Expected::Name(n) => match n.as_str() {
                "any" => Ok(ExpectedVersion::Any),
                "no_stream" => Ok(ExpectedVersion::NoStream),
                "stream_exists" => Ok(ExpectedVersion::StreamExists),
                other => Err(ApiError::invalid(format!(
                    "expected_version: \"any\", \"no_stream\", \"stream_exists\" or a version number, not {other:?}"
                ))),
            },
        }
    }
}

/// An event to append, as the body gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// A UUID; absent: from the request's `Idempotency-Key`, else a new one.
    pub id: Option<String>,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its data as JSON…
    pub data: Option<Value>,
    /// …or as base64 bytes (not both).
    pub data_base64: Option<String>,
    /// A JSON object (the correlation id is added to it).
    pub metadata: Option<Value>,
}

impl EventIn {
    /// The event on the wire, `id` given, `correlation` put into its metadata; `k` is its
    /// index in the request, for errors.
    pub fn wire(&self, k: usize, id: String, correlation: &str) -> Result<pb::NewEvent, ApiError> {
        let data = match (&self.data, &self.data_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "events[{k}]: data or data_base64, not both"
                )))
            }
            (Some(v), None) => serde_json::to_vec(v).unwrap_or_default(),
            (None, Some(b)) => BASE64.decode(b).map_err(|e| {
                ApiError::invalid(format!("events[{k}].data_base64: not base64: {e}"))
            })?,
            (None, None) => Vec::new(),
        };
        let mut metadata = match &self.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "events[{k}].metadata: a JSON object"
                )))
            }
        };
        metadata
            .entry("correlation_id")
            .or_insert_with(|| json!(correlation));
        Ok(pb::NewEvent {
            id,
            r#type: self.event_type.clone(),
            data: data.into(),
            metadata: serde_json::to_vec(&metadata).unwrap_or_default().into(),
        })
    }
}

/// Whether two events are one, but for the correlation id in their metadata (a retry under an
/// idempotency key may come with another).
pub fn same_but_correlation(stored: &pb::RecordedEvent, new: &pb::NewEvent) -> bool {
    let without = |bytes: &[u8]| {
        let mut v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.remove("correlation_id");
        }
        v
    };
    stored.id == new.id
        && stored.r#type == new.r#type
        && stored.data == new.data
        && without(&stored.metadata) == without(&new.metadata)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn events_show_json_as_json_and_bytes_as_base64() {
        let e = pb::RecordedEvent {
            stream: "s".into(),
            version: 3,
            id: "i".into(),
            r#type: "t".into(),
            data: br#"{"a":1}"#.to_vec().into(),
            metadata: vec![0xff, 0x00].into(),
            timestamp_us: 1_795_615_200_250_000,
            position: 9,
        };
        let j = event_json(&e);
        assert_eq!(j["data"]["a"], 1);
        assert_eq!(j["metadata_base64"], "/wA=");
        assert_eq!(j["timestamp"], "2026-11-25T14:00:00.250000Z");
    }

    #[test]
    fn payloads_are_checked_and_carry_the_correlation_id() {
        let e: EventIn = serde_json::from_value(json!({
            "type": "t", "data": {"x": 1}, "metadata": {"by": "me"}
        }))
        .unwrap();
        let w = e.wire(0, "id".into(), "req-1").unwrap();
        let meta: Value = serde_json::from_slice(&w.metadata).unwrap();
        assert_eq!(meta, json!({"by": "me", "correlation_id": "req-1"}));
        assert_eq!(&w.data[..], br#"{"x":1}"#);
        let both: EventIn =
            serde_json::from_value(json!({"type": "t", "data": 1, "data_base64": "AA=="})).unwrap();
        assert!(both.wire(2, "id".into(), "c").is_err());
        let bad_meta: EventIn =
            serde_json::from_value(json!({"type": "t", "metadata": [1]})).unwrap();
        assert!(bad_meta.wire(0, "id".into(), "c").is_err());
        assert!(Expected::Name("sometimes".into()).parse().is_err());
        assert_eq!(
            Expected::Version(4).parse().unwrap(),
            ExpectedVersion::Exact(4)
        );
    }
}
