//! The states of runs.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A run's life: `queued` → `running` → `succeeded` | `failed` | `cancelled` (`runs.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "run_status")]
pub enum RunStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

impl RunStatus {
    /// The states a run never leaves.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Who wrote a message (`messages.role`); also the role of a message sent to a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "message_role")]
pub enum MessageRole {
    /// Instructions to the model (a system prompt); never stored in a conversation.
    #[sea_orm(string_value = "system")]
    System,
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "assistant")]
    Assistant,
}

/// Why a run failed (`runs.error_code`, `error_groups.code`): the class of its last provider
/// error, or what stopped the run itself. The provider classes are the spec's `retryOn` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "error_code")]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The provider, or the whole run, took longer than allowed.
    #[sea_orm(string_value = "timeout")]
    Timeout,
    #[sea_orm(string_value = "rate_limited")]
    RateLimited,
    #[sea_orm(string_value = "server_error")]
    ServerError,
    #[sea_orm(string_value = "context_length")]
    ContextLength,
    #[sea_orm(string_value = "content_filter")]
    ContentFilter,
    /// The provider refused the credentials.
    #[sea_orm(string_value = "auth")]
    Auth,
    #[sea_orm(string_value = "bad_request")]
    BadRequest,
    /// The provider could not be reached, or closed the stream early.
    #[sea_orm(string_value = "connection")]
    Connection,
    /// The next call would have passed the run's `maxCostUsd`.
    #[sea_orm(string_value = "cost_limit")]
    CostLimit,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
    /// The server stopped while the run was in progress.
    #[sea_orm(string_value = "interrupted")]
    Interrupted,
}

/// How one call to a model ended (`run_attempts.outcome`): `ok`, the class of the provider's
/// error (the same names as [`ErrorCode`]), or `cancelled` when the run was cancelled during it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "attempt_outcome")]
pub enum AttemptOutcome {
    #[sea_orm(string_value = "ok")]
    Ok,
    #[sea_orm(string_value = "timeout")]
    Timeout,
    #[sea_orm(string_value = "rate_limited")]
    RateLimited,
    #[sea_orm(string_value = "server_error")]
    ServerError,
    #[sea_orm(string_value = "context_length")]
    ContextLength,
    #[sea_orm(string_value = "content_filter")]
    ContentFilter,
    #[sea_orm(string_value = "auth")]
    Auth,
    #[sea_orm(string_value = "bad_request")]
    BadRequest,
    #[sea_orm(string_value = "connection")]
    Connection,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}
