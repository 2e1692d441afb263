//! Operational endpoints (`/healthz`, `/readyz`, `/metrics`) and the per-request middleware
//! that assigns the request id and records metrics.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    db,
    error::AppError,
    events::Reach,
    http::{HttpState, error},
    service::system,
    state::AppState,
};

pub const REQUEST_ID: &str = "x-request-id";

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the database answers (on D1: the bridge answers `SELECT 1`), runs in WAL mode
/// (SQLite) and is fully migrated; with
/// `REDIS_URL`, `degraded` (still 200: the instance serves) while Redis is unavailable.
pub async fn readyz(State(http): State<HttpState>) -> Response {
    match system::readiness(&http.state.db).await {
        Ok(()) => match http.state.bus.reach() {
            Reach::Local | Reach::Shared => axum::Json(json!({"status": "ready"})).into_response(),
            Reach::Degraded(reason) => axum::Json(json!({"status": "degraded", "reason": reason})).into_response(),
        },
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "reason": reason})))
                .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format; with `ENSEMBLE_METRICS_TOKEN`, only for a request
/// that carries it as a bearer token (otherwise 401 UNAUTHENTICATED in the GraphQL error shape,
/// as every route answers errors: `http::error`).
pub async fn metrics(State(http): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(token) = http.state.config.metrics_token.as_deref()
        && !bearer_is(&headers, token)
    {
        let message = "/metrics needs the metrics token (ENSEMBLE_METRICS_TOKEN) as a bearer token.";
        let mut refused = error::answer(AppError::Unauthenticated(message.into()));
        refused.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"metrics\""));
        return refused;
    }
    let mut body = http.state.metrics.render(db::pool_usage(&http.state.db));
    let statements = http.state.statements.load(std::sync::atomic::Ordering::Relaxed);
    body.push_str(
        "# HELP ensemble_db_statements_total SQL statements run.\n# TYPE ensemble_db_statements_total counter\n",
    );
    body.push_str(&format!("ensemble_db_statements_total {statements}\n"));
    let shared = u8::from(http.state.bus.reach() == Reach::Shared);
    body.push_str("# HELP ensemble_bus_shared 1 while the event bus reaches the other instances over Redis.\n# TYPE ensemble_bus_shared gauge\n");
    body.push_str(&format!("ensemble_bus_shared {shared}\n"));
    body.push_str(
        "# HELP ensemble_runs_in_progress Runs executing on this instance.\n# TYPE ensemble_runs_in_progress gauge\n",
    );
    body.push_str(&format!("ensemble_runs_in_progress {}\n", http.state.runner.in_progress()));
    body.push_str("# HELP ensemble_rate_limited_total Operations refused by the rate limit.\n# TYPE ensemble_rate_limited_total counter\n");
    body.push_str(&format!("ensemble_rate_limited_total {}\n", http.state.rate_limits.refused()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `GET /.well-known/jwks.json`: the dev issuer's public key (404 when Clerk issues tokens).
pub async fn jwks(State(http): State<HttpState>) -> Response {
    match &http.state.auth.dev {
        Some(dev) => axum::Json(dev.jwks.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Keeps a sane `x-request-id` from the client or makes one, echoes it on the response, and
/// counts the request by status and latency.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane_request_id(id))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request.headers_mut().insert(REQUEST_ID, value.clone());
    let method = request.method().to_string();
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, value);
    state.metrics.record_request(&method, response.status().as_u16(), started.elapsed());
    response
}

/// Whether the request's `Authorization: Bearer …` is `token`, compared in constant time (of
/// digests, so that not even the length shows).
fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim());
    given.is_some_and(|given| bool::from(Sha256::digest(given).ct_eq(&Sha256::digest(token))))
}

fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::is_sane_request_id;

    #[test]
    fn request_ids_from_clients_must_be_short_and_plain() {
        assert!(is_sane_request_id("req-42.a_b:c"));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id(&"a".repeat(129)));
        assert!(!is_sane_request_id("a b"));
        assert!(!is_sane_request_id("a\"b"));
    }
}
