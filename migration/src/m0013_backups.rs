//! Backups: one row per snapshot file in `<data dir>/backups/`, with its size, SHA-256, the
//! migration level it was taken at and when it last passed verification.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Backups::Table)
                    .col(string(Backups::Id).primary_key())
                    .col(string(Backups::File).unique_key())
                    .col(string_null(Backups::Label))
                    .col(big_integer(Backups::Bytes))
                    .col(string(Backups::Sha256))
                    .col(string(Backups::Migration))
                    .col(timestamp_with_time_zone(Backups::CreatedAt))
                    .col(timestamp_with_time_zone_null(Backups::VerifiedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("idx_backups_created_at").table(Backups::Table).col(Backups::CreatedAt).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Backups::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Backups {
    Table,
    Id,
    File,
    Label,
    Bytes,
    Sha256,
    Migration,
    CreatedAt,
    VerifiedAt,
}
