//! The web client at `/`: one page, one script, one stylesheet, embedded in the binary so
//! that users need no build step.
//!
//! Sources live in `gateway/web/` (TypeScript, a gRPC-web client generated from `proto/`);
//! `gateway/web/build.sh` bundles them into `gateway/web/dist/`, which is committed and
//! included here. The page talks to the gateway it came from: gRPC-web (binary) for unary and
//! server-streaming RPCs, and one WebSocket (`/v1/ws`) for the live session.
//!
//! Routes: `GET /` (the page, revalidated on every load) and `GET /assets/{app.js,app.css}`
//! (cached briefly). Anything else falls through to the gRPC routes.

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

const INDEX_HTML: &str = include_str!("../web/dist/index.html");
const APP_JS: &str = include_str!("../web/dist/app.js");
const APP_CSS: &str = include_str!("../web/dist/app.css");

/// How long browsers may reuse the script and stylesheet without asking again.
const ASSET_CACHE: &str = "public, max-age=300";

/// What the page may load and connect to: only its own origin (and WebSockets to it).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The web client's routes, to merge before the gRPC fallback.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    let mut response = respond(INDEX_HTML, "text/html; charset=utf-8", "no-cache");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => respond(APP_JS, "text/javascript; charset=utf-8", ASSET_CACHE),
        "app.css" => respond(APP_CSS, "text/css; charset=utf-8", ASSET_CACHE),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn respond(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        routes::<()>()
            .oneshot(
                http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    #[tokio::test]
    async fn serves_page_and_assets_with_types_and_cache_headers() {
        let page = get("/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            header_of(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&page, header::CACHE_CONTROL), "no-cache");
        assert!(INDEX_HTML.contains("/assets/app.js") && INDEX_HTML.contains("/assets/app.css"));

        let script = get("/assets/app.js").await;
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(
            header_of(&script, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header_of(&script, header::CACHE_CONTROL), ASSET_CACHE);

        let style = get("/assets/app.css").await;
        assert_eq!(
            header_of(&style, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );

        assert_eq!(get("/assets/nope.js").await.status(), StatusCode::NOT_FOUND);
    }
}
