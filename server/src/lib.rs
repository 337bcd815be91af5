//! # Daehwa chat server
//!
//! Every `chat.v1` service in one process (or the roles it is given, in a cluster), over
//! pluggable backends. The binary (`chatd`)
//! only parses flags, binds the listener and passes a shutdown signal to [`run`]; tests call
//! [`run`] directly on a port-0 listener.
//!
//! ## Layout
//! - [`config`]: flags, `DAEHWA_*` environment and TOML, validated once.
//! - [`error`]: the one error type and its mapping to gRPC statuses.
//! - [`ids`], [`snowflake`]: typed ids, conversation ids, time-ordered message ids.
//! - [`auth`]: passwords, tokens, and the layer that authenticates every RPC.
//! - [`backend`]: one trait per concern (directory, message store, presence store, bus,
//!   registry, push) and their embedded and distributed implementations.
//! - [`service`]: domain logic, free of tonic types, and delivery across servers.
//! - [`session`]: live streams with bounded outboxes, and local fan-out.
//! - [`api`]: thin tonic adapters from RPCs to services.
//! - [`metrics`]: Prometheus metrics.
//! - [`app`]: wiring it all together and the shutdown sequence.

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod service;
pub mod session;
pub mod snowflake;

pub use app::run;
pub use config::Config;
