//! API keys: created by a signed-in user (the secret is returned once), listed without
//! secrets, revoked at once, rotated with a grace period for the old secret. Each change
//! updates the key caches once committed.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use entity::api_keys;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    sea_query::{Expr, UpdateStatement},
};
use serde_json::json;

use super::{
    audit::{AuditChain, Audited, Decision, Entry, actions},
    page::{Page, PageRequest},
};
use crate::{
    auth::{
        api_key::{self, NewSecret},
        guard::{self, account},
    },
    cache::Caches,
    db::batch::{Batch, Expect, OnGuard},
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
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    new: NewKey,
) -> Result<WithSecret, AppError> {
    create_with(db, audit, caches, caller, new, api_key::generate()).await
}

/// Creates a key with a secret made beforehand by [`api_key::generate`].
pub async fn create_with(
    db: &DatabaseConnection,
    audit: &AuditChain,
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
    let mut scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let (key, _) = audit
        .write(
            caller,
            || async {
                if let Some(team_id) = &new.team_id {
                    guard::team(db, caller, team_id, TeamRole::Viewer).await?;
                }
                let key = api_keys::Model {
                    id: format!("key_{}", uuid::Uuid::now_v7().simple()),
                    user_id: me.id.clone(),
                    team_id: new.team_id.clone(),
                    name: new.name.trim().to_string(),
                    prefix: secret.prefix.clone(),
                    secret_hash: secret.hash.clone(),
                    previous_secret_hash: None,
                    previous_expires_at: None,
                    scopes: json!(scopes),
                    expires_at: new.expires_at,
                    last_used_at: None,
                    revoked_at: None,
                    created_at: Utc::now().trunc_subsecs(6),
                    daily_token_budget: new.daily_token_budget,
                    daily_cost_budget_usd: new.daily_cost_budget_usd,
                };
                let insert = api_keys::Entity::insert(api_keys::ActiveModel::from(key.clone())).into_query();
                let changes = json!({"name": key.name, "prefix": key.prefix, "scopes": scopes, "teamId": key.team_id, "expiresAt": key.expires_at,
                                     "dailyTokenBudget": key.daily_token_budget, "dailyCostBudgetUsd": key.daily_cost_budget_usd});
                let mut entry = Entry::new(actions::API_KEY_CREATE, "api_key", key.id.clone()).changes(changes);
                entry.team_id = key.team_id.clone();
                let batch = Batch::new(audit.writer().backend()).write(&insert);
                Ok(Audited { batch, entry, answer: key })
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
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

/// One of the caller's keys, as it is now.
async fn own_key(db: &DatabaseConnection, caller: &Caller, id: &str) -> Result<api_keys::Model, AppError> {
    let me = account(caller)?;
    api_keys::Entity::find_by_id(id)
        .one(db)
        .await?
        .filter(|k| k.user_id == me.id)
        .ok_or_else(|| AppError::NotFound("No such API key.".into()))
}

/// The guard of a revocation: the key was revoked meanwhile (the next read answers it).
const REVOKED: &str = "revoked";
/// The guard of a rotation: the key was rotated or revoked meanwhile (the next read says so).
const KEY_CHANGED: &str = "key_changed";

/// Revokes one of the caller's keys at once; a key revoked already is answered as it is.
pub async fn revoke(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    id: &str,
) -> Result<api_keys::Model, AppError> {
    let ((key, revoked), _) = audit
        .decide(
            caller,
            || async {
                let mut key = own_key(db, caller, id).await?;
                if key.revoked_at.is_some() {
                    return Ok(Decision::Unchanged((key, false)));
                }
                let now = Utc::now().trunc_subsecs(6);
                let revoke = api_keys::Entity::update_many()
                    .col_expr(api_keys::Column::RevokedAt, Expr::value(now))
                    .filter(api_keys::Column::Id.eq(id))
                    .filter(api_keys::Column::UserId.eq(&key.user_id))
                    .filter(api_keys::Column::RevokedAt.is_null())
                    .into_query();
                let batch = Batch::new(audit.writer().backend()).write(&revoke).guard(Expect::One, REVOKED);
                key.revoked_at = Some(now);
                let entry = Entry::new(actions::API_KEY_REVOKE, "api_key", id.to_string());
                Ok(Decision::Write(Audited { batch, entry, answer: (key, true) }))
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    if revoked {
        caches.invalidate(Invalidation::ApiKeyChanged(key.prefix.clone())).await;
    }
    Ok(key)
}

/// A new secret for the same key; the old one keeps working for `grace_secs`. Rotating again
/// while a grace runs is refused, so a retried call cannot leave a third secret alive. Guarded
/// on the secret read: a rotation that lands first makes this one read again and refuse.
pub async fn rotate(
    db: &DatabaseConnection,
    audit: &AuditChain,
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
    let ((key, secret), _) = audit
        .write(
            caller,
            || async {
                let key = own_key(db, caller, id).await?;
                let now = Utc::now().trunc_subsecs(6);
                if key.revoked_at.is_some() {
                    return Err(AppError::Conflict("A revoked key cannot be rotated; create a new one.".into()));
                }
                if let Some(until) = key.previous_expires_at.filter(|until| *until > now) {
                    return Err(AppError::Conflict(format!(
                        "This key was rotated already; its previous secret works until {until}. Rotate again after that."
                    )));
                }
                let secret = api_key::regenerate(&key.prefix);
                let read_hash = key.secret_hash.clone();
                let mut after = key;
                after.previous_secret_hash = Some(read_hash.clone());
                after.previous_expires_at = Some(now + Duration::seconds(grace_secs));
                after.secret_hash = secret.hash.clone();
                let active = api_keys::ActiveModel {
                    previous_secret_hash: Set(after.previous_secret_hash.clone()),
                    previous_expires_at: Set(after.previous_expires_at),
                    secret_hash: Set(after.secret_hash.clone()),
                    ..Default::default()
                };
                let rotate = api_keys::Entity::update_many()
                    .set(active)
                    .filter(api_keys::Column::Id.eq(id))
                    .filter(api_keys::Column::SecretHash.eq(read_hash))
                    .filter(api_keys::Column::RevokedAt.is_null())
                    .into_query();
                let batch = Batch::new(audit.writer().backend()).write(&rotate).guard(Expect::One, KEY_CHANGED);
                let entry = Entry::new(actions::API_KEY_ROTATE, "api_key", id.to_string())
                    .changes(json!({"graceSeconds": grace_secs}));
                Ok(Audited { batch, entry, answer: (after, secret) })
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    caches.invalidate(Invalidation::ApiKeyChanged(key.prefix.clone())).await;
    Ok(WithSecret { key, secret: secret.full })
}

/// A user's keys not revoked yet.
pub async fn live_of(db: &DatabaseConnection, user_id: &str) -> Result<Vec<api_keys::Model>, AppError> {
    Ok(api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .all(db)
        .await?)
}

/// Revokes every live key of a user (their account was deleted) at `now`.
pub fn revoke_all_of(user_id: &str, now: DateTime<Utc>) -> UpdateStatement {
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(now))
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .into_query()
}
