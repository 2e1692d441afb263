//! Every route and the layers every request goes through (docs/architecture.md, "Where a request
//! goes").

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderName, Method, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tower_http::{
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

use super::{HttpState, clerk_webhook, dashboard, error, exports, graphiql, home, ops, transport, usage_csv, ws};
use crate::{error::AppError, graphql, state::AppState};

/// The router serving `state`, with the schema built over it.
pub fn router(state: &AppState) -> Router {
    let schema = graphql::build_schema(&state.config, Some(state.clone()));
    let http = HttpState { state: state.clone(), schema, shared: Arc::default() };
    let config = &state.config;
    Router::new()
        .route("/graphql", get(transport::get).post(transport::post))
        .route("/graphql/ws", get(ws::upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/webhooks/clerk", post(clerk_webhook::receive))
        .route("/teams/{id}/export", get(exports::download))
        .route("/reports/usage.csv", get(usage_csv::download))
        .merge(dashboard::routes())
        .merge(graphiql::routes().merge(home::routes()))
        .with_state(http)
        .layer(DefaultBodyLimit::max(config.limits.body_bytes))
        .layer(middleware::from_fn_with_state(config.request_timeout(), time_limit))
        .layer(CompressionLayer::new())
        .layer(cors(&config.cors_origins))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let id = request.headers().get(ops::REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), ops::observe))
}

/// Stops a request that runs past `ENSEMBLE_REQUEST_TIMEOUT` and answers it in the GraphQL error
/// shape (504, `REQUEST_TIMEOUT`), so that a client reads why rather than an empty answer.
async fn time_limit(State(limit): State<std::time::Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::answer(AppError::TimedOut { after_secs: limit.as_secs() }),
    }
}

/// No origin is allowed unless configured: browsers then only reach the API same-origin.
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<_> = origins.iter().filter_map(|o| o.trim().parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static(ops::REQUEST_ID),
        ])
        .expose_headers([HeaderName::from_static(ops::REQUEST_ID)])
}
