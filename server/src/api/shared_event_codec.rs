//! The codec of chatd's live streams (Connect, Subscribe): requests are decoded as by every
//! generated `chat.v1` method, and a [`SharedEvent`] is written as its shared protobuf
//! encoding, made by the first stream that sends it and copied by the others.

use std::{marker::PhantomData, sync::Arc};

use daehwa::{codec::SmallBufferCodec, v1::ServerEvent};
use prost::bytes::BufMut;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};

use crate::session::SharedEvent;

/// Decodes requests `U` as every `chat.v1` method does; encodes shared events by copying
/// their encoding.
pub struct SharedEventCodec<U>(PhantomData<U>);

impl<U> Default for SharedEventCodec<U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<U> Codec for SharedEventCodec<U>
where
    U: prost::Message + Default + Send + 'static,
{
    type Encode = Arc<SharedEvent>;
    type Decode = U;
    type Encoder = SharedEventEncoder;
    type Decoder = <SmallBufferCodec<ServerEvent, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        SharedEventEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SmallBufferCodec::<ServerEvent, U>::default().decoder()
    }
}

/// Writes an event's shared encoding (made by the first stream that sends it).
pub struct SharedEventEncoder;

impl Encoder for SharedEventEncoder {
    type Item = Arc<SharedEvent>;
    type Error = Status;

    fn encode(&mut self, event: Arc<SharedEvent>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(event.encoding());
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        daehwa::codec::buffer_settings()
    }
}
