//! Export and import: `exportTeam`, `importTeam`, and `GET /teams/{id}/export`.

use crate::graphql::scalars::Json;
use async_graphql::{Context, ID, Object, SimpleObject};
use axum::{
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{caller, teams::Team};
use crate::{
    error::{AppError, GqlResultExt},
    service::{audit::Caller, exports},
    state::{AppState, HttpState, RequestMeta},
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
        let imported = exports::import(&state.db, &caller(ctx), &document, name).await.gql()?;
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

/// `GET /teams/{id}/export`: the same document as a download, for the bearer of the headers.
pub async fn download(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let failure = |err: AppError| {
        let status = match err {
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            crate::error::INTERNAL_MESSAGE.to_string()
        } else {
            err.to_string()
        };
        (status, axum::Json(serde_json::json!({"error": {"code": err.code(), "message": message}}))).into_response()
    };
    let principal = match http.state.auth.from_headers(&headers).await {
        Ok(principal) => principal,
        Err(err) => return failure(err),
    };
    let caller = Caller { principal, meta: RequestMeta::from_headers(&headers, Some(peer)) };
    match exports::export(&http.state.db, &caller, &id, None).await {
        Ok(document) => {
            let disposition = format!("attachment; filename=\"{id}.ensemble.json\"");
            ([(header::CONTENT_DISPOSITION, disposition)], axum::Json(document)).into_response()
        }
        Err(err) => failure(err),
    }
}
