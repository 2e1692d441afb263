//! Finished runs summed per team, time bucket (`minute`, `hour`, `day`; start in Unix seconds,
//! UTC), routed agent, matching rule and answering model; '' stands for an absent dimension.

use sea_orm::entity::prelude::*;

use crate::states::Grain;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "run_rollups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub team_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub grain: Grain,
    #[sea_orm(primary_key, auto_increment = false)]
    pub bucket_start: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub rule: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub model: String,
    pub runs: i64,
    pub failures: i64,
    /// Retries (and below, fallback steps) summed over runs.
    pub retries: i64,
    pub fallbacks: i64,
    /// Runs retried at least once.
    pub retried_runs: i64,
    /// Runs that moved to a fallback agent at least once.
    pub fallback_runs: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub latency_ms_sum: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
