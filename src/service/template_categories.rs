//! Template categories: anyone signed in lists them (from the templates cache); admins create,
//! change and delete them (audited, the cache forgotten after commit). Slugs are unique; a clash
//! is CONFLICT, and so is deleting a category templates are filed under.

use chrono::{SubsecRound, Utc};
use std::sync::Arc;

use entity::{template_categories as categories, templates};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Set};
use serde_json::json;

use super::{
    audit::{self, Entry, actions},
    teams::slugify,
    templates::Templates,
};
use crate::{
    auth::guard,
    db,
    domain::{Caller, Principal},
    error::{AppError, Problem},
    service::name::Name,
};

/// A category as an admin writes it; absent fields keep their value on update.
#[derive(Default)]
pub struct CategoryInput {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    pub position: Option<i32>,
}

/// Every category, in display order.
pub async fn list(templates: &Templates, caller: &Caller) -> Result<Arc<Vec<categories::Model>>, AppError> {
    if matches!(caller.principal, Principal::Anonymous) {
        return Err(AppError::Unauthenticated("Sign in to do this.".into()));
    }
    templates.categories().await
}

/// A new category (admins); its slug comes from the name unless given.
pub async fn create(
    templates: &Templates,
    caller: &Caller,
    input: CategoryInput,
) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let name = input.name.clone().unwrap_or_default();
    let slug = input.slug.clone().unwrap_or_else(|| slugify(&name));
    check(&name, &slug, input.description.as_deref())?;
    let now = Utc::now().trunc_subsecs(6);
    let txn = db::begin_write(templates.db()).await?;
    unique_slug(&txn, &slug, None).await?;
    let row = categories::ActiveModel {
        id: Set(format!("cat_{}", uuid::Uuid::now_v7().simple())),
        slug: Set(slug),
        name: Set(name.trim().to_string()),
        description: Set(input.description),
        position: Set(input.position.unwrap_or(0)),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    let changes = json!({"slug": row.slug, "name": row.name, "position": row.position});
    let entry = Entry::new(actions::TEMPLATE_CATEGORY_CREATE, "template_category", row.id.clone()).changes(changes);
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    templates.categories_changed().await;
    Ok(row)
}

/// Changes the fields given (admins).
pub async fn update(
    templates: &Templates,
    caller: &Caller,
    id: &str,
    input: CategoryInput,
) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let txn = db::begin_write(templates.db()).await?;
    let before = find(&txn, id).await?;
    let name = input.name.clone().unwrap_or_else(|| before.name.clone());
    let slug = input.slug.clone().unwrap_or_else(|| before.slug.clone());
    check(&name, &slug, input.description.as_deref())?;
    unique_slug(&txn, &slug, Some(id)).await?;
    let mut row: categories::ActiveModel = before.clone().into();
    row.name = Set(name.trim().to_string());
    row.slug = Set(slug);
    if input.description.is_some() {
        row.description = Set(input.description);
    }
    if let Some(position) = input.position {
        row.position = Set(position);
    }
    row.updated_at = Set(Utc::now().trunc_subsecs(6));
    let after = row.update(&txn).await?;
    let changes = json!({
        "slug": {"from": before.slug, "to": after.slug},
        "name": {"from": before.name, "to": after.name},
        "position": {"from": before.position, "to": after.position},
    });
    let entry = Entry::new(actions::TEMPLATE_CATEGORY_UPDATE, "template_category", after.id.clone()).changes(changes);
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    templates.categories_changed().await;
    Ok(after)
}

/// Deletes a category (admins); answers it as it was.
pub async fn delete(templates: &Templates, caller: &Caller, id: &str) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let txn = db::begin_write(templates.db()).await?;
    let row = find(&txn, id).await?;
    let used = templates::Entity::find().filter(templates::Column::CategoryId.eq(id)).count(&txn).await?;
    if used > 0 {
        return Err(AppError::Conflict(format!(
            "{used} template(s) are filed under `{}`; move them to another category first.",
            row.slug
        )));
    }
    categories::Entity::delete_by_id(id).exec(&txn).await?;
    let changes = json!({"slug": row.slug, "name": row.name});
    let entry = Entry::new(actions::TEMPLATE_CATEGORY_DELETE, "template_category", row.id.clone()).changes(changes);
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    templates.categories_changed().await;
    Ok(row)
}

/// The category, locked until the transaction ends: it is about to change.
async fn find<C: sea_orm::ConnectionTrait>(conn: &C, id: &str) -> Result<categories::Model, AppError> {
    categories::Entity::find_by_id(id)
        .lock_exclusive()
        .one(conn)
        .await?
        .ok_or_else(|| AppError::NotFound("No such template category.".into()))
}

async fn unique_slug<C: sea_orm::ConnectionTrait>(conn: &C, slug: &str, except: Option<&str>) -> Result<(), AppError> {
    let taken = categories::Entity::find()
        .filter(categories::Column::Slug.eq(slug))
        .one(conn)
        .await?
        .is_some_and(|c| Some(c.id.as_str()) != except);
    if taken {
        return Err(AppError::Conflict(format!("A template category with the slug `{slug}` already exists.")));
    }
    Ok(())
}

fn check(name: &str, slug: &str, description: Option<&str>) -> Result<(), AppError> {
    let mut problems = Vec::new();
    Name::check("input.name", name, 100, &mut problems);
    let slug_ok = !slug.is_empty()
        && slug.len() <= 64
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !slug_ok {
        problems.push(Problem::new("input.slug", "must be 1 to 64 lowercase letters, digits or dashes"));
    }
    if description.is_some_and(|d| d.chars().count() > 1_000) {
        problems.push(Problem::new("input.description", "must be at most 1000 characters"));
    }
    AppError::refuse(problems)
}
