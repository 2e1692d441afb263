//! Export and import: `exportTeam` and `importTeam` (the download is `http::exports`).

use async_graphql::{Context, ID, Object, SimpleObject};
use serde_json::Value;

use super::{answers::warn_missing_keys, caller, teams::Team};
use crate::{error::GqlResultExt, graphql::scalars::Json, service::exports, state::AppState};

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
            exports::import(&state.db, &state.audit, &state.config.runs.providers, &caller(ctx), &document, name)
                .await
                .gql()?;
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
