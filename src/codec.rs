//! The protobuf codec every generated `chat.v1` client and server uses: tonic's prost codec
//! with small per-RPC buffers.
//!
//! tonic allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every RPC and keeps
//! them for the RPC's life. A chat device holds one `Connect` stream open for hours, so those
//! 16 KiB are paid per connected device, while a chat frame is a few hundred bytes. Here both
//! start at [`INITIAL_BUFFER_BYTES`] and grow on demand for a larger message (up to the
//! server's message size limit), so an idle session costs ~14 KiB less heap; a message over
//! 1 KiB costs a few more reallocations.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The starting size of each RPC's encode and decode buffer: room for a typical chat frame.
pub const INITIAL_BUFFER_BYTES: usize = 1024;
/// How many bytes of ready stream messages are batched into one write (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with [`INITIAL_BUFFER_BYTES`] buffers; named by `build.rs` as the codec of
/// every generated method.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The buffer settings of every `chat.v1` RPC: [`INITIAL_BUFFER_BYTES`] to start with, and
/// tonic's default batching of ready stream messages. Public for codecs written beside this
/// one (the server's pre-encoded live events).
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
