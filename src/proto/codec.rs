//! The codec of every generated service and client: prost's, except for what a request that is
//! not valid protobuf is answered with.
//!
//! tonic-prost maps every decode failure (a truncated message, a wrong wire type, a length past
//! the end, invalid UTF-8 in a `string` field) to INTERNAL, which tells a client that the
//! server is broken and, for stock Google clients, is final. Such a request is the caller's
//! fault: this codec answers INVALID_ARGUMENT, with an `ErrorInfo` (reason `MALFORMED_REQUEST`)
//! and a short message. (A client of these stubs sees the same code for a malformed *response*,
//! which a conforming server never sends.)

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

use super::ERROR_DOMAIN;

/// prost encoding and decoding; decode failures are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
            _types: PhantomData,
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

/// prost's decoder with malformed input answered INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|decode_error| malformed(decode_error.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status for a message that does not decode; `reason` is prost's short description.
pub(crate) fn malformed(reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "MALFORMED_REQUEST",
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    let message = format!(
        "the request is not a valid protobuf message for this method ({}); check that the \
         client was generated from the same .proto files",
        reason.chars().take(200).collect::<String>()
    );
    Status::with_error_details(tonic::Code::InvalidArgument, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decode failure becomes INVALID_ARGUMENT with an ErrorInfo, never INTERNAL.
    #[test]
    fn malformed_is_invalid_argument() {
        let status = malformed("failed to decode Protobuf message: buffer underflow");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("buffer underflow"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MALFORMED_REQUEST");
    }
}
