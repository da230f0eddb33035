//! Checks on a request before anything is written: names, sizes, counts, ids. A request that
//! fails any check is rejected whole with an error naming the field or the limit.

use std::collections::HashSet;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::event::AppendRequest;
use crate::format::{event_frame_len, FRAME_BYTES, HEADER_BYTES};

/// Checks a stream name: non-empty, bounded, no control characters; a name starting with `$`
/// must be one of the system streams ([`crate::system`]) about a valid stream.
pub fn validate_stream_name(field: &str, stream: &str, limits: &Limits) -> Result<()> {
    if stream.starts_with('$') {
        return validate_system_name(field, stream, limits);
    }
    validate_user_stream_name(field, stream, limits)
}

/// Checks a system stream's name (`$…`): one of the system streams, and the part that names
/// a user stream a valid user stream name.
pub fn validate_system_name(field: &str, name: &str, limits: &Limits) -> Result<()> {
    use crate::system::{parse, SystemStream};
    match parse(name) {
        Some(
            SystemStream::Closed
            | SystemStream::Settings
            | SystemStream::ClusterMap
            | SystemStream::Fences
            | SystemStream::Group(..),
        ) => Ok(()),
        Some(SystemStream::Meta(s) | SystemStream::Snapshot(s) | SystemStream::Deleted(s)) => {
            validate_user_stream_name(field, s, limits)
        }
        None => Err(Error::invalid(
            field,
            "names starting with '$' are reserved for the system",
        )),
    }
}

/// Checks a name clients may append to: non-empty, bounded, no control characters, not
/// reserved (`$`).
pub fn validate_user_stream_name(field: &str, stream: &str, limits: &Limits) -> Result<()> {
    if stream.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if stream.len() > limits.stream_name_bytes_max {
        return Err(Error::LimitExceeded {
            limit: "stream_name_bytes_max",
            value: stream.len() as u64,
            max: limits.stream_name_bytes_max as u64,
        });
    }
    if let Some((at, c)) = stream.char_indices().find(|(_, c)| c.is_control()) {
        return Err(Error::invalid(
            field,
            format!("control character U+{:04X} at byte {at}", c as u32),
        ));
    }
    if stream.starts_with('$') {
        return Err(Error::invalid(
            field,
            "names starting with '$' are reserved for the system",
        ));
    }
    Ok(())
}

/// `result`, an invalid argument in it naming `field()` (formatted only on failure: the
/// checks of a good request allocate nothing).
fn naming<T>(result: Result<T>, field: impl FnOnce() -> String) -> Result<T> {
    result.map_err(|e| match e {
        Error::InvalidArgument { reason, .. } => Error::InvalidArgument {
            field: field(),
            reason,
        },
        other => other,
    })
}

/// Up to this many names or ids, a repeat is looked for by scanning those seen (most appends
/// carry one stream and a few events); past it, in a hash set.
const SCAN_MAX: usize = 8;

/// What a request has named so far, to find a repeat: up to [`SCAN_MAX`] in place (no
/// allocation), more in a hash set.
enum Seen<T> {
    Few { items: [T; SCAN_MAX], len: usize },
    Many(HashSet<T>),
}

impl<T: Eq + std::hash::Hash + Copy + Default> Seen<T> {
    /// Room for `n`.
    fn new(n: usize) -> Self {
        if n <= SCAN_MAX {
            Seen::Few {
                items: [T::default(); SCAN_MAX],
                len: 0,
            }
        } else {
            Seen::Many(HashSet::with_capacity(n))
        }
    }

    /// Whether `item` is new (then it is remembered).
    fn insert(&mut self, item: T) -> bool {
        match self {
            Seen::Few { items, len } if items[..*len].contains(&item) => false,
            Seen::Few { items, len } if *len < SCAN_MAX => {
                items[*len] = item;
                *len += 1;
                true
            }
            // More than the room asked for: on in a set.
            Seen::Few { items, .. } => {
                let mut set: HashSet<T> = items.iter().copied().collect();
                set.insert(item);
                *self = Seen::Many(set);
                true
            }
            Seen::Many(set) => set.insert(item),
        }
    }
}

/// Checks a whole append request; returns the size of the record it encodes to.
pub fn validate_request(request: &AppendRequest, limits: &Limits) -> Result<usize> {
    if request.streams.is_empty() {
        return Err(Error::invalid(
            "streams",
            "an append needs at least one stream",
        ));
    }
    let named = request.streams.len() + request.conditions.len();
    if named > limits.batch_streams_max {
        return Err(Error::LimitExceeded {
            limit: "batch_streams_max",
            value: named as u64,
            max: limits.batch_streams_max as u64,
        });
    }
    let events: usize = request.streams.iter().map(|s| s.events.len()).sum();
    if events > limits.batch_events_max {
        return Err(Error::LimitExceeded {
            limit: "batch_events_max",
            value: events as u64,
            max: limits.batch_events_max as u64,
        });
    }
    let mut streams = Seen::new(named);
    let mut ids = Seen::new(events);
    let mut bytes = FRAME_BYTES + HEADER_BYTES + 4;
    for (i, part) in request.streams.iter().enumerate() {
        naming(validate_stream_name("", &part.stream, limits), || {
            format!("streams[{i}].stream")
        })?;
        if !streams.insert(part.stream.as_str()) {
            return Err(Error::invalid(
                format!("streams[{i}].stream"),
                format!("stream `{}` appears twice in one append", part.stream),
            ));
        }
        if part.events.is_empty() {
            return Err(Error::invalid(
                format!("streams[{i}].events"),
                "at least one event per stream",
            ));
        }
        for (j, e) in part.events.iter().enumerate() {
            let field = |name: &str| format!("streams[{i}].events[{j}].{name}");
            if e.id.is_nil() {
                return Err(Error::invalid(field("id"), "must not be the nil UUID"));
            }
            if !ids.insert(e.id) {
                return Err(Error::invalid(
                    field("id"),
                    format!("event id {} appears twice in one append", e.id),
                ));
            }
            if e.event_type.is_empty() {
                return Err(Error::invalid(field("type"), "must not be empty"));
            }
            if e.event_type.len() > limits.event_type_bytes_max {
                return Err(Error::LimitExceeded {
                    limit: "event_type_bytes_max",
                    value: e.event_type.len() as u64,
                    max: limits.event_type_bytes_max as u64,
                });
            }
            if e.event_type.chars().any(char::is_control) {
                return Err(Error::invalid(
                    field("type"),
                    "contains a control character",
                ));
            }
            let size = part.stream.len() + e.event_type.len() + e.data.len() + e.metadata.len();
            if size > limits.event_bytes_max {
                return Err(Error::LimitExceeded {
                    limit: "event_bytes_max",
                    value: size as u64,
                    max: limits.event_bytes_max as u64,
                });
            }
            bytes += event_frame_len(&part.stream, &e.event_type, e.data.len(), e.metadata.len());
        }
    }
    for (i, c) in request.conditions.iter().enumerate() {
        naming(validate_stream_name("", &c.stream, limits), || {
            format!("conditions[{i}].stream")
        })?;
        if !streams.insert(c.stream.as_str()) {
            return Err(Error::invalid(
                format!("conditions[{i}].stream"),
                format!("stream `{}` appears twice in one append", c.stream),
            ));
        }
    }
    if bytes > limits.batch_bytes_max {
        return Err(Error::LimitExceeded {
            limit: "batch_bytes_max",
            value: bytes as u64,
            max: limits.batch_bytes_max as u64,
        });
    }
    Ok(bytes)
}

/// An append request that passed [`validate_request`]; only that check builds one, so the
/// writer never checks a request twice.
#[derive(Debug, Clone)]
pub struct Validated {
    request: AppendRequest,
    bytes: usize,
}

impl Validated {
    /// Checks `request` against `limits`.
    pub fn new(request: AppendRequest, limits: &Limits) -> Result<Validated> {
        let bytes = validate_request(&request, limits)?;
        Ok(Validated { request, bytes })
    }

    /// The size of the record it encodes to.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The request.
    pub fn request(&self) -> &AppendRequest {
        &self.request
    }

    /// The request, taken out.
    pub fn into_request(self) -> AppendRequest {
        self.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExpectedVersion, NewEvent};
    use uuid::Uuid;

    fn event(id: u128) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(id),
            event_type: "E".into(),
            data: bytes::Bytes::from_static(b"{}"),
            metadata: bytes::Bytes::new(),
        }
    }

    fn field_of(request: &AppendRequest) -> String {
        match validate_request(request, &Limits::default()) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_repeated_id_or_stream_is_found_among_few_and_among_many() {
        for n in [2, SCAN_MAX, SCAN_MAX + 1, 40] {
            let mut events: Vec<NewEvent> = (1..n as u128).map(event).collect();
            events.push(event(n as u128 / 2));
            let r = AppendRequest::single("s", ExpectedVersion::Any, events, 1);
            assert_eq!(
                field_of(&r),
                format!("streams[0].events[{}].id", n - 1),
                "{n} events"
            );
            let mut r = AppendRequest::single("s0", ExpectedVersion::Any, vec![event(1)], 1);
            for i in 1..n {
                r = r.on_condition(format!("s{i}"), ExpectedVersion::Any);
            }
            r = r.on_condition(format!("s{}", n / 2), ExpectedVersion::Any);
            assert_eq!(
                field_of(&r),
                format!("conditions[{}].stream", n - 1),
                "{n} streams"
            );
        }
        let mut many: Seen<u32> = Seen::new(2);
        for i in 0..3 * SCAN_MAX as u32 {
            assert!(many.insert(i), "{i} is new, past the room asked for too");
        }
        assert!(!many.insert(SCAN_MAX as u32 - 1) && !many.insert(2 * SCAN_MAX as u32));
    }

    #[test]
    fn a_bad_name_is_reported_at_its_field() {
        let r = AppendRequest::single("", ExpectedVersion::Any, vec![event(1)], 1);
        assert_eq!(field_of(&r), "streams[0].stream");
        let r = AppendRequest::single("s", ExpectedVersion::Any, vec![event(1)], 1)
            .on_condition("$nope", ExpectedVersion::Any);
        assert_eq!(field_of(&r), "conditions[0].stream");
    }
}
