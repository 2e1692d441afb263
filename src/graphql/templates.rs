//! Templates: reading (`template`, `templates`, `templateVersions`, `templateDiff`), the editor's
//! dry run (`validateTemplate`), `renderTemplate`, saving (`createTemplate`, `updateTemplate`,
//! `restoreTemplateVersion`, `forkTemplate`, `deleteTemplate`), `instantiateTemplate`, and the
//! categories (`templateCategories`; admins create, update and delete them).

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};
use entity::{template_categories, template_versions, templates as rows};
use serde_json::Value;

use super::{
    answers::warn_missing_keys,
    caller, connection,
    loaders::{Loaders, nodes_select},
    states::{TemplateKind as Kind, TemplateVisibility as Visibility},
    teams::Team,
    users::User,
};
use crate::{
    error::{GqlResultExt, Problem},
    graphql::scalars::Json,
    service::{
        page::{Page, PageRequest},
        template_categories::{self as categories, CategoryInput},
        templates::{
            Filter, Instantiate, Resolved, TemplateInput as Input,
            body::{Variable, VariableType},
        },
    },
    state::AppState,
};

#[derive(Default)]
pub struct TemplatesQuery;

#[Object]
impl TemplatesQuery {
    /// A template you may use, at its current version or `version`.
    async fn template(&self, ctx: &Context<'_>, id: ID, version: Option<i32>) -> async_graphql::Result<Template> {
        let state = ctx.data::<AppState>()?;
        state.templates.resolve(&caller(ctx), &id, version).await.map(Template::from).gql()
    }

    /// The templates you may use (yours, your teams', public ones and the starters), oldest
    /// first, narrowed by `filter`.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn templates(
        &self,
        ctx: &Context<'_>,
        filter: Option<TemplateFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Template>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let filter = filter.map(Filter::from).unwrap_or_default();
        let rows = state.templates.list(&caller(ctx), &filter, &page).await.gql()?;
        prefetch(ctx, &rows.items).await?;
        let versions = state.templates.current_versions(&rows.items).await.gql()?;
        let items = rows.items.into_iter().zip(versions).map(|(template, version)| Template::from((template, version)));
        let rows = Page { items: items.collect(), has_next: rows.has_next };
        Ok(connection(&page, rows, |t| t.template.id.clone(), |t| t))
    }

    /// A template's versions, newest first.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn template_versions(
        &self,
        ctx: &Context<'_>,
        id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, TemplateVersion>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = state.templates.versions(&caller(ctx), &id, &page).await.gql()?;
        Ok(connection(&page, rows, |v| v.version.to_string(), TemplateVersion::from))
    }

    /// What changed between two versions of a template.
    async fn template_diff(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from: i32,
        to: i32,
    ) -> async_graphql::Result<TemplateDiff> {
        let state = ctx.data::<AppState>()?;
        let diff = state.templates.diff(&caller(ctx), &id, from, to).await.gql()?;
        Ok(TemplateDiff { operations: Json(Value::Array(diff.operations)), summary: diff.summary })
    }

    /// Checks a template as `createTemplate` would and saves nothing: every problem with its
    /// path (and line and column for template syntax errors). Cheap enough for each keystroke.
    async fn validate_template(
        &self,
        ctx: &Context<'_>,
        input: TemplateInput,
    ) -> async_graphql::Result<TemplateValidation> {
        let state = ctx.data::<AppState>()?;
        let validation = state.templates.validate(&caller(ctx), &input.into()).await.gql()?;
        Ok(TemplateValidation {
            valid: validation.problems.is_empty(),
            problems: validation.problems.into_iter().map(TemplateProblem::from).collect(),
            body: validation.checked.as_ref().map(|c| Json(c.body.clone())),
            variables: validation.checked.map(|c| c.variables.into_iter().map(TemplateVariable::from).collect()),
        })
    }

    /// A QUERY template's prompt rendered with `variables`. Missing required, mistyped and
    /// unknown variables are BAD_USER_INPUT naming each; a render that runs too long stops.
    async fn render_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        variables: Option<Json<Value>>,
        version: Option<i32>,
    ) -> async_graphql::Result<String> {
        let state = ctx.data::<AppState>()?;
        let variables = variables.map_or(Value::Null, |v| v.0);
        state.templates.render(&caller(ctx), &id, version, &variables).await.gql()
    }

    /// Every template category, in display order (anyone signed in).
    async fn template_categories(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TemplateCategory>> {
        let state = ctx.data::<AppState>()?;
        let rows = categories::list(&state.templates, &caller(ctx)).await.gql()?;
        Ok(rows.iter().cloned().map(TemplateCategory::from).collect())
    }
}

/// Loads what the page's nodes ask of their owners and categories up front, once for the page
/// (see `loaders`).
async fn prefetch(ctx: &Context<'_>, page: &[Arc<rows::Model>]) -> async_graphql::Result<()> {
    if nodes_select(ctx, &["owner"]) {
        let owners = page.iter().filter_map(|t| t.owner_id.clone());
        ctx.data::<Loaders>()?.users.load_many(owners).await.gql()?;
    }
    if nodes_select(ctx, &["category"]) {
        // One read of the cached list; every node's `category` then finds it there.
        ctx.data::<AppState>()?.templates.categories().await.gql()?;
    }
    Ok(())
}

#[derive(Default)]
pub struct TemplatesMutation;

#[Object]
impl TemplatesMutation {
    /// A new template you own, at version 1 (private unless `visibility` says otherwise).
    async fn create_template(&self, ctx: &Context<'_>, input: TemplateInput) -> async_graphql::Result<Template> {
        let state = ctx.data::<AppState>()?;
        state.templates.create(&caller(ctx), input.into()).await.map(Template::from).gql()
    }

    /// Saves a new version (every save is one) and the other fields given. With
    /// `expectedVersion`, a template saved by someone else since is CONFLICT.
    async fn update_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: TemplateInput,
        expected_version: Option<i32>,
    ) -> async_graphql::Result<Template> {
        let state = ctx.data::<AppState>()?;
        state.templates.update(&caller(ctx), &id, input.into(), expected_version).await.map(Template::from).gql()
    }

    /// Saves a new version equal to an old one.
    async fn restore_template_version(
        &self,
        ctx: &Context<'_>,
        id: ID,
        version: i32,
        changelog: Option<String>,
    ) -> async_graphql::Result<Template> {
        let state = ctx.data::<AppState>()?;
        state.templates.restore(&caller(ctx), &id, version, changelog).await.map(Template::from).gql()
    }

    /// A copy you own of a template you may use, private unless asked otherwise.
    async fn fork_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: Option<ForkTemplateInput>,
    ) -> async_graphql::Result<Template> {
        let state = ctx.data::<AppState>()?;
        let input = input.unwrap_or_default();
        let version = input.version;
        state.templates.fork(&caller(ctx), &id, version, input.into()).await.map(Template::from).gql()
    }

    /// Deletes a template and its history; answers it as it was.
    async fn delete_template(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<DeletedTemplate> {
        let state = ctx.data::<AppState>()?;
        state.templates.delete(&caller(ctx), &id).await.map(DeletedTemplate::from).gql()
    }

    /// A team you own made from a TEAM or DEMO template, its system prompts rendered with
    /// `variables` (a DEMO's sample conversation is copied into it).
    async fn instantiate_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: InstantiateTemplateInput,
    ) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        let team = state.templates.instantiate(&caller(ctx), &id, input.into()).await.gql()?;
        warn_missing_keys(ctx, &team.spec);
        Ok(Team(team))
    }

    /// A new category (admins). The slug comes from the name unless given; a taken slug is
    /// CONFLICT.
    async fn create_template_category(
        &self,
        ctx: &Context<'_>,
        input: TemplateCategoryInput,
    ) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::create(&state.templates, &caller(ctx), input.into()).await.map(TemplateCategory::from).gql()
    }

    /// Changes a category's fields that are given (admins).
    async fn update_template_category(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: TemplateCategoryInput,
    ) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::update(&state.templates, &caller(ctx), &id, input.into()).await.map(TemplateCategory::from).gql()
    }

    /// Deletes a category no template is filed under (admins); one in use is CONFLICT.
    async fn delete_template_category(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::delete(&state.templates, &caller(ctx), &id).await.map(TemplateCategory::from).gql()
    }
}

/// A template at one version.
pub struct Template {
    template: Arc<rows::Model>,
    version: Arc<template_versions::Model>,
}

impl From<Resolved> for Template {
    fn from(resolved: Resolved) -> Self {
        Self { template: resolved.template, version: resolved.version }
    }
}

impl From<(Arc<rows::Model>, Arc<template_versions::Model>)> for Template {
    fn from((template, version): (Arc<rows::Model>, Arc<template_versions::Model>)) -> Self {
        Self { template, version }
    }
}

#[Object]
impl Template {
    async fn id(&self) -> ID {
        ID(self.template.id.clone())
    }

    async fn kind(&self) -> Kind {
        self.template.kind.into()
    }

    async fn name(&self) -> &str {
        &self.template.name
    }

    /// Unique; starters keep theirs across releases.
    async fn slug(&self) -> &str {
        &self.template.slug
    }

    async fn description(&self) -> Option<&str> {
        self.template.description.as_deref()
    }

    async fn visibility(&self) -> Visibility {
        self.template.visibility.into()
    }

    /// The team whose members may use it (visibility TEAM).
    async fn team_id(&self) -> Option<ID> {
        self.template.team_id.clone().map(ID)
    }

    /// Absent for starters.
    async fn owner_id(&self) -> Option<ID> {
        self.template.owner_id.clone().map(ID)
    }

    /// Who made it; null for starters.
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(owner_id) = &self.template.owner_id else {
            return Ok(None);
        };
        let loaders = ctx.data::<Loaders>()?;
        let user = loaders.users.load_one(owner_id.clone()).await.gql()?;
        Ok(user.map(User::from))
    }

    /// Shipped with the server (changed by admins and by new releases only).
    async fn is_starter(&self) -> bool {
        self.template.is_starter
    }

    /// The template's current version.
    async fn latest_version(&self) -> i32 {
        self.template.version
    }

    /// The version shown here (the current one unless another was asked for).
    async fn version(&self) -> i32 {
        self.version.version
    }

    /// The body at this version: a TeamSpec (TEAM), `{prompt}` (QUERY), `{steps}` (WORKFLOW) or
    /// `{team, conversation}` (DEMO).
    async fn body(&self) -> Json<&Value> {
        Json(&self.version.body)
    }

    /// The variables this version declares.
    async fn variables(&self) -> Vec<TemplateVariable> {
        declared(&self.version.variables)
    }

    /// What this version changed.
    async fn changelog(&self) -> Option<&str> {
        self.version.changelog.as_deref()
    }

    async fn category(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<TemplateCategory>> {
        let Some(id) = &self.template.category_id else {
            return Ok(None);
        };
        let state = ctx.data::<AppState>()?;
        let all = state.templates.categories().await.gql()?;
        Ok(all.iter().find(|c| c.id == *id).cloned().map(TemplateCategory::from))
    }

    /// The template this one was forked from, and at which version.
    async fn forked_from_id(&self) -> Option<ID> {
        self.template.forked_from_id.clone().map(ID)
    }

    async fn forked_from_version(&self) -> Option<i32> {
        self.template.forked_from_version
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.template.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.template.updated_at
    }
}

fn declared(variables: &Value) -> Vec<TemplateVariable> {
    serde_json::from_value::<Vec<Variable>>(variables.clone())
        .unwrap_or_default()
        .into_iter()
        .map(TemplateVariable::from)
        .collect()
}

/// A deleted template, as it was.
#[derive(SimpleObject)]
pub struct DeletedTemplate {
    pub id: ID,
    pub kind: Kind,
    pub name: String,
    pub slug: String,
    /// Its last version.
    pub version: i32,
}

impl From<Arc<rows::Model>> for DeletedTemplate {
    fn from(t: Arc<rows::Model>) -> Self {
        Self {
            id: ID(t.id.clone()),
            kind: t.kind.into(),
            name: t.name.clone(),
            slug: t.slug.clone(),
            version: t.version,
        }
    }
}

/// One declared variable.
#[derive(SimpleObject)]
pub struct TemplateVariable {
    pub name: String,
    #[graphql(name = "type")]
    pub kind: VariableType,
    pub required: bool,
    /// Used when the variable is not given (optional variables only).
    pub default: Option<Json<Value>>,
    pub description: Option<String>,
}

impl From<Variable> for TemplateVariable {
    fn from(v: Variable) -> Self {
        Self {
            name: v.name,
            kind: v.kind,
            required: v.required,
            default: v.default.map(Json),
            description: v.description,
        }
    }
}

/// One immutable version of a template.
#[derive(SimpleObject)]
pub struct TemplateVersion {
    pub version: i32,
    pub body: Json<Value>,
    pub variables: Vec<TemplateVariable>,
    pub changelog: Option<String>,
    /// Absent for starters.
    pub author_id: Option<ID>,
    pub created_at: DateTime<Utc>,
}

impl From<template_versions::Model> for TemplateVersion {
    fn from(v: template_versions::Model) -> Self {
        Self {
            version: v.version,
            variables: declared(&v.variables),
            body: Json(v.body),
            changelog: v.changelog,
            author_id: v.author_id.map(ID),
            created_at: v.created_at,
        }
    }
}

/// What changed between two versions: RFC 6902 operations over `{body, variables}` and a line
/// per change.
#[derive(SimpleObject)]
pub struct TemplateDiff {
    pub operations: Json<Value>,
    pub summary: Vec<String>,
}

/// The result of `validateTemplate`.
#[derive(SimpleObject)]
pub struct TemplateValidation {
    /// No problems: `createTemplate` would accept it.
    pub valid: bool,
    pub problems: Vec<TemplateProblem>,
    /// The body as it would be stored (when valid).
    pub body: Option<Json<Value>>,
    pub variables: Option<Vec<TemplateVariable>>,
}

/// One problem with a template: where, what, and for template syntax the line and column.
#[derive(SimpleObject)]
pub struct TemplateProblem {
    pub path: String,
    pub message: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl From<Problem> for TemplateProblem {
    fn from(p: Problem) -> Self {
        Self { path: p.path, message: p.message, line: p.line, column: p.column }
    }
}

/// A template as an editor sends it; on update, absent fields keep their value.
#[derive(InputObject)]
pub struct TemplateInput {
    /// Required to create; cannot change.
    pub kind: Option<Kind>,
    /// 1 to 100 characters (required to create).
    pub name: Option<String>,
    pub description: Option<String>,
    /// A category's id or slug.
    pub category: Option<String>,
    /// PRIVATE when absent on create.
    pub visibility: Option<Visibility>,
    /// The team to share with (visibility TEAM); you must be an editor of it.
    pub team_id: Option<ID>,
    /// The body (see `Template.body`); required to create.
    pub body: Option<Json<Value>>,
    /// `[{name, type, required, default, description}]`.
    pub variables: Option<Json<Value>>,
    /// What this save changes.
    pub changelog: Option<String>,
}

impl From<TemplateInput> for Input {
    fn from(input: TemplateInput) -> Self {
        Self {
            kind: input.kind.map(Into::into),
            name: input.name,
            description: input.description,
            category: input.category,
            visibility: input.visibility.map(Into::into),
            team_id: input.team_id.map(|id| id.0),
            body: input.body.map(|b| b.0),
            variables: input.variables.map(|v| v.0),
            changelog: input.changelog,
        }
    }
}

/// How to fork: absent fields copy the source (the name gets " (fork)").
#[derive(InputObject, Default)]
pub struct ForkTemplateInput {
    pub name: Option<String>,
    /// The version to copy; the current one when absent.
    pub version: Option<i32>,
    pub description: Option<String>,
    pub category: Option<String>,
    /// PRIVATE when absent.
    pub visibility: Option<Visibility>,
    pub team_id: Option<ID>,
}

impl From<ForkTemplateInput> for Input {
    fn from(input: ForkTemplateInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            category: input.category,
            visibility: input.visibility.map(Into::into),
            team_id: input.team_id.map(|id| id.0),
            ..Self::default()
        }
    }
}

/// What to make a team from a template with.
#[derive(InputObject)]
pub struct InstantiateTemplateInput {
    /// The new team's name.
    pub name: String,
    /// The template version; the current one when absent.
    pub version: Option<i32>,
    /// Values for the template's variables.
    pub variables: Option<Json<Value>>,
}

impl From<InstantiateTemplateInput> for Instantiate {
    fn from(input: InstantiateTemplateInput) -> Self {
        Self { name: input.name, version: input.version, variables: input.variables.map_or(Value::Null, |v| v.0) }
    }
}

/// What `templates` narrows to; absent fields do not narrow.
#[derive(InputObject)]
pub struct TemplateFilter {
    pub kind: Option<Kind>,
    /// A category's slug or id.
    pub category: Option<String>,
    pub visibility: Option<Visibility>,
    /// Only starters (true) or only people's templates (false).
    pub starter: Option<bool>,
    /// Text in the name, slug or description (case-insensitive).
    pub search: Option<String>,
}

impl From<TemplateFilter> for Filter {
    fn from(f: TemplateFilter) -> Self {
        Self {
            kind: f.kind.map(Into::into),
            category: f.category,
            visibility: f.visibility.map(Into::into),
            starter: f.starter,
            search: f.search,
        }
    }
}

/// A category's fields; on update, absent ones keep their value.
#[derive(InputObject)]
pub struct TemplateCategoryInput {
    /// 1 to 100 characters (required to create).
    pub name: Option<String>,
    /// Lowercase letters, digits and dashes; from the name when absent.
    pub slug: Option<String>,
    pub description: Option<String>,
    /// Smaller first; 0 when absent.
    pub position: Option<i32>,
}

impl From<TemplateCategoryInput> for CategoryInput {
    fn from(input: TemplateCategoryInput) -> Self {
        Self { name: input.name, slug: input.slug, description: input.description, position: input.position }
    }
}

/// A shelf templates are filed on.
#[derive(SimpleObject)]
pub struct TemplateCategory {
    pub id: ID,
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    pub position: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<template_categories::Model> for TemplateCategory {
    fn from(c: template_categories::Model) -> Self {
        Self {
            id: ID(c.id),
            slug: c.slug,
            name: c.name,
            description: c.description,
            position: c.position,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}
