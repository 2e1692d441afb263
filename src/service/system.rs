//! The server itself: what it runs, whether it is ready, and the heartbeat's rules.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::DatabaseConnection;

use crate::{config::Limits, db, error::AppError};

/// What `serverInfo` reports.
pub struct ServerStatus {
    pub version: &'static str,
    pub database: &'static str,
    pub migrations_applied: usize,
    pub migrations_pending: usize,
    pub latest_migration: Option<String>,
    pub limits: Limits,
}

#[tracing::instrument(skip_all)]
pub async fn status(db: &DatabaseConnection, limits: &Limits) -> Result<ServerStatus, AppError> {
    if db::is_proxy(db) {
        // wrangler migrates D1: its record is `d1_migrations`, never sea-orm's table.
        let applied = db::d1::migrations::applied(db).await?;
        let missing = db::d1::migrations::missing(&applied);
        return Ok(ServerStatus {
            version: env!("CARGO_PKG_VERSION"),
            database: db::backend_name(db),
            migrations_applied: db::d1::migrations::known().len() - missing.len(),
            migrations_pending: missing.len(),
            latest_migration: db::d1::migrations::latest(&applied),
            limits: limits.clone(),
        });
    }
    let migrations = Migrator::get_migration_with_status(db).await?;
    let applied: Vec<_> = migrations.iter().filter(|m| m.status() == migration::MigrationStatus::Applied).collect();
    Ok(ServerStatus {
        version: env!("CARGO_PKG_VERSION"),
        database: db::backend_name(db),
        migrations_applied: applied.len(),
        migrations_pending: migrations.len() - applied.len(),
        latest_migration: applied.last().map(|m| m.name().to_string()),
        limits: limits.clone(),
    })
}

/// Ready means: the database answers, SQLite runs in WAL mode, no migration is pending. On D1:
/// the bridge answers `SELECT 1` and D1 has every migration file applied.
pub async fn readiness(db: &DatabaseConnection) -> Result<(), String> {
    if db::is_proxy(db) {
        // The bridge client's errors name the bridge and what went wrong (unreachable, refused).
        db.ping().await.map_err(|e| cause(&e))?;
        let applied =
            db::d1::migrations::applied(db).await.map_err(|e| format!("cannot read d1_migrations: {}", cause(&e)))?;
        let missing = db::d1::migrations::missing(&applied);
        if !missing.is_empty() {
            return Err(format!(
                "{} migration(s) pending: D1 lacks {}; run `wrangler d1 migrations apply DB --remote`",
                missing.len(),
                missing.join(", ")
            ));
        }
        return Ok(());
    }
    db.ping().await.map_err(|_| "the database does not answer".to_string())?;
    let journal = db::sqlite_journal_mode(db).await.map_err(|_| "cannot read the journal mode".to_string())?;
    if let Some(mode) = journal
        && mode != "wal"
    {
        return Err(format!("SQLite journal_mode is {mode}, expected wal"));
    }
    let pending =
        Migrator::get_pending_migrations(db).await.map_err(|_| "cannot read the migration table".to_string())?;
    if !pending.is_empty() {
        return Err(format!("{} migration(s) pending; run `ensemble migrate up`", pending.len()));
    }
    Ok(())
}

/// The text of a database error without sea-orm's wrapping ("Connection Error: …").
fn cause(err: &sea_orm::DbErr) -> String {
    match err {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(text))
        | sea_orm::DbErr::Query(sea_orm::RuntimeErr::Internal(text)) => text.clone(),
        other => other.to_string(),
    }
}

pub const HEARTBEAT_SECONDS: std::ops::RangeInclusive<i32> = 1..=60;

/// The heartbeat's period, if `seconds` is allowed.
pub fn heartbeat_interval(seconds: i32) -> Result<Duration, AppError> {
    if !HEARTBEAT_SECONDS.contains(&seconds) {
        return Err(AppError::BadUserInput {
            message: format!(
                "intervalSeconds must be between {} and {}; got {seconds}",
                HEARTBEAT_SECONDS.start(),
                HEARTBEAT_SECONDS.end()
            ),
            problems: vec![crate::error::Problem::new("intervalSeconds", "must be between 1 and 60")],
        });
    }
    Ok(Duration::from_secs(seconds as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_accepts_one_to_sixty_seconds() {
        assert!(heartbeat_interval(0).is_err());
        assert!(heartbeat_interval(61).is_err());
        assert!(heartbeat_interval(-5).is_err());
        assert_eq!(heartbeat_interval(1).unwrap(), Duration::from_secs(1));
        assert_eq!(heartbeat_interval(60).unwrap(), Duration::from_secs(60));
    }
}
