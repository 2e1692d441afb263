//! Users (a mirror of Clerk's), teams, team membership and the audit log (docs/database.md).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(string(Users::Id).primary_key())
                    .col(string_null(Users::Email))
                    .col(string_null(Users::DisplayName))
                    .col(string_null(Users::AvatarUrl))
                    .col(string(Users::Role).default("member"))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Users::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Teams::Table)
                    .col(string(Teams::Id).primary_key())
                    .col(string(Teams::OwnerId))
                    .col(string(Teams::Name))
                    .col(string_uniq(Teams::Slug))
                    .col(text_null(Teams::Description))
                    .col(string(Teams::Visibility).default("private"))
                    .col(json(Teams::Spec))
                    .col(integer(Teams::Version).default(1))
                    .col(timestamp_with_time_zone(Teams::CreatedAt))
                    .col(timestamp_with_time_zone(Teams::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Teams::ArchivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_teams_owner")
                            .from(Teams::Table, Teams::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("idx_teams_owner").table(Teams::Table).col(Teams::OwnerId).to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TeamMembers::Table)
                    .col(string(TeamMembers::TeamId))
                    .col(string(TeamMembers::UserId))
                    .col(string(TeamMembers::Role))
                    .col(timestamp_with_time_zone(TeamMembers::CreatedAt))
                    .primary_key(Index::create().col(TeamMembers::TeamId).col(TeamMembers::UserId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_team_members_team")
                            .from(TeamMembers::Table, TeamMembers::TeamId)
                            .to(Teams::Table, Teams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_team_members_user")
                            .from(TeamMembers::Table, TeamMembers::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_team_members_user")
                    .table(TeamMembers::Table)
                    .col(TeamMembers::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditLogs::Table)
                    .col(big_integer(AuditLogs::Seq).primary_key())
                    .col(timestamp_with_time_zone(AuditLogs::Ts))
                    .col(string_null(AuditLogs::ActorId))
                    .col(string(AuditLogs::ActorKind))
                    .col(string_null(AuditLogs::ApiKeyId))
                    .col(string(AuditLogs::Action))
                    .col(string(AuditLogs::ResourceType))
                    .col(string_null(AuditLogs::ResourceId))
                    .col(string_null(AuditLogs::TeamId))
                    .col(string_null(AuditLogs::RequestId))
                    .col(string_null(AuditLogs::Ip))
                    .col(string_null(AuditLogs::UserAgent))
                    .col(string(AuditLogs::Result))
                    .col(string_null(AuditLogs::Reason))
                    .col(json_null(AuditLogs::Changes))
                    .col(string(AuditLogs::PrevHash))
                    .col(string_uniq(AuditLogs::Hash))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [("idx_audit_logs_team", AuditLogs::TeamId), ("idx_audit_logs_ts", AuditLogs::Ts)] {
            manager.create_index(Index::create().name(name).table(AuditLogs::Table).col(col).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditLogs::Table.into_iden(),
            TeamMembers::Table.into_iden(),
            Teams::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    DisplayName,
    AvatarUrl,
    Role,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
    OwnerId,
    Name,
    Slug,
    Description,
    Visibility,
    Spec,
    Version,
    CreatedAt,
    UpdatedAt,
    ArchivedAt,
}

#[derive(DeriveIden)]
enum TeamMembers {
    Table,
    TeamId,
    UserId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    Seq,
    Ts,
    ActorId,
    ActorKind,
    Action,
    ResourceType,
    ResourceId,
    TeamId,
    RequestId,
    Ip,
    UserAgent,
    ApiKeyId,
    Result,
    Reason,
    Changes,
    PrevHash,
    Hash,
}
