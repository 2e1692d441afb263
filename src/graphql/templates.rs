//! Templates: `templateCategories`, and for admins `createTemplateCategory`,
//! `updateTemplateCategory`, `deleteTemplateCategory`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::template_categories;

use super::caller;
use crate::{
    error::GqlResultExt,
    service::template_categories::{self as categories, CategoryInput},
    state::AppState,
};

#[derive(Default)]
pub struct TemplatesQuery;

#[Object]
impl TemplatesQuery {
    /// Every template category, in display order (anyone signed in).
    async fn template_categories(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TemplateCategory>> {
        let state = ctx.data::<AppState>()?;
        let rows = categories::list(&state.db, &caller(ctx)).await.gql()?;
        Ok(rows.into_iter().map(TemplateCategory::from).collect())
    }
}

#[derive(Default)]
pub struct TemplatesMutation;

#[Object]
impl TemplatesMutation {
    /// A new category (admins). The slug comes from the name unless given; a taken slug is
    /// CONFLICT.
    async fn create_template_category(
        &self,
        ctx: &Context<'_>,
        input: TemplateCategoryInput,
    ) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::create(&state.db, &caller(ctx), input.into()).await.map(TemplateCategory::from).gql()
    }

    /// Changes a category's fields that are given (admins).
    async fn update_template_category(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: TemplateCategoryInput,
    ) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::update(&state.db, &caller(ctx), &id, input.into()).await.map(TemplateCategory::from).gql()
    }

    /// Deletes a category (admins); answers it as it was.
    async fn delete_template_category(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<TemplateCategory> {
        let state = ctx.data::<AppState>()?;
        categories::delete(&state.db, &caller(ctx), &id).await.map(TemplateCategory::from).gql()
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
