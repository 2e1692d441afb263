//! Backups of a SQLite database: online snapshots (`VACUUM INTO` a temporary name, checksummed,
//! integrity-checked, then renamed) recorded in `backups`; listing, verifying, deleting, pruning
//! and the schedule. Restoring (from the CLI, with no server running) lives in `restore`.
//! PostgreSQL has its own tools: every operation there is BAD_USER_INPUT pointing to the guide.

mod restore;
mod snapshot;

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{SubsecRound, Utc};
use entity::backups;
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QueryTrait, Set, Statement,
};
use serde_json::json;

pub use restore::{DatabaseLock, Restored, restore, sqlite_file};
pub use snapshot::{Checked, check_file};

use super::audit::{AuditChain, Audited, Decision, Entry, actions};
use crate::{
    auth::guard,
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, Principal},
    error::AppError,
    service::name::Name,
};

/// The operations guide: backups, restore, PostgreSQL dumps, D1 Time Travel.
pub const GUIDE: &str = "docs/operations.md";

/// The backups of one database, kept in `<data dir>/backups/`.
pub struct Backups {
    db: DatabaseConnection,
    audit: Arc<AuditChain>,
    dir: PathBuf,
}

impl Backups {
    pub fn new(db: DatabaseConnection, audit: Arc<AuditChain>, data_dir: &Path) -> Self {
        Self { db, audit, dir: folder(data_dir) }
    }

    /// Takes a snapshot of the live database while it serves, checks it and records it
    /// (admins, the CLI and the schedule). On failure nothing is left behind.
    #[tracing::instrument(skip_all)]
    pub async fn create(&self, caller: &Caller, label: Option<String>) -> Result<backups::Model, AppError> {
        authorize(caller)?;
        self.sqlite_only()?;
        let label = check_label(label)?;
        let migration = current_level(&self.db).await?;
        let id = format!("bak_{}", uuid::Uuid::now_v7().simple());
        let file = format!("{id}.db");
        let checked = self.snapshot(&file).await?;
        let now = Utc::now().trunc_subsecs(6);
        let row = backups::Model {
            id,
            file,
            label,
            bytes: i64::try_from(checked.bytes).unwrap_or(i64::MAX),
            sha256: checked.sha256,
            migration,
            created_at: now,
            verified_at: Some(now),
        };
        let recorded = self.record(caller, row).await;
        if recorded.is_err()
            && let Err(error) = remove_files(&checked.path)
        {
            tracing::warn!(%error, file = %checked.path.display(), "cannot remove an unrecorded backup file");
        }
        recorded
    }

    /// Every recorded backup, newest first.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<backups::Model>, AppError> {
        authorize(caller)?;
        self.sqlite_only()?;
        Ok(newest_first().all(&self.db).await?)
    }

    /// Checks a backup (an id, a file name in the backups folder, or a path) against its checksum
    /// and the integrity check. A recorded backup's `verified_at` is set when it passes and
    /// cleared when it fails.
    pub async fn verify(&self, caller: &Caller, target: &str) -> Result<Checked, AppError> {
        authorize(caller)?;
        self.sqlite_only()?;
        let (path, row) = self.locate(target).await?;
        let checked = check_file(&path).await.and_then(|checked| match &row {
            Some(row) if row.sha256 != checked.sha256 => Err(AppError::bad_input(format!(
                "{} does not match the checksum recorded when it was taken: the file was replaced or damaged.",
                path.display()
            ))),
            _ => Ok(checked),
        });
        if let Some(row) = row {
            let mut row: backups::ActiveModel = row.into();
            row.verified_at = Set(checked.is_ok().then(|| Utc::now().trunc_subsecs(6)));
            row.update(&self.db).await?;
        }
        checked
    }

    /// Deletes a backup's row and files (admins); answers it as it was.
    #[tracing::instrument(skip_all)]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<backups::Model, AppError> {
        authorize(caller)?;
        self.sqlite_only()?;
        let row = backups::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| AppError::NotFound("No such backup.".into()))?;
        self.remove(caller, row).await?.ok_or_else(|| AppError::NotFound("No such backup.".into()))
    }

    /// Deletes all but the `keep` newest backups, except the newest verified one, which stays
    /// whatever its age. Answers the backups deleted.
    #[tracing::instrument(skip_all)]
    pub async fn prune(&self, caller: &Caller, keep: u32) -> Result<Vec<backups::Model>, AppError> {
        authorize(caller)?;
        self.sqlite_only()?;
        let rows = newest_first().all(&self.db).await?;
        let newest_verified = rows.iter().position(|row| row.verified_at.is_some());
        let mut pruned = Vec::new();
        for (index, row) in rows.into_iter().enumerate() {
            // A backup deleted meanwhile (by another prune) is not this prune's.
            if index >= keep as usize
                && Some(index) != newest_verified
                && let Some(row) = self.remove(caller, row).await?
            {
                pruned.push(row);
            }
        }
        Ok(pruned)
    }

    /// Backs up every `every` and prunes to `keep`, until the task is dropped. Failures are
    /// logged and the next round tries again.
    pub async fn run_schedule(self, every: Duration, keep: u32) {
        if self.sqlite_only().is_err() {
            tracing::warn!("ENSEMBLE_BACKUP_INTERVAL is ignored: scheduled backups are for SQLite (see {GUIDE})");
            return;
        }
        let caller = Caller { principal: Principal::System("scheduler"), meta: Default::default() };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.create(&caller, Some("scheduled".into())).await {
                Ok(row) => tracing::info!(file = %row.file, bytes = row.bytes, "scheduled backup taken"),
                Err(error) => tracing::error!(%error, "scheduled backup failed"),
            }
            match self.prune(&caller, keep).await {
                Ok(pruned) if !pruned.is_empty() => tracing::info!(pruned = pruned.len(), keep, "older backups pruned"),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "pruning backups failed"),
            }
        }
    }

    fn sqlite_only(&self) -> Result<(), AppError> {
        if crate::db::is_proxy(&self.db) {
            return Err(on_d1());
        }
        match self.db.get_database_backend() {
            DbBackend::Sqlite => Ok(()),
            _ => Err(on_postgres()),
        }
    }

    /// `VACUUM INTO` a temporary file, check it, write its sidecar, then give it its name.
    async fn snapshot(&self, file: &str) -> Result<Checked, AppError> {
        let partial =
            Partial::create(&self.dir, file).map_err(|e| storage_error(&self.dir, &e.to_string(), Some(&e)))?;
        let target = partial.0.to_str().ok_or_else(|| AppError::internal("the backups folder's path is not UTF-8"))?;
        let vacuum = Statement::from_sql_and_values(DbBackend::Sqlite, "VACUUM INTO ?", [target.into()]);
        self.db.execute_raw(vacuum).await.map_err(|e| storage_error(&self.dir, &e.to_string(), None))?;
        let contents = snapshot::inspect(&partial.0)
            .await
            .map_err(|why| AppError::internal(format!("the snapshot {why} The backup was discarded.")))?;
        let dir = self.dir.clone();
        let name = file.to_string();
        let (bytes, sha256) = tokio::task::spawn_blocking(move || partial.commit(&name))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| storage_error(&dir, &e.to_string(), Some(&e)))?;
        let path = self.dir.join(file);
        Ok(Checked { path, bytes, sha256, migration: contents.migration, tables: contents.tables })
    }

    async fn record(&self, caller: &Caller, row: backups::Model) -> Result<backups::Model, AppError> {
        let (row, _) = self
            .audit
            .write(
                caller,
                || async {
                    let insert = backups::Entity::insert(backups::ActiveModel::from(row.clone())).into_query();
                    let changes = json!({"file": row.file, "label": row.label, "bytes": row.bytes, "sha256": row.sha256,
                        "migration": row.migration});
                    Ok(Audited {
                        batch: Batch::new(self.audit.writer().backend()).write(&insert),
                        entry: Entry::new(actions::BACKUP_CREATE, "backup", row.id.clone()).changes(changes),
                        answer: row.clone(),
                    })
                },
                |_, _| OnGuard::Retry,
            )
            .await?;
        Ok(row)
    }

    /// Deletes the row (audited) and the files; answers the row, or none when it was deleted
    /// meanwhile. The file is moved aside first: when that fails the row stays, and the
    /// deletion fails saying why; when the row's deletion fails the file is put back.
    async fn remove(&self, caller: &Caller, row: backups::Model) -> Result<Option<backups::Model>, AppError> {
        let path = self.dir.join(&row.file);
        let aside = tokio::task::spawn_blocking(move || Aside::take(path))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| removal_error(&self.dir, &row.file, &e))?;
        let removed = self
            .audit
            .decide(
                caller,
                || async {
                    let Some(row) = backups::Entity::find_by_id(&row.id).one(&self.db).await? else {
                        return Ok(Decision::Unchanged(None));
                    };
                    let delete = backups::Entity::delete_many().filter(backups::Column::Id.eq(&row.id)).into_query();
                    let batch =
                        Batch::new(self.audit.writer().backend()).write(&delete).guard(Expect::One, BACKUP_GONE);
                    let changes = json!({"file": row.file, "label": row.label});
                    let entry = Entry::new(actions::BACKUP_DELETE, "backup", row.id.clone()).changes(changes);
                    Ok(Decision::Write(Audited { batch, entry, answer: Some(row) }))
                },
                // Deleted meanwhile: the next read finds no row.
                |_, _| OnGuard::Retry,
            )
            .await
            .map(|(row, _)| row);
        // The row is gone (this deletion's or another's): so is its file. Otherwise it is put back.
        let keep = removed.is_err();
        tokio::task::spawn_blocking(move || aside.finish(keep)).await.map_err(AppError::internal)?;
        removed
    }

    /// The file `target` names and its row, if it is a recorded backup.
    async fn locate(&self, target: &str) -> Result<(PathBuf, Option<backups::Model>), AppError> {
        let by_name = Condition::any().add(backups::Column::Id.eq(target)).add(backups::Column::File.eq(target));
        if let Some(row) = backups::Entity::find().filter(by_name).one(&self.db).await? {
            return Ok((self.dir.join(&row.file), Some(row)));
        }
        let path = PathBuf::from(target);
        if !path.is_file() {
            return Err(AppError::bad_input(format!(
                "No backup `{target}`: give a backup id, a file name in {}, or the path of a backup file.",
                self.dir.display()
            )));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let here = fs::canonicalize(&path).ok() == fs::canonicalize(self.dir.join(name)).ok();
        let row = match here {
            true => backups::Entity::find().filter(backups::Column::File.eq(name)).one(&self.db).await?,
            false => None,
        };
        Ok((path, row))
    }
}

/// `<data dir>/backups`.
pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("backups")
}

/// What every backup operation answers on PostgreSQL.
pub fn on_postgres() -> AppError {
    AppError::bad_input(format!(
        "Backups here are snapshots of a SQLite database; this server uses PostgreSQL. Back it up with pg_dump and \
         restore it with pg_restore as {GUIDE} explains."
    ))
}

/// What every backup operation answers on Cloudflare D1, whose backups are Time Travel.
pub fn on_d1() -> AppError {
    AppError::bad_input(format!(
        "Backups here are snapshots of a SQLite file; this server uses Cloudflare D1, which keeps its own: restore \
         a point in the last 30 days with `wrangler d1 time-travel restore DB --timestamp=…` (`wrangler d1 \
         time-travel info DB` shows the bookmark of now) as {GUIDE} explains."
    ))
}

/// The newest migration applied to the live database.
async fn current_level(db: &DatabaseConnection) -> Result<String, AppError> {
    let applied = Migrator::get_applied_migrations(db).await?;
    applied.last().map(|m| m.name().to_string()).ok_or_else(|| {
        AppError::bad_input("The database has no migrations applied; run `ensemble migrate up` before backing it up.")
    })
}

fn newest_first() -> sea_orm::Select<backups::Entity> {
    backups::Entity::find().order_by_desc(backups::Column::CreatedAt).order_by_desc(backups::Column::Id)
}

/// Admins, and the server itself (the CLI, the schedule). Never an API key.
fn authorize(caller: &Caller) -> Result<(), AppError> {
    match caller.principal {
        Principal::System(_) => Ok(()),
        _ => guard::admin(caller).map(|_| ()),
    }
}

/// A label is optional: a blank one is none.
fn check_label(label: Option<String>) -> Result<Option<String>, AppError> {
    let Some(label) = label.filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    match Name::parse("label", &label, 100) {
        Ok(label) => Ok(Some(label.into_string())),
        Err(problem) => {
            Err(AppError::BadUserInput { message: format!("label: {}", problem.message), problems: vec![problem] })
        }
    }
}

/// Why a backup could not be written, in words an operator can act on. `io` is the operating
/// system's error when there is one; SQLite's errors come as text.
fn storage_error(dir: &Path, cause: &str, io: Option<&io::Error>) -> AppError {
    let lower = cause.to_lowercase();
    let kind = io.map(io::Error::kind);
    let why = if matches!(kind, Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
        || lower.contains("disk is full")
        || lower.contains("no space")
    {
        "the disk is full".to_string()
    } else if matches!(kind, Some(io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem))
        || lower.contains("readonly")
        || lower.contains("read-only")
        || lower.contains("unable to open")
    {
        "the folder is not writable".to_string()
    } else if matches!(kind, Some(io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists)) {
        "the path is not a folder".to_string()
    } else {
        tracing::error!(error = cause, "a backup could not be written");
        format!("the snapshot could not be written ({cause})")
    };
    AppError::Conflict(format!("Cannot write a backup into {}: {why}. Earlier backups are untouched.", dir.display()))
}

/// A backup file being written under a temporary name; removed unless committed.
struct Partial(PathBuf);

impl Partial {
    /// An empty file `.<name>.partial` in `dir` (made first), ready for `VACUUM INTO`.
    fn create(dir: &Path, name: &str) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!(".{name}.partial"));
        OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(Self(path))
    }

    /// Flushes the file, writes its sidecar, then renames both into place. Answers its size and
    /// SHA-256.
    fn commit(self, name: &str) -> io::Result<(u64, String)> {
        File::open(&self.0)?.sync_all()?;
        let (bytes, sha256) = snapshot::digest(&self.0)?;
        let dir = self.0.parent().unwrap_or(Path::new("."));
        let final_path = dir.join(name);
        let sidecar = Partial(dir.join(format!(".{name}.sha256.partial")));
        fs::write(&sidecar.0, snapshot::sidecar_text(&sha256, name))?;
        File::open(&sidecar.0)?.sync_all()?;
        fs::rename(&sidecar.0, snapshot::sidecar(&final_path))?;
        if let Err(e) = fs::rename(&self.0, &final_path) {
            let _ = fs::remove_file(snapshot::sidecar(&final_path));
            return Err(e);
        }
        File::open(dir)?.sync_all()?;
        Ok((bytes, sha256))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // After a commit the temporary name is gone; otherwise this discards a partial file.
        let _ = fs::remove_file(&self.0);
    }
}

/// The guard of a backup's deletion: its row was deleted meanwhile.
const BACKUP_GONE: &str = "backup_gone";

/// A backup file moved aside while its row is deleted: removed with its sidecar once the row is
/// gone, or put back under its name when the row stays.
struct Aside {
    path: PathBuf,
    /// Where the file waits; none when there was no file to move.
    moved: Option<PathBuf>,
}

impl Aside {
    /// Renames `path` to `.<name>.deleting` beside it; a file already gone is fine, a folder
    /// in its place is refused (as removing it would be).
    fn take(path: PathBuf) -> io::Result<Self> {
        if path.is_dir() {
            return Err(io::ErrorKind::IsADirectory.into());
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let moved = path.with_file_name(format!(".{name}.deleting"));
        match fs::rename(&path, &moved) {
            Ok(()) => Ok(Self { path, moved: Some(moved) }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Self { path, moved: None }),
            Err(error) => Err(error),
        }
    }

    /// Puts the file back (`keep`), or removes it and its sidecar; failures are only logged:
    /// the row already says what happened.
    fn finish(self, keep: bool) {
        let done = match (&self.moved, keep) {
            (Some(moved), true) => fs::rename(moved, &self.path),
            (Some(moved), false) => fs::remove_file(moved).and_then(|()| remove_files(&self.path)),
            (None, true) => Ok(()),
            (None, false) => remove_files(&self.path),
        };
        if let Err(error) = done {
            tracing::warn!(%error, file = %self.path.display(), "cannot finish a backup file's deletion");
        }
    }
}

/// Removes a backup file, then its sidecar; a file already gone is fine. Fails when the backup
/// file stays; a sidecar that stays once the backup is gone is only logged.
fn remove_files(path: &Path) -> io::Result<()> {
    let gone = |result: io::Result<()>| match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    gone(fs::remove_file(path))?;
    let sidecar = snapshot::sidecar(path);
    if let Err(error) = gone(fs::remove_file(&sidecar)) {
        tracing::warn!(%error, file = %sidecar.display(), "cannot remove a backup's checksum file");
    }
    Ok(())
}

/// Why a backup's file could not be deleted, for the admin who asked: the file's name, its
/// folder and the operating system's reason.
fn removal_error(dir: &Path, file: &str, err: &io::Error) -> AppError {
    let why = match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => "the folder is not writable".to_string(),
        io::ErrorKind::IsADirectory => "it is a folder, not a file".to_string(),
        _ => {
            tracing::error!(error = %err, file, "a backup file could not be removed");
            err.to_string()
        }
    };
    AppError::Conflict(format!(
        "Cannot delete the backup file {file} in {}: {why}. The backup is kept; fix the cause and delete it again.",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(err: AppError) -> String {
        assert_eq!(err.code(), "CONFLICT");
        err.to_string()
    }

    #[test]
    fn storage_failures_say_why_in_words_an_operator_can_act_on() {
        let dir = Path::new("data/backups");
        let full = storage_error(dir, "error returned from database: (code: 13) database or disk is full", None);
        assert!(message(full).contains("data/backups: the disk is full"));
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(message(storage_error(dir, &denied.to_string(), Some(&denied))).contains("not writable"));
        let file = io::Error::from(io::ErrorKind::NotADirectory);
        assert!(message(storage_error(dir, &file.to_string(), Some(&file))).contains("not a folder"));
        assert!(message(storage_error(dir, "unable to open database file", None)).contains("not writable"));
    }

    #[test]
    fn labels_are_trimmed_and_bounded() {
        assert_eq!(check_label(Some("  nightly ".into())).unwrap().as_deref(), Some("nightly"));
        assert_eq!(check_label(Some("   ".into())).unwrap(), None);
        assert_eq!(check_label(Some("x".repeat(101))).unwrap_err().code(), "BAD_USER_INPUT");
        let hidden = check_label(Some("night\nly\u{202E}".into())).unwrap_err();
        assert_eq!(
            hidden.to_string(),
            "label: must not contain control characters such as line breaks, tabs or NUL (U+000A at character 6)"
        );
    }
}
