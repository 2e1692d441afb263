//! What every REST route (`GET /teams/{id}/export`, `GET /reports/usage.csv`) shares with
//! `/graphql`: the caller is authenticated, counted and charged to the rate limit as one
//! operation (`RestCaller`), and a failure answers the GraphQL error shape with the HTTP status
//! its code implies (`RestError`). Inbound webhooks keep their senders' conventions instead.

use std::net::SocketAddr;

use async_graphql::{ErrorExtensions, ServerError};
use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use crate::{
    domain::{Caller, RequestMeta},
    error::{AppError, Problem},
    graphql::metering,
    http::HttpState,
};

/// The caller of a REST route: authenticated as on `/graphql` (a bearer session token or API
/// key, or `x-api-key`; none is an anonymous caller), counted against its usage and charged
/// one operation to its rate limit.
pub struct RestCaller(pub Caller);

impl FromRequestParts<HttpState> for RestCaller {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, http: &HttpState) -> Result<Self, RestError> {
        let state = &http.state;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
        let principal = state.auth.from_headers(&parts.headers).await?;
        let caller = Caller { principal, meta: RequestMeta::from_headers(&parts.headers, peer) };
        metering::count(state, &caller.principal);
        metering::charge(state, &caller.principal, caller.meta.ip.as_deref(), 0).await?;
        Ok(Self(caller))
    }
}

/// An `AppError` answered as `{"errors":[{"message","extensions":{"code",…}}]}` with the status
/// its code implies; an internal cause is logged (with the request id) and never sent.
#[derive(Debug)]
pub struct RestError(pub AppError);

impl From<AppError> for RestError {
    fn from(err: AppError) -> Self {
        Self(err)
    }
}

/// A bad part of the URL (a query parameter, a path segment): BAD_USER_INPUT whose message
/// and `problems[0].path` name it.
pub fn bad_parameter(parameter: &str, problem: impl Into<String>) -> AppError {
    let problem = problem.into();
    AppError::BadUserInput {
        message: format!("{parameter}: {problem}"),
        problems: vec![Problem::new(parameter, problem)],
    }
}

/// The HTTP status of an error code.
pub fn status(err: &AppError) -> StatusCode {
    match err {
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) => StatusCode::FORBIDDEN,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::BadUserInput { .. } => StatusCode::BAD_REQUEST,
        AppError::Conflict(_) => StatusCode::CONFLICT,
        AppError::RateLimited { .. } | AppError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let err = self.0;
        let status = status(&err);
        let retry_after = match err {
            AppError::RateLimited { retry_after_secs, .. } => retry_after_secs,
            _ => None,
        };
        let extended = err.extend();
        let mut error = ServerError::new(extended.message, None);
        error.extensions = extended.extensions;
        let mut response = (status, axum::Json(serde_json::json!({ "errors": [error] }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_answers_the_status_it_implies() {
        let cases = [
            (AppError::Unauthenticated(String::new()), 401),
            (AppError::Forbidden(String::new()), 403),
            (AppError::NotFound(String::new()), 404),
            (AppError::bad_input(""), 400),
            (AppError::Conflict(String::new()), 409),
            (AppError::RateLimited { message: String::new(), retry_after_secs: Some(3) }, 429),
            (AppError::QuotaExceeded(String::new()), 429),
            (AppError::internal("boom"), 500),
        ];
        for (err, expected) in cases {
            assert_eq!(status(&err).as_u16(), expected, "{}", err.code());
        }
    }
}
