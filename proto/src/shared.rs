//! [`SharedAppends`]: an `AppendStream` request message whose appends are shared, not owned.
//!
//! The client's pipelined appender keeps every append until it is answered (to send it again,
//! with the same event ids, if the call breaks). With the generated
//! [`v1::AppendStreamRequest`], which owns its appends, each message sent needed a copy of each
//! append: four allocations per one-event append (the stream name, the event list, the event's
//! id and type), about a tenth of the client's CPU on pipelined one-event appends. This message
//! holds the appends by [`Arc`]: sending one costs a reference count. It encodes to the same
//! bytes as `AppendStreamRequest` with the same appends, and decodes from them, so the node
//! (which decodes the generated type) cannot tell the two apart.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{message, skip_field, DecodeContext, WireType};
use prost::DecodeError;

use crate::v1;

/// The field number of `AppendStreamRequest.appends`.
const APPENDS_TAG: u32 = 1;

/// An `AppendStreamRequest` of shared appends (field 1, `repeated AppendRequest appends`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedAppends(pub Vec<Arc<v1::AppendRequest>>);

impl prost::Message for SharedAppends {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for append in &self.0 {
            message::encode(APPENDS_TAG, &**append, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != APPENDS_TAG {
            return skip_field(wire_type, tag, buf, ctx);
        }
        let mut append = v1::AppendRequest::default();
        message::merge(wire_type, &mut append, buf, ctx)?;
        self.0.push(Arc::new(append));
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0
            .iter()
            .map(|append| message::encoded_len(APPENDS_TAG, &**append))
            .sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn append(stream: &str, events: usize) -> v1::AppendRequest {
        v1::AppendRequest {
            stream: stream.into(),
            expected: Some(v1::ExpectedVersion {
                kind: Some(v1::expected_version::Kind::Exact(7)),
            }),
            events: (0..events)
                .map(|i| v1::NewEvent {
                    id: format!("00000000-0000-4000-8000-{i:012}"),
                    r#type: format!("Placed{i}"),
                    data: vec![i as u8; 300].into(),
                    metadata: b"{\"k\":1}".to_vec().into(),
                })
                .collect(),
        }
    }

    #[test]
    fn shared_appends_are_the_bytes_of_the_generated_request_both_ways() {
        let appends = vec![append("orders-1", 1), append("orders-2", 3), append("", 0)];
        let owned = v1::AppendStreamRequest {
            appends: appends.clone(),
        };
        let shared = SharedAppends(appends.into_iter().map(Arc::new).collect());
        let bytes = shared.encode_to_vec();
        assert_eq!(bytes, owned.encode_to_vec());
        assert_eq!(shared.encoded_len(), bytes.len());
        assert_eq!(
            v1::AppendStreamRequest::decode(bytes.as_slice()).expect("decodes"),
            owned
        );
        assert_eq!(
            SharedAppends::decode(bytes.as_slice()).expect("decodes"),
            shared
        );
        assert!(SharedAppends::default().encode_to_vec().is_empty());
    }

    #[test]
    fn an_unknown_field_is_skipped_and_a_broken_append_refused() {
        // Field 2 (varint 5), then one append.
        let mut bytes = vec![2 << 3, 5];
        bytes.extend(
            v1::AppendStreamRequest {
                appends: vec![append("s", 1)],
            }
            .encode_to_vec(),
        );
        let decoded = SharedAppends::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.0.len(), 1);
        assert_eq!(decoded.0[0].stream, "s");
        // An append whose length runs past the end of the message.
        assert!(SharedAppends::decode([1u8 << 3 | 2, 50, 10].as_slice()).is_err());
    }
}
