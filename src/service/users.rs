//! Users: created the first time they sign in (just in time), read by themselves or admins.
//! Every change to a user's row drops its cache entry once committed.

use chrono::{DateTime, SubsecRound, Utc};
use entity::{users, webhook_events};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    sea_query::{Expr, ExprTrait, Func, OnConflict},
};
use serde_json::{Value, json};

use super::{
    api_keys,
    audit::{AuditChain, Audited, Decision, Entry, actions},
    page::{Page, PageRequest},
};
use crate::{
    auth::guard::{self, account, admin},
    cache::Caches,
    db::{
        self,
        batch::{Batch, Expect, OnGuard, StepResult},
    },
    domain::{Caller, GlobalRole, Invalidation, Principal},
    error::{AppError, Problem},
    service::name::Name,
};

/// A user by id.
pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<users::Model>, AppError> {
    Ok(users::Entity::find_by_id(id).one(db).await?)
}

/// What a user may change about themselves.
pub struct ProfileChanges {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl ProfileChanges {
    /// Every problem at once: a name of 1–100 characters, an http(s) URL of at most 2048.
    fn validate(&self) -> Result<(), AppError> {
        let mut problems = Vec::new();
        if let Some(name) = &self.display_name {
            Name::check("displayName", name, 100, &mut problems);
        }
        if let Some(url) = &self.avatar_url {
            let parsed = url::Url::parse(url).ok();
            if url.len() > 2048 || !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https")) {
                problems.push(Problem::new("avatarUrl", "must be an http(s) URL of at most 2048 characters"));
            }
        }
        AppError::refuse(problems)
    }
}

/// A user the caller may see: themselves, or anyone for an admin. Others are not found.
pub async fn get(db: &DatabaseConnection, caller: &Caller, id: &str) -> Result<users::Model, AppError> {
    let me = account(caller)?;
    if me.id != id && !guard::sees_all(caller) {
        return Err(not_found());
    }
    live(db, id).await
}

fn not_found() -> AppError {
    AppError::NotFound("No such user.".into())
}

/// Every user (admins only), by id, optionally matching `search` in id, email or name.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    search: Option<&str>,
    page: &PageRequest,
) -> Result<Page<users::Model>, AppError> {
    admin(caller)?;
    let mut query = users::Entity::find().filter(users::Column::DeletedAt.is_null());
    if let Some(search) = search.map(str::trim).filter(|s| !s.is_empty()) {
        let pattern = format!("%{}%", search.to_lowercase().replace(['%', '_'], ""));
        let lower = |col: users::Column| Expr::expr(Func::lower(Expr::col(col)));
        query = query.filter(
            Condition::any()
                .add(lower(users::Column::Id).like(&pattern))
                .add(lower(users::Column::Email).like(&pattern))
                .add(lower(users::Column::DisplayName).like(&pattern)),
        );
    }
    if let Some(after) = &page.after {
        query = query.filter(users::Column::Id.gt(after.as_str()));
    }
    let rows = query.order_by_asc(users::Column::Id).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

/// The caller edits their own profile: only the fields given, on their row as long as it is
/// not deleted; the answer is the row the update left (`RETURNING`).
pub async fn update_profile(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    changes: ProfileChanges,
) -> Result<users::Model, AppError> {
    let me = account(caller)?;
    changes.validate()?;
    let ((), results) = audit
        .write(
            caller,
            || async {
                live(db, &me.id).await?;
                let mut active = users::ActiveModel::default();
                let mut changed = serde_json::Map::new();
                if let Some(name) = &changes.display_name {
                    changed.insert("displayName".into(), name.trim().into());
                    active.display_name = Set(Some(name.trim().to_string()));
                }
                if let Some(url) = &changes.avatar_url {
                    changed.insert("avatarUrl".into(), url.clone().into());
                    active.avatar_url = Set(Some(url.clone()));
                }
                active.updated_at = Set(Utc::now().trunc_subsecs(6));
                let mut update = users::Entity::update_many()
                    .set(active)
                    .filter(users::Column::Id.eq(&me.id))
                    .filter(users::Column::DeletedAt.is_null())
                    .into_query();
                update.returning_all();
                let batch = Batch::new(audit.writer().backend()).write_returning(&update).guard(Expect::One, USER_GONE);
                let entry = Entry::new(actions::USER_PROFILE_UPDATE, "user", me.id.clone()).changes(changed.into());
                Ok(Audited { batch, entry, answer: () })
            },
            // Deleted meanwhile: the next read answers NOT_FOUND.
            |_, _| OnGuard::Retry,
        )
        .await?;
    let row: users::Model = updated(&results)?;
    caches.invalidate(Invalidation::UserChanged(row.id.clone())).await;
    Ok(row)
}

/// The guard of a change to a user's row: the row is deleted.
const USER_GONE: &str = "user_gone";
/// The guard of a role change: the role is no longer the one read, or the user was deleted.
const USER_CHANGED: &str = "user_changed";

/// A user's row unless deleted; NOT_FOUND otherwise.
async fn live(db: &DatabaseConnection, id: &str) -> Result<users::Model, AppError> {
    find(db, id).await?.filter(|u| u.deleted_at.is_none()).ok_or_else(not_found)
}

/// The row the batch's first step answered with `RETURNING`.
fn updated(results: &[StepResult]) -> Result<users::Model, AppError> {
    results.first().ok_or_else(|| AppError::internal("the user's update answered nothing"))?.one()
}

/// An admin sets someone's global role; it applies from their next request. Guarded on the
/// role read, so the audit row's `from` is the role replaced.
pub async fn set_role(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    user_id: &str,
    role: GlobalRole,
) -> Result<users::Model, AppError> {
    admin(caller)?;
    let ((), results) = audit
        .write(
            caller,
            || async {
                let before = live(db, user_id).await?.role;
                let active = users::ActiveModel {
                    role: Set(role),
                    updated_at: Set(Utc::now().trunc_subsecs(6)),
                    ..Default::default()
                };
                let mut update = users::Entity::update_many()
                    .set(active)
                    .filter(users::Column::Id.eq(user_id))
                    .filter(users::Column::DeletedAt.is_null())
                    .filter(users::Column::Role.eq(before))
                    .into_query();
                update.returning_all();
                let batch =
                    Batch::new(audit.writer().backend()).write_returning(&update).guard(Expect::One, USER_CHANGED);
                let entry = Entry::new(actions::USER_ROLE_SET, "user", user_id.to_string())
                    .changes(json!({"role": {"from": before.to_string(), "to": role.to_string()}}));
                Ok(Audited { batch, entry, answer: () })
            },
            // Another admin changed the role, or the user was deleted: read again.
            |_, _| OnGuard::Retry,
        )
        .await?;
    caches.invalidate(Invalidation::UserChanged(user_id.to_string())).await;
    updated(&results)
}

/// The guard of a delivery: recorded already (a replay racing this one).
const DUPLICATE: &str = "duplicate";
/// The guard of revoking a deleted user's keys: not the keys read.
const KEYS_CHANGED: &str = "keys_changed";

/// Applies one Clerk webhook event, once per delivery id: `processed`, `duplicate` (a replay)
/// or `ignored` (an event type this server does not use). The delivery is recorded in the
/// event's batch; a replay that meets it there reads it again and answers `duplicate`.
#[tracing::instrument(skip(db, audit, caches, event))]
pub async fn apply_clerk_event(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    delivery_id: &str,
    event: &Value,
) -> Result<&'static str, AppError> {
    let kind = event["type"].as_str().unwrap_or_default();
    let data = &event["data"];
    let backend = audit.writer().backend();
    let delivery = webhook_events::ActiveModel {
        id: Set(delivery_id.to_string()),
        source: Set("clerk".into()),
        event_type: Set(kind.chars().take(100).collect()),
        received_at: Set(Utc::now().trunc_subsecs(6)),
    };
    let delivery = webhook_events::Entity::insert(delivery)
        .on_conflict(OnConflict::column(webhook_events::Column::Id).do_nothing().to_owned())
        .into_query();
    let user_id = data["id"].as_str().filter(|id| !id.is_empty());
    let applied = user_id.filter(|_| matches!(kind, "user.created" | "user.updated" | "user.deleted"));
    let Some(applied) = applied else {
        // Only the delivery is recorded: a conflict that inserts nothing is the replay.
        let results = db::batch::write(
            audit.writer(),
            || async { Ok(Batch::new(backend).write(&delivery)) },
            |_, _| OnGuard::Retry,
        )
        .await?;
        if results.first().is_none_or(|step| step.rows_affected == 0) {
            return Ok("duplicate");
        }
        if let Some(user_id) = user_id {
            caches.invalidate(Invalidation::UserChanged(user_id.to_string())).await;
        }
        return Ok("ignored");
    };
    let caller = Caller {
        principal: Principal::System("clerk-webhook"),
        meta: crate::domain::RequestMeta { request_id: delivery_id.to_string(), ..Default::default() },
    };
    let ((outcome, revoked), _) = audit
        .decide(
            &caller,
            || async {
                if webhook_events::Entity::find_by_id(delivery_id).one(db).await?.is_some() {
                    return Ok(Decision::Unchanged(("duplicate", Vec::new())));
                }
                let batch = Batch::new(backend).write(&delivery).guard(Expect::One, DUPLICATE);
                let now = Utc::now().trunc_subsecs(6);
                let audited = if kind == "user.deleted" {
                    plan_delete(db, batch, applied, now).await?
                } else {
                    plan_sync(batch, applied, data, now)
                };
                Ok(Decision::Write(audited))
            },
            // A replay recorded meanwhile answers `duplicate` on the next read; keys made or
            // revoked meanwhile are read again.
            |_, _| OnGuard::Retry,
        )
        .await?;
    if outcome == "duplicate" {
        return Ok(outcome);
    }
    caches.invalidate(Invalidation::UserChanged(applied.to_string())).await;
    for prefix in revoked {
        caches.invalidate(Invalidation::ApiKeyChanged(prefix)).await;
    }
    Ok(outcome)
}

/// `user.created` / `user.updated`: the user's row made or its profile fields replaced.
fn plan_sync(batch: Batch, user_id: &str, data: &Value, now: DateTime<Utc>) -> Audited<(&'static str, Vec<String>)> {
    let synced = clerk_profile(data);
    let row = users::ActiveModel {
        id: Set(user_id.to_string()),
        email: Set(synced.email.clone()),
        display_name: Set(synced.display_name.clone()),
        avatar_url: Set(synced.avatar_url.clone()),
        role: Set(GlobalRole::Member),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
    };
    let columns =
        [users::Column::Email, users::Column::DisplayName, users::Column::AvatarUrl, users::Column::UpdatedAt];
    let upsert = users::Entity::insert(row)
        .on_conflict(OnConflict::column(users::Column::Id).update_columns(columns).to_owned())
        .into_query();
    let changes = json!({"email": synced.email, "displayName": synced.display_name, "avatarUrl": synced.avatar_url});
    let entry = Entry::new(actions::USER_SYNC, "user", user_id.to_string()).changes(changes);
    Audited { batch: batch.write(&upsert), entry, answer: ("processed", Vec::new()) }
}

/// `user.deleted`: the row soft-deleted and every live key revoked, guarded on the keys read
/// (the audit row counts them). Answers the revoked keys' prefixes.
async fn plan_delete(
    db: &DatabaseConnection,
    batch: Batch,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Audited<(&'static str, Vec<String>)>, AppError> {
    let live: Vec<String> = api_keys::live_of(db, user_id).await?.into_iter().map(|key| key.prefix).collect();
    let soft_delete = users::Entity::update_many()
        .col_expr(users::Column::DeletedAt, Expr::value(now))
        .filter(users::Column::Id.eq(user_id))
        .filter(users::Column::DeletedAt.is_null())
        .into_query();
    let revoke = api_keys::revoke_all_of(user_id, now);
    let batch = batch.write(&soft_delete).write(&revoke).guard(Expect::Exactly(live.len() as u64), KEYS_CHANGED);
    let entry =
        Entry::new(actions::USER_DELETE, "user", user_id.to_string()).changes(json!({"apiKeysRevoked": live.len()}));
    Ok(Audited { batch, entry, answer: ("processed", live) })
}

/// The profile fields of a Clerk user object.
struct ClerkProfile {
    email: Option<String>,
    display_name: Option<String>,
    avatar_url: Option<String>,
}

fn clerk_profile(data: &Value) -> ClerkProfile {
    let primary = data["primary_email_address_id"].as_str();
    let email = data["email_addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| primary.is_none() || e["id"].as_str() == primary)
        .and_then(|e| e["email_address"].as_str())
        .map(str::to_string);
    let name = [data["first_name"].as_str(), data["last_name"].as_str()]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let display_name = Some(name).filter(|n| !n.is_empty()).or_else(|| data["username"].as_str().map(str::to_string));
    ClerkProfile { email, display_name, avatar_url: data["image_url"].as_str().map(str::to_string) }
}
