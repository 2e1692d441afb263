//! What a user or an API key spent and holds in reserve on one UTC day: the row a run's
//! reservation is checked against and written to in one statement.

use sea_orm::entity::prelude::*;

use crate::states::BudgetHolder;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "budget_days")]
pub struct Model {
    /// `YYYY-MM-DD`, UTC.
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub principal_kind: BudgetHolder,
    #[sea_orm(primary_key, auto_increment = false)]
    pub principal_id: String,
    /// Input and output tokens of the runs that ended.
    pub spent_tokens: i64,
    /// US dollars of the runs that ended, in nano-dollars.
    pub spent_nano_usd: i64,
    /// The worst cases of the runs in progress.
    pub reserved_tokens: i64,
    pub reserved_nano_usd: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
