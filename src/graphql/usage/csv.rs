//! `GET /reports/usage.csv?from=&to=&groupBy=USER,MODEL`: `usageReport` as a CSV download,
//! authenticated, counted and rate limited as `/graphql` is. Errors answer a GraphQL-style JSON
//! body: 401 for missing or bad credentials, 403, 400 naming the bad parameter, 429.

use async_graphql::{ErrorExtensions, ServerError};
use axum::{
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Deserialize;

use crate::{
    error::{AppError, Problem},
    graphql::metering,
    service::{
        audit::Caller,
        usage_report::{self, Report, UsageGroup},
    },
    state::{AppState, HttpState, RequestMeta},
};

/// The query string; an empty value is the same as none.
#[derive(Deserialize)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "groupBy")]
    group_by: Option<String>,
}

/// `GET /reports/usage.csv`: the report as a download named by its first and last day.
pub async fn download(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let caller = match http.state.auth.from_headers(&headers).await {
        Ok(principal) => Caller { principal, meta: RequestMeta::from_headers(&headers, Some(peer)) },
        Err(err) => return failure(err),
    };
    match report(&http.state, &caller, params).await {
        Ok(report) => {
            let name = format!("attachment; filename=\"usage-{}-{}.csv\"", report.first_day, report.last_day);
            let headers =
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, name)];
            (headers, usage_report::to_csv(&report)).into_response()
        }
        Err(err) => failure(err),
    }
}

/// What `/graphql` does for `usageReport`: count the request and charge it to the rate limit,
/// then the same checks and the same report.
async fn report(state: &AppState, caller: &Caller, params: Params) -> Result<Report, AppError> {
    metering::count(state, &caller.principal);
    metering::charge(state, &caller.principal, caller.meta.ip.as_deref(), 0).await?;
    let visibility = usage_report::visibility(caller)?;
    let from = time("from", params.from)?;
    let to = time("to", params.to)?;
    let group_by = groups(params.group_by)?;
    usage_report::report(&state.db, &visibility, from, to, group_by).await.map_err(in_parameters)
}

/// An RFC 3339 time, or a `YYYY-MM-DD` date meaning its midnight (UTC).
fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, AppError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(&value) {
        return Ok(Some(time.to_utc()));
    }
    NaiveDate::parse_from_str(&value, "%Y-%m-%d")
        .map(|day| Some(day.and_time(NaiveTime::MIN).and_utc()))
        .map_err(|_| bad(name, format!("`{value}` is neither an RFC 3339 time nor a YYYY-MM-DD date.")))
}

/// Comma-separated `UsageGroup` names.
fn groups(value: Option<String>) -> Result<Vec<UsageGroup>, AppError> {
    let value = value.unwrap_or_default();
    value
        .split(',')
        .filter(|name| !name.trim().is_empty())
        .map(|name| {
            UsageGroup::parse(name).ok_or_else(|| {
                bad("groupBy", format!("`{name}` is not a group; use USER, TEAM, API_KEY, MODEL or DAY."))
            })
        })
        .collect()
}

fn bad(parameter: &str, problem: String) -> AppError {
    AppError::BadUserInput {
        message: format!("{parameter}: {problem}"),
        problems: vec![Problem::new(parameter, problem)],
    }
}

/// A bad range in terms of the URL's parameters rather than the GraphQL argument `range`.
fn in_parameters(err: AppError) -> AppError {
    match err {
        AppError::BadUserInput { problems, message } => {
            let Some(problem) = problems.into_iter().next() else {
                return AppError::BadUserInput { message, problems: Vec::new() };
            };
            let parameter = if problem.path.starts_with("range") { "from" } else { problem.path.as_str() };
            bad(parameter, problem.message)
        }
        other => other,
    }
}

/// `{"errors": [{"message", "extensions": {"code", …}}]}` with the status the code calls for.
fn failure(err: AppError) -> Response {
    let status = match err {
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) => StatusCode::FORBIDDEN,
        AppError::BadUserInput { .. } => StatusCode::BAD_REQUEST,
        AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
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
