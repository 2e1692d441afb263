//! Usage: every request counts against its principal in `usage_daily`. Counts gather in
//! memory and are added to the table in one upsert per key every few seconds (and at
//! shutdown), so a request costs no write of its own.

use std::{collections::HashMap, sync::Mutex};

use chrono::Utc;
use entity::usage_daily;
use sea_orm::{
    DatabaseConnection, EntityTrait, Set,
    sea_query::{Expr, OnConflict},
};

use crate::{auth::Principal, error::AppError};

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
    db: DatabaseConnection,
    pending: Mutex<HashMap<UsageKey, i64>>,
}

impl UsageMeter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, pending: Mutex::new(HashMap::new()) }
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

    /// Adds the pending counts to `usage_daily`.
    pub async fn flush(&self) -> Result<(), AppError> {
        let pending: Vec<(UsageKey, i64)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return Ok(()),
        };
        for (key, requests) in pending {
            let row = usage_daily::ActiveModel {
                day: Set(key.day),
                user_id: Set(key.user_id),
                team_id: Set(key.team_id),
                api_key_id: Set(key.api_key_id),
                model: Set(String::new()),
                requests: Set(requests),
                runs: Set(0),
                tokens_in: Set(0),
                tokens_out: Set(0),
                cost_usd: Set(0.0),
            };
            let add = OnConflict::columns([
                usage_daily::Column::Day,
                usage_daily::Column::UserId,
                usage_daily::Column::TeamId,
                usage_daily::Column::ApiKeyId,
                usage_daily::Column::Model,
            ])
            .value(usage_daily::Column::Requests, Expr::cust("usage_daily.requests + excluded.requests"))
            .to_owned();
            usage_daily::Entity::insert(row).on_conflict(add).exec_without_returning(&self.db).await?;
        }
        Ok(())
    }
}
