//! Every version of a team's spec, immutable: `updateTeam` and `rollbackTeam` append one.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TeamVersions::Table)
                    .col(string(TeamVersions::TeamId))
                    .col(integer(TeamVersions::Version))
                    .col(json(TeamVersions::Spec))
                    .col(text_null(TeamVersions::Message))
                    .col(string(TeamVersions::AuthorId))
                    .col(timestamp_with_time_zone(TeamVersions::CreatedAt))
                    .primary_key(Index::create().col(TeamVersions::TeamId).col(TeamVersions::Version))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_team_versions_team")
                            .from(TeamVersions::Table, TeamVersions::TeamId)
                            .to(Teams::Table, Teams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TeamVersions::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum TeamVersions {
    Table,
    TeamId,
    Version,
    Spec,
    Message,
    AuthorId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
}
