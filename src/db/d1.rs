//! Cloudflare D1 through the bridge Worker (d1-bridge/README.md): a `DatabaseConnection` whose
//! statements go to the bridge, so every service reads D1 with the same entity queries as SQLite.
//! Reads go to `POST /query` (retried when D1 says it is overloaded); a lone write goes to `POST
//! /batch` with an idempotency key, once. Transactions are refused: D1 has none (mutations are
//! batches, docs/write-path.md).

mod client;
pub mod migrations;
pub mod values;
mod writer;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use sea_orm::{
    Database, DatabaseConnection, DbBackend, DbErr, ProxyDatabaseTrait, ProxyExecResult, ProxyRow, RuntimeErr,
    Statement,
};

pub use self::{
    client::{Client, Error, Secret},
    writer::D1Writer,
};

/// The environment variable holding the secret shared with the bridge.
pub const SECRET_ENV: &str = "ENSEMBLE_D1_SECRET";

/// True for the `DATABASE_URL`s of a D1 bridge: `d1+http://…` (local) and `d1+https://…`.
pub fn is_d1(url: &str) -> bool {
    url.starts_with("d1+http://") || url.starts_with("d1+https://")
}

/// `ENSEMBLE_D1_SECRET`, which a D1 `DATABASE_URL` needs.
pub fn secret_from_env() -> Result<Secret, String> {
    match std::env::var(SECRET_ENV) {
        Ok(secret) if !secret.is_empty() => Secret::new(secret),
        _ => Err(format!(
            "DATABASE_URL names a D1 bridge, which needs {SECRET_ENV}: set it to the secret the bridge \
             Worker was given (`wrangler secret put {SECRET_ENV}`, d1-bridge/README.md)"
        )),
    }
}

/// Connects to the bridge at `url` and checks that it answers and accepts `secret` (`SELECT 1`).
pub async fn connect(url: &str, secret: Secret) -> Result<DatabaseConnection, Error> {
    connect_counting(url, secret, None).await
}

/// As [`connect`], counting every statement sent through the connection in `statements` (sea-orm's
/// metric callback does not reach a proxy).
pub async fn connect_counting(
    url: &str,
    secret: Secret,
    statements: Option<Arc<AtomicU64>>,
) -> Result<DatabaseConnection, Error> {
    let client = Client::new(url, secret).map_err(Error::Refused)?;
    client.query("SELECT 1", Vec::new(), true).await?;
    let proxy: Arc<Box<dyn ProxyDatabaseTrait>> = Arc::new(Box::new(D1Proxy { client, statements }));
    // Never fails for a proxy: no connection is opened here.
    Database::connect_proxy(DbBackend::Sqlite, proxy).await.map_err(|e| Error::Refused(e.to_string()))
}

/// sea-orm's proxy over the bridge. SQLite is the backend: D1 speaks SQLite's SQL.
#[derive(Debug)]
struct D1Proxy {
    client: Client,
    statements: Option<Arc<AtomicU64>>,
}

impl D1Proxy {
    fn count(&self) {
        if let Some(statements) = &self.statements {
            statements.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl ProxyDatabaseTrait for D1Proxy {
    async fn query(&self, statement: Statement) -> Result<Vec<ProxyRow>, DbErr> {
        self.count();
        values::check_limits(&statement).map_err(query_err)?;
        let params = values::params(&statement).map_err(query_err)?;
        let answer = self.client.query(&statement.sql, params, is_read(&statement.sql)).await.map_err(db_err)?;
        answer
            .rows
            .into_iter()
            .map(|cells| values::row(&answer.columns, cells))
            .collect::<Result<_, _>>()
            .map_err(|why| query_err(format!("D1 answered {why}")))
    }

    async fn execute(&self, statement: Statement) -> Result<ProxyExecResult, DbErr> {
        self.count();
        values::check_limits(&statement).map_err(exec_err)?;
        let params = values::params(&statement).map_err(exec_err)?;
        let key = uuid::Uuid::now_v7().to_string();
        let answer = self.client.batch(&[(&statement.sql, params)], &key).await.map_err(db_err)?;
        let meta = answer.results.and_then(|steps| steps.into_iter().next()).unwrap_or_default().meta;
        // sea-orm reads last_insert_id as u64; a rowid is positive when there is one.
        Ok(ProxyExecResult::new(u64::try_from(meta.last_row_id).unwrap_or(0), meta.changes))
    }

    /// Unreachable through sea-orm, which calls `try_begin` (vendor/sea-orm/PATCHES.md, 4).
    async fn begin(&self) {
        tracing::error!("a transaction was started on D1, which has none: its statements are not atomic");
    }

    async fn try_begin(&self) -> Result<(), DbErr> {
        let refusal = "D1 has no interactive transactions: write with a batch (db::batch, docs/write-path.md)";
        tracing::error!("{refusal}");
        Err(DbErr::Conn(RuntimeErr::Internal(refusal.into())))
    }

    async fn ping(&self) -> Result<(), DbErr> {
        self.client.query("SELECT 1", Vec::new(), true).await.map(drop).map_err(db_err)
    }
}

/// Whether `sql` only reads, so that sending it again after a lost answer changes nothing: it
/// starts with SELECT or VALUES (or WITH, without a write further on) and returns no written rows.
fn is_read(sql: &str) -> bool {
    let upper = sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(').to_ascii_uppercase();
    let words = || upper.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    let writes = || words().any(|w| matches!(w, "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "RETURNING"));
    match words().next() {
        Some("SELECT" | "VALUES") => !writes(),
        Some("WITH") => !writes(),
        _ => false,
    }
}

fn query_err(message: impl Into<String>) -> DbErr {
    DbErr::Query(RuntimeErr::Internal(message.into()))
}

fn exec_err(message: impl Into<String>) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(message.into()))
}

/// The bridge's failures as sea-orm's: no answer or a refused signature is a connection error,
/// the rest an error of the statement.
fn db_err(err: Error) -> DbErr {
    match err {
        Error::Unreachable { .. } | Error::Unauthorized { .. } => DbErr::Conn(RuntimeErr::Internal(err.to_string())),
        _ => query_err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statements_that_write_nothing_count_as_reads() {
        for read in
            ["SELECT 1", "  (SELECT a FROM t)", "select * from updates_log", "WITH x AS (SELECT 1) SELECT * FROM x"]
        {
            assert!(is_read(read), "{read}");
        }
        for write in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "WITH x AS (SELECT 1) DELETE FROM t",
            "SELECT 1; DELETE FROM t",
            "INSERT INTO t (a) VALUES (1) RETURNING a",
            "PRAGMA foreign_keys",
        ] {
            assert!(!is_read(write), "{write}");
        }
    }
}
