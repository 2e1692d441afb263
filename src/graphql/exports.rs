//! Export and import: `exportTeam`, `importTeam`, and `GET /teams/{id}/export`.

use crate::graphql::scalars::Json;
use async_graphql::{Context, ID, Object, SimpleObject};
use axum::{
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    answers::warn_missing_keys,
    caller,
    rest::{RestCaller, RestError, bad_parameter},
    teams::Team,
};
use crate::{
    error::GqlResultExt,
    service::exports,
    state::{AppState, HttpState},
};

#[derive(Default)]
pub struct ExportsQuery;

#[Object]
impl ExportsQuery {
    /// A self-contained document of the team (current version, or `version`): no secrets,
    /// members or share tokens. `importTeam` reads it back.
    async fn export_team(&self, ctx: &Context<'_>, id: ID, version: Option<i32>) -> async_graphql::Result<Json<Value>> {
        let state = ctx.data::<AppState>()?;
        exports::export(&state.db, &caller(ctx), &id, version).await.map(Json).gql()
    }
}

#[derive(Default)]
pub struct ExportsMutation;

#[Object]
impl ExportsMutation {
    /// Makes a new team (fresh ids, you as owner) from an `exportTeam` document.
    async fn import_team(
        &self,
        ctx: &Context<'_>,
        document: Json<Value>,
        name: Option<String>,
    ) -> async_graphql::Result<ImportTeamResult> {
        let state = ctx.data::<AppState>()?;
        let imported =
            exports::import(&state.db, &state.config.runs.providers, &caller(ctx), &document, name).await.gql()?;
        warn_missing_keys(ctx, &imported.team.spec);
        Ok(ImportTeamResult { team: Team(imported.team), warnings: imported.warnings })
    }
}

/// The imported team, and anything about the document worth knowing.
#[derive(SimpleObject)]
pub struct ImportTeamResult {
    pub team: Team,
    /// E.g. a document of an older format revision.
    pub warnings: Vec<String>,
}

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
