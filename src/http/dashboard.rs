//! The monitoring dashboard: plain HTML, CSS and ES modules embedded in the binary and served at
//! `/dashboard` under a strict Content-Security-Policy. The page is a client of the public API.

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// Scripts, styles and connections only from this server (websockets included); no inline code,
/// no frames, no forms posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file, by its path under `/dashboard/`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset { path: $path, content_type: $content_type, body: include_str!(concat!("../../dashboard/", $path)) }
    };
}

const INDEX: Asset = asset!("index.html", HTML);

const ASSETS: &[Asset] = &[
    asset!("dashboard.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("charts.js", JS),
    asset!("ui.js", JS),
    asset!("pages/agents.js", JS),
    asset!("pages/audit.js", JS),
    asset!("pages/errors.js", JS),
    asset!("pages/insights.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/performance.js", JS),
    asset!("pages/run.js", JS),
    asset!("pages/signin.js", JS),
    asset!("pages/teams.js", JS),
    asset!("pages/usage.js", JS),
];

/// `GET /dashboard` (and `/dashboard/`) for the page, `GET /dashboard/<file>` for its files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/{*path}", get(file))
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn file(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.path == path) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "No such dashboard file.").into_response(),
    }
}

/// The file with its type and the security headers; `no-cache` so that a new binary's files
/// are picked up at once (they are small).
fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}
