//! Usage: every request counts against its principal in `usage_daily`. Counts gather in
//! memory and are added to the table in one batch every few seconds (and at
//! shutdown), so a request costs no write of its own. Runs add their tokens, cost and count
//! in the batch that finishes them, so budgets see them at once.

use std::{collections::HashMap, sync::Mutex};

use chrono::Utc;
use entity::usage_daily;
use sea_orm::{
    ActiveModelTrait, EntityTrait, QueryTrait,
    sea_query::{Expr, OnConflict},
};

use crate::{
    db::{
        self,
        batch::{Batch, BatchWriter, OnGuard, rows_per_insert},
    },
    domain::Principal,
    error::AppError,
};

/// The primary key of `usage_daily`, which every upsert conflicts on.
const KEY_COLUMNS: [usage_daily::Column; 5] = [
    usage_daily::Column::Day,
    usage_daily::Column::UserId,
    usage_daily::Column::TeamId,
    usage_daily::Column::ApiKeyId,
    usage_daily::Column::Model,
];

/// Pending keys past this many flush early, so memory stays bounded.
const MAX_PENDING: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct UsageKey {
    day: String,
    user_id: String,
    team_id: String,
    api_key_id: String,
}

pub struct UsageMeter {
    writer: std::sync::Arc<dyn BatchWriter>,
    pending: Mutex<HashMap<UsageKey, i64>>,
}

impl UsageMeter {
    pub fn new(writer: std::sync::Arc<dyn BatchWriter>) -> Self {
        Self { writer, pending: Mutex::new(HashMap::new()) }
    }

    /// Counts one request of `principal` (anonymous requests count under no one).
    pub fn count_request(&self, principal: &Principal) -> bool {
        let (user_id, team_id, api_key_id) = match principal {
            Principal::User(user) => (user.id.clone(), String::new(), String::new()),
            Principal::ApiKey(key) => {
                (key.owner.id.clone(), key.team_id.clone().unwrap_or_default(), key.key_id.clone())
            }
            Principal::Anonymous | Principal::System(_) => (String::new(), String::new(), String::new()),
        };
        let key = UsageKey { day: Utc::now().format("%Y-%m-%d").to_string(), user_id, team_id, api_key_id };
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        *pending.entry(key).or_default() += 1;
        pending.len() >= MAX_PENDING
    }

    /// Adds the pending counts to `usage_daily`, in one batch of multi-row upserts.
    pub async fn flush(&self) -> Result<(), AppError> {
        let pending: Vec<usage_daily::ActiveModel> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(key, requests)| request_row(key, requests)).collect(),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let add = OnConflict::columns(KEY_COLUMNS)
            .value(usage_daily::Column::Requests, Expr::cust("usage_daily.requests + excluded.requests"))
            .to_owned();
        let batch = pending.chunks(rows_per_insert::<usage_daily::Entity>()).fold(
            Batch::new(self.writer.backend()),
            |batch, rows| {
                batch.write(&usage_daily::Entity::insert_many(rows.to_vec()).on_conflict(add.clone()).into_query())
            },
        );
        db::batch::write(self.writer.as_ref(), || async { Ok(batch.clone()) }, |_, _| OnGuard::Retry).await.map(drop)
    }
}

/// The row that counts `requests` under `key`.
fn request_row(key: UsageKey, requests: i64) -> usage_daily::ActiveModel {
    let row = usage_daily::Model {
        day: key.day,
        user_id: key.user_id,
        team_id: key.team_id,
        api_key_id: key.api_key_id,
        model: String::new(),
        requests,
        runs: 0,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
    };
    usage_daily::ActiveModel::from(row).reset_all()
}

/// A finished run's usage, on the day it started: tokens and cost on the row of each model it
/// called, and the run itself on the row of the model that answered or tried last.
pub fn run_rows(
    run: &entity::runs::Model,
    outcome: &crate::orchestrator::executor::Outcome,
) -> Vec<usage_daily::Model> {
    let mut by_model: HashMap<&str, usage_daily::Model> = HashMap::new();
    // The day it started, the day its reservation was made on (docs/runs.md).
    let day = super::budgets::day_of(run.created_at);
    let row = |model: &str| -> usage_daily::Model {
        usage_daily::Model {
            day: day.clone(),
            user_id: run.user_id.clone().unwrap_or_default(),
            team_id: run.team_id.clone(),
            api_key_id: run.api_key_id.clone().unwrap_or_default(),
            model: model.to_string(),
            requests: 0,
            runs: 0,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
        }
    };
    by_model.entry(outcome.model.as_str()).or_insert_with(|| row(&outcome.model)).runs = 1;
    for attempt in &outcome.attempts {
        let sum = by_model.entry(attempt.model.as_str()).or_insert_with(|| row(&attempt.model));
        sum.tokens_in += i64::from(attempt.tokens_in);
        sum.tokens_out += i64::from(attempt.tokens_out);
        sum.cost_usd += attempt.cost_usd;
    }
    by_model.into_values().collect()
}

/// Adds rows' runs, tokens and cost to the day's usage (one row per key), in multi-row
/// upserts within D1's limit on bound values.
pub fn add(mut batch: Batch, rows: Vec<usage_daily::Model>) -> Batch {
    let add = OnConflict::columns(KEY_COLUMNS)
        .value(usage_daily::Column::Runs, Expr::cust("usage_daily.runs + excluded.runs"))
        .value(usage_daily::Column::TokensIn, Expr::cust("usage_daily.tokens_in + excluded.tokens_in"))
        .value(usage_daily::Column::TokensOut, Expr::cust("usage_daily.tokens_out + excluded.tokens_out"))
        .value(usage_daily::Column::CostUsd, Expr::cust("usage_daily.cost_usd + excluded.cost_usd"))
        .to_owned();
    let rows: Vec<_> = rows.into_iter().map(|row| usage_daily::ActiveModel::from(row).reset_all()).collect();
    for chunk in rows.chunks(rows_per_insert::<usage_daily::Entity>()) {
        batch = batch.write(&usage_daily::Entity::insert_many(chunk.to_vec()).on_conflict(add.clone()).into_query());
    }
    batch
}
