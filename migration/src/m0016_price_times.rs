//! The shipped prices' `updated_at` on Cloudflare D1 as SQLite stores it. On SQLite a timestamp
//! is text, and the server writes it as sqlx binds it (`2026-11-01T00:00:00+00:00`); migration 8
//! inlined it in another form in the D1 export (`2026-11-01 00:00:00.000000 +00:00`), so on a
//! D1 database migrated from that file the guard of `upsertModelPrice` (`updated_at` as read)
//! never matched a shipped price and every change to one answered CONFLICT. Migration 8 now
//! writes the server's form; this one rewrites the rows an older export left. PostgreSQL stores
//! a typed timestamp and needs nothing.

use sea_orm::{DbBackend, Value};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// When the shipped prices were published.
fn published_at() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_793_491_200, 0).unwrap_or_default()
}

/// The shipped prices' `updated_at` as `backend` stores it: typed on PostgreSQL; on SQLite and
/// D1 the text sqlx writes for a `DateTime<Utc>`, whether bound or inlined in an export.
pub fn published(backend: DbBackend) -> Value {
    match backend {
        DbBackend::Sqlite => Value::from(published_at().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)),
        _ => Value::from(published_at()),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let rewrite = Query::update()
            .table(ModelPrices::Table)
            .value(ModelPrices::UpdatedAt, published(DbBackend::Sqlite))
            .and_where(Expr::col(ModelPrices::UpdatedAt).eq("2026-11-01 00:00:00.000000 +00:00"))
            .to_owned();
        manager.exec_stmt(rewrite).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The form it replaced was never read differently: nothing to restore.
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ModelPrices {
    Table,
    UpdatedAt,
}
