//! Serving: one tonic server per listener, stopped by the stand-in's stop signal, with a layer
//! that names the call in every `UNIMPLEMENTED` answer.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

/// Serves `routes` on `incoming` until the stop signal.
pub(crate) fn serve(incoming: TcpListenerStream, routes: Routes, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(NameUnimplemented))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("TiKV stand-in: server failed: {e}");
        }
    });
}

/// Rewrites the message of an `UNIMPLEMENTED` status to name the gRPC method, so a client that
/// calls something the stand-in lacks fails with a clear reason.
#[derive(Debug, Clone)]
struct NameUnimplemented<S>(S);

impl<S, B> tower::Service<http::Request<B>> for NameUnimplemented<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let unimplemented = response
                .headers()
                .get("grpc-status")
                .is_some_and(|status| status == "12");
            if unimplemented {
                let message = format!("the TiKV stand-in does not implement {path}");
                if let Ok(value) = http::HeaderValue::from_str(&message) {
                    response.headers_mut().insert("grpc-message", value);
                }
            }
            Ok(response)
        })
    }
}
