//! `GET /reports/usage.csv?from=&to=&groupBy=USER,MODEL`: `usageReport` as a CSV download,
//! authenticated, counted and rate limited as `/graphql` is. Errors answer the GraphQL error
//! shape (`rest::RestError`): 401, 403, 400 naming the bad parameter, 429.

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Deserialize;

use crate::{
    domain::Caller,
    error::AppError,
    http::{
        HttpState,
        rest::{RestCaller, RestError, bad_parameter},
    },
    service::usage_report::{self, Report, UsageGroup},
    state::AppState,
};

/// The query string; an empty value is the same as none.
#[derive(Deserialize)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "groupBy")]
    group_by: Option<String>,
}

/// `GET /reports/usage.csv`: the report as a download named by its first and last day. The
/// caller is authenticated, counted and charged as on `/graphql` (`rest::RestCaller`).
pub async fn download(
    State(http): State<HttpState>,
    RestCaller(caller): RestCaller,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, RestError> {
    let Query(params) = params.map_err(|e| bad_parameter("query", e.body_text()))?;
    let report = report(&http.state, &caller, params).await?;
    let names = usage_report::names(&http.state.db, &report).await?;
    let csv = usage_report::to_csv(&report, &names)?;
    let name = format!("attachment; filename=\"usage-{}-{}.csv\"", report.first_day, report.last_day);
    let headers = [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, name)];
    Ok((headers, csv).into_response())
}

/// The same checks and the same report as `usageReport`, with problems named by parameter.
async fn report(state: &AppState, caller: &Caller, params: Params) -> Result<Report, AppError> {
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
        .map_err(|_| bad_parameter(name, format!("`{value}` is neither an RFC 3339 time nor a YYYY-MM-DD date.")))
}

/// Comma-separated `UsageGroup` names.
fn groups(value: Option<String>) -> Result<Vec<UsageGroup>, AppError> {
    let value = value.unwrap_or_default();
    value
        .split(',')
        .filter(|name| !name.trim().is_empty())
        .map(|name| {
            UsageGroup::parse(name).ok_or_else(|| {
                bad_parameter("groupBy", format!("`{name}` is not a group; use USER, TEAM, API_KEY, MODEL or DAY."))
            })
        })
        .collect()
}

/// A bad range in terms of the URL's parameters rather than the GraphQL argument `range`.
fn in_parameters(err: AppError) -> AppError {
    match err {
        AppError::BadUserInput { problems, message } => {
            let Some(problem) = problems.into_iter().next() else {
                return AppError::BadUserInput { message, problems: Vec::new() };
            };
            let parameter = if problem.path.starts_with("range") { "from" } else { problem.path.as_str() };
            bad_parameter(parameter, problem.message)
        }
        other => other,
    }
}
