//! JSON-lines output.

use strata_proto::v1 as pb;

/// Prints one JSON value as a line on stdout.
pub fn line(value: &serde_json::Value) {
    println!("{value}");
}

/// Payload bytes as JSON: the JSON value itself when they are JSON, else a string when they
/// are UTF-8, else `{"hex": "..."}`.
pub fn payload(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => {
            serde_json::json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() })
        }
    }
}

/// An event as a JSON object.
pub fn event(e: &pb::RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "stream": e.stream,
        "version": e.version,
        "id": e.id,
        "type": e.r#type,
        "data": payload(&e.data),
        "metadata": payload(&e.metadata),
        "timestamp_us": e.timestamp_us,
        "position": e.position,
    })
}

/// A progress bar on stderr for `done` of `total` steps, with what the last step was:
/// `[#####-----] 2/4 shard 3: leader 1 → 4`. One line per step (a log, also where stderr is
/// not a terminal).
pub fn progress(done: usize, total: usize, what: &str) {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    eprintln!(
        "[{}{}] {done}/{total} {what}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
}
