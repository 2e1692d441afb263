//! One run of a team: routed, attempted (with retries and fallbacks), finished.

use sea_orm::entity::prelude::*;

use crate::states::{ErrorCode, RunStatus};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub team_id: String,
    /// The spec version the run used.
    pub team_version: i32,
    pub conversation_id: Option<String>,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub status: RunStatus,
    pub input: String,
    pub variables: Option<Json>,
    /// The user message the run answers, in a conversation.
    pub message_id: Option<String>,
    /// The agent routing chose, the rule that chose it (none: the default) and why it matched.
    pub routed_agent: Option<String>,
    pub rule: Option<String>,
    pub rule_reason: Option<String>,
    /// The agent and model that answered (or tried last).
    pub agent: Option<String>,
    pub model: Option<String>,
    pub output: Option<String>,
    pub response_message_id: Option<String>,
    pub attempts: i32,
    pub retries: i32,
    pub fallbacks: i32,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub latency_ms: Option<i64>,
    /// Why the run failed or was cancelled.
    pub error_code: Option<ErrorCode>,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    /// The cost predicted before the run, for one attempt of the routed agent.
    pub estimated_cost_usd: Option<f64>,
    /// The most the run could cost, with every retry and fallback.
    pub estimated_max_cost_usd: Option<f64>,
    /// The tokens the run holds against its daily budgets while in progress; null when no
    /// budget applied.
    pub reserved_tokens: Option<i64>,
    /// The US dollars (in nano-dollars) it holds likewise.
    pub reserved_nano_usd: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
