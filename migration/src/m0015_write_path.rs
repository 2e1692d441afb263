//! The write path (docs/write-path.md): `write_guard`, a table that never holds a row, whose
//! trigger raises the reason it is given, so a guard written as SQL (`INSERT INTO write_guard
//! (reason) SELECT ? WHERE changes() <> 1`) aborts the whole batch on SQLite and Cloudflare D1;
//! and `leases`, one row per named lease (the audit chain's writer on D1), claimed with one
//! conditional `UPDATE … RETURNING`.
//!
//! PostgreSQL checks guards on the row counts instead and gets no trigger; the table exists
//! there too so that the schema is the same everywhere.

use sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `RAISE` with an expression as its message needs SQLite 3.47 or later (workerd bundles 3.47.0,
/// sqlx 3.51.3).
const GUARD_TRIGGER: &str = "CREATE TRIGGER write_guard_abort BEFORE INSERT ON write_guard \
                             BEGIN SELECT RAISE(ABORT, NEW.reason); END";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WriteGuard::Table)
                    .col(ColumnDef::new(WriteGuard::Reason).text().not_null())
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Sqlite {
            manager.get_connection().execute_unprepared(GUARD_TRIGGER).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Leases::Table)
                    .col(string(Leases::Name).primary_key())
                    .col(string_null(Leases::Holder))
                    .col(timestamp_with_time_zone_null(Leases::ExpiresAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Leases::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(WriteGuard::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum WriteGuard {
    Table,
    Reason,
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}
