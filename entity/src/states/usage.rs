//! The states of what runs use: whose daily budget a row counts against, and the buckets
//! finished runs are summed in.

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

/// The length of a rollup bucket (`run_rollups.grain`, `run_latency.grain`); buckets start at
/// whole multiples of it in Unix seconds, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "grain")]
pub enum Grain {
    #[sea_orm(string_value = "minute")]
    Minute,
    #[sea_orm(string_value = "hour")]
    Hour,
    #[sea_orm(string_value = "day")]
    Day,
}

impl Grain {
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// The start of the bucket holding `at`, in Unix seconds.
    pub fn floor(self, at: i64) -> i64 {
        at.div_euclid(self.seconds()) * self.seconds()
    }

    /// The start of the first bucket that begins at or after `at`.
    pub fn ceil(self, at: i64) -> i64 {
        -self.floor(-at)
    }
}
