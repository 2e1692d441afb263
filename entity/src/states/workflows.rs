//! The states of workflow runs and their steps.

use sea_orm::entity::prelude::*;

/// A workflow run's life (`workflow_runs.status`): `queued` → `running` (→ `waiting` for an
/// approval) → `succeeded` | `failed` | `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "workflow_status")]
pub enum WorkflowStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "waiting")]
    Waiting,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

impl WorkflowStatus {
    /// The states a workflow run never leaves.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The states of runs an instance drives (or should).
    pub const IN_PROGRESS: [Self; 3] = [Self::Queued, Self::Running, Self::Waiting];
}

/// One step execution's life (`workflow_steps.status`): `running` → `succeeded` | `failed` |
/// `cancelled`, or `skipped` at once when its condition does not hold. Steps not reached have
/// no row; the schema shows them `pending`, or `skipped` once the workflow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "workflow_step_status")]
pub enum WorkflowStepStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "running")]
    Running,
    /// An approval step waiting for an operator's decision.
    #[sea_orm(string_value = "waiting")]
    Waiting,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "skipped")]
    Skipped,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}
