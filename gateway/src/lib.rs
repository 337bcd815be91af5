//! # Daehwa gateway
//!
//! Will bridge browsers to the chat servers (gRPC-web, WebSocket at `/v1/ws`, long polling at
//! `/v1/poll`) and serve the web client. Empty for now: the one-machine server speaks gRPC
//! only; the gateway issue builds this crate.
