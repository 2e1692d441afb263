//! Saving templates: the dry-run check an editor calls on each keystroke, create, update (every
//! save a new immutable version), restore, fork, delete, and reading history and diffs.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use entity::{template_versions, templates};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TryIntoModel, sea_query::OnConflict,
};
use serde_json::{Map, Value, json};

use super::{
    Resolved, Templates, Viewer, Visibility,
    body::{self, Checked, Kind, StepSource},
    member_role, refuse, viewer,
};
use crate::{
    db,
    domain::{Caller, Scope, TeamRole},
    error::{AppError, Problem},
    service::{
        audit::{self, Entry, actions},
        name::Name,
        page::{Page, PageRequest},
        spec_diff,
        teams::slugify,
    },
};

/// A template as an editor sends it; on update, absent fields keep their value.
#[derive(Clone, Debug, Default)]
pub struct TemplateInput {
    /// Required to create; cannot change afterwards.
    pub kind: Option<Kind>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// A category's id or slug.
    pub category: Option<String>,
    pub visibility: Option<Visibility>,
    /// The team to share with (visibility TEAM).
    pub team_id: Option<String>,
    pub body: Option<Value>,
    pub variables: Option<Value>,
    /// What this save changed, kept with the version.
    pub changelog: Option<String>,
}

/// What `validateTemplate` answers: every problem, and the body as it would be stored.
pub struct Validation {
    pub problems: Vec<Problem>,
    pub checked: Option<Checked>,
}

/// What changed from one version to another.
pub struct Diff {
    pub operations: Vec<Value>,
    pub summary: Vec<String>,
}

/// An input that passed its checks, with its category looked up.
struct Accepted {
    checked: Checked,
    category_id: Option<String>,
}

impl Templates {
    /// Checks a template as `createTemplate` would, saving nothing.
    pub async fn validate(&self, caller: &Caller, input: &TemplateInput) -> Result<Validation, AppError> {
        let viewer = viewer(caller, Scope::TemplatesRead)?;
        let mut problems = Vec::new();
        let kind = input.kind.or_else(|| {
            problems.push(Problem::new("input.kind", "is required"));
            None
        });
        let checked = match kind {
            Some(kind) => self.check(caller, &viewer, kind, input, None, &mut problems).await?,
            None => None,
        };
        Ok(Validation { checked: checked.map(|c| c.checked).filter(|_| problems.is_empty()), problems })
    }

    /// Every problem with `input` for a template of `kind`; `current` fills what an update
    /// leaves out.
    async fn check(
        &self,
        caller: &Caller,
        viewer: &Viewer<'_>,
        kind: Kind,
        input: &TemplateInput,
        current: Option<&Resolved>,
        problems: &mut Vec<Problem>,
    ) -> Result<Option<Accepted>, AppError> {
        match (&input.name, current) {
            (Some(name), _) => {
                Name::check("input.name", name, 100, problems);
            }
            (None, None) => problems.push(Problem::new("input.name", "is required")),
            _ => {}
        }
        if input.description.as_ref().is_some_and(|d| d.chars().count() > 2_000) {
            problems.push(Problem::new("input.description", "must be at most 2000 characters"));
        }
        if input.changelog.as_ref().is_some_and(|c| c.chars().count() > 500) {
            problems.push(Problem::new("input.changelog", "must be at most 500 characters"));
        }
        let category_id = match &input.category {
            Some(wanted) => {
                let found = self
                    .categories()
                    .await?
                    .iter()
                    .find(|c| c.id == *wanted || c.slug == *wanted)
                    .map(|c| c.id.clone());
                if found.is_none() {
                    problems.push(Problem::new("input.category", format!("there is no category `{wanted}`")));
                }
                found
            }
            None => current.and_then(|c| c.template.category_id.clone()),
        };
        self.check_sharing(viewer, input, current, problems).await?;
        let body = input.body.clone().or_else(|| current.map(|c| c.version.body.clone()));
        let variables = input.variables.clone().or_else(|| current.map(|c| c.version.variables.clone()));
        let Some(body) = body else {
            problems.push(Problem::new("input.body", "is required"));
            return Ok(None);
        };
        let checked = match body::check(kind, &body, &variables.unwrap_or(Value::Null), &self.providers) {
            Ok(checked) => checked,
            Err(found) => {
                problems.extend(found.into_iter().map(|p| Problem { path: format!("input.{}", p.path), ..p }));
                return Ok(None);
            }
        };
        if kind == Kind::Workflow {
            self.check_steps(caller, &checked.body, problems).await?;
        }
        Ok(Some(Accepted { checked, category_id }))
    }

    /// A TEAM visibility needs a team the caller edits.
    async fn check_sharing(
        &self,
        viewer: &Viewer<'_>,
        input: &TemplateInput,
        current: Option<&Resolved>,
        problems: &mut Vec<Problem>,
    ) -> Result<(), AppError> {
        let visibility = input.visibility.or_else(|| current.map(|c| c.template.visibility));
        let team_id = input.team_id.clone().or_else(|| current.and_then(|c| c.template.team_id.clone()));
        if visibility == Some(Visibility::Team) && team_id.is_none() {
            problems.push(Problem::new("input.teamId", "is required to share a template with a team"));
        }
        if let Some(team_id) = &input.team_id
            && member_role(&self.db, viewer, team_id).await?.is_none_or(|role| role < TeamRole::Editor)
        {
            problems.push(Problem::new("input.teamId", format!("there is no team `{team_id}` you edit")));
        }
        Ok(())
    }

    /// Every step that runs a template names a QUERY template the caller may use.
    async fn check_steps(&self, caller: &Caller, body: &Value, problems: &mut Vec<Problem>) -> Result<(), AppError> {
        for (i, step) in body::steps(body).into_iter().enumerate() {
            let StepSource::Template { template, version, .. } = step.source else {
                continue;
            };
            let path = format!("input.body.steps[{i}].template");
            match self.resolve(caller, &template, version).await {
                Ok(found) if found.kind == Kind::Query => {}
                Ok(found) => problems.push(Problem::new(
                    path,
                    format!(
                        "`{template}` is a {} template; steps run QUERY templates",
                        found.kind.to_string().to_uppercase()
                    ),
                )),
                Err(AppError::NotFound(message)) => {
                    problems.push(Problem::new(path, format!("`{template}`: {message}")));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// A new template owned by the caller, at version 1.
    pub async fn create(&self, caller: &Caller, input: TemplateInput) -> Result<Resolved, AppError> {
        let viewer = writer(caller)?;
        let mut problems = Vec::new();
        let kind = input.kind.or_else(|| {
            problems.push(Problem::new("input.kind", "is required"));
            None
        });
        let checked = match kind {
            Some(kind) => self.check(caller, &viewer, kind, &input, None, &mut problems).await?,
            None => None,
        };
        let (Some(kind), Some(checked), true) = (kind, checked, problems.is_empty()) else {
            return Err(refuse(problems));
        };
        let name = input.name.unwrap_or_default().trim().to_string();
        let new = New {
            kind,
            name,
            description: input.description,
            category_id: checked.category_id,
            visibility: input.visibility.unwrap_or(Visibility::Private),
            team_id: input.team_id,
            checked: checked.checked,
            changelog: input.changelog.or_else(|| Some("Created".into())),
            forked_from: None,
        };
        self.insert(caller, &viewer, new, actions::TEMPLATE_CREATE).await
    }

    async fn insert(
        &self,
        caller: &Caller,
        viewer: &Viewer<'_>,
        new: New,
        action: &'static str,
    ) -> Result<Resolved, AppError> {
        let id = format!("tpl_{}", uuid::Uuid::now_v7().simple());
        let now = Utc::now().trunc_subsecs(6);
        let txn = db::begin_write(&self.db).await?;
        let team_id = if new.visibility == Visibility::Team { new.team_id } else { None };
        let slug = slugify(&new.name);
        let row = templates::ActiveModel {
            id: Set(id.clone()),
            owner_id: Set(Some(viewer.user.id.clone())),
            team_id: Set(team_id.clone()),
            kind: Set(new.kind),
            category_id: Set(new.category_id),
            slug: Set(slug.clone()),
            name: Set(new.name),
            description: Set(new.description),
            visibility: Set(new.visibility),
            version: Set(1),
            is_starter: Set(false),
            starter_digest: Set(None),
            forked_from_id: Set(new.forked_from.as_ref().map(|(id, _)| id.clone())),
            forked_from_version: Set(new.forked_from.as_ref().map(|(_, v)| *v)),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let template = insert_with_free_slug(&txn, row, &slug, &id).await?;
        let version = record(&txn, &id, 1, new.checked, new.changelog, &viewer.user.id).await?;
        let mut changes = json!({"kind": template.kind.to_string(), "name": template.name, "slug": template.slug,
            "visibility": template.visibility.to_string(), "version": 1});
        if let Some(from) = &template.forked_from_id {
            changes["forkedFrom"] = json!({"id": from, "version": template.forked_from_version});
        }
        audit::allowed(&txn, caller, entry(action, &template).changes(changes)).await?;
        txn.commit().await?;
        Ok(Resolved { template: Arc::new(template), kind: new.kind, version: Arc::new(version) })
    }

    /// Saves a new version (and the other fields given). `expected_version`, when given, must
    /// be the current version: another one means someone saved since (CONFLICT).
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        input: TemplateInput,
        expected_version: Option<i32>,
    ) -> Result<Resolved, AppError> {
        let viewer = writer(caller)?;
        let current = self.changeable(&viewer, id).await?;
        let mut problems = Vec::new();
        if input.kind.is_some_and(|kind| kind != current.kind) {
            problems.push(Problem::new("input.kind", "cannot change; fork the template to make another kind"));
        }
        let checked = self.check(caller, &viewer, current.kind, &input, Some(&current), &mut problems).await?;
        let (Some(checked), true) = (checked, problems.is_empty()) else {
            return Err(refuse(problems));
        };
        let changelog = input.changelog.clone();
        self.save(caller, &current.template.id, expected_version, actions::TEMPLATE_UPDATE, |template| {
            let mut changed = Map::new();
            if let Some(name) = &input.name {
                changed.insert("name".into(), name.trim().into());
                template.name = Set(name.trim().to_string());
            }
            if let Some(description) = &input.description {
                changed.insert("description".into(), description.clone().into());
                template.description = Set(Some(description.clone()));
            }
            if input.category.is_some() {
                changed.insert("category".into(), checked.category_id.clone().into());
                template.category_id = Set(checked.category_id.clone());
            }
            if let Some(visibility) = input.visibility {
                changed.insert("visibility".into(), visibility.to_string().into());
                template.visibility = Set(visibility);
                if visibility != Visibility::Team {
                    template.team_id = Set(None);
                }
            }
            if let Some(team_id) = &input.team_id {
                changed.insert("teamId".into(), team_id.clone().into());
                template.team_id = Set(Some(team_id.clone()));
            }
            (checked.checked, changelog, changed)
        })
        .await
    }

    /// A new version equal to `version` (history is never rewritten).
    pub async fn restore(
        &self,
        caller: &Caller,
        id: &str,
        version: i32,
        changelog: Option<String>,
    ) -> Result<Resolved, AppError> {
        let viewer = writer(caller)?;
        let current = self.changeable(&viewer, id).await?;
        if version == current.template.version {
            return Err(AppError::BadUserInput {
                message: format!("Version {version} is already the current version."),
                problems: vec![Problem::new("version", "is the current version")],
            });
        }
        let old = self.at(current.template.clone(), Some(version)).await?;
        let checked = Checked {
            body: old.version.body.clone(),
            variables: serde_json::from_value(old.version.variables.clone()).unwrap_or_default(),
        };
        let changelog = changelog.or_else(|| Some(format!("Restored version {version}")));
        self.save(caller, id, None, actions::TEMPLATE_RESTORE, |_| {
            (checked, changelog, Map::from_iter([("restored".to_string(), json!(version))]))
        })
        .await
    }

    /// Appends the next version under a row lock, so concurrent saves take turns and number
    /// versions without gaps. `change` sets the row's other fields and says what it changed.
    async fn save(
        &self,
        caller: &Caller,
        id: &str,
        expected_version: Option<i32>,
        action: &'static str,
        change: impl FnOnce(&mut templates::ActiveModel) -> (Checked, Option<String>, Map<String, Value>),
    ) -> Result<Resolved, AppError> {
        let txn = db::begin_write(&self.db).await?;
        let row = templates::Entity::find_by_id(id)
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| AppError::NotFound("No such template.".into()))?;
        let current = row.version;
        if let Some(expected) = expected_version
            && expected != current
        {
            return Err(AppError::Conflict(format!(
                "The template is at version {current}, not {expected}: reload it and apply your change again."
            )));
        }
        let kind = row.kind;
        let mut active: templates::ActiveModel = row.into();
        let (checked, changelog, mut changed) = change(&mut active);
        let author = caller.principal.user_id().unwrap_or_default().to_string();
        let version = record(&txn, id, current + 1, checked, changelog, &author).await?;
        changed.insert("version".into(), json!({"from": current, "to": current + 1}));
        active.version = Set(current + 1);
        active.updated_at = Set(Utc::now().trunc_subsecs(6));
        let template = active.update(&txn).await?;
        audit::allowed(&txn, caller, entry(action, &template).changes(changed.into())).await?;
        txn.commit().await?;
        self.changed(id).await;
        Ok(Resolved { template: Arc::new(template), kind, version: Arc::new(version) })
    }

    /// A copy the caller owns of a template they may use (its current version unless
    /// `version`), private unless asked otherwise.
    pub async fn fork(
        &self,
        caller: &Caller,
        id: &str,
        version: Option<i32>,
        input: TemplateInput,
    ) -> Result<Resolved, AppError> {
        let source = self.resolve(caller, id, version).await?;
        let viewer = writer(caller)?;
        let mut problems = Vec::new();
        let name = input.name.clone().unwrap_or_else(|| format!("{} (fork)", source.template.name));
        let input = TemplateInput {
            kind: None,
            name: Some(name.chars().take(100).collect()),
            body: Some(source.version.body.clone()),
            variables: Some(source.version.variables.clone()),
            category: input.category.or_else(|| source.template.category_id.clone()),
            description: input.description.or_else(|| source.template.description.clone()),
            ..input
        };
        let checked = self.check(caller, &viewer, source.kind, &input, None, &mut problems).await?;
        let (Some(checked), true) = (checked, problems.is_empty()) else {
            return Err(refuse(problems));
        };
        let from = (source.template.id.clone(), source.version.version);
        let new = New {
            kind: source.kind,
            name: input.name.unwrap_or_default().trim().to_string(),
            description: input.description,
            category_id: checked.category_id,
            visibility: input.visibility.unwrap_or(Visibility::Private),
            team_id: input.team_id,
            checked: checked.checked,
            changelog: Some(format!("Forked from {} version {}", source.template.slug, from.1)),
            forked_from: Some(from),
        };
        self.insert(caller, &viewer, new, actions::TEMPLATE_FORK).await
    }

    /// Deletes a template and its history; answers it as it was.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Arc<templates::Model>, AppError> {
        let viewer = writer(caller)?;
        let current = self.changeable(&viewer, id).await?;
        let template = current.template;
        let txn = db::begin_write(&self.db).await?;
        template_versions::Entity::delete_many()
            .filter(template_versions::Column::TemplateId.eq(&template.id))
            .exec(&txn)
            .await?;
        templates::Entity::delete_by_id(&template.id).exec(&txn).await?;
        let changes = json!({"kind": template.kind.to_string(), "name": template.name, "slug": template.slug, "version": template.version});
        audit::allowed(&txn, caller, entry(actions::TEMPLATE_DELETE, &template).changes(changes)).await?;
        txn.commit().await?;
        self.changed(&template.id).await;
        Ok(template)
    }

    /// A template's versions, newest first.
    pub async fn versions(
        &self,
        caller: &Caller,
        id: &str,
        page: &PageRequest,
    ) -> Result<Page<template_versions::Model>, AppError> {
        let template = self.resolve(caller, id, None).await?.template;
        let mut query =
            template_versions::Entity::find().filter(template_versions::Column::TemplateId.eq(&template.id));
        if let Some(after) = &page.after {
            let after: i32 =
                after.parse().map_err(|_| AppError::bad_input("`after` is not a cursor this API returned"))?;
            query = query.filter(template_versions::Column::Version.lt(after));
        }
        let rows = query.order_by_desc(template_versions::Column::Version).limit(page.first + 1).all(&self.db).await?;
        Ok(page.page(rows))
    }

    /// What changed from version `from` to version `to`, as JSON Patch over
    /// `{body, variables}` and a line per change.
    pub async fn diff(&self, caller: &Caller, id: &str, from: i32, to: i32) -> Result<Diff, AppError> {
        let old = self.resolve(caller, id, Some(from)).await?;
        let new = self.at(old.template.clone(), Some(to)).await?;
        let document = |v: &template_versions::Model| json!({"body": v.body, "variables": v.variables});
        let (operations, summary) = spec_diff::diff(&document(&old.version), &document(&new.version));
        Ok(Diff { operations, summary })
    }

    /// The current version of a template the caller may change: NOT_FOUND when they may not
    /// see it, FORBIDDEN when they may only use it.
    async fn changeable(&self, viewer: &Viewer<'_>, id: &str) -> Result<Resolved, AppError> {
        let template = self.visible(viewer, id).await?;
        if template.is_starter && !viewer.is_admin() {
            return Err(AppError::Forbidden(
                "Starter templates are changed by admins only; fork it to make your own.".into(),
            ));
        }
        let team_editor = match (&template.team_id, template.visibility) {
            (Some(team_id), Visibility::Team) => {
                member_role(&self.db, viewer, team_id).await?.is_some_and(|r| r >= TeamRole::Editor)
            }
            _ => false,
        };
        if !(viewer.is_admin() || viewer.owns(&template) || team_editor) {
            return Err(AppError::Forbidden(
                "You may use this template but not change it; fork it to make your own.".into(),
            ));
        }
        self.at(template, None).await
    }
}

/// A template about to be inserted.
struct New {
    kind: Kind,
    name: String,
    description: Option<String>,
    category_id: Option<String>,
    visibility: Visibility,
    team_id: Option<String>,
    checked: Checked,
    changelog: Option<String>,
    forked_from: Option<(String, i32)>,
}

/// The caller as someone who may save templates: signed in, or an API key with
/// `templates:write` that is not restricted to one team.
fn writer(caller: &Caller) -> Result<Viewer<'_>, AppError> {
    let viewer = viewer(caller, Scope::TemplatesWrite)?;
    if viewer.key_team.is_some() {
        return Err(AppError::Forbidden("This API key is restricted to one team.".into()));
    }
    Ok(viewer)
}

fn entry(action: &'static str, template: &templates::Model) -> Entry {
    let entry = Entry::new(action, "template", template.id.clone());
    match &template.team_id {
        Some(team_id) => entry.team(team_id.clone()),
        None => entry,
    }
}

/// Appends version `version` of a template.
pub(super) async fn record<C: ConnectionTrait>(
    conn: &C,
    template_id: &str,
    version: i32,
    checked: Checked,
    changelog: Option<String>,
    author_id: &str,
) -> Result<template_versions::Model, AppError> {
    let variables = serde_json::to_value(&checked.variables).map_err(AppError::internal)?;
    Ok(template_versions::ActiveModel {
        template_id: Set(template_id.to_string()),
        version: Set(version),
        body: Set(checked.body),
        variables: Set(variables),
        changelog: Set(changelog),
        author_id: Set((!author_id.is_empty()).then(|| author_id.to_string())),
        created_at: Set(Utc::now().trunc_subsecs(6)),
    }
    .insert(conn)
    .await?)
}

/// Inserts `template` under `slug` or, when a starter may ship with that slug or another
/// template holds it, under the slug followed by the end of `id`. The insert itself detects the
/// clash, so a template of the same name that a concurrent transaction is creating (which no
/// read beforehand can see) counts too.
async fn insert_with_free_slug<C: ConnectionTrait>(
    conn: &C,
    mut template: templates::ActiveModel,
    slug: &str,
    id: &str,
) -> Result<templates::Model, AppError> {
    if !super::starters::all().iter().any(|s| s.slug == slug) {
        let plain = OnConflict::column(templates::Column::Slug).do_nothing().to_owned();
        if templates::Entity::insert(template.clone()).on_conflict(plain).exec_without_returning(conn).await? == 1 {
            return Ok(template.try_into_model()?);
        }
    }
    template.slug = Set(format!("{slug}-{}", &id[id.len() - 6..]));
    templates::Entity::insert(template.clone()).exec_without_returning(conn).await?;
    Ok(template.try_into_model()?)
}
