//! Thin tonic adapters, one per service: decode the request, find the caller, call the
//! domain service, encode the answer. No business rules live here.

pub mod auth;
pub mod chat;
pub mod convert;
pub mod discovery;
pub mod gateway;
pub mod group;
pub mod live_routes;
pub mod presence;
pub mod shared_event_codec;
pub mod user;

use std::sync::Arc;

use tonic::{Response, Status};

use crate::{error::Error, metrics::Metrics};

/// Turns a service result into a tonic reply, counting errors by code.
pub(crate) fn reply<T>(metrics: &Metrics, result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| status(metrics, e))
}

/// Converts an error to a status, counting it.
pub(crate) fn status(metrics: &Metrics, error: Error) -> Status {
    metrics.count_error(error.code());
    error.into_status()
}

/// What every adapter needs besides its service.
#[derive(Clone)]
pub struct ApiContext {
    pub metrics: Arc<Metrics>,
}
