//! One backup file on its own: its SHA-256 and `<file>.sha256` sidecar (`sha256sum` format, so a
//! backup copied to another machine carries its checksum), and what opening it read-only finds:
//! the integrity check, the migration level and the rows of each table.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use sea_orm::sqlx::{
    self, AssertSqlSafe, Connection,
    sqlite::{SqliteConnectOptions, SqliteConnection},
};
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// What checking a backup file found: it matches its checksum and passes the integrity check.
#[derive(Clone, Debug)]
pub struct Checked {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The newest migration the snapshot holds.
    pub migration: String,
    /// Every table and its row count, by name.
    pub tables: Vec<(String, i64)>,
}

/// What a read-only look inside a database file found.
pub struct Contents {
    pub migration: String,
    pub tables: Vec<(String, i64)>,
}

/// `<file>.sha256`, next to the file.
pub fn sidecar(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The file's size and SHA-256 (hex), read in chunks.
pub fn digest(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// The sidecar's text for a file named `name`: `<sha256>  <name>`, as `sha256sum -c` reads it.
pub fn sidecar_text(sha256: &str, name: &str) -> String {
    format!("{sha256}  {name}\n")
}

/// The checksum a sidecar records (its first word), if it reads as one.
fn parse_sidecar(text: &str) -> Option<&str> {
    text.split_whitespace().next().filter(|sum| sum.len() == 64 && sum.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Checks a backup file before anyone relies on it: its SHA-256 against the sidecar, then the
/// integrity check and the migration level from a read-only open.
pub async fn check_file(path: &Path) -> Result<Checked, AppError> {
    let shown = path.display();
    let expected = std::fs::read_to_string(sidecar(path)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AppError::bad_input(format!(
            "{shown} has no checksum file next to it ({}); a backup is only trusted with its checksum.",
            sidecar(path).display()
        )),
        _ => AppError::bad_input(format!("Cannot read the checksum file of {shown}: {e}.")),
    })?;
    let expected = parse_sidecar(&expected)
        .ok_or_else(|| AppError::bad_input(format!("The checksum file of {shown} does not hold a SHA-256.")))?
        .to_ascii_lowercase();
    let owned = path.to_path_buf();
    let (bytes, sha256) = tokio::task::spawn_blocking(move || digest(&owned))
        .await
        .map_err(AppError::internal)?
        .map_err(|e| AppError::bad_input(format!("Cannot read {shown}: {e}.")))?;
    if sha256 != expected {
        return Err(AppError::bad_input(format!(
            "{shown} does not match its checksum (expected {expected}, found {sha256}): the file is damaged or \
             incomplete."
        )));
    }
    let contents = inspect(path).await.map_err(|why| AppError::bad_input(format!("{shown} {why}")))?;
    Ok(Checked { path: path.to_path_buf(), bytes, sha256, migration: contents.migration, tables: contents.tables })
}

/// Opens a database file read-only (nothing is written next to it) and reads what it holds.
/// The error completes a sentence that starts with the file's name.
pub async fn inspect(path: &Path) -> Result<Contents, String> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true).immutable(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot be opened as a SQLite database: {}.", reason(&e)))?;
    let contents = read_contents(&mut conn).await;
    let _ = conn.close().await;
    contents
}

async fn read_contents(conn: &mut SqliteConnection) -> Result<Contents, String> {
    let damaged = |e: sqlx::Error| format!("failed its integrity check: {}.", reason(&e));
    let findings: Vec<String> =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut *conn).await.map_err(damaged)?;
    if findings.first().map(String::as_str) != Some("ok") {
        let shown: Vec<&str> = findings.iter().take(3).map(String::as_str).collect();
        return Err(format!("failed its integrity check: {}.", shown.join("; ")));
    }
    let migration: Option<String> = sqlx::query_scalar("SELECT MAX(version) FROM seaql_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(|_| "is not an Ensemble database (it has no migrations table).".to_string())?;
    let migration = migration.ok_or("is an Ensemble database with no migration applied.")?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(damaged)?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let count = format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\""));
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(count)).fetch_one(&mut *conn).await.map_err(damaged)?;
        tables.push((name, rows));
    }
    Ok(Contents { migration, tables })
}

/// SQLite's own words for what went wrong, without sqlx's wrapping.
fn reason(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_read_as_sha256sum_writes_them() {
        let sum = "a".repeat(64);
        assert_eq!(parse_sidecar(&sidecar_text(&sum, "bak_1.db")), Some(sum.as_str()));
        assert_eq!(parse_sidecar("not-a-checksum  bak_1.db\n"), None);
        assert_eq!(parse_sidecar(""), None);
        assert_eq!(sidecar(Path::new("/b/bak_1.db")), Path::new("/b/bak_1.db.sha256"));
    }
}
