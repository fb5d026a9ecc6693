//! The protobuf codec of every generated service: prost's, except that a request whose
//! bytes do not decode is INVALID_ARGUMENT with ErrorInfo and BadRequest, like any other
//! bad input, rather than prost's bare INTERNAL, and that each call's buffers start small.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::error::Error;

/// The field a malformed message is reported under: no single field is at fault.
const MESSAGE_FIELD: &str = "(message)";

/// Each call has one buffer per direction, and a stream keeps both for its whole life:
/// tonic's default of 8 KiB each made 10,000 idle KeepAlive streams hold 160 MiB for
/// messages that are nearly all under 200 bytes. A larger message grows its buffer as
/// needed; the yield threshold stays tonic's.
fn buffers() -> BufferSettings {
    BufferSettings::new(512, 32 * 1024)
}

pub struct BatonCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for BatonCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BatonCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BatonDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BatonDecoder(ProstCodec::<T, U>::raw_decoder(buffers()))
    }
}

pub struct BatonDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for BatonDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Error::invalid(MESSAGE_FIELD, format!("is not a valid protobuf message: {}", status.message())).into()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
