//! Saving templates: the dry-run check an editor calls on each keystroke, create, update (every
//! save a new immutable version), restore, fork, delete, and reading history and diffs.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use entity::{template_versions, templates};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, Iterable, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, sea_query::OnConflict,
};
use serde_json::{Map, Value, json};

use super::{
    Resolved, Templates, Viewer, Visibility,
    body::{self, Checked, Kind, StepSource},
    member_role, refuse, viewer,
};
use crate::{
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, Scope, TeamRole},
    error::{AppError, Problem},
    service::{
        audit::{Audited, Entry, actions},
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
        let checked = match body::check(kind, &body, &variables.unwrap_or(Value::Null), &self.allowed) {
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
        for step in body::steps(body) {
            let StepSource::Template { template, version, .. } = step.source else {
                continue;
            };
            let path = format!("input.{}.template", step.path);
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

    /// Inserts a new template at version 1 under its name's slug when that is free (and no
    /// starter ships with it), else under the slug followed by the end of its id. The insert is
    /// guarded on the slug read free, so a template of the same name made meanwhile (by another
    /// instance) has the template read and decided again.
    async fn insert(
        &self,
        caller: &Caller,
        viewer: &Viewer<'_>,
        new: New,
        action: &'static str,
    ) -> Result<Resolved, AppError> {
        let team_id = if new.visibility == Visibility::Team { new.team_id.clone() } else { None };
        let plain = slugify(&new.name);
        let (resolved, _) = self
            .audit
            .write(
                caller,
                || async {
                    let id = format!("tpl_{}", uuid::Uuid::now_v7().simple());
                    let now = Utc::now().trunc_subsecs(6);
                    let shipped = super::starters::all().iter().any(|s| s.slug == plain);
                    let slug = if shipped || slug_taken(&self.db, &plain).await? {
                        format!("{plain}-{}", &id[id.len() - 6..])
                    } else {
                        plain.clone()
                    };
                    let template = templates::Model {
                        id: id.clone(),
                        owner_id: Some(viewer.user.id.clone()),
                        team_id: team_id.clone(),
                        kind: new.kind,
                        category_id: new.category_id.clone(),
                        slug,
                        name: new.name.clone(),
                        description: new.description.clone(),
                        visibility: new.visibility,
                        version: 1,
                        is_starter: false,
                        starter_digest: None,
                        forked_from_id: new.forked_from.as_ref().map(|(id, _)| id.clone()),
                        forked_from_version: new.forked_from.as_ref().map(|(_, v)| *v),
                        created_at: now,
                        updated_at: now,
                    };
                    let version =
                        version_row(&id, 1, new.checked.clone(), new.changelog.clone(), &viewer.user.id, now)?;
                    let free_slug = OnConflict::column(templates::Column::Slug).do_nothing().to_owned();
                    let insert = templates::Entity::insert(templates::ActiveModel::from(template.clone()))
                        .on_conflict(free_slug)
                        .into_query();
                    let batch =
                        Batch::new(self.audit.writer().backend()).write(&insert).guard(Expect::One, SLUG_TAKEN).write(
                            &template_versions::Entity::insert(template_versions::ActiveModel::from(version.clone()))
                                .into_query(),
                        );
                    let mut changes = json!({"kind": template.kind.to_string(), "name": template.name,
                        "slug": template.slug, "visibility": template.visibility.to_string(), "version": 1});
                    if let Some(from) = &template.forked_from_id {
                        changes["forkedFrom"] = json!({"id": from, "version": template.forked_from_version});
                    }
                    let entry = entry(action, &template).changes(changes);
                    let answer = Resolved { template: Arc::new(template), kind: new.kind, version: Arc::new(version) };
                    Ok(Audited { batch, entry, answer })
                },
                // The slug was taken meanwhile: read again, which finds it taken.
                |_, _| OnGuard::Retry,
            )
            .await?;
        Ok(resolved)
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
                template.name = name.trim().to_string();
            }
            if let Some(description) = &input.description {
                changed.insert("description".into(), description.clone().into());
                template.description = Some(description.clone());
            }
            if input.category.is_some() {
                changed.insert("category".into(), checked.category_id.clone().into());
                template.category_id = checked.category_id.clone();
            }
            if let Some(visibility) = input.visibility {
                changed.insert("visibility".into(), visibility.to_string().into());
                template.visibility = visibility;
                if visibility != Visibility::Team {
                    template.team_id = None;
                }
            }
            if let Some(team_id) = &input.team_id {
                changed.insert("teamId".into(), team_id.clone().into());
                template.team_id = Some(team_id.clone());
            }
            (checked.checked.clone(), changelog.clone(), changed)
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
            (checked.clone(), changelog.clone(), Map::from_iter([("restored".to_string(), json!(version))]))
        })
        .await
    }

    /// Appends the next version: the row read, `change` applied to it, only the columns that
    /// changed written, guarded on the version read, so concurrent saves number versions without
    /// gaps (one that met another reads and decides again). `change` sets the row's other fields
    /// and says what it changed.
    async fn save(
        &self,
        caller: &Caller,
        id: &str,
        expected_version: Option<i32>,
        action: &'static str,
        change: impl Fn(&mut templates::Model) -> (Checked, Option<String>, Map<String, Value>),
    ) -> Result<Resolved, AppError> {
        let (resolved, _) = self
            .audit
            .write(
                caller,
                || async {
                    let before = templates::Entity::find_by_id(id)
                        .one(&self.db)
                        .await?
                        .ok_or_else(|| AppError::NotFound("No such template.".into()))?;
                    let current = before.version;
                    if let Some(expected) = expected_version
                        && expected != current
                    {
                        return Err(AppError::Conflict(format!(
                            "The template is at version {current}, not {expected}: reload it and apply your change again."
                        )));
                    }
                    let mut after = before.clone();
                    let (checked, changelog, mut changed) = change(&mut after);
                    let author = caller.principal.user_id().unwrap_or_default().to_string();
                    let now = Utc::now().trunc_subsecs(6);
                    let version = version_row(id, current + 1, checked, changelog, &author, now)?;
                    changed.insert("version".into(), json!({"from": current, "to": current + 1}));
                    after.version = current + 1;
                    after.updated_at = now;
                    let update = templates::Entity::update_many()
                        .set(changed_columns(&before, &after))
                        .filter(templates::Column::Id.eq(id))
                        .filter(templates::Column::Version.eq(current))
                        .into_query();
                    let insert_version =
                        template_versions::Entity::insert(template_versions::ActiveModel::from(version.clone()))
                            .into_query();
                    let batch = Batch::new(self.audit.writer().backend())
                        .write(&update)
                        .guard(Expect::One, TEMPLATE_VERSION)
                        .write(&insert_version);
                    let entry = entry(action, &after).changes(changed.into());
                    let answer = Resolved { kind: after.kind, template: Arc::new(after), version: Arc::new(version) };
                    Ok(Audited { batch, entry, answer })
                },
                // Saved meanwhile: read again (an `expectedVersion` that no longer matches is
                // then answered with the version the template is at).
                |_, _| OnGuard::Retry,
            )
            .await?;
        self.changed(id).await;
        Ok(resolved)
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

    /// Deletes a template and its history, guarded on the version read; answers it as it was.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Arc<templates::Model>, AppError> {
        let viewer = writer(caller)?;
        let id = self.changeable(&viewer, id).await?.template.id.clone();
        let (template, _) = self
            .audit
            .write(
                caller,
                || async {
                    let template = templates::Entity::find_by_id(&id)
                        .one(&self.db)
                        .await?
                        .ok_or_else(|| AppError::NotFound("No such template.".into()))?;
                    let versions = template_versions::Entity::delete_many()
                        .filter(template_versions::Column::TemplateId.eq(&id))
                        .into_query();
                    let delete = templates::Entity::delete_many()
                        .filter(templates::Column::Id.eq(&id))
                        .filter(templates::Column::Version.eq(template.version))
                        .into_query();
                    let batch = Batch::new(self.audit.writer().backend())
                        .write(&versions)
                        .write(&delete)
                        .guard(Expect::One, TEMPLATE_CHANGED);
                    let changes = json!({"kind": template.kind.to_string(), "name": template.name,
                        "slug": template.slug, "version": template.version});
                    let entry = entry(actions::TEMPLATE_DELETE, &template).changes(changes);
                    Ok(Audited { batch, entry, answer: Arc::new(template) })
                },
                // Saved or deleted meanwhile: read again (gone is then NOT_FOUND).
                |_, _| OnGuard::Retry,
            )
            .await?;
        self.changed(&id).await;
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

/// The guard codes of template writes.
const SLUG_TAKEN: &str = "slug_taken";
const TEMPLATE_VERSION: &str = "template_version";
const TEMPLATE_CHANGED: &str = "template_changed";

/// Version `version` of a template, as it will be stored.
fn version_row(
    template_id: &str,
    version: i32,
    checked: Checked,
    changelog: Option<String>,
    author_id: &str,
    now: DateTime<Utc>,
) -> Result<template_versions::Model, AppError> {
    Ok(template_versions::Model {
        template_id: template_id.to_string(),
        version,
        body: checked.body,
        variables: serde_json::to_value(&checked.variables).map_err(AppError::internal)?,
        changelog,
        author_id: (!author_id.is_empty()).then(|| author_id.to_string()),
        created_at: now,
    })
}

/// The columns of `after` that differ from `before`, to write those only.
fn changed_columns(before: &templates::Model, after: &templates::Model) -> templates::ActiveModel {
    let (before, after) = (templates::ActiveModel::from(before.clone()), templates::ActiveModel::from(after.clone()));
    let mut changed = <templates::ActiveModel as Default>::default();
    for column in templates::Column::iter() {
        if let Some(value) = after.get(column).into_value()
            && before.get(column).into_value().as_ref() != Some(&value)
        {
            changed.set(column, value);
        }
    }
    changed
}

/// Whether a template holds `slug`.
async fn slug_taken(db: &DatabaseConnection, slug: &str) -> Result<bool, AppError> {
    let found = templates::Entity::find().filter(templates::Column::Slug.eq(slug)).count(db).await?;
    Ok(found > 0)
}
