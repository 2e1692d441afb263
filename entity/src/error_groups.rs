//! Failed runs grouped by fingerprint (team, agent, error class, normalised message).

use sea_orm::entity::prelude::*;

use crate::states::ErrorCode;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "error_groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub fingerprint: String,
    pub team_id: String,
    pub agent: String,
    pub code: ErrorCode,
    pub message: String,
    pub count: i64,
    pub first_seen: DateTimeUtc,
    pub last_seen: DateTimeUtc,
    pub last_run_id: String,
    pub resolved_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
