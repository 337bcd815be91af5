//! Compiles `proto/chat/v1/*.proto` into Rust (prost messages, tonic clients and servers) and
//! writes the file descriptor set that the server's reflection service publishes.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/chat/v1/common.proto",
    "proto/chat/v1/auth.proto",
    "proto/chat/v1/user.proto",
    "proto/chat/v1/group.proto",
    "proto/chat/v1/chat.proto",
    "proto/chat/v1/presence.proto",
    "proto/chat/v1/discovery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    // protoc comes from the protoc-bin-vendored crate: no system package needed.
    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // ChatService has an RPC named Connect, which would clash with the generated
    // `XxxClient::connect(url)` constructor: clients are built from a `Channel` instead.
    // Every method uses `daehwa::codec::SmallBufferCodec`: tonic's prost codec with 1 KiB
    // instead of 8 KiB buffers per RPC (a device's Connect stream lives for hours).
    tonic_prost_build::configure()
        .build_transport(false)
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("chat_v1_descriptor.bin"))
        .compile_with_config(prost_config, PROTOS, &["proto"])?;
    Ok(())
}
