//! One execution of a workflow step: its run, what it was sent and what it answered.

use sea_orm::entity::prelude::*;

use crate::states::WorkflowStepStatus;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_steps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub workflow_run_id: String,
    /// The step's place in the workflow's body.
    pub position: i32,
    /// The step's id in the body.
    pub step_id: String,
    pub iteration: i32,
    /// The parallel branch it ran in; empty outside one.
    pub branch: String,
    pub agent: Option<String>,
    /// The run it made (the latest, when it was run again after an interruption).
    pub run_id: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub status: WorkflowStepStatus,
    pub error: Option<String>,
    /// How many times it was started: more than one after an interruption.
    pub attempts: i32,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
