//! Share links: a token (only its SHA-256 kept) that makes whoever accepts it a member.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TeamShareLinks::Table)
                    .col(string(TeamShareLinks::Id).primary_key())
                    .col(string(TeamShareLinks::TeamId))
                    .col(string(TeamShareLinks::Role))
                    .col(string_uniq(TeamShareLinks::TokenHash))
                    .col(timestamp_with_time_zone_null(TeamShareLinks::ExpiresAt))
                    .col(timestamp_with_time_zone_null(TeamShareLinks::RevokedAt))
                    .col(string(TeamShareLinks::CreatedBy))
                    .col(timestamp_with_time_zone(TeamShareLinks::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_team_share_links_team")
                            .from(TeamShareLinks::Table, TeamShareLinks::TeamId)
                            .to(Teams::Table, Teams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_team_share_links_team")
                    .table(TeamShareLinks::Table)
                    .col(TeamShareLinks::TeamId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TeamShareLinks::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum TeamShareLinks {
    Table,
    Id,
    TeamId,
    Role,
    TokenHash,
    ExpiresAt,
    RevokedAt,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
}
