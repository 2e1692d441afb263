//! API keys: `apiKeys`, `createApiKey`, `rotateApiKey`, `revokeApiKey`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};
use entity::api_keys as rows;

use super::{caller, connection};
use crate::{
    domain::Scope,
    error::GqlResultExt,
    service::{
        api_keys::{self, NewKey, WithSecret},
        page::PageRequest,
    },
    state::AppState,
};

#[derive(Default)]
pub struct ApiKeysQuery;

#[Object]
impl ApiKeysQuery {
    /// Your API keys, newest first. Secrets are never shown again after creation.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ApiKey>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = api_keys::list(&state.db, &caller(ctx), &page).await.gql()?;
        Ok(connection(&page, rows, |k| k.id.clone(), ApiKey::from))
    }
}

#[derive(Default)]
pub struct ApiKeysMutation;

#[Object]
impl ApiKeysMutation {
    /// Makes a key; `secret` is in the answer this once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> async_graphql::Result<CreatedApiKey> {
        let state = ctx.data::<AppState>()?;
        let new = NewKey {
            name: input.name,
            scopes: input.scopes,
            team_id: input.team_id.map(|id| id.0),
            expires_at: input.expires_at,
            daily_token_budget: input.daily_token_budget,
            daily_cost_budget_usd: input.daily_cost_budget_usd,
        };
        api_keys::create(&state.db, &state.audit, &state.caches, &caller(ctx), new).await.map(CreatedApiKey::from).gql()
    }

    /// A new secret for the key; the old one keeps working for `graceSeconds` (0 to 7 days).
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = 3600)] grace_seconds: i32,
    ) -> async_graphql::Result<CreatedApiKey> {
        let state = ctx.data::<AppState>()?;
        api_keys::rotate(&state.db, &state.audit, &state.caches, &caller(ctx), &id, grace_seconds.into())
            .await
            .map(CreatedApiKey::from)
            .gql()
    }

    /// Revokes the key; it stops working on the next request.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ApiKey> {
        let state = ctx.data::<AppState>()?;
        api_keys::revoke(&state.db, &state.audit, &state.caches, &caller(ctx), &id).await.map(ApiKey::from).gql()
    }
}

#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// 1 to 100 characters, for you to recognise the key.
    pub name: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Restricts the key to one team.
    pub team_id: Option<ID>,
    /// When the key stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Tokens the key's runs may use per UTC day (no limit of its own when absent).
    pub daily_token_budget: Option<i64>,
    /// US dollars the key's runs may spend per UTC day.
    pub daily_cost_budget_usd: Option<f64>,
}

/// A key with its secret, answered once.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// `ens_<prefix>_<secret>`: send it as `Authorization: Bearer …` or `x-api-key`.
    pub secret: String,
    pub api_key: ApiKey,
}

impl From<WithSecret> for CreatedApiKey {
    fn from(made: WithSecret) -> Self {
        Self { secret: made.secret, api_key: made.key.into() }
    }
}

/// An API key (never its secret).
#[derive(SimpleObject)]
pub struct ApiKey {
    pub id: ID,
    pub name: String,
    /// The public start of the key, `ens_<prefix>_`.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// The one team the key may act on, if restricted.
    pub team_id: Option<ID>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still works.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Tokens the key's runs may use per UTC day.
    pub daily_token_budget: Option<i64>,
    /// US dollars the key's runs may spend per UTC day.
    pub daily_cost_budget_usd: Option<f64>,
}

impl From<rows::Model> for ApiKey {
    fn from(key: rows::Model) -> Self {
        let scopes = serde_json::from_value::<Vec<String>>(key.scopes).unwrap_or_default();
        Self {
            id: ID(key.id),
            name: key.name,
            prefix: format!("ens_{}_", key.prefix),
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            team_id: key.team_id.map(ID),
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
            previous_secret_expires_at: key.previous_expires_at,
            created_at: key.created_at,
            daily_token_budget: key.daily_token_budget,
            daily_cost_budget_usd: key.daily_cost_budget_usd,
        }
    }
}
