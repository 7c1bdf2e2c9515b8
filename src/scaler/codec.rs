//! The gRPC codec: prost, with buffers sized for our messages.
//!
//! tonic's default codec gives every call an 8 KiB encode buffer, and a
//! server-streaming call keeps it for as long as the stream is open. KEDA
//! holds one `StreamIsActive` open per ScaledObject, and every message of
//! this API is a few hundred bytes at most, so at 10,000 ScaledObjects the
//! default buffers alone held about 80 MiB. Buffers still grow on demand.
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial buffer per call: a trigger's metadata map fits.
const BUFFER_SIZE: usize = 512;
/// tonic's default: how much a stream encodes before yielding a frame.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with buffers of 512 bytes (`BUFFER_SIZE`); the generated client and
/// server use it (see build.rs).
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}
