//! `ensemble backup create [--label L] | list | verify FILE | restore FILE` for a SQLite database
//! (docs/operations.md). Taking, listing and verifying work while a server runs; restoring does not.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Args, Subcommand};
use migration::{Migrator, MigratorTrait};

use super::CommandError;
use crate::{
    config::{DEFAULT_DATA_DIR, DEFAULT_DATABASE_URL},
    db::{self, batch::SqlxWriter},
    domain::{Caller, Principal},
    service::{
        audit::AuditChain,
        backups::{self, Backups, Checked, Restored},
    },
};

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    action: Action,
    /// The SQLite database (`sqlite://…`) to back up or restore into.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, global = true)]
    pub database_url: String,
    /// Folder whose `backups/` holds the backups.
    #[arg(long, env = "ENSEMBLE_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Action {
    /// Take a snapshot of the database now (safe while a server runs).
    Create {
        /// A note to find it by, e.g. `before-upgrade`.
        #[arg(long)]
        label: Option<String>,
    },
    /// List the recorded backups, newest first.
    List,
    /// Check a backup against its checksum and SQLite's integrity check.
    Verify {
        /// A backup id, a file name in the backups folder, or the path of a backup file.
        file: String,
    },
    /// Replace the database with a backup once it is checked; the server must be stopped.
    Restore {
        /// A file name in the backups folder, or the path of a backup file (with its `.sha256`).
        file: String,
    },
}

pub async fn run(args: BackupArgs) -> Result<(), CommandError> {
    let BackupArgs { action, database_url, data_dir } = args;
    db::check_url(&database_url).map_err(|e| e.to_string())?;
    if db::is_d1(&database_url) {
        return Err(backups::on_d1().into());
    }
    if !db::is_sqlite(&database_url) {
        return Err(backups::on_postgres().into());
    }
    let caller = Caller { principal: Principal::System("cli"), meta: Default::default() };
    match action {
        Action::Create { label } => {
            let row = open(&database_url, &data_dir).await?.create(&caller, label).await?;
            let path = backups::folder(&data_dir).join(&row.file);
            println!(
                "created {} ({} bytes, sha256 {}, migration {})",
                path.display(),
                row.bytes,
                row.sha256,
                row.migration
            );
        }
        Action::List => {
            let rows = open(&database_url, &data_dir).await?.list(&caller).await?;
            if rows.is_empty() {
                println!("no backups yet");
            }
            for row in rows {
                let verified = if row.verified_at.is_some() { "verified" } else { "NOT VERIFIED" };
                let label = row.label.unwrap_or_default();
                let created = row.created_at.format("%Y-%m-%d %H:%M:%S");
                println!("{created}  {}  {} bytes  {verified}  {}  {label}", row.file, row.bytes, row.migration);
            }
        }
        Action::Verify { file } => {
            let checked = open(&database_url, &data_dir).await?.verify(&caller, &file).await?;
            print_checked(&checked);
        }
        Action::Restore { file } => {
            let restored = backups::restore(&database_url, &data_dir, &file).await?;
            print_restored(&restored);
        }
    }
    Ok(())
}

/// The backups of the configured database, which must exist and be migrated (the `backups` table).
async fn open(database_url: &str, data_dir: &Path) -> Result<Backups, String> {
    if let Some(file) = backups::sqlite_file(database_url).filter(|f| !f.is_file()) {
        return Err(format!(
            "there is no database at {} (`ensemble backup restore FILE` checks a backup before restoring it)",
            file.display()
        ));
    }
    let db = db::connect(database_url, Some(1)).await.map_err(|e| e.to_string())?;
    let pending = Migrator::get_pending_migrations(&db).await.map_err(|e| e.to_string())?;
    if !pending.is_empty() {
        return Err(format!(
            "the database has {} pending migration(s); run `ensemble migrate up` (or start the server) first",
            pending.len()
        ));
    }
    let audit = Arc::new(AuditChain::new(db.clone(), Arc::new(SqlxWriter::new(db.clone()))));
    Ok(Backups::new(db, audit, data_dir))
}

fn print_checked(checked: &Checked) {
    println!(
        "ok: {} ({} bytes, sha256 {}, migration {}, integrity ok)",
        checked.path.display(),
        checked.bytes,
        checked.sha256,
        checked.migration
    );
}

fn print_restored(restored: &Restored) {
    println!("restored {} into {}", restored.from.path.display(), restored.database.display());
    println!("migration level: {}", restored.from.migration);
    match &restored.kept {
        Some(kept) => println!("the replaced database is kept as {}", kept.display()),
        None => println!("there was no database to replace"),
    }
    if !restored.pending.is_empty() {
        println!("newer migrations, applied when the server starts: {}", restored.pending.join(", "));
    }
    println!("rows per table:");
    let width = restored.from.tables.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (table, rows) in &restored.from.tables {
        println!("  {table:<width$}  {rows}");
    }
}
