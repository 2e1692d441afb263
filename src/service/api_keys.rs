//! API keys: created by a signed-in user (the secret is returned once), listed without
//! secrets, revoked at once, rotated with a grace period for the old secret. Each change
//! updates the key caches once committed.

use chrono::{DateTime, Duration, Utc};
use entity::api_keys;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use super::{
    audit::{self, Entry, actions},
    page::{Page, PageRequest},
};
use crate::{
    auth::{
        api_key::{self, NewSecret},
        guard::{self, account},
    },
    cache::Caches,
    db,
    domain::{Caller, Invalidation, Scope, TeamRole},
    error::{AppError, Problem},
    service::name::Name,
};

/// Longest grace a rotation may give the old secret.
pub const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;

pub struct NewKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub team_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub daily_token_budget: Option<i64>,
    pub daily_cost_budget_usd: Option<f64>,
}

/// A key just made or rotated, with its secret (shown this once).
pub struct WithSecret {
    pub key: api_keys::Model,
    pub secret: String,
}

pub async fn create(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    new: NewKey,
) -> Result<WithSecret, AppError> {
    create_with(db, caches, caller, new, api_key::generate()).await
}

/// Creates a key with a secret made beforehand by [`api_key::generate`].
pub async fn create_with(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    new: NewKey,
    secret: NewSecret,
) -> Result<WithSecret, AppError> {
    let me = account(caller)?.clone();
    let mut problems = Vec::new();
    Name::check("name", &new.name, 100, &mut problems);
    if new.scopes.is_empty() {
        problems.push(Problem::new("scopes", "name at least one scope"));
    }
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        problems.push(Problem::new("expiresAt", "must be in the future"));
    }
    if new.daily_token_budget.is_some_and(|n| n < 0) {
        problems.push(Problem::new("dailyTokenBudget", "must not be negative"));
    }
    if new.daily_cost_budget_usd.is_some_and(|usd| !(usd >= 0.0 && usd.is_finite())) {
        problems.push(Problem::new("dailyCostBudgetUsd", "must not be negative"));
    }
    AppError::refuse(problems)?;
    let txn = db::begin_write(db).await?;
    if let Some(team_id) = &new.team_id {
        guard::team(&txn, caller, team_id, TeamRole::Viewer).await?;
    }
    let mut scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let key = api_keys::ActiveModel {
        id: Set(format!("key_{}", uuid::Uuid::now_v7().simple())),
        user_id: Set(me.id.clone()),
        team_id: Set(new.team_id.clone()),
        name: Set(new.name.trim().to_string()),
        prefix: Set(secret.prefix.clone()),
        secret_hash: Set(secret.hash.clone()),
        previous_secret_hash: Set(None),
        previous_expires_at: Set(None),
        scopes: Set(json!(scopes)),
        expires_at: Set(new.expires_at),
        last_used_at: Set(None),
        revoked_at: Set(None),
        created_at: Set(Utc::now()),
        daily_token_budget: Set(new.daily_token_budget),
        daily_cost_budget_usd: Set(new.daily_cost_budget_usd),
    }
    .insert(&txn)
    .await?;
    let changes = json!({"name": key.name, "prefix": key.prefix, "scopes": scopes, "teamId": key.team_id, "expiresAt": key.expires_at,
                         "dailyTokenBudget": key.daily_token_budget, "dailyCostBudgetUsd": key.daily_cost_budget_usd});
    let mut entry = Entry::new(actions::API_KEY_CREATE, "api_key", key.id.clone()).changes(changes);
    entry.team_id = key.team_id.clone();
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    caches.invalidate(Invalidation::ApiKeyCreated(key.prefix.clone())).await;
    Ok(WithSecret { key, secret: secret.full })
}

/// The caller's keys, newest first.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    page: &PageRequest,
) -> Result<Page<api_keys::Model>, AppError> {
    let me = account(caller)?;
    let mut query = api_keys::Entity::find().filter(api_keys::Column::UserId.eq(&me.id));
    if let Some(after) = &page.after {
        query = query.filter(api_keys::Column::Id.lt(after.as_str()));
    }
    let rows = query.order_by_desc(api_keys::Column::Id).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

/// One of the caller's keys, locked for a change.
async fn own_key(txn: &sea_orm::DatabaseTransaction, caller: &Caller, id: &str) -> Result<api_keys::Model, AppError> {
    let me = account(caller)?;
    api_keys::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .filter(|k| k.user_id == me.id)
        .ok_or_else(|| AppError::NotFound("No such API key.".into()))
}

pub async fn revoke(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    id: &str,
) -> Result<api_keys::Model, AppError> {
    let txn = db::begin_write(db).await?;
    let key = own_key(&txn, caller, id).await?;
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let prefix = key.prefix.clone();
    let mut active: api_keys::ActiveModel = key.into();
    active.revoked_at = Set(Some(Utc::now()));
    let key = active.update(&txn).await?;
    audit::allowed(&txn, caller, Entry::new(actions::API_KEY_REVOKE, "api_key", id.to_string())).await?;
    txn.commit().await?;
    caches.invalidate(Invalidation::ApiKeyChanged(prefix)).await;
    Ok(key)
}

/// A new secret for the same key; the old one keeps working for `grace_secs`. Rotating again
/// while a grace runs is refused, so a retried call cannot leave a third secret alive.
pub async fn rotate(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    id: &str,
    grace_secs: i64,
) -> Result<WithSecret, AppError> {
    if !(0..=MAX_GRACE_SECS).contains(&grace_secs) {
        return Err(AppError::BadUserInput {
            message: format!("graceSeconds must be between 0 and {MAX_GRACE_SECS}"),
            problems: vec![Problem::new("graceSeconds", "between 0 and 7 days")],
        });
    }
    let txn = db::begin_write(db).await?;
    let key = own_key(&txn, caller, id).await?;
    let now = Utc::now();
    if key.revoked_at.is_some() {
        return Err(AppError::Conflict("A revoked key cannot be rotated; create a new one.".into()));
    }
    if let Some(until) = key.previous_expires_at.filter(|until| *until > now) {
        return Err(AppError::Conflict(format!(
            "This key was rotated already; its previous secret works until {until}. Rotate again after that."
        )));
    }
    let secret = api_key::regenerate(&key.prefix);
    let mut active: api_keys::ActiveModel = key.clone().into();
    active.previous_secret_hash = Set(Some(key.secret_hash.clone()));
    active.previous_expires_at = Set(Some(now + Duration::seconds(grace_secs)));
    active.secret_hash = Set(secret.hash.clone());
    let key = active.update(&txn).await?;
    let entry =
        Entry::new(actions::API_KEY_ROTATE, "api_key", id.to_string()).changes(json!({"graceSeconds": grace_secs}));
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    caches.invalidate(Invalidation::ApiKeyChanged(key.prefix.clone())).await;
    Ok(WithSecret { key, secret: secret.full })
}

/// Revokes every key of a user (their account was deleted).
pub async fn revoke_all_of<C: sea_orm::ConnectionTrait>(conn: &C, user_id: &str) -> Result<Vec<String>, AppError> {
    let prefixes: Vec<String> = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .all(conn)
        .await?
        .into_iter()
        .map(|k| k.prefix)
        .collect();
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, sea_orm::sea_query::Expr::value(Utc::now()))
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(prefixes)
}
