//! Running teams: model prices (seeded), conversations as message trees, runs and every attempt
//! of a run, error groups, and daily budgets on API keys.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Public list prices in USD per million tokens (input, output) and context windows, as
/// published by each provider in November 2026. Admins change them with `upsertModelPrice`.
const PRICES: [(&str, f64, f64, i64); 15] = [
    ("local/*", 0.0, 0.0, 128_000),
    ("openai/gpt-4o", 2.5, 10.0, 128_000),
    ("openai/gpt-4o-mini", 0.15, 0.6, 128_000),
    ("openai/gpt-4.1", 2.0, 8.0, 1_047_576),
    ("openai/gpt-4.1-mini", 0.4, 1.6, 1_047_576),
    ("openai/gpt-4.1-nano", 0.1, 0.4, 1_047_576),
    ("openai/o3-mini", 1.1, 4.4, 200_000),
    ("openai/o4-mini", 1.1, 4.4, 200_000),
    ("anthropic/claude-3-5-haiku", 0.8, 4.0, 200_000),
    ("anthropic/claude-sonnet-4", 3.0, 15.0, 200_000),
    ("anthropic/claude-opus-4", 15.0, 75.0, 200_000),
    ("google/gemini-1.5-flash", 0.075, 0.3, 1_000_000),
    ("google/gemini-1.5-pro", 1.25, 5.0, 2_000_000),
    ("google/gemini-2.0-flash", 0.1, 0.4, 1_000_000),
    ("google/gemini-2.5-pro", 1.25, 10.0, 1_000_000),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ModelPrices::Table)
                    .col(string(ModelPrices::Model).primary_key())
                    .col(double(ModelPrices::InputUsdPerMtok))
                    .col(double(ModelPrices::OutputUsdPerMtok))
                    .col(big_integer_null(ModelPrices::ContextWindow))
                    .col(timestamp_with_time_zone(ModelPrices::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        let published = crate::m0016_price_times::published(manager.get_database_backend());
        let mut seed = Query::insert();
        seed.into_table(ModelPrices::Table).columns([
            ModelPrices::Model,
            ModelPrices::InputUsdPerMtok,
            ModelPrices::OutputUsdPerMtok,
            ModelPrices::ContextWindow,
            ModelPrices::UpdatedAt,
        ]);
        for (model, input, output, window) in PRICES {
            seed.values_panic([model.into(), input.into(), output.into(), window.into(), published.clone().into()]);
        }
        manager.exec_stmt(seed).await?;

        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .col(string(Conversations::Id).primary_key())
                    .col(string(Conversations::TeamId))
                    .col(string(Conversations::UserId))
                    .col(string(Conversations::Title))
                    .col(string_null(Conversations::ForkedFromMessageId))
                    .col(timestamp_with_time_zone(Conversations::CreatedAt))
                    .foreign_key(&mut cascade(
                        "fk_conversations_team",
                        Conversations::Table,
                        Conversations::TeamId,
                        Teams::Table,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_team")
                    .table(Conversations::Table)
                    .col(Conversations::TeamId)
                    .col(Conversations::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(string(Messages::Id).primary_key())
                    .col(string(Messages::ConversationId))
                    .col(string_null(Messages::ParentId))
                    .col(string(Messages::Role))
                    .col(string_null(Messages::Agent))
                    .col(text(Messages::Content))
                    .col(string_null(Messages::RunId))
                    .col(big_integer(Messages::TokensIn).default(0))
                    .col(big_integer(Messages::TokensOut).default(0))
                    .col(double(Messages::CostUsd).default(0.0))
                    .col(timestamp_with_time_zone(Messages::CreatedAt))
                    .foreign_key(&mut cascade(
                        "fk_messages_conversation",
                        Messages::Table,
                        Messages::ConversationId,
                        Conversations::Table,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_conversation")
                    .table(Messages::Table)
                    .col(Messages::ConversationId)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Runs::Table)
                    .col(string(Runs::Id).primary_key())
                    .col(string(Runs::TeamId))
                    .col(integer(Runs::TeamVersion))
                    .col(string_null(Runs::ConversationId))
                    .col(string_null(Runs::UserId))
                    .col(string_null(Runs::ApiKeyId))
                    .col(string(Runs::Status))
                    .col(text(Runs::Input))
                    .col(json_null(Runs::Variables))
                    .col(string_null(Runs::MessageId))
                    .col(string_null(Runs::RoutedAgent))
                    .col(string_null(Runs::Rule))
                    .col(string_null(Runs::RuleReason))
                    .col(string_null(Runs::Agent))
                    .col(string_null(Runs::Model))
                    .col(text_null(Runs::Output))
                    .col(string_null(Runs::ResponseMessageId))
                    .col(integer(Runs::Attempts).default(0))
                    .col(integer(Runs::Retries).default(0))
                    .col(integer(Runs::Fallbacks).default(0))
                    .col(big_integer(Runs::TokensIn).default(0))
                    .col(big_integer(Runs::TokensOut).default(0))
                    .col(double(Runs::CostUsd).default(0.0))
                    .col(big_integer_null(Runs::LatencyMs))
                    .col(string_null(Runs::ErrorCode))
                    .col(text_null(Runs::Error))
                    .col(timestamp_with_time_zone(Runs::CreatedAt))
                    .col(timestamp_with_time_zone_null(Runs::StartedAt))
                    .col(timestamp_with_time_zone_null(Runs::FinishedAt))
                    .foreign_key(&mut cascade("fk_runs_team", Runs::Table, Runs::TeamId, Teams::Table))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [("idx_runs_team", Runs::TeamId), ("idx_runs_status", Runs::Status)] {
            manager
                .create_index(Index::create().name(name).table(Runs::Table).col(column).col(Runs::Id).to_owned())
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(RunAttempts::Table)
                    .col(string(RunAttempts::RunId))
                    .col(integer(RunAttempts::Seq))
                    .col(string(RunAttempts::Agent))
                    .col(string(RunAttempts::Model))
                    .col(integer(RunAttempts::Attempt))
                    .col(string(RunAttempts::Outcome))
                    .col(big_integer(RunAttempts::LatencyMs))
                    .col(big_integer(RunAttempts::TokensIn).default(0))
                    .col(big_integer(RunAttempts::TokensOut).default(0))
                    .col(double(RunAttempts::CostUsd).default(0.0))
                    .col(big_integer_null(RunAttempts::BackoffMs))
                    .col(text_null(RunAttempts::Error))
                    .col(timestamp_with_time_zone(RunAttempts::StartedAt))
                    .primary_key(Index::create().col(RunAttempts::RunId).col(RunAttempts::Seq))
                    .foreign_key(&mut cascade(
                        "fk_run_attempts_run",
                        RunAttempts::Table,
                        RunAttempts::RunId,
                        Runs::Table,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ErrorGroups::Table)
                    .col(string(ErrorGroups::Fingerprint).primary_key())
                    .col(string(ErrorGroups::TeamId))
                    .col(string(ErrorGroups::Agent))
                    .col(string(ErrorGroups::Code))
                    .col(text(ErrorGroups::Message))
                    .col(big_integer(ErrorGroups::Count))
                    .col(timestamp_with_time_zone(ErrorGroups::FirstSeen))
                    .col(timestamp_with_time_zone(ErrorGroups::LastSeen))
                    .col(string(ErrorGroups::LastRunId))
                    .col(timestamp_with_time_zone_null(ErrorGroups::ResolvedAt))
                    .foreign_key(&mut cascade(
                        "fk_error_groups_team",
                        ErrorGroups::Table,
                        ErrorGroups::TeamId,
                        Teams::Table,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_error_groups_team")
                    .table(ErrorGroups::Table)
                    .col(ErrorGroups::TeamId)
                    .col(ErrorGroups::LastSeen)
                    .to_owned(),
            )
            .await?;

        // One column per statement: SQLite and D1 add columns one at a time.
        for column in [big_integer_null(ApiKeys::DailyTokenBudget), double_null(ApiKeys::DailyCostBudgetUsd)] {
            manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [ApiKeys::DailyTokenBudget, ApiKeys::DailyCostBudgetUsd] {
            manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(column).to_owned()).await?;
        }
        for table in [
            ErrorGroups::Table.into_iden(),
            RunAttempts::Table.into_iden(),
            Runs::Table.into_iden(),
            Messages::Table.into_iden(),
            Conversations::Table.into_iden(),
            ModelPrices::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

fn cascade(name: &str, from: impl IntoIden, column: impl IntoIden, to: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from, column)
        .to(to, Alias::new("id"))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[derive(DeriveIden)]
enum ModelPrices {
    Table,
    Model,
    InputUsdPerMtok,
    OutputUsdPerMtok,
    ContextWindow,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    TeamId,
    UserId,
    Title,
    ForkedFromMessageId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ConversationId,
    ParentId,
    Role,
    Agent,
    Content,
    RunId,
    TokensIn,
    TokensOut,
    CostUsd,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Id,
    TeamId,
    TeamVersion,
    ConversationId,
    UserId,
    ApiKeyId,
    Status,
    Input,
    Variables,
    MessageId,
    RoutedAgent,
    Rule,
    RuleReason,
    Agent,
    Model,
    Output,
    ResponseMessageId,
    Attempts,
    Retries,
    Fallbacks,
    TokensIn,
    TokensOut,
    CostUsd,
    LatencyMs,
    ErrorCode,
    Error,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum RunAttempts {
    Table,
    RunId,
    Seq,
    Agent,
    Model,
    Attempt,
    Outcome,
    LatencyMs,
    TokensIn,
    TokensOut,
    CostUsd,
    BackoffMs,
    Error,
    StartedAt,
}

#[derive(DeriveIden)]
enum ErrorGroups {
    Table,
    Fingerprint,
    TeamId,
    Agent,
    Code,
    Message,
    Count,
    FirstSeen,
    LastSeen,
    LastRunId,
    ResolvedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    DailyTokenBudget,
    DailyCostBudgetUsd,
}

#[derive(DeriveIden)]
enum Teams {
    Table,
}
