//! `ensemble backup restore FILE` while no server runs: the file is checked (checksum, integrity,
//! migration level) and copied next to the database before anything is replaced; the replaced
//! database is kept as `<name>.pre-restore`. Servers hold `<database>.lock` shared and a restore
//! takes it alone, so a restore refuses while a server runs and a server will not start mid-restore.

use std::{
    ffi::OsString,
    fs::{self, File, TryLockError},
    io,
    path::{Path, PathBuf},
};

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::{
    self, Connection,
    sqlite::{SqliteConnectOptions, SqliteConnection},
};

use super::{
    folder, on_postgres,
    snapshot::{self, Checked},
};
use crate::{db, error::AppError};

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The database file now holding the backup.
    pub database: PathBuf,
    /// The backup, as checked before it was copied.
    pub from: Checked,
    /// Where the replaced database was kept (`None` when there was none).
    pub kept: Option<PathBuf>,
    /// Migrations newer than the backup, applied when the server next starts.
    pub pending: Vec<String>,
}

/// An advisory lock on `<database>.lock`, held for as long as the value lives.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: File,
}

impl DatabaseLock {
    /// The lock a server holds while it runs: shared, as several servers may use one database.
    /// `None` for PostgreSQL and in-memory databases.
    pub fn for_server(database_url: &str) -> Result<Option<Self>, AppError> {
        let Some(database) = sqlite_file(database_url) else {
            return Ok(None);
        };
        let file = open_lock(&database)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Err(AppError::internal(format!(
                "a backup is being restored into {}; start the server when the restore has finished",
                database.display()
            ))),
            Err(TryLockError::Error(e)) => Err(lock_error(&database, &e)),
        }
    }

    /// The lock a restore takes: refused while any server holds the database.
    fn for_restore(database: &Path) -> Result<Self, AppError> {
        let file = open_lock(database)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(AppError::Conflict(format!(
                "A server is using {}; stop it before restoring (backups can be taken while it runs). Nothing was \
                 replaced.",
                database.display()
            ))),
            Err(TryLockError::Error(e)) => Err(lock_error(database, &e)),
        }
    }
}

/// Restores `file` (a path, or a name in `<data dir>/backups/`) into the SQLite database of
/// `database_url`, once it has been checked.
#[tracing::instrument(skip(database_url, data_dir))]
pub async fn restore(database_url: &str, data_dir: &Path, file: &str) -> Result<Restored, AppError> {
    let database = sqlite_file(database_url).ok_or_else(|| match db::is_sqlite(database_url) {
        true => AppError::bad_input("An in-memory database cannot be restored into; point DATABASE_URL at a file."),
        false => on_postgres(),
    })?;
    let source = locate(data_dir, file)?;
    let _lock = DatabaseLock::for_restore(&database)?;
    let from = snapshot::check_file(&source).await?;
    let pending = newer_migrations(&from)?;
    let staged = stage(&from, &database)?;
    checkpoint(&database).await;
    let kept = set_aside(&database).map_err(|e| {
        let _ = fs::remove_file(&staged);
        AppError::internal(format!("cannot set {} aside: {e}; nothing was replaced", database.display()))
    })?;
    place(&staged, &database, kept.as_deref())?;
    Ok(Restored { database, from, kept, pending })
}

/// The file of a `sqlite:` URL; `None` for PostgreSQL and in-memory databases.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    if !db::is_sqlite(database_url) {
        return None;
    }
    let rest = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    (!in_memory).then(|| PathBuf::from(path))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn open_lock(database: &Path) -> Result<File, AppError> {
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| AppError::internal(format!("cannot create the folder {}: {e}", dir.display())))?;
    }
    let path = with_suffix(database, ".lock");
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| lock_error(database, &e))
}

fn lock_error(database: &Path, err: &io::Error) -> AppError {
    AppError::internal(format!("cannot lock {}: {err}", with_suffix(database, ".lock").display()))
}

fn locate(data_dir: &Path, file: &str) -> Result<PathBuf, AppError> {
    let given = PathBuf::from(file);
    let in_folder = folder(data_dir).join(file);
    [given, in_folder.clone()].into_iter().find(|p| p.is_file()).ok_or_else(|| {
        AppError::bad_input(format!("No backup file `{file}`: not a file, and not in {}.", folder(data_dir).display()))
    })
}

/// The migrations this binary has beyond the backup's level; refuses a backup from a newer one.
fn newer_migrations(from: &Checked) -> Result<Vec<String>, AppError> {
    let known: Vec<String> = Migrator::migrations().iter().map(|m| m.name().to_string()).collect();
    let latest = known.last().cloned().unwrap_or_default();
    match known.iter().position(|name| *name == from.migration) {
        Some(at) => Ok(known[at + 1..].to_vec()),
        None if from.migration > latest => Err(AppError::bad_input(format!(
            "{} is at migration level {}, newer than this ensemble knows ({latest}); restore it with the release \
             that took it, or a newer one. Nothing was replaced.",
            from.path.display(),
            from.migration
        ))),
        None => Err(AppError::bad_input(format!(
            "{} is at migration level {}, which this ensemble does not know (its newest is {latest}). Nothing was \
             replaced.",
            from.path.display(),
            from.migration
        ))),
    }
}

/// Copies the backup to `<database>.restoring` and checks the copy against the checksum.
fn stage(from: &Checked, database: &Path) -> Result<PathBuf, AppError> {
    let staged = with_suffix(database, ".restoring");
    let copy = || -> io::Result<String> {
        if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        fs::copy(&from.path, &staged)?;
        File::open(&staged)?.sync_all()?;
        Ok(snapshot::digest(&staged)?.1)
    };
    let failed = |why: String| {
        let _ = fs::remove_file(&staged);
        AppError::Conflict(format!(
            "Cannot copy the backup next to {}: {why}. Nothing was replaced.",
            database.display()
        ))
    };
    match copy() {
        Ok(sha256) if sha256 == from.sha256 => Ok(staged),
        Ok(_) => Err(failed("the copy does not match the checksum".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Folds the write-ahead log into the database file, so the kept copy is one self-contained file.
/// Best effort: whatever stays in `-wal` is kept beside it.
async fn checkpoint(database: &Path) {
    if !database.is_file() {
        return;
    }
    let options = SqliteConnectOptions::new().filename(database);
    match SqliteConnection::connect_with(&options).await {
        Ok(mut conn) => {
            if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await {
                tracing::warn!(%error, "cannot checkpoint the database before setting it aside");
            }
            let _ = conn.close().await;
        }
        Err(error) => tracing::warn!(%error, "cannot open the database to checkpoint it"),
    }
}

/// Renames the database to `<name>.pre-restore` (its `-wal`, if any, to `<name>.pre-restore-wal`,
/// where SQLite finds it) and drops its `-shm`, which SQLite rebuilds.
fn set_aside(database: &Path) -> io::Result<Option<PathBuf>> {
    if !database.exists() {
        return Ok(None);
    }
    let kept = with_suffix(database, ".pre-restore");
    for stale in [with_suffix(&kept, "-wal"), with_suffix(&kept, "-shm")] {
        remove_if_present(&stale)?;
    }
    fs::rename(database, &kept)?;
    let wal = with_suffix(database, "-wal");
    if wal.exists() {
        fs::rename(&wal, with_suffix(&kept, "-wal"))?;
    }
    remove_if_present(&with_suffix(database, "-shm"))?;
    Ok(Some(kept))
}

/// Moves the staged copy into place; on failure puts the kept database back.
fn place(staged: &Path, database: &Path, kept: Option<&Path>) -> Result<(), AppError> {
    let placed = fs::rename(staged, database).and_then(|()| match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    });
    placed.map_err(|e| {
        if let Some(kept) = kept {
            let _ = fs::rename(kept, database);
        }
        let _ = fs::remove_file(staged);
        AppError::internal(format!("cannot move the restored copy into {}: {e}", database.display()))
    })
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_files_are_restored_into() {
        assert_eq!(sqlite_file("sqlite://data/ensemble.db"), Some(PathBuf::from("data/ensemble.db")));
        assert_eq!(sqlite_file("sqlite:///tmp/e.db?mode=rwc"), Some(PathBuf::from("/tmp/e.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://file.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
