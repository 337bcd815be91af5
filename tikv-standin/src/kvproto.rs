//! The kvproto messages and the PD and TiKV service traits, generated at build time from the
//! `.proto` files of the `tikv-client` package (see `build.rs`). Only the server side is
//! generated; comments are dropped.
#![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]

macro_rules! kvproto_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
            pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
            }
        )*
    };
}

kvproto_modules!(
    coprocessor,
    deadlock,
    disaggregated,
    disk_usage,
    encryptionpb,
    eraftpb,
    errorpb,
    kvrpcpb,
    metapb,
    mpp,
    pdpb,
    raft_serverpb,
    replication_modepb,
    resource_manager,
    tikvpb,
    tracepb,
);
