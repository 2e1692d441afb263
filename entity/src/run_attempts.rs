//! One call to a model within a run: every retry and every fallback is a row.

use sea_orm::entity::prelude::*;

use crate::states::AttemptOutcome;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "run_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub run_id: String,
    /// 1, 2, … across the whole run.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i32,
    pub agent: String,
    pub model: String,
    /// 1, 2, … for this agent.
    pub attempt: i32,
    pub outcome: AttemptOutcome,
    pub latency_ms: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    /// The wait before the next attempt of the same agent, when one followed.
    pub backoff_ms: Option<i64>,
    pub error: Option<String>,
    pub started_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
