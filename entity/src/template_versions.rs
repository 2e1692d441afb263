//! One immutable version of a template's body and variable declarations.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "template_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub template_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: i32,
    pub body: Json,
    /// The variable declarations: `[{name, type, required, default, description}]`.
    pub variables: Json,
    pub changelog: Option<String>,
    /// None for starters.
    pub author_id: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
