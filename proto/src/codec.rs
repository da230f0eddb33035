//! The codec of every generated service and client: prost's, except that a message that does
//! not decode is answered `INVALID_ARGUMENT` naming what prost found wrong (the field's path
//! where prost gives one, e.g. `AppendRequest.stream: invalid string value: data is not UTF-8
//! encoded`), where tonic's default is `INTERNAL` — which clients and alerts read as a fault of
//! the server. On a client, a response that does not decode is reported the same way.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::metadata::{ERROR_KIND_INVALID_ARGUMENT, ERROR_KIND_KEY};

/// prost's codec with bad input answered as the caller's error.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec {
            inner: ProstCodec::default(),
            _pd: PhantomData,
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.inner.decoder())
    }
}

/// prost's encoder, except that it reserves the message's encoded length first. tonic's
/// buffer starts at 8 KiB and is handed off whole after each message, so prost writing a
/// 100-event append (~100 KiB) grew it by doubling: four reallocations copying ~1.2× the
/// message again, on fresh pages, for every request (and every large read answer).
#[derive(Debug, Clone)]
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// prost's decoder, mapping a decode error to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(undecodable)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status for a message prost could not decode (prost reports only that as `INTERNAL`).
fn undecodable(status: Status) -> Status {
    if status.code() != Code::Internal {
        return status;
    }
    let mut status =
        Status::invalid_argument(format!("the message does not decode: {}", status.message()));
    status.metadata_mut().insert(
        ERROR_KIND_KEY,
        tonic::metadata::MetadataValue::from_static(ERROR_KIND_INVALID_ARGUMENT),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AppendRequest, NewEvent};
    use http_body_util::BodyExt;

    /// tonic's frame of one message: the 5-byte header (not compressed, length) and the body.
    async fn encoded(request: AppendRequest) -> Vec<u8> {
        let body = tonic::codec::EncodeBody::new_client(
            SizedEncoder::<AppendRequest>(PhantomData),
            tokio_stream::iter([Ok(request)]),
            None,
            None,
        );
        let collected = body.collect().await.expect("the body encodes");
        collected.to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_message_larger_than_the_buffer_encodes_whole_and_decodes_back() {
        // ~300 KiB: past tonic's 8 KiB buffer and its 32 KiB yield threshold.
        let request = AppendRequest {
            stream: "orders-1".into(),
            events: (0..300u32)
                .map(|i| NewEvent {
                    r#type: format!("Placed{i}"),
                    data: vec![i as u8; 1024].into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let frame = encoded(request.clone()).await;
        let len = request.encoded_len();
        assert_eq!(frame.len(), 5 + len);
        assert_eq!(frame[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            len
        );
        assert_eq!(
            AppendRequest::decode(&frame[5..]).expect("decodes"),
            request
        );
    }

    #[test]
    fn a_decode_error_is_the_callers_and_other_statuses_pass() {
        let bad = undecodable(Status::internal("failed to decode Protobuf message: x"));
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad
            .message()
            .contains("failed to decode Protobuf message: x"));
        assert_eq!(
            bad.metadata().get(ERROR_KIND_KEY).map(|v| v.as_bytes()),
            Some(ERROR_KIND_INVALID_ARGUMENT.as_bytes())
        );
        assert_eq!(
            undecodable(Status::out_of_range("too large")).code(),
            Code::OutOfRange
        );
    }
}
