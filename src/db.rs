//! Database connections: one `DATABASE_URL` speaks SQLite (WAL, foreign keys, busy timeout,
//! a real pool), PostgreSQL or Cloudflare D1 through its bridge (`d1+https://…`, src/db/d1.rs),
//! and the one portable way to start a read-then-write transaction.

pub mod batch;
pub mod d1;
pub mod lease;

use std::{path::Path, str::FromStr, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    sqlx::{
        self, ConnectOptions as _, Connection as _,
        postgres::PgConnectOptions,
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
    },
};

use crate::error::AppError;

pub use self::d1::is_d1;

const SQLITE_POOL: u32 = 4;
const POSTGRES_POOL: u32 = 10;
/// How long opening the first connection may take, and retrying a refused one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is pinged before it is handed out; one in use more
/// recently is handed out as it is (docs/write-path.md, "Pooled connections").
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The advisory lock key of start-up work (any number no other code uses).
const STARTUP_LOCK: i64 = 0x656e_7365_6d62;

/// The database could not be reached or opened: what happened, in words, with the URL's
/// secrets masked (src/redact.rs).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

impl ConnectError {
    fn new(url: &str, message: impl std::fmt::Display) -> Self {
        Self(crate::redact::text(&message.to_string(), url))
    }
}

impl From<ConnectError> for AppError {
    fn from(err: ConnectError) -> Self {
        AppError::Internal(err.0)
    }
}

/// Connects to `url`. A SQLite file and its folder are created when missing. A D1 bridge needs
/// `ENSEMBLE_D1_SECRET` and is asked `SELECT 1` before this answers.
pub async fn connect(url: &str, pool_size: Option<u32>) -> Result<DatabaseConnection, ConnectError> {
    check_url(url)?;
    if is_d1(url) {
        let secret = d1::secret_from_env().map_err(|e| ConnectError::new(url, e))?;
        return d1::connect(url, secret).await.map_err(|e| ConnectError::new(url, e));
    }
    let mut options = ConnectOptions::new(url.to_string());
    options
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT)
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        .sqlx_logging(false);
    if is_sqlite(url) {
        create_parent_dir(url)?;
        // Fails early with a clear message instead of deep inside sqlx.
        SqliteConnectOptions::from_str(url)
            .map_err(|e| ConnectError::new(url, format!("DATABASE_URL is not a usable SQLite URL: {e}")))?;
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
    let db = match Database::connect(options).await {
        Ok(db) => db,
        Err(err) => return Err(unreachable(url, &err).await),
    };
    db.ping().await.map_err(|e| cannot_connect(url, e))?;
    Ok(db)
}

/// The writer of batches for the database at `url`, connected as `db` (docs/write-path.md): the
/// bridge's `/batch` for D1, a transaction on `db` otherwise. Statements are counted in
/// `counter` (on SQLite and PostgreSQL `db` counts them already, see [`connect_counting`]).
pub fn writer(
    url: &str,
    db: &DatabaseConnection,
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> Result<std::sync::Arc<dyn batch::BatchWriter>, ConnectError> {
    if is_d1(url) {
        let secret = d1::secret_from_env().map_err(|e| ConnectError::new(url, e))?;
        let client = d1::Client::new(url, secret).map_err(|e| ConnectError::new(url, e))?;
        return Ok(std::sync::Arc::new(d1::D1Writer::new(client, counter)));
    }
    Ok(std::sync::Arc::new(batch::SqlxWriter::new(db.clone())))
}

/// Runs `work` (migrations, seeding) while holding a PostgreSQL advisory lock on a connection
/// of its own, so instances starting at the same moment on one database take turns; on SQLite
/// (and on D1, which has no such lock: its instances take a lease, docs/write-path.md) it just
/// runs `work`.
pub async fn one_at_a_time<T, E: From<ConnectError> + From<DbErr>>(
    url: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if is_sqlite(url) || is_d1(url) {
        return work.await;
    }
    let lock = connect(url, Some(1)).await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_lock({STARTUP_LOCK})")).await?;
    let result = work.await;
    let _ = lock.execute_unprepared(&format!("SELECT pg_advisory_unlock({STARTUP_LOCK})")).await;
    let _ = lock.close().await;
    result
}

/// Refuses a `DATABASE_URL` Ensemble does not speak, suggesting the one the user likely meant:
/// `data/ensemble.db` or `sqllite://data/ensemble.db` → `sqlite://data/ensemble.db`,
/// `d1://bridge.example.dev` → `d1+https://bridge.example.dev`.
pub fn check_url(url: &str) -> Result<(), ConnectError> {
    let scheme = scheme_of(url);
    if matches!(scheme, Some("sqlite" | "postgres" | "postgresql" | "d1+http" | "d1+https")) {
        return Ok(());
    }
    let shown = crate::redact::url(url);
    let message = match (scheme, suggestion(url, scheme)) {
        (None, Some(meant)) => format!("DATABASE_URL `{shown}` has no scheme: did you mean {meant}?"),
        (Some(scheme), Some(meant)) => {
            format!(
                "DATABASE_URL `{shown}` starts with `{scheme}:`, which Ensemble does not speak: did you mean {meant}?"
            )
        }
        (_, None) => format!(
            "DATABASE_URL `{shown}` is neither a SQLite URL (`{}`), a PostgreSQL one \
             (`postgres://user:password@host:5432/ensemble`) nor a D1 bridge's (`d1+https://<bridge host>`)",
            crate::config::DEFAULT_DATABASE_URL
        ),
    };
    Err(ConnectError::new(url, message))
}

/// The scheme of `url`: the word before `://`, or before `:` when it names a database.
fn scheme_of(url: &str) -> Option<&str> {
    let (head, rest) = url.split_once(':')?;
    let word = head.len() > 1 && head.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let lower = head.to_ascii_lowercase();
    let names_a_database = ["sql", "postg", "pg"].iter().any(|p| lower.starts_with(p));
    (word && (rest.starts_with("//") || names_a_database)).then_some(head)
}

/// The URL `url` was probably meant to be, with the scheme Ensemble speaks that it is closest to.
fn suggestion(url: &str, scheme: Option<&str>) -> Option<String> {
    let meant = match scheme.map(str::to_ascii_lowercase) {
        None => {
            let host_port = url.split(['/', '?']).next().is_some_and(|h| h.contains(':'));
            let kind = if url.contains('@') || host_port { "postgres" } else { "sqlite" };
            return Some(crate::redact::text(&format!("{kind}://{url}"), url));
        }
        Some(s) if s.starts_with("sqlite") || distance(&s, "sqlite") <= 2 => "sqlite",
        // `d1:`, `d1+htps:`, `d1-https:`: the bridge over HTTPS, or plain HTTP on this machine
        // (`wrangler dev --local`).
        Some(s) if s.starts_with("d1") => {
            let host = url.split_once("//").map_or("", |(_, rest)| rest);
            if ["localhost", "127.0.0.1", "[::1]"].iter().any(|h| host.starts_with(h)) { "d1+http" } else { "d1+https" }
        }
        Some(s)
            if ["pg", "psql", "pgsql"].contains(&s.as_str())
                || s.starts_with("postg")
                || distance(&s, "postgres") <= 2 =>
        {
            "postgres"
        }
        Some(_) => return None,
    };
    let rest = &url[scheme.map_or(0, str::len) + 1..];
    Some(crate::redact::text(&format!("{meant}:{rest}"), url))
}

/// Levenshtein distance: how many single-character edits turn `a` into `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Why the pool could not open its first connection. The pool retries a refused connection
/// until its timeout and then reports only that it timed out: one direct attempt tells the cause.
async fn unreachable(url: &str, err: &DbErr) -> ConnectError {
    let timed_out = matches!(err, DbErr::Conn(RuntimeErr::SqlxError(e)) if matches!(**e, sqlx::Error::PoolTimedOut));
    if !timed_out || is_sqlite(url) {
        return cannot_connect(url, err);
    }
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return cannot_connect(url, err);
    };
    let place = format!("{}:{}", options.get_host(), options.get_port());
    let cause = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Err(sqlx::Error::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused: nothing listens on {place} (is PostgreSQL running there?)")
        }
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            err.to_string()
        }
        Err(_) => format!("{place} did not answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    cannot_connect(url, cause)
}

fn cannot_connect(url: &str, cause: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(url, format!("cannot connect to the database at `{}`: {cause}", crate::redact::url(url)))
}

/// [`connect`], counting every statement run through the connection (and its clones) in
/// `counter`: sea-orm's metric callback on SQLite and PostgreSQL, the proxy itself on D1 (batches
/// the writer sends are not counted there).
pub async fn connect_counting(
    url: &str,
    pool_size: Option<u32>,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<DatabaseConnection, ConnectError> {
    if is_d1(url) {
        check_url(url)?;
        let secret = d1::secret_from_env().map_err(|e| ConnectError::new(url, e))?;
        return d1::connect_counting(url, secret, Some(counter)).await.map_err(|e| ConnectError::new(url, e));
    }
    let mut db = connect(url, pool_size).await?;
    count_statements(&mut db, counter);
    Ok(db)
}

/// Counts every SQL statement run through `db` (and its clones made afterwards) in `counter`.
pub fn count_statements(db: &mut DatabaseConnection, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    db.set_metric_callback(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// True when `db` is D1 through its bridge: SQLite's SQL, but no sqlx pool and no pragmas.
pub fn is_proxy(db: &DatabaseConnection) -> bool {
    matches!(db.inner, sea_orm::DatabaseConnectionType::ProxyDatabaseConnection(_))
}

fn create_parent_dir(url: &str) -> Result<(), ConnectError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|e| ConnectError::new(url, format!("cannot create the folder {}: {e}", dir.display()))),
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

/// SQLite's journal mode (`wal` when set up right); `None` on PostgreSQL and on D1 (which
/// refuses the pragma).
pub async fn sqlite_journal_mode(db: &DatabaseConnection) -> Result<Option<String>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite || is_proxy(db) {
        return Ok(None);
    }
    let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA journal_mode")).await?;
    row.map(|r| r.try_get_by_index::<String>(0)).transpose().map(|m| m.map(|m| m.to_lowercase()))
}

/// Connections open in the pool and how many of them are idle (none on D1: HTTP requests).
pub fn pool_usage(db: &DatabaseConnection) -> (u32, u32) {
    if is_proxy(db) {
        return (0, 0);
    }
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
    if is_proxy(db) {
        return "d1";
    }
    match db.get_database_backend() {
        DbBackend::Sqlite => "sqlite",
        DbBackend::Postgres => "postgres",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        check_url(url).expect_err("refused").to_string()
    }

    #[test]
    fn the_urls_ensemble_speaks_pass() {
        for url in [
            "sqlite://data/ensemble.db",
            "sqlite::memory:",
            "postgres://u:p@h/db",
            "postgresql://h/db",
            "d1+https://bridge.example.dev",
            "d1+http://127.0.0.1:8787",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_path_without_a_scheme_is_pointed_to_sqlite() {
        assert!(refusal("data/ensemble.db").ends_with("did you mean sqlite://data/ensemble.db?"));
        assert!(refusal("/var/lib/ensemble.db").ends_with("did you mean sqlite:///var/lib/ensemble.db?"));
    }

    #[test]
    fn a_misspelt_scheme_gets_the_nearest_one() {
        assert!(refusal("sqllite://data/ensemble.db").ends_with("did you mean sqlite://data/ensemble.db?"));
        assert!(refusal("sqlite3:data/x.db").ends_with("did you mean sqlite:data/x.db?"));
        assert!(refusal("SQLITE://x.db").ends_with("did you mean sqlite://x.db?"));
        assert!(refusal("postgress://app:hunter2@h/db").ends_with("did you mean postgres://app:***@h/db?"));
        assert!(refusal("pg://h/db").ends_with("did you mean postgres://h/db?"));
        assert!(refusal("app:hunter2@h:5432/db").ends_with("did you mean postgres://app:***@h:5432/db?"));
    }

    #[test]
    fn a_d1_url_without_its_transport_gets_one() {
        assert!(refusal("d1://bridge.example.dev").ends_with("did you mean d1+https://bridge.example.dev?"));
        assert!(refusal("d1+htps://bridge.example.dev").ends_with("did you mean d1+https://bridge.example.dev?"));
        assert!(refusal("d1://127.0.0.1:8787").ends_with("did you mean d1+http://127.0.0.1:8787?"));
        assert!(refusal("D1://localhost:8787").ends_with("did you mean d1+http://localhost:8787?"));
    }

    #[test]
    fn an_unrelated_scheme_is_told_what_ensemble_speaks() {
        let message = refusal("mysql://app:hunter2@h/db");
        assert!(message.contains("neither a SQLite URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
