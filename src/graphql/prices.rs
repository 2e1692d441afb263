//! Model prices: `modelPrices` for anyone signed in, `upsertModelPrice` for admins.

use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::model_prices;

use super::caller;
use crate::{error::GqlResultExt, service::prices::NewPrice, state::AppState};

#[derive(Default)]
pub struct PricesQuery;

#[Object]
impl PricesQuery {
    /// What each model costs; `provider/*` prices every model of a provider without its own row.
    async fn model_prices(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ModelPrice>> {
        let state = ctx.data::<AppState>()?;
        let rows = state.runner.prices.list(&caller(ctx)).await.gql()?;
        Ok(rows.into_iter().map(ModelPrice::from).collect())
    }
}

#[derive(Default)]
pub struct PricesMutation;

#[Object]
impl PricesMutation {
    /// Sets a model's price (admins); runs from now on are priced with it.
    async fn upsert_model_price(&self, ctx: &Context<'_>, input: ModelPriceInput) -> async_graphql::Result<ModelPrice> {
        let state = ctx.data::<AppState>()?;
        let price = NewPrice {
            model: input.model,
            input_usd_per_mtok: input.input_usd_per_mtok,
            output_usd_per_mtok: input.output_usd_per_mtok,
            context_window: input.context_window,
        };
        state.runner.prices.upsert(&state.audit, &caller(ctx), price).await.map(ModelPrice::from).gql()
    }
}

#[derive(InputObject)]
pub struct ModelPriceInput {
    /// `provider/model`, or `provider/*`.
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    pub context_window: Option<i64>,
}

/// What a model costs per million tokens.
#[derive(SimpleObject)]
pub struct ModelPrice {
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Most tokens the model takes in one call.
    pub context_window: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

impl From<model_prices::Model> for ModelPrice {
    fn from(p: model_prices::Model) -> Self {
        Self {
            model: p.model,
            input_usd_per_mtok: p.input_usd_per_mtok,
            output_usd_per_mtok: p.output_usd_per_mtok,
            context_window: p.context_window,
            updated_at: p.updated_at,
        }
    }
}
