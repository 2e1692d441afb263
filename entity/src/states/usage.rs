//! The states of what runs use: whose daily budget a row counts against.

use sea_orm::entity::prelude::*;

/// Whose daily budget a row counts against (`budget_days.principal_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "budget_holder")]
pub enum BudgetHolder {
    /// A user, across all their sessions and keys.
    #[sea_orm(string_value = "user")]
    User,
    /// One API key.
    #[sea_orm(string_value = "api_key")]
    ApiKey,
}
