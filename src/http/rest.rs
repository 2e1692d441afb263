//! What every REST route (`GET /teams/{id}/export`, `GET /reports/usage.csv`) shares with
//! `/graphql`: the caller is authenticated, counted and charged to the rate limit as one
//! operation (`RestCaller`), and a failure answers the GraphQL error shape with the HTTP status
//! its code implies (`RestError`, through `http::error`). Inbound webhooks keep their senders'
//! conventions instead.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
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

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        super::error::answer(self.0)
    }
}
