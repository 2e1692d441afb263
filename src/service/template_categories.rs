//! Template categories: anyone signed in lists them (from the templates cache); admins create,
//! change and delete them (audited, the cache forgotten after commit). Slugs are unique; a clash
//! is CONFLICT, and so is deleting a category templates are filed under.

use chrono::{SubsecRound, Utc};
use std::sync::Arc;

use entity::{template_categories as categories, templates};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryTrait, Set,
    sea_query::{Expr, ExprTrait, OnConflict, Query},
};
use serde_json::json;

use super::{
    audit::{Audited, Entry, actions},
    teams::slugify,
    templates::Templates,
};
use crate::{
    auth::guard,
    db::batch::{Batch, Expect, OnGuard},
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

/// A new category (admins); its slug comes from the name unless given. The insert itself
/// finds a taken slug (`ON CONFLICT (slug) DO NOTHING`, guarded), so a category a concurrent
/// admin is creating counts too.
pub async fn create(
    templates: &Templates,
    caller: &Caller,
    input: CategoryInput,
) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let name = input.name.clone().unwrap_or_default();
    let slug = input.slug.clone().unwrap_or_else(|| slugify(&name));
    check(&name, &slug, input.description.as_deref())?;
    let audit = templates.audit();
    let (row, _) = audit
        .write(
            caller,
            || async {
                let now = Utc::now().trunc_subsecs(6);
                let row = categories::Model {
                    id: format!("cat_{}", uuid::Uuid::now_v7().simple()),
                    slug: slug.clone(),
                    name: name.trim().to_string(),
                    description: input.description.clone(),
                    position: input.position.unwrap_or(0),
                    created_at: now,
                    updated_at: now,
                };
                let free_slug = OnConflict::column(categories::Column::Slug).do_nothing().to_owned();
                let insert = categories::Entity::insert(categories::ActiveModel::from(row.clone()))
                    .on_conflict(free_slug)
                    .into_query();
                let batch = Batch::new(audit.writer().backend()).write(&insert).guard(Expect::One, SLUG_TAKEN);
                let changes = json!({"slug": row.slug, "name": row.name, "position": row.position});
                let entry =
                    Entry::new(actions::TEMPLATE_CATEGORY_CREATE, "template_category", row.id.clone()).changes(changes);
                Ok(Audited { batch, entry, answer: row })
            },
            |_, code| match code {
                SLUG_TAKEN => OnGuard::Answer(slug_taken(&slug)),
                _ => OnGuard::Retry,
            },
        )
        .await?;
    templates.categories_changed().await;
    Ok(row)
}

/// Changes the fields given (admins), guarded on the category as read (its `updated_at`): a
/// change that landed first has the category read and changed again.
pub async fn update(
    templates: &Templates,
    caller: &Caller,
    id: &str,
    input: CategoryInput,
) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let audit = templates.audit();
    let (after, _) = audit
        .write(
            caller,
            || async {
                let before = find(templates.db(), id).await?;
                let name = input.name.clone().unwrap_or_else(|| before.name.clone());
                let slug = input.slug.clone().unwrap_or_else(|| before.slug.clone());
                check(&name, &slug, input.description.as_deref())?;
                unique_slug(templates.db(), &slug, Some(id)).await?;
                plan_update(before, name, slug, &input, audit.writer().backend())
            },
            // Changed meanwhile, or another category took the slug first: read again (a taken
            // slug is then answered CONFLICT).
            |_, _| OnGuard::Retry,
        )
        .await?;
    templates.categories_changed().await;
    Ok(after)
}

/// The batch that changes `before` as read: a slug that changes must still be free when the
/// batch runs, and the row must be as read.
fn plan_update(
    before: categories::Model,
    name: String,
    slug: String,
    input: &CategoryInput,
    backend: DbBackend,
) -> Result<Audited<categories::Model>, AppError> {
    let mut after = before.clone();
    after.name = name.trim().to_string();
    after.slug = slug;
    if input.description.is_some() {
        after.description = input.description.clone();
    }
    if let Some(position) = input.position {
        after.position = position;
    }
    after.updated_at = Utc::now().trunc_subsecs(6);
    let mut batch = Batch::new(backend);
    if after.slug != before.slug {
        let taken = Query::select()
            .expr(Expr::val(1))
            .from(categories::Entity)
            .and_where(categories::Column::Slug.eq(&after.slug))
            .to_owned();
        let free = Query::select().expr(Expr::val(1)).and_where(Expr::exists(taken).not()).to_owned();
        batch = batch.assert(&free, SLUG_TAKEN);
    }
    let active = categories::ActiveModel {
        name: Set(after.name.clone()),
        slug: Set(after.slug.clone()),
        description: Set(after.description.clone()),
        position: Set(after.position),
        updated_at: Set(after.updated_at),
        ..Default::default()
    };
    let update = categories::Entity::update_many()
        .set(active)
        .filter(categories::Column::Id.eq(&before.id))
        .filter(categories::Column::UpdatedAt.eq(before.updated_at))
        .into_query();
    batch = batch.write(&update).guard(Expect::One, CATEGORY_CHANGED);
    let changes = json!({
        "slug": {"from": before.slug, "to": after.slug},
        "name": {"from": before.name, "to": after.name},
        "position": {"from": before.position, "to": after.position},
    });
    let entry = Entry::new(actions::TEMPLATE_CATEGORY_UPDATE, "template_category", after.id.clone()).changes(changes);
    Ok(Audited { batch, entry, answer: after })
}

/// Deletes a category (admins) that no template is filed under, also when the batch runs;
/// answers it as it was.
pub async fn delete(templates: &Templates, caller: &Caller, id: &str) -> Result<categories::Model, AppError> {
    guard::admin(caller)?;
    let audit = templates.audit();
    let (row, _) = audit
        .write(
            caller,
            || async {
                let row = find(templates.db(), id).await?;
                let used = templates::Entity::find()
                    .filter(templates::Column::CategoryId.eq(id))
                    .count(templates.db())
                    .await?;
                if used > 0 {
                    return Err(AppError::Conflict(format!(
                        "{used} template(s) are filed under `{}`; move them to another category first.",
                        row.slug
                    )));
                }
                let filed = Query::select()
                    .expr(Expr::val(1))
                    .from(templates::Entity)
                    .and_where(templates::Column::CategoryId.eq(id))
                    .to_owned();
                let delete = categories::Entity::delete_many()
                    .filter(categories::Column::Id.eq(id))
                    .filter(Expr::exists(filed).not())
                    .into_query();
                let batch = Batch::new(audit.writer().backend()).write(&delete).guard(Expect::One, CATEGORY_IN_USE);
                let changes = json!({"slug": row.slug, "name": row.name});
                let entry =
                    Entry::new(actions::TEMPLATE_CATEGORY_DELETE, "template_category", row.id.clone()).changes(changes);
                Ok(Audited { batch, entry, answer: row })
            },
            // Filed under or deleted meanwhile: read again, which tells CONFLICT from NOT_FOUND.
            |_, _| OnGuard::Retry,
        )
        .await?;
    templates.categories_changed().await;
    Ok(row)
}

/// The guard codes of category writes.
const SLUG_TAKEN: &str = "slug_taken";
const CATEGORY_CHANGED: &str = "category_changed";
const CATEGORY_IN_USE: &str = "category_in_use";

async fn find(db: &DatabaseConnection, id: &str) -> Result<categories::Model, AppError> {
    categories::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound("No such template category.".into()))
}

async fn unique_slug(db: &DatabaseConnection, slug: &str, except: Option<&str>) -> Result<(), AppError> {
    let taken = categories::Entity::find()
        .filter(categories::Column::Slug.eq(slug))
        .one(db)
        .await?
        .is_some_and(|c| Some(c.id.as_str()) != except);
    if taken {
        return Err(slug_taken(slug));
    }
    Ok(())
}

fn slug_taken(slug: &str) -> AppError {
    AppError::Conflict(format!("A template category with the slug `{slug}` already exists."))
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
