//! A template: owner, sharing, category and name; its body lives in `template_versions`.

use sea_orm::entity::prelude::*;

use crate::states::{TemplateKind, TemplateVisibility};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "templates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// None for starters, which ship with the server.
    pub owner_id: Option<String>,
    /// The team whose members may use it when `visibility` is `team`.
    pub team_id: Option<String>,
    pub kind: TemplateKind,
    pub category_id: Option<String>,
    pub name: String,
    #[sea_orm(unique)]
    pub slug: String,
    pub description: Option<String>,
    pub visibility: TemplateVisibility,
    /// The current version.
    pub version: i32,
    pub is_starter: bool,
    /// SHA-256 of the shipped definition a starter was last seeded from.
    pub starter_digest: Option<String>,
    pub forked_from_id: Option<String>,
    pub forked_from_version: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
