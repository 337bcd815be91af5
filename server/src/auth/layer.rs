//! The tower layer in front of every RPC. It authenticates all but the public ones (SignUp,
//! Login, Refresh, health and reflection): on success it puts an [`AuthContext`] in the
//! request's extensions, where handlers find it with [`caller`]; on failure it answers
//! `UNAUTHENTICATED` without calling the service. It also reports requests refused for their
//! size as `RESOURCE_EXHAUSTED`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Request, Status, body::Body};
use tower::{Layer, Service};

use super::{AuthContext, Authenticator};
use crate::metrics::Metrics;

/// RPC paths (or path prefixes ending in '/') callable without a token.
const PUBLIC: &[&str] = &[
    "/chat.v1.AuthService/SignUp",
    "/chat.v1.AuthService/Login",
    "/chat.v1.AuthService/Refresh",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

fn is_public(path: &str) -> bool {
    PUBLIC.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        }
    })
}

/// The caller of an authenticated RPC.
pub fn caller<T>(request: &Request<T>) -> Result<AuthContext, Status> {
    request
        .extensions()
        .get::<AuthContext>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))
}

/// Adds authentication to a tonic server.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    /// Authenticates with `auth`; refusals are counted in `metrics`.
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { auth, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<http::Request<B>> for AuthMiddleware<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let public = is_public(request.uri().path());
        let auth = self.auth.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            if !public {
                let header = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match auth.authenticate(header).await {
                    Ok(context) => {
                        request.extensions_mut().insert(context);
                    }
                    Err(error) => {
                        metrics.count_error(error.code());
                        return Ok(error.into_status().into_http());
                    }
                }
            }
            let mut response = inner.call(request).await?;
            size_limit_is_resource_exhausted(&mut response);
            Ok(response)
        })
    }
}

/// tonic refuses a request above the size limit with OUT_OF_RANGE before any handler runs;
/// the API promises RESOURCE_EXHAUSTED for size limits, so trailers-only answers (unary
/// calls) are relabelled here. Streams close themselves with RESOURCE_EXHAUSTED.
fn size_limit_is_resource_exhausted(response: &mut http::Response<Body>) {
    let out_of_range = http::HeaderValue::from_static("11");
    if response.headers().get("grpc-status") == Some(&out_of_range) {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_the_public_rpcs_skip_authentication() {
        assert!(is_public("/chat.v1.AuthService/Login"));
        assert!(is_public(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_public("/chat.v1.AuthService/Logout"));
        assert!(!is_public("/chat.v1.AuthService/LoginX"));
        assert!(!is_public("/chat.v1.ChatService/Connect"));
    }
}
