//! Budget reservations: `budget_days` holds, per UTC day and principal (a user or an API key),
//! the tokens and US dollars its runs spent and the worst cases its runs in progress hold, so
//! one conditional write can refuse a run that does not fit (docs/runs.md); each run keeps the
//! amounts it reserved, to give them back when it ends. Today's and earlier days' spending is
//! carried over from `usage_daily`. Dollars are whole nano-dollars, so a reservation given
//! back leaves exactly what was there.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `usage_daily` summed per day and user, then per day and API key.
const CARRY_OVER: [&str; 2] = [
    "INSERT INTO budget_days (day, principal_kind, principal_id, spent_tokens, spent_nano_usd, reserved_tokens, reserved_nano_usd) \
     SELECT day, 'user', user_id, CAST(SUM(tokens_in + tokens_out) AS BIGINT), CAST(ROUND(SUM(cost_usd) * 1000000000) AS BIGINT), 0, 0 \
     FROM usage_daily WHERE user_id <> '' GROUP BY day, user_id",
    "INSERT INTO budget_days (day, principal_kind, principal_id, spent_tokens, spent_nano_usd, reserved_tokens, reserved_nano_usd) \
     SELECT day, 'api_key', api_key_id, CAST(SUM(tokens_in + tokens_out) AS BIGINT), CAST(ROUND(SUM(cost_usd) * 1000000000) AS BIGINT), 0, 0 \
     FROM usage_daily WHERE api_key_id <> '' GROUP BY day, api_key_id",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(BudgetDays::Table)
                    .col(string(BudgetDays::Day))
                    .col(string(BudgetDays::PrincipalKind))
                    .col(string(BudgetDays::PrincipalId))
                    .col(big_integer(BudgetDays::SpentTokens).default(0))
                    .col(big_integer(BudgetDays::SpentNanoUsd).default(0))
                    .col(big_integer(BudgetDays::ReservedTokens).default(0))
                    .col(big_integer(BudgetDays::ReservedNanoUsd).default(0))
                    .primary_key(
                        Index::create()
                            .col(BudgetDays::Day)
                            .col(BudgetDays::PrincipalKind)
                            .col(BudgetDays::PrincipalId),
                    )
                    .to_owned(),
            )
            .await?;
        for column in [big_integer_null(Runs::ReservedTokens), big_integer_null(Runs::ReservedNanoUsd)] {
            manager.alter_table(Table::alter().table(Runs::Table).add_column(column).to_owned()).await?;
        }
        let db = manager.get_connection();
        for statement in CARRY_OVER {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Runs::ReservedTokens, Runs::ReservedNanoUsd] {
            manager.alter_table(Table::alter().table(Runs::Table).drop_column(column).to_owned()).await?;
        }
        manager.drop_table(Table::drop().table(BudgetDays::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum BudgetDays {
    Table,
    Day,
    PrincipalKind,
    PrincipalId,
    SpentTokens,
    SpentNanoUsd,
    ReservedTokens,
    ReservedNanoUsd,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    ReservedTokens,
    ReservedNanoUsd,
}
