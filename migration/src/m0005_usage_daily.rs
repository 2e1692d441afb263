//! Usage rolled up per day and principal (user, team, key, model). Absent dimensions are ''
//! rather than NULL so the primary key can be upserted on every database.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UsageDaily::Table)
                    .col(string(UsageDaily::Day))
                    .col(string(UsageDaily::UserId).default(""))
                    .col(string(UsageDaily::TeamId).default(""))
                    .col(string(UsageDaily::ApiKeyId).default(""))
                    .col(string(UsageDaily::Model).default(""))
                    .col(big_integer(UsageDaily::Requests).default(0))
                    .col(big_integer(UsageDaily::Runs).default(0))
                    .col(big_integer(UsageDaily::TokensIn).default(0))
                    .col(big_integer(UsageDaily::TokensOut).default(0))
                    .col(double(UsageDaily::CostUsd).default(0.0))
                    .primary_key(
                        Index::create()
                            .col(UsageDaily::Day)
                            .col(UsageDaily::UserId)
                            .col(UsageDaily::TeamId)
                            .col(UsageDaily::ApiKeyId)
                            .col(UsageDaily::Model),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(UsageDaily::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum UsageDaily {
    Table,
    Day,
    UserId,
    TeamId,
    ApiKeyId,
    Model,
    Requests,
    Runs,
    TokensIn,
    TokensOut,
    CostUsd,
}
