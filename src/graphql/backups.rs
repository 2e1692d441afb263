//! Backups for admins: `backups`, `createBackup`, `deleteBackup` (SQLite; on PostgreSQL each
//! answers BAD_USER_INPUT pointing to the operations guide). Restoring is `ensemble backup restore`.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::backups;

use super::caller;
use crate::{error::GqlResultExt, service::backups::Backups, state::AppState};

#[derive(Default)]
pub struct BackupsQuery;

#[Object]
impl BackupsQuery {
    /// Every backup of the database, newest first (admins).
    async fn backups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Backup>> {
        let rows = store(ctx)?.list(&caller(ctx)).await.gql()?;
        Ok(rows.into_iter().map(Backup::from).collect())
    }
}

#[derive(Default)]
pub struct BackupsMutation;

#[Object]
impl BackupsMutation {
    /// Takes a consistent snapshot of the live database, checks it and records it (admins).
    async fn create_backup(&self, ctx: &Context<'_>, label: Option<String>) -> async_graphql::Result<Backup> {
        store(ctx)?.create(&caller(ctx), label).await.map(Backup::from).gql()
    }

    /// Deletes a backup and its file (admins); answers it as it was.
    async fn delete_backup(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Backup> {
        store(ctx)?.delete(&caller(ctx), &id).await.map(Backup::from).gql()
    }
}

fn store(ctx: &Context<'_>) -> async_graphql::Result<Backups> {
    let state = ctx.data::<AppState>()?;
    Ok(Backups::new(state.db.clone(), state.audit.clone(), &state.config.data_dir))
}

/// A snapshot of the database in the server's backups folder.
#[derive(SimpleObject)]
pub struct Backup {
    pub id: ID,
    /// The file's name in the backups folder; `<file>.sha256` beside it holds its checksum.
    pub file: String,
    pub label: Option<String>,
    /// The file's size in bytes.
    pub bytes: i64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The newest database migration the snapshot holds.
    pub migration: String,
    pub created_at: DateTime<Utc>,
    /// When the file last passed its checksum and integrity check; null once a check failed.
    pub verified_at: Option<DateTime<Utc>>,
}

impl From<backups::Model> for Backup {
    fn from(b: backups::Model) -> Self {
        Self {
            id: ID(b.id),
            file: b.file,
            label: b.label,
            bytes: b.bytes,
            sha256: b.sha256,
            migration: b.migration,
            created_at: b.created_at,
            verified_at: b.verified_at,
        }
    }
}
