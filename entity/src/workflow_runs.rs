//! One started workflow: a WORKFLOW template's version run on a team, step by step.

use sea_orm::entity::prelude::*;

use crate::states::WorkflowStatus;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub team_id: String,
    pub template_id: String,
    pub template_version: i32,
    /// The workflow's variables, checked and with defaults filled in.
    pub variables: Option<Json>,
    pub status: WorkflowStatus,
    /// How many of the body's steps are committed: the next one to run.
    pub position: i32,
    /// The last step's output, once the workflow succeeded.
    pub output: Option<String>,
    /// The step that failed, and why the workflow did not succeed: the code of the error
    /// (`QUOTA_EXCEEDED`, `TIMEOUT`, …) and the sentence.
    pub failed_step: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Summed over the steps' runs.
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    /// Who started it (an API key's owner with the key).
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    /// The key a client sent so that starting twice starts once.
    pub idempotency_key: Option<String>,
    /// The instance driving it, until when (docs/workflows.md, "Durable execution").
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
