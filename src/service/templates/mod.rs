//! Templates: teams, queries, workflows and demos people save, version, share, fork, render and
//! instantiate. Access: a template is usable by its owner, by members of its team when shared
//! with the team, by anyone signed in when public (starters are public), and by admins; anyone
//! else gets NOT_FOUND. Changing one needs its owner, an editor of its team, or an admin
//! (starters: admins only).
//!
//! Templates, their versions and the categories are read through the caches (`crate::cache`),
//! prefetched at start, and invalidated by the write that changes them, after it commits.

pub mod body;
mod edit;
mod instantiate;
pub mod starters;
pub mod workflow;

use std::sync::Arc;

use entity::{team_members, template_categories, template_versions, templates};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, LikeExpr, Query},
};
use serde_json::{Map, Value};

use self::body::Kind;
pub use self::{
    edit::{Diff, TemplateInput, Validation},
    instantiate::Instantiate,
};
use super::{
    audit::AuditChain,
    page::{Page, PageRequest},
};
use crate::{
    auth::guard,
    cache::{AllCategories, Caches, TemplateId, TemplateVersion},
    domain::{Caller, Invalidation, Principal, Scope, TeamRole, UserPrincipal},
    error::{AppError, Problem},
};

pub use entity::states::TemplateVisibility as Visibility;

/// What `templates(filter)` narrows to; absent fields do not narrow.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kind: Option<Kind>,
    /// A category's slug or id.
    pub category: Option<String>,
    pub visibility: Option<Visibility>,
    pub starter: Option<bool>,
    /// Words in the name, slug or description (case-insensitive).
    pub search: Option<String>,
}

/// A template the caller may use, at one version.
#[derive(Clone)]
pub struct Resolved {
    pub template: Arc<templates::Model>,
    pub kind: Kind,
    pub version: Arc<template_versions::Model>,
}

impl Resolved {
    /// The version's declarations (checked when it was saved).
    pub fn variables(&self) -> Vec<body::Variable> {
        serde_json::from_value(self.version.variables.clone()).unwrap_or_default()
    }

    /// `given` checked against the declarations, defaults filled in.
    pub fn values(&self, given: &Value) -> Result<Map<String, Value>, AppError> {
        body::values(&self.variables(), given).map_err(AppError::invalid)
    }
}

/// Who asks, as far as templates care.
struct Viewer<'a> {
    caller: &'a Caller,
    user: &'a UserPrincipal,
    /// The one team an API key is restricted to.
    key_team: Option<&'a str>,
}

impl Viewer<'_> {
    fn is_admin(&self) -> bool {
        guard::sees_all(self.caller) && self.key_team.is_none()
    }

    fn owns(&self, template: &templates::Model) -> bool {
        self.key_team.is_none() && template.owner_id.as_deref() == Some(self.user.id.as_str())
    }
}

/// Templates over the database, read through the caches.
pub struct Templates {
    db: DatabaseConnection,
    /// Commits every change to templates and categories with its audit row.
    audit: Arc<AuditChain>,
    caches: Arc<Caches>,
    /// What bodies may hold: the providers a TEAM body's agents may use, the loop cap.
    allowed: body::Allowed,
}

impl Templates {
    pub fn new(db: DatabaseConnection, audit: Arc<AuditChain>, caches: Arc<Caches>, allowed: body::Allowed) -> Self {
        Self { db, audit, caches, allowed }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn audit(&self) -> &AuditChain {
        &self.audit
    }

    /// Loads the categories and every starter with its current version into the caches.
    pub async fn prefetch(&self) -> Result<usize, AppError> {
        self.categories().await?;
        let starters = templates::Entity::find().filter(templates::Column::IsStarter.eq(true)).all(&self.db).await?;
        let count = starters.len();
        for template in starters {
            self.version_of(&template.id, template.version).await?;
            self.caches.templates.insert(TemplateId(template.id.clone()), Arc::new(template)).await;
        }
        Ok(count)
    }

    /// Every category, in display order (read through the cache).
    pub async fn categories(&self) -> Result<Arc<Vec<template_categories::Model>>, AppError> {
        let load = async {
            let all = template_categories::Entity::find()
                .order_by_asc(template_categories::Column::Position)
                .order_by_asc(template_categories::Column::Slug)
                .all(&self.db)
                .await?;
            Ok(Arc::new(all))
        };
        self.caches.template_categories.get_or_load(AllCategories, load).await
    }

    /// Forgets the cached categories (after a category write commits).
    pub async fn categories_changed(&self) {
        self.caches.invalidate(Invalidation::CategoriesChanged).await;
    }

    /// Forgets a cached template (after a write to it commits).
    async fn changed(&self, id: &str) {
        self.caches.invalidate(Invalidation::TemplateChanged(id.to_string())).await;
    }

    async fn row(&self, id: &str) -> Result<Option<Arc<templates::Model>>, AppError> {
        let load = async { Ok(templates::Entity::find_by_id(id).one(&self.db).await?.map(Arc::new)) };
        self.caches.templates.get_or_load_some(TemplateId(id.to_string()), load).await
    }

    /// Version `version` of template `id`, if it has it, from the cache (versions never change);
    /// no access check.
    pub async fn version_of(&self, id: &str, version: i32) -> Result<Option<Arc<template_versions::Model>>, AppError> {
        let load = async {
            let row = template_versions::Entity::find_by_id((id.to_string(), version)).one(&self.db).await?;
            Ok(row.map(Arc::new))
        };
        let key = TemplateVersion { template_id: id.to_string(), version };
        self.caches.template_versions.get_or_load_some(key, load).await
    }

    /// The template with this id (or slug) at `version` (the current one when absent), if the
    /// caller may use it; NOT_FOUND otherwise, and for a version it does not have.
    pub async fn resolve(&self, caller: &Caller, id_or_slug: &str, version: Option<i32>) -> Result<Resolved, AppError> {
        let viewer = viewer(caller, Scope::TemplatesRead)?;
        let template = self.visible(&viewer, id_or_slug).await?;
        self.at(template, version).await
    }

    /// `template` at `version` (the current one when absent).
    async fn at(&self, template: Arc<templates::Model>, version: Option<i32>) -> Result<Resolved, AppError> {
        let number = version.unwrap_or(template.version);
        let version = self.version_of(&template.id, number).await?.ok_or_else(|| {
            AppError::NotFound(format!("The template has no version {number}; its latest is {}.", template.version))
        })?;
        let kind = template.kind;
        Ok(Resolved { template, kind, version })
    }

    /// The template if the caller may use it.
    async fn visible(&self, viewer: &Viewer<'_>, id_or_slug: &str) -> Result<Arc<templates::Model>, AppError> {
        let not_found = || AppError::NotFound("No such template.".into());
        let row = if id_or_slug.starts_with("tpl_") {
            self.row(id_or_slug).await?
        } else {
            let found = templates::Entity::find()
                .select_only()
                .column(templates::Column::Id)
                .filter(templates::Column::Slug.eq(id_or_slug))
                .into_tuple::<String>()
                .one(&self.db)
                .await?;
            match found {
                Some(id) => self.row(&id).await?,
                None => None,
            }
        };
        let row = row.ok_or_else(not_found)?;
        if may_use(&self.db, viewer, &row).await? { Ok(row) } else { Err(not_found()) }
    }

    /// A page of the templates the caller may use, oldest first.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &Filter,
        page: &PageRequest,
    ) -> Result<Page<Arc<templates::Model>>, AppError> {
        let viewer = viewer(caller, Scope::TemplatesRead)?;
        let mut query = templates::Entity::find().filter(visible_condition(&viewer));
        if let Some(kind) = filter.kind {
            query = query.filter(templates::Column::Kind.eq(kind));
        }
        if let Some(category) = &filter.category {
            let id = self
                .categories()
                .await?
                .iter()
                .find(|c| c.slug == *category || c.id == *category)
                .map(|c| c.id.clone());
            query = query.filter(templates::Column::CategoryId.eq(id.unwrap_or_default()));
        }
        if let Some(visibility) = filter.visibility {
            query = query.filter(templates::Column::Visibility.eq(visibility));
        }
        if let Some(starter) = filter.starter {
            query = query.filter(templates::Column::IsStarter.eq(starter));
        }
        if let Some(search) = filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            query = query.filter(search_condition(search));
        }
        if let Some(after) = &page.after {
            query = query.filter(templates::Column::Id.gt(after.as_str()));
        }
        let rows = query.order_by_asc(templates::Column::Id).limit(page.first + 1).all(&self.db).await?;
        Ok(page.page(rows.into_iter().map(Arc::new).collect()))
    }

    /// The current version of each template, in one query for those not cached.
    pub async fn current_versions(
        &self,
        rows: &[Arc<templates::Model>],
    ) -> Result<Vec<Arc<template_versions::Model>>, AppError> {
        let mut missing = Condition::any();
        let mut any_missing = false;
        for row in rows {
            if !self.caches.template_versions.contains(&version_key(row)) {
                any_missing = true;
                missing = missing.add(
                    Condition::all()
                        .add(template_versions::Column::TemplateId.eq(&row.id))
                        .add(template_versions::Column::Version.eq(row.version)),
                );
            }
        }
        if any_missing {
            for version in template_versions::Entity::find().filter(missing).all(&self.db).await? {
                let key = TemplateVersion { template_id: version.template_id.clone(), version: version.version };
                self.caches.template_versions.insert(key, Arc::new(version)).await;
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let version = self
                .version_of(&row.id, row.version)
                .await?
                .ok_or_else(|| AppError::internal(format!("template {} has no version {}", row.id, row.version)))?;
            out.push(version);
        }
        Ok(out)
    }
}

fn version_key(row: &templates::Model) -> TemplateVersion {
    TemplateVersion { template_id: row.id.clone(), version: row.version }
}

/// The caller as a template user; anonymous callers and keys without `scope` are refused.
fn viewer(caller: &Caller, scope: Scope) -> Result<Viewer<'_>, AppError> {
    match &caller.principal {
        Principal::User(user) => Ok(Viewer { caller, user, key_team: None }),
        Principal::ApiKey(key) => {
            guard::key_scope(caller, scope)?;
            Ok(Viewer { caller, user: &key.owner, key_team: key.team_id.as_deref() })
        }
        Principal::Anonymous | Principal::System(_) => Err(AppError::Unauthenticated("Sign in to do this.".into())),
    }
}

/// The caller's role on `team_id` as a member (admins as owners); an API key only on its team.
async fn member_role<C: ConnectionTrait>(
    conn: &C,
    viewer: &Viewer<'_>,
    team_id: &str,
) -> Result<Option<TeamRole>, AppError> {
    guard::member_role(conn, viewer.caller, team_id).await
}

async fn may_use<C: ConnectionTrait>(
    conn: &C,
    viewer: &Viewer<'_>,
    template: &templates::Model,
) -> Result<bool, AppError> {
    if viewer.is_admin() || template.is_starter || viewer.owns(template) {
        return Ok(true);
    }
    Ok(match template.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        Visibility::Team => match &template.team_id {
            Some(team_id) => member_role(conn, viewer, team_id).await?.is_some(),
            None => false,
        },
    })
}

/// The SQL form of `may_use`.
fn visible_condition(viewer: &Viewer<'_>) -> Condition {
    if viewer.is_admin() {
        return Condition::all();
    }
    let teams = match viewer.key_team {
        Some(team) => templates::Column::TeamId.eq(team),
        None => templates::Column::TeamId.in_subquery(
            Query::select()
                .column(team_members::Column::TeamId)
                .from(team_members::Entity)
                .and_where(team_members::Column::UserId.eq(&viewer.user.id))
                .to_owned(),
        ),
    };
    let mut visible = Condition::any()
        .add(templates::Column::IsStarter.eq(true))
        .add(templates::Column::Visibility.eq(Visibility::Public))
        .add(Condition::all().add(templates::Column::Visibility.eq(Visibility::Team)).add(teams));
    if viewer.key_team.is_none() {
        visible = visible.add(templates::Column::OwnerId.eq(&viewer.user.id));
    }
    visible
}

/// Names, slugs or descriptions containing `search`, ignoring case; `%` and `_` match themselves.
fn search_condition(search: &str) -> Condition {
    let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let like = |column: templates::Column| {
        Expr::expr(Func::lower(Expr::col(column))).like(LikeExpr::new(pattern.clone()).escape('\\'))
    };
    Condition::any()
        .add(like(templates::Column::Name))
        .add(like(templates::Column::Slug))
        .add(like(templates::Column::Description))
}

/// One problem list as a BAD_USER_INPUT error.
fn refuse(problems: Vec<Problem>) -> AppError {
    AppError::invalid(problems)
}
