//! Model prices: seeded with public list prices, changed by admins. A model without a row of
//! its own takes its provider's `provider/*` row; a model with neither is free (and says so).

use std::{collections::HashMap, sync::Arc};

use chrono::{SubsecRound, Utc};
use entity::model_prices;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, NotSet, QueryFilter, QueryOrder, QueryTrait, Set,
    sea_query::OnConflict,
};
use serde_json::json;

use super::audit::{AuditChain, Audited, Entry, actions};
use crate::{
    auth::guard::{admin, signed_in},
    cache::{Caches, ModelName},
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, Invalidation},
    error::{AppError, Problem},
    orchestrator::executor::Price,
};

/// Prices by model, read through the cache; `upsertModelPrice` clears it at once.
pub struct PriceBook {
    db: DatabaseConnection,
    caches: Arc<Caches>,
}

impl PriceBook {
    pub fn new(db: DatabaseConnection, caches: Arc<Caches>) -> Self {
        Self { db, caches }
    }

    /// Loads every price row into the cache; answers how many.
    pub async fn prefetch(&self) -> Result<usize, AppError> {
        let rows = model_prices::Entity::find().all(&self.db).await?;
        for row in &rows {
            self.caches.model_prices.insert(ModelName(row.model.clone()), Some(price(row))).await;
        }
        Ok(rows.len())
    }

    /// The price of each of `models` that has one.
    pub async fn for_models<'a>(
        &self,
        models: impl Iterator<Item = &'a str>,
    ) -> Result<HashMap<String, Price>, AppError> {
        let mut prices = HashMap::new();
        for model in models {
            if let Some(price) = self.get(model).await? {
                prices.insert(model.to_string(), price);
            }
        }
        Ok(prices)
    }

    async fn get(&self, model: &str) -> Result<Option<Price>, AppError> {
        let load = async {
            let mut row = model_prices::Entity::find_by_id(model).one(&self.db).await?;
            if row.is_none()
                && let Some((provider, _)) = model.split_once('/')
            {
                row = model_prices::Entity::find_by_id(format!("{provider}/*")).one(&self.db).await?;
            }
            Ok(row.as_ref().map(price))
        };
        self.caches.model_prices.get_or_load(ModelName(model.to_string()), load).await
    }

    /// Every price, by model name, for anyone signed in.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<model_prices::Model>, AppError> {
        signed_in(caller)?;
        Ok(model_prices::Entity::find().order_by_asc(model_prices::Column::Model).all(&self.db).await?)
    }

    /// Sets a model's price (admins only; audited): a new row, or the row read replaced as
    /// long as no other change landed since (`updated_at` as read). The answer is the row
    /// written (`RETURNING`).
    pub async fn upsert(
        &self,
        audit: &AuditChain,
        caller: &Caller,
        price: NewPrice,
    ) -> Result<model_prices::Model, AppError> {
        admin(caller)?;
        check(&price)?;
        let ((), results) = audit
            .write(
                caller,
                || async {
                    let before = model_prices::Entity::find_by_id(&price.model).one(&self.db).await?;
                    let batch = plan_upsert(audit.writer().backend(), &price, before.as_ref());
                    let changes = json!({
                        "model": price.model,
                        "inputUsdPerMtok": {"from": before.as_ref().map(|b| b.input_usd_per_mtok), "to": price.input_usd_per_mtok},
                        "outputUsdPerMtok": {"from": before.as_ref().map(|b| b.output_usd_per_mtok), "to": price.output_usd_per_mtok},
                        "contextWindow": {"from": before.as_ref().and_then(|b| b.context_window), "to": price.context_window},
                    });
                    let entry =
                        Entry::new(actions::MODEL_PRICE_UPSERT, "model_price", price.model.clone()).changes(changes);
                    Ok(Audited { batch, entry, answer: () })
                },
                // Another admin set it first: read it again, so the audit row's `from` is the
                // price replaced.
                |_, _| OnGuard::Retry,
            )
            .await?;
        self.caches.invalidate(Invalidation::PricesChanged).await;
        results.first().ok_or_else(|| AppError::internal("the price's write answered nothing"))?.one()
    }
}

/// The guard of a price's write: a row made, or the row read changed, since it was read.
const PRICE_CHANGED: &str = "price_changed";

/// `price` as a new row (`ON CONFLICT DO NOTHING`) or over the row `before`, guarded on its
/// `updated_at`; either answers the row written.
fn plan_upsert(backend: DbBackend, price: &NewPrice, before: Option<&model_prices::Model>) -> Batch {
    let row = model_prices::ActiveModel {
        model: Set(price.model.clone()),
        input_usd_per_mtok: Set(price.input_usd_per_mtok),
        output_usd_per_mtok: Set(price.output_usd_per_mtok),
        context_window: Set(price.context_window),
        updated_at: Set(Utc::now().trunc_subsecs(6)),
    };
    let batch = Batch::new(backend);
    let batch = match before {
        None => {
            let mut insert = model_prices::Entity::insert(row)
                .on_conflict(OnConflict::column(model_prices::Column::Model).do_nothing().to_owned())
                .into_query();
            batch.write_returning(insert.returning_all())
        }
        Some(before) => {
            let mut update = model_prices::Entity::update_many()
                .set(model_prices::ActiveModel { model: NotSet, ..row })
                .filter(model_prices::Column::Model.eq(&before.model))
                .filter(model_prices::Column::UpdatedAt.eq(before.updated_at))
                .into_query();
            batch.write_returning(update.returning_all())
        }
    };
    batch.guard(Expect::One, PRICE_CHANGED)
}

fn price(row: &model_prices::Model) -> Price {
    Price { input_usd_per_mtok: row.input_usd_per_mtok, output_usd_per_mtok: row.output_usd_per_mtok }
}

pub struct NewPrice {
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    pub context_window: Option<i64>,
}

fn check(price: &NewPrice) -> Result<(), AppError> {
    let mut problems = Vec::new();
    match price.model.split_once('/') {
        Some((provider, name)) if !provider.is_empty() && !name.is_empty() && price.model.len() <= 200 => {}
        _ => problems.push(Problem::new("model", "must be `provider/model` or `provider/*`")),
    }
    for (path, usd) in [("inputUsdPerMtok", price.input_usd_per_mtok), ("outputUsdPerMtok", price.output_usd_per_mtok)]
    {
        if !(usd.is_finite() && (0.0..=100_000.0).contains(&usd)) {
            problems.push(Problem::new(path, "must be between 0 and 100000 US dollars"));
        }
    }
    if price.context_window.is_some_and(|w| w < 1) {
        problems.push(Problem::new("contextWindow", "must be at least 1 token"));
    }
    AppError::refuse(problems)
}
