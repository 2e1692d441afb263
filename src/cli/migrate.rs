//! `ensemble migrate up|down|status|export-d1`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use migration::{Migrator, MigratorTrait};

use super::CommandError;
use crate::{config::DEFAULT_DATABASE_URL, db};

#[derive(Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    action: Action,
    /// SQLite file (created when missing) or `postgres://…` URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, global = true)]
    pub database_url: String,
}

#[derive(Subcommand)]
pub enum Action {
    /// Apply pending migrations (all, or `--steps N`).
    Up {
        #[arg(long)]
        steps: Option<u32>,
    },
    /// Revert the newest applied migrations (1 unless `--steps N`).
    Down {
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List every migration and whether it is applied.
    Status,
    /// Write every migration as plain SQL for Cloudflare D1 (`wrangler d1 migrations apply`).
    ExportD1 {
        /// Folder to write `NNNN_<name>.sql` files into.
        #[arg(long, default_value = "migration/sql")]
        dir: PathBuf,
    },
}

pub async fn run(args: MigrateArgs) -> Result<(), CommandError> {
    let action = args.action;
    if let Action::ExportD1 { dir } = &action {
        return Ok(export_d1(dir).await?);
    }
    if db::is_d1(&args.database_url) {
        return d1(&args.database_url, &action).await;
    }
    let db = db::connect(&args.database_url, None).await.map_err(|e| e.to_string())?;
    let failed = |e: sea_orm::DbErr| format!("migration failed: {e}");
    match action {
        Action::Up { steps } => Migrator::up(&db, steps).await.map_err(failed)?,
        Action::Down { steps } => Migrator::down(&db, Some(steps)).await.map_err(failed)?,
        Action::Status | Action::ExportD1 { .. } => {}
    }
    for migration in Migrator::get_migration_with_status(&db).await.map_err(failed)? {
        println!("{:<8} {}", migration.status().to_string().to_lowercase(), migration.name());
    }
    Ok(())
}

/// D1 is migrated by wrangler, which records what it applied in `d1_migrations`: `status` lists
/// that against the files this binary knows; `up` and `down` are refused (sea-orm's
/// `seaql_migrations` must not appear on D1).
async fn d1(url: &str, action: &Action) -> Result<(), CommandError> {
    const APPLY: &str = "`wrangler d1 migrations apply DB --remote` (from d1-bridge/, d1-bridge/README.md)";
    if !matches!(action, Action::Status) {
        return Err(format!(
            "D1 is migrated by wrangler, not by ensemble: run {APPLY}; `ensemble migrate status` lists what it applied"
        )
        .into());
    }
    let db = db::connect(url, None).await.map_err(|e| e.to_string())?;
    let applied = db::d1::migrations::applied(&db).await.map_err(|e| format!("cannot read d1_migrations: {e}"))?;
    for file in db::d1::migrations::known() {
        let status = if applied.contains(&file) { "applied" } else { "pending" };
        println!("{status:<8} {file}");
    }
    if !db::d1::migrations::missing(&applied).is_empty() {
        println!("apply the pending files with {APPLY}");
    }
    Ok(())
}

async fn export_d1(dir: &Path) -> Result<(), String> {
    let files = migration::d1::export().await.map_err(|e| format!("export failed: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Files of migrations that no longer exist would be applied by wrangler: remove them.
    let keep: Vec<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".sql") && !keep.contains(&name.as_str()) {
            std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
        }
    }
    for file in &files {
        std::fs::write(dir.join(&file.file_name), &file.sql)
            .map_err(|e| format!("cannot write {}: {e}", file.file_name))?;
        println!("wrote {}", dir.join(&file.file_name).display());
    }
    Ok(())
}
