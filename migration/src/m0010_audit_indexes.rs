//! Indexes for reading the audit log newest first (by `seq`) within one team, actor, resource
//! or action. `idx_audit_logs_ts` (m0001) already serves time ranges; the team index gains
//! `seq` so a team's page is read straight off the index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, AuditLogs); 4] = [
    ("idx_audit_logs_team_seq", AuditLogs::TeamId),
    ("idx_audit_logs_actor_seq", AuditLogs::ActorId),
    ("idx_audit_logs_resource_seq", AuditLogs::ResourceId),
    ("idx_audit_logs_action_seq", AuditLogs::Action),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, col) in INDEXES {
            let index = Index::create().name(name).table(AuditLogs::Table).col(col).col(AuditLogs::Seq).to_owned();
            manager.create_index(index).await?;
        }
        // A prefix of `idx_audit_logs_team_seq`: every lookup it served, the new one serves.
        manager.drop_index(Index::drop().name("idx_audit_logs_team").table(AuditLogs::Table).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let team =
            Index::create().name("idx_audit_logs_team").table(AuditLogs::Table).col(AuditLogs::TeamId).to_owned();
        manager.create_index(team).await?;
        for (name, _) in INDEXES {
            manager.drop_index(Index::drop().name(name).table(AuditLogs::Table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditLogs {
    Table,
    Seq,
    TeamId,
    ActorId,
    ResourceId,
    Action,
}
