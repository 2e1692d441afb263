//! The names shown beside ids on rows that only keep ids (usage rows, audit rows): a user's
//! display name (or email), a team's or an API key's name, each read through the request's
//! DataLoaders so a page of rows costs one query per kind of name.

use async_graphql::{Context, SelectionField};

use super::loaders::Loaders;
use crate::error::GqlResultExt;

/// A user's display name, else their email; none for a deleted user or one without either.
pub async fn user(ctx: &Context<'_>, id: Option<&str>) -> async_graphql::Result<Option<String>> {
    let Some(id) = id else { return Ok(None) };
    let user = ctx.data::<Loaders>()?.users.load_one(id.to_string()).await.gql()?;
    Ok(user.filter(|u| u.deleted_at.is_none()).and_then(|u| u.display_name.or(u.email)))
}

/// A team's name; none for a deleted team.
pub async fn team(ctx: &Context<'_>, id: Option<&str>) -> async_graphql::Result<Option<String>> {
    let Some(id) = id else { return Ok(None) };
    ctx.data::<Loaders>()?.team_names.load_one(id.to_string()).await.gql()
}

/// An API key's name, revoked or not.
pub async fn api_key(ctx: &Context<'_>, id: Option<&str>) -> async_graphql::Result<Option<String>> {
    let Some(id) = id else { return Ok(None) };
    ctx.data::<Loaders>()?.api_key_names.load_one(id.to_string()).await.gql()
}

/// The ids named by one page of rows.
#[derive(Default)]
pub struct Ids {
    pub users: Vec<String>,
    pub teams: Vec<String>,
    pub api_keys: Vec<String>,
}

/// Loads up front the names that `rows` (the selections of the page's rows) ask for, one
/// query per kind, so the rows answer from the loaders' cache however they are scheduled.
/// `user_field` is the field that names a user (`userName`, `actorName`).
pub async fn preload(
    ctx: &Context<'_>,
    rows: &[SelectionField<'_>],
    user_field: &str,
    ids: Ids,
) -> async_graphql::Result<()> {
    let selects = |name: &str| rows.iter().any(|row| row.selection_set().any(|field| field.name() == name));
    let loaders = ctx.data::<Loaders>()?;
    if selects(user_field) && !ids.users.is_empty() {
        loaders.users.load_many(ids.users).await.gql()?;
    }
    if selects("teamName") && !ids.teams.is_empty() {
        loaders.team_names.load_many(ids.teams).await.gql()?;
    }
    if selects("apiKeyName") && !ids.api_keys.is_empty() {
        loaders.api_key_names.load_many(ids.api_keys).await.gql()?;
    }
    Ok(())
}
