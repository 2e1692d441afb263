//! `GET /teams/{id}/export`: `exportTeam` as a download.

use axum::{
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    HttpState,
    rest::{RestCaller, RestError, bad_parameter},
};
use crate::service::exports;

/// The query string of the download: `version` picks an older version than the current one.
#[derive(Deserialize)]
pub struct DownloadParams {
    version: Option<String>,
}

/// `GET /teams/{id}/export[?version=N]`: the same document as a download, for the caller the
/// headers name, authenticated, counted and rate limited as `/graphql` is (`RestCaller`).
pub async fn download(
    State(http): State<HttpState>,
    RestCaller(caller): RestCaller,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<DownloadParams>, QueryRejection>,
) -> Result<Response, RestError> {
    let Path(id) = id.map_err(|_| bad_parameter("id", "is not a readable team id"))?;
    let Query(params) = params.map_err(|e| bad_parameter("query", e.body_text()))?;
    let version = match params.version.filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => match text.parse::<i32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => return Err(bad_parameter("version", format!("`{text}` is not a version number (1, 2, …)")).into()),
        },
    };
    let document = exports::export(&http.state.db, &caller, &id, version).await?;
    let disposition = format!("attachment; filename=\"{}.ensemble.json\"", file_name(&id));
    Ok(([(header::CONTENT_DISPOSITION, disposition)], axum::Json(document)).into_response())
}

/// The id as a safe file name: only letters, digits, `-` and `_` (ids are made of those).
fn file_name(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).collect()
}
