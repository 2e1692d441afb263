//! The template database: migrated and seeded with the starters once per test process, then
//! copied for each test (a file copy on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL).
//! A server started on a copy still runs its whole start-up path; it finds no pending
//! migration and every starter up to date.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};

static SQLITE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
static POSTGRES: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The prefix of template databases on PostgreSQL; the creating process's id follows it.
const PG_PREFIX: &str = "ensemble_template_";

/// Copies the SQLite template to `file`.
pub async fn copy_sqlite_to(file: &Path) {
    let template = SQLITE.get_or_init(make_sqlite).await;
    std::fs::copy(template, file).expect("template database copied");
}

/// The name of this process's PostgreSQL template database on the server of `admin_url`.
pub async fn postgres(admin_url: &str) -> &'static str {
    POSTGRES.get_or_init(|| make_postgres(admin_url)).await
}

async fn make_sqlite() -> PathBuf {
    let dir = tempfile::Builder::new().prefix("ensemble-template-").tempdir().expect("temp dir").keep();
    let file = dir.join("template.db");
    let db = ensemble::db::connect(&format!("sqlite://{}", file.display()), Some(1)).await.expect("template opens");
    prepare(&db).await;
    // Everything into the main file, so that a copy of it alone is the whole database.
    db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.expect("WAL checkpointed");
    db.close().await.expect("template closed");
    at_exit(Box::new(move || {
        let _ = std::fs::remove_dir_all(&dir);
    }));
    file
}

async fn make_postgres(admin_url: &str) -> String {
    let admin = sea_orm::Database::connect(admin_url).await.expect("PostgreSQL reachable");
    drop_templates_of_ended_processes(&admin).await;
    let name = format!("{PG_PREFIX}{}_{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create template database");
    let _ = admin.close().await;
    let db = ensemble::db::connect(&super::database_url(admin_url, &name), Some(1)).await.expect("template opens");
    prepare(&db).await;
    // A database with a session open cannot be copied.
    db.close().await.expect("template closed");
    let (admin_url, dropped) = (admin_url.to_string(), name.clone());
    at_exit(Box::new(move || super::drop_postgres_database(&admin_url, &dropped)));
    name
}

/// What every server's start would do to a new database: migrations and starters.
async fn prepare(db: &DatabaseConnection) {
    Migrator::up(db, None).await.expect("template migrated");
    let writer = ensemble::db::batch::SqlxWriter::new(db.clone());
    ensemble::service::templates::starters::seed(db, &writer).await.expect("starters seeded");
}

/// Template databases left by test processes that were killed before they could drop them.
async fn drop_templates_of_ended_processes(admin: &DatabaseConnection) {
    let query = format!("SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'");
    let Ok(rows) = admin.query_all_raw(sea_orm::Statement::from_string(admin.get_database_backend(), query)).await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else { continue };
        let pid = name.trim_start_matches(PG_PREFIX).split('_').next().and_then(|p| p.parse::<i32>().ok());
        // SAFETY: signal 0 only asks whether the process exists.
        let ended = pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0);
        if ended {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
        }
    }
}

pub type Cleanup = Box<dyn FnOnce() + Send>;

static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());

/// Runs `cleanup` when the test process exits (statics are never dropped).
pub fn at_exit(cleanup: Cleanup) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `run_cleanups` is a plain function that never unwinds into C.
        unsafe { libc::atexit(run_cleanups) };
    });
    CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()).push(cleanup);
}

extern "C" fn run_cleanups() {
    let cleanups = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for cleanup in cleanups {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
    }
}
