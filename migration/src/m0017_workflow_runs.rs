//! Workflow runs (docs/workflows.md): `workflow_runs` holds one row per started workflow (what
//! runs, its variables, where it is, how it ended, and the lease of the instance driving it);
//! `workflow_steps` one row per step execution, committed before the next step starts, so that a
//! workflow an instance left behind resumes from its last committed step.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WorkflowRuns::Table)
                    .col(string(WorkflowRuns::Id).primary_key())
                    .col(string(WorkflowRuns::TeamId))
                    .col(string(WorkflowRuns::TemplateId))
                    .col(integer(WorkflowRuns::TemplateVersion))
                    .col(json_null(WorkflowRuns::Variables))
                    .col(string(WorkflowRuns::Status))
                    .col(integer(WorkflowRuns::Position).default(0))
                    .col(text_null(WorkflowRuns::Output))
                    .col(string_null(WorkflowRuns::FailedStep))
                    .col(string_null(WorkflowRuns::ErrorCode))
                    .col(text_null(WorkflowRuns::Error))
                    .col(big_integer(WorkflowRuns::TokensIn).default(0))
                    .col(big_integer(WorkflowRuns::TokensOut).default(0))
                    .col(double(WorkflowRuns::CostUsd).default(0.0))
                    .col(string_null(WorkflowRuns::UserId))
                    .col(string_null(WorkflowRuns::ApiKeyId))
                    .col(string_null(WorkflowRuns::IdempotencyKey))
                    .col(string_null(WorkflowRuns::LeaseHolder))
                    .col(timestamp_with_time_zone_null(WorkflowRuns::LeaseExpiresAt))
                    .col(timestamp_with_time_zone(WorkflowRuns::CreatedAt))
                    .col(timestamp_with_time_zone_null(WorkflowRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(WorkflowRuns::FinishedAt))
                    .to_owned(),
            )
            .await?;
        // A repeated idempotency key finds the first run; keys of different teams never meet.
        manager
            .create_index(
                Index::create()
                    .name("workflow_runs_idempotency")
                    .table(WorkflowRuns::Table)
                    .col(WorkflowRuns::TeamId)
                    .col(WorkflowRuns::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // A team's runs, newest first.
        manager
            .create_index(
                Index::create()
                    .name("workflow_runs_team")
                    .table(WorkflowRuns::Table)
                    .col(WorkflowRuns::TeamId)
                    .col(WorkflowRuns::Id)
                    .to_owned(),
            )
            .await?;
        // The runs in progress, which instances look through for ones nobody drives.
        manager
            .create_index(
                Index::create()
                    .name("workflow_runs_status")
                    .table(WorkflowRuns::Table)
                    .col(WorkflowRuns::Status)
                    .col(WorkflowRuns::LeaseExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WorkflowSteps::Table)
                    .col(string(WorkflowSteps::Id).primary_key())
                    .col(string(WorkflowSteps::WorkflowRunId))
                    .col(integer(WorkflowSteps::Position))
                    .col(string(WorkflowSteps::StepId))
                    .col(integer(WorkflowSteps::Iteration).default(0))
                    .col(string(WorkflowSteps::Branch).default(""))
                    .col(string_null(WorkflowSteps::Agent))
                    .col(string_null(WorkflowSteps::RunId))
                    .col(text_null(WorkflowSteps::Input))
                    .col(text_null(WorkflowSteps::Output))
                    .col(string(WorkflowSteps::Status))
                    .col(text_null(WorkflowSteps::Error))
                    .col(integer(WorkflowSteps::Attempts).default(1))
                    .col(timestamp_with_time_zone(WorkflowSteps::StartedAt))
                    .col(timestamp_with_time_zone_null(WorkflowSteps::FinishedAt))
                    .to_owned(),
            )
            .await?;
        // One row per execution of a step: run again after an interruption, the row is reused.
        manager
            .create_index(
                Index::create()
                    .name("workflow_steps_execution")
                    .table(WorkflowSteps::Table)
                    .col(WorkflowSteps::WorkflowRunId)
                    .col(WorkflowSteps::StepId)
                    .col(WorkflowSteps::Iteration)
                    .col(WorkflowSteps::Branch)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(WorkflowSteps::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(WorkflowRuns::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    Id,
    TeamId,
    TemplateId,
    TemplateVersion,
    Variables,
    Status,
    Position,
    Output,
    FailedStep,
    ErrorCode,
    Error,
    TokensIn,
    TokensOut,
    CostUsd,
    UserId,
    ApiKeyId,
    IdempotencyKey,
    LeaseHolder,
    LeaseExpiresAt,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum WorkflowSteps {
    Table,
    Id,
    WorkflowRunId,
    Position,
    StepId,
    Iteration,
    Branch,
    Agent,
    RunId,
    Input,
    Output,
    Status,
    Error,
    Attempts,
    StartedAt,
    FinishedAt,
}
