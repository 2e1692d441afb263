//! Users: created the first time they sign in (just in time), read by themselves or admins.
//! Every change to a user's row drops its cache entry once committed.

use chrono::Utc;
use entity::{users, webhook_events};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
    sea_query::{Expr, ExprTrait, Func, OnConflict},
};
use serde_json::Value;

use super::{
    audit::{self, Entry, actions},
    page::{Page, PageRequest},
};
use crate::{
    auth::guard::{self, account, admin},
    cache::Caches,
    db,
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
    find(db, id).await?.filter(|u| u.deleted_at.is_none()).ok_or_else(not_found)
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

/// The caller edits their own profile.
pub async fn update_profile(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    changes: ProfileChanges,
) -> Result<users::Model, AppError> {
    let me = account(caller)?;
    changes.validate()?;
    let txn = db::begin_write(db).await?;
    let row = users::Entity::find_by_id(&me.id).lock_exclusive().one(&txn).await?.ok_or_else(not_found)?;
    let mut active: users::ActiveModel = row.into();
    let mut changed = serde_json::Map::new();
    if let Some(name) = changes.display_name {
        changed.insert("displayName".into(), name.trim().into());
        active.display_name = Set(Some(name.trim().to_string()));
    }
    if let Some(url) = changes.avatar_url {
        changed.insert("avatarUrl".into(), url.clone().into());
        active.avatar_url = Set(Some(url));
    }
    active.updated_at = Set(Utc::now());
    let row = active.update(&txn).await?;
    let entry = Entry::new(actions::USER_PROFILE_UPDATE, "user", me.id.clone()).changes(changed.into());
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    caches.invalidate(Invalidation::UserChanged(row.id.clone())).await;
    Ok(row)
}

/// An admin sets someone's global role; it applies from their next request.
pub async fn set_role(
    db: &DatabaseConnection,
    caches: &Caches,
    caller: &Caller,
    user_id: &str,
    role: GlobalRole,
) -> Result<users::Model, AppError> {
    admin(caller)?;
    let txn = db::begin_write(db).await?;
    let row = users::Entity::find_by_id(user_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .filter(|u| u.deleted_at.is_none())
        .ok_or_else(not_found)?;
    let before = row.role;
    let mut active: users::ActiveModel = row.into();
    active.role = Set(role);
    active.updated_at = Set(Utc::now());
    let row = active.update(&txn).await?;
    let entry = Entry::new(actions::USER_ROLE_SET, "user", user_id.to_string())
        .changes(serde_json::json!({"role": {"from": before.to_string(), "to": role.to_string()}}));
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    caches.invalidate(Invalidation::UserChanged(user_id.to_string())).await;
    Ok(row)
}

/// Applies one Clerk webhook event, once per delivery id: `processed`, `duplicate` (a replay)
/// or `ignored` (an event type this server does not use).
#[tracing::instrument(skip(db, caches, event))]
pub async fn apply_clerk_event(
    db: &DatabaseConnection,
    caches: &Caches,
    delivery_id: &str,
    event: &Value,
) -> Result<&'static str, AppError> {
    let kind = event["type"].as_str().unwrap_or_default();
    let data = &event["data"];
    let txn = db::begin_write(db).await?;
    let delivery = webhook_events::ActiveModel {
        id: Set(delivery_id.to_string()),
        source: Set("clerk".into()),
        event_type: Set(kind.chars().take(100).collect()),
        received_at: Set(Utc::now()),
    };
    let inserted = webhook_events::Entity::insert(delivery)
        .on_conflict(OnConflict::column(webhook_events::Column::Id).do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await?;
    if inserted == 0 {
        return Ok("duplicate");
    }
    let Some(user_id) = data["id"].as_str().filter(|id| !id.is_empty()) else {
        txn.commit().await?;
        return Ok("ignored");
    };
    let caller = Caller {
        principal: Principal::System("clerk-webhook"),
        meta: crate::domain::RequestMeta { request_id: delivery_id.to_string(), ..Default::default() },
    };
    let mut revoked = Vec::new();
    let outcome = match kind {
        "user.created" | "user.updated" => {
            let synced = clerk_profile(data);
            let now = Utc::now();
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
            users::Entity::insert(row)
                .on_conflict(OnConflict::column(users::Column::Id).update_columns(columns).to_owned())
                .exec_without_returning(&txn)
                .await?;
            let changes = serde_json::json!({"email": synced.email, "displayName": synced.display_name, "avatarUrl": synced.avatar_url});
            audit::allowed(&txn, &caller, Entry::new(actions::USER_SYNC, "user", user_id.to_string()).changes(changes))
                .await?;
            "processed"
        }
        "user.deleted" => {
            users::Entity::update_many()
                .col_expr(users::Column::DeletedAt, Expr::value(Utc::now()))
                .filter(users::Column::Id.eq(user_id))
                .filter(users::Column::DeletedAt.is_null())
                .exec(&txn)
                .await?;
            revoked = super::api_keys::revoke_all_of(&txn, user_id).await?;
            let changes = serde_json::json!({"apiKeysRevoked": revoked.len()});
            audit::allowed(
                &txn,
                &caller,
                Entry::new(actions::USER_DELETE, "user", user_id.to_string()).changes(changes),
            )
            .await?;
            "processed"
        }
        _ => "ignored",
    };
    txn.commit().await?;
    caches.invalidate(Invalidation::UserChanged(user_id.to_string())).await;
    for prefix in revoked {
        caches.invalidate(Invalidation::ApiKeyChanged(prefix)).await;
    }
    Ok(outcome)
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
