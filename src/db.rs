//! Database connections: one `DATABASE_URL` speaks SQLite (WAL, foreign keys, busy timeout,
//! a real pool) or PostgreSQL, and the one portable way to start a read-then-write transaction.

use std::{path::Path, str::FromStr, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::error::AppError;

const SQLITE_POOL: u32 = 4;
const POSTGRES_POOL: u32 = 10;

/// The advisory lock key of start-up work (any number no other code uses).
const STARTUP_LOCK: i64 = 0x656e_7365_6d62;

/// Connects to `url`. A SQLite file and its folder are created when missing.
pub async fn connect(url: &str, pool_size: Option<u32>) -> Result<DatabaseConnection, AppError> {
    let mut options = ConnectOptions::new(url.to_string());
    options.connect_timeout(Duration::from_secs(5)).acquire_timeout(Duration::from_secs(5)).sqlx_logging(false);
    if is_sqlite(url) {
        create_parent_dir(url)?;
        // Fails early with a clear message instead of deep inside sqlx.
        SqliteConnectOptions::from_str(url).map_err(|e| AppError::internal(format!("bad DATABASE_URL: {e}")))?;
        options.max_connections(pool_size.unwrap_or(SQLITE_POOL)).map_sqlx_sqlite_opts(|o| {
            o.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
        });
    } else {
        options.max_connections(pool_size.unwrap_or(POSTGRES_POOL));
    }
    let db = Database::connect(options).await.map_err(|e| AppError::internal(connect_error(url, &e)))?;
    db.ping().await.map_err(|e| AppError::internal(connect_error(url, &e)))?;
    Ok(db)
}

/// Runs `work` (migrations, seeding) while holding a PostgreSQL advisory lock on a connection
/// of its own, so instances starting at the same moment on one database take turns; on SQLite
/// it just runs `work`.
pub async fn one_at_a_time<T>(
    url: &str,
    work: impl std::future::Future<Output = Result<T, AppError>>,
) -> Result<T, AppError> {
    if is_sqlite(url) {
        return work.await;
    }
    let lock = connect(url, Some(1)).await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_lock({STARTUP_LOCK})")).await?;
    let result = work.await;
    let _ = lock.execute_unprepared(&format!("SELECT pg_advisory_unlock({STARTUP_LOCK})")).await;
    let _ = lock.close().await;
    result
}

/// Counts every SQL statement run through `db` (and its clones made afterwards) in `counter`.
pub fn count_statements(db: &mut DatabaseConnection, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    db.set_metric_callback(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}

fn connect_error(url: &str, err: &DbErr) -> String {
    format!("cannot connect to the database at {}: {err}", crate::config::redact_url(url))
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

fn create_parent_dir(url: &str) -> Result<(), AppError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|e| AppError::internal(format!("cannot create the folder {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

/// Starts a transaction for work that reads, then writes: `BEGIN IMMEDIATE` on SQLite so two
/// writers never both read a snapshot they cannot commit. Pair it with `lock_exclusive()` on the
/// rows read, which PostgreSQL needs to not lose updates (SQLite ignores it).
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// SQLite's journal mode (`wal` when set up right); `None` on PostgreSQL.
pub async fn sqlite_journal_mode(db: &DatabaseConnection) -> Result<Option<String>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA journal_mode")).await?;
    row.map(|r| r.try_get_by_index::<String>(0)).transpose().map(|m| m.map(|m| m.to_lowercase()))
}

/// Connections open in the pool and how many of them are idle.
pub fn pool_usage(db: &DatabaseConnection) -> (u32, u32) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle() as u32)
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle() as u32)
        }
        _ => (0, 0),
    }
}

pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Sqlite => "sqlite",
        DbBackend::Postgres => "postgres",
        _ => "other",
    }
}
