//! The codec of every generated service and client: prost's, except that a message that does
//! not decode is answered `INVALID_ARGUMENT` naming what prost found wrong (the field's path
//! where prost gives one, e.g. `AppendRequest.stream: invalid string value: data is not UTF-8
//! encoded`), where tonic's default is `INTERNAL` — which clients and alerts read as a fault of
//! the server. On a client, a response that does not decode is reported the same way.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.inner.decoder())
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
